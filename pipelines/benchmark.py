"""The methods benchmark: every method at every noise rate on the same data and splits, MAP@all mean +- std over seeds.

For each seed s and noise rate r the training split is corrupted once (``crossmodal.noise.corrupt`` with seed s; the
validation and test splits never), then every method is trained on that same split with its config's seed set to s,
and evaluated on the clean test split (``crossmodal.evaluation.evaluate``: MAP over every ordered modality pair,
averaged). Configs come from the method's defaults, then ``presets/<method>-<dataset>.json`` when it exists, then
``epochs``, then the overrides (``method.key=value`` for one method, ``key=value`` for every method that has the field).

Outputs (``write_report``): ``benchmark.md`` (the table), ``benchmark.json`` (every run, with per-pair MAP and the
effective noise) and ``benchmark.png`` (MAP@all against the noise rate, one line per method).

Tuned (``tune=N``, ``crossmodal benchmark --tune N``): instead of presets, every method starts from its auto recipe
(crossmodal.recipe) and gets the same N seeded Optuna TPE trials on the validation split at each noise rate (on seed 0's
corrupted training split; pipelines.tune), then its best config is trained with every seed; the table's caption gives
the tuning budget and a section lists each method's chosen values.

DRCL's Table VI (prior transfer): with ``prior_transfer``, each DRCL model of a (seed, rate) is saved and SDML and MARS
are trained again with its learned prior in place of their random orthogonal matrix (their common dimension set to
DRCL's), reported as ``sdml+drcl-prior`` and ``mars+drcl-prior``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crossmodal.config import MethodConfig, with_overrides
from crossmodal.device import resolve_device
from crossmodal.errors import ConfigError
from crossmodal.evaluation import evaluate
from crossmodal.featureset import CrossModalDataset
from crossmodal.methods import create_method, get_method, list_methods
from crossmodal.noise import corrupt, noise_report
from pipelines.datasource import data_source
from pipelines.train import resolve_config

if TYPE_CHECKING:
    from pipelines.tune import TuneResult

NoiseKind = Literal["label", "label-asymmetric", "alignment-partial", "alignment-complete"]
NOISE_KINDS: tuple[str, ...] = ("label", "label-asymmetric", "alignment-partial", "alignment-complete")
PRIOR_TRANSFER = ("sdml", "mars")  # the methods of DRCL's Table VI


@dataclass
class BenchmarkResult:
    """Every run of a benchmark and its summary table.

    Attributes:
        dataset: the dataset's name. noise_kind: what was corrupted. rates: the noise rates. methods: the rows of the
        table (a prior-transfer row is ``<method>+drcl-prior``). seeds: the seeds run. settings: the epochs and
        overrides used.
        runs: one dict per (seed, rate, method): ``MAP@all``, ``MAP@50``, their ``chance`` levels, per-pair MAP (with
        the pair's query and gallery sizes and chance), seconds, effective noise.
    """

    dataset: str
    noise_kind: str
    rates: list[float]
    methods: list[str]
    seeds: list[int]
    settings: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tuning: list[dict[str, Any]] = field(default_factory=list)  # per (method, rate): its pipelines.tune result

    def summary(self, metric: str = "MAP@all") -> list[dict[str, Any]]:
        """One row per (method, rate): mean and (population) std of ``metric`` over the seeds, and the run count."""
        rows = []
        for method in self.methods:
            for rate in self.rates:
                values = [r[metric] for r in self.runs if r["method"] == method and r["noise"] == rate]
                if values:
                    rows.append({"method": method, "noise": rate, metric: float(np.mean(values)),
                                 "std": float(np.std(values)), "runs": len(values)})
        return rows

    def markdown(self, metric: str = "MAP@all") -> str:
        """The table: one row per method, one column per noise rate, ``mean ± std`` over the seeds."""
        cells = {(r["method"], r["noise"]): f"{r[metric]:.3f} ± {r['std']:.3f}" for r in self.summary(metric)}
        effective = self._effective_rates()
        head = [f"{metric} on {self.dataset}, {self.noise_kind} noise, mean ± std over {len(self.seeds)} seed(s)"
                f" ({', '.join(f'{k}={v}' for k, v in self.settings.items())})", ""]
        lines = ["| method | " + " | ".join(f"noise {r:g}" for r in self.rates) + " |",
                 "|---" * (len(self.rates) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join(cells.get((m, r), "") for r in self.rates) + " |" for m in self.methods]
        chance = self._chance(metric)
        if chance is not None:
            lines.append("| chance (random ranking) | " + " | ".join(f"{chance:.3f}" for _ in self.rates) + " |")
        lines.append("| effective rate | " + " | ".join(effective.get(r, "") for r in self.rates) + " |")
        sizes = self._sizes()
        if sizes:
            head.insert(1, f"Test split (queries x gallery): {sizes}. Chance is the {metric} of a uniformly random "
                           "ranking of those labels (crossmodal.metrics.chance_map), the same at every noise rate "
                           "since only the training split is corrupted.")
        head[1:1] = [f"Warning: {w}" for w in self.warnings]
        return "\n".join(head + lines + self._tuning_lines()) + "\n"

    def _tuning_lines(self) -> list[str]:
        """The tuning budget and each (method, rate)'s chosen values, below the table of a tuned benchmark."""
        if not self.tuning:
            return []
        budget = self.tuning[0]["budget"]
        lines = ["", f"Tuning budget, the same for every method at every noise rate: {budget['trials']} trials of "
                     f"{budget['sampler']} maximising the {budget['objective']} (validation split; seed 0's corrupted "
                     f"training split; the test split never read), from each method's auto recipe; space: "
                     f"{', '.join(budget['space'][:4])} and two keys per method. Then every seed trains the best "
                     "config.", "", "| method | noise | validation MAP@all | trials done | seconds | chosen |",
                 "|---|---|---|---|---|---|"]
        for t in self.tuning:
            chosen = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
            lines.append(f"| {t['method']} | {t['noise']:g} | {t['best_val_map']:.3f} | {t['budget']['completed']}/"
                         f"{t['budget']['trials']} | {t['budget']['seconds']:.0f} | {chosen} |")
        return lines

    def _chance(self, metric: str) -> float | None:
        """The average over pairs of the chance level of ``metric`` (the test split is the same in every run)."""
        values = [r["chance"][metric] for r in self.runs if metric in r.get("chance", {})]
        return float(np.mean(values)) if values else None

    def _sizes(self) -> str:
        """``image->text 400x400, ...`` from the first run that recorded its pairs' sizes."""
        for run in self.runs:
            pairs = [p for p in run.get("pairs", []) if "queries" in p]
            if pairs:
                return ", ".join(f"{p['query']}->{p['target']} {p['queries']}x{p['gallery']}" for p in pairs)
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "noise_kind": self.noise_kind, "rates": self.rates, "methods": self.methods,
                "seeds": self.seeds, "settings": self.settings, "warnings": self.warnings, "summary": self.summary(),
                "runs": self.runs, "tuning": self.tuning}

    def _effective_rates(self) -> dict[float, str]:
        """Per rate, the mean measured noise over seeds and modalities (labels changed, or rows re-paired)."""
        key = "alignment" if self.noise_kind.startswith("alignment") else "label"
        out = {}
        for rate in self.rates:
            values = [v for r in self.runs if r["noise"] == rate and r.get("effective_noise")
                      for v in r["effective_noise"][key].values() if key == "label" or v > 0]
            out[rate] = f"{np.mean(values) if values else 0.0:.3f}"
        return out


