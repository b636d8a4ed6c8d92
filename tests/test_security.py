"""Hostile input to ``crossmodal serve`` and to the model files (issue 5, item 5).

The server must never serve a file outside the workspace (traversal in every encoding, absolute paths, symlinks), must
refuse uploads that are too large or of a type no extractor reads, must bind to loopback by default, must answer only
its own host and origin, and must survive a burst of concurrent queries. Model files load without unpickling and a
tampered one is refused.
"""

from __future__ import annotations

import ast
import http.client
import json
import pickle
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _serve_helpers import (  # noqa: E402
    EXTENSIONS,
    FakeQuery,
    fake_info,
    live_server,
    make_gallery,
    tiny_workspace,
    write_png,
)
from fastapi.testclient import TestClient  # noqa: E402

from crossmodal.config import MethodConfig  # noqa: E402
from crossmodal.errors import ModelFileError  # noqa: E402
from crossmodal.model import CARD_FILE, WEIGHTS_FILE, CrossModalModel, FeatureIdentity, file_sha256  # noqa: E402
from pipelines.serve import MediaCatalog, create_app  # noqa: E402

SECRET = "TOP-SECRET-7f3a"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def hostile(tmp_path):
    """A workspace whose store lists good items and items whose files lead outside it (symlinks, absolute paths)."""
    workspace = tmp_path / "ws"
    gallery = make_gallery(workspace)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    raw = workspace / "raw"
    (raw / "link-out.txt").symlink_to(secret)
    (raw / "dir-out").symlink_to(tmp_path, target_is_directory=True)
    (raw / "loop-a.txt").symlink_to(raw / "loop-b.txt")
    (raw / "loop-b.txt").symlink_to(raw / "loop-a.txt")
    (raw / "alias.png").symlink_to(raw / "7" / "red.png")
    items = {**gallery,
             ("text", "link-out"): raw / "link-out.txt",
             ("text", "dir-out"): raw / "dir-out" / "secret.txt",
             ("text", "absolute-out"): secret,
             ("text", "relative-out"): Path("..") / "secret.txt",
             ("text", "loop"): raw / "loop-a.txt",
             ("text", "missing"): raw / "gone.txt",
             ("text", "a-folder"): raw / "7",
             ("image", "alias"): raw / "alias.png"}
    fake = FakeQuery(gallery)
    app = create_app(workspace, model="tiny", query_fn=fake, allowed_extensions=EXTENSIONS, info_fn=fake_info,
                     catalog=MediaCatalog(workspace, items=items), max_upload_mb=0.25)
    return app, workspace, secret, fake


