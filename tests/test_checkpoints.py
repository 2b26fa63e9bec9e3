"""Tests of reproduce.checkpoints: safe format, atomic writes, finding and loading, MATLAB files."""
from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from legacy_compat import loadmat
from legacy_compat.matio import savemat
from legacy_compat.mattypes import cell_items
from legacy_compat.simplenn import layers_from_matlab
from reproduce.training import checkpoints as ck


def _specs(golden_dir):
    return layers_from_matlab(loadmat(golden_dir / "cnn_train_multi.mat").inputs.net.layers)


def _state(specs, epoch=2):
    momentum = [[None if j == 2 else torch.full_like(w, 0.5 + j) for j, w in enumerate(s.weights)] for s in specs]
    stats = {"train": [{"lossForClassification": 2.07, "binerr": 0.4, "num": 10.0, "time": 0.1}] * epoch,
             "val": [{"lossForClassification": 2.05, "binerr": 0.3, "num": 4.0, "time": 0.01}] * epoch}
    return ck.TrainingState(epoch=epoch, specs=specs, momentum=momentum, stats=stats,
                            state_dict={"layers.0.weight": specs[0].weights[0].clone(),
                                        "layers.0.bias": specs[0].weights[1].clone()},
                            options={"batch_size": 4, "learning_rate": [0.002, 0.001]},
                            meta={"classes": ["a", "b", "c"]})


