"""``crossmodal store verify``, ``repair`` and ``compact``: check the feature store's shards, drop the bad ones, merge
the small ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from extractors.errors import StoreError
from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, WorkspaceOpt
from pipelines.cli._output import Output

store_app = typer.Typer(help="Check the feature store (checksums, shapes, finite values), repair it, compact it.",
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


@store_app.command("compact", help="Merge runs of small shards into larger ones (every row kept, in order), so that "
                   "reads open fewer files. Each merge is atomic: a kill leaves the old shards or the merged one; the "
                   "next command finishes or undoes it. Extractions and reads of the table wait for each merge."
                   + examples("crossmodal store compact --workspace ws",
                              "crossmodal store compact --modality image --target-rows 1000000"))
def compact(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    modality: Annotated[str | None, typer.Option("--modality", "-m", help="Only this modality's tables.")] = None,
    target_rows: Annotated[int | None, typer.Option(
        "--target-rows", min=2, help="The most rows of a merged shard (default: 256 MB of features).")] = None,
    as_json: JsonOpt = False,
) -> None:
    from extractors.store import COMPACT_BYTES, FeatureTable
    from pipelines.extract import _existing_store

    store = _existing_store(workspace)
    out = Output(as_json)
    tables = [(m, k) for m, k in store.tables() if modality is None or m == modality]
    if not tables:
        raise StoreError(f"{store.root}: no feature table{f' for {modality}' if modality else ''} to compact",
                         hint=f"tables: {', '.join(f'{m}/{k}' for m, k in store.tables()) or 'none'}")
    results = []
    for m, key in tables:
        table = FeatureTable(store.root / m / key)
        for line in table.recovered:
            out.info(f"{m}/{key}: {line}")
        target = target_rows or table.default_target_rows()
        why = "--target-rows" if target_rows else f"{COMPACT_BYTES >> 20} MB of {table.dim}-d float32 rows, the default"
        out.info(f"{m}/{key}: merging runs of small shards into shards of at most {target:,} rows ({why})")
        before = len(table.shard_paths())
        merges = table.compact(target)
        results.append({"modality": m, "key": key, "target_rows": target, "shards_before": before,
                        "shards_after": len(table.shard_paths()), "recovered": table.recovered,
                        "merges": [{"shard": x.parquet.stem, "shards": x.shards, "rows": x.rows} for x in merges]})
    if as_json:
        return out.json({"workspace": str(workspace), "tables": results})
    out.table([[r["modality"], r["key"], r["shards_before"], r["shards_after"], len(r["merges"]),
                sum(x["rows"] for x in r["merges"])] for r in results],
              ["modality", "key", "shards before", "shards after", "merged shards", "rows moved"],
              title=f"compacted {workspace}/store")


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
