"""Where a run's data comes from: a workspace store and its splits, a benchmark feature file, or synthetic data.

``crossmodal train``, ``evaluate`` and ``benchmark`` each take one :data:`DataSource`. Training writes its
:meth:`record` into the model card (``source``), so ``crossmodal evaluate`` reloads the very test split the model was
scored on (:func:`load_test_split`), whichever kind it was:

* :class:`WorkspaceSource`: the labelled items of a workspace's store, split by seed (``pipelines.workspace``);
  record ``{"kind": "workspace", "workspace", "split_seed"}``; the card's features and classes give the tables.
* :class:`BenchmarkFile`: a published feature file and its own split (``crossmodal.datasets``); record
  ``{"kind": "benchmark", "dataset", "path"}``.
* :class:`SyntheticSource`: generated data (``crossmodal.synthetic``); record ``{"kind": "synthetic", "name",
  "parameters"}``, the generator's arguments, so the same arrays come back.

Cards written before the ``source`` field kept the same record as ``extra.data_source``; it is read as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from crossmodal.datasets import BENCHMARKS, load_benchmark
from crossmodal.errors import ConfigError, FeatureMismatchError
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.synthetic import SYNTHETIC_SETS, make_synthetic
from pipelines.workspace import Workspace


@dataclass(frozen=True)
class WorkspaceSource:
    """The labelled items of a workspace's store, split with ``split_seed`` (``Workspace.datasets``).

    Attributes:
        workspace: the workspace folder.
        split_seed: the seed of the recorded per-class split (``store/splits-<seed>.json``).
        keys: modality -> extractor key of the table to read (None: every labelled modality, each its
            ``Workspace.feature_key``, which says its choice).
        classes: class names in label-index order (None: the sorted union over the modalities read).
    """

    kind: ClassVar[str] = "workspace"
    workspace: Path
    split_seed: int = 1
    keys: Mapping[str, str] | None = None
    classes: tuple[str, ...] | None = None

    def load(self) -> CrossModalDataset:
        """The train/val/test FeatureSets (``Workspace.datasets``; raises what it raises)."""
        keys = dict(self.keys) if self.keys else None
        return Workspace(self.workspace).datasets(list(keys) if keys else None, seed=self.split_seed, keys=keys,
                                                  classes=self.classes)

    def record(self) -> dict[str, Any]:
        """The card's ``source``: the tables and classes are in the card already (``features``, ``extra.classes``)."""
        return {"kind": self.kind, "workspace": str(Path(self.workspace).resolve()), "split_seed": self.split_seed}

    def describe(self) -> str:
        return f"the workspace {self.workspace} (split seed {self.split_seed})"


@dataclass(frozen=True)
class BenchmarkFile:
    """A published benchmark feature file in the format ``dataset`` (one of ``crossmodal.datasets.BENCHMARKS``),
    with the split its format fixes.

    Raises:
        ConfigError: ``dataset`` is not a benchmark format.
    """

    kind: ClassVar[str] = "benchmark"
    dataset: str
    path: Path

    def __post_init__(self) -> None:
        if self.dataset not in BENCHMARKS:
            raise ConfigError(f"unknown dataset {self.dataset!r}", hint=f"choose one of {', '.join(dataset_names())}")

    def load(self) -> CrossModalDataset:
        """The file's train/val/test FeatureSets (``crossmodal.datasets.load_benchmark``; DatasetFormatError)."""
        return load_benchmark(self.dataset, self.path)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "dataset": self.dataset, "path": str(Path(self.path).resolve())}

    def describe(self) -> str:
        return f"the {self.dataset} file"


@dataclass(frozen=True)
class SyntheticSource:
    """Generated class-structured data: ``make_synthetic(**parameters, name=name)``, the same arrays every time.

    Attributes:
        name: the set's name (``crossmodal.synthetic.SYNTHETIC_SETS`` names the shipped ones).
        parameters: ``make_synthetic``'s arguments, ``seed`` included.
    """

    kind: ClassVar[str] = "synthetic"
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> CrossModalDataset:
        """The generated train/val/test FeatureSets (ConfigError for parameters ``make_synthetic`` refuses)."""
        try:
            return make_synthetic(**self.parameters, name=self.name)
        except TypeError as exc:  # a record edited by hand, or from a later version with other arguments
            raise ConfigError(f"synthetic set {self.name!r}: parameters {sorted(self.parameters)} do not fit "
                              f"make_synthetic ({exc})", hint="re-train on the set to record its parameters") from exc

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "parameters": dict(self.parameters)}

    def describe(self) -> str:
        return f"the synthetic set {self.name} (seed {self.parameters.get('seed')})"


DataSource = WorkspaceSource | BenchmarkFile | SyntheticSource
"""Where a run's data comes from (the module docstring)."""


