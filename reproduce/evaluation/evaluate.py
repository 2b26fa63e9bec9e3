"""Evaluation of an ICNN: the binary error and the location stability of its filters.

Ports
- showResults.m: `getResult` / `getResult_multiClass` (the last epoch's
  validation `binerr`, the stability of the chosen layer) and the line
  demo.m ends with (`format_result_line`);
- tool/main/step_computeStability.m and computeStability.m (one category);
- tool/main/step_computeStability_multiClass.m and its
  computeStability_multiClass (several categories, each filter assigned to
  the category it fires most for);
- tool/main/getDistSqrtVar.m (getDiff, getAvgDistSqrtVar);
- tool/main/getCNNFeature.m, batched: the original runs one image at a
  time; here the images go through the net in batches, on any device, and
  only up to the layer that is measured.

The measure (location stability, TPAMI 2020 Sec. 5.2.2)
-------------------------------------------------------
For the layer `layer_id` (an index into getConvNetPara's conv layers:
14 for vgg-vd-16, 6 for alexnet / vgg-m / vgg-s, the first conv_mask
layer) the SimpleNN layer `targetLayer = targetLayers(layer_id) - 1` is the
conv layer itself and its output `res(targetLayer+1).x` (pre-ReLU) is used:

1. for every image that has at least one annotated part and every filter,
   the peak of the filter's map (max over h, then over w; ties -> the
   first) mapped to image coordinates by x2p_ (centre + (idx - 1) * stride);
2. per filter and part: the images with that part, ranked by the filter's
   peak score (stable descending sort), the top `patch_num_per_pattern`
   (100) of them, the distances between the peak and the part landmark,
   their standard deviation (normalised by N - 1, MATLAB `var`);
   NaN when fewer than 2 images have the part;
3. averaged over the parts (NaN if any part gave NaN);
4. the finite values sorted ascending, the mean of the first
   `round(round(P * part_rate) * selected_pattern_ratio)`, divided by
   `norm([ih iw])`, the size of the network input (computeStability.m reads
   it from the last image patch it processed, which is always the input size).

Layouts here (0-based, numpy/PyTorch): peak positions are ``(images, filters,
2)`` arrays of [h, w] image coordinates in MATLAB's 1-based pixel units (they
are compared with the truth files' `pHW_center`, which are in those units);
scores are ``(images, filters)``. The golden adapters
(reproduce/golden/evaluate.py) convert from and to MATLAB's 2 x P x I.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from data_prep.annotations import read_annotation
from data_prep.cub200 import read_annotation_sampling_cub
from data_prep.facts import DATASETS, GOLDFISH, category_samples_objects, parts_for
from data_prep.get_i import get_i
from data_prep.imdb import load_cached_imdb
from data_prep.readers import read_part_truth_file
from legacy_compat import MatStruct, loadmat
from legacy_compat.cli import UserError
from legacy_compat.numerics import mmax_reduce, mround, mvar, sort_ascend_stable, sort_descend_stable
from reproduce.layers.geometry import CONV_TYPES, ConvNetPara, get_conv_net_para
from reproduce.layers.simplenn import SimpleNN
from reproduce.runtime.device import module_device, resolve_device
from reproduce.runtime.distributed import active, gather_over_ranks
from reproduce.training.checkpoints import load_checkpoint, load_mat_checkpoint

#: getConvNetPara's convnet: the port's ConvNetPara, or the MATLAB struct a golden case holds.
ConvNet = Union[ConvNetPara, MatStruct]

__all__ = [
    "INVALID_OFFSET", "GOLDFISH", "DEFAULT_LAYER_ID", "PART_LISTS", "EvaluationError",
    "StabilityResult", "PartCentres", "CategorySource", "EvaluationResult",
    "layer_id_for_model", "num_output_filters", "ConvNet", "part_list_for", "format_result_line", "final_val_error",
    "target_layer_index", "first_conv_mask_layer_id",
    "peak_positions", "peaks_to_image", "part_centres", "read_part_centres",
    "get_dist_sqrt_var", "stability_from_distances", "multiclass_stability",
    "extract_layer_peaks", "peaks_of_maps", "iterate_patch_batches",
    "compute_stability", "compute_stability_multiclass",
    "load_net_for_evaluation", "evaluate_net", "evaluate_checkpoint",
]

INVALID_OFFSET = 100000.0          # getDistSqrtVar.m's invalidNum
# showResults.m: the layer measured, an index into getConvNetPara's conv layers
# showResults.m: the first conv_mask layer, as an index into getConvNetPara's conv layers
# ('tiny', the package's small net: conv1-3, then conv_mask conv6 = the 4th conv layer;
#  'alexnet-narrow', ours, not the paper's: conv1-5, then conv_mask conv6 = the 6th, as alexnet)
DEFAULT_LAYER_ID = {"alexnet": 6, "vgg-m": 6, "vgg-s": 6, "vgg-vd-16": 14, "tiny": 4, "alexnet-narrow": 6}
# showResults.m: the parts evaluated per dataset (kept in data_prep.facts.DATASETS)
PART_LISTS = {name: spec.part_list for name, spec in DATASETS.items()}
PATCH_NUM_PER_PATTERN = 100        # step_computeStability*.m
SELECTED_PATTERN_RATIO = 1.0       # step_computeStability*.m
BATCH_SIZE = 32                    # images per forward pass (the original: one at a time)


class EvaluationError(UserError, ValueError):
    """Bad input to the evaluation: the message names the argument, layer, category or file."""


# =================================================================== small pieces of showResults.m
def layer_id_for_model(model: str) -> int:
    """showResults.m: layerID 14 for 'vgg-vd-16', 6 for 'alexnet', 'vgg-m', 'vgg-s'."""
    try:
        return DEFAULT_LAYER_ID[model]
    except KeyError:
        raise EvaluationError(f"invalid model name {model!r}; valid: {', '.join(DEFAULT_LAYER_ID)}") from None


def part_list_for(dataset: str, category: str | None = None) -> tuple[int, ...]:
    """showResults.m's partList per dataset; step_computeStability.m's goldfish rule (part 1 only)."""
    try:
        return parts_for(dataset, category)
    except ValueError:
        raise EvaluationError(f"unknown dataset {dataset!r}; valid: {', '.join(PART_LISTS)}") from None


def format_result_line(binary_error: float, stability: float) -> str:
    """The line showResults.m prints: fprintf('binary error %f     location stability %f\\n', ...).

    MATLAB's %f is six decimals; NaN prints as 'NaN' and Inf as 'Inf' (as MATLAB does).
    """
    return f"binary error {_matlab_f(binary_error)}     location stability {_matlab_f(stability)}"


def _matlab_f(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return f"{v:f}"


def final_val_error(stats: Any, name: str = "binerr") -> float:
    """showResults.m's `net.stats.val(end).binerr`: the last epoch's validation error.

    `stats` is a MATLAB `stats` struct (as loadmat reads it) or the package's
    ``{"train": [...], "val": [...]}`` lists of per-epoch dicts. A softmax
    run records `top1err` instead of `binerr` (the original crashes there):
    ask for `name="top1err"`; a missing field raises EvaluationError naming
    the fields that exist.
    """
    val = stats.get("val") if isinstance(stats, dict) else getattr(stats, "val", None)
    if val is None:
        raise EvaluationError("the statistics hold no 'val' entries (no validation epoch was recorded)")
    entries = list(np.asarray(val, dtype=object).reshape(-1, order="F")) if isinstance(val, np.ndarray) else list(val)
    if not entries:
        raise EvaluationError("the statistics hold no validation epoch")
    last = entries[-1]
    if name not in last:
        raise EvaluationError(f"the last validation epoch has no {name!r} (it has: {', '.join(map(str, last))}); "
                              f"a softmax run records 'top1err'")
    return float(np.asarray(last[name], dtype=np.float64).reshape(-1)[0])


# =================================================================== geometry glue
_CONVNET_FIELDS = {"targetLayers": "target_layers", "targetStride": "target_stride",
                   "targetCenter": "target_center", "targetScale": "target_scale"}


def _convnet_field(convnet: ConvNet, name: str) -> np.ndarray:
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
    targets = _convnet_field(convnet, "targetLayers")
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


def _x2p(idx_hw: np.ndarray, layer_id: int, convnet: ConvNet) -> np.ndarray:
    """x2p_.m: pHW = targetCenter(layer) + (xHW - 1) .* targetStride(layer), for 1-based map indices."""
    stride = _convnet_field(convnet, "targetStride")[int(layer_id) - 1]
    centre = _convnet_field(convnet, "targetCenter")[int(layer_id) - 1]
    return centre + (np.asarray(idx_hw, dtype=np.float64) - 1.0) * stride


# =================================================================== peaks
def peak_positions(x: torch.Tensor, fix_nonsquare_index: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The peak of every filter's map, as computeStability.m finds it.

    x: (N, P, H, W). Returns (idx_h, idx_w, score), each (N, P): 1-based map
    indices (int64) and the peak values (x's dtype).

    computeStability.m: `[v,idx]=max(x,[],1)` (over h, per column), then
    `[v,tmp]=max(v,[],2)` (over w), then `idx_h=idx(tmp+(0:P-1).*xh)`: it
    reads the row index of the winning column with a linear index built
    with the map HEIGHT where the width belongs. For square maps (every net
    of the original) that is the winning column's row; for non-square maps
    it reads another element (the original's quirk, kept by default; an
    index past the end raises IndexError as MATLAB errors).
    `fix_nonsquare_index=True` reads the winning column's row instead.
    Ties go to the first index, NaN is ignored (MATLAB max).
    """
    if x.dim() != 4:
        raise EvaluationError(f"peak_positions expects maps N x P x H x W, got shape {tuple(x.shape)}")
    n, p, h, w = x.shape
    col_max, col_arg = mmax_reduce(x, axis=2)          # (N, P, W): max over h
    score, tmp = mmax_reduce(col_max, axis=2)          # (N, P): max over w
    if fix_nonsquare_index or h == w:
        idx_h = torch.gather(col_arg, 2, tmp.unsqueeze(2)).squeeze(2)
    else:
        flat = col_arg.reshape(n, p * w)               # MATLAB idx (1 x W x P) in linear order
        lin = tmp + torch.arange(p, device=x.device).unsqueeze(0) * h
        if int(lin.max()) >= p * w:
            raise IndexError("computeStability.m's idx(tmp+(0:P-1).*xh) runs past the end of the "
                             f"{h} x {w} maps (non-square maps; pass fix_nonsquare_index=True)")
        idx_h = torch.gather(flat, 1, lin)
    return idx_h + 1, tmp + 1, score


