"""A net's layer maps for evaluation: the images through the net up to the measured layer, and the
facts of that layer the measures need.

Ports tool/main/getCNNFeature.m, batched (the original runs one image at a time; here the images go
through the net in batches, on any device, and only up to the layer that is measured), and the pieces
of computeStability.m / step_drawRF.m that locate the measured layer: `targetLayer =
convnet.targetLayers(layerID) - 1` (getConvNetPara's conv layers), the number of its filters, the
net's input size and the imdb's dataMean it is fed with.

Used by every measure (reproduce.evaluation.location_instability, part_interpretability,
receptive_fields).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from data_prep.imdb import load_cached_imdb
from legacy_compat import MatStruct, loadmat
from legacy_compat.cli import UserError
from reproduce.layers.geometry import CONV_TYPES, ConvNetPara
from reproduce.layers.simplenn import SimpleNN
from reproduce.runtime.device import module_device, resolve_device

#: getConvNetPara's convnet: the port's ConvNetPara, or the MATLAB struct a golden case holds.
ConvNet = Union[ConvNetPara, MatStruct]

__all__ = [
    "EvaluationError", "ConvNet", "convnet_field", "target_layer_index", "first_conv_mask_layer_id",
    "num_output_filters", "net_input_size", "read_mean_data", "iterate_patch_batches", "layer_output",
    "layer_maps_of_batches",
]


class EvaluationError(UserError, ValueError):
    """Bad input to the evaluation: the message names the argument, layer, category or file."""


_CONVNET_FIELDS = {"targetLayers": "target_layers", "targetStride": "target_stride",
                   "targetCenter": "target_center", "targetScale": "target_scale"}


def convnet_field(convnet: ConvNet, name: str) -> np.ndarray:
    """A getConvNetPara field (MATLAB name) of a geometry.ConvNetPara or of a dict with MATLAB names."""
    if isinstance(convnet, dict):
        value = convnet[name]
    else:
        value = getattr(convnet, _CONVNET_FIELDS[name])
    return np.asarray(value, dtype=np.float64).reshape(-1)


def target_layer_index(convnet: ConvNet, layer_id: int) -> int:
    """computeStability.m's `targetLayer = convnet.targetLayers(layerID) - 1` (1-based SimpleNN index).

    That layer is the conv (or conv_mask) layer itself; `res(targetLayer+1).x`,
    its pre-ReLU output, is what is measured. A layer_id outside
    1..(number of conv layers) raises EvaluationError.
    """
    targets = convnet_field(convnet, "targetLayers")
    layer_id = int(layer_id)
    if not 1 <= layer_id <= targets.size:
        raise EvaluationError(f"layerID {layer_id} is out of range: the net has {targets.size} conv layers "
                              f"(layerID counts conv / conv_mask layers, 1..{targets.size})")
    return int(targets[layer_id - 1]) - 1


def first_conv_mask_layer_id(layer_types: Sequence[str]) -> int | None:
    """The layerID (1-based among conv / conv_aNet / conv_mask layers) of the first conv_mask layer, or None."""
    conv_count = 0
    for t in layer_types:
        if t in CONV_TYPES:
            conv_count += 1
            if t == "conv_mask":
                return conv_count
    return None


# =================================================================== getCNNFeature.m, batched
def iterate_patch_batches(load_patch: Callable[[int], np.ndarray], indices: Sequence[int],
                          mean_data: np.ndarray, batch_size: int, check_input: bool = True,
                          workers: int | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """getCNNFeature.m's input, batched: (image indices, N x 3 x H x W float32 of patch - meanData).

    `load_patch(i)` gives image i's patch as getI does (H x W x 3 float32,
    0-255); the patches of a batch are loaded on `workers` threads (JPEG
    decoding and the resize release the GIL). our_vl_simplenn refuses an
    input with no value below -10 ('Errors in input'); the check is made per
    image here (the original runs one image at a time), naming the image.
    """

    mean = np.asarray(mean_data, dtype=np.float32)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(indices), int(batch_size)):
            chunk = list(indices[start:start + int(batch_size)])
            batch = np.stack([np.asarray(p, dtype=np.float32) - mean for p in pool.map(load_patch, chunk)])
            if check_input:
                low = (batch < -10).reshape(len(chunk), -1).any(axis=1)
                if not low.all():
                    bad = [chunk[j] for j in np.flatnonzero(~low)]
                    raise EvaluationError(f"Errors in input (our_vl_simplenn): no value below -10 after subtracting "
                                          f"meanData for image(s) {[b + 1 for b in bad]} (1-based); is meanData "
                                          f"right?")
            yield chunk, torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def layer_output(net: SimpleNN, x: torch.Tensor, layer: int) -> torch.Tensor:
    """res(layer+1).x: the output of SimpleNN layer `layer` (1-based), running the net only that far.

    The layers run one after the other keeping only the current map (SimpleNN.run keeps every
    res, which for vgg-vd-16 batches is gigabytes); no filter-loss context, evaluation only.
    """
    layers = list(net.layers)
    if not 1 <= layer <= len(layers):
        raise EvaluationError(f"layer {layer} is not in 1..{len(layers)}")
    check = getattr(net, "check_input", None)
    if check is not None:
        check(x)
    for module in layers[:layer]:
        x = module(x)
    return x



def layer_maps_of_batches(net: SimpleNN, batches: Iterable[tuple[list[int], torch.Tensor]], target_layer: int,
                          device: Any = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """getCNNFeature.m over batches: (image indices, the output of SimpleNN layer `target_layer` for
    them) for every batch of `iterate_patch_batches`, without gradients. `device` None: where the net is; another device: the net is moved there first. A CUDA
    device computes in IEEE float32 (reproduce.runtime.device.resolve_device)."""
    device = resolve_device(module_device(net) if device is None else device)
    net.to(device)
    for chunk, x in batches:
        with torch.no_grad():
            y = layer_output(net, x.to(device), target_layer)
        yield chunk, y


def net_input_size(net: SimpleNN) -> tuple[int, int]:
    """The net's input size: meta.normalization.imageSize (MATLAB nets) or meta['image_size'] (network_init)."""
    meta = getattr(net, "meta", None)
    size = None
    if isinstance(meta, dict):
        norm = meta.get("normalization")
        if isinstance(norm, dict):
            size = norm.get("imageSize")
        if size is None:
            size = meta.get("image_size")
    if size is None:
        raise EvaluationError("the net's meta has no normalization.imageSize / image_size (the input size getI "
                              "resizes to): pass image_size=")
    try:                              # a numeric array, or a cell of scalars (a tuple saved to MATLAB)
        values = [float(np.asarray(v, dtype=np.float64).reshape(-1)[0])
                  for v in np.asarray(size, dtype=object).reshape(-1)]
        return int(values[0]), int(values[1])
    except (ValueError, TypeError, IndexError) as exc:
        raise EvaluationError(f"the net's meta image size {size!r} is not two numbers ({exc})") from None



