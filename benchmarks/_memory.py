"""Memory readings the benchmarks share, from Linux's /proc: a process's resident set (VmRSS) and its peak (VmHWM),
which can be reset so that a step's peak is not the imports'."""

from __future__ import annotations

from pathlib import Path


def status_mb(field: str, pid: int | str = "self") -> float:
    """``field`` (``VmRSS``, ``VmHWM`` ...) of ``/proc/<pid>/status`` in MiB.

    Raises:
        OSError: the process is gone. RuntimeError: the field is not there (not Linux).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    return status_mb("VmRSS")


def peak_rss_mb(*, reset: bool = False) -> float:
    """Peak resident set size (VmHWM) in MiB; ``reset`` first restarts the peak from the current RSS (Linux >= 4.0)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return status_mb("VmHWM")
