"""Data-parallel training (reproduce.distributed) on the CPU: gloo, 2 processes.

The nets are the scaled-down ICNNs of the golden cases cnn_train_single / cnn_train_multi
(16 x 16 inputs, 14 images, dropout 0). Batches of 3 over 10 training images (3, 3, 3, 1)
give the two ranks shares of 2 + 1 images and, in the last batch, 1 + 0: the empty share
is exercised too. The two-process runs all happen in one spawn of two workers (to pay the
start-up once); the checks compare what they saved with one-process references (on the CPU).

ICNN_DIST_DEVICE=cuda runs the two workers on cuda:0 and cuda:1 with NCCL (.ci/gpu-check's
ddp step, on a machine with 2 GPUs; tolerances 1e-4 there, the GPU's float32 sums being
added in other orders than the CPU reference's).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from legacy_compat import loadmat
from legacy_compat.simplenn import layers_from_matlab
from reproduce.evaluation.location_instability import _peaks_over_ranks
from reproduce.golden.training_cases import golden_imdb
from reproduce.layers.conv_mask import FilterLossContext
from reproduce.layers.simplenn import SimpleNN
from reproduce.runtime import distributed as dd
from reproduce.training import cnn_train as tr
from reproduce.training.checkpoints import find_checkpoints, load_checkpoint

GOLDEN = Path(__file__).resolve().parents[1] / ".." / "shared" / "golden"
BATCH = 3
JOIN_LIMIT_S = 240       # a hung worker fails the test instead of hanging it (not a speed assertion)
DEVICE = os.environ.get("ICNN_DIST_DEVICE", "cpu")
TOL = 1e-5 if DEVICE == "cpu" else 1e-4


def _tiny(case: str):
    data = loadmat(GOLDEN / f"cnn_train_{case}.mat")
    layers = data.inputs.net.layers
    return (lambda: SimpleNN.from_specs(layers_from_matlab(layers))), golden_imdb(data.inputs.imdb)


def _opts(epochs=2):
    return {"learning_rate": [2e-3, 1e-3, 5e-4], "num_epochs": epochs, "batch_size": BATCH, "weight_decay": 5e-4,
            "momentum": 0.9}


def _state(net):
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _slice_mags(net):
    return [layer.slice_mag.detach().cpu().clone() for _, layer in net.conv_mask_layers()]


def _worst(a: dict, b: dict, skip=("slice_mag",)) -> float:
    """The largest relative difference over the tensors (scaled by each tensor's largest value)."""
    worst = 0.0
    assert a.keys() == b.keys()
    for k in a:
        if any(s in k for s in skip) or not a[k].is_floating_point():
            continue
        scale = max(float(b[k].abs().max()), 1e-12)
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    return worst


# ====================================================================== the two workers
def _init(rank: int, world: int, store: str, **options):
    torch.set_num_threads(1)
    return dd.init_data_parallel(DEVICE, init_method=f"file://{store}", rank=rank, world_size=world,
                                 local_rank=rank, timeout_s=60, **options)


def _worker(rank: int, world: int, tmp: str) -> None:
    """Three runs: MatConvNet's semantics (multi-class), both corrections (multi-class), and a
    single-class run of 2 of 3 epochs whose folder the parent resumes on one process; the
    paper's run claims and the shared stability peaks; last, a run in which rank 1 dies
    (os._exit) in the second training batch of epoch 2 and rank 0 writes down what it saw."""
    tmp_path = Path(tmp)
    dp = _init(rank, world, str(tmp_path / "store"))
    saves = {"count": 0}
    real_save = tr.ckpt.save_checkpoint

    def counting_save(*args, **kwargs):
        saves["count"] += 1
        return real_save(*args, **kwargs)
    tr.ckpt.save_checkpoint = counting_save
    out = {}
    make_net, imdb = _tiny("multi")
    net, stats = tr.train(make_net(), imdb, _opts(), tmp_path / "matconvnet", progress=False, plot=False,
                          device=dp.device)
    out["matconvnet"] = {"state": _state(net), "slice_mags": _slice_mags(net), "stats": stats}
    dp.sync_slice_mag = dp.whole_batch_filter_loss = True
    net, stats = tr.train(make_net(), imdb, _opts(), tmp_path / "corrected", progress=False, plot=False,
                          device=dp.device)
    out["corrected"] = {"state": _state(net), "slice_mags": _slice_mags(net), "stats": stats}
    dp.sync_slice_mag = dp.whole_batch_filter_loss = False
    make_net, imdb = _tiny("single")
    net, stats = tr.train(make_net(), imdb, _opts(epochs=2), tmp_path / "resume", progress=False, plot=False,
                          device=dp.device)
    out["resume"] = {"stats": stats}
    out["saves"] = saves["count"]
    claims = list(dd.claimed_runs(7, dd.store_counter("test/claims")))
    dd.active().barrier("after the claims")
    out["claims"] = claims
    out["peaks"] = _peaks_over_ranks(_fake_peaks, [0, 2, 3, 5, 8])
    out["slicemag_sync"] = _synced_slice_mags(dp, make_net)
    torch.save(out, tmp_path / f"rank{rank}.pt")
    if DEVICE != "cpu":   # NCCL's watchdog would abort rank 0's process: the dead-rank run is gloo's
        os._exit(7 if rank == 1 else 0)

    def die(info):
        if rank == 1 and info.epoch == 2 and info.index == 1:
            os._exit(7)
    start = time.monotonic()
    try:
        tr.train(make_net(), imdb, _opts(epochs=3), tmp_path / "dead", progress=False, plot=False, on_batch=die)
        message = "finished"
    except dd.DistributedError as exc:
        message = f"DistributedError: {exc}"
    except BaseException as exc:  # noqa: BLE001 - written down for the parent to judge
        message = f"{type(exc).__name__}: {exc}"
    (tmp_path / f"rank{rank}.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)   # no orderly shutdown of a group that lost a member


def _slice_mag_batch(make_net, rank: int, step: int):
    """A net's conv_mask layer inputs for one batch of this rank (res[index]) and its labels: rank 1's
    share is empty in step 2; class 2 has no positive in step 1 (3 classes in the multi-class net)."""
    net = make_net()
    gen = torch.Generator().manual_seed(10 * rank + step)
    n = 0 if (rank, step) == (1, 2) else 3 - rank
    res: list = [None] * (len(net.layers) + 1)
    for index, layer in net.conv_mask_layers():
        h, w = layer.feature_size
        x = torch.randn((n, layer.in_channels, h, w), generator=gen)
        res[index] = torch.where(x > 1.5, torch.zeros_like(x), x)     # some maxima 0: the column-1 fill
    labels = -torch.ones((n, 3))
    labels[:, 0] = 1
    if step == 2:
        labels[:, 2] = 1
    return res, labels


def _synced_slice_mags(dp, make_net):
    """sliceMag after two synced updates: coalesced (update_slice_mags, all layers in one all-reduce)
    and layer by layer (update_slice_mag per layer); the number of all-reduces of each."""
    calls = {"n": 0}

    def reduce(t):
        calls["n"] += 1
        return dp.all_reduce_(t)
    out = {}
    for how in ("coalesced", "per_layer"):
        net, calls["n"] = make_net(), 0
        for step in (1, 2):
            res, labels = _slice_mag_batch(make_net, dp.rank, step)
            if how == "coalesced":
                tr.update_slice_mags(net, res, labels, reduce=reduce)
            else:
                for index, layer in net.conv_mask_layers():
                    tr.update_slice_mag(layer, res[index], labels == 1, reduce=reduce)
        out[how] = {"slice_mags": _slice_mags(net), "reduces": calls["n"]}
    return out


def _fake_peaks(chosen):
    """extract_layer_peaks' shape of answer: per image row values that depend on the image only."""
    rows = np.zeros((10, 3), dtype=np.int64)
    rows[chosen] = np.asarray(chosen, dtype=np.int64)[:, None] * np.array([1, 2, 3]) + 1
    return rows, rows * 7, rows.astype(np.float64) / 3, (4, 4)


def _spawn(target, tmp_path: Path, world: int = 2) -> list[int]:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, world, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_LIMIT_S)
    codes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
        codes.append(p.exitcode)
    return codes


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not (GOLDEN / "cnn_train_multi.mat").is_file():
        pytest.skip("golden cases not found (../shared/golden)")
    tmp = tmp_path_factory.mktemp("two-ranks")
    codes = _spawn(_worker, tmp)
    assert codes == [0, 7], f"workers exited with {codes} (rank 1 dies on purpose with 7)"
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False, map_location="cpu") for r in range(2)]


