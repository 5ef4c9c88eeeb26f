"""Shared fixtures: the shared real photos, tiny real parts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES / "obama.jpg").is_file():
        pytest.fail(f"shared test photos not found at {FACES} (../shared must sit beside the repo)")
    return FACES
