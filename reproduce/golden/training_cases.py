"""Golden-case adapter for `our_cnn_train` (tool/main/our_cnn_train.m).

The `cnn_train_<variant>.mat` cases (../shared/golden/README.md) ran the
original training for 3 epochs on a scaled-down ICNN and recorded every
getBatch call. The adapter replays that batch order through
`reproduce.train.train` and returns, in MATLAB layout:

- `net`: the final net, i.e. the case's input net as our_cnn_train leaves
  it: the trained weights (incl. the conv_mask beta) and sliceMag, the fields
  vl_simplenn_tidy / our_cnn_train add (empty `weights`, `learningRate`,
  `weightDecay` on layers without weights; `precious = 1` on the layer before
  the loss), and the loss layer's last training context (`class` of the last
  batch as 1 x 1 x L x N, `iter` = last epoch, `density`);
- `stats`: train / val statistics per epoch;
- `checkpoint_state`: the solver state of the last checkpoint (momentum per
  layer and weight in MATLAB layout; the scalar 0 where a weight was never
  updated) and its `stats` (the last epoch's).

The `time` statistics are wall-clock seconds of the Octave run: they are
checked to be present, finite and non-negative, not compared.
"""
from __future__ import annotations

import math
import tempfile
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from legacy_compat.mattypes import MatStruct, cell, cell_items, scalar
from legacy_compat.parity import TRAINING_RTOL, register
from legacy_compat.simplenn import filters_to_matlab, layers_from_matlab, maps_to_torch, vector_to_matlab
from reproduce.layers.simplenn import SimpleNN
from reproduce.training import checkpoints as ckpt
from reproduce.training.cnn_train import BatchInfo, label_density, train

_FILTER_LAYERS = ("conv", "conv_mask", "convt")


def _time_is_plausible(port: Any, golden: Any) -> tuple[bool, float]:
    """A wall-clock time: one finite, non-negative number (its value cannot match Octave's)."""
    try:
        v = np.asarray(port.detach().cpu() if isinstance(port, torch.Tensor) else port, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False, math.inf
    ok = v.size == 1 and bool(np.isfinite(v[0])) and v[0] >= 0
    return ok, 0.0 if ok else math.inf


def golden_imdb(imdb: MatStruct) -> SimpleNamespace:
    """A case's imdb (images.data H x W x 3 x N, labels L x N, set 1 x N) in the package's layout."""
    images = imdb["images"]
    return SimpleNamespace(
        data=maps_to_torch(images["data"]).numpy(),
        labels=np.asarray(images["labels"], dtype=np.float32).reshape(np.asarray(images["labels"]).shape[0], -1).T,
        set=np.asarray(images["set"]).reshape(-1))


def weight_to_matlab(layer_type: str, j: int, w: torch.Tensor | None) -> np.ndarray:
    """A weight (or momentum) in PyTorch layout -> MATLAB layout; None -> the scalar 0."""
    if w is None:
        return np.zeros((1, 1))
    if j == 0 and layer_type in _FILTER_LAYERS:
        return filters_to_matlab(w)
    return vector_to_matlab(w)


def _trained_net(input_net: MatStruct, net: Any, last: BatchInfo, density: torch.Tensor | None) -> MatStruct:
    """our_cnn_train's output net: the input struct with the trained values and the fields it adds."""
    specs = net.to_specs()
    slice_mags = {index: layer.slice_mag for index, layer in net.conv_mask_layers()}
    layers = []
    items = cell_items(input_net["layers"])
    for i, (layer, spec) in enumerate(zip(items, specs)):
        out = MatStruct(layer)
        if spec.weights:
            out["weights"] = cell([weight_to_matlab(spec.type, j, w) for j, w in enumerate(spec.weights)])
        else:
            out.setdefault("weights", np.empty((0, 0), dtype=object))
        # our_cnn_train: learningRate / weightDecay default to ones(1, numel(weights))
        out.setdefault("learningRate", np.ones((1, len(spec.weights))))
        out.setdefault("weightDecay", np.ones((1, len(spec.weights))))
        out.setdefault("precious", np.zeros((1, 1), dtype=bool))   # vl_simplenn_tidy
        if i in slice_mags:
            sm = slice_mags[i]
            out["sliceMag"] = np.zeros((0, 0)) if sm is None or sm.numel() == 0 else \
                sm.detach().cpu().numpy().astype(np.float64)
        layers.append(out)
    layers[-2]["precious"] = np.ones((1, 1))  # net.layers{end-1}.precious = 1
    labels = last.labels.detach().cpu().numpy()
    layers[-1]["class"] = labels.T.reshape(1, 1, labels.shape[1], labels.shape[0]).astype(np.float32)
    layers[-1]["iter"] = np.full((1, 1), float(last.epoch))
    layers[-1]["density"] = np.zeros((1, 1)) if density is None else \
        density.detach().cpu().numpy().astype(np.float64).reshape(-1, 1)
    out_net = MatStruct(input_net)
    out_net["layers"] = cell(layers)
    return out_net


@register("our_cnn_train", rtol=TRAINING_RTOL, overrides={"*/time": _time_is_plausible})
def our_cnn_train_case(inputs: MatStruct, ctx: Any) -> dict:
    """Replay the recorded batches through `train` and return net, stats and checkpoint_state."""

    net = SimpleNN.from_specs(layers_from_matlab(inputs["net"]["layers"]))
    imdb = golden_imdb(inputs["imdb"])
    opts = {"learning_rate": np.asarray(inputs.get("learningRate", 0.001), dtype=np.float64).reshape(-1).tolist(),
            "num_epochs": int(scalar(inputs["numEpochs"])), "batch_size": int(scalar(inputs.get("batchSize", 256))),
            "weight_decay": float(scalar(inputs.get("weightDecay", 0.0005))),
            "momentum": float(scalar(inputs.get("momentum", 0.9)))}   # our_cnn_train's defaults
    last: dict[str, BatchInfo] = {}

    def remember(info: BatchInfo) -> None:
        last["batch"] = info

    with tempfile.TemporaryDirectory(prefix="golden-cnn-train-") as exp_dir:
        net, stats = train(net, imdb, opts, exp_dir, device=ctx.device, batch_order=cell_items(inputs["batches"]),
                           progress=False, plot=False, on_batch=remember)
        state = ckpt.load_checkpoint(ckpt.checkpoint_path(exp_dir, opts["num_epochs"]))
    specs = net.to_specs()
    solver_state = [cell([weight_to_matlab(spec.type, j, m) for j, m in enumerate(layer_momentum)])
                    for spec, layer_momentum in zip(specs, state.momentum)]
    density = label_density(torch.as_tensor(imdb.labels))
    return {
        "net": _trained_net(inputs["net"], net, last["batch"], density),
        "stats": {"train": stats["train"], "val": stats["val"]},
        "checkpoint_state": {"solverState": solver_state,
                             "stats": {"train": state.stats["train"][-1], "val": state.stats["val"][-1]}},
    }
