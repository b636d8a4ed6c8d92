"""The digits generators: every class in every modality, reproducible bytes, well-formed meshes, videos and speech."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import ConfigError, CrossmodalError
from pipelines.demo import generate_digits
from pipelines.demo.glyphs import digit_fonts, glyph_mask
from pipelines.demo.meshes import MESH_FORMATS, extrude_mask, save_mesh
from pipelines.demo.texts import digit_sentences

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
SILENT = ("image", "text", "mesh", "video")  # the modalities that need no espeak-ng


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "dataset.json"}


def test_every_digit_gets_the_asked_number_of_distinct_files_in_every_modality(tmp_path):
    description = generate_digits(tmp_path, per_class=2, seed=0, modalities=SILENT)
    for modality in SILENT:
        folders = sorted(p.name for p in (tmp_path / modality).iterdir())
        assert folders == [str(d) for d in range(10)]
        files = [p for p in (tmp_path / modality).rglob("*") if p.is_file()]
        assert len(files) == 20 == description["modalities"][modality]["files"]
        assert len({hashlib.sha256(p.read_bytes()).digest() for p in files}) == 20


def test_the_same_seed_regenerates_the_same_bytes_and_another_seed_does_not(tmp_path):
    generate_digits(tmp_path / "a", per_class=2, seed=5, modalities=SILENT)
    generate_digits(tmp_path / "b", per_class=2, seed=5, modalities=SILENT)
    generate_digits(tmp_path / "c", per_class=2, seed=6, modalities=SILENT)
    a, b, c = (_hashes(tmp_path / name) for name in "abc")
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_a_modality_does_not_change_when_another_is_generated_with_it(tmp_path):
    generate_digits(tmp_path / "alone", per_class=2, seed=1, modalities=["text"])
    generate_digits(tmp_path / "all", per_class=2, seed=1, modalities=SILENT)
    assert _hashes(tmp_path / "alone" / "text") == _hashes(tmp_path / "all" / "text")


def test_each_file_name_pairs_with_the_same_name_in_the_other_modalities(tmp_path):
    generate_digits(tmp_path, per_class=3, seed=0, modalities=SILENT)
    stems = {m: sorted(str(p.relative_to(tmp_path / m).with_suffix("")) for p in (tmp_path / m).rglob("*.*"))
             for m in SILENT}
    assert stems["image"] == stems["text"] == stems["mesh"] == stems["video"]


def test_no_sentence_is_shared_by_two_digits_and_each_names_its_digit_or_a_sum_or_neighbour():
    seen: dict[str, int] = {}
    for digit in range(10):
        for sentence in digit_sentences(digit):
            assert seen.setdefault(sentence, digit) == digit, sentence
    assert "the number after six" in digit_sentences(7) and "7 is prime" in digit_sentences(7)


def test_every_font_draws_ten_different_digits():
    fonts = digit_fonts()
    assert len(fonts) >= 2  # at least one TrueType font (matplotlib ships DejaVu) and Pillow's own
    for font in fonts:
        masks = {glyph_mask(d, font, 24).tobytes() for d in range(10)}
        assert len(masks) == 10, font


def test_an_extruded_pixel_is_a_closed_box_with_outward_faces():
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    vertices, faces = extrude_mask(mask, depth=2.0)
    assert vertices.shape == (8, 3) and faces.shape == (12, 3)
    tri = vertices[faces]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert signed_volume == pytest.approx(2.0)  # 1 x 1 x 2, positive: faces wind outwards
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed: every edge borders exactly two triangles


def test_an_extruded_glyph_has_the_volume_of_its_pixels_times_the_depth():
    mask = glyph_mask(8, digit_fonts()[0], 20)
    vertices, faces = extrude_mask(mask, depth=3.0)
    tri = vertices[faces]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert volume == pytest.approx(mask.sum() * 3.0)


@pytest.mark.parametrize("suffix", MESH_FORMATS)
def test_every_mesh_format_reads_back_to_the_same_triangles(tmp_path, suffix):
    trimesh = pytest.importorskip("trimesh")
    mask = glyph_mask(4, digit_fonts()[0], 12)
    vertices, faces = extrude_mask(mask, depth=2.0)
    vertices = vertices / 10
    path = tmp_path / f"four{suffix}"
    save_mesh(path, vertices, faces)
    mesh = trimesh.load(path, process=False, force="mesh")
    read = np.sort(np.round(mesh.vertices[mesh.faces], 5).reshape(len(mesh.faces), -1), axis=0)
    wrote = np.sort(np.round(vertices[faces], 5).reshape(len(faces), -1), axis=0)
    np.testing.assert_allclose(read, wrote, atol=1e-5)


def test_videos_decode_to_their_rendered_size_and_length(tmp_path):
    av = pytest.importorskip("av")
    from pipelines.demo.videos import VIDEO_SIZE, digit_frames

    generate_digits(tmp_path, per_class=2, seed=3, modalities=["video"])
    path = sorted((tmp_path / "video" / "6").iterdir())[0]
    frames = digit_frames(6, np.random.default_rng([3, 4, 6]))  # the stream of (seed 3, video, digit 6)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == len(frames) and decoded[0].shape == (VIDEO_SIZE, VIDEO_SIZE, 3)
    assert np.abs(decoded[-1].astype(int) - frames[-1]).mean() < 12  # lossy, but the same picture


@needs_espeak
def test_spoken_digits_are_distinct_wav_recordings_of_speech(tmp_path):
    sf = pytest.importorskip("soundfile")
    generate_digits(tmp_path, per_class=3, seed=0, modalities=["audio"])
    files = sorted((tmp_path / "audio").rglob("*.wav"))
    assert len(files) == 30 and len({hashlib.sha256(p.read_bytes()).digest() for p in files}) == 30
    samples, rate = sf.read(files[0])
    assert rate == 22050 and 0.2 < len(samples) / rate < 3 and np.abs(samples).max() > 0.05


def test_without_espeak_the_generator_fails_before_writing_and_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CrossmodalError, match="espeak-ng") as info:
        generate_digits(tmp_path, per_class=1, seed=0, modalities=["image", "audio"])
    assert "apt-get install espeak-ng" in info.value.hint
    assert not (tmp_path / "image").exists()


def test_real_recordings_replace_the_synthesised_speech_and_keep_their_digit(tmp_path, shared_data):
    description = generate_digits(tmp_path, per_class=2, seed=0, modalities=["audio"],
                                  audio_source=shared_data / "fsdd" / "recordings")
    assert description["modalities"]["audio"]["files"] == 20
    for digit in range(10):
        copies = sorted((tmp_path / "audio" / str(digit)).iterdir())
        assert len(copies) == 2
        originals = description["modalities"]["audio"]["originals"]
        assert all(originals[str(p.relative_to(tmp_path / "audio"))].startswith(f"{digit}_") for p in copies)


def test_a_per_class_count_beyond_the_sentences_available_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="per_class"):
        generate_digits(tmp_path, per_class=1000, seed=0, modalities=["text"])
