"""The digits dataset: ten classes (the digits 0-9) in all five modalities, generated offline.

Layout (the ImageFolder convention the extract step reads): ``root/<modality>/<digit>/<digit>_<n>.<ext>``, plus
``root/dataset.json`` saying how it was made. Each (modality, digit) has its own random stream derived from the seed, so
the files of one modality do not change when another is added or resized.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.errors import ConfigError
from crossmodal.types import MODALITIES, canonical_modality
from pipelines.demo.glyphs import CLASS_NAMES, digit_fonts
from pipelines.demo.images import IMAGE_FORMATS, write_image
from pipelines.demo.meshes import MESH_FORMATS, write_mesh
from pipelines.demo.speech import copy_recordings, require_espeak, write_speech
from pipelines.demo.texts import digit_sentences, write_text
from pipelines.demo.videos import VIDEO_FORMATS, write_video

DATASET_FILE = "dataset.json"


def generate_digits(
    root: str | Path,
    *,
    per_class: int,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    audio_source: str | Path = "espeak",
) -> dict[str, Any]:
    """Generate the labelled digits dataset under ``root``.

    Args:
        root: output folder (created).
        per_class: files per digit and modality.
        seed: seed of every random choice (fonts, distortions, voices, sentences, motions).
        modalities: which of image, text, audio, mesh (or 3d), video to generate.
        audio_source: ``"espeak"`` to synthesise the spoken digits with espeak-ng, or a folder of real recordings named
            ``<digit>_<speaker>_<take>.wav`` (the Free Spoken Digit Dataset) to copy ``per_class`` of each digit from.

    Returns:
        The description also written to ``root/dataset.json``: seed, per_class, classes, and per modality its folder,
        file count, formats and source (with recordings: ``originals``, copy -> original file name).

    Raises:
        ConfigError: ``per_class`` is out of range or a modality is unknown.
        CrossmodalError: audio is asked for with ``"espeak"`` and espeak-ng is not installed.
    """
    root = Path(root)
    modalities = [canonical_modality(m) for m in modalities]
    limit = min(len(digit_sentences(d)) for d in range(10))
    if not 1 <= per_class <= limit:
        raise ConfigError(f"per_class={per_class} is out of range", hint=f"choose 1..{limit}")
    if "audio" in modalities and str(audio_source) == "espeak":
        require_espeak()  # fail before anything is written
    description: dict[str, Any] = {"dataset": "digits", "seed": seed, "per_class": per_class,
                                   "classes": list(CLASS_NAMES), "modalities": {}}
    for modality in modalities:
        folder = root / modality
        if modality == "audio" and str(audio_source) != "espeak":
            rng = np.random.default_rng([seed, MODALITIES.index(modality)])
            copies = copy_recordings(Path(audio_source), folder, per_class=per_class, rng=rng)
            description["modalities"][modality] = {
                "folder": str(folder), "files": len(copies), "formats": [".wav"],
                "source": f"recordings from {audio_source}",
                "originals": {str(c.relative_to(folder)): o.name for c, o in copies.items()}}
            continue
        written, formats, source = _synthesise(modality, folder, per_class=per_class, seed=seed)
        description["modalities"][modality] = {"folder": str(folder), "files": len(written), "formats": formats,
                                               "source": source}
    if any(m in modalities for m in ("image", "mesh", "video")):
        description["fonts"] = [Path(f).name for f in digit_fonts()]
    root.mkdir(parents=True, exist_ok=True)
    (root / DATASET_FILE).write_text(json.dumps(description, indent=2))
    return description


def _synthesise(modality: str, folder: Path, *, per_class: int, seed: int) -> tuple[list[Path], list[str], str]:
    """Write ``per_class`` files of every digit for one modality; return (paths, formats, a word on the source)."""
    formats, source = _RECIPES[modality]
    written = []
    for digit in range(10):
        rng = np.random.default_rng([seed, MODALITIES.index(modality), digit])
        used: set = set()  # sentences or voices already taken in this class
        for n in range(per_class):
            path = folder / CLASS_NAMES[digit] / f"{digit}_{n:03d}{formats[n % len(formats)]}"
            if modality == "image":
                written.append(write_image(path, digit, rng))
            elif modality == "text":
                written.append(write_text(path, digit, rng, exclude=used))
            elif modality == "audio":
                written.append(write_speech(path, digit, rng, exclude=used))
            elif modality == "mesh":
                written.append(write_mesh(path, digit, rng))
            else:
                written.append(write_video(path, digit, rng))
    return written, list(formats), source


_RECIPES: dict[str, tuple[tuple[str, ...], str]] = {
    "image": (IMAGE_FORMATS, "digits drawn in several fonts, rotated, scaled, shifted, blurred and noised"),
    "text": ((".txt",), "number words, numerals and short sentences"),
    "audio": ((".wav",), "spoken digit names synthesised by espeak-ng (several accents, voices, speeds and pitches)"),
    "mesh": (MESH_FORMATS, "digit glyphs extruded to prisms, slanted and tilted"),
    "video": (VIDEO_FORMATS, "a digit sliding, being drawn, or zooming while it turns"),
}
