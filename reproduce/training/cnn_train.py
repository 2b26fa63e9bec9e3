"""SGD training of an ICNN exactly as the original trains it.

Ports `tool/main/our_cnn_train.m` (MatConvNet's cnn_train with the ICNN
additions) as `learn_icnn.m` / `learn_icnn_multiclass.m` call it:

- epochs ``start+1 .. numEpochs``; the learning rate of epoch e is
  ``learningRate(min(e, numel(learningRate)))`` (a schedule shorter than the
  epochs repeats its last value);
- each epoch reseeds from ``epoch + seed`` and shuffles the training and the
  validation images (`epoch_orders`); batches of ``batchSize``, the last one
  smaller; training in 'normal' mode with dzdy = 1 (backward of the summed
  loss), validation in 'test' mode without backward;
- every batch hands the conv_mask layers the training context of the loss
  layer (`FilterLossContext`: the batch labels, the epoch as `iter`, and the
  label density ``mean(labels > 0)`` per class over the whole imdb when there
  is more than one class);
- MatConvNet's SGD with momentum (`MatConvNetSGD`, accumulateGradients);
- after every training step, the sliceMag update of every conv_mask layer
  (`update_slice_mag`);
- statistics per epoch as extractStats / error_binary / error_multiclass,
  a progress bar per phase, `net-train.png` / `.pdf` after each epoch, and a
  checkpoint per epoch (`reproduce.training.checkpoints`), resumed from automatically.

Randomness. MATLAB's ``rng(epoch + seed); randperm(...)`` stream cannot be
reproduced in Python. Here each epoch seeds a ``torch.Generator`` with
``epoch + seed`` for the two permutations (training order first, then
validation order) and calls ``torch.manual_seed(epoch + seed)`` for
everything else random in the epoch (dropout masks), which makes runs
repeatable and resumable at any epoch boundary without storing RNG state.
To reproduce a MATLAB run exactly, pass its recorded batches
(`batch_order`, replay mode).

Labels must be +1 / -1. MatConvNet reads 0 as "ignore this label" in the
loss, but the ICNN filter loss, sliceMag and the label density would read it
as a negative; rather than mix the two meanings, an imdb with any other value
is rejected (`ValueError`).

Differences from the original, each documented where it happens:
- an imdb without training images is an error (our_cnn_train would only
  evaluate and save nothing);
- a phase without images (no validation split) gets NaN loss and error
  statistics beside num = 0 and time;
- resuming loads the checkpoint's parameters and buffers into the given net
  (MATLAB replaces the whole struct; the network must be the same, which is
  checked);
- cnn_train's options that ICNN never sets are not ported: numSubBatches,
  prefetch, epochSize, other solvers,
  Nesterov, plotDiagnostics, postEpochFn.

Several GPUs or machines (our_cnn_train's ``opts.gpus``): start the command line with
``torchrun --nproc_per_node K``; `train` then runs data-parallel with the original's
semantics (reproduce.runtime.distributed, which documents them and the two corrections).

Command line: ``python -m reproduce.train --help`` (in `reproduce.experiments.train_command`): it runs
through reproduce.experiments.pipeline (dataset, network_init, imdb cache, then `train`); ``--out`` is the output root,
as demo.py's (checkpoints and plots in OUT/mat/<name>/).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from reproduce.layers.conv_mask import FilterLossContext, raise_deferred_errors
from reproduce.runtime.device import resolve_device
from reproduce.runtime.distributed import DistributedError, WholeBatch, active
from reproduce.runtime.interrupt import Terminated, sigterm_as_interrupt
from reproduce.training import checkpoints as ckpt
from reproduce.training.plots import plot_training_stats

__all__ = [
    "SLICE_MAG_FILL_COLUMN1", "SLICE_MAG_FILL_OWN_COLUMN", "BatchInfo", "TrainData", "TrainSettings",
    "MatConvNetSGD", "train", "learning_rate_for_epoch", "epoch_orders", "split_into_batches", "replayed_batches",
    "label_density", "check_labels", "update_slice_mag", "update_slice_mags", "batch_errors",
    "error_name_for", "validation_error",
]

# sliceMag update, where a class's new per-filter mean is exactly 0:
SLICE_MAG_FILL_COLUMN1 = "column1"        # the original: sliceMag(meantmp==0) reads column 1 (linear indexing)
SLICE_MAG_FILL_OWN_COLUMN = "own_column"  # corrected: keep that class's own previous value
SLICE_MAG_MOMENTUM = 0.9                  # our_cnn_train.m: tmptmp = 0.9
SLICE_MAG_FLOOR = 0.1                     # first update: max(meantmp, 0.1)


# ====================================================================== data
@dataclass
class TrainData:
    """The parts of an imdb training reads, checked once.

    `data` N x 3 x H x W (numpy array, memmap or tensor), `labels` N x L
    float32 tensor of +1/-1 (CPU), `train_idx` / `val_idx` 0-based indices of
    the images with set == 1 / set == 2 (our_cnn_train's opts.train / opts.val).
    """

    data: Any
    labels: torch.Tensor
    train_idx: np.ndarray
    val_idx: np.ndarray

    @classmethod
    def from_imdb(cls, imdb: Any) -> "TrainData":
        """Read `imdb.data`, `imdb.labels` (N x L) and `imdb.set` (N,) (data_prep.imdb.Imdb or alike)."""
        data = _field(imdb, "data")
        labels = _field(imdb, "labels")
        sets = _field(imdb, "set")
        labels = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels,
                                            dtype=np.float32))
        if labels.dim() == 1:
            labels = labels[:, None]
        if labels.dim() != 2:
            raise ValueError(f"imdb.labels: expected N x L, got shape {tuple(labels.shape)}")
        sets = np.asarray(sets.cpu() if isinstance(sets, torch.Tensor) else sets).reshape(-1)
        n = int(data.shape[0])
        if labels.shape[0] != n or sets.shape[0] != n:
            raise ValueError(f"imdb: {n} images in data but {labels.shape[0]} rows in labels and {sets.shape[0]} "
                             f"entries in set")
        if len(data.shape) != 4:
            raise ValueError(f"imdb.data: expected N x C x H x W, got shape {tuple(data.shape)}")
        check_labels(labels)
        return cls(data=data, labels=labels, train_idx=np.flatnonzero(sets == 1), val_idx=np.flatnonzero(sets == 2))

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    def images(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """getSimpleBatch: the images `idx` (0-based) as float32 N x C x H x W on `device`."""
        if isinstance(self.data, torch.Tensor):
            x = self.data[torch.from_numpy(idx).to(self.data.device)]
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.data[idx], dtype=np.float32))
        return x.to(device=device, dtype=torch.float32)


def _field(imdb: Any, name: str) -> Any:
    value = imdb.get(name) if isinstance(imdb, dict) else getattr(imdb, name, None)
    if value is None:
        raise ValueError(f"imdb has no {name!r}")
    return value


def check_labels(labels: torch.Tensor) -> None:
    """Reject any label other than +1 / -1 (see the module docstring on 0 = 'ignore')."""
    bad = ~((labels == 1) | (labels == -1))
    if bool(bad.any()):
        values = sorted({float(v) for v in labels[bad].unique()[:5].tolist()})
        raise ValueError(
            f"imdb.labels must be +1 or -1; found {values} at {int(bad.sum())} places. MatConvNet's 0 "
            f"('ignore') is not supported because the ICNN filter loss would treat it as a negative")


def label_density(labels: torch.Tensor) -> torch.Tensor | None:
    """processEpoch: ``mean(labels > 0, 2)`` per class over the whole imdb; None (MATLAB's 0) for one class."""
    if labels.shape[1] <= 1:
        return None
    return (labels > 0).to(torch.float64).mean(dim=0).to(torch.float32)


# ====================================================================== schedule and order
def learning_rate_for_epoch(schedule: float | Sequence[float], epoch: int) -> float:
    """our_cnn_train.m's ``learningRate(min(epoch, numel(learningRate)))``; `epoch` is 1-based."""
    values = [float(v) for v in np.asarray(schedule, dtype=np.float64).reshape(-1)]
    if not values:
        raise ValueError("learning_rate: the schedule is empty")
    return values[min(int(epoch), len(values)) - 1]


def epoch_orders(train_idx: np.ndarray, val_idx: np.ndarray, epoch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """our_cnn_train.m: seed the epoch (``rng(epoch + seed)``), shuffle the training, then the validation images.

    Seeds torch's global generators with ``epoch + seed`` (dropout) and a
    private ``torch.Generator`` with the same value for the two permutations.
    """
    s = int(epoch) + int(seed)
    torch.manual_seed(s)
    gen = torch.Generator().manual_seed(s)
    train = np.asarray(train_idx)[torch.randperm(len(train_idx), generator=gen).numpy()]
    val = np.asarray(val_idx)[torch.randperm(len(val_idx), generator=gen).numpy()]
    return train, val


def split_into_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """processEpoch (our_cnn_train.m), ``for t = 1:batchSize:numel(subset)``: batches, the last one smaller."""
    return [np.asarray(order[t:t + batch_size]) for t in range(0, len(order), int(batch_size))]


def replayed_batches(recorded: Sequence[Any], data: TrainData, batch_size: int,
                     num_epochs: int) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """A recorded batch order -> per epoch (train batches, val batches), 0-based.

    `recorded` lists the index arrays of every getBatch call in order, 1-based
    as MATLAB recorded them: per epoch ceil(nTrain / batchSize) training
    batches, then ceil(nVal / batchSize) validation batches. Each batch must
    come from the right split; there must be enough batches for `num_epochs`.
    """
    nbt = math.ceil(len(data.train_idx) / batch_size)
    nbv = math.ceil(len(data.val_idx) / batch_size)
    per_epoch = nbt + nbv
    batches = [np.asarray(b, dtype=np.float64).reshape(-1) for b in recorded]
    if len(batches) < per_epoch * num_epochs:
        raise ValueError(f"batch_order: {len(batches)} recorded batches, but {num_epochs} epochs of {nbt} training "
                         f"and {nbv} validation batches need {per_epoch * num_epochs}")
    train_set, val_set = set(data.train_idx.tolist()), set(data.val_idx.tolist())
    out = []
    for e in range(num_epochs):
        epoch_batches = []
        for k, b in enumerate(batches[e * per_epoch:(e + 1) * per_epoch]):
            if b.size == 0 or np.any(b != np.round(b)) or b.min() < 1 or b.max() > data.num_images:
                raise ValueError(f"batch_order[{e * per_epoch + k}]: indices must be 1-based image numbers "
                                 f"1..{data.num_images}")
            idx = b.astype(np.int64) - 1
            allowed, split = (train_set, "training") if k < nbt else (val_set, "validation")
            if not set(idx.tolist()) <= allowed:
                raise ValueError(f"batch_order[{e * per_epoch + k}] (epoch {e + 1}) holds images outside the "
                                 f"{split} split")
            epoch_batches.append(idx)
        out.append((epoch_batches[:nbt], epoch_batches[nbt:]))
    return out


# ====================================================================== SGD
class MatConvNetSGD:
    """accumulateGradients of our_cnn_train.m (default solver, no Nesterov), in float32.

    For every parameter whose ``lr * layerLr`` or ``weightDecay * layerDecay``
    is positive::

        g = dzdw / actualBatchSize + weightDecay * layerDecay * w
        m = momentum * m - g
        w = w + lr * layerLr * m

    `params` is `SimpleNN.matconvnet_params()` (ParamInfo: layer_index, j,
    name, param, learning_rate, weight_decay — the layer's multipliers, so the
    conv_mask beta carries 0.05 and 0). The momentum of a parameter is None
    (MATLAB's scalar 0) until its first update.
    """

    def __init__(self, params: Iterable[Any], momentum: float = 0.9, weight_decay: float = 5e-4):
        self.params = list(params)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self, learning_rate: float, batch_size: int) -> None:
        """One update with the gradients in ``param.grad`` (summed over the batch of `batch_size`)."""
        active = [i for i, p in enumerate(self.params)
                  if learning_rate * float(p.learning_rate) > 0 or self.weight_decay * float(p.weight_decay) > 0]
        if not active:
            return
        weights = [self.params[i].param for i in active]
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights]
        for i, w in zip(active, weights):
            if self.buffers[i] is None:
                self.buffers[i] = torch.zeros_like(w, memory_format=torch.preserve_format)
        moms = [self.buffers[i] for i in active]
        decays = [self.weight_decay * float(self.params[i].weight_decay) for i in active]
        rates = [learning_rate * float(self.params[i].learning_rate) for i in active]
        g = torch._foreach_mul(grads, 1.0 / batch_size)
        torch._foreach_add_(g, torch._foreach_mul(weights, decays))
        torch._foreach_mul_(moms, self.momentum)
        torch._foreach_sub_(moms, g)
        torch._foreach_add_(weights, torch._foreach_mul(moms, rates))

    def momentum_by_layer(self, weights_per_layer: Sequence[int]) -> list[list[torch.Tensor | None]]:
        """``state.solverState``: per layer (0-based), per weight, the momentum or None."""
        out: list[list[torch.Tensor | None]] = [[None] * int(n) for n in weights_per_layer]
        for info, buf in zip(self.params, self.buffers):
            out[_layer0(info)][int(info.j)] = buf
        return out

    def load_momentum(self, nested: Sequence[Sequence[torch.Tensor | None]]) -> None:
        """Take momentum saved by `momentum_by_layer` (or read from a MATLAB solverState)."""
        for i, info in enumerate(self.params):
            li, j = _layer0(info), int(info.j)
            m = nested[li][j] if li < len(nested) and j < len(nested[li]) else None
            if m is None:
                self.buffers[i] = None
                continue
            m = torch.as_tensor(m, dtype=info.param.dtype)
            if m.numel() != info.param.numel():
                raise ckpt.CheckpointError(f"momentum of layer {li + 1} weight {j + 1} has {m.numel()} values, "
                                           f"the weight has {info.param.numel()}")
            self.buffers[i] = m.reshape(info.param.shape).to(info.param.device).clone()


def _layer0(info: Any) -> int:
    """ParamInfo.layer_index as a 0-based position in `net.layers`."""
    return int(info.layer_index)


# ====================================================================== sliceMag
@torch.no_grad()
def update_slice_mag(layer: Any, layer_input: torch.Tensor | None, positives: torch.Tensor,
                     fill: str = SLICE_MAG_FILL_COLUMN1,
                     reduce: Callable[[torch.Tensor], Any] | None = None) -> None:
    """The sliceMag update of our_cnn_train.m for one conv_mask layer, after a training step.

    `layer_input` is the layer's input of that batch's forward (``res(lay).x``,
    N x D x H x W), `positives` the N x L boolean ``class == 1``. sliceMag is
    created as zeros(D, L) the first time. For each class with positives in
    the batch, ``meantmp`` = the mean over those images of each map's maximum
    over H and W; then

    - a column that still sums to 0 is set to ``max(meantmp, 0.1)``;
    - otherwise, where meantmp == 0 it is replaced by the OLD sliceMag value
      and the column becomes ``0.9 * sliceMag + 0.1 * meantmp``.

    The original writes ``meantmp(meantmp==0) = sliceMag(meantmp==0)``:
    linear indexing with a D-element mask reads COLUMN 1 whatever the class
    (after column 1 was updated in the same batch). That is the default
    (`SLICE_MAG_FILL_COLUMN1`); `SLICE_MAG_FILL_OWN_COLUMN` reads the class's
    own column instead.

    `reduce` (several ranks with ``sync_slice_mag``, reproduce.runtime.distributed): the per-class sums
    of the maxima over the positives and the positive counts are summed over the ranks by
    ``reduce(tensor)`` (in place, one call) before the means are taken, so that every rank computes
    the update of the whole batch; `layer_input` may then be None (a rank without images).
    """
    _check_fill(fill)
    if reduce is None:
        means, present = _local_class_means(layer_input, positives)
    else:
        (means, present), = _synced_class_means([layer], [layer_input], positives, reduce)
    _set_slice_mag(layer, layer_input, means, present, fill)


def update_slice_mags(net: Any, res: Sequence[torch.Tensor] | None, labels: torch.Tensor,
                      fill: str = SLICE_MAG_FILL_COLUMN1,
                      reduce: Callable[[torch.Tensor], Any] | None = None) -> None:
    """`update_slice_mag` for every conv_mask layer of `net`, with the inputs `res` of the batch
    (None: a rank without images, with `reduce`). With `reduce`, every layer's sums and the
    counts go to the other ranks in ONE call (one flat tensor)."""
    positives = labels == 1
    indexed = list(net.conv_mask_layers())
    layers = [layer for _, layer in indexed]
    inputs = [None if res is None else res[index] for index, _ in indexed]
    if reduce is None:
        for layer, layer_input in zip(layers, inputs):
            update_slice_mag(layer, layer_input, positives, fill)
        return
    _check_fill(fill)
    if not layers:
        return
    for layer, layer_input, (means, present) in zip(layers, inputs,
                                                    _synced_class_means(layers, inputs, positives, reduce)):
        _set_slice_mag(layer, layer_input, means, present, fill)


def _check_fill(fill: str) -> None:
    if fill not in (SLICE_MAG_FILL_COLUMN1, SLICE_MAG_FILL_OWN_COLUMN):
        raise ValueError(f"slice_mag_fill must be {SLICE_MAG_FILL_COLUMN1!r} or {SLICE_MAG_FILL_OWN_COLUMN!r}, "
                         f"got {fill!r}")


def _depth(layer: Any, layer_input: torch.Tensor | None) -> int:
    return int(layer_input.shape[1]) if layer_input is not None else int(layer.in_channels)


def _local_class_means(layer_input: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One process: (L x D, each class's mean over its positives of each map's maximum over H and W;
    (L,) bool, the class has positives in the batch). A class without positives has NaN means."""
    maxima = layer_input.detach().amax(dim=(2, 3))  # N x D: max over H and W of each map
    means = torch.stack([maxima[positives[:, lab]].mean(dim=0) for lab in range(int(positives.shape[1]))])
    return means, positives.any(dim=0)


def _synced_class_means(layers: Sequence[Any], inputs: Sequence[torch.Tensor | None], positives: torch.Tensor,
                        reduce: Callable[[torch.Tensor], Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Several ranks: per layer, `_local_class_means` of the whole batch. The positive counts and every
    layer's per-class sums travel as one flat tensor, summed over the ranks by one `reduce`."""
    depths = [_depth(layer, x) for layer, x in zip(layers, inputs)]
    device = next((x.device for x in inputs if x is not None), positives.device)
    sums = [_class_sums(x, positives, d, device) for x, d in zip(inputs, depths)]
    num_labels = int(positives.shape[1])
    flat = torch.cat([sums[0][1]] + [s.reshape(-1) for s, _ in sums])
    reduce(flat)
    counts, offset, out = flat[:num_labels], num_labels, []
    for d in depths:
        layer_sums = flat[offset:offset + num_labels * d].view(num_labels, d)
        out.append((layer_sums / counts[:, None], counts > 0))
        offset += num_labels * d
    return out


def _class_sums(layer_input: torch.Tensor | None, positives: torch.Tensor, depth: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L x D sums over each class's positives of each map's maximum, (L,) positive counts), float32."""
    num_labels = int(positives.shape[1])
    if layer_input is None or layer_input.shape[0] == 0:
        return (torch.zeros(num_labels, depth, dtype=torch.float32, device=device),
                torch.zeros(num_labels, dtype=torch.float32, device=device))
    maxima = layer_input.detach().amax(dim=(2, 3)).to(torch.float32)
    pos = positives.to(device=device, dtype=torch.float32)
    return pos.t() @ maxima, pos.sum(dim=0)


def _set_slice_mag(layer: Any, layer_input: torch.Tensor | None, means: torch.Tensor, present: torch.Tensor,
                   fill: str) -> None:
    """The layer's new sliceMag (D x L float32) from the batch's class means (L x D) of the classes
    `present` (L,), with the update rule of `update_slice_mag`, without waiting for the device:
    every class's column is computed and kept where the class has positives."""
    num_labels = int(means.shape[0])
    device = means.device
    current = layer.slice_mag
    if current is None or current.numel() == 0:
        slice_mag = torch.zeros(_depth(layer, layer_input), num_labels, dtype=torch.float32, device=device)
    else:
        slice_mag = current.detach().to(device=device, dtype=torch.float32).clone()
    first_time = slice_mag.to(torch.float64).sum(dim=0) == 0
    floor = torch.full((), SLICE_MAG_FLOOR, dtype=torch.float32, device=device)   # filled there: no copy
    present = present.to(device)
    for lab in range(num_labels):
        meantmp = means[lab]
        source = slice_mag[:, 0] if fill == SLICE_MAG_FILL_COLUMN1 else slice_mag[:, lab]
        later = slice_mag[:, lab] * SLICE_MAG_MOMENTUM + torch.where(meantmp == 0, source, meantmp) * (
            1 - SLICE_MAG_MOMENTUM)
        first = torch.fmax(meantmp, floor)               # fmax ignores NaN like MATLAB's max
        slice_mag[:, lab] = torch.where(present[lab], torch.where(first_time[lab], first, later), slice_mag[:, lab])
    layer.slice_mag = slice_mag


# ====================================================================== statistics
def error_name_for(loss_type: str) -> str:
    """our_cnn_train: 'top1err' (error_multiclass) for ourloss_softmaxlog, else 'binerr' (error_binary)."""
    return "top1err" if loss_type == "ourloss_softmaxlog" else "binerr"


def batch_errors(prediction: torch.Tensor, labels: torch.Tensor, error_name: str) -> float:
    """our_cnn_train.m's error_binary (wrong signs / labelNum) or error_multiclass (top-1 misses), summed."""
    pred = prediction.detach().reshape(labels.shape[0], -1)
    if error_name == "top1err":
        return float((pred.argmax(dim=1) != labels.argmax(dim=1)).sum())
    return float((pred * labels < 0).sum()) / labels.shape[1]


def _phase_stats(loss_sum: float, err_sum: float, num: int, elapsed: float, error_name: str) -> dict[str, float]:
    """extractStats (our_cnn_train.m): the running averages of a phase.

    A phase without images (an empty validation split) has NaN loss and
    error where MATLAB's struct would only hold num and time.
    """
    if num == 0:
        return {"lossForClassification": math.nan, error_name: math.nan, "num": 0.0, "time": float(elapsed)}
    return {"lossForClassification": loss_sum / num, error_name: err_sum / num, "num": float(num),
            "time": float(elapsed)}


@dataclass
class BatchInfo:
    """What `on_batch` callbacks receive after each batch (its step and sliceMag update done)."""

    epoch: int
    mode: str            # 'train' or 'val'
    index: int           # 0-based batch number within the phase
    count: int           # batches in the phase
    indices: np.ndarray  # 0-based image indices of the batch
    labels: torch.Tensor  # N x L (+1/-1), on the training device
    stats: dict[str, float] = field(default_factory=dict)  # the phase's running statistics


# ====================================================================== settings
@dataclass
class TrainSettings:
    """How `train` runs (everything but the net, the imdb, the options and the folder).

    device: "cpu", "cuda", "cuda:1" ...
    seed: opts.randomSeed; epoch e is seeded with e + seed.
    batch_order: replay mode: every recorded getBatch call's indices (1-based), per epoch the
      training then the validation batches.
    save_mat: also write ``net-epoch-N.mat`` (MATLAB; `mat_version` "7.3" or "5").
    progress: progress bars and epoch summaries on stderr.
    resume: continue from the last checkpoint in the folder (our .pt or a MATLAB .mat, e.g. the
      original code's). With False, a folder that already holds checkpoints is an error.
    meta: the net's meta (network_init's), stored in checkpoints.
    slice_mag_fill: `SLICE_MAG_FILL_COLUMN1` (original) or `SLICE_MAG_FILL_OWN_COLUMN`.
    plot: write net-train.png / .pdf after each epoch.
    on_batch / on_epoch: callbacks after each batch (`BatchInfo`) and after each epoch's
      checkpoint is written (epoch, stats).
    run_options: what defines the run beside the training options (dataset, categories, model,
      dropout, loss, image size ...: reproduce.experiments.pipeline's); stored in every checkpoint and
      compared when resuming (`reproduce.training.checkpoints.resume_differences`).
    resume_anyway: resume from checkpoints written with other options (each difference is
      said); by default they stop the run before any work (`ResumeMismatchError`).
    """

    device: str | torch.device = "cpu"
    seed: int = 0
    batch_order: Sequence[Any] | None = None
    save_mat: bool = False
    progress: bool = True
    resume: bool = True
    meta: Any = None
    slice_mag_fill: str = SLICE_MAG_FILL_COLUMN1
    plot: bool = True
    mat_version: str = "7.3"
    on_batch: Callable[[BatchInfo], None] | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    run_options: dict | None = None
    resume_anyway: bool = False


@dataclass
class _Run:
    """What `train` fixes before the first epoch (checked options, data, device)."""

    settings: TrainSettings
    exp_dir: Path
    device: torch.device
    data: TrainData
    batch_size: int
    num_epochs: int
    schedule: Any
    replay: list | None
    options: dict[str, Any]
    meta: Any
    density: torch.Tensor | None
    error_name: str
    dp: Any = None              # reproduce.runtime.distributed.DataParallel when several ranks train together

    @property
    def is_main(self) -> bool:
        return self.dp is None or self.dp.is_main


# ====================================================================== one phase of an epoch
@dataclass
class EpochSetup:
    net: Any
    data: TrainData
    epoch: int
    learning_rate: float
    sgd: MatConvNetSGD
    density: torch.Tensor | None
    device: torch.device
    error_name: str
    slice_mag_fill: str
    progress: bool
    on_batch: Callable[[BatchInfo], None] | None
    dp: Any = None


def _batch_step(setup: EpochSetup, idx: np.ndarray, training: bool) -> tuple[float, float, torch.Tensor, np.ndarray]:
    """One batch of processEpoch: forward (and, training, backward, the SGD step, sliceMag).

    With several ranks (`setup.dp`) this rank takes its share of the batch, the gradients are
    summed over the ranks and the step divides by the whole batch size (accumulateGradients;
    see reproduce.runtime.distributed). Returns (summed loss, summed errors, labels, indices) of the
    images this process ran."""
    net, dp = setup.net, setup.dp
    share = idx if dp is None else dp.share(idx)
    labels = setup.data.labels[torch.from_numpy(np.asarray(share, dtype=np.int64))].to(setup.device)
    loss, errors, res = 0.0, 0.0, None
    if training:
        net.zero_grad(set_to_none=True)
    if len(share) > 0:
        context = FilterLossContext(labels=labels, epoch=setup.epoch, density=setup.density)
        if training and dp is not None and dp.whole_batch_filter_loss:
            context.whole_batch = WholeBatch(dp, len(idx))
        x = setup.data.images(share, setup.device)
        with torch.set_grad_enabled(training):
            res = net.run(x, context=context)
            loss_t = res[-1].sum()
            if training:
                loss_t.backward()
        loss, errors = float(loss_t.detach().to(torch.float64)), batch_errors(res[-2], labels, setup.error_name)
    elif training and dp.whole_batch_filter_loss:
        WholeBatch(dp, len(idx)).participate(net, setup.data.num_classes)
    if training:
        if dp is not None:
            dp.sum_gradients([info.param for info in setup.sgd.params])
        setup.sgd.step(setup.learning_rate, batch_size=len(idx))
        if res is not None or (dp is not None and dp.sync_slice_mag):
            reduce = dp.all_reduce_ if dp is not None and dp.sync_slice_mag else None
            update_slice_mags(net, res, labels, setup.slice_mag_fill, reduce)
    return loss, errors, labels, share


class _PhaseClock:
    """cnn_train's phase statistics and timing (extractStats, the first-iterations adjustment)."""

    def __init__(self, error_name: str):
        self.error_name = error_name
        self.loss_sum = self.err_sum = 0.0
        self.num = 0
        self.adjust = 0.0
        self.start = time.perf_counter()
        self.stats = _phase_stats(0.0, 0.0, 0, 0.0, error_name)

    def add(self, k: int, loss: float, errors: float, count: int) -> dict[str, float]:
        """Account batch `k` (0-based) of `count` images; returns the running statistics."""
        self.num += count
        self.loss_sum += loss
        self.err_sum += errors
        elapsed = time.perf_counter() - self.start + self.adjust
        batch_time = elapsed - self.stats["time"]
        self.stats = _phase_stats(self.loss_sum, self.err_sum, self.num, elapsed, self.error_name)
        if k == 3:  # cnn_train: compensate for the first three iterations, which are outliers
            self.adjust = 4 * batch_time - elapsed
            self.stats["time"] = elapsed + self.adjust
        return self.stats

    def speed_text(self) -> str:
        s = self.stats
        return (f"{self.num / max(s['time'], 1e-12):.1f} Hz  loss {s['lossForClassification']:.4f}"
                f"  {self.error_name} {s[self.error_name]:.3f}")


def process_phase(setup: EpochSetup, mode: str, batches: list[np.ndarray]) -> dict[str, float]:
    """processEpoch of our_cnn_train.m for one phase ('train' or 'val')."""

    training = mode == "train"
    setup.net.train(training)
    clock = _PhaseClock(setup.error_name)
    bar = tqdm(total=len(batches), desc=f"epoch {setup.epoch:02d} {mode:5s}", unit="batch",
               disable=not setup.progress, leave=True, dynamic_ncols=True)
    try:
        for k, idx in enumerate(batches):
            loss, errors, labels, share = _batch_step(setup, idx, training)
            stats = clock.add(k, loss, errors, len(share))
            if setup.progress:
                bar.set_postfix_str(clock.speed_text(), refresh=False)
                bar.update(1)
            if setup.on_batch is not None:
                setup.on_batch(BatchInfo(setup.epoch, mode, k, len(batches), share, labels, dict(stats)))
    finally:
        bar.close()
    raise_deferred_errors(setup.net)      # checks conv_mask kept on the GPU during the phase's steps
    return clock.stats if setup.dp is None else _stats_over_ranks(setup.dp, clock)


def _stats_over_ranks(dp: Any, clock: _PhaseClock) -> dict[str, float]:
    """accumulateStats (our_cnn_train.m): every field but num averaged over the ranks, weighted by
    their image counts; num summed. The loss and error sums are added in float64."""
    num = clock.num
    t = torch.tensor([clock.loss_sum, clock.err_sum, float(num), clock.stats["time"] * num], dtype=torch.float64)
    t = t.to(dp.device)
    dp.all_reduce_(t, "accumulating the epoch statistics (accumulateStats)")
    loss_sum, err_sum, total, time_sum = t.cpu().tolist()
    elapsed = time_sum / total if total > 0 else clock.stats["time"]
    return _phase_stats(loss_sum, err_sum, int(total), elapsed, clock.error_name)


def validation_error(net: Any, imdb: Any, device: str | torch.device = "cpu", batch_size: int = 32,
                     progress: bool = False) -> dict[str, float]:
    """processEpoch's 'val' phase alone (our_cnn_train.m: test mode, no update) on the imdb's
    validation images (set == 2): the statistics a checkpoint records for its last epoch, measured
    now on `net` (lossForClassification, binerr or top1err, num, time)."""
    dev = resolve_device(device)
    data = TrainData.from_imdb(imdb)
    if len(data.val_idx) == 0:
        raise ValueError("imdb.set has no validation images (set == 2): there is nothing to measure")
    density = label_density(data.labels)
    setup = EpochSetup(net.to(dev), data, 1, 0.0, None, None if density is None else density.to(dev), dev,
                        error_name_for(str(net.layer_types[-1])), SLICE_MAG_FILL_COLUMN1, progress, None)
    return process_phase(setup, "val", split_into_batches(np.sort(data.val_idx), int(batch_size)))


# ====================================================================== train
def _opt(opts: Any, name: str, default: Any = None) -> Any:
    value = opts.get(name, default) if isinstance(opts, dict) else getattr(opts, name, default)
    if value is None:
        raise ValueError(f"training options have no {name!r}")
    return value


def _options_record(opts: Any, seed: int, slice_mag_fill: str, replay: bool) -> dict[str, Any]:
    return {
        "learning_rate": [float(v) for v in np.asarray(_opt(opts, "learning_rate"), dtype=np.float64).reshape(-1)],
        "num_epochs": int(_opt(opts, "num_epochs")),
        "batch_size": int(_opt(opts, "batch_size")),
        "weight_decay": float(_opt(opts, "weight_decay", 5e-4)),
        "momentum": float(_opt(opts, "momentum", 0.9)),
        "seed": int(seed),
        "slice_mag_fill": slice_mag_fill,
        "replay": bool(replay),
    }


def _weights_per_layer(net: Any) -> list[int]:
    counts = [0] * len(net.layers)
    for info in net.matconvnet_params():
        li = _layer0(info)
        counts[li] = max(counts[li], int(info.j) + 1)
    return counts


def _param_names(net: Any) -> dict[tuple[int, int], str]:
    names = {id(p): n for n, p in net.named_parameters()}
    return {(_layer0(i), int(i.j)): names[id(i.param)] for i in net.matconvnet_params() if id(i.param) in names}


def _training_state(net: Any, sgd: MatConvNetSGD, stats: dict, epoch: int, options: dict, meta: Any) -> ckpt.TrainingState:
    specs = net.to_specs()
    return ckpt.TrainingState(epoch=epoch, specs=specs, momentum=sgd.momentum_by_layer(_weights_per_layer(net)),
                              stats={m: [dict(s) for s in stats[m]] for m in ("train", "val")},
                              state_dict=dict(net.state_dict()), options=options, meta=meta)


def _restore(net: Any, state: ckpt.TrainingState, device: torch.device) -> Any:
    """loadState: the checkpoint's parameters and buffers (weights, beta, sliceMag ...) loaded into `net`.

    A MATLAB checkpoint has no state_dict: its specs are built into a net
    first. `net` keeps its identity and runtime settings.
    """
    values = state.state_dict
    if values is None:
        values = type(net).from_specs(state.specs).state_dict()
    try:
        net.load_state_dict(values, strict=True)
    except RuntimeError as exc:
        raise ckpt.CheckpointMismatchError(
            f"{state.source}: its parameters do not fit the network being trained ({str(exc).strip()[:300]})") from exc
    return net.to(device)


def _storable_meta(meta: Any) -> Any:
    """`meta` if checkpoints can store it; else None, with a warning (checked before training starts)."""
    try:
        ckpt.to_plain(meta, "meta")
    except TypeError as exc:
        warnings.warn(f"the net's meta cannot be stored in checkpoints and is left out ({exc})", stacklevel=4)
        return None
    return meta


def _say(progress: bool, text: str) -> None:
    if progress:
        tqdm.write(text, file=sys.stderr)


def _format_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if k not in ("num", "time")) + \
        f"  ({int(stats['num'])} images, {stats['time']:.1f} s)"


def _prepare(net: Any, imdb: Any, opts: Any, exp_dir: Path, s: TrainSettings) -> _Run:
    """Check the imdb and the options once, before anything is written (our_cnn_train's set-up)."""
    dev = resolve_device(s.device)
    data = TrainData.from_imdb(imdb)
    if len(data.train_idx) == 0:
        raise ValueError("imdb.set has no training images (set == 1): there is nothing to train on")
    batch_size = int(_opt(opts, "batch_size"))
    num_epochs = int(_opt(opts, "num_epochs"))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    schedule = _opt(opts, "learning_rate")
    learning_rate_for_epoch(schedule, 1)  # checks that it is not empty
    replay = replayed_batches(s.batch_order, data, batch_size, num_epochs) if s.batch_order is not None else None
    density = label_density(data.labels)
    return _Run(settings=s, exp_dir=exp_dir, device=dev, data=data, batch_size=batch_size, num_epochs=num_epochs,
                schedule=schedule, dp=active(), replay=replay,
                options={**_options_record(opts, s.seed, s.slice_mag_fill, replay is not None),
                         "run": dict(s.run_options or {})},
                meta=_storable_meta(s.meta if s.meta is not None else getattr(net, "meta", None)),
                density=None if density is None else density.to(dev),
                error_name=error_name_for(str(net.layer_types[-1])))


def _resume(net: Any, run: _Run, opts: Any) -> tuple[Any, MatConvNetSGD, dict, int]:
    """findLastCheckpoint / loadState: (net, solver, stats so far, last complete epoch).

    With several ranks, rank 0 reads the checkpoint and the others take its state
    (`_start_from_rank0`): every rank starts from the same weights, momentum and statistics."""
    if run.dp is None:
        return _resume_here(net, run, opts)
    if not run.dp.is_main:
        return _start_from_rank0(net, _new_solver(net, opts), run, None)
    try:
        net, sgd, stats, start = _resume_here(net, run, opts)
    except Exception as exc:
        _start_from_rank0(net, None, run, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    return _start_from_rank0(net, sgd, run, {"start": start, "stats": stats})


def _new_solver(net: Any, opts: Any) -> MatConvNetSGD:
    return MatConvNetSGD(net.matconvnet_params(), momentum=_opt(opts, "momentum", 0.9),
                         weight_decay=_opt(opts, "weight_decay", 5e-4))


def _start_from_rank0(net: Any, sgd: MatConvNetSGD | None, run: _Run, info: dict | None) -> tuple:
    """Rank 0's starting point (weights, buffers, momentum, statistics, epoch) on every rank."""
    dp = run.dp
    if dp.is_main and "error" not in info:
        cpu = [[None if m is None else m.detach().cpu() for m in layer]
               for layer in sgd.momentum_by_layer(_weights_per_layer(net))]
        info = dict(info, state={k: v.detach().cpu() for k, v in net.state_dict().items()}, momentum=cpu,
                    meta=run.meta)
    info = dp.broadcast_object(info, "receiving rank 0's starting point (resume)")
    if "error" in info:
        if dp.is_main:
            return None
        raise DistributedError(f"rank {dp.rank}: rank 0 could not start training: {info['error']}")
    if not dp.is_main:
        net.load_state_dict(info["state"], strict=True)
        net = net.to(run.device)
        sgd.load_momentum(info["momentum"])
        run.meta = info["meta"]
    return net, sgd, info["stats"], int(info["start"])


def _resume_here(net: Any, run: _Run, opts: Any) -> tuple[Any, MatConvNetSGD, dict, int]:
    stats: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
    momentum_state = None
    start = ckpt.last_checkpoint_epoch(run.exp_dir)
    if start > 0:
        if not run.settings.resume:
            raise ckpt.CheckpointError(
                f"{run.exp_dir}: already holds checkpoints (up to net-epoch-{start}); they are never overwritten. "
                f"Resume from them (resume=True), choose another folder, or delete them")
        state = ckpt.load_any_checkpoint(run.exp_dir, start)
        ckpt.check_architecture(ckpt.architecture_of(net.to_specs()), ckpt.architecture_of(state.specs), state.source)
        _check_same_run(net, state, run)
        net = _restore(net, state, run.device)
        momentum_state = state.momentum
        stats = {m: list(state.stats.get(m, []))[:start] for m in ("train", "val")}
        if state.meta is not None and run.meta is None:
            run.meta = state.meta
        _say(run.settings.progress, f"train: resuming by loading epoch {start} ({state.source.name})")
    sgd = _new_solver(net, opts)
    if momentum_state is not None:
        sgd.load_momentum(momentum_state)
    return net, sgd, stats, start


def _check_same_run(net: Any, state: ckpt.TrainingState, run: _Run) -> None:
    """Stop, before any work, when the checkpoint was written with other options than those asked
    for (each difference named), unless resume_anyway; say what could not be compared."""
    diffs = ckpt.check_resume(run.exp_dir, state.source, state.options or {}, run.options,
                              resume_anyway=run.settings.resume_anyway, recorded_specs=state.specs,
                              requested_specs=net.to_specs())
    if diffs:
        _say(True, f"train: resuming anyway, with other options than the checkpoint's: {'; '.join(diffs)}")
    elif ckpt.unrecorded_options(state.options or {}) and run.options.get("run"):
        _say(run.settings.progress, f"train: {state.source.name} does not record its run's options (dataset, "
                                    f"category, seed ...); only the network and its dropout were compared")


def _epoch_batches(run: _Run, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The epoch's seeding and shuffling, then its training and validation batches (or the replayed ones)."""
    train_order, val_order = epoch_orders(run.data.train_idx, run.data.val_idx, epoch, run.settings.seed)
    if run.dp is not None and run.dp.rank > 0:  # dropout masks of its own on every other rank
        torch.manual_seed(epoch + run.settings.seed + run.dp.rank * 2**32)
    if run.replay is not None:
        return run.replay[epoch - 1]
    return split_into_batches(train_order, run.batch_size), split_into_batches(val_order, run.batch_size)


def _run_epoch(net: Any, sgd: MatConvNetSGD, run: _Run, epoch: int) -> tuple[dict, dict, float]:
    """processEpoch 'train' then 'val': (train stats, val stats, learning rate)."""
    s = run.settings
    lr = learning_rate_for_epoch(run.schedule, epoch)
    train_batches, val_batches = _epoch_batches(run, epoch)
    setup = EpochSetup(net, run.data, epoch, lr, sgd, run.density, run.device, run.error_name, s.slice_mag_fill,
                        s.progress and run.is_main, s.on_batch, run.dp)
    return process_phase(setup, "train", train_batches), process_phase(setup, "val", val_batches), lr


def _save_epoch(net: Any, sgd: MatConvNetSGD, run: _Run, stats: dict, epoch: int) -> None:
    """saveState / saveStats: the epoch's checkpoint(s), then the plots (rank 0 alone, as worker 1)."""
    if not run.is_main:
        return
    s = run.settings
    state = _training_state(net, sgd, stats, epoch, run.options, run.meta)
    if s.save_mat:
        ckpt.save_mat_checkpoint(ckpt.checkpoint_path(run.exp_dir, epoch, "mat"), state, version=s.mat_version)
    ckpt.save_checkpoint(ckpt.checkpoint_path(run.exp_dir, epoch, "pt"), state, _param_names(net))
    if s.plot:
        plot_training_stats(stats, run.exp_dir)


def _settings_from(settings: TrainSettings | None, overrides: dict[str, Any]) -> TrainSettings:
    """`settings` (or the defaults) with keyword overrides, each checked to be a TrainSettings field."""
    names = set(TrainSettings.__dataclass_fields__)
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"train() got unknown settings {unknown}; TrainSettings has {sorted(names)}")
    base = settings if settings is not None else TrainSettings()
    return dataclasses.replace(base, **overrides) if overrides else base


def train(net: Any, imdb: Any, opts: Any, exp_dir: str | Path, settings: TrainSettings | None = None,
          **overrides: Any) -> tuple[Any, dict[str, list[dict[str, float]]]]:
    """Train `net` on `imdb` as our_cnn_train.m does; returns ``(net, stats)``.

    Ports tool/main/our_cnn_train.m (called from learn_icnn.m /
    learn_icnn_multiclass.m with ``net.meta.trainOpts``).

    Args:
      net: a `reproduce.layers.simplenn.SimpleNN` (its last layer the loss).
      imdb: `data_prep.imdb.Imdb` or anything with `data` (N x C x H x W,
        mean-subtracted), `labels` (N x L, +1/-1) and `set` (N,: 1 train, 2 val).
      opts: `TrainOpts` (learning_rate list per epoch, num_epochs, batch_size,
        weight_decay, momentum) or a dict with those keys.
      exp_dir: where ``net-epoch-N.pt`` (and ``.mat``), ``net-train.png/.pdf`` go.
      settings: a `TrainSettings` (device, seed, replay, checkpoints, callbacks ...);
        keyword arguments named like its fields override it (``train(..., device="cuda")``).

    Returns `net` itself, trained (when resuming, the checkpoint's parameters
    and buffers are loaded into it first), and ``{"train": [...], "val": [...]}``:
    per epoch a dict of lossForClassification, binerr (or top1err), num, time.

    Ctrl-C (KeyboardInterrupt) leaves only complete checkpoints; run again to resume. SIGTERM
    (what a batch scheduler sends before it kills a job) is handled the same way while training
    runs in the main thread: it raises `reproduce.interrupt.Terminated`, a KeyboardInterrupt.
    """
    s = _settings_from(settings, overrides)
    if s.save_mat and (why := ckpt.mat_checkpoint_problem(net.layer_types)) is not None:
        raise ckpt.CheckpointError(f"save_mat (--save-mat) cannot write this net as net-epoch-N.mat: {why}")
    exp_dir = Path(exp_dir)
    run = _prepare(net, imdb, opts, exp_dir, s)
    if run.is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(exp_dir)
    net, sgd, stats, start = _resume(net.to(run.device), run, opts)
    epoch = start
    restore_sigterm = sigterm_as_interrupt()        # SIGTERM (a scheduler stopping the job) acts as Ctrl-C
    try:
        for epoch in range(start + 1, run.num_epochs + 1):
            train_stats, val_stats, lr = _run_epoch(net, sgd, run, epoch)
            stats["train"].append(train_stats)
            stats["val"].append(val_stats)
            _save_epoch(net, sgd, run, stats, epoch)
            _say(s.progress and run.is_main, f"epoch {epoch:02d} (lr {lr:.3g}): train {_format_stats(train_stats)} | "
                             f"val {_format_stats(val_stats)}")
            if s.on_epoch is not None:
                s.on_epoch(epoch, stats)
    except KeyboardInterrupt as exc:
        if not run.is_main:
            raise
        done = ckpt.last_checkpoint_epoch(exp_dir)
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        _say(True, f"train: {how} during epoch {epoch}; checkpoints up to epoch {done} are complete in "
                   f"{exp_dir}. Run the same command again to resume.")
        raise
    finally:
        restore_sigterm()
    return net, stats

