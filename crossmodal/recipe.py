"""The auto recipe: hyper-parameters chosen from the training data's shape, for every method, each with its reason.

The papers' presets fit the features they were tuned for (4,096-d VGG images, 300-d Doc2Vec texts, 2,000-32,000 items
per modality, batches of 1,024) and are brittle elsewhere: on Wikipedia's 128-d SIFT / 10-d LDA features DRCL at the
paper's rates (6e-6 images, 5e-3 texts) scored 0.165 MAP@all and at Adam 1e-3 with batches of 64 it led the methods
(0.290; benchmarks/results/methods-wiki-label-drcl-small-lr). The rules below turn that measurement into a recipe that
scales with the data:

* batch size: a power of two near n/30 for the smallest modality's n, clipped to [32, 256], so that an epoch has about
  30 optimiser steps (a batch of 1,024 gives Wikipedia's 2,173 items 2 steps an epoch) without the gradient noise of
  batches under 32 or the per-step CPU cost above 256;
* learning rate: Adam's 1e-3 at a batch of 64 (the Wikipedia measurement), scaled by sqrt(batch / 64) (the square-root
  rule for adaptive optimisers), the same for every modality and stage;
* hidden widths: a power of two near 8 * sqrt(n) for the largest modality's n, clipped to [256, 4096], each method
  keeping its own depth and width ratios (the papers' 4,096 suit their 10^4 items; 2,000 items fill 512);
* common-space size: a power of two at or above 8 * C for C classes, in [64, 1024] and at most the hidden width, so
  that the space holds C class directions with room (DRCL's prior is D x C);
* epochs: a cap of about 3,000 optimiser steps of the largest modality, in [20, 200], with early stopping on the
  validation score (``patience`` where the method has it: the validation MAP, or DRCL's validation loss, the epoch
  the paper keeps), so that a generous cap costs time and never quality;
* DRCL: a fixed q of 0.5 (the paper's q ramp lost to q = 0.5 or 1 on both sets the issue measured).

``search_learning_rate`` then tries 3 rates around the rule's for a few epochs each on the validation split, within a
time budget, and keeps the best; ``choose_preset`` decides between this recipe and a paper preset from how far the data
is from the paper's dataset. Everything chosen is said, with its reason, through a ``say`` callable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from crossmodal.config import MethodConfig, with_overrides
from crossmodal.errors import ConfigError
from crossmodal.featureset import FeatureSet

AUTO = "auto"
"""The preset name that asks for this recipe (``--preset auto``, or ``<method>-auto`` such as ``drcl-auto``)."""
PAPER = "paper"
"""The preset name that asks for the dataset's paper preset (``--preset paper``)."""
FAR = 4.0
"""Data is far from a paper dataset when its training size or a feature width differs from the paper's by more than
this factor (either way): the paper's batch, widths and rates were tuned at that scale."""
STEPS_PER_EPOCH = 30
STEP_BUDGET = 3000
MIN_VAL_ITEMS = 30
"""A learning-rate search needs at least this many validation items per modality: the validation MAP of fewer ranks
the candidates by noise."""
LR_FACTORS = (1.0, 1 / 3, 3.0)
"""Candidates of the learning-rate search, relative to the rule's rate (the rule's first, so it stands if time runs
out)."""
SEARCH_EPOCHS = 5
SEARCH_BUDGET_S = 120.0

PAPER_DATA: dict[str, dict[str, Any]] = {
    # specs/drcl.md §11: the datasets the paper presets were tuned on (training items, feature widths, classes)
    "wiki": {"train": 2173, "widths": {"image": 4096, "text": 300}, "classes": 10,
             "what": "Wikipedia: 2,173 pairs of 4,096-d VGG19 image and 300-d Doc2Vec text features, 10 classes"},
    "xmedia": {"train": 4000, "widths": {"image": 4096, "text": 3000, "audio": 29, "mesh": 4700, "video": 4096},
               "classes": 20, "what": "XMedia: 4,000 images/texts, 800 audio, 400 3D, 969 videos (VGG, BoW, MFCC, "
                                      "LightField, C3D features), 20 classes"},
    "xmedianet": {"train": 32000, "widths": {"image": 4096, "text": 300, "audio": 672, "mesh": 4700, "video": 4096},
                  "classes": 200, "what": "XMediaNet: 32,000 images/texts, 8,000 audio/videos, 1,600 3D, 200 classes"},
    "nus": {"train": 8000, "widths": {"image": 4096, "text": 300}, "classes": 10,
            "what": "NUS-WIDE: 8,000 pairs of 4,096-d VGG and 300-d Doc2Vec features, 10 classes"},
    "inria": {"train": 9000, "widths": {"image": 4096, "text": 1000}, "classes": 100,
              "what": "INRIA-Websearch: 9,000 pairs of 4,096-d VGG and 1,000-d LDA features, 100 classes"},
}
PAPER_PRESET_OF = {"wiki": "drcl-wiki", "wiki-sift-lda": "drcl-wiki", "xmedia": "drcl-xmedia",
                   "xmedianet": "drcl-xmedianet", "nus": "drcl-nus", "inria": "drcl-inria"}
