"""``crossmodal serve``: the search page and its JSON API on http://127.0.0.1:8000/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, ModelNameOpt, OfflineOpt, WorkspaceOpt


@app.command("serve", help="Serve the search page: drop a file or type a text, pick a target, see ranked results."
              + examples("crossmodal serve", "crossmodal serve --model digits --port 8080",
                         "crossmodal serve --media-root ~/photos  # also show previews of files extracted from there"))
def serve(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    model: ModelNameOpt = "default",
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the page to others.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest accepted upload, in MiB.")] = 64.0,
    media_root: Annotated[list[Path] | None, typer.Option(help="A folder outside the workspace whose items may be "
                                                               "shown (repeatable).")] = None,
    query_memory_mb: Annotated[float, typer.Option(
        min=64, help="Memory one query may take above the idle server, in MB; a query past it is stopped and refused.")
    ] = 1024.0,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
) -> None:
    from pipelines.serve import serve as run_server

    run_server(workspace, model=model, host=host, port=port, max_upload_mb=max_upload_mb, device=device,
               media_roots=media_root or (), query_memory_mb=query_memory_mb)
