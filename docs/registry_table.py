"""Sphinx directive ``optimizer-registry``: the table of ``flowopt.registry.OPTIMIZERS``.

In a MyST page::

    ```{optimizer-registry}
    ```

renders one row per registered constructor: a link to it, its gradient
evaluations per step, the arguments ``optax.inject_hyperparams`` must treat
as static, and its one-line description. The table is built from the registry
at every build, so it lists exactly what the contract tests run over.
"""

from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from flowopt.registry import OPTIMIZERS


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


def setup(app):
    app.add_directive("optimizer-registry", OptimizerRegistry)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
