"""The web server's API (``crossmodal serve``) with a fake query function: the page, queries, media and previews."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from _serve_helpers import (  # noqa: E402
    EXTENSIONS,
    MULTIPART,
    TARGET,
    TEXT,
    FakeQuery,
    fake_info,
    field,
    hungry_query,
    make_gallery,
    malformed_requests,
    multipart,
    write_png,
)
from fastapi.testclient import TestClient  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from crossmodal.errors import NotTrainedError  # noqa: E402
from extractors.errors import MediaError  # noqa: E402
from pipelines import previews  # noqa: E402
from pipelines.serve import MediaCatalog, QueryBudgetError, QueryProcess, QueryProcessError, create_app  # noqa: E402,E501


@pytest.fixture()
def gallery(tmp_path: Path) -> dict[tuple[str, str], Path]:
    return make_gallery(tmp_path / "ws")


def make_client(tmp_path: Path, gallery, query_fn=None, *, info_fn=fake_info, **options) -> TestClient:
    workspace = tmp_path / "ws"
    app = create_app(workspace, model="tiny", query_fn=query_fn or FakeQuery(gallery), allowed_extensions=EXTENSIONS,
                     info_fn=info_fn, catalog=MediaCatalog(workspace, items=gallery), **options)
    return TestClient(app, base_url="http://127.0.0.1")


def test_page_is_served_with_a_policy_allowing_only_its_own_script(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/")
    assert response.status_code == 200
    assert 'id="file"' in response.text and 'id="target"' in response.text and 'id="results"' in response.text
    script = re.search(r"<script>(.*?)</script>", response.text, flags=re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = response.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy


def test_info_gives_the_model_targets_and_accepted_extensions(tmp_path, gallery):
    body = make_client(tmp_path, gallery, max_upload_mb=3).get("/api/info").json()
    assert body["model"] == "tiny"
    assert body["targets"] == ["image", "text", "audio", "mesh", "video"]
    assert body["extensions"] == sorted(EXTENSIONS)
    assert body["max_upload_mb"] == 3


def test_file_query_passes_the_upload_and_fields_to_the_query_function(tmp_path, gallery):
    fake = FakeQuery(gallery)
    payload = (tmp_path / "ws" / "raw" / "7" / "seven.wav").read_bytes()
    response = make_client(tmp_path, gallery, fake).post(
        "/api/query", files={"file": ("my recording.WAV", payload, "audio/wav")}, data={"target": "image", "k": "1"})
    assert response.status_code == 200
    (call,) = fake.calls
    assert call["bytes"] == payload
    assert call["file"].suffix == ".wav" and call["file"].name == "query.wav"  # the server's name, not the client's
    assert (call["target"], call["k"], call["text"], call["model"]) == ("image", 1, None, "tiny")


def test_query_reports_the_clients_file_name_not_the_servers_temporary_path(tmp_path, gallery):
    response = make_client(tmp_path, gallery).post(
        "/api/query", files={"file": ("C:\\Users\\me\\my photo.PNG", b"png", "image/png")}, data={"target": "text"})
    assert response.json()["query"] == {"modality": "image", "file": "my photo.PNG", "text": None,
                                        "extractor": "fake-image@0", "model": "tiny"}


def test_query_answers_the_same_json_as_the_query_function(tmp_path, gallery):
    fake = FakeQuery(gallery)
    response = make_client(tmp_path, gallery, fake).post("/api/query", files={"text": (None, "seven"),
                                                                              "target": (None, "mesh")})
    expected = FakeQuery(gallery)(tmp_path / "ws", model="tiny", text="seven", target="mesh")
    assert response.json() == expected
    assert response.json()["results"][0]["item_id"] == "7/seven"
    assert fake.calls[0]["text"] == "seven" and fake.calls[0]["file"] is None


def test_text_query_accepts_the_3d_alias_for_mesh(tmp_path, gallery):
    fake = FakeQuery(gallery)
    response = make_client(tmp_path, gallery, fake).post("/api/query", files={"text": (None, "seven"),
                                                                              "target": (None, "3d")})
    assert response.status_code == 200
    assert fake.calls[0]["target"] == "mesh"


def test_upload_lives_in_a_private_folder_deleted_after_the_query(tmp_path, gallery):
    fake = FakeQuery(gallery)
    make_client(tmp_path, gallery, fake).post("/api/query", files={"file": ("a.png", b"\x89PNG..", "image/png")},
                                              data={"target": "text"})
    (call,) = fake.calls
    assert call["folder_mode"] == 0o700
    assert not call["file"].exists() and not call["file"].parent.exists()


def test_upload_is_deleted_when_the_query_fails(tmp_path, gallery):
    seen: list[Path] = []

    def broken(workspace, *, file, **kwargs):
        seen.append(file)
        raise MediaError(file, "not a decodable image (PIL: cannot identify image file)")

    response = make_client(tmp_path, gallery, broken).post(
        "/api/query", files={"file": ("a.png", b"not a png", "image/png")}, data={"target": "text"})
    assert response.status_code == 422
    assert "not a decodable image" in response.json()["error"]
    assert not seen[0].exists() and not seen[0].parent.exists()


def test_an_error_about_the_upload_names_the_clients_file_not_the_servers_folder(tmp_path, gallery):
    def broken(workspace, *, file, **kwargs):
        raise MediaError(file, "not a decodable image", hint=f"look at {file} or {file.parent}")

    response = make_client(tmp_path, gallery, broken).post(
        "/api/query", files={"file": ("holiday photo.png", b"not a png", "image/png")}, data={"target": "text"})
    assert response.json() == {"error": "'holiday photo.png': not a decodable image",
                               "hint": "look at 'holiday photo.png' or the upload folder"}


def test_no_refusal_shows_a_temporary_path_even_one_the_query_did_not_name_as_the_upload(tmp_path, gallery):
    def broken(workspace, **kwargs):
        raise MediaError("/tmp/crossmodal-upload-x1y2/other.png", "unreadable")

    response = make_client(tmp_path, gallery, broken).post("/api/query", files={"text": (None, "seven"),
                                                                                "target": (None, "image")})
    assert response.status_code == 422
    assert response.json()["error"] == "the uploaded file: unreadable"


@pytest.mark.parametrize(("fields", "status", "message"), [
    ({"target": "image"}, 400, "either a file or a text"),
    ({"text": "seven"}, 400, "choose a target"),
    ({"text": "seven", "target": "smell"}, 400, "unknown modality 'smell'"),
    ({"text": "seven", "target": "image", "k": "0"}, 400, "k must be a whole number from 1 to 100"),
    ({"text": "seven", "target": "image", "k": "ten"}, 400, "k must be a whole number"),
    ({"text": "seven", "target": "image", "k": "\u00b2"}, 400, "k must be a whole number"),  # str.isdigit says yes
    ({"text": "x" * 10_001, "target": "image"}, 413, "longer than 10000 characters"),
])
def test_query_refuses_invalid_fields_with_a_message(tmp_path, gallery, fields, status, message):
    fake = FakeQuery(gallery)
    response = make_client(tmp_path, gallery, fake).post("/api/query", files={k: (None, v) for k, v in fields.items()})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert fake.calls == []


def test_query_needs_either_a_file_or_a_text_but_not_both(tmp_path, gallery):
    response = make_client(tmp_path, gallery).post(
        "/api/query", files={"file": ("a.png", b"x", "image/png")}, data={"text": "seven", "target": "image"})
    assert response.status_code == 400


def test_user_errors_become_json_with_the_fix(tmp_path, gallery):
    def untrained(workspace, **kwargs):
        raise NotTrainedError("no index for model 'tiny'", hint="run crossmodal index --model tiny")

    response = make_client(tmp_path, gallery, untrained).post("/api/query", files={"text": (None, "seven"),
                                                                                   "target": (None, "image")})
    assert response.status_code == 409
    assert response.json() == {"error": "no index for model 'tiny'", "hint": "run crossmodal index --model tiny"}


def test_media_serves_each_items_bytes_by_modality_and_id(tmp_path, gallery):
    client = make_client(tmp_path, gallery)
    for (modality, item_id), path in gallery.items():
        response = client.get(f"/api/media/{modality}/{item_id}")
        assert response.status_code == 200, item_id
        assert response.content == path.read_bytes()


def test_media_accepts_an_id_with_an_encoded_slash_as_the_page_sends_it(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/api/media/audio/7%2Fseven")
    assert response.content == gallery["audio", "7/seven"].read_bytes()


def test_an_id_of_another_modality_is_not_found(tmp_path, gallery):
    assert make_client(tmp_path, gallery).get("/api/media/image/7/seven").status_code == 404


def test_media_of_a_text_item_is_plain_text_never_html(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/api/media/text/7/seven")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_media_supports_range_requests_for_players(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/api/media/audio/7/seven", headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.content == gallery["audio", "7/seven"].read_bytes()[:10]


def test_text_preview_is_the_start_of_the_text(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/api/preview/text/7/seven")
    assert response.text == "the number seven, written out in words\n"


def test_long_text_preview_is_cut_with_an_ellipsis(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("word " * 200)
    snippet = previews.text_snippet(path, chars=20)
    assert snippet == "word word word word…"


def _png(response) -> np.ndarray:
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_image_preview_is_a_thumbnail_of_the_image(tmp_path, gallery):
    pixels = _png(make_client(tmp_path, gallery).get("/api/preview/image/7/red"))
    assert pixels.shape == (192, 192, 3)  # 48 px enlarged 4x at most
    assert tuple(pixels[96, 96]) == (200, 30, 30) and tuple(pixels[2, 2]) == (255, 255, 255)


def test_large_image_preview_fits_the_preview_size(tmp_path):
    big = write_png(tmp_path / "ws" / "big.png", size=1000)
    pixels = _png(make_client(tmp_path, {("image", "big"): big}).get("/api/preview/image/big"))
    assert pixels.shape == (previews.PREVIEW_SIZE, previews.PREVIEW_SIZE, 3)


def test_mesh_preview_is_a_shaded_render_on_white(tmp_path, gallery):
    pytest.importorskip("open3d")
    pixels = _png(make_client(tmp_path, gallery).get("/api/preview/mesh/7/seven")).astype(int)
    drawn = (pixels != 255).any(-1)
    assert 0.02 < drawn.mean() < 0.9  # the tetrahedron covers part of the frame
    assert len(np.unique(pixels[drawn].sum(-1) // 8)) >= 2  # faces facing different ways are shaded differently


def test_video_preview_is_a_poster_frame_a_third_of_the_way_in(tmp_path, gallery):
    pytest.importorskip("av")
    pixels = _png(make_client(tmp_path, gallery).get("/api/preview/video/7/seven"))
    green = (pixels[..., 1] > 120) & (pixels[..., 0] < 120)
    # frame i (of 6) is green on its left (i+1)/6; frame 2 is the poster, so about half the width is green
    assert 0.35 < green.mean() < 0.65


def test_previews_are_rendered_once_and_then_read_from_the_cache(tmp_path, gallery, monkeypatch):
    renders: list[Path] = []
    thumbnail = previews.image_thumbnail
    monkeypatch.setitem(previews.RENDERERS, "image", lambda p, s: renders.append(p) or thumbnail(p, s))
    client = make_client(tmp_path, gallery)
    first = client.get("/api/preview/image/7/red").content
    assert client.get("/api/preview/image/7/red").content == first
    assert renders == [gallery["image", "7/red"]]
    assert len(list((tmp_path / "ws" / "cache" / "previews").glob("image-*.png"))) == 1


def test_audio_has_a_player_not_a_picture_preview(tmp_path, gallery):
    response = make_client(tmp_path, gallery).get("/api/preview/audio/7/seven")
    assert response.status_code == 404
    assert "no picture preview" in response.json()["error"]


def test_an_undecodable_item_gives_422_not_a_server_error(tmp_path):
    bad = tmp_path / "ws" / "bad.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"definitely not a png")
    response = make_client(tmp_path, {("image", "bad"): bad}).get("/api/preview/image/bad")
    assert response.status_code == 422
    assert "not a decodable image" in response.json()["error"]


def test_info_reports_a_missing_model_with_the_command_that_makes_it(tmp_path, gallery):
    def no_model(workspace, model):
        raise NotTrainedError(f"{workspace}: no trained model {model!r}", hint="run crossmodal train")

    response = make_client(tmp_path, gallery, info_fn=no_model).get("/api/info")
    assert response.status_code == 409
    assert response.json()["hint"] == "run crossmodal train"


def write_store_table(workspace: Path, modality: str, items: dict[str, Path]) -> None:
    """One shard of fake 2-d features for ``items`` (id -> file) in the workspace's store."""
    from extractors.store import StoreRow
    from pipelines.workspace import Workspace

    table = Workspace(workspace).store.open({"name": "fake", "modality": modality, "key": f"fake-{modality}@0",
                                             "dim": 2, "dtype": "float32", "config": {}, "weights_sha256": ""})
    rows = [StoreRow(content_hash=f"{modality}-{item_id}", item_id=item_id, source_path=str(path.resolve()),
                     labels=(item_id.split("/")[0],)) for item_id, path in items.items()]
    table.write_shard(np.zeros((len(rows), 2), np.float32), rows)


