"""Corrupt MAT files: every load either returns our value types or raises MatFileError.

Seeded byte flips and truncations of the original project's MAT files (v5 and v7.3) and of
files our own savemat wrote. Nothing else may happen: no other exception, no hang, no crash.
The mutations run in a child process (this file run as a script), so that a crash or a hang
inside a C library (libhdf5, zlib, scipy's readers) fails this test, naming the mutation,
instead of taking pytest down with it.
"""
from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from legacy_compat import MatFileError, MatStruct, StructArray, cell, loadmat, savemat

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240531
CHILD_TIMEOUT_S = 300
PER_LOAD_ALARM_S = 30

# (file relative to ../shared, byte-flip mutations, truncations): fewer flips on the big v7.3
# files, whose intact loads take the longest
REAL_FILES = [
    ("data/original/data_input_DET-2015-subset-ILSVRC2013train/n02118333/truth_part01.mat", 3, 4),
    ("data/original/data_input_DET-2015-subset-ILSVRC2013train/n02118333/truth_part02.mat", 2, 3),
    ("data/detanimalpart/n02118333_obj/img/data.mat", 4, 4),
    ("data/original/data_input_VOC/bird/truth_part01.mat", 20, 6),
    ("data/original/data_input_VOC/truth_cow.mat", 2, 3),
    ("data/original/data_input_CUB-200-2011/sampling.mat", 12, 4),
    ("checkpoints/checkpoint_single_epoch3.mat", 20, 6),
    ("checkpoints/checkpoint_single_epoch3_v73.mat", 20, 6),
]


def _own_files(folder: Path) -> list[tuple[Path, int, int]]:
    """Files our savemat writes (v5 and v7.3), holding every kind of value."""


    value = MatStruct(
        x=np.arange(12.0).reshape(3, 4), b=np.array([[True, False]]), z=np.array([[1 + 2j]], np.complex64),
        s="text", chars=np.array([["a", "b"], ["c", "d"]]), c=cell(["ab", np.zeros((0, 3), np.int8), cell([1.0])]),
        sa=StructArray.from_structs([MatStruct(p=np.array([[i]], np.int32), q=str(i)) for i in range(3)], (3, 1)),
        empty=StructArray((0, 0), ["f"]), sp=sp.csc_matrix(np.eye(3)), spl=sp.csc_matrix(np.eye(2, dtype=bool)))
    out = []
    for version in ("5", "7.3"):
        path = folder / f"own_v{version}.mat"
        savemat(path, {"value": value, "other": np.ones((2, 2), np.float32)}, version=version)
        out.append((path, 25, 6))
    return out


