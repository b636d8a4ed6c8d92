"""Video extractors: C3D fc6 (``c3d-fc6``, the default for video, 4096-d) and a weight-free ``frame-stats``.

C3D reference: D. Tran, L. Bourdev, R. Fergus, L. Torresani and M. Paluri, "Learning Spatiotemporal Features with 3D
Convolutional Networks", ICCV 2015. The network and its layer names are those of the community PyTorch conversion of
the authors' Sports-1M Caffe model (DavideA/c3d-pytorch, file ``c3d.pickle``, keys ``conv1.weight`` ... ``fc8.bias``).
Choices where the spec is silent:

* fc6 is taken after its ReLU: the authors' Caffe feature extractor reads the ``fc6-1`` blob, which the in-place
  ReLU overwrites, so the published C3D features are post-ReLU. The clip features are averaged; the paper then
  L2-normalises the mean, which ``l2_normalize=True`` does (off by default: the spec asks for the plain clip mean).
* Input: frames resized to 128x171 (H x W, ignoring the aspect ratio, as C3D's training did), centre crop 112x112,
  BGR channel order minus the per-channel Sports-1M mean (90, 98, 102), pixel values 0-255: the Caffe model's
  convention, which the widely used PyTorch ports (e.g. jfzhang95/pytorch-video-recognition) keep. The conversion's
  own demo feeds RGB without a mean; ``channel_order="rgb", mean=(0, 0, 0)`` reproduces that.
* Clips: consecutive 16-frame windows starting every ``clip_stride`` (16) frames; frames after the last full window
  are not used; a video shorter than 16 frames is padded by repeating its last frame.

Decoding uses PyAV directly, not pytorchvideo. pytorchvideo 0.1.5's ``EncodedVideo`` (PyAV decoder) imports on
torchvision 0.29, but ``pytorchvideo.transforms`` fails (``ModuleNotFoundError: No module named
'torchvision.transforms.functional_tensor'``, from ``pytorchvideo/transforms/augmentations.py``), which a
``sys.modules`` alias of ``torchvision.transforms.functional`` would paper over. Neither is worth it: ``EncodedVideo``
returns every frame as full-resolution float32 (520 MB and 3.2 s for the 10 s, 640x272 ``bikes.mp4``), whereas PyAV's
own ``to_ndarray(width=, height=)`` resizes each frame in FFmpeg's swscale as it is decoded (0.5 s, 16 MB of uint8).
pytorchvideo is unmaintained since 2022 and the transforms needed here are a resize and a crop.

A file is a :class:`~extractors.errors.MediaError` when it has no video stream, cannot be opened or decoded, yields
zero frames, yields fewer frames than its container's index lists, or (MP4/MOV) a top-level box runs past the end of
the file: the last two are truncated files, which FFmpeg otherwise decodes in part without an error.

Length and size limits: the descriptor is over every frame of the video (every 16-frame clip for C3D), and a video
holds at most ``max_frames`` frames (9,000 by default: 5 minutes at 30 fps) of at most ``max_pixels`` pixels each (8K,
8192 x 4320). A longer video is refused with a :class:`~extractors.errors.MediaError` naming the file and the limit,
not truncated, so a descriptor always describes all of its file: before any decoding when the container's index already
lists more frames, else as soon as decoding passes the limit. Frames are decoded one at a time and only their resized
(C3D: also cropped) copy is kept, so memory is bounded by the limit whatever the file: about 38 KB per frame for C3D,
12 KB for ``frame-stats``, whose statistics are computed a few hundred frames at a time. Both limits only refuse files,
so they are not part of the key: raising one keeps the stored features valid.

``frame-stats`` needs no weights: per frame, a joint RGB colour histogram and a grey thumbnail; per pair of consecutive
frames, a histogram of the absolute grey-level difference and a thumbnail of it (motion); each pooled over time by mean
and standard deviation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from extractors.base import Extractor, ExtractorConfig, decoder_threads, require
from extractors.errors import ExtractorError, MediaError
from extractors.registry import register_extractor
from extractors.weights import PretrainedExtractor, WeightsSpec, load_into

_FRAMES_PER_STEP = 256  # frames per step of frame-stats' statistics (about 40 MB of intermediates at size 64)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")


def decode_frames(path: Path, *, width: int, height: int, max_frames: int | None = None,
                  max_pixels: int | None = None, crop: tuple[int, int, int] | None = None) -> np.ndarray:
    """Decode every frame of the first video stream, resized (bilinear, in FFmpeg) to ``height x width``, and cropped
    to the square ``crop = (top, left, side)`` of that when given; only the resized (and cropped) frames are kept.

    Returns:
        uint8 ``(T, height, width, 3)`` RGB frames (``(T, side, side, 3)`` with ``crop``), ``1 <= T <= max_frames``.

    Raises:
        MediaError: missing or empty file, no video stream, undecodable data, zero frames, fewer frames than the
            container's index lists (truncated), more than ``max_frames`` frames (decoding stops there) or frames of
            more than ``max_pixels`` pixels.
    """
    av = require("av", extractor="video decoding", extra="video")
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "no such file (or a broken symlink)")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    check_iso_boxes(path)
    # The frames the index lists are written in place (np.empty commits no memory until written), so the result is
    # not a second copy of them; frames past that count, or all when the index lists none, are stacked at the end.
    listed: np.ndarray | None = None
    frames: list[np.ndarray] = []
    n = 0
    # One reformatter for the whole video: each frame's own would build a new swscale context per frame, which costs
    # more than the decoding (22 ms against 9 ms for 32 frames of 320x240 to 64x64, the same pixels).
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream in the container")
            stream = container.streams.video[0]
            threads = decoder_threads()
            if threads is None:
                stream.thread_type = "AUTO"  # FFmpeg's frame threads: decoding is otherwise single-core
            else:
                stream.thread_count = threads
            expected = stream.frames  # from the container's index; 0 when the container does not say
            if max_frames is not None and expected > max_frames:
                raise _too_many_frames(path, max_frames, f"its index lists {expected}")
            _check_pixels(path, stream.codec_context.width, stream.codec_context.height, max_pixels)
            if expected:
                listed = np.empty((expected, *((crop[2], crop[2]) if crop else (height, width)), 3), np.uint8)
            for frame in container.decode(stream):
                _check_pixels(path, frame.width, frame.height, max_pixels)  # a stream may change size midway
                if max_frames is not None and n == max_frames:
                    raise _too_many_frames(path, max_frames, "decoding passed it and stopped")
                rgb = reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                           interpolation="BILINEAR").to_ndarray()
                if crop is not None:
                    top, left, side = crop
                    rgb = np.ascontiguousarray(rgb[top:top + side, left:left + side])  # the full frame is dropped
                if listed is not None and n < len(listed):
                    listed[n] = rgb
                else:
                    frames.append(rgb)
                n += 1
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a decodable video ({type(exc).__name__}: {exc.strerror})") from exc
    if not n:
        raise MediaError(path, "the video stream holds no decodable frames (truncated or empty)")
    if expected and n < expected:
        raise MediaError(path, f"truncated: decoded {n} of the {expected} frames its index lists")
    if listed is None:
        return np.stack(frames)
    return np.concatenate([listed, np.stack(frames)]) if frames else listed


def _too_many_frames(path: Path, max_frames: int, how: str) -> MediaError:
    return MediaError(path, f"more frames than the limit max_frames={max_frames} ({how})",
                      hint="cut the video, or raise the limit with --set max_frames=N (memory grows with it: "
                           "about 38 KB per frame for c3d-fc6, 12 KB for frame-stats)")


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise MediaError(path, f"{width}x{height} = {width * height} pixels per frame exceeds the limit max_pixels="
                               f"{max_pixels}", hint="raise it with --set max_pixels=N if the file is trusted")


def check_iso_boxes(path: Path) -> None:
    """An ISO base media file (.mp4, .mov, .m4v, .3gp: it starts with an ``ftyp`` box) must hold every top-level box
    it declares. FFmpeg decodes a file whose index box (``moov``, often last) lost its end without a word.

    Raises:
        MediaError: a box extends past the end of the file (a truncated file).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return
        offset = 0
        while size - offset >= 8:  # fewer than 8 bytes left: padding after the last box, tolerated
            f.seek(offset)
            header = f.read(16)
            box, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if box == 0:  # the last box runs to the end of the file
                return
            if box == 1 and len(header) == 16:  # 64-bit size
                box = int.from_bytes(header[8:16], "big")
            if box < 8 or offset + box > size:
                raise MediaError(path, f"truncated: the {kind!r} box at byte {offset} declares {box} bytes, "
                                       f"the file ends {size - offset} bytes after it starts")
            offset += box