def test_catalog_reads_items_from_the_store_and_sees_shards_written_while_serving(tmp_path, gallery):
    workspace = tmp_path / "ws"
    write_store_table(workspace, "image", {"7/red": gallery["image", "7/red"]})
    catalog = MediaCatalog(workspace)
    assert catalog.lookup("image", "7/red").path == gallery["image", "7/red"].resolve()
    with pytest.raises(HTTPException):
        catalog.lookup("text", "7/seven")
    write_store_table(workspace, "text", {"7/seven": gallery["text", "7/seven"]})
    assert catalog.lookup("text", "7/seven").path == gallery["text", "7/seven"].resolve()


def test_catalog_finds_every_item_when_many_threads_ask_before_its_first_read(tmp_path, gallery):
    workspace = tmp_path / "ws"
    write_store_table(workspace, "image", {f"x/{i}": gallery["image", "7/red"] for i in range(20)})
    catalog = MediaCatalog(workspace)
    start = threading.Barrier(20)

    def look(i: int) -> str:
        start.wait()
        return catalog.lookup("image", f"x/{i}").item_id

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(look, range(20))) == [f"x/{i}" for i in range(20)]


def test_catalog_lists_the_folders_of_items_it_will_not_serve(tmp_path, gallery):
    workspace = tmp_path / "ws"
    outside = write_png(tmp_path / "photos" / "cat" / "1.png")
    write_store_table(workspace, "image", {"7/red": gallery["image", "7/red"], "cat/1": outside})
    assert MediaCatalog(workspace).unserved_folders() == [outside.parent.resolve()]
    assert MediaCatalog(workspace, roots=[tmp_path / "photos"]).unserved_folders() == []


