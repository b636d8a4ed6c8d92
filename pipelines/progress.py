"""Training callbacks for the I/O edge: a tqdm progress bar (stderr) and a JSONL training log.

Both implement ``crossmodal.methods.base.Callback``: ``on_epoch_end(stage, epoch, epochs, logs)``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

SHOWN = ("loss", "val_loss", "quality", "val_map")  # logs shown beside the bar, when a stage reports them


class ProgressBar:
    """One tqdm bar per stage (``spl:image``, ``rsc:text`` ...), with the stage's loss and validation figures."""

    def __init__(self, *, file: IO[str] | None = None, disable: bool | None = None):
        self.file = file or sys.stderr
        self.disable = disable
        self._stage: str | None = None
        self._bar: Any = None

    def on_epoch_end(self, stage: str, epoch: int, epochs: int, logs: Mapping[str, float]) -> None:
        from tqdm.auto import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=epochs, initial=epoch - 1, desc=stage, unit="epoch", file=self.file,
                             disable=self.disable, dynamic_ncols=True, leave=True)
        self._bar.set_postfix({k: f"{logs[k]:.4g}" for k in SHOWN if _is_number(logs.get(k))}, refresh=False)
        self._bar.update(1)
        if epoch >= epochs:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


class TrainingLog:
    """Appends one JSON object per epoch to ``path``: ``{"stage", "epoch", "epochs", "time", **logs}``.

    Appending (never truncating) keeps a resumed run's earlier epochs; non-finite numbers are written as null. A line
    cut short by a kill is dropped when the log is reopened, so a resumed run's first record starts on a line of its
    own.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            text = self.path.read_bytes()
            if text and not text.endswith(b"\n"):
                os.truncate(self.path, text.rfind(b"\n") + 1)

    def on_epoch_end(self, stage: str, epoch: int, epochs: int, logs: Mapping[str, float]) -> None:
        record = {"stage": stage, "epoch": epoch, "epochs": epochs, "time": time.time(),
                  **{k: _finite(v) for k, v in logs.items() if k != "epoch"}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_training_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL training log (an absent file gives []).

    Only whole lines count: a last line without its newline is a record still being written (or cut by a kill).
    """
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None