def raw_get(base_url: str, target: str) -> tuple[int, str]:
    """GET ``target`` sent byte for byte (http.client neither normalises ``..`` nor re-encodes)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def traversal_targets(secret: Path) -> list[str]:
    absolute = str(secret)
    names = ["../../secret.txt", "..%2F..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt",
             "%252e%252e%252f%252e%252e%252fsecret.txt", "..%252f..%252fsecret.txt", "....//....//secret.txt",
             "..\\..\\secret.txt", "..%5c..%5csecret.txt", "%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt",
             absolute, quote(absolute, safe=""), quote(quote(absolute, safe=""), safe=""), "." + absolute,
             "raw/../../secret.txt", "raw/dir-out/secret.txt", "raw/7/red.png", "7/red.png", "7/red%00.txt",
             "../../../../../../etc/passwd", "%2Fetc%2Fpasswd", "file:///etc/passwd"]
    prefixes = [f"/api/{route}/{modality}" for route in ("media", "preview") for modality in ("text", "image")]
    return [f"{prefix}/{name}" for prefix in prefixes for name in names] + [
        "/api/media/..%2F..%2Fsecret.txt/x", "/api/media/%2e%2e/%2e%2e/secret.txt", "/api/preview/../text/7/seven",
        "/../../secret.txt", "/%2e%2e/%2e%2e/secret.txt", "/static/../../secret.txt", "/api/../../secret.txt",
        "/" + quote(absolute, safe=""), absolute, "/api/media", "/api/media/", "/api/media/text/"]


def test_no_url_reaches_a_file_outside_the_served_items(hostile):
    app, _, secret, _ = hostile
    with live_server(app) as url:
        answers = {target: raw_get(url, target) for target in traversal_targets(secret)}
    leaked = {t: s for t, (s, body) in answers.items() if SECRET in body or "root:" in body}
    assert leaked == {}
    wrong = {t: s for t, (s, _) in answers.items() if s not in (400, 404, 405)}
    assert wrong == {}


@pytest.mark.parametrize("item_id", ["link-out", "dir-out", "absolute-out", "relative-out", "loop", "missing",
                                     "a-folder"])
def test_store_items_whose_files_lead_outside_or_nowhere_are_not_found(hostile, item_id):
    app, _, _, _ = hostile
    client = TestClient(app, base_url="http://127.0.0.1")
    for route in ("media", "preview"):
        response = client.get(f"/api/{route}/text/{item_id}")
        assert response.status_code == 404, (route, response.text)
        assert SECRET not in response.text


def test_a_symlink_inside_the_workspace_to_a_workspace_file_is_served(hostile):
    app, workspace, _, _ = hostile
    response = TestClient(app, base_url="http://127.0.0.1").get("/api/media/image/alias")
    assert response.status_code == 200
    assert response.content == (workspace / "raw" / "7" / "red.png").read_bytes()


def test_files_under_an_allowed_media_root_are_served(tmp_path):
    photos = tmp_path / "photos"
    photo = write_png(photos / "cat.png")
    catalog = MediaCatalog(tmp_path / "ws", roots=[photos], items={("image", "cat"): photo})
    app = create_app(tmp_path / "ws", query_fn=FakeQuery({}), allowed_extensions=EXTENSIONS, info_fn=fake_info,
                     catalog=catalog)
    assert TestClient(app, base_url="http://127.0.0.1").get("/api/media/image/cat").content == photo.read_bytes()


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """Uploads land in a folder of their own under this test's temp dir, so leftovers can be counted."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_upload_announced_larger_than_the_limit_is_refused_before_reading(hostile, private_tmp):
    app, _, _, fake = hostile
    body = b"\0" * (300 * 1024)
    response = TestClient(app, base_url="http://127.0.0.1").post(
        "/api/query", files={"file": ("big.png", body, "image/png")}, data={"target": "image"})
    assert response.status_code == 413
    assert "larger than 0.25 MiB" in response.json()["error"]
    assert fake.calls == [] and list(private_tmp.iterdir()) == []


