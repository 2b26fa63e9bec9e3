"""The data_prep golden cases (getI, getImdb, getImdb_cub200, produceIMDB) through the parity runner
(adapters: reproduce.golden.data_cases)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT, SHARED_DATA

from legacy_compat import loadmat
from legacy_compat.parity import _REGISTRY, run_case
from reproduce.golden import data_cases as golden_data  # importing reproduce.golden registers the adapters

CASES = ["getI.mat", "getImdb_ilsvrc_a.mat", "getImdb_ilsvrc_b.mat", "getImdb_cub200.mat", "produceIMDB.mat"]


def test_adapters_registered():
    assert {"getI", "getImdb", "getImdb_cub200", "produceIMDB"} <= set(_REGISTRY)


@pytest.mark.parametrize("name", CASES)
def test_golden_case_passes(golden_dir, name):
    res = run_case(golden_dir / name, SHARED_DATA, verbose=True)
    assert res.passed, res.line() + "\n" + "\n".join(res.problems)


def test_golden_imdb_is_exact(golden_dir):
    """With Octave's linspace and single-precision mean the replay is bit-exact."""
    case = loadmat(golden_dir / "getImdb_ilsvrc_b.mat")
    out = golden_data.golden_get_imdb(case["inputs"], None)["imdb"]
    np.testing.assert_array_equal(np.asarray(out["images"]["data"]), case["outputs"]["imdb"]["images"]["data"])
    np.testing.assert_array_equal(out["images"]["order"], case["outputs"]["imdb"]["images"]["order"])


def test_runner_cli(golden_dir):
    for command in ("reproduce.golden",):
        cmd = [sys.executable, "-m", command, *(str(golden_dir / c) for c in CASES)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.strip().splitlines()[-1] == f"{len(CASES)} passed, 0 failed"
