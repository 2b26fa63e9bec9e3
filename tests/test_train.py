"""Tests of reproduce.train: the pieces of our_cnn_train.m, then whole runs on a tiny ICNN.

The whole runs use the scaled-down ICNN of the golden case cnn_train_single
(16 x 16 inputs, 14 images) so that they stay fast.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from legacy_compat import loadmat
from legacy_compat.mattypes import cell_items
from legacy_compat.simplenn import layers_from_matlab
from reproduce.experiments import pipeline
from reproduce.experiments import train_command as train_cli
from reproduce.golden.training_cases import golden_imdb
from reproduce.runtime.device import resolve_device
from reproduce.training import cnn_train as tr
from reproduce.training.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_path,
    find_checkpoints,
    load_checkpoint,
)

ParamInfo = namedtuple("ParamInfo", "layer_index j name param learning_rate weight_decay")


# ====================================================================== schedule, order, batches
def test_learning_rate_schedule_repeats_its_last_value():
    schedule = [1e-3, 5e-4, 2e-4]
    assert [tr.learning_rate_for_epoch(schedule, e) for e in (1, 2, 3, 4, 10)] == [1e-3, 5e-4, 2e-4, 2e-4, 2e-4]
    assert tr.learning_rate_for_epoch(0.01, 7) == 0.01
    with pytest.raises(ValueError, match="empty"):
        tr.learning_rate_for_epoch([], 1)


def test_epoch_orders_are_permutations_seeded_by_epoch_plus_seed():
    train_idx, val_idx = np.arange(0, 20), np.arange(20, 27)
    a = tr.epoch_orders(train_idx, val_idx, epoch=3, seed=0)
    b = tr.epoch_orders(train_idx, val_idx, epoch=1, seed=2)  # same epoch + seed
    c = tr.epoch_orders(train_idx, val_idx, epoch=4, seed=0)
    assert sorted(a[0].tolist()) == train_idx.tolist() and sorted(a[1].tolist()) == val_idx.tolist()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_batches_have_batch_size_and_a_smaller_last_one():
    batches = tr.split_into_batches(np.arange(10), 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in tr.split_into_batches(np.arange(3), 32)] == [[0, 1, 2]]
    assert tr.split_into_batches(np.arange(0), 4) == []


def _data(n=14, num_labels=1, n_train=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, num_labels)) < 0.4, 1.0, -1.0).astype(np.float32)
    sets = np.array([1] * n_train + [2] * (n - n_train), dtype=np.uint8)
    data = (rng.standard_normal((n, 3, 16, 16)) * 60).astype(np.float32)
    return SimpleNamespace(data=data, labels=labels, set=sets)


def test_replayed_batches_split_per_epoch_and_convert_to_zero_based():
    data = tr.TrainData.from_imdb(_data())
    recorded = [[2, 9, 1, 5], [7, 8, 3, 10], [4, 6], [14, 13, 11, 12]] * 2
    out = tr.replayed_batches(recorded, data, batch_size=4, num_epochs=2)
    assert len(out) == 2
    train_b, val_b = out[1]
    assert [b.tolist() for b in train_b] == [[1, 8, 0, 4], [6, 7, 2, 9], [3, 5]]
    assert [b.tolist() for b in val_b] == [[13, 12, 10, 11]]


def test_replayed_batches_reject_short_or_misaligned_recordings():
    data = tr.TrainData.from_imdb(_data())
    good = [[2, 9, 1, 5], [7, 8, 3, 10], [4, 6], [14, 13, 11, 12]]
    with pytest.raises(ValueError, match="need 8"):
        tr.replayed_batches(good, data, batch_size=4, num_epochs=2)
    with pytest.raises(ValueError, match="outside the training split"):
        tr.replayed_batches([[2, 9, 1, 12]] + good[1:], data, batch_size=4, num_epochs=1)
    with pytest.raises(ValueError, match="1-based"):
        tr.replayed_batches([[0, 9, 1, 5]] + good[1:], data, batch_size=4, num_epochs=1)


# ====================================================================== imdb checks
def test_labels_other_than_plus_minus_one_are_rejected():
    imdb = _data()
    imdb.labels[3, 0] = 0.0
    with pytest.raises(ValueError, match=r"\+1 or -1.*0\.0.*ignore"):
        tr.TrainData.from_imdb(imdb)


def test_imdb_shape_mismatch_is_reported():
    imdb = _data()
    imdb.set = imdb.set[:-1]
    with pytest.raises(ValueError, match="13 entries in set"):
        tr.TrainData.from_imdb(imdb)


def test_label_density_over_the_whole_imdb():
    labels = torch.tensor([[1, -1], [1, 1], [-1, -1], [1, -1]], dtype=torch.float32)
    assert torch.allclose(tr.label_density(labels), torch.tensor([0.75, 0.25]))
    assert tr.label_density(labels[:, :1]) is None


def test_resolve_device_refuses_cuda_without_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


# ====================================================================== SGD
def test_sgd_matches_matconvnet_formula_over_steps():
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(3, 2, 2, 2))
    b1 = torch.nn.Parameter(torch.randn(3))
    beta = torch.nn.Parameter(torch.full((2,), 2.0))
    frozen = torch.nn.Parameter(torch.randn(4))
    infos = [ParamInfo(0, 0, "w", w1, 1.0, 1.0), ParamInfo(0, 1, "b", b1, 2.0, 0.0),
             ParamInfo(2, 2, "beta", beta, 0.05, 0.0), ParamInfo(3, 0, "f", frozen, 0.0, 0.0)]
    sgd = tr.MatConvNetSGD(infos, momentum=0.9, weight_decay=5e-4)
    ref_w = {i.name: i.param.detach().double().numpy().copy() for i in infos}
    ref_m = {i.name: 0.0 for i in infos}
    frozen_before = frozen.detach().clone()
    for step, (lr, bs) in enumerate([(0.01, 4), (0.005, 3), (0.002, 4)]):
        grads = {i.name: torch.randn_like(i.param) for i in infos}
        for i in infos:
            i.param.grad = grads[i.name].clone()
        sgd.step(lr, bs)
        for i in infos:
            if lr * i.learning_rate > 0 or 5e-4 * i.weight_decay > 0:
                g = grads[i.name].double().numpy() / bs + 5e-4 * i.weight_decay * ref_w[i.name]
                ref_m[i.name] = 0.9 * ref_m[i.name] - g
                ref_w[i.name] = ref_w[i.name] + lr * i.learning_rate * ref_m[i.name]
    for i in infos[:3]:
        np.testing.assert_allclose(i.param.detach().double().numpy(), ref_w[i.name], rtol=1e-5, atol=1e-6)
    assert torch.equal(frozen.detach(), frozen_before)  # rate and decay 0: skipped
    assert sgd.buffers[3] is None                        # its momentum stays MATLAB's scalar 0
    nested = sgd.momentum_by_layer([2, 0, 3, 1])
    assert nested[1] == [] and nested[2][0] is None and nested[3] == [None]
    np.testing.assert_allclose(nested[0][0].double().numpy(), ref_m["w"], rtol=1e-5, atol=1e-6)


def test_sgd_momentum_round_trips_through_layer_layout():
    w = torch.nn.Parameter(torch.ones(2, 3))
    infos = [ParamInfo(1, 0, "w", w, 1.0, 1.0)]
    sgd = tr.MatConvNetSGD(infos)
    w.grad = torch.ones(2, 3)
    sgd.step(0.1, 1)
    nested = sgd.momentum_by_layer([0, 1])
    other = tr.MatConvNetSGD(infos)
    other.load_momentum(nested)
    assert torch.equal(other.buffers[0], sgd.buffers[0])
    with pytest.raises(CheckpointError, match="momentum of layer 2 weight 1"):
        other.load_momentum([[], [torch.zeros(5)]])


# ====================================================================== sliceMag
def _maps_with_maxima(maxima: np.ndarray) -> torch.Tensor:
    """N x D x 3 x 3 maps whose max over H, W is `maxima` (N x D), other values below it."""
    n, d = maxima.shape
    x = np.full((n, d, 3, 3), -1.0, dtype=np.float32)
    x[:, :, 1, 2] = maxima
    return torch.from_numpy(x)


def test_slice_mag_first_update_is_mean_of_positive_maxima_floored_at_0_1():
    layer = SimpleNamespace(slice_mag=torch.zeros(0))
    maxima = np.array([[4.0, 0.0, 0.05], [2.0, 0.0, 0.01], [100.0, 100.0, 100.0]], dtype=np.float32)
    positives = torch.tensor([[True], [True], [False]])
    tr.update_slice_mag(layer, _maps_with_maxima(maxima), positives)
    assert layer.slice_mag.shape == (3, 1)
    np.testing.assert_allclose(layer.slice_mag[:, 0].numpy(), [3.0, 0.1, 0.1], rtol=1e-6)


def test_slice_mag_moving_average_and_the_column1_quirk():
    # 2 classes, 2 filters; class 2's new mean for filter 1 is 0 -> filled from COLUMN 1 (after its update)
    start = torch.tensor([[1.0, 5.0], [2.0, 6.0]])
    maxima = np.array([[10.0, 20.0], [0.0, 30.0]], dtype=np.float32)   # image 1 pos for class 1, image 2 for class 2
    positives = torch.tensor([[True, False], [False, True]])
    quirk = SimpleNamespace(slice_mag=start.clone())
    tr.update_slice_mag(quirk, _maps_with_maxima(maxima), positives)
    col1 = np.array([0.9 * 1 + 0.1 * 10, 0.9 * 2 + 0.1 * 20])
    np.testing.assert_allclose(quirk.slice_mag[:, 0].numpy(), col1, rtol=1e-6)
    np.testing.assert_allclose(quirk.slice_mag[:, 1].numpy(), [0.9 * 5 + 0.1 * col1[0], 0.9 * 6 + 0.1 * 30], rtol=1e-6)
    fixed = SimpleNamespace(slice_mag=start.clone())
    tr.update_slice_mag(fixed, _maps_with_maxima(maxima), positives, fill=tr.SLICE_MAG_FILL_OWN_COLUMN)
    np.testing.assert_allclose(fixed.slice_mag[:, 1].numpy(), [0.9 * 5 + 0.1 * 5, 0.9 * 6 + 0.1 * 30], rtol=1e-6)


def test_slice_mag_skips_classes_without_positives_and_checks_fill_option():
    layer = SimpleNamespace(slice_mag=torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    maxima = np.array([[10.0, 20.0]], dtype=np.float32)
    tr.update_slice_mag(layer, _maps_with_maxima(maxima), torch.tensor([[True, False]]))
    np.testing.assert_allclose(layer.slice_mag.numpy(), [[1.9, 0.0], [3.8, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="slice_mag_fill"):
        tr.update_slice_mag(layer, _maps_with_maxima(maxima), torch.tensor([[True, False]]), fill="bogus")


# ====================================================================== error functions
def test_binary_and_top1_errors_as_error_binary_and_error_multiclass():
    labels = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])
    pred = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.3, -2.0]]).reshape(2, 3, 1, 1)
    assert tr.batch_errors(pred, labels, "binerr") == pytest.approx((1 + 1) / 3)
    # image 2: tie between classes 1 and 2 -> the first (stable descending sort) -> wrong
    assert tr.batch_errors(pred, labels, "top1err") == 1.0
    assert tr.error_name_for("ourloss_softmaxlog") == "top1err"
    assert tr.error_name_for("ourloss_logistic") == "binerr"


# ====================================================================== whole runs on a tiny ICNN
@pytest.fixture
def tiny(golden_dir):
    """(make_net, imdb) from the golden cnn_train_single case: a scaled-down ICNN and its 14 images."""
    network = pytest.importorskip("reproduce.network")
    case = loadmat(golden_dir / "cnn_train_single.mat")
    specs_layers = case.inputs.net.layers

    def make_net(dropout=None):
        specs = layers_from_matlab(specs_layers)
        for spec in specs:
            if spec.type == "dropout" and dropout is not None:
                spec.fields["rate"] = float(dropout)
        return network.SimpleNN.from_specs(specs)
    return make_net, golden_imdb(case.inputs.imdb)


def _opts(epochs=3, lr=(2e-3, 1e-3, 5e-4), bs=4):
    return {"learning_rate": list(lr), "num_epochs": epochs, "batch_size": bs, "weight_decay": 5e-4, "momentum": 0.9}


def _weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_interrupted_runs_resume_to_the_same_weights(tiny, tmp_path):
    """Dropout 0.5, so that the resumed run must also replay the random masks."""
    base_net, imdb = tiny

    def make_net():
        return base_net(dropout=0.5)
    ref_net, ref_stats = tr.train(make_net(), imdb, _opts(), tmp_path / "ref", progress=False, plot=False)
    reference = _weights(ref_net)
    other_seed, _ = tr.train(make_net(), imdb, _opts(), tmp_path / "seed1", seed=1, progress=False, plot=False)
    assert not torch.equal(_weights(other_seed)["layers.0.weight"], reference["layers.0.weight"])

    # killed inside epoch 2 (second training batch): nothing of epoch 2 is written
    def stop_inside(info):
        if info.epoch == 2 and info.mode == "train" and info.index == 1:
            raise KeyboardInterrupt
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tr.train(make_net(), imdb, _opts(), run, progress=False, plot=False, on_batch=stop_inside)
    assert sorted(find_checkpoints(run)) == [1]
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]

    # killed between epochs 2 and 3 by a real SIGINT; Python's Ctrl-C handler is installed here, as a
    # process started with SIGINT ignored (in the background, under nohup) does not have it
    def stop_between(epoch, stats):
        if epoch == 2:
            signal.raise_signal(signal.SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            tr.train(make_net(), imdb, _opts(), run, progress=False, plot=False, on_epoch=stop_between)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(find_checkpoints(run)) == [1, 2]

    net, stats = tr.train(make_net(), imdb, _opts(), run, progress=False, plot=False)
    _assert_same_weights(_weights(net), reference)
    assert sorted(find_checkpoints(run)) == [1, 2, 3]
    for mode in ("train", "val"):
        for got, want in zip(stats[mode], ref_stats[mode]):
            assert got["lossForClassification"] == want["lossForClassification"]
            assert got["binerr"] == want["binerr"] and got["num"] == want["num"]


def test_the_resume_test_passes_with_sigint_ignored():
    """Started in the background or under nohup, pytest has SIGINT ignored (inherited across exec):
    the resume test above must still see its SIGINT."""
    root = Path(__file__).resolve().parent.parent
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); import pytest; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
            "'tests/test_train.py::test_interrupted_runs_resume_to_the_same_weights']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_sigterm_stops_training_as_ctrl_c_and_the_run_resumes(tiny, tmp_path, capsys):
    """SIGTERM (a batch scheduler's stop) between epochs 2 and 3: complete checkpoints only, a message
    on how to resume, the previous SIGTERM handler back; the resumed run ends as an unbroken one."""
    make_net, imdb = tiny
    reference = _weights(tr.train(make_net(), imdb, _opts(), tmp_path / "ref", progress=False, plot=False)[0])

    class Guard(Exception):
        pass

    def guard(signum, frame):            # stands for "the process is killed" had train not handled SIGTERM
        raise Guard()

    def stop_between(epoch, stats):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    run = tmp_path / "run"
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        with pytest.raises(KeyboardInterrupt) as exc:
            tr.train(make_net(), imdb, _opts(), run, progress=False, plot=False, on_epoch=stop_between)
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert type(exc.value).__name__ == "Terminated"
    assert sorted(find_checkpoints(run)) == [1, 2]
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    err = capsys.readouterr().err
    assert "stopped by SIGTERM during epoch 2; checkpoints up to epoch 2 are complete" in err
    assert "Run the same command again to resume" in err
    net, _ = tr.train(make_net(), imdb, _opts(), run, progress=False, plot=False)
    _assert_same_weights(_weights(net), reference)


def test_run_writes_checkpoints_plots_and_sensible_stats(tiny, tmp_path):
    make_net, imdb = tiny
    given = make_net()
    with pytest.warns(UserWarning, match="meta cannot be stored"):
        net, stats = tr.train(given, imdb, _opts(epochs=2), tmp_path, progress=True, plot=True,
                              meta={"callback": print})
    assert net is given
    assert (tmp_path / "net-train.png").stat().st_size > 0 and (tmp_path / "net-train.pdf").stat().st_size > 0
    assert sorted(find_checkpoints(tmp_path)) == [1, 2]
    assert [s["num"] for s in stats["train"]] == [10.0, 10.0] and [s["num"] for s in stats["val"]] == [4.0, 4.0]
    for s in stats["train"] + stats["val"]:
        assert 0.0 <= s["binerr"] <= 1.0 and 0.5 < s["lossForClassification"] < 1.0  # ~log 2 at the start
        assert set(s) == {"lossForClassification", "binerr", "num", "time"}
    slice_mags = [layer.slice_mag for _, layer in net.conv_mask_layers()]
    assert all(sm.shape == (sm.shape[0], 1) and bool((sm >= 0.1 - 1e-7).all()) for sm in slice_mags)
    # all epochs done: a second call loads the last checkpoint and trains nothing more
    again, stats2 = tr.train(make_net(), imdb, _opts(epochs=2), tmp_path, progress=False, plot=False)
    _assert_same_weights(_weights(again), _weights(net))
    assert stats2 == stats


def test_schedule_shorter_than_epochs_and_batch_larger_than_data(tiny, tmp_path):
    make_net, imdb = tiny
    seen = []
    tr.train(make_net(), imdb, _opts(epochs=2, lr=[1e-3], bs=64), tmp_path, progress=False, plot=False,
             on_batch=lambda info: seen.append((info.epoch, info.mode, len(info.indices))))
    assert seen == [(1, "train", 10), (1, "val", 4), (2, "train", 10), (2, "val", 4)]


def test_no_validation_split_gives_nan_validation_statistics(tiny, tmp_path):
    make_net, imdb = tiny
    imdb.set = np.ones_like(imdb.set)
    _, stats = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path, progress=False, plot=True)
    assert stats["train"][0]["num"] == 14.0 and stats["val"][0]["num"] == 0.0
    assert math.isnan(stats["val"][0]["lossForClassification"]) and math.isnan(stats["val"][0]["binerr"])
    assert (tmp_path / "net-train.png").exists()


def test_empty_train_split_is_an_error(tiny, tmp_path):
    make_net, imdb = tiny
    imdb.set = np.full_like(imdb.set, 2)
    with pytest.raises(ValueError, match="no training images"):
        tr.train(make_net(), imdb, _opts(), tmp_path, progress=False, plot=False)


def test_folder_of_another_network_is_a_clear_error(tiny, tmp_path):
    make_net, imdb = tiny
    tr.train(make_net(), imdb, _opts(epochs=1), tmp_path, progress=False, plot=False)
    other = make_net()
    specs = other.to_specs()
    specs[0].name = "not-conv1"
    other = type(other).from_specs(specs)
    with pytest.raises(CheckpointMismatchError, match="net-epoch-1.pt.*different network.*not-conv1"):
        tr.train(other, imdb, _opts(epochs=2), tmp_path, progress=False, plot=False)
    with pytest.raises(CheckpointError, match="never overwritten"):
        tr.train(make_net(), imdb, _opts(epochs=2), tmp_path, progress=False, plot=False, resume=False)


def test_damaged_last_checkpoint_is_named(tiny, tmp_path):
    make_net, imdb = tiny
    tr.train(make_net(), imdb, _opts(epochs=1), tmp_path, progress=False, plot=False)
    checkpoint_path(tmp_path, 2).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"net-epoch-2\.pt.*move it out of that folder"):
        tr.train(make_net(), imdb, _opts(epochs=3), tmp_path, progress=False, plot=False)


def test_resume_from_the_original_codes_checkpoint(tiny, checkpoints_dir, golden_dir, tmp_path):
    """checkpoint_single_epoch3.mat (our_cnn_train's own net-epoch-3.mat) + one more epoch."""
    pytest.importorskip("legacy_compat.checkpoint")

    make_net, imdb = tiny
    shutil.copy(checkpoints_dir / "checkpoint_single_epoch3.mat", tmp_path / "net-epoch-3.mat")
    batches = cell_items(loadmat(golden_dir / "cnn_train_single.mat").inputs.batches)
    seen = []
    net, stats = tr.train(make_net(), imdb, _opts(epochs=4), tmp_path, progress=False, plot=False,
                          batch_order=batches + batches[:4], on_batch=lambda i: seen.append((i.epoch, i.mode)))
    assert seen == [(4, "train")] * 3 + [(4, "val")]
    assert len(stats["train"]) == 4 and stats["train"][2]["binerr"] == pytest.approx(0.2)
    assert math.isfinite(stats["train"][3]["lossForClassification"])
    assert sorted(find_checkpoints(tmp_path)) == [3, 4]
    state = load_checkpoint(checkpoint_path(tmp_path, 4))
    assert state.epoch == 4 and any(m is not None for layer in state.momentum for m in layer)


# ====================================================================== command line
def test_cli_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--category", "--model", "--dropout", "--epochs", "--device", "--out", "resumes"):
        assert option in text


def test_cli_trains_and_resumes_through_the_seams(tiny, tmp_path, monkeypatch, capsys):
    make_net, imdb = tiny
    built = []

    def fake_net(exp):
        built.append((tuple(exp.categories), exp.model, exp.dropout))
        return make_net(), dict(_opts(epochs=exp.epochs or 1)), {"image_size": (16, 16, 3)}
    monkeypatch.setattr(pipeline, "build_net", fake_net)
    monkeypatch.setattr(pipeline, "prepare_dataset", lambda exp, size=None: "paths")
    monkeypatch.setattr(pipeline, "build_imdb", lambda exp, paths, size: imdb if size == (16, 16) else None)
    argv = ["--dataset", "toy", "--category", "toy01", "--model", "tiny", "--dropout", "0.0",
            "--out", str(tmp_path), "--no-progress"]
    assert train_cli.main(argv) == 0
    assert built == [(("toy01",), "tiny", 0.0)]
    first = capsys.readouterr().out.strip()
    assert first.startswith("lossForClassification ") and " binerr " in first
    assert sorted(find_checkpoints(tmp_path / "mat" / "toy01")) == [1]
    assert train_cli.main(argv + ["--epochs", "2"]) == 0
    assert sorted(find_checkpoints(tmp_path / "mat" / "toy01")) == [1, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cli_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    code = train_cli.main(["--dataset", "toy", "--category", "toy01", "--device", "cuda", "--out", str(tmp_path)])
    assert code == 2                                  # refused before any work
    assert "no CUDA GPU" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_resuming_from_our_matlab_export_gives_the_same_run(tiny, tmp_path):
    pytest.importorskip("legacy_compat.checkpoint")
    make_net, imdb = tiny
    ref, _ = tr.train(make_net(), imdb, _opts(epochs=2), tmp_path / "ref", progress=False, plot=False)
    run = tmp_path / "run"
    tr.train(make_net(), imdb, _opts(epochs=1), run, save_mat=True, progress=False, plot=False)
    mat = loadmat(checkpoint_path(run, 1, "mat"))
    assert cell_items(cell_items(mat.net.layers)[0].weights)[0].shape == (3, 3, 3, 6)   # MATLAB layout
    assert cell_items(mat.net.layers)[5].sliceMag.shape == (6, 1)
    checkpoint_path(run, 1).unlink()                      # only the MATLAB file is left
    net, stats = tr.train(make_net(), imdb, _opts(epochs=2), run, save_mat=True, progress=False, plot=False)
    _assert_same_weights(_weights(net), _weights(ref))
    assert sorted(find_checkpoints(run)) == [1, 2] and sorted(find_checkpoints(run)[2]) == ["mat", "pt"]


def test_data_prep_imdb_on_a_read_only_memmap_trains_the_same(tiny, tmp_path):
    imdb_mod = pytest.importorskip("data_prep.imdb")
    make_net, arrays = tiny
    np.save(tmp_path / "data.npy", arrays.data)
    imdb = imdb_mod.Imdb(data=np.load(tmp_path / "data.npy", mmap_mode="r"), labels=arrays.labels, set=arrays.set,
                         data_mean=np.zeros(arrays.data.shape[1:], np.float32), classes=["pos"])
    a, _ = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "a", progress=False, plot=False)
    b, _ = tr.train(make_net(), arrays, _opts(epochs=1), tmp_path / "b", progress=False, plot=False)
    _assert_same_weights(_weights(a), _weights(b))


def test_settings_object_and_keywords_train_alike(tiny, tmp_path):
    make_net, imdb = tiny
    settings = tr.TrainSettings(seed=1, progress=False, plot=False)
    a, stats_a = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "a", settings)
    b, stats_b = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "b", seed=1, progress=False, plot=False)
    _assert_same_weights(_weights(a), _weights(b))
    assert stats_a["train"][0]["lossForClassification"] == stats_b["train"][0]["lossForClassification"]
    with pytest.raises(TypeError, match="unknown settings \\['sede'\\]"):
        tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "c", settings, sede=2)