"""DRCL's paper preset per benchmark format; ``wiki-sift-lda`` is Wikipedia's split with other features, whose paper
values are the Wikipedia ones (DRCL's defaults)."""


@dataclass(frozen=True)
class DataShape:
    """What the recipe looks at: training items and feature width per modality, and the number of classes."""

    items: dict[str, int]
    widths: dict[str, int]
    num_classes: int

    @classmethod
    def of(cls, train: Mapping[str, FeatureSet]) -> DataShape:
        """The shape of a training split (modalities without items are left out)."""
        kept = {m: fs for m, fs in train.items() if len(fs) > 0}
        if not kept:
            raise ConfigError("the training split has no items", hint="give training items of two modalities")
        return cls(items={m: len(fs) for m, fs in kept.items()}, widths={m: fs.dim for m, fs in kept.items()},
                   num_classes=max(fs.num_classes for fs in kept.values()))

    @property
    def n_max(self) -> int:
        return max(self.items.values())

    @property
    def n_min(self) -> int:
        return min(self.items.values())

    def describe(self) -> str:
        """``2 modalities (image 2173 x 128-d, text 2173 x 10-d), 10 classes``."""
        parts = ", ".join(f"{m} {self.items[m]} x {self.widths[m]}-d" for m in self.items)
        return f"{len(self.items)} modalities ({parts}), {self.num_classes} classes"


@dataclass(frozen=True)
class Choice:
    """One hyper-parameter the recipe set: the config field, its value and the reason."""

    field: str
    value: Any
    why: str

    def override(self) -> str:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.field}={value}".replace(" ", "")


@dataclass(frozen=True)
class Recipe:
    """The choices of the auto recipe for one method on one data shape."""

    method: str
    shape: DataShape
    choices: tuple[Choice, ...]

    def overrides(self) -> list[str]:
        return [c.override() for c in self.choices]

    def lines(self) -> list[str]:
        """One printable line per value and reason: ``batch_size=64 (<why>)``; fields given the same value for the
        same reason (DRCL's per-modality rates) share a line."""
        groups: dict[tuple[str, str], list[str]] = {}
        for c in self.choices:
            groups.setdefault((c.override().split("=", 1)[1], c.why), []).append(c.field)
        return [f"{'/'.join(fields)}={value} ({why})" for (value, why), fields in groups.items()]

    def apply(self, config: MethodConfig) -> MethodConfig:
        return with_overrides(config, self.overrides())


def pow2(x: float) -> int:
    """The power of two nearest to ``x`` on a log scale (``x`` > 0)."""
    return 2 ** round(math.log2(max(x, 1.0)))


def clip(x: int, low: int, high: int) -> int:
    return max(low, min(high, x))


def lr_fields(cls: type[MethodConfig]) -> list[str]:
    """The config's learning-rate fields (``lr``, ``lr_others``, DRCL's ``lr_spl`` and ``lr_<modality>``)."""
    return [f.name for f in dataclasses.fields(cls) if f.name == "lr" or f.name.startswith("lr_")]


RULE_ONLY_LRS = ("lr_spl",)
"""Rates a search leaves at the rule (``rule_lr``): DRCL's SPL stage. The paper keeps SPL's rate at 5e-4 on every
dataset while its per-modality RSC rates span three orders of magnitude (specs/drcl.md §9), and on the leaderboard a
search that moved both together lost up to 0.021 test MAP to one that moved the RSC rate alone (issue 13)."""


def searched_lr_fields(cls: type[MethodConfig]) -> list[str]:
    """The learning-rate fields a rate search sets: every one but ``RULE_ONLY_LRS``."""
    return [f for f in lr_fields(cls) if f not in RULE_ONLY_LRS]


def rule_lr(batch: int) -> float:
    """The recipe's Adam rate for ``batch``: 1e-3 at batch 64, times sqrt(batch / 64)."""
    return float(f"{1e-3 * math.sqrt(batch / 64):.3g}")