def test_serve_without_a_trained_model_says_how_to_train_one(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["serve", "--workspace", str(tmp_path / "empty"), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no trained model 'nope'" in err and "fix: train one first: crossmodal train --name nope" in err


# ------------------------------------------------------------------------------------------ malformed requests
@pytest.fixture(scope="module")
def hostile_client(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("malformed")
    gallery = make_gallery(tmp_path / "ws")
    fake = FakeQuery(gallery)
    app = create_app(tmp_path / "ws", model="tiny", query_fn=fake, allowed_extensions=EXTENSIONS, info_fn=fake_info,
                     catalog=MediaCatalog(tmp_path / "ws", items=gallery))
    return TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False), fake


MALFORMED = malformed_requests()


def test_the_malformed_request_corpus_has_at_least_a_hundred_requests():
    assert len(MALFORMED) >= 100
    assert len({name for name, *_ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(("name", "method", "path", "headers", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_is_refused_with_a_4xx_and_a_one_line_json_message(hostile_client, name, method, path,
                                                                               headers, body):
    client, fake = hostile_client
    calls = len(fake.calls)
    response = client.request(method, path, headers=headers, content=body)
    assert 400 <= response.status_code < 500, response.text
    answer = response.json()
    assert set(answer) == {"error", "hint"} and answer["error"] and "\n" not in answer["error"]
    assert "crossmodal-upload" not in response.text and tempfile.gettempdir() + "/" not in response.text
    assert len(fake.calls) == calls


@pytest.mark.parametrize(("name", "content_type", "body"), [
    ("a boundary of 200 characters (RFC 2046 says 70)", "multipart/form-data; boundary=" + "b" * 200,
     multipart(TEXT, TARGET, boundary="b" * 200)),
    ("a charset that does not exist (read as latin-1)", f"{MULTIPART}; charset=no-such-charset",
     multipart(TEXT, TARGET)),
    ("the boundary quoted", f'multipart/form-data; boundary="{"q" * 10}"', multipart(TEXT, TARGET, boundary="q" * 10)),
    ("fields in another order with k", MULTIPART, multipart(field("k", "3"), TARGET, TEXT)),
])
def test_unusual_but_valid_forms_are_answered(hostile_client, name, content_type, body):
    client, _ = hostile_client
    response = client.post("/api/query", headers={"Content-Type": content_type}, content=body)
    assert response.status_code == 200, response.text
    assert response.json()["query"]["text"] == "seven"


# ----------------------------------------------------------------------------------- the query process's memory
@pytest.fixture()
def query_process(tmp_path):
    """A ``QueryProcess`` over an empty workspace (nothing to warm) running ``hungry_query``: budget 200 MB."""
    process = QueryProcess(tmp_path, model="none", budget_mb=200, query_fn=hungry_query)
    yield process
    process.close()


def ask(process: QueryProcess, text: str) -> dict:
    return process(process.workspace, model="none", text=text, target="image", k=1)


def test_a_query_within_the_budget_is_answered_by_the_same_process(query_process):
    assert ask(query_process, "50")["query"]["extractor"] == "hungry@0"
    pid = query_process.pid
    assert ask(query_process, "50")["k"] == 1
    assert query_process.pid == pid


def test_a_query_past_the_memory_budget_is_stopped_and_refused_and_the_next_one_answered(query_process):
    query_process.start()
    first = query_process.pid
    with pytest.raises(QueryBudgetError, match="more than 200 MB of memory"):
        ask(query_process, "1000")
    assert _alive(first) is False
    assert ask(query_process, "10")["results"] == []
    assert query_process.pid != first


def test_a_query_that_leaves_the_process_larger_gets_it_replaced_before_the_next(query_process, capsys):
    query_process.start()
    first = query_process.pid
    ask(query_process, "keep 150")
    held = re.search(r"the query process holds (\d+) MB more than when idle", capsys.readouterr().err)
    assert held is not None and 140 <= int(held[1]) <= 200
    ask(query_process, "10")
    assert query_process.pid not in (None, first)


def test_a_query_process_that_dies_gives_an_error_and_a_fresh_process(query_process):
    with pytest.raises(QueryProcessError, match="ended without answering"):
        ask(query_process, "crash")
    assert ask(query_process, "10")["k"] == 1


def test_the_server_answers_413_when_a_query_passes_the_budget(tmp_path, gallery):
    process = QueryProcess(tmp_path / "ws", model="tiny", budget_mb=200, query_fn=hungry_query)
    try:
        client = make_client(tmp_path, gallery, process)
        response = client.post("/api/query", files={"text": (None, "1000"), "target": (None, "image")})
        assert response.status_code == 413
        assert response.json()["error"].startswith("the query needed more than 200 MB of memory")
        assert client.post("/api/query", files={"text": (None, "1"), "target": (None, "image")}).status_code == 200
    finally:
        process.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