def peaks_to_image(idx_h: Any, idx_w: Any, layer_id: int, convnet: ConvNet) -> np.ndarray:
    """x2p_ of the peaks: (N, P) 1-based map indices -> (N, P, 2) [h, w] image coordinates (float64)."""
    idx = np.stack([_to_numpy(idx_h), _to_numpy(idx_w)], axis=-1).astype(np.float64)
    return _x2p(idx, layer_id, convnet)


def _to_numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


# =================================================================== part truth
@dataclass
class PartCentres:
    """The part landmarks of one category, as getDistSqrtVar.m uses them.

    centres: (K parts, I images, 2) [h, w] float64, NaN where getDiff marks
    the image invalid for the part (no landmark, or more than two numbers);
    present: (K, I) bool, the landmark is non-empty (computeStability.m's
    validImg: an image is processed when any part is present).
    """

    centres: np.ndarray
    present: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.centres.shape[1])

    @property
    def valid_images(self) -> np.ndarray:
        """computeStability.m's validImg: (I,) bool."""
        return self.present.any(axis=0)

    @property
    def usable(self) -> np.ndarray:
        """(K, I) bool: the image counts for the part (exactly one landmark)."""
        return ~np.isnan(self.centres[..., 0])


def part_centres(truths: Sequence[Sequence[Any]]) -> PartCentres:
    """Landmarks per part -> PartCentres.

    `truths[k][i]` is image i's `pHW_center` for part k: a data_prep PartTruth,
    an array ([h; w], empty, or more than two numbers) or None. A single
    number v is read as [v; v] (MATLAB's implicit expansion in getDiff).
    """
    if len(truths) == 0:
        raise EvaluationError("no parts given (partList is empty)")
    n = len(truths[0])
    if any(len(t) != n for t in truths):
        raise EvaluationError(f"the truth files describe different numbers of images: {[len(t) for t in truths]}")
    centres = np.full((len(truths), n, 2), np.nan)
    present = np.zeros((len(truths), n), dtype=bool)
    for k, truth in enumerate(truths):
        for i, entry in enumerate(truth):
            raw = getattr(entry, "pHW_center", entry)
            arr = np.zeros(0) if raw is None else np.asarray(raw, dtype=np.float64).reshape(-1)
            present[k, i] = arr.size > 0
            if arr.size == 2:
                centres[k, i] = arr
            elif arr.size == 1:
                centres[k, i] = arr[0]
    return PartCentres(centres, present)


