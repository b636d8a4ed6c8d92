from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on CPU (STYLE.md rule 10)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():
    SHARED_DATA = Path(os.environ.get("CROSSMODAL_SHARED_DATA", "/work/shared/data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cluster():
    """A local Ray runtime with 2 CPU workers, started by the test module that asks for it and shut down after it."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray runtime is already running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _seeded_and_single_threaded():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield



@pytest.fixture
def record_sha256(monkeypatch):
    """``record_sha256(module)`` routes ``module.file_sha256`` through a recorder and returns the list that gets the
    name of every file hashed, in order: a test of what is hashed, and what is not, reads it."""

    def record(module) -> list[str]:
        calls: list[str] = []
        real = module.file_sha256

        def counting(path):
            calls.append(os.path.basename(path))
            return real(path)

        monkeypatch.setattr(module, "file_sha256", counting)
        return calls

    return record
