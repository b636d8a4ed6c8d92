"""``crossmodal extract`` end to end: sources, the store filled once, resume, renames, and every bad file recorded."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _extract_media import SHAPES, write_shapes, write_texts

from crossmodal.errors import ConfigError
from extractors import create_extractor
from extractors.image import HogColor
from extractors.store import FeatureStore
from pipelines.cli import main
from pipelines.extract import ExtractOptions, run_extract
from pipelines.sources import hash_items, scan

IMAGE_EXTS = (".png", ".jpg")


def extract_images(workspace, root, **kwargs):
    options = ExtractOptions(extractor="hog-color", batch_size=4, workers=2, device="cpu", progress=False, **kwargs)
    return run_extract(workspace, "image", [root], options)


def errors_of(summary) -> dict[str, tuple[str, str]]:
    lines = open(summary.errors_file).read().splitlines()
    return {os.path.basename(e["path"]): (e["error"], e["message"]) for e in map(json.loads, lines)}


# ---- sources


def test_folders_give_the_class_folder_as_label_and_the_relative_path_as_id(tmp_path):
    write_shapes(tmp_path, per_class=2)
    (tmp_path / "circle" / "deeper").mkdir()
    (tmp_path / "circle" / "1.png").rename(tmp_path / "circle" / "deeper" / "1.png")
    (tmp_path / "loose.png").write_bytes((tmp_path / "square" / "0.png").read_bytes())
    found = scan([tmp_path], extensions=IMAGE_EXTS)
    assert [(it.item_id, it.labels) for it in found.items] == [
        ("circle/0", ("circle",)), ("circle/deeper/1", ("circle",)), ("loose", ()),
        ("square/0", ("square",)), ("square/1", ("square",)),
        ("triangle/0", ("triangle",)), ("triangle/1", ("triangle",)),
    ]
    assert found.errors == []


def test_labels_from_a_regex_take_the_first_group_of_the_file_name(tmp_path):
    for name in ("3_george_0.wav", "7_jackson_12.wav", "noise.wav"):
        (tmp_path / name).write_bytes(b"RIFF")
    found = scan([tmp_path], extensions=(".wav",), labels_from=r"regex:^(\d)_")
    assert {it.path.name: it.labels for it in found.items} == {
        "3_george_0.wav": ("3",), "7_jackson_12.wav": ("7",), "noise.wav": ()}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_manifest_gives_single_and_multiple_labels_splits_and_ids(tmp_path, fmt):
    write_shapes(tmp_path / "media", per_class=1)
    rows = [{"path": "media/circle/0.png", "labels": "round;red", "split": "train", "id": "c0"},
            {"path": "media/square/0.png", "labels": '["box", "green"]', "split": "test"},
            {"path": str(tmp_path / "media/triangle/0.png"), "labels": "pointy|blue"},
            {"path": "media/absent.png", "labels": "x"}]
    manifest = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        manifest.write_text("path,labels,split,id\n" + "\n".join(
            f"{r['path']},\"{r['labels'].replace(chr(34), chr(34) * 2)}\",{r.get('split', '')},{r.get('id', '')}"
            for r in rows) + "\n")
    else:
        manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    found = scan([], extensions=IMAGE_EXTS, labels_from=str(manifest))
    assert [(it.item_id, it.labels, it.split) for it in found.items] == [
        ("c0", ("round", "red"), "train"), ("media/square/0", ("box", "green"), "test"),
        ("media/triangle/0", ("pointy", "blue"), None)]
    kinds = sorted(e.error for e in found.errors)
    assert kinds == (["manifest", "missing"] if fmt == "jsonl" else ["missing"])


def test_missing_paths_symlink_loops_and_unsupported_extensions_are_recorded_not_raised(tmp_path):
    write_shapes(tmp_path / "root", per_class=1)
    (tmp_path / "root" / "circle" / "loop").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "drawing.svg").write_text("<svg/>")
    (tmp_path / "root" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    found = scan([tmp_path / "root", tmp_path / "absent"], extensions=IMAGE_EXTS)
    assert len(found.items) == 3
    assert sorted((os.path.basename(e.path), e.error) for e in found.errors) == [
        ("absent", "missing"), ("dangling.png", "missing"), ("drawing.svg", "unsupported"), ("loop", "symlink-loop")]


# ---- the pipeline


def test_extract_fills_the_store_with_one_row_per_image_equal_to_the_extractor_applied_directly(tmp_path):
    paths = write_shapes(tmp_path / "media", per_class=3)
    summary = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (summary.found, summary.extracted, summary.skipped, summary.failed) == (9, 9, 0, 0)
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    ext = create_extractor("hog-color")
    assert meta.column("item_id").to_pylist() == [f"{s}/{i}" for s in SHAPES for i in range(3)]
    assert meta.column("labels").to_pylist() == [[s] for s in SHAPES for _ in range(3)]
    np.testing.assert_array_equal(X, ext([ext.load(p) for p in paths]))
    assert summary.key == ext.key and summary.dim == X.shape[1] == 1898


def test_a_second_run_extracts_nothing_and_skips_everything(tmp_path):
    write_shapes(tmp_path / "media", per_class=2)
    extract_images(tmp_path / "ws", tmp_path / "media")
    again = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (again.extracted, again.skipped, again.failed) == (0, 6, 0)


def test_a_renamed_or_copied_file_is_not_embedded_again_but_gets_its_own_row_with_the_same_features(tmp_path):
    write_shapes(tmp_path / "media", per_class=2)
    extract_images(tmp_path / "ws", tmp_path / "media")
    (tmp_path / "media" / "circle" / "0.png").rename(tmp_path / "media" / "circle" / "renamed.png")
    (tmp_path / "media" / "copy.png").write_bytes((tmp_path / "media" / "square" / "1.png").read_bytes())
    again = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (again.extracted, again.skipped, again.duplicates) == (0, 5, 2)
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    ids = meta.column("item_id").to_pylist()
    assert len(ids) == 8 and {"circle/renamed", "copy"} <= set(ids)
    np.testing.assert_array_equal(X[ids.index("copy")], X[ids.index("square/1")])
    np.testing.assert_array_equal(X[ids.index("circle/renamed")], X[ids.index("circle/0")])


def test_a_killed_run_keeps_its_committed_shards_and_the_next_run_does_only_the_rest(tmp_path, monkeypatch):
    from extractors.store import FeatureTable

    write_shapes(tmp_path / "media", per_class=4)
    real_write = FeatureTable.write_shard
    calls = {"n": 0}

    def killed_while_writing_the_third_shard(self, X, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_write(self, X, rows)

    monkeypatch.setattr(FeatureTable, "write_shard", killed_while_writing_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_images(tmp_path / "ws", tmp_path / "media", shard_size=4)
    table = FeatureStore(tmp_path / "ws" / "store").table("image")
    assert len(table) == 8  # two shards of 4 committed
    orphan = table.shards / "part-000099-00000000.npy"  # what a kill between the two renames leaves
    np.save(orphan, np.zeros((4, table.dim), np.float32))
    monkeypatch.setattr(FeatureTable, "write_shard", real_write)
    resumed = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (resumed.extracted, resumed.skipped) == (4, 8)
    assert not orphan.exists()
    X, meta = table.read()
    assert len(set(meta.column("content_hash").to_pylist())) == len(X) == 12


def test_each_bad_image_is_recorded_with_its_reason_and_every_good_one_is_extracted(tmp_path):
    write_shapes(tmp_path / "media", per_class=2)
    bad = tmp_path / "media" / "circle"
    (bad / "zero.png").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(200))
    (bad / "truncated.png").write_bytes((tmp_path / "media" / "square" / "0.png").read_bytes()[:120])
    (bad / "notes.dat").write_text("not an image")  # an extension no extractor reads
    summary = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (summary.extracted, summary.failed, summary.unsupported) == (6, 3, 1)
    errors = errors_of(summary)
    assert errors["zero.png"] == ("MediaError", "empty file (0 bytes)")
    assert errors["corrupt.jpg"][1].startswith("not a decodable image")
    assert errors["truncated.png"][1].startswith("corrupt or truncated image")
    assert errors["notes.dat"][0] == "unsupported"


def test_an_item_the_model_rejects_is_isolated_and_the_rest_of_its_batch_is_kept(tmp_path, monkeypatch):
    write_shapes(tmp_path / "media", per_class=2)
    target = tmp_path / "media" / "square" / "1.png"
    poison = create_extractor("hog-color").load(target)
    real_embed = HogColor.embed

    def rejects_one(self, items):
        if any(np.array_equal(it, poison) for it in items):
            raise RuntimeError("model blew up on this input")
        return real_embed(self, items)

    monkeypatch.setattr(HogColor, "embed", rejects_one)
    summary = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (summary.extracted, summary.failed) == (5, 1)
    assert errors_of(summary) == {"1.png": ("RuntimeError", "model blew up on this input")}


def test_text_extraction_fits_doc2vec_on_the_corpus_records_bad_texts_and_resumes_without_refitting(tmp_path):
    write_texts(tmp_path / "texts")
    (tmp_path / "texts" / "animals" / "latin1.txt").write_bytes(b"caf\xe9")
    (tmp_path / "texts" / "finance" / "empty.txt").write_bytes(b"")
    options = ExtractOptions(batch_size=3, workers=2, progress=False, overrides=["vector_size=16", "min_count=1",
                                                                               "epochs=5"])
    first = run_extract(tmp_path / "ws", "text", [tmp_path / "texts"], options)
    assert (first.extractor, first.dim, first.extracted, first.failed, first.unsupported) == ("doc2vec", 16, 8, 2, 0)
    assert set(errors_of(first)) == {"latin1.txt", "empty.txt"}
    fitted = list((tmp_path / "ws" / "store" / "text" / "_fitted").iterdir())
    second = run_extract(tmp_path / "ws", "text", [tmp_path / "texts"], options)
    assert (second.key, second.extracted, second.skipped) == (first.key, 0, 8)
    assert list((tmp_path / "ws" / "store" / "text" / "_fitted").iterdir()) == fitted
    description = FeatureStore(tmp_path / "ws" / "store").table("text").description
    assert description["config"]["model_path"] == str(fitted[0].resolve())


def test_the_3d_modality_is_the_mesh_modality(tmp_path):
    with pytest.raises(ConfigError, match="extractor 'hog-color' is for image, not mesh"):
        run_extract(tmp_path / "ws", "3d", [tmp_path], ExtractOptions(extractor="hog-color", progress=False))


def test_an_unknown_extractor_option_is_refused_with_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="hog-color has no option") as err:
        run_extract(tmp_path / "ws", "image", [tmp_path], ExtractOptions(extractor="hog-color", overrides=["sise=64"]))
    assert "size" in err.value.hint


def test_the_cli_prints_a_json_summary_and_writes_the_run_record(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=1)
    code = main(["extract", "--modality", "image", str(tmp_path / "media"), "--extractor", "hog-color",
                 "--workspace", str(tmp_path / "ws"), "--set", "size=64", "--device", "cpu", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["extracted"], summary["skipped"], summary["failed"], summary["dim"]) == (3, 0, 0, 9 * 36 + 6 + 128)
    run = json.loads((tmp_path / "ws" / "runs" / summary["run_id"] / "run.json").read_text())
    assert run["extractor"]["config"]["size"] == 64


def test_the_cli_lists_extractors_of_a_modality_with_their_defaults(capsys):
    assert main(["extractors", "--modality", "image", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"vgg19-fc7", "hog-color"} <= set(rows)
    assert (rows["vgg19-fc7"]["default"], rows["vgg19-fc7"]["dim"]) == (True, 4096)
    assert {r["modality"] for r in rows.values()} == {"image"}


def test_the_cli_without_paths_or_manifest_says_what_to_give(capsys):
    assert main(["extract", "--modality", "image"]) == 2
    err = capsys.readouterr().err
    assert "nothing to extract: no PATH given" in err and "--labels-from MANIFEST" in err


def test_extractor_errors_survive_pickling_whole_as_they_cross_to_ray_workers_and_back():
    import pickle

    from extractors.errors import MediaError, MissingWeightsError

    for error in (MediaError("a.png", "truncated", hint="re-download it"),
                  MissingWeightsError("vgg19-fc7", "vgg19.pth", ["/x", "/y"], "pass --weights")):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again), again.__dict__) == (type(error), str(error), error.__dict__)


def test_workers_follow_what_decoding_and_the_model_cost_unless_the_user_gives_a_number():
    from pipelines.extract import DEFAULT_WORKERS, decode_workers

    cores = os.cpu_count() or 2
    assert decode_workers(create_extractor("minilm")) == 0  # a text is read in the model's thread
    assert decode_workers(create_extractor("lightfield")) == DEFAULT_WORKERS == min(4, max(1, cores - 1))
    for single_core in ("hog-color", "doc2vec", "mfcc", "frame-stats"):  # a copy of the model in every process
        assert decode_workers(create_extractor(single_core), decode="processes") == min(8, cores)
    assert decode_workers(create_extractor("doc2vec"), decode="threads") == 0  # threads share one model
    assert decode_workers(create_extractor("hog-color"), decode="threads") == DEFAULT_WORKERS
    assert decode_workers(create_extractor("frame-stats"), decode="threads") == min(8, cores)
    assert decode_workers(create_extractor("frame-stats"), 3) == 3


def test_worker_processes_with_a_model_each_and_decoding_threads_fill_the_store_with_the_same_rows(tmp_path):
    write_shapes(tmp_path / "media", per_class=3)
    rows = {}
    for decode in ("processes", "threads"):
        summary = extract_images(tmp_path / decode, tmp_path / "media", decode=decode)
        assert summary.extracted == 9
        rows[decode] = FeatureStore(tmp_path / decode / "store").read("image")[0]
    np.testing.assert_array_equal(rows["processes"], rows["threads"])


def test_a_decoding_process_that_dies_stops_the_run_with_an_error_naming_its_files(tmp_path, monkeypatch):
    from extractors.errors import ExtractorError

    write_shapes(tmp_path / "media", per_class=1)
    monkeypatch.setattr(HogColor, "load", lambda self, path: os._exit(3))  # a decoder crashing in C
    with pytest.raises(ExtractorError, match="a worker process died while reading one of"):
        extract_images(tmp_path / "ws", tmp_path / "media", decode="processes")


def test_decoded_data_that_cannot_cross_processes_stops_the_run_with_a_named_error_not_a_hang(tmp_path, monkeypatch):
    import threading

    from extractors.errors import ExtractorError

    write_shapes(tmp_path / "media", per_class=1)
    lock = threading.Lock()  # a lock cannot be pickled
    monkeypatch.setattr(HogColor, "load", lambda self, path: lock)
    monkeypatch.setattr(HogColor, "single_core", False)  # the workers only decode: what they decode must cross
    with pytest.raises(ExtractorError, match="cannot be sent between processes") as err:
        extract_images(tmp_path / "ws", tmp_path / "media", decode="processes")
    assert err.value.hint == "run with --decode threads"


def test_an_error_that_stops_the_run_crosses_from_a_decoding_process_whole(tmp_path, monkeypatch):
    from extractors.errors import MissingDependencyError

    write_shapes(tmp_path / "media", per_class=1)

    def load(self, path):
        raise MissingDependencyError("hog-color", "PIL", "image")

    monkeypatch.setattr(HogColor, "load", load)
    with pytest.raises(MissingDependencyError, match="PIL"):
        extract_images(tmp_path / "ws", tmp_path / "media", decode="processes")


def test_decoding_processes_decode_each_file_on_one_thread(tmp_path, monkeypatch):
    from extractors.base import decoder_threads

    write_shapes(tmp_path / "media", per_class=1)
    real_load = HogColor.load
    monkeypatch.setattr(HogColor, "load", lambda self, path: real_load(self, path) if decoder_threads() == 1 else None)
    summary = extract_images(tmp_path / "ws", tmp_path / "media", decode="processes")
    assert (summary.extracted, summary.failed) == (len(SHAPES), 0)
    assert decoder_threads() is None  # the consuming process keeps the libraries' own choice


def test_a_single_core_extractor_embeds_in_the_worker_processes_not_in_the_caller(tmp_path, monkeypatch):
    write_shapes(tmp_path / "media", per_class=2)
    caller, real_embed = os.getpid(), HogColor.embed

    def embed_outside_the_caller(self, items):
        assert os.getpid() != caller, "embedded in the calling process"
        return real_embed(self, items)

    monkeypatch.setattr(HogColor, "embed", embed_outside_the_caller)
    summary = extract_images(tmp_path / "ws", tmp_path / "media", decode="processes")
    assert (summary.extracted, summary.failed) == (2 * len(SHAPES), 0)


def test_a_consumer_that_stops_early_leaves_no_decoding_process_behind(tmp_path):
    import multiprocessing

    from pipelines.extract import extract_items

    write_shapes(tmp_path / "media", per_class=6)
    items = hash_items(scan([tmp_path / "media"], extensions=IMAGE_EXTS).items)[0]
    before = set(multiprocessing.active_children())  # other tests' servers may keep a query process of their own
    results = extract_items(create_extractor("hog-color"), items, batch_size=2, workers=2, decode="processes")
    next(results)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    results.close()
    assert not any(p.is_alive() for p in workers)


def test_the_cli_refuses_decode_with_ray_instead_of_ignoring_it(tmp_path, capsys):
    code = main(["extract", "--modality", "image", str(tmp_path), "--ray", "auto", "--decode", "processes",
                 "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and "--decode is for local runs" in err and "drop --decode, or drop --ray" in err


def test_extract_options_refuse_bad_sizes_and_decode_modes_before_anything_is_read():
    for bad in (dict(batch_size=0), dict(shard_size=0), dict(workers=-1), dict(decode="fork")):
        with pytest.raises(ConfigError):
            ExtractOptions(**bad)
    options = ExtractOptions(overrides=["size=16"])
    assert options.overrides == ("size=16",)  # kept as a tuple: the object is frozen and holds nothing mutable


def test_the_cli_hands_its_flags_to_the_run_as_one_options_object(tmp_path, monkeypatch):
    import pipelines.extract as extract_module

    seen = {}
    real = extract_module.run_extract

    def spy(workspace, modality, paths, options):
        seen["options"] = options
        return real(workspace, modality, paths, options)

    monkeypatch.setattr(extract_module, "run_extract", spy)
    write_shapes(tmp_path / "media", per_class=1)
    code = main(["extract", "--modality", "image", str(tmp_path / "media"), "--workspace", str(tmp_path / "ws"),
                 "-e", "hog-color", "--set", "size=32", "--batch-size", "3", "--workers", "0", "--device", "cpu"])
    assert code == 0
    assert seen["options"] == ExtractOptions(extractor="hog-color", batch_size=3, workers=0, device="cpu",
                                             overrides=("size=32",))


# ---- every item accounted for


def test_the_same_bytes_under_two_names_and_two_classes_give_every_item_its_row_embedded_once(tmp_path, monkeypatch):
    write_shapes(tmp_path / "media", per_class=2)
    same = (tmp_path / "media" / "circle" / "0.png").read_bytes()
    (tmp_path / "media" / "circle" / "again.png").write_bytes(same)
    (tmp_path / "media" / "square" / "circle-too.png").write_bytes(same)
    embedded = []
    real_embed = HogColor.embed
    monkeypatch.setattr(HogColor, "embed", lambda self, items: embedded.extend(items) or real_embed(self, items))
    # workers=0: in this process, so that the patched embed counts
    summary = run_extract(tmp_path / "ws", "image", [tmp_path / "media"],
                          ExtractOptions(extractor="hog-color", workers=0, progress=False))
    assert (summary.found, summary.extracted, summary.duplicates, summary.skipped) == (8, 6, 2, 0)
    assert len(embedded) == 6
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    rows = {(i, tuple(labels)): k for k, (i, labels) in enumerate(zip(meta.column("item_id").to_pylist(),
                                                                       meta.column("labels").to_pylist()))}
    assert len(rows) == 8
    for twin in [("circle/again", ("circle",)), ("square/circle-too", ("square",))]:
        np.testing.assert_array_equal(X[rows[twin]], X[rows[("circle/0", ("circle",))]])
    again = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (again.extracted, again.duplicates, again.skipped) == (0, 0, 8)


def test_items_with_the_same_bytes_share_a_split_and_their_pairs_stay_paired(tmp_path):
    from pipelines.workspace import Workspace

    write_shapes(tmp_path / "media", per_class=5)
    for shape in SHAPES:
        for i in range(5):
            words = "the same words" if (shape, i) in {("circle", 0), ("circle", 1), ("square", 2)} else f"{shape} {i}"
            (tmp_path / "media" / shape / f"{i}.txt").write_text(words)
    extract_images(tmp_path / "ws", tmp_path / "media")
    texts = run_extract(tmp_path / "ws", "text", [tmp_path / "media"], ExtractOptions(
        extractor="doc2vec", workers=0, progress=False, overrides=["vector_size=8", "min_count=1", "epochs=2"]))
    assert (texts.extracted, texts.duplicates) == (13, 2)
    ws = Workspace(tmp_path / "ws")
    data = ws.datasets(["image", "text"], seed=3)
    assert data.paired
    for split in ("train", "val", "test"):
        assert list(data.__dict__[split]["image"].ids) == list(data.__dict__[split]["text"].ids)
    assert sum(len(getattr(data, s)["text"]) for s in ("train", "val", "test")) == 15
    where = {i: s for s in ("train", "val", "test") for i in getattr(data, s)["text"].ids}
    assert where["circle/0"] == where["circle/1"] == where["square/2"]


@pytest.mark.parametrize("setup, message, fix", [
    (lambda root: None, "error: no such file or folder: {root}", "fix: check the path"),
    (lambda root: root.mkdir(), "error: found no image files in {root} (it is empty)", "fix: give folders"),
    (lambda root: [root.mkdir(), *(root.joinpath(f"{i}.dat").write_text("x") for i in range(3)),
                   root.joinpath("song.wav").write_bytes(b"RIFF")],
     "error: found no image files in {root} (3 .dat are not read: hog-color reads .",
     "fix: give a folder of"),
    (lambda root: [root.mkdir(), root.joinpath("a.txt").write_text("words"), root.joinpath("b.txt").write_text("x")],
     "error: found no image files in {root} (2 .txt are other modalities' files)",
     "fix: give a folder of .bmp"),
])
def test_extract_of_nothing_readable_exits_non_zero_with_one_line_saying_what_was_found(
        tmp_path, capsys, setup, message, fix):
    root = tmp_path / "photos"
    setup(root)
    code = main(["extract", "-m", "image", str(root), "-e", "hog-color", "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2
    assert err[0].startswith(message.format(root=root)) and err[1].strip().startswith(fix)
    assert not (tmp_path / "ws" / "runs").exists()


def test_a_folder_of_another_modality_names_the_modality_that_reads_it(tmp_path, capsys):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("words")
    assert main(["extract", "-m", "image", str(tmp_path / "texts"), "-e", "hog-color", "-w", str(tmp_path)]) == 2
    assert "read the .txt files with --modality text" in capsys.readouterr().err


def test_the_summary_says_how_many_items_carry_no_label_and_what_train_does_with_them(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=1)
    (tmp_path / "media" / "loose.png").write_bytes((tmp_path / "media" / "circle" / "0.png").read_bytes() + b"\0")
    argv = ["extract", "-m", "image", str(tmp_path / "media"), "-e", "hog-color", "--set", "size=32",
            "-w", str(tmp_path / "ws"), "--device", "cpu", "--workers", "0"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unlabelled"] == 1 and summary["unlabelled_examples"][0].endswith("loose.png")
    assert main(argv) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if "no label" in line]
    assert len(note) == 1 and note[0].startswith("1 item has no label (e.g. ")
    assert "train leaves them out" in note[0]


def test_files_of_other_modalities_in_the_tree_are_counted_by_suffix_in_the_summary(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=1)
    write_texts(tmp_path / "media")
    argv = ["extract", "-m", "image", str(tmp_path / "media"), "-e", "hog-color", "--set", "size=32",
            "-w", str(tmp_path / "ws"), "--device", "cpu", "--workers", "0"]
    assert main([*argv, "--json"]) == 0
    texts = len(list((tmp_path / "media").rglob("*.txt")))
    assert json.loads(capsys.readouterr().out)["passed_over"] == {".txt": texts}
    assert main(argv) == 0
    assert f"{texts} files of other modalities passed over ({texts} .txt)" in capsys.readouterr().err


def test_a_wrong_path_is_said_before_the_default_extractor_looks_for_its_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code = main(["extract", "-m", "image", str(tmp_path / "nowhere"), "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: no such file or folder: {tmp_path / 'nowhere'}")
    assert "weights" not in err


def test_files_a_missing_library_would_read_are_said_once_per_extension_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(HogColor, "extensions", tuple(e for e in HogColor.extensions if e != ".svg"))
    monkeypatch.setattr(HogColor, "unreadable", {".svg": "SVG images need the resvg-py package"})
    write_shapes(tmp_path / "media", per_class=1)
    for i in range(2):
        (tmp_path / "media" / "circle" / f"drawing{i}.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    argv = ["extract", "-m", "image", "-e", "hog-color", "--set", "size=32", "-w", str(tmp_path / "ws"),
            "--device", "cpu", "--workers", "0"]
    assert main([*argv, str(tmp_path / "media")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "2 .svg files: SVG images need the resvg-py package" in err
    assert main([*argv, str(tmp_path / "media" / "circle" / "drawing0.svg")]) == 2
    assert "(1 .svg files: SVG images need the resvg-py package)" in capsys.readouterr().err


# ---- manifests


def test_manifest_splits_are_normalised_for_case_and_spaces(tmp_path):
    write_shapes(tmp_path / "media", per_class=1)
    (tmp_path / "list.csv").write_text("path,label,split\nmedia/circle/0.png,circle, TEST \n"
                                       "media/square/0.png,square,Val\nmedia/triangle/0.png,triangle,\n")
    found = scan([], extensions=IMAGE_EXTS, labels_from=str(tmp_path / "list.csv"))
    assert [it.split for it in found.items] == ["test", "val", None]


@pytest.mark.parametrize("body, message", [
    ("path,label,split\nmedia/circle/0.png,circle,train\nmedia/square/0.png,square,bogus\n"
     "media/triangle/0.png,triangle,tst\n",
     "split must be train, val or test, but lines 3, 4 have another value (3: 'bogus', 4: 'tst')"),
    ("path,label\nmedia/circle/0.png,circle\nmedia/square/0.png,square,green\n",
     "line 3 has more fields than the header"),
])
def test_a_manifest_row_that_would_be_misread_is_refused_naming_its_line(tmp_path, capsys, body, message):
    write_shapes(tmp_path / "media", per_class=1)
    (tmp_path / "list.csv").write_text(body)
    code = main(["extract", "-m", "image", "--labels-from", str(tmp_path / "list.csv"), "-e", "hog-color",
                 "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and message in err[0] and err[1].startswith("  fix: ")


def test_a_jsonl_manifest_with_a_split_of_another_kind_is_refused(tmp_path):
    from crossmodal.errors import DatasetFormatError

    write_shapes(tmp_path / "media", per_class=1)
    (tmp_path / "list.jsonl").write_text('{"path": "media/circle/0.png", "label": "circle", "split": 1}\n')
    with pytest.raises(DatasetFormatError, match="line 1 has another value"):
        scan([], extensions=IMAGE_EXTS, labels_from=str(tmp_path / "list.jsonl"))


def test_a_copy_of_a_file_that_fails_fails_with_it_and_is_listed_too(tmp_path):
    write_shapes(tmp_path / "media", per_class=1)
    for name in ("bad.png", "bad-copy.png"):
        (tmp_path / "media" / "circle" / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    summary = extract_images(tmp_path / "ws", tmp_path / "media")
    assert (summary.extracted, summary.duplicates, summary.failed) == (3, 0, 2)
    errors = errors_of(summary)
    assert errors["bad-copy.png"][0] == "MediaError"  # the first in the scan's order is the one decoded
    assert errors["bad.png"] == ("failed-duplicate", f"same bytes as {tmp_path / 'media' / 'circle' / 'bad-copy.png'}, "
                                                     "which could not be extracted")


def test_extract_over_a_damaged_store_exits_with_one_line_naming_the_shard_and_the_repair(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=1)
    extract_images(tmp_path / "ws", tmp_path / "media")
    parquet = next((tmp_path / "ws" / "store" / "image").glob("*/shards/*.parquet"))
    data = bytearray(parquet.read_bytes())
    data[100] ^= 0xFF
    parquet.write_bytes(bytes(data))
    code = main(["extract", "-m", "image", str(tmp_path / "media"), "-e", "hog-color", "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2
    assert err[0] == f"error: {parquet}: sha256 differs from the one recorded at commit; the file was changed"
    assert err[1].startswith(f"  fix: run crossmodal store repair --workspace {tmp_path / 'ws'}")
