"""``crossmodal evaluate``: load a model folder, reload its test split from the card's data source
(``pipelines.datasource``), compute the paper-style table, save PR curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossmodal.errors import ConfigError
from crossmodal.evaluation import evaluate
from crossmodal.model import CrossModalModel, read_card
from pipelines.datasource import load_test_split
from pipelines.plots import plot_pr_curves
from pipelines.workspace import Workspace

PR_FILE = "pr_curves.png"


def resolve_model_dir(model_dir: str | Path | None, *, model: str | None, workspace: str | Path) -> Path:
    """The model folder ``crossmodal evaluate`` means: a folder given as is, else ``models/NAME`` of the workspace
    (``model`` or ``default``), as ``index`` and ``query`` resolve it.

    Raises:
        ConfigError: both a folder and ``--model`` are given, or the name is not a name.
    """
    if model_dir is not None and model is not None:
        raise ConfigError(f"give the model folder ({model_dir}) or --model {model}, not both",
                          hint="drop one: crossmodal evaluate --model NAME --workspace DIR, or crossmodal evaluate DIR")
    if model_dir is not None:
        return Path(model_dir)
    return Workspace(workspace).model_dir("default" if model is None else model)


def evaluate_model_dir(model_dir: str | Path, *, k: int = 50, data: str | Path | None = None,
                       device: str = "auto") -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` on its test split; write ``pr_curves.png`` there.

    Rows come in canonical modality order (``crossmodal.types.MODALITIES``), as ``crossmodal train`` prints them.

    Args:
        model_dir: a folder written by ``crossmodal train``.
        k: the cut-off of the second MAP column (MAP@all is always reported).
        data: the benchmark file, when it moved since training (the card's source records where it was).
        device: where to embed.

    Returns:
        The ``crossmodal.evaluation.evaluate`` result plus ``"pr_png"``: the path of the PR-curve figure.

    Raises:
        ModelFileError: no model there, or its files do not match its card.
        ConfigError: the card does not say where the test data is, or ``data`` is given for a model not trained on
            a benchmark file.
        FeatureMismatchError: a workspace model's store no longer holds the features it was trained on.
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    test = load_test_split(card, data, model_dir=model_dir)
    model = CrossModalModel.load(model_dir, device=device)
    result = evaluate(model, test, ks=(None, k))
    curves = {pair.replace("->", " -> "): (c["precision"], c["recall"]) for pair, c in result["pr"].items()}
    result["pr_png"] = str(plot_pr_curves(curves, model_dir / PR_FILE, title=f"{model_dir.name}: precision-recall"))
    return result


def table_rows(result: Mapping[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Rows ``query -> target, queries, gallery, MAP@all, chance@all, MAP@k, chance@k`` and the average row.

    The chance columns are the MAP of a random ranking of the same test labels (``crossmodal.metrics.chance_map``),
    what a score is read against; metrics saved before they were recorded leave them blank.
    """
    metrics = list(result["average"])

    def cells(scores: Mapping[str, Any], chance: Mapping[str, Any] | None) -> list[Any]:
        return [v for m in metrics for v in (scores[m], (chance or {}).get(m))]

    rows = [[f"{p['query']} -> {p['target']}", p.get("queries"), p.get("gallery"), *cells(p, p.get("chance"))]
            for p in result["pairs"]]
    rows.append(["average", None, None, *cells(result["average"], result.get("chance"))])
    columns = [c for m in metrics for c in (m, m.replace("MAP@", "chance@"))]
    return rows, ["pair (query -> target)", "queries", "gallery", *columns]
