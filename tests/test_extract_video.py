from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extractors import MediaError, MissingWeightsError, create_extractor, default_extractor
from extractors.errors import ExtractorError
from extractors.video import C3D

av = pytest.importorskip("av")

TINY = 1 / 64  # C3D with 1-8 channels and a 64-wide fc6: the real architecture, small enough for a test


def write_video(path: Path, frames: np.ndarray, *, codec: str = "mpeg4", faststart: bool = False) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames at 8 fps."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=8)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_square(n: int, *, size: tuple[int, int] = (48, 64), colour=(255, 40, 40)) -> np.ndarray:
    frames = np.full((n, *size, 3), 30, np.uint8)
    for t in range(n):
        frames[t, 12:28, 2 * t:2 * t + 16] = colour
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "moving": write_video(root / "moving.mp4", moving_square(20)),
        "moving-h264": write_video(root / "moving-h264.mp4", moving_square(20), codec="libx264"),
        "static": write_video(root / "static.mp4", np.repeat(moving_square(1), 10, axis=0)),
        "red": write_video(root / "red.mp4", np.tile(np.array([250, 0, 0], np.uint8), (6, 32, 32, 1))),
        "short": write_video(root / "short.mp4", moving_square(5)),
        "one-frame": write_video(root / "one.mp4", moving_square(1)),
        "forty": write_video(root / "forty.mp4", moving_square(40, size=(32, 48))),
    }


@pytest.fixture(autouse=True)
def _weights_hash_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSMODAL_CACHE_DIR", str(tmp_path / "cache"))  # keep test files out of ~/.cache


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = C3D(TINY)
    for p in model.parameters():  # weights large enough that fc6 after ReLU is not all zeros
        torch.nn.init.normal_(p, std=0.2)
    path = tmp_path_factory.mktemp("weights") / "c3d-tiny.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def frame_stats():
    return create_extractor("frame-stats")


# ------------------------------------------------------------------------------------------------------- frame-stats


def test_frame_stats_has_a_fixed_width_and_is_deterministic(frame_stats, videos):
    X = frame_stats([frame_stats.load(videos[k]) for k in ("moving", "moving-h264", "short", "one-frame")])
    assert frame_stats.dim == 2 * (64 + 64) + 2 * (8 + 64) == 400 and X.shape == (4, 400)
    np.testing.assert_array_equal(X[:1], frame_stats([frame_stats.load(videos["moving"])]))


def test_frame_stats_of_a_red_video_puts_all_colour_in_the_red_bin(frame_stats, videos):
    x = frame_stats([frame_stats.load(videos["red"])])[0]
    red_bin = (3 * 4 + 0) * 4 + 0  # r in the top quarter, g and b in the bottom one
    assert x[red_bin] > 0.99 and x[64 + 64 + red_bin] < 0.01  # mean ~1, std over time ~0


def test_a_static_video_has_no_motion_and_a_moving_one_has(frame_stats, videos):
    static, moving = frame_stats([frame_stats.load(videos["static"]), frame_stats.load(videos["moving"])])
    motion_mean = slice(256, 256 + 72)
    assert static[motion_mean][0] > 0.99  # every pixel difference in the first bin
    assert moving[motion_mean][1:8].sum() > 0.02 and moving[motion_mean][8:].max() > static[motion_mean][8:].max()


def test_a_one_frame_video_has_zero_motion_features(frame_stats, videos):
    x = frame_stats([frame_stats.load(videos["one-frame"])])[0]
    assert np.isfinite(x).all() and (x[256:] == 0).all()


def test_real_clips_decode_with_their_frame_count(frame_stats, shared_data):
    frames = frame_stats.load(shared_data / "videos" / "carphone_pristine.mp4")
    assert frames.shape == (120, 64, 64, 3) and frames.dtype == np.uint8


# ------------------------------------------------------------------------------------------------------------ errors


def _truncate(path: Path, out: Path, keep: float) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[:int(len(data) * keep)])
    return out