def width_fields(cls: type[MethodConfig]) -> list[str]:
    """The config's hidden-width tuples (``hidden``, MARS's ``label_hidden``, HCMSL's ``siamese``)."""
    return [f.name for f in dataclasses.fields(cls) if f.name in ("hidden", "label_hidden", "siamese")]


def rules(method: str, shape: DataShape) -> Recipe:
    """The recipe's choices for ``method`` on data of ``shape`` (the rules of the module docstring)."""
    from crossmodal.methods import get_method

    cls = get_method(method).Config
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    out: list[Choice] = []
    steps_hint = f"{shape.n_min} items in the smallest modality"
    batch = clip(pow2(shape.n_min / STEPS_PER_EPOCH), 32, 256)
    capped = batch > shape.n_min  # a batch larger than a modality's items would leave it one partial batch
    batch = 2 ** int(math.log2(max(shape.n_min, 2))) if capped else batch
    lr = rule_lr(batch)
    lrs = lr_fields(cls)
    if lrs and "batch_size" in names and method != "mcca":
        why = (f"the largest power of two within the {steps_hint}" if capped else
               f"about {STEPS_PER_EPOCH} steps an epoch for the {steps_hint} (a power of two near n/30, in [32, 256])")
        out.append(Choice("batch_size", batch, why))
        for name in lrs:
            out.append(Choice(name, lr, f"Adam 1e-3 at batch 64 (Wikipedia SIFT/LDA: 0.290 against "
                                        f"0.165 at the paper's rates), x sqrt({batch}/64)"))
    hidden = clip(pow2(8 * math.sqrt(shape.n_max)), 256, 4096)
    widths = width_fields(cls)
    if widths:
        top = max(max(getattr(defaults, w)) for w in widths if getattr(defaults, w))
        for name in widths:
            value = tuple(max(16, pow2(w * hidden / top)) for w in getattr(defaults, name))
            paper = list(getattr(defaults, name))
            out.append(Choice(name, value, f"8 * sqrt({shape.n_max}) training items, a power of two in [256, 4096], "
                                           f"the paper's depth and width ratios kept (paper: {paper})"))
    paper_dim = getattr(defaults, "dim", None)
    if isinstance(paper_dim, int):  # MCCA's None keeps every canonical direction
        dim = min(clip(2 ** math.ceil(math.log2(8 * shape.num_classes)), 64, 1024), max(hidden, 64))
        out.append(Choice("dim", dim, f"room for {shape.num_classes} class directions: a power of two at or above "
                                      f"8 x {shape.num_classes} classes, in [64, 1024] (paper: {paper_dim})"))
    score = "validation loss" if "select_by" in names else "validation MAP"  # what DRCL's patience watches
    if "epochs" in names and method != "mcca":
        steps = math.ceil(shape.n_max / batch)
        epochs = clip(math.ceil(STEP_BUDGET / steps), 20, 200)
        stop = f"early stopping on the {score}" if "patience" in names else "the cap is the only stop"
        out.append(Choice("epochs", epochs, f"about {STEP_BUDGET} steps of {steps} an epoch ({shape.n_max} items, "
                                            f"batch {batch}), in [20, 200]; {stop}"))
    if "patience" in names and method != "mcca":
        out.append(Choice("patience", 10, f"stop 10 epochs after the best {score}: a generous cap then costs "
                                          "time, never quality"))
    if "select_by" in names:
        out.append(Choice("select_by", "val_loss", "keep each modality's epoch of lowest validation loss, as the "
                                                   "paper: its validation MAP against the class anchors saturates on "
                                                   "a small split (digits: 1.0 at epoch 9 of 40), and kept too early "
                                                   "an epoch (issue 13)"))
    if "q_schedule" in names:
        out.append(Choice("q_schedule", "fixed", "a fixed q beat the paper's ramp on both sets measured (issue 13)"))
        out.append(Choice("q_fixed", 0.5, "q = 0.5 or 1 beat the ramp; 0.5 is also the paper's second-best fixed q "
                                          "(Table V)"))
    paper_queue = getattr(defaults, "sedel_queue", 0)
    if paper_queue > 0:
        queue = min(paper_queue, 2 ** int(math.log2(max(shape.n_max, 2))))
        out.append(Choice("sedel_queue", queue, f"at most the {shape.n_max} training items: a longer queue holds stale "
                                                "copies of the same items"))
    return Recipe(method=method, shape=shape, choices=tuple(out))


def auto_config(method: str, shape: DataShape, *, base: MethodConfig | None = None) -> tuple[MethodConfig, Recipe]:
    """``base`` (default: the method's defaults) with the recipe's choices applied, and the recipe."""
    from crossmodal.methods import get_method

    recipe = rules(method, shape)
    return recipe.apply(base if base is not None else get_method(method).Config()), recipe


