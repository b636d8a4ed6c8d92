"""Where pre-trained weights come from, shared by every weighted extractor.

Resolution order (the first that exists wins):

1. an explicit file: the extractor's ``weights`` config field (``--weights`` / ``--set weights=...`` on the CLI);
2. the environment variable ``CROSSMODAL_<NAME>_WEIGHTS`` (e.g. ``CROSSMODAL_VGG19_WEIGHTS``), a file;
3. ``$CROSSMODAL_WEIGHTS_DIR/<file name>``, a folder holding weight files under their published names;
4. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where torchvision's weight enums download to);
5. a download from the published URL into the torch hub cache, with a progress bar, as torchvision, timm and
   transformers do on first use, unless offline (``--offline``, ``CROSSMODAL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or
   the extractor's ``allow_download`` is false. The download goes to ``<file>.incomplete`` first and resumes it (HTTP
   Range) after an interruption; the finished file is checked against its published sha256 (in full, or the prefix
   torchvision puts in its file names) and removed, not used, when it differs. ``CROSSMODAL_WEIGHTS_URL`` replaces the
   base URL of every file (a mirror), ``CROSSMODAL_<NAME>_URL`` the URL of one.

When nothing is found, :class:`MissingWeightsError` names every place looked, the cache path to fill, and the
weight-free extractor to use instead. Weights never fall back to random values. State dicts are read without arbitrary
unpickling (``torch.load(weights_only=True)``) or from safetensors.

Hugging Face models (``minilm``) resolve the same way with :func:`resolve_hf_model`: the standard Hugging Face cache
first, then other local sources, then a download from the Hub unless offline.

torch is imported inside the functions that need it: ``crossmodal --help`` and listing extractors must not pay for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodal.common.files import atomic_write
from crossmodal.common.hashing import file_sha256
from extractors.base import Extractor
from extractors.errors import ExtractorError, MissingWeightsError

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR_ENV = "CROSSMODAL_WEIGHTS_DIR"
WEIGHTS_URL_ENV = "CROSSMODAL_WEIGHTS_URL"
CACHE_DIR_ENV = "CROSSMODAL_CACHE_DIR"
OFFLINE_ENV = "CROSSMODAL_OFFLINE"
OFFLINE_ENVS = (OFFLINE_ENV, "HF_HUB_OFFLINE")  # huggingface_hub's switch counts too: one "no network" for the user
DOWNLOAD_TIMEOUT_S = 30  # per socket operation (connect, each read), not for the whole file
# The URLs of the torchvision enums used here: reading one from torchvision imports torchvision.models, every model and
# torch._dynamo (2 s), only to list extractors or find a file. tests/test_weights.py checks them against torchvision.
TORCHVISION_URLS = {"VGG19_Weights.IMAGENET1K_V1": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"}


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """Identity of one published weights file.

    Attributes:
        extractor: the extractor that needs it (for messages), e.g. ``"vgg19-fc7"``.
        env_name: the ``<NAME>`` of ``CROSSMODAL_<NAME>_WEIGHTS`` and ``CROSSMODAL_<NAME>_URL``, e.g. ``"VGG19"``.
        filename: the published file name, e.g. ``"vgg19-dcbb9e9d.pth"`` (torchvision's names end in the first 8 hex
            digits of the file's sha256, which a download checks).
        url: where it is published ('' when it is not downloadable).
        sha256: the published full sha256 ('' when none is published; the file name's prefix is then checked if it
            has one).
        alternative: a weight-free extractor of the same modality, named in errors (e.g. ``"hog-color"``).
    """

    extractor: str
    env_name: str
    filename: str
    url: str = ""
    sha256: str = ""
    alternative: str = ""

    @property
    def env_var(self) -> str:
        return f"CROSSMODAL_{self.env_name}_WEIGHTS"

    @property
    def url_env_var(self) -> str:
        return f"CROSSMODAL_{self.env_name}_URL"

    @property
    def download_url(self) -> str:
        """The URL to fetch: ``$CROSSMODAL_<NAME>_URL``, else ``$CROSSMODAL_WEIGHTS_URL/<file name>``, else ``url``."""
        if os.environ.get(self.url_env_var):
            return os.environ[self.url_env_var]
        base = os.environ.get(WEIGHTS_URL_ENV, "").strip()
        if base and self.url:
            return f"{base.rstrip('/')}/{self.filename}"
        return self.url

    @property
    def hash_prefix(self) -> str:
        """The sha256 prefix torchvision writes in its file names (``vgg19-dcbb9e9d.pth`` -> ``dcbb9e9d``), or ''."""
        match = re.search(r"-([0-9a-f]{8,})\.", self.filename)
        return match.group(1) if match else ""

    @classmethod
    def from_torchvision(cls, enum_name: str, *, extractor: str, env_name: str, alternative: str = "") -> WeightsSpec:
        """The spec of a torchvision weights enum member, e.g. ``"VGG19_Weights.IMAGENET1K_V1"``."""
        url = TORCHVISION_URLS.get(enum_name)
        if url is None:
            from torchvision.models import get_weight

            url = get_weight(enum_name).url
        return cls(extractor=extractor, env_name=env_name, filename=url.rsplit("/", 1)[-1], url=url,
                   alternative=alternative)


def offline() -> bool:
    """True when ``CROSSMODAL_OFFLINE`` or ``HF_HUB_OFFLINE`` is ``1``/``true``/``yes``/``on``."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def download_allowed(config_value: bool = True) -> bool:
    """Whether a missing file may be downloaded: the extractor's ``allow_download`` and not :func:`offline`."""
    return config_value and not offline()


def hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints``, computed as torch does when torch is not imported yet (no 1 s import to
    list what is ready)."""
    if "torch" in sys.modules:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))) / "hub" / "checkpoints"


def find_weights(spec: WeightsSpec, *, explicit: str | os.PathLike | None = None) -> tuple[Path | None, list[str]]:
    """The local file of ``spec`` (steps 1-4 of the module docstring) and the places looked; fetches nothing.

    Raises:
        MissingWeightsError: an explicit path or ``$CROSSMODAL_<NAME>_WEIGHTS`` names a file that does not exist
            (never replaced by another file silently).
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path, []
        raise MissingWeightsError(spec.extractor, spec.filename, [f"{path} (given explicitly)"], _how_to_supply(spec))
    looked: list[str] = []
    env_file = os.environ.get(spec.env_var)
    if env_file:
        path = Path(env_file).expanduser()
        if path.is_file():
            return path, []
        raise MissingWeightsError(spec.extractor, spec.filename, [f"{path} (from ${spec.env_var})"],
                                  _how_to_supply(spec))
    looked.append(f"${spec.env_var} (not set)")
    candidates: list[tuple[Path, str]] = []
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        base = Path(weights_dir).expanduser()
        candidates += [(base / name, f"${WEIGHTS_DIR_ENV}") for name in (spec.filename, _safetensors_name(spec))]
    else:
        looked.append(f"${WEIGHTS_DIR_ENV} (not set)")
    candidates.append((hub_checkpoints() / spec.filename, "torch hub cache"))
    for path, origin in candidates:
        if path.is_file():
            return path, []
        looked.append(f"{path} ({origin})")
    return None, looked


def resolve_weights(spec: WeightsSpec, *, explicit: str | os.PathLike | None = None,
                    allow_download: bool = True, progress: bool = True) -> Path:
    """Find the weights file of ``spec``, downloading it into the torch hub cache when allowed (module docstring).

    Args:
        spec: which file.
        explicit: a path the user gave (config field or flag); when given it must exist, nothing else is searched.
        allow_download: the extractor's ``allow_download``; :func:`offline` overrides it.
        progress: show a progress bar on stderr while downloading.

    Returns:
        The path of an existing file.

    Raises:
        MissingWeightsError: no local file and no download (offline, not allowed, unreachable); the message lists each
            place looked, the hint the cache path to fill and the weight-free alternative.
        WeightsChecksumError: the downloaded file's sha256 differs from the published one (the file is removed).
    """
    path, looked = find_weights(spec, explicit=explicit)
    if path is not None:
        return path
    url = spec.download_url
    if not url:
        raise MissingWeightsError(spec.extractor, spec.filename, looked, _how_to_supply(spec))
    if not download_allowed(allow_download):
        why = "offline: --offline, $CROSSMODAL_OFFLINE or $HF_HUB_OFFLINE" if offline() else "allow_download=false"
        raise MissingWeightsError(spec.extractor, spec.filename, [*looked, f"{url} (not fetched: {why})"],
                                  _how_to_supply(spec))
    target = hub_checkpoints() / spec.filename
    try:
        return download(url, target, sha256=_pinned_sha256(spec), hash_prefix=spec.hash_prefix, progress=progress,
                        what=spec.extractor, pin_env=_pin_env(spec))
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk: the user fills the cache by hand instead
        reason = getattr(exc, "reason", None) or exc
        raise MissingWeightsError(spec.extractor, spec.filename, [*looked, f"{url} (download failed: {reason})"],
                                  _how_to_supply(spec)) from None


class WeightsChecksumError(ExtractorError):
    """A downloaded weights file is not the published one (its sha256 differs); it was removed."""


def download(url: str, target: Path, *, sha256: str = "", hash_prefix: str = "", progress: bool = True,
             what: str = "weights", pin_env: str = "", say: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``target`` through ``target.incomplete``, resuming a partial file, then check its sha256.

    The partial file is kept when the transfer breaks (the next call asks the server for the rest with an HTTP
    ``Range`` header, and starts over when the server ignores it); it becomes ``target`` only once complete and checked.
    Processes downloading the same file take turns on ``.locks/<name>.lock`` beside it (POSIX; huggingface_hub keeps its
    locks the same way), and the later ones find it done.

    Args:
        sha256: the full published digest, checked when given.
        hash_prefix: a digest prefix (torchvision's file names), checked when given.
        progress: a tqdm bar on stderr (bytes, rate, time left).
        what: who asks, for messages (the extractor's name).
        pin_env: the variable that pins a digest, named when none is published.
        say: where the one-line notes go (default: stderr).

    Raises:
        OSError: the server cannot be reached or the transfer fails (the partial file is kept for a resume).
        WeightsChecksumError: the digest differs (both the partial and the target file are removed).
    """
    say = say or (lambda text: print(text, file=sys.stderr))
    locks = target.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{target.name}.lock", "w") as lock:
        if os.name == "posix":
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_file():  # another process finished it while this one waited
            return target
        return _fetch(url, target, sha256=sha256, hash_prefix=hash_prefix, progress=progress, what=what,
                      pin_env=pin_env, say=say)


def _fetch(url: str, target: Path, *, sha256: str, hash_prefix: str, progress: bool, what: str, pin_env: str,
           say: Callable[[str], None]) -> Path:
    from tqdm.auto import tqdm

    partial = target.with_name(target.name + ".incomplete")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    say(f"{what}: downloading {url} to {target}" + (f" (resuming after {have:,} bytes)" if have else ""))
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:  # 416: the range starts at the end, i.e. the partial file is complete
            raise
        response = None
    if response is not None:
        with response:
            resumed = have > 0 and response.status == 206
            length = int(response.headers.get("Content-Length") or 0)
            start = have if resumed else 0
            with open(partial, "ab" if resumed else "wb") as out, tqdm(
                    total=start + length if length else None, initial=start, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=target.name, disable=not progress, file=sys.stderr, leave=True) as bar:
                received = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
        if length and received < length:  # the connection closed early: keep the partial file for a resume
            raise ConnectionError(f"transfer interrupted after {start + received:,} of {start + length:,} bytes")
    digest = file_sha256(partial)
    expected = sha256 or hash_prefix
    if expected and not digest.startswith(expected.lower()):
        partial.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise WeightsChecksumError(
            f"{what}: the file downloaded from {url} has sha256 {digest[:16]}..., not the published "
            f"{expected[:16]}...; it was removed",
            hint=f"download it again; if this repeats the server gives another file: fetch {target.name} from the "
                 f"publisher and put it at {target}")
    if not expected:  # NOTE: said, not silent: the digest still becomes part of the extractor key (weights_sha256)
        pin = f" (pin it with {pin_env}={digest} to refuse any other file)" if pin_env else ""
        say(f"{what}: no checksum is published for {target.name}; its sha256 is {digest}{pin}")
    os.replace(partial, target)
    return target


def _pin_env(spec: WeightsSpec) -> str:
    return f"CROSSMODAL_{spec.env_name}_SHA256"


def _pinned_sha256(spec: WeightsSpec) -> str:
    return os.environ.get(_pin_env(spec), "").strip().lower() or spec.sha256


def weights_status(spec: WeightsSpec, *, explicit: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(ready, what is missing) for ``crossmodal extractors``: ready when the file is on this machine; else whether the
    first use will download it (and from where to where) or cannot (offline, no URL)."""
    try:
        path, _ = find_weights(spec, explicit=explicit)
    except MissingWeightsError as exc:
        return False, exc.message.split(" (looked in")[0] + f" ({exc.looked[0]})"
    if path is not None:
        return True, f"weights: {path}"
    target = hub_checkpoints() / spec.filename
    if spec.download_url and not offline():
        return False, f"{spec.filename} downloads to {target} on first use"
    why = "offline" if spec.download_url else "not downloadable"
    instead = f"; or use -e {spec.alternative}" if spec.alternative else ""
    return False, f"{spec.filename} missing ({why}): put it at {target}{instead}"


def _safetensors_name(spec: WeightsSpec) -> str:
    return Path(spec.filename).with_suffix(".safetensors").name


def _how_to_supply(spec: WeightsSpec) -> str:
    target = hub_checkpoints() / spec.filename
    source = f" (from {spec.url})" if spec.url else ""
    instead = f"; or use the weight-free extractor instead: -e {spec.alternative}" if spec.alternative else ""
    online = " or run online to download it," if spec.url and offline() else ""
    return (f"put {spec.filename}{source} at {target},{online} or pass --weights FILE (or set {spec.env_var}=FILE, "
            f"or put it in ${WEIGHTS_DIR_ENV}){instead}")


def find_hf_model(repo_id: str, *, files: Sequence[str],
                  local: Sequence[tuple[str, Callable[[], Path | None]]] = ()) -> tuple[Path | None, list[str]]:
    """A local folder of the Hugging Face model ``repo_id`` holding ``files``, and the places looked; fetches nothing.

    Order: the standard Hugging Face cache (``HF_HUB_CACHE``, read with ``local_files_only``: what ``hf download`` or
    transformers left there), then each ``(origin, finder)`` of ``local`` (a copy bundled in a package...).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    looked = []
    folder: Path | None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(files), local_files_only=True))
        if all((folder / name).is_file() for name in files):
            return folder, []
        looked.append(f"{folder} (Hugging Face cache, incomplete)")
    except LocalEntryNotFoundError:
        looked.append(f"{constants.HF_HUB_CACHE} (Hugging Face cache: no {repo_id})")
    for origin, finder in local:
        try:
            folder = finder()
        except ExtractorError:  # e.g. the package that bundles it is not installed
            folder = None
        if folder is not None and all((folder / name).is_file() for name in files):
            return folder, []
        looked.append(f"{folder or 'not installed'} ({origin})")
    return None, looked


def resolve_hf_model(repo_id: str, *, files: Sequence[str], extractor: str, alternative: str = "",
                     local: Sequence[tuple[str, Callable[[], Path | None]]] = (), progress: bool = True) -> Path:
    """:func:`find_hf_model`, else a download from the Hub into its cache unless offline (module docstring).

    Raises:
        MissingWeightsError: found nowhere and not downloadable now (offline or unreachable); names every place.
    """
    from huggingface_hub import constants, snapshot_download

    folder, looked = find_hf_model(repo_id, files=files, local=local)
    if folder is not None:
        return folder
    instead = f"; or use -e {alternative}" if alternative else ""
    how = (f"run `hf download {repo_id}` where the network allows (it fills {constants.HF_HUB_CACHE}), or --set "
           f"model_dir=a local copy{instead}")
    if offline():
        raise MissingWeightsError(extractor, repo_id, [*looked, "the Hub (not fetched: offline)"], how)
    try:
        from tqdm.auto import tqdm

        return Path(snapshot_download(repo_id, allow_patterns=list(files), tqdm_class=tqdm if progress else None))
    except Exception as exc:  # huggingface_hub raises its own errors, and httpx's: all mean "not fetched"
        raise MissingWeightsError(extractor, repo_id,
                                  [*looked, f"the Hub (download failed: {type(exc).__name__}: {exc})"], how) from exc


def hf_model_status(repo_id: str, *, files: Sequence[str], alternative: str = "",
                    local: Sequence[tuple[str, Callable[[], Path | None]]] = ()) -> tuple[bool, str]:
    """(ready, what is missing) of a Hugging Face model, as :func:`weights_status` says it of a file."""
    folder, _ = find_hf_model(repo_id, files=files, local=local)
    if folder is not None:
        return True, f"weights: {folder}"
    if not offline():
        return False, f"{repo_id} downloads to the Hugging Face cache on first use"
    instead = f"; or use -e {alternative}" if alternative else ""
    return False, f"{repo_id} missing (offline): run `hf download {repo_id}` where the network allows{instead}"


def load_state_dict(path: str | os.PathLike, *, extractor: str) -> dict[str, torch.Tensor]:
    """Read a state dict on the CPU without arbitrary unpickling.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``. A dict that
    wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped, and a ``"module."`` prefix (saved from
    ``DataParallel``) is removed, as community conversions (e.g. of C3D) ship them that way.

    Raises:
        ExtractorError: the file is not a readable state dict (names the file).
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
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
        atomic_write(path, json.dumps(data), durable=False)
    except OSError:
        pass  # NOTE: the cache is an optimisation only; a read-only home folder must not stop an extraction


class PretrainedExtractor(Extractor):
    """An extractor whose network is a published weights file: ``weights_spec()`` names the file, and its config has
    ``weights`` (an explicit file, '' to search) and ``allow_download``. The file is resolved once, on first need."""

    config: Any  # a subclass's Config, which has the two fields above

    def weights_spec(self) -> WeightsSpec:
        raise NotImplementedError

    @property
    def weights_path(self) -> Path:
        """The resolved weights file (searched, else downloaded, once; see the module docstring for the order)."""
        if getattr(self, "_weights_path", None) is None:
            self._weights_path = resolve_weights(self.weights_spec(), explicit=self.config.weights or None,
                                                 allow_download=self.config.allow_download)
        return self._weights_path

    def weights_sha256(self) -> str:
        return weights_sha256(self.weights_path)
