"""Weight resolution and loading: every place is searched in order, nothing random, nothing unpickled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from extractors import weights as W
from extractors.errors import ExtractorError, MissingWeightsError

SPEC = W.WeightsSpec(extractor="toy-fc", env_name="TOY", filename="toy-0123abcd.pth",
                     url="https://example.invalid/toy-0123abcd.pth")


@pytest.fixture(autouse=True)
def clean_environment(tmp_path, monkeypatch):
    """No weights anywhere: env vars cleared, the torch hub cache an empty tmp folder."""
    for var in ("CROSSMODAL_TOY_WEIGHTS", "CROSSMODAL_VGG19_WEIGHTS", W.WEIGHTS_DIR_ENV, W.ALLOW_DOWNLOAD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(W.CACHE_DIR_ENV, str(tmp_path / "cache"))


def tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def save_state(path: Path, module: torch.nn.Module | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((module or tiny_module()).state_dict(), path)
    return path


def test_missing_weights_error_lists_every_place_looked_and_how_to_supply_them(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        W.resolve_weights(SPEC)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename
    assert err.value.looked == [
        "$CROSSMODAL_TOY_WEIGHTS (not set)",
        "$CROSSMODAL_WEIGHTS_DIR (not set)",
        f"{hub} (torch hub cache)",
        f"{SPEC.url} (download not allowed; set CROSSMODAL_ALLOW_DOWNLOAD=1 where the network allows)",
    ]
    assert "toy-0123abcd.pth not found" in err.value.message
    for how in ("--weights", "CROSSMODAL_TOY_WEIGHTS=", "$CROSSMODAL_WEIGHTS_DIR", str(hub.parent), "ALLOW_DOWNLOAD=1"):
        assert how in err.value.hint


@pytest.mark.parametrize("place", ["env-file", "weights-dir", "hub-cache"])
def test_weights_are_found_in_each_place_of_the_search_order(tmp_path, monkeypatch, place):
    if place == "env-file":
        target = save_state(tmp_path / "anywhere" / "my.pth")
        monkeypatch.setenv("CROSSMODAL_TOY_WEIGHTS", str(target))
    elif place == "weights-dir":
        target = save_state(tmp_path / "weights" / SPEC.filename)
        monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(target.parent))
    else:
        target = save_state(tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename)
    assert W.resolve_weights(SPEC) == target


def test_an_explicit_path_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_TOY_WEIGHTS", str(save_state(tmp_path / "env.pth")))
    explicit = save_state(tmp_path / "explicit.pth")
    assert W.resolve_weights(SPEC, explicit=explicit) == explicit


def test_an_explicit_path_that_does_not_exist_is_an_error_naming_it(tmp_path):
    save_state(tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename)  # not used as a silent fallback
    with pytest.raises(MissingWeightsError, match="given explicitly") as err:
        W.resolve_weights(SPEC, explicit=tmp_path / "typo.pth")
    assert err.value.looked == [f"{tmp_path / 'typo.pth'} (given explicitly)"]


def test_a_download_is_attempted_only_when_allowed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, hash_prefix=None: calls.append((url, Path(dst).name, hash_prefix)) or
                        save_state(Path(dst)))
    with pytest.raises(MissingWeightsError):
        W.resolve_weights(SPEC)
    assert calls == []
    monkeypatch.setenv(W.ALLOW_DOWNLOAD_ENV, "1")
    path = W.resolve_weights(SPEC)
    assert calls == [(SPEC.url, SPEC.filename, "0123abcd")]
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename


def test_pth_and_safetensors_files_load_to_the_same_state_dict(tmp_path):
    from safetensors.torch import save_file

    module = tiny_module()
    pth = save_state(tmp_path / "w.pth", module)
    st = tmp_path / "w.safetensors"
    save_file(module.state_dict(), str(st))
    a, b = W.load_state_dict(pth, extractor="toy"), W.load_state_dict(st, extractor="toy")
    assert a.keys() == b.keys() == module.state_dict().keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_wrapped_and_data_parallel_state_dicts_are_unwrapped(tmp_path):
    module = tiny_module()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, path)
    assert W.load_state_dict(path, extractor="toy").keys() == module.state_dict().keys()


class _NotAStateDict:
    def __init__(self):
        self.payload = "arbitrary object"


def test_a_pickled_object_is_refused_rather_than_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(_NotAStateDict(), path)
    with pytest.raises(ExtractorError, match="cannot read weights file .*evil.pth"):
        W.load_state_dict(path, extractor="toy")


def test_loading_into_another_architecture_names_missing_unexpected_and_misshapen_keys(tmp_path):
    path = save_state(tmp_path / "w.pth")
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ExtractorError) as err:
        W.load_into(other, path, extractor="toy")
    message = err.value.message
    assert "missing 3.bias, 3.weight" in message
    assert "wrong shape 0.weight: file (3, 4) vs model (5, 4), 0.bias: file (3,) vs model (5,)" in message


def test_loading_into_the_same_architecture_copies_every_tensor(tmp_path):
    source = tiny_module()
    target = W.load_into(tiny_module(), save_state(tmp_path / "w.pth", source), extractor="toy")
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0)


def test_weights_sha256_is_the_file_digest_and_is_computed_once_per_version_of_the_file(tmp_path, monkeypatch):
    path = save_state(tmp_path / "w.pth")
    calls = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p: calls.append(p) or real(p))
    W._SHA_MEMO.clear()
    assert W.weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    W._SHA_MEMO.clear()  # a new process: the digest comes from the on-disk cache
    assert W.weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(calls) == 1
    save_state(path, tiny_module())
    assert W.weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(calls) == 2
