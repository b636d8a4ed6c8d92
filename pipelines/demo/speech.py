"""Spoken digits: synthesised offline with espeak-ng, or taken from recordings named ``<digit>_<speaker>_<take>.wav``
(the Free Spoken Digit Dataset's convention)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from crossmodal.errors import ConfigError, CrossmodalError
from pipelines.demo.glyphs import WORDS

# espeak-ng's own English voices (not the mbrola ones, which need extra packages) and voice variants (speaker timbres).
VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                           "en-029")
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
                             "klatt2", "klatt3", "croak", "whisper")

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def require_espeak() -> str:
    """The path of the espeak-ng program.

    Raises:
        CrossmodalError: espeak-ng is not installed (the hint gives the install command).
    """
    program = shutil.which("espeak-ng")
    if program is None:
        raise CrossmodalError(
            "the digits demo synthesises its spoken digits with espeak-ng, which is not installed",
            hint="sudo apt-get install espeak-ng (or run ./install.sh); on macOS: brew install espeak-ng",
        )
    return program


def write_speech(path: Path, digit: int, rng: np.random.Generator, *, exclude: set[tuple]) -> Path:
    """Synthesise the word for ``digit`` to ``path`` (WAV, 22,050 Hz mono) with a voice not in ``exclude``.

    A voice is (accent, variant, words per minute 110-210, pitch 20-80); the one used joins ``exclude``, so no two
    files of a class are the same recording.
    """
    while True:
        voice = (VOICES[rng.integers(len(VOICES))], VARIANTS[rng.integers(len(VARIANTS))],
                 int(rng.integers(110, 211)), int(rng.integers(20, 81)))
        if voice not in exclude:
            break
    exclude.add(voice)
    accent, variant, speed, pitch = voice
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [require_espeak(), "-w", str(path), "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch),
               WORDS[digit]]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        raise CrossmodalError(f"espeak-ng failed on {' '.join(command)}: {result.stderr.strip() or result.returncode}",
                              hint="check that espeak-ng runs: espeak-ng -v en-us 'seven'")
    return path


def recordings_by_digit(folder: Path) -> dict[int, list[Path]]:
    """Recordings under ``folder`` named ``<digit>_<speaker>_<take>.wav``, per digit, sorted by name.

    Raises:
        ConfigError: the folder is missing or holds no recording of some digit.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of recordings", hint="give the FSDD recordings/ folder")
    found: dict[int, list[Path]] = {d: [] for d in range(10)}
    for path in sorted(folder.iterdir()):
        match = _FSDD_NAME.match(path.name)
        if match:
            found[int(match.group(1))].append(path)
    empty = [d for d, paths in found.items() if not paths]
    if empty:
        raise ConfigError(f"{folder}: no <digit>_<speaker>_<take>.wav recordings of digit(s) {empty}",
                          hint="give the FSDD recordings/ folder (free-spoken-digit-dataset)")
    return found


def copy_recordings(folder: Path, out: Path, *, per_class: int, rng: np.random.Generator) -> dict[Path, Path]:
    """Copy ``per_class`` recordings of each digit, drawn without replacement, to ``out/<digit>/<digit>_<n>.wav``.

    The copies take the generator's names, so the n-th recording pairs with the n-th file of every other modality.

    Returns:
        copy -> original, for every file copied.

    Raises:
        ConfigError: a digit has fewer than ``per_class`` recordings.
    """
    written = {}
    for digit, paths in recordings_by_digit(folder).items():
        if len(paths) < per_class:
            raise ConfigError(f"{folder}: {len(paths)} recordings of digit {digit}, {per_class} asked for",
                              hint="lower per_class")
        for n, index in enumerate(sorted(rng.choice(len(paths), per_class, replace=False))):
            target = out / str(digit) / f"{digit}_{n:03d}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths[index], target)
            written[target] = paths[index]
    return written