def _mutations(files: list[tuple[Path, int, int]], seed: int) -> list[dict]:
    rng = random.Random(seed)
    plan = []
    for path, flips, cuts in files:
        size = path.stat().st_size
        for k in range(flips):
            nbytes = rng.choice([1, 1, 2, 4, 8])
            edits = [(rng.randrange(size), rng.randrange(256)) for _ in range(nbytes)]
            plan.append({"file": str(path), "edits": edits, "truncate": None})
        fixed = [0, 100, 128, 520, size // 2, size - 1]
        for cut in fixed[:cuts] + [rng.randrange(size) for _ in range(max(0, cuts - len(fixed)))]:
            plan.append({"file": str(path), "edits": [], "truncate": cut})
    return plan


def _heap_mutations(path: Path) -> list[dict]:
    """Corruptions of MATLAB_fields (a variable-length attribute) that made libhdf5 itself crash or
    hang when it read them: an unknown vlen kind in the attribute's type, and a global-heap object
    whose size grew by 256 bytes (HDF5 then walks the heap collection forever)."""
    data = path.read_bytes()
    plan = []
    at = data.find(b"MATLAB_fields\0")
    plan.append({"file": str(path), "edits": [(at + 17, 0x33)], "truncate": None})  # vlen kind 3
    heap = data.find(b"GCOL")
    q, end = heap + 16, heap + struct.unpack_from("<Q", data, heap + 8)[0]
    for _ in range(3):  # the 4th object of the collection
        size = struct.unpack_from("<Q", data, q + 8)[0]
        q += 16 + size + (-size % 8)
    assert q + 16 < end
    plan.append({"file": str(path), "edits": [(q + 9, (data[q + 9] + 1) % 256)], "truncate": None})
    return plan


def test_corrupt_files_give_our_types_or_matfileerror(tmp_path):
    shared = ROOT.parent / "shared"
    files = [(shared / rel, flips, cuts) for rel, flips, cuts in REAL_FILES if (shared / rel).exists()]
    files += _own_files(tmp_path)
    plan = _mutations(files, SEED) + _heap_mutations(tmp_path / "own_v7.3.mat")
    assert len(plan) >= 60
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"plan": plan, "scratch": str(tmp_path / "mutated.mat")}))
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, __file__, str(plan_file)], cwd=str(ROOT), capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S, env=env)   # the child imports the package
    except subprocess.TimeoutExpired as exc:
        last = (exc.stdout or b"").decode(errors="replace").strip().splitlines()[-1:] if exc.stdout else []
        pytest.fail(f"loading a corrupt file hung (last started: {last})")
    lines = proc.stdout.strip().splitlines()
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    started = [line for line in lines if line.startswith("START ")]
    assert proc.returncode == 0, (f"the child died (rc {proc.returncode}) on {started[-1:] or 'startup'}\n"
                                  f"{proc.stderr[-3000:]}")
    assert len(results) == len(plan)
    bad = [r for r in results if r["outcome"] not in ("ok", "MatFileError")]
    assert not bad, "\n".join(f"{r['mutation']}: {r['outcome']}" for r in bad[:10])
    outcomes = {o: sum(r["outcome"] == o for r in results) for o in ("ok", "MatFileError")}
    assert outcomes["ok"] > 0 and outcomes["MatFileError"] > len(plan) // 2  # the mutations do bite
    assert results[-1]["outcome"] == results[-2]["outcome"] == "MatFileError"  # the two heap corruptions
    unnamed = [r for r in results if r["outcome"] == "MatFileError" and r["message"] != "names the file"]
    assert not unnamed, unnamed[:5]


# ---------------------------------------------------------------- the child process
def _check_our_types(value, where="value"):
    """Raise AssertionError unless `value` is made only of the types loadmat documents."""


    if isinstance(value, StructArray):
        for s in np.asarray(value).reshape(-1):
            assert isinstance(s, MatStruct), where
            _check_our_types(s, where)
    elif isinstance(value, MatStruct):
        for k, v in value.items():
            _check_our_types(v, f"{where}.{k}")
    elif isinstance(value, str):
        pass
    elif sp.issparse(value):
        assert value.format == "csc" and value.dtype in (np.float64, np.bool_, np.complex128), where
    elif isinstance(value, np.ndarray):
        assert value.ndim >= 2, where
        if value.dtype == object:
            for v in value.reshape(-1):
                _check_our_types(v, where)
        else:
            assert value.dtype.kind in "biufc" or value.dtype == np.dtype("<U1"), where
    else:
        raise AssertionError(f"{where}: {type(value).__name__}")


def _child(plan_path: str) -> None:


    spec = json.loads(Path(plan_path).read_text())
    scratch = Path(spec["scratch"])
    originals: dict[str, bytes] = {}

    class Hang(Exception):
        pass

    def on_alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    for i, m in enumerate(spec["plan"]):
        data = bytearray(originals.setdefault(m["file"], Path(m["file"]).read_bytes()))
        for pos, byte in m["edits"]:
            data[pos] = byte
        if m["truncate"] is not None:
            data = data[:m["truncate"]]
        scratch.write_bytes(data)
        label = f"{Path(m['file']).name} edits={m['edits']} truncate={m['truncate']}"
        print(f"START {i} {label}", flush=True)
        signal.alarm(PER_LOAD_ALARM_S)
        try:
            _check_our_types(loadmat(scratch))
            outcome, message = "ok", ""
        except MatFileError as exc:
            outcome = "MatFileError"
            named = exc.path == str(scratch) and str(exc).startswith(str(scratch)) and exc.reason
            message = "names the file" if named else f"unnamed: {exc}"
        except Hang:
            outcome, message = "hang", ""
        except BaseException as exc:  # noqa: BLE001 - exactly what the test is looking for
            outcome, message = f"{type(exc).__name__}: {exc}"[:300], ""
        finally:
            signal.alarm(0)
        print("RESULT " + json.dumps({"mutation": label, "outcome": outcome, "message": message}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
