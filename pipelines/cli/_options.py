"""Options shared by several verbs, as Annotated aliases (huggingface_hub's hf CLI)."""

from __future__ import annotations

import os
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

OFFLINE_ENV = "CROSSMODAL_OFFLINE"


def _go_offline(offline: bool) -> bool:
    # The switch is the environment (extractors.weights reads it; Hugging Face libraries read HF_HUB_OFFLINE) so that
    # extraction's worker processes inherit it; pipelines.cli.main restores both after the command.
    if offline:
        os.environ[OFFLINE_ENV] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    return offline


OfflineOpt = Annotated[bool, typer.Option(
    "--offline", callback=_go_offline,
    help="Download nothing: use only weights already on this machine (same as CROSSMODAL_OFFLINE=1 or "
         "HF_HUB_OFFLINE=1).")]

DEFAULT_WORKSPACE = Path("crossmodal-workspace")
