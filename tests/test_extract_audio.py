from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from extractors import MediaError, create_extractor, default_extractor
from extractors.audio import PRESETS, enable_numba_cache
from extractors.errors import ExtractorError

SR = 8000


@pytest.fixture(scope="module")
def mfcc():
    """One extractor for the module: librosa's first call compiles its numba kernels (cached on disk afterwards)."""
    return create_extractor("mfcc")


def _tone(seconds: float = 0.5, *, freq: float = 440.0, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.2 * np.sin(2 * np.pi * 3.1 * freq * t)).astype(np.float32)


def _write(path: Path, samples: np.ndarray, rate: int = SR, **kwargs) -> Path:
    import soundfile as sf

    sf.write(str(path), samples, rate, **kwargs)
    return path


def test_mfcc_is_the_default_audio_extractor_and_its_width_follows_the_config():
    assert default_extractor("audio") == "mfcc"
    assert create_extractor("mfcc").dim == 20 * 3 * 2
    assert create_extractor("mfcc", **PRESETS["xmedia-29"]).dim == 29
    assert create_extractor("mfcc", **PRESETS["xmedianet-672"]).dim == 672
    assert create_extractor("mfcc", pooling=("mean", "std", "min", "max"), deltas=1).dim == 20 * 2 * 4


def test_mfcc_matches_librosa_pooled_by_hand_on_real_speech(mfcc, shared_data):
    import librosa

    path = shared_data / "fsdd" / "recordings" / "3_theo_7.wav"
    y, _ = librosa.load(path, sr=22050, res_type="soxr_hq")
    M = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=20)
    F = np.concatenate([M, librosa.feature.delta(M), librosa.feature.delta(M, order=2)])
    expected = np.concatenate([F.mean(axis=1), F.std(axis=1)])
    X = mfcc([mfcc.load(path)])
    np.testing.assert_allclose(X[0], expected, rtol=1e-4, atol=1e-3)


def test_a_config_other_than_the_default_builds_its_own_filter_bank_and_matches_librosa():
    import librosa

    config = {"n_fft": 1024, "hop_length": 256, "n_mels": 40, "n_mfcc": 13, "sample_rate": 16000}
    y = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    M = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=1024, hop_length=256, n_mels=40)
    F = np.concatenate([M, librosa.feature.delta(M), librosa.feature.delta(M, order=2)])
    expected = np.concatenate([F.mean(axis=1), F.std(axis=1)])
    np.testing.assert_allclose(create_extractor("mfcc", **config)([y])[0], expected, rtol=1e-5, atol=1e-4)


def test_the_same_clip_in_lossless_formats_gives_the_same_vector(mfcc, tmp_path):
    y = (_tone() * 32767).astype(np.int16)  # integer samples: every format stores them exactly
    paths = [_write(tmp_path / f"a.{ext}", y, subtype="PCM_16") for ext in ("wav", "flac", "aiff", "au")]
    X = mfcc([mfcc.load(p) for p in paths])
    np.testing.assert_array_equal(X, np.repeat(X[:1], len(paths), axis=0))