# ====================================================================== one process emulating 2 workers
def _emulate_workers(make_net, imdb, opts, workers: int = 2):
    """our_cnn_train.m's spmd branch in one process: per batch, worker w runs subset(t+w : K : end)
    with its own sliceMag, the derivatives are summed (beta's too), one SGD step divides by the whole
    batch size; each worker then updates its own sliceMag. Returns the net (worker 1's sliceMag),
    every worker's sliceMags and the statistics."""
    nets = [make_net() for _ in range(workers)]
    data = tr.TrainData.from_imdb(imdb)
    sgd = tr.MatConvNetSGD(nets[0].matconvnet_params(), momentum=0.9, weight_decay=5e-4)
    density = tr.label_density(data.labels)
    stats = {"train": [], "val": []}
    for epoch in range(1, opts["num_epochs"] + 1):
        lr = tr.learning_rate_for_epoch(opts["learning_rate"], epoch)
        train_order, val_order = tr.epoch_orders(data.train_idx, data.val_idx, epoch)
        for mode, order in (("train", train_order), ("val", val_order)):
            loss_sum = err_sum = 0.0
            for net in nets:
                net.train(mode == "train")
            for idx in tr.split_into_batches(order, opts["batch_size"]):
                grads, runs = None, []
                for w, net in enumerate(nets):
                    share = idx[w::workers]
                    if len(share) == 0:
                        continue
                    labels = data.labels[torch.from_numpy(share)]
                    ctx = FilterLossContext(labels=labels, epoch=epoch, density=density)
                    net.zero_grad(set_to_none=True)
                    with torch.set_grad_enabled(mode == "train"):
                        res = net.run(data.images(share, torch.device("cpu")), context=ctx)
                        loss = res[-1].sum()
                        if mode == "train":
                            loss.backward()
                            g = [p.grad.clone() for p in net.parameters()]
                            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
                    loss_sum += float(loss.detach().double())
                    err_sum += tr.batch_errors(res[-2], labels, "binerr")
                    runs.append((net, res, labels))
                if mode == "train":
                    for p, g in zip(nets[0].parameters(), grads):
                        p.grad = g
                    sgd.step(lr, batch_size=len(idx))
                    for other in nets[1:]:
                        for p, q in zip(other.parameters(), nets[0].parameters()):
                            p.data.copy_(q.data)
                    for net, res, labels in runs:
                        tr.update_slice_mags(net, res, labels)
            stats[mode].append({"lossForClassification": loss_sum / len(order), "binerr": err_sum / len(order)})
    return nets[0], [_slice_mags(n) for n in nets], stats


