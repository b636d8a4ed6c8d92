"""``crossmodal extract``: raw files -> features in the workspace's store (pipelines.extract.run_extract)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossmodal.errors import ConfigError
from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, OfflineOpt, WorkspaceOpt
from pipelines.cli._output import Output

HELP = "Extract features of raw files (root/<class>/<file> folders, files or a manifest) into the feature store."
EXAMPLES = examples(
    "crossmodal extract --modality image photos/",
    "crossmodal extract --modality image photos/ --extractor hog-color",
    "crossmodal extract --modality audio fsdd/recordings --labels-from 'regex:^(\\d)_'",
    "crossmodal extract --modality text --labels-from corpus.csv --set vector_size=100 --json",
    "crossmodal extract --modality video clips/ --ray auto",
)
COLUMNS = ["extractor", "key", "dim", "found", "extracted", "skipped", "duplicates", "failed", "unsupported",
           "items_per_second", "table"]
HEADERS = {"skipped": "already stored", "duplicates": "same bytes"}


@app.command("extract", help=HELP + EXAMPLES)
def extract(
    paths: Annotated[list[Path] | None, typer.Argument(help="Folders, files or CSV/JSONL manifests.")] = None,
    modality: Annotated[str, typer.Option("--modality", "-m", help="image, text, audio, 3d or video.")] = ...,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help="Default: the modality's.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    labels_from: Annotated[str, typer.Option(help="folders, a CSV/JSONL manifest, or regex:PATTERN.")] = "folders",
    batch_size: Annotated[int, typer.Option(help="Items per model call.")] = 32,
    shard_size: Annotated[int, typer.Option(
        help="Rows per committed shard; also the first items claimed at a time (then about 10 s of work), so that "
             "runs started at once on one workspace split the work.")] = 1024,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes (0: all in this process). Default: by extractor: one per core for single-core "
             "extractors (each with a copy of the model), else cores - 1 decoders.")] = None,
    decode: Annotated[str | None, typer.Option(
        help="Decode in 'processes' (default on Linux: no GIL shared with the model) or 'threads'.")] = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    weights: Annotated[Path | None, typer.Option(help="Weights file (same as --set weights=PATH).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Extractor option key=value.")] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="Run on Ray: 'auto' or a cluster address.")] = None,
    rehash: Annotated[bool, typer.Option(
        "--rehash", help="Read every file to hash it, even those unchanged (size, mtime, ctime, inode) since their "
                         "hash was kept in the workspace.")] = False,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.extract import ExtractOptions, run_extract

    if decode is not None and ray:
        raise ConfigError("--decode is for local runs: Ray actors always decode in threads",
                          hint="drop --decode, or drop --ray")
    sets = (*(overrides or []), *([f"weights={weights}"] if weights else []))
    options = ExtractOptions(extractor=extractor, labels_from=labels_from, batch_size=batch_size,
                             shard_size=shard_size, workers=workers,
                             device=device, overrides=sets, decode=decode,  # type: ignore[arg-type]  # checked there
                             rehash=rehash)
    if ray:
        from pipelines.distributed import run_extract_ray

        s = run_extract_ray(workspace, modality, paths or [], options, address=ray).to_dict()
    else:
        s = run_extract(workspace, modality, paths or [], options).to_dict()
    out = Output(as_json)
    out.json(s) if as_json else out.table([[s[c] for c in COLUMNS]], [HEADERS.get(c, c) for c in COLUMNS],
                                          title=f"extract {s['modality']}")
    if s["hashes_kept"]:
        out.info(f"{s['hashes_kept']} files unchanged since they were last hashed (same size, mtime, ctime and inode) "
                 "were not read again: --rehash reads them")
    if s["by_other_run"]:
        out.info(f"{_items(s['by_other_run'])} been extracted by another run on this workspace at the same time "
                 "(it had claimed them): not extracted twice")
    if s["duplicates"]:
        out.info(f"{_items(s['duplicates'])} the same bytes as another item (another name or class): each has its own "
                 "row with the shared features, embedded once")
    if s["unlabelled"]:
        examples = ", ".join(s["unlabelled_examples"])
        out.info(f"{_items(s['unlabelled'])} no label (e.g. {examples}: files directly under a scanned folder, or "
                 "manifest rows without one): train leaves them out; an index of the whole store (--gallery all) "
                 "still lists them")
    if s["passed_over"]:
        media = sorted(s["passed_over"].items(), key=lambda kv: -kv[1])
        out.info(f"{sum(s['passed_over'].values())} files of other modalities passed over "
                 f"({', '.join(f'{n} {suffix}' for suffix, n in media)}): extract them with their own --modality")
    for reason in s["unsupported_reasons"].values():
        out.info(reason)
    if s["failed"] or s["unsupported"]:
        out.info(f"{s['failed']} failed, {s['unsupported']} unsupported; reasons in {s['errors_file']}")
    if s["failed"] and not (s["extracted"] or s["skipped"]):
        raise typer.Exit(1)


def _items(n: int) -> str:
    return "1 item has" if n == 1 else f"{n} items have"