def num_output_filters(net: SimpleNN, target: int) -> int:
    """numel(net.layers{target}.weights{2}): the number of filters (biases) of conv layer `target` (1-based)."""
    layer = net.layers[target - 1]
    if layer.layer_type not in CONV_TYPES:
        raise EvaluationError(f"layer {target} ({layer.layer_type} {layer.name!r}) is not a conv layer")
    weights = layer.weights()
    if len(weights) >= 2:
        return int(weights[1].numel())
    return int(weights[0].shape[0])        # a conv without biases: its filters



def read_mean_data(mean_data: Any) -> np.ndarray:
    """The imdb's dataMean as H x W x 3 float32 (MATLAB layout), from any of the forms it comes in.

    Accepted: an array H x W x 3 (MATLAB's meta.dataMean) or 3 x H x W (the
    package's Imdb.data_mean); an Imdb (its data_mean); the path of a MATLAB
    imdb.mat (meta.dataMean); the folder of a package imdb cache.
    """
    if hasattr(mean_data, "data_mean"):
        mean_data = mean_data.data_mean
    elif isinstance(mean_data, (str, os.PathLike)):
        path = Path(mean_data)
        if path.is_dir():
            imdb = load_cached_imdb(path, check_fingerprint=False)
            if imdb is None:
                raise EvaluationError(f"{path}: no finished imdb cache in this folder")
            mean_data = imdb.data_mean
        elif path.suffix.lower() == ".mat":
            if not path.exists():
                raise EvaluationError(f"imdb file not found: {path}")
            meta = loadmat(path, variable_names=["meta"]).get("meta")     # not images.data (GBs)
            if meta is None or "dataMean" not in meta:
                raise EvaluationError(f"{path}: no meta.dataMean in this imdb file")
            mean_data = meta["dataMean"]
        else:
            raise EvaluationError(f"{path}: give an imdb.mat file or an imdb cache folder for the data mean")
    mean = np.asarray(mean_data, dtype=np.float32)
    if mean.ndim == 3 and mean.shape[0] == 3 and mean.shape[2] != 3:
        mean = np.ascontiguousarray(mean.transpose(1, 2, 0))
    if mean.ndim != 3 or mean.shape[2] != 3:
        raise EvaluationError(f"mean_data must be H x W x 3 (or 3 x H x W), got shape {mean.shape}")
    return mean
