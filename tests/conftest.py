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


#: ICNN_* variables that are switches of the test suite itself (set by .ci/gpu-check), not the user's.
TEST_SWITCHES = frozenset({"ICNN_DIST_DEVICE"})
_OUTPUT_BEFORE = pytest.StashKey[dict]()


def _user_settings() -> list[str]:
    return [name for name in os.environ if name.startswith("ICNN_") and name not in TEST_SWITCHES]


def _output_snapshot() -> dict[str, tuple[int, int]]:
    """Every file under the working tree's output/ (what a user's runs left there), with size and mtime."""
    out = PROJECT_ROOT / "output"
    if not out.is_dir():
        return {}
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def apart_from_the_users_runs(tmp_path_factory):
    """Tests see nothing of what the user did before (issue 24): no ICNN_* variable of the user's
    shell (ICNN_DATA_ROOT, ICNN_MODELS_ROOT, ...), and a current folder of their own, so that a
    default ``output/`` is never the working tree's (where ``python demo.py --quick`` caches its
    imdb). Session-scoped so that module fixtures are covered too; subprocesses inherit it, with
    the project on PYTHONPATH so that ``python -m reproduce...`` still imports from any folder."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _user_settings():
            mp.delenv(name)
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def a_folder_of_its_own(tmp_path_factory, monkeypatch):
    """Each test runs in an empty current folder: none depends on what an earlier one left in ./output."""
    monkeypatch.chdir(tmp_path_factory.mktemp("test-cwd"))


def pytest_sessionstart(session):
    session.config.stash[_OUTPUT_BEFORE] = _output_snapshot()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test wrote into the working tree's output/ (the user's runs live there)."""
    before = session.config.stash.get(_OUTPUT_BEFORE, None)
    if before is None or hasattr(session.config, "workerinput"):
        return
    after = _output_snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        print(f"\nThe tests changed {len(changed)} file(s) under {PROJECT_ROOT / 'output'} "
              f"(tests must use tmp_path): {', '.join(changed[:10])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