def _assert_equal_values(a, b, path="value"):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_equal_values(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_values(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype == object:
            for x, y in zip(a.reshape(-1), b.reshape(-1)):
                _assert_equal_values(x, y, path)
        else:
            assert np.array_equal(a, b), path
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, ck.LayerSpec):
        assert (a.type, a.name) == (b.type, b.name), path
        _assert_equal_values(a.weights, b.weights, f"{path}.weights")
        _assert_equal_values(a.fields, b.fields, f"{path}.fields")
    else:
        assert a == b, path


# ====================================================================== plain data
def test_plain_data_round_trips_specs_through_a_weights_only_load(golden_dir):
    specs = _specs(golden_dir)
    buf = io.BytesIO()
    torch.save(ck.to_plain(specs), buf)
    buf.seek(0)
    back = ck.from_plain(torch.load(buf, weights_only=True))
    _assert_equal_values(specs, back)


def test_plain_data_refuses_what_it_cannot_store():
    with pytest.raises(TypeError, match=r"options\.f: a function"):
        ck.to_plain({"f": lambda: 0}, "options")
    with pytest.raises(TypeError, match="keys must be strings"):
        ck.to_plain({1: 2})


# ====================================================================== atomic writes
def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "net-epoch-1.pt"

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ck.write_new_file(target, failing)
    assert list(tmp_path.iterdir()) == []
    ck.write_new_file(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600
    plain.unlink()
    with pytest.raises(ck.CheckpointError, match="refusing to overwrite"):
        ck.write_new_file(target, lambda tmp: tmp.write_bytes(b"other"))
    assert target.read_bytes() == b"whole"


def test_finding_checkpoints_ignores_temporaries_and_other_files(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                          # a writer that has ended
    stale = f".tmp-net-epoch-11.pid{gone.pid}-x.pt"
    for name in ("net-epoch-1.pt", "net-epoch-2.mat", "net-epoch-2.pt", "net-epoch-10.mat",
                 stale, "net-epoch-x.pt", "net-train.png", "net-epoch-12.pt.bak"):
        (tmp_path / name).write_bytes(b"")
    found = ck.find_checkpoints(tmp_path)
    assert sorted(found) == [1, 2, 10] and sorted(found[2]) == ["mat", "pt"]
    assert ck.last_checkpoint_epoch(tmp_path) == 10
    assert ck.last_checkpoint_epoch(tmp_path / "absent") == 0
    assert [p.name for p in ck.remove_stale_temporaries(tmp_path)] == [stale]


# ====================================================================== the package's format
def test_save_and_load_round_trip_storing_each_weight_once(golden_dir, tmp_path):
    state = _state(_specs(golden_dir))
    path = ck.checkpoint_path(tmp_path, 2)
    ck.save_checkpoint(path, state, param_names={(0, 0): "layers.0.weight", (0, 1): "layers.0.bias"})
    raw = torch.load(path, weights_only=True)
    assert raw["specs"][0]["weights"][0] == {"__type__": "param_ref", "key": "layers.0.weight"}
    assert raw["format"] == ck.CHECKPOINT_FORMAT and raw["epoch"] == 2
    back = ck.load_checkpoint(path)
    _assert_equal_values(state.specs, back.specs)
    _assert_equal_values(state.momentum, back.momentum)
    assert back.stats == state.stats and back.options == state.options and back.meta == state.meta
    assert back.epoch == 2 and back.source == path
    with pytest.raises(ck.CheckpointError, match="refusing to overwrite"):
        ck.save_checkpoint(path, state)


def test_loading_refuses_foreign_and_unsafe_files(tmp_path):
    foreign = tmp_path / "net-epoch-1.pt"
    torch.save({"x": torch.zeros(2)}, foreign)
    with pytest.raises(ck.CheckpointError, match="not an ICNN training checkpoint"):
        ck.load_checkpoint(foreign)
    unsafe = tmp_path / "net-epoch-2.pt"
    with open(unsafe, "wb") as fh:  # a pickle that would call a function when unpickled
        pickle.dump({"format": ck.CHECKPOINT_FORMAT, "x": shutil.rmtree}, fh, protocol=2)
    with pytest.raises(ck.CheckpointError, match=r"net-epoch-2\.pt: cannot load"):
        ck.load_checkpoint(unsafe)


def test_architecture_mismatch_names_the_file_and_the_layer(golden_dir):
    specs = _specs(golden_dir)
    arch = ck.architecture_of(specs)
    assert arch[5][:2] == ["conv_mask", "conv6"] and arch[5][2] == [[6, 6, 3, 3], [6], [6]]
    ck.check_architecture(arch, ck.architecture_of(specs), "f.pt")
    other = [list(a) for a in arch]
    other[8] = ["conv_mask", "fc7", [[12, 6, 4, 4], [12], [7]]]
    with pytest.raises(ck.CheckpointMismatchError, match=r"f\.pt: .*different network.*layer 9 is conv_mask 'fc7'"):
        ck.check_architecture(arch, other, "f.pt")
    with pytest.raises(ck.CheckpointMismatchError, match="15 layers there, 16"):
        ck.check_architecture(arch, arch[:-1], "f.pt")


# ====================================================================== MATLAB checkpoints
def test_original_checkpoint_loads_with_its_momentum_and_stats(checkpoints_dir, golden_dir):
    pytest.importorskip("legacy_compat.checkpoint")
    state = ck.load_mat_checkpoint(checkpoints_dir / "checkpoint_single_epoch3.mat", epoch=3)
    assert state.epoch == 3 and len(state.specs) == 16
    assert [s["binerr"] for s in state.stats["train"]] == pytest.approx([0.8, 0.6, 0.2])
    assert [s["num"] for s in state.stats["val"]] == [4.0, 4.0, 4.0]
    golden = loadmat(golden_dir / "cnn_train_single.mat").outputs.checkpoint_state.solverState
    want = cell_items(cell_items(golden)[5])[0]  # conv6 filters' momentum, MATLAB layout H x W x IN x OUT
    np.testing.assert_array_equal(state.momentum[5][0].numpy().transpose(2, 3, 1, 0), want)
    assert state.momentum[1] == []


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_mat_checkpoint_written_reads_back(golden_dir, tmp_path, version):
    pytest.importorskip("legacy_compat.checkpoint")
    state = _state(_specs(golden_dir), epoch=2)
    path = ck.save_mat_checkpoint(ck.checkpoint_path(tmp_path, 2, "mat"), state, version=version)
    back = ck.load_any_checkpoint(tmp_path, 2)
    assert back.source == path and back.epoch == 2
    for a, b in zip(state.specs, back.specs):
        _assert_equal_values(a.weights, b.weights)
    for la, lb in zip(state.momentum, back.momentum):
        assert [m is None for m in la] == [m is None for m in lb]
        for a, b in zip(la, lb):
            if a is not None:
                assert torch.equal(a, b)
    assert back.stats["train"] == state.stats["train"]
    with pytest.raises(ck.CheckpointError, match="refusing to overwrite"):
        ck.save_mat_checkpoint(path, state, version=version)


def test_pt_is_preferred_and_a_partial_mat_is_reported(golden_dir, tmp_path):
    pytest.importorskip("legacy_compat.checkpoint")
    state = _state(_specs(golden_dir), epoch=1)
    ck.save_checkpoint(ck.checkpoint_path(tmp_path, 1), state)
    ck.save_mat_checkpoint(ck.checkpoint_path(tmp_path, 1, "mat"), state, version="5")
    assert ck.load_any_checkpoint(tmp_path, 1).source.suffix == ".pt"
    partial = loadmat(ck.checkpoint_path(tmp_path, 1, "mat"))
    del partial["stats"]
    savemat(ck.checkpoint_path(tmp_path, 2, "mat"), partial, version="5")
    with pytest.raises(ck.CheckpointError, match=r"net-epoch-2\.mat.*partially saved.*move it out of that folder"):
        ck.load_any_checkpoint(tmp_path, 2)
    with pytest.raises(ck.CheckpointError, match="no checkpoint for epoch 3"):
        ck.load_any_checkpoint(tmp_path, 3)
