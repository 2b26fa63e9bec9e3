"""The golden parity runner itself: the comparison rule, the CLI contract."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from legacy_compat import MatStruct, cell
from legacy_compat.parity import Adapter, compare, compare_arrays, matlab_shape, run_case

from conftest import PROJECT_ROOT


def _adapter(rtol=1e-4):
    return Adapter(fn=lambda i, c: {}, rtol=rtol)


def test_criterion_is_relative_to_the_golden_max():
    g = np.array([[1000.0, 1.0]])
    ok, rel, _ = compare_arrays(g + np.array([[0.09, 0.09]]), g, 1e-4)
    assert ok and rel == pytest.approx(0.09 / 1000)
    ok, _, _ = compare_arrays(g + np.array([[0.11, 0.0]]), g, 1e-4)
    assert not ok
    # the absolute 1e-6 floor
    assert compare_arrays(np.zeros((2, 2)) + 9e-7, np.zeros((2, 2)), 1e-4)[0]
    assert not compare_arrays(np.zeros((2, 2)) + 2e-6, np.zeros((2, 2)), 1e-4)[0]


def test_nan_must_match_exactly():
    g = np.array([[np.nan, 1.0]])
    assert compare_arrays(np.array([[np.nan, 1.0]]), g, 1e-4)[0]
    assert not compare_arrays(np.array([[0.0, 1.0]]), g, 1e-4)[0]
    assert not compare_arrays(np.array([[1.0, np.nan]]), np.array([[1.0, 2.0]]), 1e-4)[0]


def test_shapes_follow_matlab():
    assert matlab_shape((3, 3, 6, 1)) == (3, 3, 6)
    assert matlab_shape((5,)) == (5, 1)
    ok, _, problem = compare_arrays(np.ones((2, 3)), np.ones((3, 2)), 1e-4)
    assert not ok and "shape" in problem
    assert compare_arrays(np.ones((4, 4, 2, 1)), np.ones((4, 4, 2)), 1e-4)[0]


def test_nested_outputs_missing_and_wrong_leaves_fail():
    golden = MatStruct(a=np.ones((1, 2)), s=MatStruct(b="x", c=cell([np.zeros((1, 1)), np.ones((2, 1))])))
    good = {"a": np.ones((1, 2)), "s": {"b": "x", "c": [np.zeros((1, 1)), np.ones((2, 1))]}}
    assert compare(good, golden, _adapter()).ok
    missing = {"a": np.ones((1, 2)), "s": {"b": "x"}}
    res = compare(missing, golden, _adapter())
    assert not res.ok and any("/s/c" in p and "missing" in p for p in res.problems)
    wrong = {"a": np.ones((1, 2)), "s": {"b": "y", "c": [np.zeros((1, 1)), np.ones((2, 1))]}}
    assert not compare(wrong, golden, _adapter()).ok


def test_unknown_case_fn_is_a_failure(tmp_path):
    import scipy.io
    path = tmp_path / "unknown.mat"
    scipy.io.savemat(path, {"case_fn": "noSuchFunction", "inputs": {"x": 1.0}, "outputs": {"y": 2.0}})
    res = run_case(path)
    assert not res.passed and "no port registered" in res.problems[0]
    assert res.line().startswith("FAIL")


def test_cli_reports_each_case_and_a_summary(tmp_path):
    import scipy.io
    path = tmp_path / "unknown.mat"
    scipy.io.savemat(path, {"case_fn": "noSuchFunction", "inputs": {"x": 1.0}, "outputs": {"y": 2.0}})
    out = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(path)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1
    assert lines[0].startswith("FAIL") and lines[-1] == "0 passed, 1 failed"
    bad = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(tmp_path / "nope.mat")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such golden case" in bad.stderr


@pytest.mark.slow
def test_every_golden_case_passes(golden_dir):
    """The project's headline figure: the whole golden folder through the CLI."""
    out = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(golden_dir)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    print(out.stdout)
    last = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout + out.stderr
    assert last.endswith(" 0 failed")


def test_cli_refuses_a_device_it_cannot_use(tmp_path):
    import torch
    bad = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(tmp_path), "--device", "gpu"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--device gpu: not a torch device" in bad.stderr
    if not torch.cuda.is_available():
        no_gpu = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(tmp_path), "--device", "cuda"],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert no_gpu.returncode == 2 and "PyTorch sees no CUDA GPU" in no_gpu.stderr


@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_every_golden_case_passes_on_cuda(golden_dir):
    """The same golden numbers and tolerances with the port on the GPU."""
    out = subprocess.run([sys.executable, "-m", "legacy_compat.parity", str(golden_dir), "--device", "cuda"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].endswith(" 0 failed")
