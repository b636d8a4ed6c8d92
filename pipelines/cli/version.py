"""``crossmodal version``: the toolkit's and its main libraries' versions."""

from __future__ import annotations

from pipelines.cli._app import app
from pipelines.cli._options import JsonOpt
from pipelines.cli._output import Output


@app.command("version")
def version(as_json: JsonOpt = False) -> None:
    """Print the versions of crossmodal and the libraries it runs on."""
    from crossmodal.model import library_versions

    versions = library_versions()
    out = Output(as_json)
    out.json(versions) if as_json else out.table(sorted(versions.items()), ["package", "version"])