def dataset_names() -> list[str]:
    """What ``--dataset`` takes: the named synthetic sets, then the benchmark formats."""
    return [*SYNTHETIC_SETS, *BENCHMARKS]


def data_source(dataset: str | None, data: str | os.PathLike | None = None, *,
                workspace: str | os.PathLike | None = None, split_seed: int = 1) -> DataSource:
    """The source the command-line options name: ``--dataset`` (a synthetic set, or a benchmark format read from
    ``--data``), else the workspace's store split with ``split_seed``.

    Raises:
        ConfigError: an unknown dataset; a benchmark format without ``data``; ``data`` without a benchmark format.
    """
    if dataset is None:
        if data is not None:
            raise ConfigError("--data needs --dataset (the file's format)",
                              hint=f"add --dataset NAME ({', '.join(BENCHMARKS)}), or drop --data to train in the "
                                   "workspace")
        if workspace is None:
            raise ConfigError("no data named", hint="give --dataset NAME (--data FILE), or a workspace")
        return WorkspaceSource(Path(workspace), split_seed=split_seed)
    if dataset in SYNTHETIC_SETS:
        if data is not None:
            raise ConfigError(f"--dataset {dataset} is generated; --data is for benchmark files",
                              hint="drop --data, or name the file's format with --dataset")
        return SyntheticSource(dataset, SYNTHETIC_SETS[dataset])
    if dataset not in BENCHMARKS:
        raise ConfigError(f"unknown dataset {dataset!r}", hint=f"choose one of {', '.join(dataset_names())}")
    if data is None:
        raise ConfigError(f"--dataset {dataset} needs --data FILE", hint="point --data at the benchmark feature file")
    return BenchmarkFile(dataset, Path(data))


def from_record(record: Mapping[str, Any]) -> DataSource:
    """The source a card's ``source`` record describes (``record()`` inverted).

    Raises:
        ConfigError: an unknown kind or a record missing a field.
    """
    kind = record.get("kind")
    try:
        if kind == WorkspaceSource.kind:
            return WorkspaceSource(Path(record["workspace"]), split_seed=int(record["split_seed"]))
        if kind == BenchmarkFile.kind:
            return BenchmarkFile(record["dataset"], Path(record["path"]))
        if kind == SyntheticSource.kind:
            return SyntheticSource(record["name"], dict(record["parameters"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the model card's data source {dict(record)} lacks {exc}",
                          hint="re-train the model to record where its data came from") from exc
    raise ConfigError(f"the model card's data source has an unknown kind {kind!r}",
                      hint="re-train the model to record where its data came from")


def card_source(card: Mapping[str, Any], *, data: str | os.PathLike | None = None,
                model_dir: str | os.PathLike | None = None) -> DataSource:
    """The source of a model card (``crossmodal.model.read_card``), ready to load the data the model was trained on.

    A workspace source reads the tables the card's features name, with the card's classes; one whose recorded folder
    moved is found as ``model_dir/../..`` (``models/NAME``). ``data`` replaces a benchmark file that moved.

    Raises:
        ConfigError: the card records no source and ``data`` is not given, or ``data`` is given for a model that was
            not trained on a benchmark file.
        FeatureMismatchError: the workspace no longer holds features of an extractor key the card records.
    """
    record = card.get("source") or card.get("extra", {}).get("data_source")  # before the card's source field
    if not record:
        raise ConfigError("the model card does not say which data it was trained on",
                          hint="re-train with crossmodal train --dataset NAME --data FILE")
    source = from_record(record)
    if data is not None:
        if not isinstance(source, BenchmarkFile):
            raise ConfigError(f"--data is for models trained on a benchmark file; this one was trained on "
                              f"{source.describe()}", hint="drop --data")
        return BenchmarkFile(source.dataset, Path(data))
    if not isinstance(source, WorkspaceSource):
        return source
    root = source.workspace
    if not root.is_dir() and model_dir is not None:
        root = Path(model_dir).resolve().parent.parent
    keys = {m: f["extractor_key"] for m, f in card["features"].items()}
    ws = Workspace(root)
    for modality, key in keys.items():
        if key not in ws.store.keys(modality):
            raise FeatureMismatchError(f"{ws.store_dir}: no {modality} features of extractor {key}, which the model "
                                       "was trained on", hint="re-extract that modality with the same extractor")
    classes = card.get("extra", {}).get("classes")
    return WorkspaceSource(root, split_seed=source.split_seed, keys=keys,
                           classes=tuple(classes) if classes is not None else None)


def load_test_split(card: Mapping[str, Any], data: str | os.PathLike | None = None, *,
                    model_dir: str | os.PathLike | None = None) -> dict[str, FeatureSet]:
    """The test FeatureSets a model was evaluated on, from its card's source (``card_source``; raises what it
    raises): ``crossmodal evaluate`` and adding a modality to a workspace model."""
    return dict(card_source(card, data=data, model_dir=model_dir).load().test)
