"""``crossmodal store verify`` and ``crossmodal store repair``: check the feature store's shards, drop the bad ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from extractors.errors import StoreError
from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, WorkspaceOpt
from pipelines.cli._output import Output

store_app = typer.Typer(help="Check the feature store (checksums, shapes, finite values) and repair it.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("verify", help="Check every shard of the store against the checksums recorded at commit; list the "
                   "bad ones and exit 2 if there is any." + examples("crossmodal store verify --workspace ws"))
def verify(workspace: WorkspaceOpt = DEFAULT_WORKSPACE, as_json: JsonOpt = False) -> None:
    from pipelines.extract import verify_store

    result = verify_store(workspace)
    _show(Output(as_json), result, title=f"bad shards in {workspace}")
    if result["bad"]:
        raise StoreError(f"{len(result['bad'])} of {result['shards']} shards of {workspace}/store are bad",
                         hint=f"crossmodal store repair --workspace {workspace}")


@store_app.command("repair", help="Drop the bad shards; re-extract the rows of a shard whose metadata is intact from "
                   "their files when these are unchanged. What is dropped is extracted again by the next "
                   "crossmodal extract." + examples("crossmodal store repair --workspace ws",
                                                    "crossmodal store repair --no-reextract"))
def repair(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    reextract: Annotated[bool, typer.Option(help="Re-extract the dropped rows whose files are unchanged.")] = True,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    from pipelines.extract import repair_store

    result = repair_store(workspace, reextract=reextract, device=device)
    out = Output(as_json)
    _show(out, result, title=f"shards dropped from {workspace}")
    if result["sealed"] and not as_json:
        out.info(f"recorded the checksums of {len(result['sealed'])} shards written before checksums were recorded")
    if result["bad"] and not as_json:
        again = sum(b["reextracted"] for b in result["bad"])
        out.info(f"dropped {len(result['bad'])} bad shards; {again} rows re-extracted from their files, "
                 f"{result['dropped']} rows removed: run crossmodal extract on the same folders to extract them again")


def _show(out: Output, result: dict[str, Any], *, title: str) -> None:
    if out.as_json:
        return out.json(result)
    if result["bad"]:
        columns = ["table", "shard", "rows", "reason", *(["reextracted", "note"] if "dropped" in result else [])]
        out.table([[b[c] for c in columns] for b in result["bad"]], columns, title=title)
    else:
        out.line(f"{result['shards']} shards checked, none bad")
    if result["unchecked"]:
        out.info(f"{len(result['unchecked'])} shards were written before checksums were recorded: checked for shape "
                 "and finite values only")
