"""The two extension points, walked through as a contributor would: one file, one registration line, and the CLI uses
the new extractor or method like a built-in one.

Each file below is what a contributor writes (in the tree it would be ``extractors/<name>.py`` or
``crossmodal/methods/<name>.py``); the ``register_lazy`` line is the one they add to ``extractors/__init__.py`` or
``crossmodal/methods/__init__.py``. The test puts the file in a folder of its own and runs the CLI in a child process
that adds the line first, so the registries of this process are left as they were.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from _extract_media import write_shapes

PIXEL_MEAN = '''
"""Mean colour of an image: the smallest useful image feature, 3-d."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor
from extractors.errors import MediaError
from extractors.registry import register_extractor


@register_extractor
class PixelMean(Extractor):
    modality: ClassVar[str] = "image"
    name: ClassVar[str] = "pixel-mean"
    extensions = (".png",)

    @property
    def dim(self) -> int:
        return 3

    def load(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        except OSError as exc:
            raise MediaError(path, f"not an image ({exc})") from exc

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([item.mean(axis=(0, 1)) for item in items]).astype(np.float32)
'''

LABEL_REGRESSION = '''
"""Ridge regression of every modality onto the one-hot labels: W_m = (X^T X + ridge I)^-1 X^T Y."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.featureset import FeatureSet
from crossmodal.methods.base import Callback, default_features, register_method
from crossmodal.model import CrossModalModel, FeatureIdentity


@dataclass(frozen=True)
class LabelRegressionConfig(MethodConfig):
    ridge: float = 1.0  # weight of ||W||^2


@register_method
class LabelRegression:
    name: ClassVar[str] = "label-regression"
    Config: ClassVar[type[LabelRegressionConfig]] = LabelRegressionConfig

    def fit(self, train: Mapping[str, FeatureSet], val: Mapping[str, FeatureSet] | None, *,
            config: LabelRegressionConfig, device: torch.device, features: Mapping[str, FeatureIdentity] | None = None,
            callbacks: Sequence[Callback] = (), checkpoint_dir: Path | None = None) -> CrossModalModel:
        num_classes = next(iter(train.values())).num_classes
        model = self.build_model(config, dict(features or default_features(train)), num_classes, {})
        with torch.no_grad():
            for m, fs in train.items():
                X = np.asarray(fs.X, dtype=np.float64)[fs.labels >= 0]
                Y = np.eye(num_classes)[fs.labels[fs.labels >= 0]]
                W = np.linalg.solve(X.T @ X + config.ridge * np.eye(X.shape[1]), X.T @ Y)
                model.encoders[m].weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
        return model.to(device)

    @classmethod
    def build_model(cls, config: LabelRegressionConfig, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return CrossModalModel(method=cls.name, config=config,
                               encoders={m: nn.Linear(f.dim, num_classes, bias=False) for m, f in features.items()},
                               features=features, num_classes=num_classes, extra=dict(extra))
'''


def crossmodal(plugins: Path, registration: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``crossmodal ARGS`` in a child whose package has the contributor's file and registration line."""
    program = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(plugins)!r})
        {registration}
        from pipelines.cli import run
        sys.argv = ["crossmodal", *{list(args)!r}]
        run()
    """)
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_an_extractor_in_one_file_and_one_registration_line_extracts_a_folder_from_the_cli(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "pixelmean.py").write_text(PIXEL_MEAN)
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=2, seed=1)  # 6 images, 3 classes
    line = 'from extractors import register_lazy; register_lazy("pixel-mean", "pixelmean", modality="image")'
    listed = crossmodal(plugins, line, "extractors", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {"name": "pixel-mean", "dim": 3} in [{"name": r["name"], "dim": r["dim"]} for r in json.loads(listed.stdout)]

    done = crossmodal(plugins, line, "extract", "--modality", "image", "-e", "pixel-mean", "--json", str(photos),
                      "-w", "ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["extracted"] == 6

    from extractors.store import FeatureStore

    store = FeatureStore(tmp_path / "ws" / "store")
    (key,) = store.keys("image")
    X, meta = store.read("image", key)
    assert key.startswith("pixel-mean@") and X.shape == (6, 3)
    assert np.all((X >= 0) & (X <= 1))


def test_a_method_in_one_file_and_one_registration_line_trains_and_evaluates_from_the_cli(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "labelregression.py").write_text(LABEL_REGRESSION)
    line = ('from crossmodal.methods import METHODS; '
            'METHODS.register_lazy("label-regression", "labelregression")')
    done = crossmodal(plugins, line, "train", "--dataset", "synthetic", "--method", "label-regression",
                      "--out", "model", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["method"] == "label-regression" and card["config"]["ridge"] == 1.0
    # a linear map onto the labels separates the synthetic classes: far above the chance level in the same table
    assert metrics["average"]["MAP@all"] > 2 * metrics["chance"]["MAP@all"]
