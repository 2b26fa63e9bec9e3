"""ICNN checkpoints net-epoch-N.mat (legacy_compat.checkpoint): the original files load, convert, write back equal."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_simplenn import matlab_diff

from legacy_compat import MatFileError, loadmat
from legacy_compat.checkpoint import (
    IcnnCheckpoint,
    PartialCheckpointError,
    epoch_from_filename,
    read_icnn_checkpoint,
    write_icnn_checkpoint,
)
from legacy_compat.matio import savemat
from legacy_compat.mattypes import MatStruct, cell_items
from legacy_compat.simplenn import MATLAB_FORM, LayerSpec, weight_to_torch

NAMES = ("single", "multi", "softmax")


def py_equal(a, b, where="ckpt"):
    """Differences between two Python values (tensors, arrays, dicts, lists, dataclass fields)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [f"{where}: tensors differ"]
    if isinstance(a, LayerSpec):
        return (py_equal(a.type, b.type, f"{where}.type") + py_equal(a.name, b.name, f"{where}.name")
                + py_equal(a.weights, b.weights, f"{where}.weights") + py_equal(a.fields, b.fields, f"{where}.fields"))
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or list(a) != list(b):
            return [f"{where}: keys {list(a) if isinstance(a, dict) else a} vs {list(b) if isinstance(b, dict) else b}"]
        return [d for k in a for d in py_equal(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [f"{where}: {a!r} vs {b!r}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in py_equal(x, y, f"{where}[{i}]")]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return matlab_diff(a, b, where)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return []
    return [] if (type(a) is type(b) and a == b) else [f"{where}: {a!r} vs {b!r}"]


def ckpt_diff(a: IcnnCheckpoint, b: IcnnCheckpoint, with_forms: bool = True):
    """Differences between two checkpoints; with_forms=False leaves out the records of the MATLAB
    classes each file stored (fields["_matlab"], extra["momentum_forms"])."""
    diffs = [d for f in ("specs", "meta", "momentum", "stats", "epoch", "state_stats", "extra")
             for d in py_equal(getattr(a, f), getattr(b, f), f)]
    if not with_forms:
        diffs = [d for d in diffs if f".fields.{MATLAB_FORM}" not in d and "momentum_forms" not in d]
    return diffs


# ----------------------------------------------------------------- the original checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_original_checkpoints_load_convert_and_write_back_equal(checkpoints_dir, tmp_path, name):
    src = checkpoints_dir / f"checkpoint_{name}_epoch3.mat"
    original = loadmat(src)
    ckpt = read_icnn_checkpoint(src)
    assert ckpt.epoch == 3 and len(ckpt.stats["train"]) == 3 and len(ckpt.stats["val"]) == 3
    err = "binerr" if name != "softmax" else "top1err"
    assert set(ckpt.stats["train"][0]) == {"lossForClassification", err, "num", "time"}
    last = cell_items(original["stats"]["train"].field("lossForClassification"))[-1]
    assert ckpt.stats["train"][-1]["lossForClassification"] == float(last[0, 0])
    assert ckpt.state_stats["val"] == ckpt.stats["val"][-1]
    # momentum: PyTorch layout of each weight, as read from state.solverState
    solver = cell_items(original["state"]["solverState"])
    for l, (spec, layer_m) in enumerate(zip(ckpt.specs, ckpt.momentum)):
        assert len(layer_m) == len(spec.weights)
        for j, m in enumerate(layer_m):
            assert m is not None and m.dtype == torch.float32 and m.shape == spec.weights[j].shape
            assert torch.equal(m, weight_to_torch(spec.type, j, cell_items(solver[l])[j]))
    for version in ("5", "7.3"):
        out = tmp_path / f"net-epoch-3-v{version}.mat"
        write_icnn_checkpoint(out, ckpt, version=version)
        assert matlab_diff(original, loadmat(out)) == [], version
        assert ckpt_diff(ckpt, read_icnn_checkpoint(out)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net-epoch-3-v5.mat", "net-epoch-3-v7.3.mat"]


def test_v5_and_v73_originals_give_equal_checkpoints(checkpoints_dir):
    a = read_icnn_checkpoint(checkpoints_dir / "checkpoint_single_epoch3.mat")
    b = read_icnn_checkpoint(checkpoints_dir / "checkpoint_single_epoch3_v73.mat")
    # the v7.3 rewrite stores `precious` as uint8 where the v5 file has a logical: equal as
    # checkpoints (precious is a bool either way), different only in the recorded MATLAB class
    assert ckpt_diff(a, b, with_forms=False) == []
    assert all(sa.fields["precious"] == sb.fields["precious"] for sa, sb in zip(a.specs, b.specs))


def test_epoch_from_the_file_name(checkpoints_dir, tmp_path):
    assert epoch_from_filename("runs/net-epoch-12.mat") == 12
    assert epoch_from_filename("checkpoint_single_epoch3.mat") is None
    dst = tmp_path / "net-epoch-7.mat"
    shutil.copyfile(checkpoints_dir / "checkpoint_single_epoch3.mat", dst)
    assert read_icnn_checkpoint(dst).epoch == 7


# ----------------------------------------------------------------- bad files
def test_missing_stats_is_a_partial_save(checkpoints_dir, tmp_path):
    original = loadmat(checkpoints_dir / "checkpoint_single_epoch3.mat")
    partial = tmp_path / "net-epoch-4.mat"
    savemat(partial, {"net": original["net"], "state": original["state"]}, version="5")   # saveState only
    with pytest.raises(PartialCheckpointError, match=r"net-epoch-4\.mat.*partially saved"):
        read_icnn_checkpoint(partial)


def test_unreadable_and_foreign_files_raise_matfileerror(checkpoints_dir, tmp_path):
    truncated = tmp_path / "net-epoch-1.mat"
    truncated.write_bytes((checkpoints_dir / "checkpoint_single_epoch3.mat").read_bytes()[:3000])
    with pytest.raises(MatFileError, match=r"net-epoch-1\.mat"):
        read_icnn_checkpoint(truncated)
    foreign = tmp_path / "foreign.mat"
    savemat(foreign, {"x": np.zeros((2, 2))}, version="5")
    with pytest.raises(MatFileError, match=r"foreign\.mat.*net"):
        read_icnn_checkpoint(foreign)
    with pytest.raises(MatFileError, match="missing.mat"):
        read_icnn_checkpoint(tmp_path / "missing.mat")


# ----------------------------------------------------------------- checkpoints built in Python
def _python_checkpoint():
    specs = [LayerSpec("conv", "conv1", [torch.randn(4, 3, 3, 3), torch.zeros(4)],
                       {"pad": (1, 1, 1, 1), "stride": (1, 1), "learningRate": (1.0, 2.0), "weightDecay": (1.0, 0.0)}),
             LayerSpec("relu", "relu1"),
             LayerSpec("conv", "fc", [torch.randn(1, 4, 8, 8), torch.zeros(1)],
                       {"learningRate": (1.0, 2.0), "weightDecay": (1.0, 0.0)}),
             LayerSpec("ourloss_logistic", "loss")]
    momentum = [[torch.randn(4, 3, 3, 3), None], [], [None, torch.tensor([0.25])], []]
    stats = {"train": [{"lossForClassification": 0.7, "binerr": 0.25, "num": 10.0, "time": 1.5}],
             "val": [{"lossForClassification": 0.8, "binerr": 0.5, "num": 4.0, "time": 0.5}]}
    meta = MatStruct(normalization=MatStruct(imageSize=np.array([[8.0, 8, 3]])), classes=MatStruct(name=np.array(
        [["pos"]], dtype=object)))
    return IcnnCheckpoint(specs=specs, meta=meta, momentum=momentum, stats=stats, epoch=1)


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_python_checkpoint_writes_what_loadstate_expects(tmp_path, version):
    ckpt = _python_checkpoint()
    path = tmp_path / "net-epoch-1.mat"
    write_icnn_checkpoint(path, ckpt, version=version)
    raw = loadmat(path)
    assert set(raw) == {"net", "state", "stats"}
    solver = [cell_items(c) for c in cell_items(raw["state"]["solverState"])]
    assert solver[1] == [] and solver[0][1].shape == (1, 1) and solver[0][1].dtype == np.float64   # the {0}
    assert solver[0][0].shape == (3, 3, 3, 4) and solver[0][0].dtype == np.float32
    assert solver[2][1].dtype == np.float32 and solver[2][1].shape == (1, 1)
    assert solver[2][0].dtype == np.float64 and solver[2][0][0, 0] == 0.0
    layer0 = cell_items(raw["net"]["layers"])[0]
    assert cell_items(layer0["weights"])[0].shape == (3, 3, 3, 4) and layer0["pad"].shape == (1, 1)
    assert cell_items(raw["net"]["layers"])[2]["weights"][0, 0].shape == (8, 8, 4)   # trailing 1 dropped
    assert raw["stats"]["train"]["binerr"][0, 0] == 0.25 and raw["state"]["stats"]["val"]["num"][0, 0] == 4.0
    back = read_icnn_checkpoint(path)
    assert back.epoch == 1 and back.stats == ckpt.stats
    for l, layer_m in enumerate(ckpt.momentum):
        for j, m in enumerate(layer_m):
            got = back.momentum[l][j]
            assert (got is None) if m is None else torch.equal(got, m)
    for s, t in zip(ckpt.specs, back.specs):
        assert s.type == t.type and s.name == t.name
        assert all(torch.equal(x, y) for x, y in zip(s.weights, t.weights))


def test_solver_state_not_saved(tmp_path):
    """saveSolverState = false: processEpoch sets state.solverState = []."""
    ckpt = _python_checkpoint()
    ckpt.momentum = None
    path = tmp_path / "net-epoch-1.mat"
    write_icnn_checkpoint(path, ckpt, version="5")
    solver = loadmat(path)["state"]["solverState"]
    assert solver.shape == (0, 0) and solver.dtype == np.float64
    assert read_icnn_checkpoint(path).momentum is None


def test_inconsistent_momentum_is_refused_and_nothing_written(tmp_path):
    ckpt = _python_checkpoint()
    ckpt.momentum[0] = [None]
    with pytest.raises(ValueError, match="conv1"):
        write_icnn_checkpoint(tmp_path / "net-epoch-1.mat", ckpt, version="5")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_replacement(checkpoints_dir, tmp_path):
    ckpt = read_icnn_checkpoint(checkpoints_dir / "checkpoint_single_epoch3.mat")
    path = tmp_path / "net-epoch-3.mat"
    path.write_bytes(b"old")
    write_icnn_checkpoint(path, ckpt, version="5")
    assert [p.name for p in tmp_path.iterdir()] == ["net-epoch-3.mat"]
    assert read_icnn_checkpoint(path).epoch == 3
