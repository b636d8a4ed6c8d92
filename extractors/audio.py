"""Audio extractors: MFCC statistics over the whole clip (``mfcc``, the default for audio).

The cross-modal benchmarks' audio features are of this family: MFCCs with their deltas, pooled over time into one vector
per clip (XMedia used a 29-d variant, XMediaNet a 672-d one; neither recipe is published in full). The default here is
librosa's MFCC at 22,050 Hz mono, 20 coefficients plus deltas and delta-deltas, pooled by mean and standard deviation:
``20 x 3 x 2 = 120`` values. The width is ``n_mfcc x (1 + deltas) x len(pooling)``; :data:`PRESETS` gives configs of the
benchmarks' widths (same width, not the unpublished recipes).

Choices where the spec is silent:

* Decoding: soundfile (libsndfile: wav, flac, ogg, mp3, aiff, au) first because it is fast; formats it cannot read
  (m4a/AAC) go to PyAV when it is installed, else to audioread (which needs an ffmpeg or GStreamer install). Channels
  are averaged to mono and resampled with soxr's high-quality mode (librosa's own default resampler).
* Clips shorter than one analysis frame (``n_fft`` samples, 93 ms at the defaults) are zero-padded to ``n_fft``, so a
  1-sample clip gives a valid vector. Deltas use librosa's Savitzky-Golay ``interp`` mode when the clip has at least
  ``delta_width`` frames and ``nearest`` (edge-replicating) mode when it is shorter, where ``interp`` is undefined.
* Silence gives finite values: librosa's dB floor (``amin=1e-10``) bounds the log.
* Length: the descriptor is over the whole clip, and a clip is at most ``max_seconds`` long (600 s by default);
  longer ones are refused with a :class:`~extractors.errors.MediaError` naming the file and the limit, not truncated,
  so a descriptor always describes all of its file. Files are decoded block by block (about 4 MB at a time, averaged
  to mono as they are read), and decoding stops at the limit: a 3-hour file costs at most ``max_seconds`` of signal,
  and is refused before any decoding when its header already declares more. Files above ``max_sample_rate``
  (192 kHz) are refused too, since the decoded signal before resampling grows with the rate. Memory at the limit,
  measured by ``benchmarks/extract_memory.py``: under 1 GB above the idle process (most of it the spectrogram, about
  0.9 MB per second of audio at the defaults). Both limits only refuse files, so they are not part of the key:
  raising one keeps the stored features valid.
* numba's on-disk cache: librosa compiles its numba kernels on first import (about 26 s on these machines). Unless the
  user set ``NUMBA_CACHE_DIR``, it is pointed at ``~/.cache/crossmodal/numba`` (or ``$XDG_CACHE_HOME``) before librosa
  is imported, so only the first process on a machine pays the compile, also when site-packages is read-only.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Extractor, ExtractorConfig, check_finite, require
from extractors.errors import ExtractorError, MediaError
from extractors.registry import register_extractor

_POOLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda F: F.mean(axis=1),
    "std": lambda F: F.std(axis=1),
    "min": lambda F: F.min(axis=1),
    "max": lambda F: F.max(axis=1),
}

#: Configs of the benchmarks' widths, e.g. ``create_extractor("mfcc", **PRESETS["xmedianet-672"])``. They match the
#: published widths only; the benchmarks' exact recipes (frame sizes, which statistics) were never published.
PRESETS: dict[str, dict[str, Any]] = {
    "default-120": {},
    "xmedia-29": {"n_mfcc": 29, "deltas": 0, "pooling": ("mean",)},
    "xmedianet-672": {"n_mfcc": 56, "deltas": 2, "pooling": ("mean", "std", "min", "max")},
}


def enable_numba_cache() -> Path | None:
    """Point numba's on-disk compile cache at ``~/.cache/crossmodal/numba`` unless the user chose a folder.

    Must run before librosa is imported (librosa's kernels pick their cache folder at import). Returns the folder in
    use, or None when numba keeps its default (the user's ``NUMBA_CACHE_DIR``, or a home folder that is not writable).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crossmodal" / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # NOTE: numba then caches next to librosa's sources when it can; only speed is at stake
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    numba_config: Any = sys.modules.get("numba.core.config")
    if numba_config is not None:  # numba imported already (by another library): its config read the environment
        numba_config.CACHE_DIR = str(folder)
    return folder


@dataclasses.dataclass(frozen=True)
class MfccConfig(ExtractorConfig):
    """MFCC statistics; defaults are librosa's MFCC defaults and the spec's 20 coefficients + deltas + delta-deltas."""

    sample_rate: int = 22050  # Hz; clips are resampled to it (librosa's default rate)
    n_mfcc: int = 20  # cepstral coefficients per frame (spec: 20)
    deltas: int = 2  # 0: MFCC only, 1: + deltas, 2: + deltas and delta-deltas (spec)
    n_fft: int = 2048  # analysis window in samples (librosa default, 93 ms at 22,050 Hz)
    hop_length: int = 512  # hop between frames in samples (librosa default)
    n_mels: int = 128  # mel bands before the DCT (librosa default)
    delta_width: int = 9  # odd Savitzky-Golay window of the deltas in frames (librosa default)
    pooling: tuple[str, ...] = ("mean", "std")  # statistics over time, each over every row, in this order
    max_seconds: float = 600.0  # longer clips are refused (memory grows by about 0.9 MB per second; module docstring)
    max_sample_rate: int = 192_000  # files at higher rates are refused (the signal is decoded at its own rate first)

    extractor = "mfcc"
    bounds = {"sample_rate": (1000, 384_000), "n_mfcc": (1, 512), "deltas": (0, 2), "n_fft": (16, 65_536),
              "hop_length": (1, 65_536), "n_mels": (1, 512), "delta_width": (3, 99), "max_seconds": (0.001, 86_400.0),
              "max_sample_rate": (1000, 768_000)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", tuple(self.pooling))  # lists from JSON/CLI become the hashable tuple
        super().__post_init__()
        unknown = [p for p in self.pooling if p not in _POOLS]
        if unknown or not self.pooling:
            raise ExtractorError(f"mfcc: pooling {list(self.pooling)} is invalid", hint=f"use some of {list(_POOLS)}")
        if self.delta_width % 2 == 0:
            self.refuse("delta_width", "the Savitzky-Golay window is odd: use 3, 5, 7, 9 ...")
        if self.n_mfcc > self.n_mels:
            self.refuse("n_mfcc", f"the DCT of {self.n_mels} mel bands gives at most {self.n_mels} coefficients: use "
                                  f"n_mfcc <= n_mels")


@register_extractor
class MfccExtractor(Extractor):
    """MFCC + deltas pooled over the clip: float32 ``(n, n_mfcc * (1 + deltas) * len(pooling))``, 120 by default.

    Row layout: for each statistic in ``pooling`` (in order), the ``n_mfcc`` MFCCs, then their deltas, then the
    delta-deltas.
    """

    modality = "audio"
    name = "mfcc"
    Config = MfccConfig
    config: MfccConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif", ".au")
    is_default = True
    single_core = True  # librosa, numpy's BLAS held to one thread
    key_ignores = ("max_seconds", "max_sample_rate")  # they refuse files, never change a descriptor

    def __init__(self, config: MfccConfig | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        enable_numba_cache()
        self._librosa = require("librosa", extractor=self.name, extra="audio")
        c = self.config
        # librosa rebuilds the mel filter bank and the window on every call: a third of each clip's time, measured
        self._window = self._librosa.filters.get_window("hann", c.n_fft, fftbins=True)
        self._mel_basis = self._librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, norm="slaney")
        # (window sum)^2 x the largest filter's sum: a mel energy is at most this times the squared peak sample
        self._energy_gain = float(self._window.sum()) ** 2 * float(self._mel_basis.sum(axis=1).max())

    @property
    def dim(self) -> int:
        c = self.config
        return c.n_mfcc * (1 + c.deltas) * len(c.pooling)

    def load(self, path: Path) -> np.ndarray:
        """Decode ``path`` to mono float32 ``(samples,)`` at ``config.sample_rate``.

        Raises:
            MediaError: empty, zero-byte or unreadable file, no samples, non-finite samples, longer than
                ``max_seconds`` or sampled faster than ``max_sample_rate`` (decoding stops there).
        """
        path = Path(path)
        if not path.is_file():
            raise MediaError(path, "no such file (or a broken symlink)")
        if path.stat().st_size == 0:
            raise MediaError(path, "empty file (0 bytes)")
        y, sr = decode_audio(path, limits=AudioLimits(self.config.max_seconds, self.config.max_sample_rate))
        if y.size == 0:
            raise MediaError(path, "the audio stream has no samples")
        check_finite(path, "audio samples", y)
        if sr != self.config.sample_rate:
            soxr = require("soxr", extractor=self.name, extra="audio")
            y = soxr.resample(y, sr, self.config.sample_rate, quality="HQ")
        # A float file can hold finite samples far past full scale (1e30): the float32 spectrum would overflow and the
        # features turn NaN. Its mel energies are at most (window sum x peak)^2 x the largest filter's sum, so such a
        # file is refused here, where its name is known.
        peak = float(np.abs(y).max())
        with np.errstate(over="ignore"):
            ceiling = np.float32(self._energy_gain * peak**2)
        check_finite(path, "mel energies", ceiling, why=f"samples reach {peak:.3g}, past what float32 holds")
        return np.ascontiguousarray(y, dtype=np.float32)

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled MFCC statistics of decoded clips (mono float32 at ``config.sample_rate``): float32 ``(n, dim)``."""
        return np.stack([self._pooled_mfcc(y) for y in items]).astype(np.float32)

    def _pooled_mfcc(self, y: np.ndarray) -> np.ndarray:
        c, librosa = self.config, self._librosa
        if y.shape[0] < c.n_fft:
            y = np.pad(y, (0, c.n_fft - y.shape[0]))
        # librosa.feature.mfcc(y=...)'s steps, with the filter bank and window built once
        power = np.abs(librosa.stft(y, n_fft=c.n_fft, hop_length=c.hop_length, window=self._window)) ** 2
        mel = np.einsum("...ft,mf->...mt", power, self._mel_basis, optimize=True)
        mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=c.n_mfcc)  # (n_mfcc, frames)
        mode = "interp" if mfcc.shape[1] >= c.delta_width else "nearest"
        rows = [mfcc] + [librosa.feature.delta(mfcc, width=c.delta_width, order=k, mode=mode)
                         for k in range(1, c.deltas + 1)]
        F = np.concatenate(rows, axis=0).astype(np.float64)
        return np.concatenate([_POOLS[p](F) for p in c.pooling])


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """What a decoder may decode of one file: ``max_seconds`` of signal at a rate of at most ``max_sample_rate``."""

    max_seconds: float = math.inf
    max_sample_rate: float = math.inf

    def samples(self, path: Path, rate: int) -> int:
        """Samples (per channel) allowed at ``rate``; refuses a rate above the limit.

        Raises:
            MediaError: ``rate`` exceeds ``max_sample_rate``.
        """
        if rate > self.max_sample_rate:
            raise MediaError(path, f"sampled at {rate} Hz, above the limit max_sample_rate={self.max_sample_rate}",
                             hint="resample the file, or raise the limit with --set max_sample_rate=N")
        return int(min(self.max_seconds * rate, 2**62))

    def too_long(self, path: Path, seconds: float, *, declared: bool = False) -> MediaError:
        """The error for a clip longer than ``max_seconds`` (``declared``: its header says so, nothing decoded)."""
        how = f"its header declares {seconds:.1f} s" if declared else f"decoding passed {seconds:.1f} s and stopped"
        return MediaError(path, f"longer than the limit max_seconds={self.max_seconds:g} ({how})",
                          hint="cut the file, or raise the limit with --set max_seconds=N "
                               "(memory grows by about 1 MB per second)")


_BLOCK_VALUES = 1 << 20  # values (samples x channels) a decoder reads at a time: 4 MB of float32


def decode_audio(path: Path, *, limits: AudioLimits = AudioLimits()) -> tuple[np.ndarray, int]:
    """Decode a file to mono float32 ``(samples,)`` and its sample rate, trying each decoder in turn; each decodes
    block by block and stops once the clip passes ``limits``.

    Raises:
        MediaError: no decoder could read it (the reason names each decoder's error), or the clip passes ``limits``.
    """
    reasons = []
    for name, decoder in _DECODERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            reasons.append(f"{name}: not installed")
            continue
        try:
            return decoder(module, path, limits)
        except MediaError:
            raise  # a refusal by the limits: another decoder would refuse the same clip
        except Exception as exc:  # each library raises its own types (LibsndfileError, av.FFmpegError, NoBackendError)
            detail = str(exc).replace(f": '{path}'", "").replace(f"'{path}'", "the file")
            reasons.append(f"{name}: {type(exc).__name__}" + (f": {detail}" if detail else ""))
    raise MediaError(path, "not a decodable audio file (" + "; ".join(reasons) + ")")


def _read_soundfile(sf: Any, path: Path, limits: AudioLimits) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr, channels = int(f.samplerate), max(1, f.channels)
        allowed, step = limits.samples(path, sr), max(1, _BLOCK_VALUES // channels)
        declared = f.frames if f.frames < 2**62 else None  # libsndfile says 2^63 - 1 when the header has no length
        if declared is not None and declared > allowed:
            raise limits.too_long(path, declared / sr, declared=True)
        if declared is not None:
            # one mono buffer of the declared length, filled block by block: no multichannel copy, no second copy
            mono, n = np.empty(declared, np.float32), 0
            while n < len(mono):
                block = f.read(min(step, len(mono) - n), dtype="float32", always_2d=True)
                if not len(block):
                    break
                mono[n:n + len(block)] = block.mean(axis=1)
                n += len(block)
            return mono[:n], sr
        blocks: list[np.ndarray] = []
        n = 0
        while len(block := f.read(min(step, allowed + 1 - n), dtype="float32", always_2d=True)):
            blocks.append(block.mean(axis=1))
            n += len(block)
            if n > allowed:
                raise limits.too_long(path, n / sr)
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), sr


def _read_pyav(av: Any, path: Path, limits: AudioLimits) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate)
        allowed = limits.samples(path, sr)
        resampler = av.AudioResampler(format="flt", layout="mono")  # keeps the rate; soxr resamples afterwards
        chunks: list[np.ndarray] = []
        n = 0
        for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                n += len(chunks[-1])
                if n > allowed:
                    raise limits.too_long(path, n / sr)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), sr


def _read_audioread(audioread: Any, path: Path, limits: AudioLimits) -> tuple[np.ndarray, int]:
    with audioread.audio_open(str(path)) as f:
        sr, channels = int(f.samplerate), max(1, f.channels)
        allowed, buffers, n = limits.samples(path, sr), [], 0
        for buffer in f:
            buffers.append(buffer)
            n += len(buffer) // (2 * channels)
            if n > allowed:
                raise limits.too_long(path, n / sr)
        pcm = np.frombuffer(b"".join(buffers), dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), sr


_DECODERS: tuple[tuple[str, Callable[[Any, Path, AudioLimits], tuple[np.ndarray, int]]], ...] = (
    ("soundfile", _read_soundfile),
    ("av", _read_pyav),
    ("audioread", _read_audioread),
)