def is_auto(method: str, preset: str | None) -> bool:
    return preset in (AUTO, f"{method}-{AUTO}")


def paper_preset(method: str, dataset: str | None) -> str | None:
    """The name of ``method``'s paper preset for the benchmark format ``dataset`` (None: the method's defaults, which
    are its paper's values)."""
    if method != "drcl" or dataset is None:
        return None
    name = PAPER_PRESET_OF.get(dataset)
    return name if name is not None and (resources.files("crossmodal") / "presets" / f"{name}.json").is_file() else None


def distance(shape: DataShape, paper: Mapping[str, Any]) -> tuple[float, str]:
    """The largest factor between ``shape`` and a paper dataset (training size and each common modality's width),
    and what it is."""
    factors = [(max(shape.n_max, 1) / paper["train"], f"{shape.n_max} training items against the paper's "
                                                        f"{paper['train']}")]
    for m, width in shape.widths.items():
        if m in paper["widths"]:
            factors.append((width / paper["widths"][m], f"{width}-d {m} features against the paper's "
                                                        f"{paper['widths'][m]}-d"))
    factor, what = max(factors, key=lambda f: max(f[0], 1 / f[0]))
    return max(factor, 1 / factor), what


def choose_preset(method: str, dataset: str | None, shape: DataShape) -> tuple[str, str]:
    """``(AUTO, why)`` or ``(PAPER, why)``: the default of a training run on data of ``shape``.

    The auto recipe is DRCL's default when no paper dataset is named (workspace training) or when the data is ``FAR``
    from the paper dataset of ``dataset``; other methods keep their papers' values unless ``--preset auto``.
    """
    if method != "drcl":
        return PAPER, (f"{method} keeps its paper's values by default (the recipe is DRCL's default; with --dataset, "
                       "--preset auto fits it to any method)")
    if dataset is None:
        return AUTO, f"no paper dataset to match; the recipe fits the data ({shape.describe()})"
    paper = PAPER_DATA.get("wiki" if dataset == "wiki-sift-lda" else dataset)
    if paper is None:
        return AUTO, f"no paper preset for {dataset}"
    factor, what = distance(shape, paper)
    if factor > FAR:
        return AUTO, (f"the data is far from the paper's {paper['what']} ({what}, {factor:.1f}x > {FAR:g}x), so the "
                      f"paper preset's batch, widths and rates would not fit; --preset paper uses them anyway")
    return PAPER, (f"the data is close to the paper's {paper['what']} (at most {factor:.1f}x off), so the paper preset "
                   f"{paper_preset(method, dataset) or 'defaults'} applies; --preset auto fits the recipe instead")


def validation_map(model: Any, val: Mapping[str, FeatureSet]) -> float:
    """The average MAP@all over ordered modality pairs of ``val`` (``crossmodal.evaluation.evaluate``'s average)."""
    from crossmodal.evaluation import evaluate

    usable = {m: fs for m, fs in val.items() if len(fs) > 0 and m in model.features}
    return float(evaluate(model, usable, ks=(None,), pr_curves=False)["average"]["MAP@all"])