def test_streamed_upload_past_the_limit_is_cut_off_and_deleted(hostile, private_tmp):
    app, _, _, fake = hostile
    boundary = "x" * 16
    written = []

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\nimage\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(64):  # 64 x 16 KiB = 1 MiB, four times the limit, with no Content-Length
            written.append(1)
            yield b"\0" * (16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = TestClient(app, base_url="http://127.0.0.1").post(
        "/api/query", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert fake.calls == [] and list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("filename", ["evil.exe", "page.html", "script.js", "no-extension", "photo.png.exe",
                                      "photo.png%00.exe", "../../photo.sh", ".png"])
def test_upload_of_a_type_no_extractor_reads_is_refused(hostile, private_tmp, filename):
    app, _, _, fake = hostile
    response = TestClient(app, base_url="http://127.0.0.1").post(
        "/api/query", files={"file": (filename, b"MZ\x90\x00", "application/octet-stream")}, data={"target": "image"})
    assert response.status_code == 415
    assert "accepted: .jpg .mp4 .obj .png .txt .wav" in response.json()["error"]
    assert fake.calls == [] and list(private_tmp.iterdir()) == []


def test_extension_check_ignores_case_and_never_uses_the_client_name(hostile, private_tmp):
    app, _, _, fake = hostile
    response = TestClient(app, base_url="http://127.0.0.1").post(
        "/api/query", files={"file": ("../../../etc/cron.d/PHOTO.PNG", b"png", "image/png")}, data={"target": "text"})
    assert response.status_code == 200
    assert fake.calls[0]["file"].name == "query.png"
    assert fake.calls[0]["file"].parent.parent == private_tmp


def test_a_body_that_is_not_a_multipart_form_is_refused(hostile):
    app, _, _, fake = hostile
    response = TestClient(app, base_url="http://127.0.0.1").post("/api/query", json={"text": "seven",
                                                                                     "target": "image"})
    assert response.status_code == 415
    assert fake.calls == []


def test_requests_for_a_foreign_host_name_are_refused(hostile):
    """A page on another site that rebinds its DNS name to 127.0.0.1 sends its own name as Host."""
    app, _, _, _ = hostile
    assert TestClient(app, base_url="http://attacker.example").get("/api/media/image/7/red").status_code == 400
    assert TestClient(app, base_url="http://localhost:8000").get("/api/media/image/7/red").status_code == 200


@pytest.mark.parametrize("origin", ["http://attacker.example", "http://127.0.0.1:9999", "http://127.0.0.1",
                                    "https://127.0.0.1:8000", "http://localhost:8000", "null", "http://[::1]:8000",
                                    "http://127.0.0.1:80000", "http://127.0.0.1:x", "file://"])
def test_queries_from_another_origin_even_another_local_port_are_refused(hostile, origin):
    """Same origin means the same scheme, host and port: a page on another local port must not POST queries."""
    app, _, _, fake = hostile
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    form = {"text": (None, "seven"), "target": (None, "image")}
    response = client.post("/api/query", files=form, headers={"Origin": origin})
    assert response.status_code == 403 and response.json()["error"] == "cross-origin requests are refused"
    assert fake.calls == []


@pytest.mark.parametrize(("base_url", "origin"), [("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
                                                  ("http://localhost:8000", "http://localhost:8000"),
                                                  ("http://[::1]:8000", "http://[::1]:8000"),
                                                  ("http://127.0.0.1", "http://127.0.0.1:80")])
def test_queries_from_the_pages_own_origin_are_answered(hostile, base_url, origin):
    app, _, _, fake = hostile
    response = TestClient(app, base_url=base_url).post(
        "/api/query", files={"text": (None, "seven"), "target": (None, "image")}, headers={"Origin": origin})
    assert response.status_code == 200
    assert len(fake.calls) == 1


def test_ipv6_loopback_is_an_allowed_host_with_or_without_a_port(hostile):
    app, _, _, _ = hostile
    for base_url in ("http://[::1]:8000", "http://[::1]", "http://[::1]:1"):
        assert TestClient(app, base_url=base_url).get("/api/info").status_code == 200, base_url


def test_serve_binds_to_loopback_unless_told_otherwise(tmp_path, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from pipelines import serve as serve_module
    from pipelines.cli import main

    bound: list[tuple[str, int, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: bound.append((host, port, app)))
    monkeypatch.setattr(serve_module, "workspace_info", fake_info)
    made: list[dict] = []
    monkeypatch.setattr(serve_module, "create_app", lambda workspace, **kw: made.append(kw) or "app")
    monkeypatch.setattr(serve_module, "QueryProcess", IdleQueries)
    assert main(["serve", "--workspace", str(tmp_path)]) == 0
    assert main(["serve", "--workspace", str(tmp_path), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert [(h, p) for h, p, _ in bound] == [("127.0.0.1", 8000), ("0.0.0.0", 8123)]
    assert made[0]["allowed_hosts"] == ("127.0.0.1", "localhost", "::1") and made[1]["allowed_hosts"] == ("*",)
    assert "reachable from other machines" in capsys.readouterr().err


class IdleQueries:
    """Stands in for the query process in tests of ``serve`` that never query."""

    def __init__(self, workspace, **options):
        self.idle_mb = 100.0

    def start(self) -> None:
        pass


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_on_ipv6_loopback_prints_a_bracketed_url_that_the_host_check_accepts(tmp_path, monkeypatch, capsys,
                                                                                    host):
    uvicorn = pytest.importorskip("uvicorn")
    from pipelines import serve as serve_module
    from pipelines.cli import main

    bound: list[tuple[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: bound.append((host, app)))
    monkeypatch.setattr(serve_module, "workspace_info", fake_info)
    monkeypatch.setattr(serve_module, "QueryProcess", IdleQueries)
    monkeypatch.setattr(serve_module, "upload_extensions", lambda: EXTENSIONS)
    assert main(["serve", "--workspace", str(tmp_path), "--host", host]) == 0
    assert "at http://[::1]:8000/" in capsys.readouterr().err
    ((bound_host, app),) = bound
    assert bound_host == "::1"
    client = TestClient(app, base_url="http://[::1]:8000")
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Host": "attacker.example:8000"}).status_code == 400


def test_a_burst_of_concurrent_queries_all_succeed(tmp_path, private_tmp):
    """50 queries at once (uploads and texts) on a live server: none fails, each gets its own answer."""
    workspace = tmp_path / "ws"
    gallery = make_gallery(workspace)
    fake = FakeQuery(gallery, delay=0.01)
    app = create_app(workspace, model="tiny", query_fn=fake, allowed_extensions=EXTENSIONS, info_fn=fake_info,
                     catalog=MediaCatalog(workspace, items=gallery), max_concurrent_queries=2)
    png = (workspace / "raw" / "7" / "red.png").read_bytes()
    targets = ["image", "text", "audio", "mesh", "video"]

    def one(i: int, client) -> tuple[int, float, str, dict]:
        target = targets[i % len(targets)]
        started = time.perf_counter()
        if i % 2:
            response = client.post("/api/query", files={"file": (f"q{i}.png", png, "image/png")},
                                   data={"target": target, "k": "3"})
        else:
            response = client.post("/api/query", files={"text": (None, f"query {i}"), "target": (None, target)})
        return response.status_code, time.perf_counter() - started, target, response.json()

    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda i: one(i, client), range(50)))
    failed = [a for a in answers if a[0] != 200]
    latencies = sorted(a[1] * 1000 for a in answers)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    print(f"\nload test: {len(answers)} concurrent queries, {len(failed)} failed, p50 {p50:.0f} ms, p99 {p99:.0f} ms",
          file=sys.stderr)
    assert failed == []
    assert all(body["target"] == target and {r["modality"] for r in body["results"]} == {target}
               for _, _, target, body in answers)
    assert len(fake.calls) == 50 and fake.most_running <= 2
    assert list(private_tmp.iterdir()) == []


def test_a_burst_of_queries_on_a_trained_model_all_succeed_with_the_serial_answers(tmp_path_factory):
    """50 concurrent queries (image uploads searching texts, typed texts searching images) on a real tiny model: none
    fails, and each answer equals what ``pipelines.query.query`` returns for the same query alone."""
    from pipelines.query import query

    workspace, data = tiny_workspace(tmp_path_factory)
    pictures = sorted((data / "image").rglob("*.png"))[:5]
    words = [p.read_text().strip() for p in sorted((data / "text").rglob("*.txt"))[::6]][:5]  # words of the corpus
    serial = {**{p.name: query(workspace, model="tiny", file=p, target="text") for p in pictures},
              **{w: query(workspace, model="tiny", text=w, target="image") for w in words}}

    def one(i: int, client) -> tuple[str, int, float, dict]:
        started = time.perf_counter()
        if i % 2:
            picture = pictures[i % len(pictures)]
            response = client.post("/api/query", files={"file": (picture.name, picture.read_bytes(), "image/png")},
                                   data={"target": "text"})
            key = picture.name
        else:
            key = words[i % len(words)]
            response = client.post("/api/query", files={"text": (None, key), "target": (None, "image")})
        return key, response.status_code, time.perf_counter() - started, response.json()

    app = create_app(workspace, model="tiny", media_roots=[data])
    with live_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda i: one(i, client), range(50)))
    latencies = sorted(a[2] * 1000 for a in answers)
    failed = [a for a in answers if a[1] != 200]
    print(f"\nload test (tiny DRCL model): {len(answers)} concurrent queries, {len(failed)} failed, "
          f"p50 {statistics.median(latencies):.0f} ms, p99 {latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms",
          file=sys.stderr)
    assert failed == []
    for key, _, _, body in answers:
        assert [r["item_id"] for r in body["results"]] == [r["item_id"] for r in serial[key]["results"]]
        assert [r["score"] for r in body["results"]] == pytest.approx([r["score"] for r in serial[key]["results"]],
                                                                      abs=1e-5)


def test_an_undecodable_upload_on_a_trained_model_is_a_422_naming_the_clients_file(tmp_path_factory):
    """The real query path (the query process, the extractor's MediaError): the message names the file the client
    sent, never the server's upload folder."""
    workspace, data = tiny_workspace(tmp_path_factory)
    with live_server(create_app(workspace, model="tiny", media_roots=[data])) as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/api/query", files={"file": ("holiday.png", b"not a png at all", "image/png")},
                               data={"target": "text"})
        typed = client.post("/api/query", files={"text": (None, "seven"), "target": (None, "image"), "k": (None, "2")})
    assert response.status_code == 422
    assert response.json()["error"].startswith("'holiday.png': ")
    assert "crossmodal-upload" not in response.text and tempfile.gettempdir() not in response.text
    assert typed.status_code == 200 and len(typed.json()["results"]) == 2


# ------------------------------------------------------------------------------------------------ model files
def tiny_model() -> CrossModalModel:
    return CrossModalModel(method="drcl", config=MethodConfig(), encoders={"image": torch.nn.Linear(4, 3)},
                           features={"image": FeatureIdentity("pixels", "pixels@0", 4)}, num_classes=2)


def test_a_model_whose_weights_were_modified_is_refused(tmp_path):
    directory = tiny_model().save(tmp_path / "model")
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 does not match the card"):
        CrossModalModel.load(directory)


def test_a_model_card_that_is_not_valid_json_is_refused(tmp_path):
    directory = tiny_model().save(tmp_path / "model")
    card = directory / CARD_FILE
    card.write_text(card.read_text()[:-20])
    with pytest.raises(ModelFileError, match="not a valid model card"):
        CrossModalModel.load(directory)


def test_a_model_card_missing_a_field_is_refused(tmp_path):
    directory = tiny_model().save(tmp_path / "model")
    card = json.loads((directory / CARD_FILE).read_text())
    del card["features"]
    (directory / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="model card has no 'features'"):
        CrossModalModel.load(directory)


def loadable_model(directory: Path) -> Path:
    """A tiny DRCL model that loads (24- and 16-wide features, hidden 8, a 4-d space, 3 classes), saved there."""
    from crossmodal.methods.drcl import DRCL, DRCLConfig

    features = {"image": FeatureIdentity("pixels", "pixels@0", 24), "text": FeatureIdentity("words", "words@0", 16)}
    return DRCL.build_model(DRCLConfig(hidden=(8,), dim=4), features, 3, {}).save(directory)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(num_classes=1e12), "'num_classes' must be an integer"),
    (lambda c: c.update(num_classes=10**12), "'num_classes' must be an integer in"),
    (lambda c: c.update(num_classes="ten"), "'num_classes' must be an integer"),
    (lambda c: c["features"]["image"].update(dim=10**6), "width must be an integer in"),
    (lambda c: c["features"]["image"].update(dim="24"), "width must be an integer in"),
    (lambda c: c["config"].update(hidden=[200000, 200000]), "do not match the model the card describes"),
    (lambda c: c["config"].update(hidden=[-3]), "cannot be built"),
    (lambda c: c["config"].update(hidden="wide"), "config does not fit drcl"),
    (lambda c: c.update(features=[]), "'features' must be a non-empty object"),
    (lambda c: c.update(method=["drcl"]), "'method' must be a name"),
    (lambda c: c.pop("weights_sha256"), "model card has no 'weights_sha256'"),
    (lambda c: c.update(weights_sha256="0" * 63), "'weights_sha256' must be 64 hex digits"),
])
def test_a_hostile_model_card_is_refused_before_anything_is_allocated(tmp_path, change, message):
    """Issue 15 item 7: each of these once allocated terabytes or gave a traceback. Now each is one named refusal, and
    the process's peak memory does not move by more than 64 MiB while refusing."""
    directory = loadable_model(tmp_path / "model")
    card = json.loads((directory / CARD_FILE).read_text())
    change(card)
    (directory / CARD_FILE).write_text(json.dumps(card))
    before = _peak_rss_mib()
    with pytest.raises(ModelFileError, match=message):
        CrossModalModel.load(directory)
    assert _peak_rss_mib() - before < 64