def run_benchmark(dataset: str, data: str | Path | None = None, *, out: str | Path | None = None,
                  **options: Any) -> BenchmarkResult:
    """Load a dataset (a benchmark file, or a named synthetic set) and run ``benchmark_dataset`` on it with that
    dataset's presets.

    Args:
        dataset: ``synthetic``, ``synthetic-xmedia`` or a benchmark format (crossmodal.datasets.BENCHMARKS) read
            from ``data`` (``pipelines.datasource.data_source``).
        out: when given, the report is written there (``write_report``).
        options: ``benchmark_dataset``'s keyword arguments (``methods``, ``noise``, ``seeds``, ``tune`` ...).

    Raises:
        ConfigError: unknown dataset, method, noise kind or override; a benchmark format without ``data``.
    """
    result = benchmark_dataset(load_dataset(dataset, data), preset_dataset=dataset, **options)
    if out is not None:
        write_report(result, out)
    return result


def load_dataset(dataset: str, data: str | Path | None) -> CrossModalDataset:
    """A named synthetic set, or the benchmark file ``data`` in the format ``dataset`` (its ``DataSource``)."""
    return data_source(dataset, data).load()


def benchmark_dataset(
    ds: CrossModalDataset,
    *,
    methods: Sequence[str],
    noise: Sequence[float] = (0.0,),
    noise_kind: NoiseKind = "label",
    seeds: int = 3,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    prior_transfer: bool = False,
    preset_dataset: str | None = None,
    progress: Callable[[str], None] | None = None,
    tune: int = 0,
    tune_timeout_s: float | None = None,
) -> BenchmarkResult:
    """Train and evaluate every method at every noise rate and seed on ``ds`` (the end-to-end benchmarks call this).

    Args:
        ds: the dataset; only its training split is corrupted.
        methods: registry names, trained in this order (DRCL first when ``prior_transfer``).
        noise: the rates r.
        noise_kind: ``label`` (symmetric, MRL's protocol), ``label-asymmetric``, ``alignment-partial`` or
            ``alignment-complete`` (paired data only).
        seeds: seeds 0..seeds-1; each seeds the noise and every method's config.
        epochs: every method's epoch count (default: each method's own).
        overrides: ``method.key=value`` or ``key=value`` (every method with that field).
        preset_dataset: the dataset name whose ``presets/<method>-<name>.json`` apply.
        progress: called with one line per finished run.
        tune: when > 0, every method's config is its best of ``tune`` Optuna trials on the validation split at each
            rate (pipelines.tune; from its auto recipe, then ``epochs`` and ``overrides``) instead of its presets.
        tune_timeout_s: stop starting a method's trials after this many seconds (the table records how many ran).

    Returns:
        The BenchmarkResult (nothing is written).
    """
    if noise_kind not in NOISE_KINDS:
        raise ConfigError(f"unknown noise kind {noise_kind!r}", hint=f"choose one of {', '.join(NOISE_KINDS)}")
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        get_method(unknown[0])  # raises UnknownNameError with the closest names
    if prior_transfer and "drcl" not in methods:
        raise ConfigError("prior transfer needs drcl among the methods", hint="add drcl to --methods")
    if tune < 0:
        raise ConfigError(f"--tune {tune} is not a number of trials", hint="use --tune N with N >= 1 (0: no tuning)")
    if tune and prior_transfer:
        raise ConfigError("--prior-transfer compares SDML and MARS on the paper's presets, with and without DRCL's "
                          "prior; tuning them would change what it compares", hint="run --prior-transfer without "
                                                                                   "--tune")
    order = sorted(methods, key=lambda m: m != "drcl") if prior_transfer else list(methods)
    per_method = _split_overrides(overrides, order)
    rows = list(order) + ([f"{m}+drcl-prior" for m in PRIOR_TRANSFER] if prior_transfer else [])
    result = BenchmarkResult(dataset=ds.name, noise_kind=noise_kind, rates=[float(r) for r in noise], methods=rows,
                             seeds=list(range(seeds)), settings={"epochs": epochs or ("recipe's cap, early "
                                                                                      "stopping" if tune else
                                                                                      "method default"),
                                                                  **({"overrides": list(overrides)} if overrides
                                                                     else {}),
                                                                  **({"tuned": f"{tune} trials"} if tune else {})})
    torch_device = resolve_device(device)
    warnings: list[str] = []
    for method in order:  # once per method, before hours of runs
        resolve_config(method, dataset=preset_dataset, epochs=epochs, overrides=per_method[method], warnings=warnings)
    result.warnings = warnings
    for warning in warnings:
        _report(progress, f"warning: {warning}")
    tuned = _tune_all(ds, order, per_method, result, noise_kind=noise_kind, trials=tune, timeout_s=tune_timeout_s,
                      epochs=epochs, device=device, progress=progress) if tune else {}
    with tempfile.TemporaryDirectory(prefix="crossmodal-benchmark-") as scratch:
        for seed in range(seeds):
            for rate in result.rates:
                train = corrupted_train(ds, noise_kind, rate, seed)
                effective = noise_report(ds.train, train)
                for method in order:
                    config = tuned[(method, rate)].best_config(seed) if tune else resolve_config(
                        method, dataset=preset_dataset, epochs=epochs, seed=seed, overrides=per_method[method])
                    model, record = _run(method, config, train, ds, torch_device)
                    result.runs.append({"method": method, "noise": rate, "seed": seed, **record,
                                        "effective_noise": {"label": effective.label,
                                                            "alignment": effective.alignment}})
                    _report(progress, result.runs[-1])
                    if prior_transfer and method == "drcl":
                        source = model.save(Path(scratch) / f"drcl-{seed}-{rate}")
                        for other in PRIOR_TRANSFER:
                            config = resolve_config(other, dataset=preset_dataset, epochs=epochs, seed=seed,
                                                    overrides=[*per_method.get(other, ()), f"prior_from={source}",
                                                               f"dim={model.prior.shape[0]}"])
                            _, record = _run(other, config, train, ds, torch_device)
                            result.runs.append({"method": f"{other}+drcl-prior", "noise": rate, "seed": seed,
                                                **record})
                            _report(progress, result.runs[-1])
    return result


