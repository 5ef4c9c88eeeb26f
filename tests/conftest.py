"""Shared fixtures: the shared real photos, tiny real parts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (restored afterwards): tiny tensors gain
    nothing from intra-op threads, and on a busy 2-core machine the thread pool's spin-waits made such
    files 5-8x slower (measured: 46 s vs 6 s). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES / "obama.jpg").is_file():
        pytest.fail(f"shared test photos not found at {FACES} (../shared must sit beside the repo)")
    return FACES