def search_learning_rate(
    method: str,
    config: MethodConfig,
    train: Mapping[str, FeatureSet],
    val: Mapping[str, FeatureSet] | None,
    *,
    device: Any,
    epochs: int = SEARCH_EPOCHS,
    factors: Sequence[float] = LR_FACTORS,
    budget_s: float = SEARCH_BUDGET_S,
    say: Callable[[str], None] = print,
) -> tuple[MethodConfig, list[dict[str, Any]]]:
    """Try the config's learning rate times each of ``factors`` for ``epochs`` epochs, keep the best validation MAP.

    The rule's rate is tried first and kept on ties; candidates after ``budget_s`` seconds are skipped (and said to
    be). The search is skipped, with the reason said, for a method without a learning rate, for a validation split
    with fewer than ``MIN_VAL_ITEMS`` items per modality, and for a run no longer than a candidate (``epochs``).

    Returns:
        The config with the chosen rate (its ``lr`` fields but ``RULE_ONLY_LRS``), and one record per candidate tried:
        ``{"lr", "val_map", "seconds"}``.
    """
    from crossmodal.methods import create_method

    fields = searched_lr_fields(type(config))
    if not fields:
        say(f"learning-rate search: skipped, {method} has no learning rate")
        return config, []
    sizes = {m: len(fs) for m, fs in (val or {}).items() if len(fs) > 0}
    if len(sizes) < 2 or min(sizes.values()) < MIN_VAL_ITEMS:
        say(f"learning-rate search: skipped, the validation split ({sizes or 'empty'}) has fewer than "
            f"{MIN_VAL_ITEMS} items in two modalities, too few to rank rates; the rule's rate stays")
        return config, []
    if config.epochs <= epochs:
        say(f"learning-rate search: skipped, the run's {config.epochs} epochs are no longer than a candidate's "
            f"{epochs}; the rule's rate stays")
        return config, []
    assert val is not None
    base = float(getattr(config, fields[0]))
    tried: list[dict[str, Any]] = []
    started = time.perf_counter()
    for factor in factors:
        if tried and time.perf_counter() - started > budget_s:
            say(f"learning-rate search: {budget_s:.0f} s budget spent after {len(tried)} of {len(factors)} rates")
            break
        lr = float(f"{base * factor:.3g}")
        candidate = with_overrides(config, {"epochs": epochs, **{f: lr for f in fields}})
        t0 = time.perf_counter()
        model = create_method(method).fit(train, val, config=candidate, device=device)
        tried.append({"lr": lr, "val_map": validation_map(model, val), "seconds": time.perf_counter() - t0})
        say(f"learning-rate search: lr {lr:.3g}, {epochs} epochs: validation MAP@all {tried[-1]['val_map']:.4f} "
            f"({tried[-1]['seconds']:.1f} s)")
    best = max(tried, key=lambda t: t["val_map"])  # max keeps the first (the rule's rate) on ties
    rule = tried[0]
    versus = "the rule's rate" if best is rule else f"the rule's {rule['lr']:.3g} scored {rule['val_map']:.4f}"
    held = [f"{f} {getattr(config, f):.3g}" for f in lr_fields(type(config)) if f in RULE_ONLY_LRS]
    kept = f"; {', '.join(held)} stays at the rule, as the paper keeps SPL's rate fixed" if held else ""
    say(f"learning-rate search: chose lr {best['lr']:.3g} (validation MAP@all {best['val_map']:.4f}; {versus}){kept}")
    return with_overrides(config, {f: best["lr"] for f in fields}), tried


@dataclass(frozen=True)
class Decision:
    """What ``decide_preset`` chose: the preset file to load (None: ``<method>-<dataset>`` or the defaults), the
    recipe to apply on top (None: none), and the note saying which and why."""

    preset: str | None
    recipe: Recipe | None
    note: str | None


def decide_preset(method: str, *, dataset: str | None, preset: str | None,
                  train: Mapping[str, FeatureSet] | None) -> Decision:
    """The preset of a training run: ``auto`` (this recipe) or ``paper`` when asked for by name, else the rule of
    ``choose_preset`` when the training data is known, else today's ``<method>-<dataset>`` default.

    Raises:
        ConfigError: ``auto`` without training data to fit (the benchmark's preset runs).
    """
    if is_auto(method, preset):
        if train is None:
            raise ConfigError(f"the preset {preset} fits the training data, and this run resolves its config without "
                              "it", hint="use crossmodal train (which fits it), or crossmodal benchmark --tune N")
        shape = DataShape.of(train)
        return Decision(_auto_file(method), rules(method, shape),
                        f"preset {method}-auto (asked for): the recipe fits {shape.describe()}; its choices: "
                        + "; ".join(rules(method, shape).lines()))
    if preset == PAPER:
        name = paper_preset(method, dataset)
        tuned = PAPER_DATA.get("wiki" if dataset == "wiki-sift-lda" else dataset or "", {}).get("what")
        what = f"the preset {name}" if name else f"{method}'s defaults (its paper's values)"
        return Decision(name, None, f"--preset paper: {what}, tuned for {tuned or 'the paper datasets'}")
    if preset is not None or train is None:
        return Decision(preset, None, None)
    shape = DataShape.of(train)
    kind, why = choose_preset(method, dataset, shape)
    if kind == AUTO:
        recipe = rules(method, shape)
        return Decision(_auto_file(method), recipe, f"preset {method}-auto: {why}; its choices: "
                                                   + "; ".join(recipe.lines()))
    return Decision(None, None, f"preset {paper_preset(method, dataset) or f'{method} defaults'}: {why}")


def _auto_file(method: str) -> str | None:
    """``<method>-auto`` when that preset file exists (the recipe's data-independent part, e.g. DRCL's fixed q)."""
    name = f"{method}-{AUTO}"
    return name if (resources.files("crossmodal") / "presets" / f"{name}.json").is_file() else None
