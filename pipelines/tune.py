"""Fair tuning: every method gets the same number of Optuna trials, the same sampler and the same objective.

``tune(method, dataset, trials=N)`` starts from the method's auto recipe (crossmodal.recipe: batch, widths, common
space and epochs fitted to the training data's shape), then lets Optuna's TPE sampler, seeded, search

* the learning rate, log-uniform in [1e-5, 1e-2] (every ``lr`` field of the config set to it but DRCL's SPL rate,
  which follows the recipe's rule for the trial's batch: ``crossmodal.recipe.RULE_ONLY_LRS``),
* the batch size in {32, 64, 128, 256} (those within the smallest modality's training items),
* a width scale in {0.5, 1, 2} on the recipe's hidden widths,
* the early-stopping patience in {5, 10, 20} (the recipe's epoch cap stays the cap),
* and the method's two key hyper-parameters (``KEYS``: DRCL's fixed q and J_D weight, SDML's alpha, ...),

maximising the validation MAP@all averaged over every ordered modality pair (``crossmodal.evaluation.evaluate``'s
average, as the test tables). The first ten trials are TPE's random start-up; in them the four shared values come
from one seeded sequence that every method gets alike (``shared_draws``: common random numbers), so trial i of each
method tries the same rate, batch, width and patience. Only the training and validation splits are given to a trial:
the test split is never read. MCCA is closed-form (no rate, batch, width or epochs): its trials search its ridge and
eigenvalue power only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossmodal.config import MethodConfig, with_overrides
from crossmodal.device import resolve_device
from crossmodal.errors import ConfigError, CrossmodalError
from crossmodal.featureset import CrossModalDataset
from crossmodal.methods import create_method, get_method
from crossmodal.recipe import (
    RULE_ONLY_LRS,
    DataShape,
    auto_config,
    lr_fields,
    rule_lr,
    searched_lr_fields,
    validation_map,
    width_fields,
)

LR_RANGE = (1e-5, 1e-2)
BATCHES = (32, 64, 128, 256)
WIDTH_SCALES = (0.5, 1.0, 2.0)
PATIENCES = (5, 10, 20)
STARTUP_TRIALS = 10  # TPE's random start-up trials (Optuna's default), before it models the results


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: ``log`` (log-uniform in [low, high]), ``float`` (uniform) or ``choice``.

    ``off``: the weight of a loss term that the search may also switch off (0). Whether it is on is drawn first (a
    categorical ``<name>_on``), since a log range cannot reach 0 and a term's best weight is sometimes none at all.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()
    off: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.off and not trial.suggest_categorical(f"{self.name}_on", [True, False]):
            return 0.0
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {{{', '.join(f'{c:g}' for c in self.choices)}}}"
        off = " or 0 (off)" if self.off else ""
        return (f"{self.name} {'log-uniform' if self.kind == 'log' else 'uniform'} in [{self.low:g}, {self.high:g}]"
                f"{off}")


KEYS: dict[str, tuple[Param, ...]] = {
    # each method's two hyper-parameters its paper names as the ones that matter, in ranges around the paper's value
    "drcl": (Param("q_fixed", "log", 0.1, 2.0), Param("reversible", "log", 0.01, 1.0, off=True)),
    "sdml": (Param("alpha", "float", 0.1, 0.9), Param("lr_others_ratio", "log", 0.5, 4.0)),
    "mars": (Param("lambda_rec", "log", 0.05, 2.0), Param("lambda_orth", "log", 0.01, 1.0)),
    "dscmr": (Param("alpha", "log", 1e-4, 0.1), Param("beta", "log", 0.01, 1.0)),
    "mcca": (Param("ridge", "log", 1e-5, 0.1), Param("eigen_power", "float", 0.0, 1.0)),
    "sccmr": (Param("temperature", "log", 1.0, 10.0), Param("epsilon", "float", 0.5, 0.99)),
    "hcmsl": (Param("margin", "log", 0.2, 2.0), Param("lambda_cross", "log", 1e-4, 0.1)),
    "rcar": (Param("margin", "float", 0.05, 0.5), Param("temperature", "log", 0.01, 0.2)),
    "sedel": (Param("sedel_temperature", "log", 0.03, 0.3), Param("sedel_gamma", "float", 0.5, 4.0)),
}
"""SDML's second key is the ratio of its other modalities' rate to the first's (``lr_others`` = ratio x ``lr``).
DRCL's ``reversible`` is the weight of both reversible terms, J_D and J_MSE (``alpha`` = ``beta``, Eq. 8), or 0: on
the digits leaderboard they cost clean-label fit (J_L alone 0.842 vs 0.821) and bought noise robustness at 0.4, so
whether to use them is the tuner's to decide per dataset and noise rate (benchmarks/results/leaderboard/README.md)."""