def test_two_ranks_equal_one_process_emulating_two_matconvnet_workers(two_ranks):
    tmp, ranks = two_ranks
    make_net, imdb = _tiny("multi")
    net, worker_mags, stats = _emulate_workers(make_net, imdb, _opts())
    got = ranks[0]["matconvnet"]
    assert _worst(got["state"], _state(net)) < TOL
    for r in range(2):   # each rank's own sliceMag, as each MATLAB worker's
        for a, b in zip(ranks[r]["matconvnet"]["slice_mags"], worker_mags[r]):
            torch.testing.assert_close(a, b, rtol=TOL, atol=1e-7)
    assert not torch.equal(ranks[0]["matconvnet"]["slice_mags"][0], ranks[1]["matconvnet"]["slice_mags"][0])
    for mode in ("train", "val"):
        for a, b in zip(got["stats"][mode], stats[mode]):
            assert a["lossForClassification"] == pytest.approx(b["lossForClassification"], rel=TOL / 10)
            assert a["binerr"] == pytest.approx(b["binerr"], abs=1e-12)
    # the same weights on both ranks; checkpoints by rank 0 alone, once per epoch
    assert _worst(ranks[1]["matconvnet"]["state"], got["state"]) == 0.0
    assert sorted(find_checkpoints(tmp / "matconvnet")) == [1, 2]
    assert [ranks[0]["saves"], ranks[1]["saves"]] == [6, 0]   # 3 runs x 2 epochs, rank 0 only
    assert not [p for p in (tmp / "matconvnet").iterdir() if p.name.startswith(".tmp")]
    saved = load_checkpoint(tmp / "matconvnet" / "net-epoch-2.pt")
    for a, b in zip([v for k, v in saved.state_dict.items() if k.endswith("slice_mag")], worker_mags[0]):
        torch.testing.assert_close(a.cpu(), b, rtol=TOL, atol=1e-7)   # worker 1's sliceMag is the one saved