def _tune_all(ds: CrossModalDataset, methods: Sequence[str], per_method: Mapping[str, Sequence[str]],
              result: BenchmarkResult, *, noise_kind: str, trials: int, timeout_s: float | None, epochs: int | None,
              device: str, progress: Callable[[str], None] | None) -> dict[tuple[str, float], TuneResult]:
    """Tune every method at every rate with the same budget; record each result in ``result.tuning``.

    Each rate is tuned on seed 0's corrupted training split (the data a user at that noise has) and the clean
    validation split; the test split is left out of the dataset the tuner gets.
    """
    from pipelines.tune import tune as tune_method

    tuned: dict[tuple[str, float], TuneResult] = {}
    for rate in result.rates:
        view = dataclasses.replace(ds, train=corrupted_train(ds, noise_kind, rate, 0), test={})
        for method in methods:
            base = [*([f"epochs={epochs}"] if epochs else []), *per_method[method]]
            found = tune_method(method, view, trials=trials, seed=0, timeout_s=timeout_s, device=device,
                                base_overrides=base, progress=progress)
            tuned[(method, rate)] = found
            result.tuning.append({"method": method, "noise": rate, "best_val_map": found.best_val_map,
                                  "params": found.best_params, "chosen": found.chosen,
                                  "best_overrides": found.best_overrides,
                                  "budget": found.budget, "trials": [t.to_dict() for t in found.trials]})
            _report(progress, f"{method:>18s}  noise {rate:.2f}  tuned: validation MAP@all {found.best_val_map:.4f} "
                              f"({found.budget['completed']} trials, {found.budget['seconds']:.0f} s)")
    return tuned


