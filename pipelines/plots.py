"""PNG figures: precision-recall curves, training curves and metric-vs-noise tables.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas), never through pyplot's global state, so they can
be drawn from any thread (the web server, Ray workers) and never open a window.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

# Record fields of a training log that are bookkeeping, not curves.
NOT_CURVES = frozenset({"stage", "epoch", "epochs", "time", "seconds"})
MAX_PANELS = 12
# Up to this many PR curves share one panel; more (5 modalities give 20 ordered pairs) get one panel per query modality,
# the retrieved modality told by a colour that is the same in every panel, under one legend outside the panels.
ONE_PANEL_CURVES = 6

__all__ = ["plot_metric_vs_noise", "plot_pr_curves", "plot_training_curves"]


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Draw precision against recall, one line per entry, into a PNG.

    Up to ONE_PANEL_CURVES curves share one panel. More, labelled ``"query -> target"``, are drawn as small multiples:
    one panel per query modality, one colour per target modality (the same in every panel) and one legend below the
    panels. More labels of another form share one panel, their legend outside the axes.

    Args:
        curves: label (e.g. ``"image -> text"``) -> ``(precision, recall)`` float arrays of one length, as
            ``crossmodal.metrics.pr_curve`` returns them.
        path: the PNG to write (folders are created).
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    by_query = _by_query(curves) if len(curves) > ONE_PANEL_CURVES else None
    if by_query is None:
        fig, ax = _figure(1, legend_outside=len(curves) > ONE_PANEL_CURVES)
        for label, (precision, recall) in curves.items():
            _pr_line(ax[0], precision, recall, label=label)
        _pr_axes(ax[0], title or "precision-recall")
        if len(curves) > ONE_PANEL_CURVES:
            ax[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
        elif curves:
            ax[0].legend(fontsize="small")
        return _save(fig, path)
    targets = sorted({target for lines in by_query.values() for target in lines})
    colours = {target: f"C{i % 10}" for i, target in enumerate(targets)}
    fig, axes = _figure(len(by_query), columns=min(len(by_query), 3))
    for ax, (query, lines) in zip(axes, by_query.items()):
        for target, (precision, recall) in lines.items():
            _pr_line(ax, precision, recall, label=target, color=colours[target])
        _pr_axes(ax, f"{query} queries")
    handles = [axes[0].plot([], [], color=colours[t], label=t)[0] for t in targets]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(targets), 6), title="retrieved modality",
               fontsize="small")
    fig.suptitle(title or "precision-recall")
    return _save(fig, path)


def _by_query(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]
              ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None:
    """``{query: {target: curve}}`` from ``"query -> target"`` labels (in their order), or None if one differs."""
    grouped: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for label, curve in curves.items():
        parts = [part.strip() for part in label.split("->")]
        if len(parts) != 2 or not all(parts):
            return None
        grouped.setdefault(parts[0], {})[parts[1]] = curve
    return grouped


def _pr_line(ax: Any, precision: Any, recall: Any, **style: Any) -> None:
    precision, recall = np.asarray(precision), np.asarray(recall)
    ax.plot(recall, precision, marker="." if len(precision) <= 30 else None, **style)


def _pr_axes(ax: Any, title: str) -> None:
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)


def plot_training_curves(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                         path: str | Path, *, title: str = "") -> Path:
    """Draw every logged number against the epoch, one panel per quantity and one line per stage.

    Args:
        history: the per-epoch log records, either a list (records carry ``"stage"``, as ``train_log.jsonl`` does;
            records without one form a single stage) or a mapping stage -> list of records (``fit_loop``'s return).
            Each record has ``"epoch"`` and numbers (``loss``, ``gce_loss``, ``val_loss``, ``quality`` ...); None and
            non-finite values are gaps. A repeated epoch of a stage (a resumed run) keeps its last record.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path`` as a Path. An empty history gives a figure that says so.
    """
    stages = _by_stage(history)
    keys = sorted({k for records in stages.values() for r in records for k, v in r.items()
                   if k not in NOT_CURVES and _number(v) is not None},
                  key=lambda k: (not k.endswith("loss"), k))[:MAX_PANELS]
    fig, axes = _figure(max(len(keys), 1), columns=min(max(len(keys), 1), 3))
    if not keys:
        axes[0].text(0.5, 0.5, "no training log", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, key in zip(axes, keys):
        for stage, records in stages.items():
            points = [(r["epoch"], _number(r.get(key))) for r in records]
            if any(y is not None for _, y in points):
                ax.plot([x for x, _ in points], [math.nan if y is None else y for _, y in points], label=stage)
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(stages) > 1:
            ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_metric_vs_noise(table: Sequence[Mapping[str, Any]], path: str | Path, *, x: str = "noise",
                         y: str = "MAP@all", series: str = "method", title: str = "") -> Path:
    """Draw a metric against the noise rate, one line per method (the papers' robustness figures).

    Args:
        table: rows such as ``{"method": "drcl", "noise": 0.4, "MAP@all": 0.51}``; rows lacking ``x`` or ``y`` are
            left out.
        path: the PNG to write.
        x, y, series: the row keys for the horizontal axis, the vertical axis and the line.
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in table:
        if _number(row.get(x)) is not None and _number(row.get(y)) is not None:
            lines[str(row.get(series, ""))].append((float(row[x]), float(row[y])))
    fig, ax = _figure(1)
    for name, points in lines.items():
        points.sort()
        ax[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax[0].set(xlabel=x, ylabel=y, title=title or f"{y} vs {x}")
    if lines:
        ax[0].legend(fontsize="small")
    return _save(fig, path)


def _by_stage(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> dict[str, list[Mapping[str, Any]]]:
    grouped = history.items() if isinstance(history, Mapping) else [(None, history)]
    stages: dict[str, dict[Any, Mapping[str, Any]]] = defaultdict(dict)
    for given, records in grouped:
        for i, record in enumerate(records):
            stage = str(given if given is not None else record.get("stage", "train"))
            stages[stage][record.get("epoch", i + 1)] = record  # a resumed epoch replaces the earlier one
    return {stage: [{"epoch": epoch, **r} for epoch, r in sorted(by_epoch.items())]
            for stage, by_epoch in stages.items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _figure(panels: int, *, columns: int = 1, legend_outside: bool = False) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure  # the Agg canvas by default: no pyplot, no display

    rows = math.ceil(panels / columns)
    extra = 2.4 if legend_outside else 0.0  # room on the right for a legend beside the axes
    fig = Figure(figsize=(4.2 * columns + 1.0 + extra, 3.2 * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path