def test_two_ranks_with_both_corrections_equal_one_process_on_the_whole_batch(two_ranks, tmp_path):
    _, ranks = two_ranks
    make_net, imdb = _tiny("multi")
    net, stats = tr.train(make_net(), imdb, _opts(), tmp_path, progress=False, plot=False)
    for r in range(2):
        got = ranks[r]["corrected"]
        assert _worst(got["state"], _state(net)) < TOL
        for a, b in zip(got["slice_mags"], _slice_mags(net)):
            torch.testing.assert_close(a, b, rtol=TOL, atol=1e-7)
        for mode in ("train", "val"):
            for a, b in zip(got["stats"][mode], stats[mode]):
                assert a["lossForClassification"] == pytest.approx(b["lossForClassification"], rel=TOL / 10)
                assert a["binerr"] == pytest.approx(b["binerr"], abs=1e-12)
                assert a["num"] == b["num"]
    # without the corrections the runs differ: the test can tell
    assert _worst(ranks[0]["matconvnet"]["state"], _state(net)) > 1e-4


def test_synced_slice_mag_one_all_reduce_equals_the_per_layer_update(two_ranks):
    """--sync-slicemag: every layer's sums and the counts in one all-reduce per step give, on each rank,
    exactly the sliceMag of the layer-by-layer update (one all-reduce per layer) and, to float rounding,
    that of one process on the whole batch (both ranks' images)."""
    _, ranks = two_ranks
    make_net, _ = _tiny("multi")
    layers = len(list(make_net().conv_mask_layers()))
    one = make_net()
    for step in (1, 2):
        parts = [_slice_mag_batch(make_net, r, step) for r in range(2)]
        res = [None if a is None else torch.cat([a, b]) for a, b in zip(parts[0][0], parts[1][0])]
        tr.update_slice_mags(one, res, torch.cat([parts[0][1], parts[1][1]]))
    for r in range(2):
        got = ranks[r]["slicemag_sync"]
        assert got["coalesced"]["reduces"] == 2 and got["per_layer"]["reduces"] == 2 * layers == 4
        for a, b, c in zip(got["coalesced"]["slice_mags"], got["per_layer"]["slice_mags"], _slice_mags(one)):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, c, rtol=TOL, atol=1e-7)
            assert (a[:, 2] > 0).all() and a.shape[1] == 3          # class 2: first update in step 2


def test_a_two_rank_run_resumes_on_one_process(two_ranks):
    tmp, ranks = two_ranks
    run = tmp / "resume"
    assert sorted(find_checkpoints(run)) == [1, 2]
    before = (run / "net-epoch-2.pt").read_bytes()
    make_net, imdb = _tiny("single")
    _, stats = tr.train(make_net(), imdb, _opts(epochs=3), run, progress=False, plot=False)
    assert sorted(find_checkpoints(run)) == [1, 2, 3]
    assert (run / "net-epoch-2.pt").read_bytes() == before
    assert stats["train"][:2] == ranks[0]["resume"]["stats"]["train"]
    assert len(stats["train"]) == 3 and stats["train"][2]["num"] == 10.0


def test_the_paper_grid_claims_each_run_once_over_the_ranks(two_ranks):
    _, ranks = two_ranks
    claims = [ranks[0]["claims"], ranks[1]["claims"]]
    assert sorted(claims[0] + claims[1]) == list(range(7))


def test_location_stability_peaks_shared_over_ranks_equal_one_process(two_ranks):
    _, ranks = two_ranks
    want = _fake_peaks([0, 2, 3, 5, 8])
    for r in range(2):
        got = ranks[r]["peaks"]
        assert all(np.array_equal(a, b) for a, b in zip(got[:3], want[:3])) and got[3] == want[3]


def test_one_rank_gives_exactly_the_one_process_numbers(tmp_path):
    if not (GOLDEN / "cnn_train_multi.mat").is_file():
        pytest.skip("golden cases not found (../shared/golden)")
    make_net, imdb = _tiny("multi")
    ref, ref_stats = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "ref", progress=False, plot=False)
    dd.init_data_parallel("cpu", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, timeout_s=30)
    try:
        assert dd.active() is not None and dd.active().world == 1
        net, stats = tr.train(make_net(), imdb, _opts(epochs=1), tmp_path / "one", progress=False, plot=False)
    finally:
        dd.shutdown()
    assert _worst(_state(net), _state(ref), skip=()) == 0.0
    for mode in ("train", "val"):
        for a, b in zip(stats[mode], ref_stats[mode]):
            assert a["lossForClassification"] == b["lossForClassification"] and a["binerr"] == b["binerr"]