def read_part_centres(files: Sequence[os.PathLike | str]) -> PartCentres:
    """Read truth_partNN.mat files (one per part, in partList order) -> PartCentres."""
    return part_centres([read_part_truth_file(f) for f in files])


# =================================================================== getDistSqrtVar.m
def get_dist_sqrt_var(pos: np.ndarray, score: np.ndarray, truth: PartCentres,
                      patch_num_per_pattern: int = PATCH_NUM_PER_PATTERN) -> np.ndarray:
    """getDistSqrtVar.m: per filter, the std of the peak-to-part distance, averaged over parts.

    pos: (I, P, 2) [h, w] image coordinates; score: (I, P); truth for the
    same I images. Returns (P,) float64: for each part, the images usable
    for it ranked by the filter's score (stable descending: ties keep image
    order; setdiff 'stable'), the first `patch_num_per_pattern`, the N-1
    std of their distances; summed over parts, divided by the number of
    parts. NaN where a part has fewer than 2 usable images (the NaN then
    stays, as `NaN + x` does in the original).
    """
    pos = np.asarray(pos, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    num_img, num_pat = score.shape
    if pos.shape != (num_img, num_pat, 2):
        raise EvaluationError(f"pos has shape {pos.shape}, expected {(num_img, num_pat, 2)} to match score")
    if truth.num_images < num_img:
        raise EvaluationError(f"the truth files describe {truth.num_images} images, the scores {num_img}")
    usable = truth.usable[:, :num_img]
    _, order = sort_descend_stable(score.T, axis=1)                 # (P, I): images by score
    total = np.zeros(num_pat)
    for k in range(usable.shape[0]):
        n_use = int(min(patch_num_per_pattern, usable[k].sum()))
        if n_use < 2:
            total[:] = np.nan
            continue
        keep = usable[k][order]                                      # (P, I) in ranked order
        keep &= np.cumsum(keep, axis=1) <= n_use
        chosen = order[keep].reshape(num_pat, n_use)                 # top images per filter, ranked
        diff = truth.centres[k, chosen, :] - pos[chosen, np.arange(num_pat)[:, None], :]
        dist = np.sqrt(np.sum(diff ** 2, axis=-1))                   # (P, n_use)
        total = total + np.sqrt(mvar(dist, axis=1))
    return total / usable.shape[0]


def stability_from_distances(dist_sqrt_var: np.ndarray, selected_pattern_num: int,
                             image_size: Sequence[float]) -> float:
    """computeStability.m's last lines: the mean of the smallest finite values over norm([ih iw]).

    NaN values are dropped (filters that never had two images with a part);
    the first min(selected_pattern_num, remaining) of the ascending values
    are averaged; no value left gives NaN (MATLAB's mean of empty).
    """
    d = np.asarray(dist_sqrt_var, dtype=np.float64).reshape(-1)
    d, _ = sort_ascend_stable(d[~np.isnan(d)])
    d = d[:max(0, min(int(selected_pattern_num), d.size))]
    if d.size == 0:
        return float("nan")
    return float(np.mean(d) / np.linalg.norm(np.asarray(image_size, dtype=np.float64)))


def multiclass_stability(stability: np.ndarray, score: np.ndarray,
                         selected_pattern_ratio: float = SELECTED_PATTERN_RATIO) -> float:
    """step_computeStability_multiClass.m's combination over categories.

    stability, score: (P filters, C categories): per category the filter's
    distSqrtVar / norm([ih iw]) and its mean peak score over ALL the
    category's images (those without parts count with score 0, as in the
    original). Each filter takes the stability of the category with the
    highest mean score (first on ties, NaN ignored); the finite values are
    sorted ascending and the first round(ratio * P) averaged.
    """
    stability = np.asarray(stability, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if stability.shape != score.shape or stability.ndim != 2:
        raise EvaluationError(f"stability {stability.shape} and score {score.shape} must both be P x C")
    _, best = mmax_reduce(score, axis=1)
    chosen = stability[np.arange(stability.shape[0]), best]
    selected = int(mround(np.float64(selected_pattern_ratio * chosen.size)))
    chosen, _ = sort_ascend_stable(chosen[~np.isnan(chosen)])
    chosen = chosen[:max(0, min(selected, chosen.size))]
    return float(np.mean(chosen)) if chosen.size else float("nan")


# =================================================================== feature extraction (getCNNFeature.m)
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


@torch.no_grad()
def extract_layer_peaks(net: SimpleNN, batches: Iterable[tuple[list[int], torch.Tensor]], target_layer: int,
                        num_images: int, num_filters: int | None = None, device: Any = None,
                        fix_nonsquare_index: bool = False, progress: bool = False,
                        total: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """The peaks of every filter of SimpleNN layer `target_layer` over the batches.

    Returns (idx_h, idx_w, score) as (num_images, P) arrays (1-based indices,
    zeros for the images never seen, as the original's preallocated arrays)
    and the (H, W) size of the maps. Only the first `num_filters` channels
    (computeStability.m's `1:patNum`) are kept. Runs on `device`, moving only
    the peaks back. `device` None: where the net is; another device: the net is moved there
    first. A CUDA device computes in IEEE float32 (reproduce.device.resolve_device).
    """
    device = resolve_device(module_device(net) if device is None else device)
    net.to(device)
    maps = ((chunk, layer_output(net, x.to(device), target_layer)) for chunk, x in batches)
    return peaks_of_maps(maps, num_images, num_filters, fix_nonsquare_index, progress, total)


def peaks_of_maps(maps: Iterable[tuple[list[int], torch.Tensor]], num_images: int, num_filters: int | None = None,
                  fix_nonsquare_index: bool = False, progress: bool = False,
                  total: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """`extract_layer_peaks` on layer outputs already computed: `maps` yields (image indices, N x P x H x W)."""
    idx_h = idx_w = score = None
    map_size = (0, 0)
    for chunk, y in tqdm(maps, total=total, desc="stability", unit="batch", disable=not progress):
        if num_filters is not None:
            y = y[:, :num_filters]
        h, w, s = peak_positions(y, fix_nonsquare_index=fix_nonsquare_index)
        if idx_h is None:
            p = y.shape[1]
            idx_h = np.zeros((num_images, p), dtype=np.int64)
            idx_w = np.zeros((num_images, p), dtype=np.int64)
            score = np.zeros((num_images, p), dtype=np.float64)
            map_size = (int(y.shape[2]), int(y.shape[3]))
        idx_h[chunk], idx_w[chunk] = _to_numpy(h), _to_numpy(w)
        score[chunk] = _to_numpy(s).astype(np.float64)
    if idx_h is None:
        raise EvaluationError("no image was processed")
    return idx_h, idx_w, score, map_size


# =================================================================== one category (computeStability.m)
@dataclass
class CategorySource:
    """Where one category's images and part landmarks come from.

    name: Name_batch (an ILSVRC wnid, a VOC class, 'cub200');
    objects: the objset (data_prep readers: list of ObjRecord or None);
    load_patch: `(obj, (h, w)) -> H x W x 3 float32` (getI with IsFlip false);
    truth_files: part id -> its truth_partNN.mat, or -> the landmarks
    themselves (a list over the images of [h; w] arrays / PartTruth / None).
    `from_conf` builds one from a data_prep DataConf as the original does
    (readAnnotation, or readAnnotation_sampling for 'cub200').
    """

    name: str
    objects: Sequence[Any]
    load_patch: Callable[[Any, tuple[int, int]], np.ndarray]
    truth_files: dict[int, Any]

    @classmethod
    def from_conf(cls, name: str, conf: Any, part_list: Sequence[int]) -> "CategorySource":
        """computeStability.m's objset: readAnnotation_sampling for 'cub200' (data_prep.facts:
        samples_objects), readAnnotation otherwise."""
        if category_samples_objects(name):
            objects = read_annotation_sampling_cub(name, conf)
        else:
            objects = read_annotation(name, conf)
        return cls(name=name, objects=objects, load_patch=_data_prep_get_i(conf),
                   truth_files={int(p): conf.truth_file(name, int(p)) for p in part_list})

    def centres(self, part_list: Sequence[int]) -> PartCentres:
        """The landmarks of the parts in `part_list` (in that order)."""
        missing = [p for p in part_list if int(p) not in self.truth_files]
        if missing:
            raise EvaluationError(f"category {self.name!r}: no truth file given for part(s) {missing}")
        per_part = []
        for p in part_list:
            entry = self.truth_files[int(p)]
            if isinstance(entry, (str, os.PathLike)):
                if not Path(entry).exists():
                    raise EvaluationError(f"category {self.name!r}: part truth file not found: {entry}")
                entry = read_part_truth_file(entry)
            per_part.append(list(entry))
        return part_centres(per_part)


def _data_prep_get_i(conf: Any) -> Callable[[Any, tuple[int, int]], np.ndarray]:

    def load(obj: Any, size: tuple[int, int]) -> np.ndarray:
        patch, _ = get_i(obj, conf.imgdir, size, False)
        return patch
    return load


@dataclass
class StabilityResult:
    """What computeStability.m computed, kept for inspection.

    stability: the measure; dist_sqrt_var: (P,) per filter (pixels, before the
    division by norm(image_size)); pos: (I, P, 2) [h, w] peak positions;
    score: (I, P) peak scores (0 for images without parts, never processed);
    valid_images: (I,) bool; image_size: (ih, iw); map_size: (xh, xw).
    """

    stability: float
    dist_sqrt_var: np.ndarray
    pos: np.ndarray
    score: np.ndarray
    valid_images: np.ndarray
    image_size: tuple[int, int]
    map_size: tuple[int, int]
    layer_id: int
    target_layer: int
    part_list: tuple[int, ...]


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


def _without_unread_objects(truth: PartCentres, source: CategorySource, num_img: int) -> PartCentres:
    """The truth without the images whose object readAnnotation.m skipped (a box under minArea: an
    empty objset element) but whose truth entry holds landmarks (ILSVRC n02503517's truth(35)).

    The original crashes on them (computeStability.m's getI reads the empty element); this port
    leaves them out of location stability, as images without a part, and says so: a documented fix
    that changes nothing where the original runs."""
    unread = [i for i in np.flatnonzero(truth.valid_images[:num_img]) if source.objects[int(i)] is None]
    if not unread:
        return truth
    warnings.warn(f"category {source.name!r}: image(s) {', '.join(str(int(i) + 1) for i in unread)} have part "
                  f"landmarks but no object (the box is under minArea): left out of location stability (the "
                  f"original's getI fails on them)", RuntimeWarning, stacklevel=3)
    centres, present = truth.centres.copy(), truth.present.copy()
    centres[:, unread] = np.nan
    present[:, unread] = False
    return PartCentres(centres, present)


def _category_peaks(net: SimpleNN, source: CategorySource, part_list: Sequence[int], layer_id: int, convnet: ConvNet,
                    mean_data: np.ndarray, image_size: tuple[int, int], num_filters: int | None,
                    device: Any, batch_size: int, progress: bool, fix_nonsquare_index: bool,
                    layer_maps: Callable[[list[int]], torch.Tensor] | None = None):
    truth = source.centres(part_list)
    num_img = len(source.objects)
    if truth.num_images < num_img:
        raise EvaluationError(f"category {source.name!r}: the truth files describe {truth.num_images} images, "
                              f"the annotation {num_img}")
    truth = _without_unread_objects(truth, source, num_img)
    valid = truth.valid_images[:num_img]
    if not valid.any():
        # the original crashes here (I is never assigned): say what is wrong instead
        raise EvaluationError(f"category {source.name!r}: no image has any of the parts {list(part_list)} "
                              f"in {[str(source.truth_files[int(p)]) for p in part_list]}")
    indices = [int(i) for i in np.flatnonzero(valid)]
    target = target_layer_index(convnet, layer_id)
    mean = read_mean_data(mean_data)
    if mean.shape[:2] != tuple(image_size):
        raise EvaluationError(f"meanData is {mean.shape[0]} x {mean.shape[1]}, the net's input {image_size[0]} x "
                              f"{image_size[1]}: the mean belongs to another imdb or net")

    def load(i: int) -> np.ndarray:
        return source.load_patch(source.objects[i], image_size)

    def peaks(chosen: list[int]):
        total = math.ceil(len(chosen) / batch_size)
        if layer_maps is not None:
            chunks = (chosen[s:s + batch_size] for s in range(0, len(chosen), batch_size))
            return peaks_of_maps(((c, layer_maps(c)) for c in chunks), num_img, num_filters, fix_nonsquare_index,
                                 progress, total)
        batches = iterate_patch_batches(load, chosen, mean, batch_size)
        return extract_layer_peaks(net, batches, target, num_img, num_filters, device, fix_nonsquare_index,
                                   progress, total=total)

    idx_h, idx_w, score, map_size = _peaks_over_ranks(peaks, indices)
    pos = peaks_to_image(idx_h, idx_w, layer_id, convnet)
    pos[~valid] = 0.0                                  # the original's zeros for skipped images
    return truth, valid, pos, score, map_size, target


def _peaks_over_ranks(peaks: Callable[[list[int]], tuple], indices: list[int]) -> tuple:
    """`peaks(indices)`; in a data-parallel run (reproduce.distributed) each rank runs its share
    indices[rank::K] and the ranks' arrays are added up: each image's row is non-zero on the one
    rank that ran it, so every rank ends with the arrays of one process."""
    dp = active()
    if dp is None or dp.world == 1:
        return peaks(indices)
    mine = indices[dp.rank::dp.world]
    parts = gather_over_ranks(peaks(mine) if mine else None, "sharing the location-stability forward passes")
    parts = [p for p in parts if p is not None]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), parts[0][3])


def num_output_filters(net: SimpleNN, target: int) -> int:
    """numel(net.layers{target}.weights{2}): the number of filters (biases) of conv layer `target` (1-based)."""
    layer = net.layers[target - 1]
    if layer.layer_type not in CONV_TYPES:
        raise EvaluationError(f"layer {target} ({layer.layer_type} {layer.name!r}) is not a conv layer")
    weights = layer.weights()
    if len(weights) >= 2:
        return int(weights[1].numel())
    return int(weights[0].shape[0])        # a conv without biases: its filters


def compute_stability(net: SimpleNN, source: CategorySource, layer_id: int, mean_data: np.ndarray, *,
                      part_list: Sequence[int] = (1, 2), part_rate: float = 1.0,
                      selected_pattern_ratio: float = SELECTED_PATTERN_RATIO,
                      patch_num_per_pattern: int = PATCH_NUM_PER_PATTERN,
                      convnet: ConvNet = None, image_size: Sequence[int] | None = None, device: Any = None,
                      batch_size: int = BATCH_SIZE, progress: bool = False,
                      fix_nonsquare_index: bool = False,
                      layer_maps: Callable[[list[int]], torch.Tensor] | None = None) -> StabilityResult:
    """computeStability.m (with getCNNFeature.m batched): the location stability of one category.

    `net` is a SimpleNN (reproduce.network) in evaluation mode; `layer_id`
    indexes getConvNetPara's conv layers; `mean_data` is the imdb's
    dataMean (H x W x 3, MATLAB layout). Only the images with at least one
    part are run through the net, up to the measured layer, `batch_size` at
    a time on `device` (None: the net's device). The patterns measured are the first
    round(P * part_rate) filters, of which round(that * selected_pattern_ratio)
    of the most stable are averaged.

    No image with any part raises EvaluationError (the original crashes);
    a part no image has (fewer than 2) gives NaN for every filter and so a
    NaN stability, as in the original. `image_size` (ih, iw) is the net's
    input size, read from net.meta.normalization.imageSize when not given.

    `layer_maps(indices)`, when given, is the measured layer's output (N x P x h x w) for those
    images (0-based indices into source.objects), computed beforehand (reproduce.ablation shares
    one forward pass with part interpretability): the net is then not run.
    """
    convnet = get_conv_net_para(net) if convnet is None else convnet
    part_list = tuple(int(p) for p in np.asarray(part_list).reshape(-1))
    image_size = net_input_size(net) if image_size is None else (int(image_size[0]), int(image_size[1]))
    target = target_layer_index(convnet, layer_id)
    pat_num = int(mround(np.float64(num_output_filters(net, target) * part_rate)))
    selected = int(mround(np.float64(pat_num * selected_pattern_ratio)))
    truth, valid, pos, score, map_size, target = _category_peaks(
        net, source, part_list, layer_id, convnet, mean_data, image_size, pat_num, device, batch_size,
        progress, fix_nonsquare_index, layer_maps)
    dist = get_dist_sqrt_var(pos, score, truth, patch_num_per_pattern)
    if np.isnan(dist).all():
        warnings.warn(f"category {source.name!r}: every filter's distance spread is NaN (a part in {list(part_list)} "
                      f"has fewer than 2 images): the stability is NaN", RuntimeWarning, stacklevel=2)
    stability = stability_from_distances(dist, selected, image_size)
    return StabilityResult(stability, dist, pos, score, valid, image_size, map_size, int(layer_id), target, part_list)


def compute_stability_multiclass(net: SimpleNN, sources: Sequence[CategorySource], layer_id: int,
                                 mean_data: np.ndarray, *, part_list: Sequence[int] = (1, 2),
                                 selected_pattern_ratio: float = SELECTED_PATTERN_RATIO,
                                 patch_num_per_pattern: int = PATCH_NUM_PER_PATTERN,
                                 convnet: ConvNet = None, image_size: Sequence[int] | None = None,
                                 device: Any = None, batch_size: int = BATCH_SIZE, progress: bool = False,
                                 fix_nonsquare_index: bool = False,
                                 goldfish_rule_sticks: bool = True) -> tuple[float, dict[str, Any]]:
    """step_computeStability_multiClass.m: the location stability of a multi-class net.

    For each category (in net.meta.classes.name order) its own
    computeStability_multiClass: every filter's distSqrtVar / norm([ih iw])
    and its mean peak score over all the category's images; then
    `multiclass_stability`. Returns (stability, details) with details
    'stability' (P x C), 'score' (P x C), 'part_lists'.

    Quirk kept: step_computeStability_multiClass.m sets partList = 1 when it
    meets the goldfish (n01443537) and never sets it back, so every category
    after the goldfish is measured on part 1 only.
    `goldfish_rule_sticks=False` applies the rule to the goldfish alone.
    """
    convnet = get_conv_net_para(net) if convnet is None else convnet
    part_list = tuple(int(p) for p in np.asarray(part_list).reshape(-1))
    image_size = net_input_size(net) if image_size is None else (int(image_size[0]), int(image_size[1]))
    stab_cols, score_cols, used_parts = [], [], []
    for source in sources:
        parts = part_list
        if source.name == GOLDFISH:
            parts = (1,)
            if goldfish_rule_sticks:
                part_list = (1,)
        truth, valid, pos, score, map_size, target = _category_peaks(
            net, source, parts, layer_id, convnet, mean_data, image_size, None, device, batch_size,
            progress, fix_nonsquare_index)
        dist = get_dist_sqrt_var(pos, score, truth, patch_num_per_pattern)
        stab_cols.append(dist / np.linalg.norm(np.asarray(image_size, dtype=np.float64)))
        score_cols.append(score.mean(axis=0))
        used_parts.append(parts)
    if not stab_cols:
        raise EvaluationError("no category given")
    stability = np.stack(stab_cols, axis=1)
    score = np.stack(score_cols, axis=1)
    value = multiclass_stability(stability, score, selected_pattern_ratio)
    return value, {"stability": stability, "score": score, "part_lists": used_parts}


# =================================================================== nets and checkpoints
@dataclass
class EvaluationResult:
    """evaluate_checkpoint's answer: what showResults.m prints, and how it was measured."""

    binary_error: float
    stability: float
    layer_id: int
    is_baseline: bool
    details: Any = None

    def line(self) -> str:
        return format_result_line(self.binary_error, self.stability)


def load_net_for_evaluation(path: os.PathLike | str, device: Any = "cpu") -> tuple[Any, dict[str, Any], Any]:
    """Load a trained net: the package's ``net-epoch-N.pt`` or a MATLAB ``net-epoch-N.mat``.

    Returns (net in evaluation mode on `device`, stats, meta).
    """

    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"checkpoint not found: {path}")
    state = load_mat_checkpoint(path) if path.suffix.lower() == ".mat" else load_checkpoint(path)
    try:
        net = SimpleNN.from_specs(state.specs)
        if state.state_dict:          # a .pt written from a MATLAB state holds the weights in its specs only
            net.load_state_dict(state.state_dict)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise EvaluationError(f"{path}: its layers do not make a network ({type(exc).__name__}: "
                              f"{str(exc).strip()[:300]})") from exc
    if state.meta is not None:
        try:
            net.meta = state.meta
        except AttributeError:
            pass
    net = net.to(resolve_device(device)).eval()
    return net, state.stats, state.meta


def evaluate_net(net: SimpleNN, stats: Any, sources: Sequence[CategorySource], mean_data: np.ndarray, *,
                 layer_id: int | None = None, model: str | None = None, part_list: Sequence[int] = (1, 2),
                 multiclass: bool | None = None, error_name: str = "binerr", device: Any = None,
                 batch_size: int = BATCH_SIZE, progress: bool = False,
                 image_size: Sequence[int] | None = None) -> EvaluationResult:
    """showResults.m's getResult / getResult_multiClass on a loaded net.

    layer_id: explicit, else `model`'s (showResults.m: 14 for vgg-vd-16, 6
    for alexnet / vgg-m / vgg-s), else the first conv_mask layer. A net without conv_mask layers (the plain-CNN
    baseline) is measured the same way on its conv layer at `layer_id`
    (give `model` or `layer_id`). `multiclass` defaults to more than one
    source.

    Unlike the original's getResult, which wraps everything in try/catch and
    reports 0 for a net it cannot evaluate, errors are raised here.
    """
    types = net.layer_types
    is_baseline = "conv_mask" not in types
    if layer_id is None:
        layer_id = DEFAULT_LAYER_ID.get(model) if model is not None else None
        if layer_id is None:
            layer_id = first_conv_mask_layer_id(types)
        if layer_id is None:
            raise EvaluationError("the net has no conv_mask layer (a plain-CNN baseline): pass model= (one of "
                                  f"{', '.join(DEFAULT_LAYER_ID)}) or layer_id= to say which conv layer to measure")
    binary_error = final_val_error(stats, error_name)
    multiclass = len(sources) > 1 if multiclass is None else multiclass
    if multiclass:
        value, details = compute_stability_multiclass(net, sources, layer_id, mean_data, part_list=part_list,
                                                      image_size=image_size, device=device,
                                                      batch_size=batch_size, progress=progress)
    else:
        if len(sources) != 1:
            raise EvaluationError(f"single-class evaluation takes one category, got {len(sources)}")
        parts = (1,) if sources[0].name == GOLDFISH else part_list
        details = compute_stability(net, sources[0], layer_id, mean_data, part_list=parts,
                                    image_size=image_size, device=device, batch_size=batch_size,
                                    progress=progress)
        value = details.stability
    return EvaluationResult(binary_error, value, int(layer_id), is_baseline, details)


def evaluate_checkpoint(path: os.PathLike | str, categories: Sequence[str] | str, conf: Any,
                        mean_data: np.ndarray | os.PathLike | str, *, dataset: str | None = None,
                        layer_id: int | None = None, model: str | None = None, multiclass: bool | None = None,
                        error_name: str = "binerr", device: Any = "cpu", batch_size: int = BATCH_SIZE,
                        image_size: Sequence[int] | None = None, progress: bool = True) -> EvaluationResult:
    """Binary error and location stability of a trained net, as showResults.m reports them.

    path: ``net-epoch-N.pt`` (reproduce.checkpoints) or a MATLAB
    ``net-epoch-N.mat`` (legacy_compat.checkpoint; the original's own files
    too). categories: the category name(s) (net.meta.classes.name order for
    a multi-class net). conf: a data_prep DataConf (images, truth files).
    mean_data: the imdb's dataMean in any form `read_mean_data` takes (an
    H x W x 3 or 3 x H x W array, an Imdb, a MATLAB imdb.mat, an imdb cache
    folder). dataset defaults to conf.dataset and picks the part list
    (showResults.m). layer_id / model: see `evaluate_net` (a checkpoint
    without conv_mask layers, the plain-CNN baseline, needs one of them).
    """
    net, stats, _ = load_net_for_evaluation(path, device)
    if isinstance(categories, str):
        categories = [categories]
    dataset = dataset or getattr(conf, "dataset", None)
    part_list = part_list_for(dataset) if dataset else (1, 2)
    mean = read_mean_data(mean_data)
    sources = [CategorySource.from_conf(c, conf, sorted(set(part_list) | {1})) for c in categories]
    return evaluate_net(net, stats, sources, mean, layer_id=layer_id, model=model, part_list=part_list,
                        multiclass=multiclass, error_name=error_name, device=device, batch_size=batch_size,
                        progress=progress, image_size=image_size)


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
