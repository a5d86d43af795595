"""Sphinx directive ``results-gallery``: show what a study wrote under ``results/``.

In a MyST page::

    ```{results-gallery} runge-kutta
    :command: flowopt-experiment runge-kutta --config cpu
    ```

renders, for the folder ``results/runge-kutta`` of the repository (several
folders may be named), every ``*.md`` file directly in it or in a subfolder
such as ``cpu/`` (as Markdown), every ``*.csv`` (as a table when it has at
most ``:max-rows:`` rows, default 50; larger ones are named, not shown) and
every ``*.png`` (as a figure), in path order. When no folder holds any of
these, it renders a note saying which command produces them, so the page has
its structure before the runs do.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

RESULTS = Path(__file__).resolve().parent.parent / "results"


class ResultsGallery(SphinxDirective):
    """Render the Markdown notes, CSV tables and PNG figures of one results folder."""

    required_arguments = 1
    optional_arguments = 8
    option_spec = {"command": directives.unchanged, "max-rows": directives.nonnegative_int}

    def run(self) -> list[nodes.Node]:
        folders = [RESULTS / name for name in self.arguments]
        candidates = [p for folder in folders if folder.is_dir() for p in (*folder.glob("*"), *folder.glob("*/*"))]
        files = sorted(p for p in candidates if p.suffix in {".md", ".csv", ".png"})
        if not files:
            return [self._not_run(folders)]
        doc_dir = Path(self.env.doc2path(self.env.docname)).parent
        rendered: list[nodes.Node] = []
        for path in files:
            self.env.note_dependency(str(path))
            label = str(path.relative_to(RESULTS.parent))
            if path.suffix == ".md":
                rendered += self._markdown(path, doc_dir)
            elif path.suffix == ".csv":
                rendered.append(self._table(path, label))
            else:
                figure = nodes.figure()
                figure += nodes.image(uri=os.path.relpath(path, doc_dir))
                figure += nodes.caption(text=label)
                rendered.append(figure)
        return rendered

    def _not_run(self, folders: list[Path]) -> nodes.Node:
        note = nodes.note()
        where = " or ".join(f"{folder.relative_to(RESULTS.parent)}/" for folder in folders)
        text = f"No results committed yet under {where}."
        note += nodes.paragraph(text=text)
        if "command" in self.options:
            note += nodes.paragraph(text="Produce them with:")
            note += nodes.literal_block(text=self.options["command"], language="bash")
        return note

    def _markdown(self, path: Path, doc_dir: Path) -> list[nodes.Node]:
        """Parse a results note, with its image links made relative to the page that includes it."""

        def relocate(match: re.Match) -> str:
            target = os.path.relpath(path.parent / match[2], doc_dir)
            return f"![{match[1]}]({target})"

        text = _LOCAL_IMAGE.sub(relocate, path.read_text())
        container = nodes.container()
        self.state.nested_parse(StringList(text.splitlines(), str(path)), 0, container)
        return container.children

    def _table(self, path: Path, label: str) -> nodes.Node:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        max_rows = self.options.get("max-rows", 50)
        if not rows or len(rows) - 1 > max_rows:
            paragraph = nodes.paragraph(text=f"{max(len(rows) - 1, 0)} rows in ")
            paragraph += nodes.literal(text=label)
            return paragraph
        header, body = rows[0], rows[1:]
        table = nodes.table()
        table += nodes.title(text=label)
        group = nodes.tgroup(cols=len(header))
        table += group
        group += [nodes.colspec(colwidth=1) for _ in header]
        group += _section(nodes.thead, [header])
        group += _section(nodes.tbody, [row + [""] * (len(header) - len(row)) for row in body])
        return table


_LOCAL_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?:)([^)\s]+)\)")


def _section(kind: type[nodes.Element], rows: list[list[str]]) -> nodes.Element:
    section = kind()
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=cell)
            row += entry
        section += row
    return section


def setup(app):
    app.add_directive("results-gallery", ResultsGallery)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