@dataclass
class Trial:
    """One tuning trial: the searched values, the overrides they became, the validation MAP and the wall time."""

    number: int
    params: dict[str, Any]
    overrides: list[str]
    val_map: float | None
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TuneResult:
    """What ``tune`` found.

    Attributes:
        best_overrides: the whole best config as ``key=value`` items on the method's defaults (the recipe's choices,
            the base overrides, then the best trial's values); ``best_config(seed)`` applies them.
        best_val_map: its validation MAP@all. trials: every trial, in order. budget: what the search was given.
    """

    method: str
    best_overrides: list[str]
    best_val_map: float
    best_params: dict[str, Any]
    chosen: list[str] = field(default_factory=list)  # the best trial's own items (the searched values)
    trials: list[Trial] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)

    def best_config(self, seed: int | None = None) -> MethodConfig:
        config = with_overrides(get_method(self.method).Config(), self.best_overrides)
        return config if seed is None else with_overrides(config, {"seed": seed})

    def describe_budget(self) -> str:
        """One sentence: trials, sampler, objective, time and search space."""
        b = self.budget
        timeout = "" if b.get("timeout_s") is None else f", timeout {b['timeout_s']:g} s"
        return (f"{b['trials']} {b['sampler']} trials ({b['completed']} completed, {b['seconds']:.0f} s{timeout}) "
                f"maximising {b['objective']}; space: {'; '.join(b['space'])}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "best_overrides": self.best_overrides, "best_val_map": self.best_val_map,
                "best_params": self.best_params, "chosen": self.chosen, "budget": self.budget,
                "trials": [t.to_dict() for t in self.trials]}


def search_space(method: str, shape: DataShape) -> list[Param]:
    """The searched parameters of ``method`` on data of ``shape`` (the module docstring's list)."""
    if method not in KEYS:
        get_method(method)  # an unknown name raises UnknownNameError with the closest names
        raise ConfigError(f"no tuning keys for method {method!r}", hint=f"tunable: {', '.join(KEYS)}")
    return [*shared_space(method, shape), *KEYS[method]]


def shared_space(method: str, shape: DataShape) -> list[Param]:
    """The parameters every trained method searches: learning rate, batch size, width scale and patience (none for
    closed-form MCCA)."""
    if method == "mcca":
        return []
    batches = tuple(b for b in BATCHES if b <= shape.n_min) or (2 ** int(math.log2(max(shape.n_min, 2))),)
    return [Param("lr", "log", *LR_RANGE), Param("batch_size", "choice", choices=batches),
            Param("width_scale", "choice", choices=WIDTH_SCALES), Param("patience", "choice", choices=PATIENCES)]


