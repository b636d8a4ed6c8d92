"""The Typer app every verb registers on (one file per verb)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="crossmodal",
    help="Cross-modal retrieval from raw media: extract features, train (DRCL by default), evaluate, index, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def examples(*lines: str) -> str:
    """An 'Examples' block for a verb's --help."""
    return "\n\nExamples:\n\n\b\n" + "\n".join(f"  $ {line}" for line in lines)  # \b: kept as written


@app.callback()
def _root() -> None:
    """Cross-modal retrieval from raw media: extract, train, evaluate, index, query, demo, serve."""
