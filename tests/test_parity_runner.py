"""The golden parity runner itself: the comparison rule, the CLI contract."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch
from conftest import PROJECT_ROOT

from legacy_compat import MatStruct, cell, parity
from legacy_compat.parity import Adapter, compare, compare_arrays, matlab_shape, run_case


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
    path = tmp_path / "unknown.mat"
    scipy.io.savemat(path, {"case_fn": "noSuchFunction", "inputs": {"x": 1.0}, "outputs": {"y": 2.0}})
    res = run_case(path)
    assert not res.passed and "no port registered" in res.problems[0]
    assert res.line().startswith("FAIL")


def test_cli_reports_each_case_and_a_summary(tmp_path):
    path = tmp_path / "unknown.mat"
    scipy.io.savemat(path, {"case_fn": "noSuchFunction", "inputs": {"x": 1.0}, "outputs": {"y": 2.0}})
    out = subprocess.run([sys.executable, "-m", "reproduce.golden", str(path)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1
    assert lines[0].startswith("FAIL") and lines[-1] == "0 passed, 1 failed"
    bad = subprocess.run([sys.executable, "-m", "reproduce.golden", str(tmp_path / "nope.mat")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such golden case" in bad.stderr


def test_the_library_module_points_at_the_command():
    """legacy_compat.parity imports nothing above legacy_compat (no import circle), so it is not a
    command any more: run as one, it names `python -m reproduce.golden`."""
    out = subprocess.run([sys.executable, "-m", "legacy_compat.parity"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "python -m reproduce.golden" in out.stderr


@pytest.mark.slow
def test_every_golden_case_passes(golden_dir):
    """The project's headline figure: the whole golden folder through the CLI."""
    out = subprocess.run([sys.executable, "-m", "reproduce.golden", str(golden_dir)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    print(out.stdout)
    last = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout + out.stderr
    assert last.endswith(" 0 failed")


def test_cli_refuses_a_device_it_cannot_use(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:                     # refused when parsed
        parity.main([str(tmp_path), "--device", "gpu"])
    assert info.value.code == 2 and "'gpu': use cpu, cuda or cuda:N" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parity.main([str(tmp_path), "--device", "cuda"]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------ cases that check nothing or cannot be read
@pytest.fixture
def echo_adapter():
    """A registered port that returns its inputs: a case whose outputs equal its inputs passes."""
    parity.register("testEcho18")(lambda inputs, ctx: {k: v for k, v in inputs.items()})
    yield "testEcho18"
    parity._REGISTRY.pop("testEcho18", None)


def test_a_case_whose_outputs_are_empty_fails(tmp_path, echo_adapter):
    path = tmp_path / "empty.mat"
    scipy.io.savemat(path, {"case_fn": echo_adapter, "inputs": {"x": 1.0}, "outputs": {}})
    res = run_case(path)
    assert not res.passed and "compares nothing" in res.problems[0]
    scipy.io.savemat(path, {"case_fn": echo_adapter, "inputs": {"x": 1.0}, "outputs": {"x": 1.0}})
    assert run_case(path).passed                                  # the same case with an output passes


def test_a_bad_file_fails_alone_and_the_other_cases_still_run(tmp_path, echo_adapter, capsys):
    scipy.io.savemat(tmp_path / "a_no_outputs.mat", {"case_fn": echo_adapter, "inputs": {"x": 1.0}})
    (tmp_path / "b_png.mat").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (tmp_path / "c_empty.mat").write_bytes(b"")
    scipy.io.savemat(tmp_path / "d_no_case_fn.mat", {"inputs": {"x": 1.0}, "outputs": {"x": 1.0}})
    scipy.io.savemat(tmp_path / "e_good.mat", {"case_fn": echo_adapter, "inputs": {"x": 2.0}, "outputs": {"x": 2.0}})
    assert parity.main([str(tmp_path), "--device", "cpu"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["FAIL", "FAIL", "FAIL", "FAIL", "PASS"]
    assert "no 'outputs' variable" in lines[0] and "b_png.mat" in lines[1] and "no 'case_fn'" in lines[3]
    assert lines[-1] == "1 passed, 4 failed"


@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_every_golden_case_passes_on_cuda(golden_dir):
    """The same golden numbers and tolerances with the port on the GPU."""
    out = subprocess.run([sys.executable, "-m", "reproduce.golden", str(golden_dir), "--device", "cuda"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].endswith(" 0 failed")