def test_m4a_decodes_through_pyav_when_soundfile_cannot(mfcc, tmp_path):
    av = pytest.importorskip("av")
    y = _tone(1.0)
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=SR)
        frame = av.AudioFrame.from_ndarray(y[None, :], format="fltp", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    decoded = mfcc.load(path)
    reference = mfcc.load(_write(tmp_path / "a.wav", y))
    assert abs(len(decoded) - len(reference)) < 0.2 * 22050  # AAC adds a priming frame and pads the last one
    means = mfcc([decoded, reference])[:, :20]  # the mean MFCCs of a lossy copy stay close
    assert np.corrcoef(means)[0, 1] > 0.99


@pytest.mark.parametrize("samples", [np.array([0.5]), np.full(100, 0.25), np.zeros(SR)], ids=["1-sample", "100-samples",
                                                                                             "silent-1s"])
def test_clips_shorter_than_a_frame_and_silence_give_finite_vectors(mfcc, tmp_path, samples):
    X = mfcc([mfcc.load(_write(tmp_path / "clip.wav", samples.astype(np.float32), subtype="FLOAT"))])
    assert X.shape == (1, 120) and np.isfinite(X).all()
    assert (X[0, 60:] >= 0).all()  # the std half


def test_a_silent_clip_has_constant_mfcc_so_zero_deltas_and_zero_std(mfcc, tmp_path):
    X = mfcc([mfcc.load(_write(tmp_path / "silent.wav", np.zeros(SR, np.float32)))])[0]
    assert np.allclose(X[20:60], 0, atol=1e-4)  # deltas and delta-deltas of a constant
    assert np.allclose(X[60:], 0, atol=1e-4)  # every std


def test_extraction_is_deterministic(mfcc, shared_data):
    path = shared_data / "fsdd" / "recordings" / "0_george_0.wav"
    np.testing.assert_array_equal(mfcc([mfcc.load(path)]), mfcc([mfcc.load(path)]))


@pytest.mark.parametrize("kind", ["zero-byte", "junk-bytes", "no-samples", "nan-samples", "missing"])
def test_unreadable_or_empty_audio_raises_media_error_naming_the_file(mfcc, tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "junk-bytes":
        path.write_bytes(b"definitely not audio " * 20)
    elif kind == "no-samples":
        _write(path, np.zeros(0, np.float32))
    elif kind == "nan-samples":
        _write(path, np.full(100, np.nan, np.float32), subtype="FLOAT")
    with pytest.raises(MediaError) as info:
        mfcc.load(path)
    assert str(path) in str(info.value)


def test_an_invalid_pooling_statistic_is_a_config_error():
    with pytest.raises(ExtractorError, match="pooling"):
        create_extractor("mfcc", pooling=("median",))


def test_numba_cache_goes_to_the_crossmodal_cache_folder_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if "numba.core.config" in sys.modules:
        monkeypatch.setattr(sys.modules["numba.core.config"], "CACHE_DIR", sys.modules["numba.core.config"].CACHE_DIR)
    assert enable_numba_cache() == tmp_path / "crossmodal" / "numba"
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "crossmodal" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert enable_numba_cache() == tmp_path / "mine"


# ------------------------------------------------------------------------------------------- bounded decoding


def test_a_clip_longer_than_max_seconds_is_refused_from_its_header_naming_the_file_and_the_limit(tmp_path):
    mfcc = create_extractor("mfcc", max_seconds=2)
    path = _write(tmp_path / "long.flac", _tone(3.0), subtype="PCM_16")
    with pytest.raises(MediaError, match=r"max_seconds=2 \(its header declares 3.0 s\)") as info:
        mfcc.load(path)
    assert str(path) in str(info.value) and "--set max_seconds" in info.value.hint


def test_a_clip_of_exactly_max_seconds_is_decoded_whole(tmp_path):
    mfcc = create_extractor("mfcc", max_seconds=2)
    y = mfcc.load(_write(tmp_path / "two.flac", _tone(2.0), subtype="PCM_16"))
    assert y.shape == (2 * 22050,)


def test_a_stream_without_a_declared_length_stops_decoding_at_max_seconds(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "long.m4a"  # soundfile cannot read it; PyAV decodes it frame by frame, with no length known
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=SR)
        frame = av.AudioFrame.from_ndarray(_tone(30.0)[None, :], format="fltp", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(MediaError, match=r"max_seconds=1 \(decoding passed 1\.\d+ s and stopped\)"):
        create_extractor("mfcc", max_seconds=1).load(path)


def test_a_file_sampled_above_max_sample_rate_is_refused(tmp_path):
    with pytest.raises(MediaError, match="sampled at 8000 Hz, above the limit max_sample_rate=4000"):
        create_extractor("mfcc", max_sample_rate=4000).load(_write(tmp_path / "a.wav", _tone(0.1)))


def test_the_length_limits_only_refuse_files_so_they_leave_the_key_unchanged():
    assert create_extractor("mfcc", max_seconds=5, max_sample_rate=8000).key == create_extractor("mfcc").key


def test_a_flac_whose_header_gives_no_length_decodes_whole_and_stops_past_max_seconds(tmp_path):
    path = _write(tmp_path / "a.flac", _tone(3.0), subtype="PCM_16")
    data = bytearray(path.read_bytes())  # STREAMINFO's total sample count (36 bits at byte 18) 0: "unknown"
    data[18:26] = (int.from_bytes(data[18:26], "big") & ~(2**36 - 1)).to_bytes(8, "big")
    unknown = tmp_path / "unknown-length.flac"
    unknown.write_bytes(bytes(data))
    assert create_extractor("mfcc").load(unknown).shape == (3 * 22050,)
    with pytest.raises(MediaError, match=r"max_seconds=2 \(decoding passed 2\.0 s and stopped\)"):
        create_extractor("mfcc", max_seconds=2).load(unknown)