def test_a_card_without_a_hash_does_not_load_modified_weights(tmp_path):
    directory = loadable_model(tmp_path / "model")
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    card = json.loads((directory / CARD_FILE).read_text())
    del card["weights_sha256"]
    (directory / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="no 'weights_sha256'") as info:
        CrossModalModel.load(directory)
    assert "crossmodal train" in info.value.hint


def test_a_weights_header_that_claims_more_than_the_file_holds_is_refused(tmp_path):
    """A safetensors header whose tensor claims 10^6 x 10^6 floats, with the card's hash forged to match."""
    directory = loadable_model(tmp_path / "model")
    header = json.dumps({"image.0.weight": {"dtype": "F32", "shape": [10**6, 10**6],
                                            "data_offsets": [0, 4 * 10**12]}}).encode()
    (directory / WEIGHTS_FILE).write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    card = json.loads((directory / CARD_FILE).read_text())
    card["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    (directory / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="does not fit its bytes"):
        CrossModalModel.load(directory)


def test_the_untouched_hostile_test_model_loads(tmp_path):
    """The control for the tests above: the model they alter loads as saved."""
    model = CrossModalModel.load(loadable_model(tmp_path / "model"))
    assert model.num_classes == 3 and model.features["image"].dim == 24


class _Payload:
    """Pickling this object records a call to ``Path.touch(marker)``: what an attacker's file would run on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(tmp_path):
    """Even with the card's sha256 forged to match, a pickle is refused as weights and its code does not run."""
    pytest.importorskip("crossmodal.methods.drcl")
    directory = tiny_model().save(tmp_path / "model")
    marker = tmp_path / "pwned"
    (directory / WEIGHTS_FILE).write_bytes(pickle.dumps({"image.weight": _Payload(marker)}))
    card = json.loads((directory / CARD_FILE).read_text())
    card["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    (directory / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError):
        CrossModalModel.load(directory)
    assert not marker.exists()


def _unpickling_calls(tree: ast.AST) -> list[str]:
    """Calls that can unpickle: pickle/joblib/dill loads, ``torch.load`` without ``weights_only=True``,
    ``np.load(..., allow_pickle=True)``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.split(".")[0] in ("pickle", "cPickle", "joblib", "dill", "cloudpickle") and "load" in name:
            found.append(name)
        elif name == "torch.load" and keywords.get("weights_only") != "True":
            found.append(name)
        elif name in ("np.load", "numpy.load") and keywords.get("allow_pickle") == "True":
            found.append(f"{name}(allow_pickle=True)")
    return found


def test_models_indexes_and_stores_are_read_without_unpickling():
    """No module of the core or the pipelines (which read models, indexes and the store) calls an unpickler."""
    offenders = {}
    for package in ("crossmodal", "pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            calls = _unpickling_calls(ast.parse(path.read_text(), filename=str(path)))
            if calls:
                offenders[str(path.relative_to(REPO))] = calls
    assert offenders == {}


def test_the_unpickling_check_finds_each_kind_of_unpickler():
    code = ("import pickle, torch, numpy as np\npickle.loads(b'')\ntorch.load('f')\n"
            "torch.load('f', weights_only=True)\nnp.load('f', allow_pickle=True)\nnp.load('f')\n")
    assert _unpickling_calls(ast.parse(code)) == ["pickle.loads", "torch.load", "np.load(allow_pickle=True)"]


def test_serve_module_never_joins_a_request_path_to_the_file_system():
    """The media routes take an id, never a path: no FileResponse or open() is built from a route parameter."""
    source = (REPO / "pipelines" / "serve.py").read_text()
    tree = ast.parse(source)
    routes = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in ("media", "preview")]
    assert len(routes) == 2
    for route in routes:
        names = {n.id for n in ast.walk(route) if isinstance(n, ast.Name)}
        assert {"Path", "open", "os"}.isdisjoint(names), route.name