@pytest.mark.parametrize("faststart", [False, True], ids=["index-at-end", "index-first"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_truncated_video_raises_media_error(frame_stats, tmp_path, faststart, keep):
    full = write_video(tmp_path / "full.mp4", moving_square(20), faststart=faststart)
    with pytest.raises(MediaError, match="truncated|not a decodable|no decodable"):
        frame_stats.load(_truncate(full, tmp_path / "cut.mp4", keep))


@pytest.mark.parametrize("kind", ["zero-byte", "junk", "audio-only", "missing"])
def test_an_unreadable_video_raises_media_error_naming_the_file(frame_stats, tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "junk":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    elif kind == "audio-only":
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
    with pytest.raises(MediaError) as info:
        frame_stats.load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------------------------- C3D


def test_c3d_has_the_papers_architecture_and_the_conversions_keys():
    model = C3D()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == [f"{layer}.{p}" for layer in ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b",
                                                         "conv5a", "conv5b", "fc6", "fc7", "fc8")
                            for p in ("weight", "bias")]
    assert shapes["conv1.weight"] == (64, 3, 3, 3, 3) and shapes["conv5b.weight"] == (512, 512, 3, 3, 3)
    assert shapes["fc6.weight"] == (4096, 8192) and shapes["fc7.weight"] == (4096, 4096)
    assert shapes["fc8.weight"] == (487, 4096)


def test_the_pooling_reduces_a_clip_to_the_8192_values_fc6_expects():
    model = C3D(TINY)
    x = torch.zeros(1, 3, 16, 112, 112)
    for block in (model.pool1, model.pool2, model.pool3, model.pool4, model.pool5):
        x = block(x)
    assert tuple(x.shape[2:]) == (1, 4, 4)  # x 512 channels = 8192 at full width


def test_c3d_is_the_default_video_extractor_and_needs_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("CROSSMODAL_C3D_WEIGHTS", raising=False)
    monkeypatch.setenv("CROSSMODAL_OFFLINE", "1")
    monkeypatch.setenv("CROSSMODAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert default_extractor("video") == "c3d-fc6"
    with pytest.raises(MissingWeightsError) as info:
        create_extractor("c3d-fc6").weights_path
    message = str(info.value)
    assert "c3d.pickle" in message and "CROSSMODAL_C3D_WEIGHTS" in message
    assert str(tmp_path / "weights" / "c3d.pickle") in message and str(tmp_path / "hub") in message


def test_c3d_weights_come_from_the_environment_variable(monkeypatch, tiny_weights):
    monkeypatch.setenv("CROSSMODAL_C3D_WEIGHTS", str(tiny_weights))
    extractor = create_extractor("c3d-fc6", width_multiplier=TINY)
    assert extractor.weights_path == tiny_weights and extractor.dim == 64


def test_c3d_features_are_the_mean_of_fc6_over_16_frame_clips(tiny_weights, videos):
    extractor = create_extractor("c3d-fc6", weights=str(tiny_weights), width_multiplier=TINY)
    frames = extractor.load(videos["forty"])  # 40 frames: clips start at 0 and 16, frames 32-39 are not used
    assert frames.shape == (40, 112, 112, 3)
    model = C3D(TINY)
    model.load_state_dict(torch.load(tiny_weights, weights_only=True))
    clips = frames[:32].reshape(2, 16, 112, 112, 3)[..., ::-1].astype(np.float32) - np.float32([90.0, 98.0, 102.0])
    with torch.inference_mode():
        expected = model.fc6_features(torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy())).mean(0).numpy()
    x = extractor([frames])[0]
    assert (expected > 0).any()
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)


def test_c3d_pads_a_short_video_by_repeating_its_last_frame(tiny_weights, videos):
    extractor = create_extractor("c3d-fc6", weights=str(tiny_weights), width_multiplier=TINY)
    frames = extractor.load(videos["short"])
    assert frames.shape == (16, 112, 112, 3)
    assert (frames[5:] == frames[4]).all() and not (frames[3] == frames[4]).all()
    assert extractor([frames]).shape == (1, 64)


def test_c3d_refuses_a_state_dict_of_another_width(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(C3D(1 / 32).state_dict(), path)
    with pytest.raises(ExtractorError, match="does not fit"):
        create_extractor("c3d-fc6", weights=str(path), width_multiplier=TINY).key


def test_c3d_key_follows_the_weights_content_not_their_path(tiny_weights, tmp_path):
    copy = tmp_path / "copy.pth"
    copy.write_bytes(tiny_weights.read_bytes())
    other = tmp_path / "other.pth"
    torch.save(C3D(TINY).state_dict(), other)
    keys = [create_extractor("c3d-fc6", weights=str(p), width_multiplier=TINY).key for p in (tiny_weights, copy, other)]
    assert keys[0] == keys[1] != keys[2]


# ------------------------------------------------------------------------------------------- bounded decoding


def test_a_video_whose_index_lists_more_than_max_frames_is_refused_before_decoding(videos):
    with pytest.raises(MediaError, match=r"max_frames=10 \(its index lists 20\)") as info:
        create_extractor("frame-stats", max_frames=10).load(videos["moving"])
    assert str(videos["moving"]) in str(info.value) and "--set max_frames" in info.value.hint


def test_a_video_without_a_frame_count_stops_decoding_past_max_frames(tmp_path):
    path = write_video(tmp_path / "no-index.mkv", moving_square(20))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska lists no frame count: only decoding can tell
    with pytest.raises(MediaError, match=r"max_frames=10 \(decoding passed it and stopped\)"):
        create_extractor("frame-stats", max_frames=10).load(path)
    assert create_extractor("frame-stats", max_frames=20).load(path).shape == (20, 64, 64, 3)


def test_a_video_of_frames_larger_than_max_pixels_is_refused(videos):
    with pytest.raises(MediaError, match=r"64x48 = 3072 pixels per frame exceeds the limit max_pixels=3000"):
        create_extractor("frame-stats", max_pixels=3000).load(videos["moving"])


def test_c3d_keeps_only_the_cropped_frames_of_a_video(tiny_weights, videos):
    extractor = create_extractor("c3d-fc6", weights=str(tiny_weights), width_multiplier=TINY, max_frames=40)
    frames = extractor.load(videos["forty"])
    assert frames.shape == (40, 112, 112, 3) and frames.flags.owndata  # no view of the uncropped 128x171 frames


def test_frame_stats_computed_a_few_frames_at_a_time_equal_the_whole_video_at_once(frame_stats, videos, monkeypatch):
    import extractors.video

    frames = frame_stats.load(videos["forty"])
    whole = frame_stats([frames])
    monkeypatch.setattr(extractors.video, "_FRAMES_PER_STEP", 3)  # steps that split the 40 frames unevenly
    np.testing.assert_array_equal(frame_stats([frames]), whole)


def test_the_frame_limits_only_refuse_files_so_they_leave_the_key_unchanged(frame_stats):
    assert create_extractor("frame-stats", max_frames=5, max_pixels=100).key == frame_stats.key
