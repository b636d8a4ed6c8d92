"""Options shared by several verbs, as Annotated aliases (huggingface_hub's hf CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", help="Workspace folder (store, models, indexes).", envvar="CROSSMODAL_WORKSPACE"),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda (auto picks CUDA when present).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
ModelNameOpt = Annotated[str, typer.Option("--model", "--name", help="Model name inside the workspace (models/NAME).")]

DEFAULT_WORKSPACE = Path("crossmodal-workspace")