def parse_rates(text: str) -> list[float]:
    """``"0,0.2,0.4"`` -> ``[0.0, 0.2, 0.4]``.

    Raises:
        ConfigError: an item is not a number in [0, 1].
    """
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or not all(0 <= r <= 1 for r in rates):
        raise ConfigError(f"noise rates {text!r} are not comma-separated numbers in [0, 1]",
                          hint="write e.g. --noise 0,0.2,0.4")
    return rates


def write_report(result: BenchmarkResult, out: str | Path) -> dict[str, Path]:
    """Write ``benchmark.md``, ``benchmark.json`` and ``benchmark.png`` into ``out``; return their paths."""
    from pipelines.plots import plot_metric_vs_noise

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "benchmark.md", "json": out / "benchmark.json", "plot": out / "benchmark.png"}
    paths["markdown"].write_text(result.markdown())
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2))
    plot_metric_vs_noise(result.summary(), paths["plot"],
                         title=f"{result.dataset}: MAP@all vs {result.noise_kind} noise")
    return paths


def corrupted_train(ds: CrossModalDataset, kind: str, rate: float, seed: int) -> dict:
    """The training split with ``rate`` noise of ``kind`` (``label``, ``label-asymmetric`` or ``alignment-*``) drawn
    with ``seed``; rate 0 gives it unchanged."""
    if rate == 0:
        return dict(ds.train)
    if kind.startswith("alignment"):
        return corrupt(ds.train, alignment_noise=(kind.split("-", 1)[1], rate), seed=seed, paired=ds.paired)
    return corrupt(ds.train, label_noise=rate, label_noise_kind="asymmetric" if kind == "label-asymmetric"
                   else "symmetric", seed=seed, paired=ds.paired)


def _run(method: str, config: MethodConfig, train: Mapping, ds: CrossModalDataset, device) -> tuple[Any, dict]:
    start = time.perf_counter()
    model = create_method(method).fit(train, ds.val, config=config, device=device)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, ds.test, pr_curves=False)
    return model, {"MAP@all": metrics["average"]["MAP@all"], "MAP@50": metrics["average"]["MAP@50"],
                   "chance": metrics["chance"], "pairs": metrics["pairs"], "seconds": seconds}


def _split_overrides(overrides: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``method.key=value`` goes to that method; ``key=value`` to every method whose config has ``key``.

    Raises:
        ConfigError: a malformed item, a method not benchmarked, or a key no method has.
    """
    out: dict[str, list[str]] = {m: [] for m in {*methods, *PRIOR_TRANSFER}}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not [method.]key=value", hint="write e.g. --set sdml.dim=64")
        method, dot, field_name = key.strip().rpartition(".")
        if dot:
            if method not in out:
                raise ConfigError(f"override {item!r} names {method!r}, which is not benchmarked",
                                  hint=f"benchmarked: {', '.join(methods)}")
            out[method].append(f"{field_name}={value}")
            continue
        takers = [m for m in out if field_name in {f.name for f in dataclasses.fields(get_method(m).Config)}]
        if not takers:
            raise ConfigError(f"no benchmarked method has a config field {field_name!r}",
                              hint="check the name, or prefix it with the method: --set drcl.lr_image=1e-3")
        for m in takers:
            out[m].append(f"{field_name}={value}")
    for m, items in out.items():
        with_overrides(get_method(m).Config(), items)  # fail before hours of training, not after
    return out


def _report(progress: Callable[[str], None] | None, run: Mapping[str, Any] | str) -> None:
    if progress is None:
        return
    if isinstance(run, str):
        progress(run)
        return
    progress(f"{run['method']:>18s}  noise {run['noise']:.2f}  seed {run['seed']}  MAP@all {run['MAP@all']:.4f}"
             f"  ({run['seconds']:.1f}s)")