def test_a_dead_rank_stops_the_other_with_a_clear_message(two_ranks):
    tmp_path, _ = two_ranks
    if DEVICE != "cpu":
        pytest.skip("the dead-rank run is made on gloo (CPU) only")
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("DistributedError: rank 0 of 2: "), message
    assert "another rank stopped or did not answer within 60 s" in message and "resume" in message
    print(f"rank 0 stopped {seconds} s after its start")
    run = tmp_path / "dead"
    assert sorted(find_checkpoints(run)) == [1]            # epoch 1 complete, nothing of epoch 2
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]
    assert load_checkpoint(run / "net-epoch-1.pt").epoch == 1


# ====================================================================== pieces
def test_shares_are_matconvnets_interleaved_subsets():
    idx = np.arange(10, 17)
    assert [dd.share_indices(idx, r, 3).tolist() for r in range(3)] == [[10, 13, 16], [11, 14], [12, 15]]
    assert dd.share_sizes(7, 3) == [3, 2, 2] and dd.share_sizes(1, 2) == [1, 0]


def test_claimed_runs_keep_every_fake_gpu_busy_with_one_run_at_a_time():
    """The scheduler of reproduce.paper on 3 fake devices: each run once, never two on one device."""
    lock, counter = threading.Lock(), {"next": 0}
    busy: set[str] = set()
    done: list[tuple[int, str]] = []
    overlap = []
    # Every worker makes its first claim before any goes on (as GPUs all start at once): without it, on a
    # loaded machine one thread could take every run before another is scheduled (a flaky test).
    all_started = threading.Barrier(3, timeout=60)

    def claim() -> int:
        with lock:
            counter["next"] += 1
            i = counter["next"] - 1
        if i < 3:
            all_started.wait()
        return i

    def device_worker(device: str) -> None:
        for i in dd.claimed_runs(10, claim):
            with lock:
                overlap.append(device in busy)
                busy.add(device)
            time.sleep(0.001 * (i % 3))
            with lock:
                busy.discard(device)
                done.append((i, device))
    threads = [threading.Thread(target=device_worker, args=(f"cuda:{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in done) == list(range(10)) and not any(overlap)
    assert {d for _, d in done} == {"cuda:0", "cuda:1", "cuda:2"}


class _RankOneOfTwo:
    """A DataParallel stand-in: rank 1 of 2, whose partner's rows are this rank's plus 100."""

    rank, world, is_main = 1, 2, False

    def gather_rows(self, local: torch.Tensor, n: int, what: str) -> torch.Tensor:
        whole = local.new_empty((n,) + tuple(local.shape[1:]))
        whole[0::2] = local + 100
        whole[1::2] = local
        return whole


def test_whole_batch_gathers_the_filter_loss_inputs_and_hands_back_this_ranks_rows():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    labels = torch.tensor([[1], [-1]], dtype=torch.int64)
    batch = dd.FilterLossBatch(x, x * 2, torch.ones(2, 3), torch.full((2, 3), 2.0), None, labels)
    whole_batch = dd.WholeBatch(_RankOneOfTwo(), 4)
    whole = whole_batch.gather(batch, "conv6")
    assert whole.x.shape == (4, 3, 2, 2) and torch.equal(whole.x[1::2], x) and torch.equal(whole.mask[1::2], x * 2)
    assert torch.equal(whole.x_mean[1::2], x.mean(dim=(2, 3)))          # taken from x when not given
    assert torch.equal(whole.strength[0::2], torch.full((2, 3), 101.0))  # the partner's rows
    assert torch.equal(whole.sqrtvar[1::2], torch.full((2, 3), 2.0))
    assert whole.labels.dtype == torch.int64 and whole.labels[1::2].tolist() == [[1], [-1]]
    loss = whole_batch.wrap(lambda b: (b.x.sum(dim=(2, 3)), -b.x_mean, torch.ones(3)))
    coef_pos, coef_neg, dbeta = loss(batch, "conv6")
    assert torch.equal(coef_pos, x.sum(dim=(2, 3))) and torch.equal(coef_neg, -x.mean(dim=(2, 3)))
    assert torch.equal(dbeta, torch.zeros(3))                            # beta's derivative on rank 0 only
