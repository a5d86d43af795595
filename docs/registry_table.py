"""Sphinx directives that render ``flowopt.registry.OPTIMIZERS``: its table, and the constructors of a family.

In a MyST page::

    ```{optimizer-registry}
    ```

renders one row per registered constructor: a link to it, its gradient
evaluations per step, the arguments ``optax.inject_hyperparams`` must treat
as static, and its one-line description. ::

    ```{optimizer-constructors} runge_kutta
    ```

documents every constructor of that family (a key of
``flowopt.registry.FAMILIES``), in registry order, as ``autofunction``
entries. Both are built from the registry at every build, so the pages list
exactly what the contract tests run over, and a new constructor appears once
its entry is registered.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Parser
from docutils.statemachine import StringList
from docutils.utils import new_document
from sphinx.util.docutils import SphinxDirective

from flowopt.registry import FAMILIES, OPTIMIZERS


def registry_table() -> list[str]:
    """The registry as the lines of a Markdown table."""
    lines = [
        "| constructor | gradient evaluations per step | static under `inject_hyperparams` | method |",
        "|---|---|---|---|",
    ]
    for entry in OPTIMIZERS.values():
        static = ", ".join(f"`{name}`" for name in entry.static_args)
        lines.append(f"| {{func}}`~flowopt.{entry.name}` | {entry.cost_formula} | {static} | {entry.description} |")
    return lines


class OptimizerRegistry(SphinxDirective):
    """Render :data:`flowopt.registry.OPTIMIZERS` as a table."""

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(registry_table(), "flowopt.registry"), 0, container)
        return container.children


class OptimizerConstructors(SphinxDirective):
    """``autofunction`` for every registered constructor of one family."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        family = self.arguments[0]
        if family not in FAMILIES:
            raise self.error(f"unknown optimizer family {family!r}; families: {', '.join(FAMILIES)}.")
        names = [entry.name for entry in OPTIMIZERS.values() if entry.family == family]
        # The page may be MyST, whose nested parse reads Markdown: autodoc's directives are parsed as rst,
        # into a document that shares the page's settings (the Sphinx environment) and reporter.
        document = new_document(self.state.document["source"], self.state.document.settings)
        document.reporter = self.state.document.reporter
        Parser().parse("\n".join(f".. autofunction:: flowopt.{name}" for name in names), document)
        return list(document.children)


def setup(app):
    app.add_directive("optimizer-registry", OptimizerRegistry)
    app.add_directive("optimizer-constructors", OptimizerConstructors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
