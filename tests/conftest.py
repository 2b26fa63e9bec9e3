"""Shared test fixtures: where the project's real data and golden cases are.

Real files from the original project live in ../shared (beside the checkout);
tests that need them skip, saying why, when they are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

# As demo.py does: idle OpenMP threads sleep sooner, so that tests on a small, shared machine
# do not lose most of their time to spinning threads (see demo.py).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
GOLDEN = SHARED / "golden"
CHECKPOINTS = SHARED / "checkpoints"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the ../shared folder of real project files is absent)")
    return path


@pytest.fixture
def shared_data() -> Path:
    """../shared/data: the fox and lizard images, annotations, negatives, truth files."""
    return _need(SHARED_DATA, "shared real data")


@pytest.fixture
def golden_dir() -> Path:
    """../shared/golden: the golden MATLAB cases."""
    return _need(GOLDEN, "golden cases")


@pytest.fixture
def checkpoints_dir() -> Path:
    """../shared/checkpoints: net-epoch-3.mat files written by the original code."""
    return _need(CHECKPOINTS, "original checkpoints")