# ----------------------------------------------------------------------------------------------------------- C3D


class C3D(nn.Module):
    """C3D (Tran et al. 2015, Fig. 3) with the community conversion's layer names; ``width_multiplier`` < 1 scales
    every width down for tests (1.0 is C3D)."""

    def __init__(self, width_multiplier: float = 1.0):
        super().__init__()

        def w(channels: int) -> int:
            return max(1, round(channels * width_multiplier))

        self.conv1 = nn.Conv3d(3, w(64), kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))  # no temporal pooling in the first
        self.conv2 = nn.Conv3d(w(64), w(128), kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a = nn.Conv3d(w(128), w(256), kernel_size=3, padding=1)
        self.conv3b = nn.Conv3d(w(256), w(256), kernel_size=3, padding=1)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a = nn.Conv3d(w(256), w(512), kernel_size=3, padding=1)
        self.conv4b = nn.Conv3d(w(512), w(512), kernel_size=3, padding=1)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a = nn.Conv3d(w(512), w(512), kernel_size=3, padding=1)
        self.conv5b = nn.Conv3d(w(512), w(512), kernel_size=3, padding=1)
        # the conversion pads pool5 spatially (Caffe rounds pooled sizes up): 7x7 -> 4x4, so fc6 sees 512x1x4x4 = 8192
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
        self.fc6 = nn.Linear(w(512) * 16, w(4096))
        self.fc7 = nn.Linear(w(4096), w(4096))
        self.fc8 = nn.Linear(w(4096), 487)  # Sports-1M classes; loaded (strictly) but not used for features
        self.relu = nn.ReLU()

    def fc6_features(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``(N, 3, 16, 112, 112)`` clips -> float32 ``(N, fc6)`` activations after ReLU."""
        h = self.pool1(self.relu(self.conv1(x)))
        h = self.pool2(self.relu(self.conv2(h)))
        h = self.pool3(self.relu(self.conv3b(self.relu(self.conv3a(h)))))
        h = self.pool4(self.relu(self.conv4b(self.relu(self.conv4a(h)))))
        h = self.pool5(self.relu(self.conv5b(self.relu(self.conv5a(h)))))
        return self.relu(self.fc6(h.flatten(1)))


#: The community conversion of the authors' Sports-1M model (DavideA/c3d-pytorch README). No checksum is published
#: (the README gives none, and these machines cannot fetch the file to record one): a download prints its sha256, and
#: CROSSMODAL_C3D_SHA256 pins it.
WEIGHTS = WeightsSpec(extractor="c3d-fc6", env_name="C3D", filename="c3d.pickle",
                      url="http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle", alternative="frame-stats")


@dataclasses.dataclass(frozen=True)
class C3DConfig(ExtractorConfig):
    """C3D fc6; defaults are the C3D paper's (§3) and the Caffe model's input convention."""

    weights: str = ""  # state dict file (.pth/.pickle/.safetensors); else $CROSSMODAL_C3D_WEIGHTS, the weights dir, hub
    allow_download: bool = True  # fetch the published file into the torch hub cache when missing (unless offline)
    clip_length: int = 16  # frames per clip (§3: 16-frame clips)
    clip_stride: int = 16  # frames between clip starts (§3.3: non-overlapping clips)
    resize: tuple[int, int] = (128, 171)  # (height, width) frames are resized to (§3.2)
    crop: int = 112  # centre crop side (§3.2)
    channel_order: Literal["bgr", "rgb"] = "bgr"  # Caffe weights see BGR
    mean: tuple[float, float, float] = (90.0, 98.0, 102.0)  # per-channel mean, in channel_order, subtracted (0-255)
    l2_normalize: bool = False  # §3.3 L2-normalises the clip mean; the benchmark spec takes the plain mean
    clips_per_batch: int = 8  # clips per forward pass: memory only, not identity
    width_multiplier: float = 1.0  # scales every width; 1.0 is C3D, smaller values are for tests with tiny state dicts
    max_frames: int = 9000  # longer videos are refused (5 minutes at 30 fps; about 38 KB of memory per frame)
    max_pixels: int = 8192 * 4320  # videos of larger frames are refused (8K; FFmpeg decodes at the full size first)

    extractor = "c3d-fc6"
    # clip_length and crop are fixed: C3D's fc6 takes 16-frame clips of 112x112
    bounds = {"clip_length": (16, 16), "clip_stride": (1, 1024), "resize": (112, 4096), "crop": (112, 112),
              "mean": (0.0, 255.0), "clips_per_batch": (1, 1024), "width_multiplier": (0.01, 1.0),
              "max_frames": (1, 1_000_000), "max_pixels": (1, 1 << 32)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) if isinstance(m, int) else m for m in self.mean))
        super().__post_init__()
        if self.channel_order not in ("bgr", "rgb"):
            raise ExtractorError(f"c3d-fc6: channel_order={self.channel_order!r}", hint="use 'bgr' or 'rgb'")


@register_extractor
class C3DExtractor(PretrainedExtractor):
    """C3D fc6 (after ReLU) averaged over a video's 16-frame clips: float32 ``(n, 4096)``.

    The weights are resolved (found, else downloaded) on first need: ``key``, ``weights_path`` or ``embed``.

    Raises:
        MissingWeightsError: then, when no weights file can be had (lists every place looked).
    """

    modality = "video"
    name = "c3d-fc6"
    Config = C3DConfig
    config: C3DConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = VIDEO_EXTENSIONS
    is_default = True
    key_ignores = ("weights", "allow_download", "clips_per_batch", "max_frames", "max_pixels")  # none changes a row

    def __init__(self, config: C3DConfig | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._model: C3D | None = None

    @property
    def dim(self) -> int:
        return max(1, round(4096 * self.config.width_multiplier))  # C3D's fc6 width (w(4096) in C3D.__init__)

    def weights_spec(self) -> WeightsSpec:
        return WEIGHTS

    @property
    def model(self) -> C3D:
        """The network with the weights loaded (strict), in eval mode, on the extractor's device."""
        if self._model is None:
            model = C3D(self.config.width_multiplier)
            load_into(model, self.weights_path, extractor=self.name)
            self._model = model.eval().to(self.device)
        return self._model

    def weights_sha256(self) -> str:
        # NOTE: the key is asked for before any item is read (crossmodal extract, query): loading the model here makes
        # a file that does not fit the architecture stop the run there, not fail every item one by one.
        _ = self.model
        return super().weights_sha256()

    def load(self, path: Path) -> np.ndarray:
        """Decoded, resized, centre-cropped frames: uint8 ``(T, 112, 112, 3)`` RGB, ``T >= 16`` (last frame repeated).

        Raises:
            MediaError: see :func:`decode_frames` (``max_frames`` and ``max_pixels`` are the config's).
        """
        c = self.config
        top, left = (c.resize[0] - c.crop) // 2, (c.resize[1] - c.crop) // 2
        frames = decode_frames(path, width=c.resize[1], height=c.resize[0], max_frames=c.max_frames,
                               max_pixels=c.max_pixels, crop=(top, left, c.crop))
        if len(frames) < c.clip_length:
            frames = np.concatenate([frames, np.repeat(frames[-1:], c.clip_length - len(frames), axis=0)])
        return np.ascontiguousarray(frames)

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Clip-mean fc6 of decoded videos (uint8 ``(T, 112, 112, 3)`` RGB, ``T >= 16``): float32 ``(n, dim)``."""
        sums = np.zeros((len(items), self.dim), np.float64)
        counts = np.zeros(len(items), np.int64)
        with torch.inference_mode():
            for owners, clips in self._clip_batches(items):
                fc6 = self.model.fc6_features(torch.from_numpy(clips).to(self.model.fc6.weight.device))
                np.add.at(sums, owners, fc6.double().cpu().numpy())
                np.add.at(counts, owners, 1)
        X = sums / counts[:, None]
        if self.config.l2_normalize:
            X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return X.astype(np.float32)

    def _clip_batches(self, items: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of (video index per clip int64 ``(b,)``, network input float32 ``(b, 3, 16, 112, 112)``)."""
        c = self.config
        mean = np.asarray(c.mean, np.float32)
        clips = [(i, start) for i, frames in enumerate(items)
                 for start in range(0, len(frames) - c.clip_length + 1, c.clip_stride)]
        for b in range(0, len(clips), c.clips_per_batch):
            chunk = clips[b:b + c.clips_per_batch]
            x = np.stack([items[i][s:s + c.clip_length] for i, s in chunk]).astype(np.float32)  # (b, 16, H, W, RGB)
            if c.channel_order == "bgr":
                x = x[..., ::-1]
            x = (x - mean).transpose(0, 4, 1, 2, 3)  # (b, channels, frames, H, W)
            yield np.array([i for i, _ in chunk], np.int64), np.ascontiguousarray(x)


# --------------------------------------------------------------------------------------------------- frame-stats


@dataclasses.dataclass(frozen=True)
class FrameStatsConfig(ExtractorConfig):
    """Weight-free video descriptor: per-frame colour and layout, per-pair motion, pooled over time."""

    size: int = 64  # frames are resized to size x size before any statistic
    colour_bins: int = 4  # bins per RGB channel of the joint colour histogram (4^3 = 64 bins)
    thumbnail: int = 8  # side of the grey thumbnails of each frame and of each frame difference (8x8 = 64 values)
    motion_bins: int = 8  # bins of the histogram of |grey difference| of consecutive frames, over [0, 1]
    max_frames: int = 9000  # longer videos are refused (5 minutes at 30 fps; 12 KB of memory per frame at size 64)
    max_pixels: int = 8192 * 4320  # videos of larger frames are refused (8K; FFmpeg decodes at the full size first)

    extractor = "frame-stats"
    bounds = {"size": (1, 1024), "colour_bins": (1, 256), "thumbnail": (1, 1024), "motion_bins": (1, 256),
              "max_frames": (1, 1_000_000), "max_pixels": (1, 1 << 32)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size % self.thumbnail:
            self.refuse("size", f"frames are cut into thumbnail={self.thumbnail} blocks: use a multiple of it")
        if 256 % self.colour_bins:
            self.refuse("colour_bins", "the bins split 0-255 evenly: use 1, 2, 4, 8, 16, 32, 64, 128 or 256")


@register_extractor
class FrameStatsExtractor(Extractor):
    """Mean and std over time of per-frame [colour histogram, grey thumbnail] and of per-pair [|difference|
    histogram, |difference| thumbnail]: float32 ``(n, 2 * (bins^3 + t^2) + 2 * (motion_bins + t^2))``, 400 by default.

    Row layout: frame mean, frame std, motion mean, motion std. A one-frame video has zero motion.
    """

    modality = "video"
    name = "frame-stats"
    Config = FrameStatsConfig
    config: FrameStatsConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = VIDEO_EXTENSIONS
    decoding = "all"  # decoding a video costs several times its statistics: every core decodes
    single_core = True  # numpy
    key_ignores = ("max_frames", "max_pixels")  # they refuse files, never change a row

    @property
    def dim(self) -> int:
        c = self.config
        return 2 * (c.colour_bins**3 + c.thumbnail**2) + 2 * (c.motion_bins + c.thumbnail**2)

    def load(self, path: Path) -> np.ndarray:
        """Decoded frames resized to ``size x size``: uint8 ``(T, size, size, 3)`` RGB.

        Raises:
            MediaError: see :func:`decode_frames` (``max_frames`` and ``max_pixels`` are the config's).
        """
        c = self.config
        return decode_frames(path, width=c.size, height=c.size, max_frames=c.max_frames, max_pixels=c.max_pixels)

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """float32 ``(n, dim)`` from decoded frames (uint8 ``(T, size, size, 3)``)."""
        return np.stack([self._describe(frames) for frames in items]).astype(np.float32)

    def _describe(self, frames: np.ndarray) -> np.ndarray:
        # A few hundred frames at a time: the int64 intermediates of a whole video would take 80 bytes per pixel
        c = self.config
        T = len(frames)
        per_frame, motion, previous = [], [], None
        for start in range(0, T, _FRAMES_PER_STEP):
            chunk = frames[start:start + _FRAMES_PER_STEP]
            grey = chunk.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0  # (t, size, size)
            per_frame.append(np.concatenate([self._colour_histogram(chunk), self._thumbnail(grey)], axis=1))
            pairs = grey if previous is None else np.concatenate([previous, grey])
            if len(pairs) > 1:
                diff = np.abs(pairs[1:] - pairs[:-1])
                motion.append(np.concatenate([self._motion_histogram(diff), self._thumbnail(diff)], axis=1))
            previous = grey[-1:]
        frame_rows = np.concatenate(per_frame)
        if T > 1:
            motion_rows = np.concatenate(motion)
            pooled_motion = [motion_rows.mean(axis=0), motion_rows.std(axis=0)]
        else:
            pooled_motion = [np.zeros(c.motion_bins + c.thumbnail**2)] * 2
        return np.concatenate([frame_rows.mean(axis=0), frame_rows.std(axis=0), *pooled_motion])

    def _colour_histogram(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(t, size, size, 3)`` -> the share of pixels in each joint RGB bin, ``(t, colour_bins^3)``."""
        c, T = self.config, len(frames)
        q = (frames // (256 // c.colour_bins)).astype(np.int64)
        colour = (q[..., 0] * c.colour_bins + q[..., 1]) * c.colour_bins + q[..., 2]  # (t, size, size)
        offsets = np.arange(T)[:, None, None] * c.colour_bins**3
        histogram = np.bincount((colour + offsets).ravel(), minlength=T * c.colour_bins**3)
        return histogram.reshape(T, -1) / (c.size * c.size)

    def _motion_histogram(self, diff: np.ndarray) -> np.ndarray:
        """|grey differences| ``(t, size, size)`` in [0, 1] -> the share of pixels in each bin, ``(t, motion_bins)``."""
        c, T = self.config, len(diff)
        bins = np.minimum((diff * c.motion_bins).astype(np.int64), c.motion_bins - 1)
        bins += np.arange(T)[:, None, None] * c.motion_bins
        return np.bincount(bins.ravel(), minlength=T * c.motion_bins).reshape(T, -1) / (c.size * c.size)

    def _thumbnail(self, images: np.ndarray) -> np.ndarray:
        """Block means: float ``(k, size, size)`` -> ``(k, thumbnail^2)``."""
        t, block = self.config.thumbnail, self.config.size // self.config.thumbnail
        return images.reshape(len(images), t, block, t, block).mean(axis=(2, 4)).reshape(len(images), -1)