def shared_draws(space: Sequence[Param], *, trials: int, seed: int) -> list[dict[str, Any]]:
    """The shared parameters' values of the first ``trials`` trials, drawn at random from ``seed`` alone.

    Common random numbers: with these enqueued, trial i of every method on a dataset tries the same learning rate,
    batch, width scale and patience, whatever the method's own keys draw, so the methods differ in their method and
    not in their luck (the sampler's single random stream would otherwise shift with each method's number of draws).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        draw: dict[str, Any] = {}
        for p in space:
            if p.kind == "choice":
                draw[p.name] = p.choices[int(rng.integers(len(p.choices)))]
            elif p.kind == "log":
                draw[p.name] = float(np.exp(rng.uniform(math.log(p.low), math.log(p.high))))
            else:
                draw[p.name] = float(rng.uniform(p.low, p.high))
        out.append(draw)
    return out


def trial_overrides(method: str, base: MethodConfig, params: Mapping[str, Any]) -> list[str]:
    """The ``key=value`` items one trial's ``params`` set on ``base`` (the recipe's config)."""
    out: list[str] = []
    for name, value in params.items():
        if name == "lr":
            out += [f"{f}={value:.4g}" for f in searched_lr_fields(type(base)) if f != "lr_others"]
        elif name == "batch_size":
            out += [f"batch_size={value}", *(f"{f}={rule_lr(value):g}" for f in RULE_ONLY_LRS
                                             if f in lr_fields(type(base)))]
        elif name == "lr_others_ratio":
            out.append(f"lr_others={params['lr'] * value:.4g}")
        elif name == "reversible":
            out += [f"alpha={value:.4g}", f"beta={value:.4g}"]
        elif name == "width_scale":
            for f in width_fields(type(base)):
                widths = [max(8, round(w * value)) for w in getattr(base, f)]
                out.append(f"{f}=[{','.join(map(str, widths))}]")
        elif isinstance(value, float):
            out.append(f"{name}={value:.4g}")
        else:
            out.append(f"{name}={value}")
    return out


def tune(
    method: str,
    dataset: CrossModalDataset,
    *,
    trials: int,
    seed: int = 0,
    timeout_s: float | None = None,
    device: str = "cpu",
    base_overrides: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search ``method``'s hyper-parameters on ``dataset``'s validation split with ``trials`` seeded TPE trials.

    Args:
        dataset: its ``train`` and ``val`` splits are used; its ``test`` split is never read.
        trials: the number of trials (the budget every method of a leaderboard gets).
        seed: seeds the sampler and every trial's training.
        timeout_s: stop starting trials after this many seconds (None: run all ``trials``).
        base_overrides: ``key=value`` items applied on the recipe before each trial's values (e.g. ``epochs=30``).
        progress: called with one line per finished trial.

    Raises:
        ConfigError: ``trials`` < 1, an unknown method or override, or every trial failed (the first reason given).
    """
    try:
        import optuna
    except ImportError as e:
        raise ConfigError("tuning needs Optuna, which is not installed",
                          hint="pip install 'crossmodal-toolkit[tune]' (or pip install optuna)") from e
    if trials < 1:
        raise ConfigError(f"tuning needs at least 1 trial, got {trials}", hint="use --tune N with N >= 1")
    shape = DataShape.of(dataset.train)
    base, recipe = auto_config(method, shape)
    base = with_overrides(with_overrides(base, list(base_overrides)), {"seed": seed})
    space = search_space(method, shape)
    torch_device = resolve_device(device)
    train, val = dataset.train, dataset.val  # the test split stays out of reach of every trial
    records: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in space}
        overrides = trial_overrides(method, base, params)
        t0 = time.perf_counter()
        try:
            config = with_overrides(base, overrides)
            model = create_method(method).fit(train, val, config=config, device=torch_device)
            score = validation_map(model, val)
        except CrossmodalError as e:  # a config this data refuses is a failed trial with its reason, not a crash
            records.append(Trial(trial.number, params, overrides, None, time.perf_counter() - t0, f"{e}"))
            _say(progress, f"{method} trial {trial.number}: failed ({e})")
            raise
        records.append(Trial(trial.number, params, overrides, score, time.perf_counter() - t0))
        _say(progress, f"{method} trial {trial.number}: validation MAP@all {score:.4f} ({records[-1].seconds:.1f} s)"
                       f"  {' '.join(overrides)}")
        return score

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our one line per trial (failures too) replaces its log
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    shared = shared_space(method, shape)
    for draw in shared_draws(shared, trials=min(trials, STARTUP_TRIALS), seed=seed) if shared else ():
        study.enqueue_trial(draw)  # the random start-up trials' shared values: the same for every method
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=(CrossmodalError,))
    seconds = time.perf_counter() - started
    done = [t for t in records if t.val_map is not None]
    if not done:
        raise ConfigError(f"every one of {len(records)} {method} tuning trials failed; the first: {records[0].error}",
                          hint="check the base overrides, or give more training items per modality")
    best = max(done, key=lambda t: t.val_map or 0.0)  # max keeps the earliest on ties
    budget = {"trials": trials, "completed": len(done), "failed": len(records) - len(done), "seconds": seconds,
              "timeout_s": timeout_s, "sampler": f"Optuna {optuna.__version__} TPE (seed {seed})", "seed": seed,
              "common_random_numbers": [p.name for p in shared],
              "objective": "validation MAP@all averaged over ordered modality pairs",
              "space": [p.describe() for p in space], "recipe": recipe.overrides(),
              "base_overrides": list(base_overrides), "data": shape.describe()}
    full = [*recipe.overrides(), *base_overrides, *best.overrides]
    return TuneResult(method=method, best_overrides=full, best_val_map=float(best.val_map or 0.0),
                      best_params=best.params, chosen=best.overrides, trials=records, budget=budget)


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress is not None:
        progress(line)
