"""Where pre-trained weights come from, shared by every weighted extractor.

Resolution order (the first that exists wins):

1. an explicit file: the extractor's ``weights`` config field (``--weights`` / ``--set weights=...`` on the CLI);
2. the environment variable ``CROSSMODAL_<NAME>_WEIGHTS`` (e.g. ``CROSSMODAL_VGG19_WEIGHTS``), a file;
3. ``$CROSSMODAL_WEIGHTS_DIR/<file name>``, a folder holding weight files under their published names;
4. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where torchvision's weight enums download to);
5. a download from the published URL into the torch hub cache, only when allowed (``allow_download`` in the config or
   ``CROSSMODAL_ALLOW_DOWNLOAD=1``): these machines have no network, so nothing is tried by default.

When nothing is found, :class:`MissingWeightsError` lists every place looked and how to supply the file. Weights
never fall back to random values. State dicts are read without arbitrary unpickling (``torch.load(weights_only=True)``)
or from safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from extractors.base import file_sha256
from extractors.errors import ExtractorError, MissingWeightsError

ALLOW_DOWNLOAD_ENV = "CROSSMODAL_ALLOW_DOWNLOAD"
WEIGHTS_DIR_ENV = "CROSSMODAL_WEIGHTS_DIR"
CACHE_DIR_ENV = "CROSSMODAL_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """Identity of one published weights file.

    Attributes:
        extractor: the extractor that needs it (for messages), e.g. ``"vgg19-fc7"``.
        env_name: the ``<NAME>`` of ``CROSSMODAL_<NAME>_WEIGHTS``, e.g. ``"VGG19"``.
        filename: the published file name, e.g. ``"vgg19-dcbb9e9d.pth"`` (torchvision's names end in the first 8 hex
            digits of the file's sha256, which a download checks).
        url: where it is published ('' when it is not downloadable, e.g. community conversions).
    """

    extractor: str
    env_name: str
    filename: str
    url: str = ""

    @property
    def env_var(self) -> str:
        return f"CROSSMODAL_{self.env_name}_WEIGHTS"

    @classmethod
    def from_torchvision(cls, enum_name: str, *, extractor: str, env_name: str) -> WeightsSpec:
        """The spec of a torchvision weights enum member, e.g. ``"VGG19_Weights.IMAGENET1K_V1"``."""
        from torchvision.models import get_weight

        url = get_weight(enum_name).url
        return cls(extractor=extractor, env_name=env_name, filename=url.rsplit("/", 1)[-1], url=url)


def download_allowed(config_value: bool = False) -> bool:
    """True when the config allows it or ``CROSSMODAL_ALLOW_DOWNLOAD`` is ``1``/``true``/``yes``."""
    return config_value or os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_weights(spec: WeightsSpec, *, explicit: str | os.PathLike | None = None,
                    allow_download: bool = False) -> Path:
    """Find the weights file of ``spec`` (module docstring gives the order).

    Args:
        spec: which file.
        explicit: a path the user gave (config field or flag); when given it must exist, nothing else is searched.
        allow_download: download from ``spec.url`` into the torch hub cache when no local file is found (also enabled
            by ``CROSSMODAL_ALLOW_DOWNLOAD=1``).

    Returns:
        The path of an existing file.

    Raises:
        MissingWeightsError: no file anywhere; the message lists each place looked and how to supply it.
    """
    how = _how_to_supply(spec)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(spec.extractor, spec.filename, [f"{path} (given explicitly)"], how)
    looked: list[str] = []
    env_file = os.environ.get(spec.env_var)
    if env_file:
        path = Path(env_file).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(spec.extractor, spec.filename, [f"{path} (from ${spec.env_var})"], how)
    looked.append(f"${spec.env_var} (not set)")
    candidates: list[tuple[Path, str]] = []
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        base = Path(weights_dir).expanduser()
        candidates += [(base / name, f"${WEIGHTS_DIR_ENV}") for name in (spec.filename, _safetensors_name(spec))]
    else:
        looked.append(f"${WEIGHTS_DIR_ENV} (not set)")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates.append((hub / spec.filename, "torch hub cache"))
    for path, origin in candidates:
        if path.is_file():
            return path
        looked.append(f"{path} ({origin})")
    if spec.url and download_allowed(allow_download):
        return _download(spec, hub / spec.filename)
    if spec.url:
        looked.append(f"{spec.url} (download not allowed; set {ALLOW_DOWNLOAD_ENV}=1 where the network allows)")
    raise MissingWeightsError(spec.extractor, spec.filename, looked, how)


def _safetensors_name(spec: WeightsSpec) -> str:
    return Path(spec.filename).with_suffix(".safetensors").name


def _how_to_supply(spec: WeightsSpec) -> str:
    where = f"download {spec.url} and " if spec.url else ""
    return (
        f"{where}pass --weights /path/to/{spec.filename} (or --set weights=...), or set {spec.env_var}=/path/to/file, "
        f"or put the file in ${WEIGHTS_DIR_ENV} or {Path(torch.hub.get_dir()) / 'checkpoints'}"
        + (f", or set {ALLOW_DOWNLOAD_ENV}=1 to download it" if spec.url else "")
    )


def _download(spec: WeightsSpec, target: Path) -> Path:
    match = re.search(r"-([0-9a-f]{8,})\.", spec.filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=match.group(1) if match else None)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch is a RuntimeError
        raise MissingWeightsError(spec.extractor, spec.filename, [f"{spec.url} (download failed: {exc})"],
                                  _how_to_supply(spec)) from exc
    return target


def load_state_dict(path: str | os.PathLike, *, extractor: str) -> dict[str, torch.Tensor]:
    """Read a state dict on the CPU without arbitrary unpickling.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``. A dict that
    wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped, and a ``"module."`` prefix (saved from
    ``DataParallel``) is removed, as community conversions (e.g. of C3D) ship them that way.

    Raises:
        ExtractorError: the file is not a readable state dict (names the file).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises UnpicklingError, RuntimeError, EOFError... for a bad file
        raise ExtractorError(
            f"{extractor}: cannot read weights file {path} ({type(exc).__name__}: {exc})",
            hint="the file must be a PyTorch state dict (.pth/.pt) or a .safetensors file; re-download it",
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExtractorError(f"{extractor}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(module: torch.nn.Module, path: str | os.PathLike, *, extractor: str) -> torch.nn.Module:
    """Load the state dict at ``path`` into ``module`` strictly (every key, every shape).

    Raises:
        ExtractorError: missing or unexpected keys or wrong shapes, with the first few named.
    """
    state = load_state_dict(path, extractor=extractor)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        parts = [f"{label} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}" for label, items in found if items]
        raise ExtractorError(f"{extractor}: weights file {path} does not fit the architecture ({'; '.join(parts)})",
                             hint="check that the file is the one this extractor expects and the config is unchanged")
    module.load_state_dict(state, strict=True)
    return module


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, cached by (absolute path, mtime, size) in memory and in
    ``$CROSSMODAL_CACHE_DIR/weights-sha256.json`` (default ``~/.cache/crossmodal``): hashing VGG-19's 548 MB takes
    seconds.
    """
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = (str(path), stat.st_mtime_ns, stat.st_size)
    if memo_key in _SHA_MEMO:
        return _SHA_MEMO[memo_key]
    cache_file = Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "crossmodal")) / "weights-sha256.json"
    disk_key = f"{path}|{stat.st_mtime_ns}|{stat.st_size}"
    cache = _read_json(cache_file)
    digest = cache.get(disk_key)
    if not isinstance(digest, str):
        digest = file_sha256(path)
        cache[disk_key] = digest
        _write_json(cache_file, cache)
    _SHA_MEMO[memo_key] = digest
    return digest


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # no cache yet, or a damaged one: the digest is recomputed
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.incomplete")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # NOTE: the cache is an optimisation only; a read-only home folder must not stop an extraction
