"""Location instability (location stability in the original's words) of an ICNN's filters.

Ports
- tool/main/step_computeStability.m and computeStability.m (one category);
- tool/main/step_computeStability_multiClass.m and its
  computeStability_multiClass (several categories, each filter assigned to
  the category it fires most for);
- tool/main/getDistSqrtVar.m (getDiff, getAvgDistSqrtVar);
- the peaks of getCNNFeature.m's maps (the forward passes themselves:
  reproduce.evaluation.net_features).

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
(reproduce/golden/evaluation_cases.py) convert from and to MATLAB's 2 x P x I.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from data_prep.annotations import read_annotation
from data_prep.cub200 import read_annotation_sampling_cub
from data_prep.facts import GOLDFISH, category_samples_objects
from data_prep.get_i import get_i
from data_prep.readers import read_part_truth_file
from legacy_compat.numerics import mmax_reduce, mround, mvar, sort_ascend_stable, sort_descend_stable
from reproduce.evaluation.net_features import (
    ConvNet,
    EvaluationError,
    convnet_field,
    iterate_patch_batches,
    layer_maps_of_batches,
    net_input_size,
    num_output_filters,
    read_mean_data,
    target_layer_index,
)
from reproduce.layers.geometry import get_conv_net_para
from reproduce.layers.simplenn import SimpleNN
from reproduce.runtime.distributed import active, gather_over_ranks

__all__ = [
    "INVALID_OFFSET", "PATCH_NUM_PER_PATTERN", "SELECTED_PATTERN_RATIO", "BATCH_SIZE",
    "StabilitySettings", "ForwardPass", "MeasuredLayer", "StabilityResult", "PartCentres", "CategorySource",
    "peak_positions", "peaks_to_image", "part_centres", "read_part_centres",
    "get_dist_sqrt_var", "stability_from_distances", "multiclass_stability",
    "extract_layer_peaks", "peaks_of_maps", "compute_stability", "compute_stability_multiclass",
]

INVALID_OFFSET = 100000.0          # getDistSqrtVar.m's invalidNum
PATCH_NUM_PER_PATTERN = 100        # step_computeStability*.m
SELECTED_PATTERN_RATIO = 1.0       # step_computeStability*.m
BATCH_SIZE = 32                    # images per forward pass (the original: one at a time)


@dataclass(frozen=True)
class StabilitySettings:
    """What step_computeStability*.m measures: the parts (partList), the share of the filters
    measured (partRate: the first round(P * part_rate)), the share of the most stable of them
    averaged (selectedPatternRatio), the top images per filter (patchNumPerPattern); and two
    quirks of the original, kept by default (`peak_positions`' index, the goldfish's partList
    that sticks in step_computeStability_multiClass.m)."""

    part_list: Sequence[int] = (1, 2)
    part_rate: float = 1.0
    selected_pattern_ratio: float = SELECTED_PATTERN_RATIO
    patch_num_per_pattern: int = PATCH_NUM_PER_PATTERN
    fix_nonsquare_index: bool = False
    goldfish_rule_sticks: bool = True


@dataclass(frozen=True)
class ForwardPass:
    """How the images go through the net: on `device` (None: where the net is), `batch_size`
    images at a time (the original: one), with a progress bar or not."""

    device: Any = None
    batch_size: int = BATCH_SIZE
    progress: bool = False


@dataclass(frozen=True)
class MeasuredLayer:
    """The layer measured and the geometry it is read with: `layer_id` (getConvNetPara's conv
    index), `convnet` (getConvNetPara's struct; None: computed from the net), `image_size`
    (ih, iw, the net's input; None: read from net.meta.normalization.imageSize)."""

    layer_id: int
    convnet: ConvNet | None = None
    image_size: Sequence[int] | None = None

    def of(self, net: SimpleNN) -> "MeasuredLayer":
        """This layer with its convnet and input size filled in from `net` where not given."""
        convnet = get_conv_net_para(net) if self.convnet is None else self.convnet
        size = net_input_size(net) if self.image_size is None else self.image_size
        return MeasuredLayer(int(self.layer_id), convnet, (int(size[0]), int(size[1])))


def _x2p(idx_hw: np.ndarray, layer_id: int, convnet: ConvNet) -> np.ndarray:
    """x2p_.m: pHW = targetCenter(layer) + (xHW - 1) .* targetStride(layer), for 1-based map indices."""
    stride = convnet_field(convnet, "targetStride")[int(layer_id) - 1]
    centre = convnet_field(convnet, "targetCenter")[int(layer_id) - 1]
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


def extract_layer_peaks(net: SimpleNN, batches: Iterable[tuple[list[int], torch.Tensor]], target_layer: int,
                        num_images: int, num_filters: int | None = None, device: Any = None,
                        fix_nonsquare_index: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """The peaks of every filter of SimpleNN layer `target_layer` over the batches.

    Returns (idx_h, idx_w, score) as (num_images, P) arrays (1-based indices,
    zeros for the images never seen, as the original's preallocated arrays)
    and the (H, W) size of the maps. Only the first `num_filters` channels
    (computeStability.m's `1:patNum`) are kept. Runs on `device`, moving only
    the peaks back (`layer_maps_of_batches`; `peaks_of_maps` with a progress bar).
    """
    maps = layer_maps_of_batches(net, batches, target_layer, device)
    return peaks_of_maps(maps, num_images, num_filters, fix_nonsquare_index)


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


@dataclass
class CategoryPeaks:
    """computeStability.m's arrays for one category: the part landmarks (`truth`), the images with a
    part (`valid`, (I,) bool), the peaks' image positions (`pos`, (I, P, 2), zeros for the others) and
    scores (`score`, (I, P)), the maps' size (xh, xw) and the SimpleNN layer measured (1-based)."""

    truth: PartCentres
    valid: np.ndarray
    pos: np.ndarray
    score: np.ndarray
    map_size: tuple[int, int]
    target: int


def _checked_truth(source: CategorySource, part_list: Sequence[int]) -> PartCentres:
    """The category's landmarks of `part_list`, the images without an object left out; an error when
    the truth and the annotation disagree or no image has any of the parts."""
    truth = source.centres(part_list)
    num_img = len(source.objects)
    if truth.num_images < num_img:
        raise EvaluationError(f"category {source.name!r}: the truth files describe {truth.num_images} images, "
                              f"the annotation {num_img}")
    truth = _without_unread_objects(truth, source, num_img)
    if not truth.valid_images[:num_img].any():
        # the original crashes here (I is never assigned): say what is wrong instead
        raise EvaluationError(f"category {source.name!r}: no image has any of the parts {list(part_list)} "
                              f"in {[str(source.truth_files[int(p)]) for p in part_list]}")
    return truth


def _category_peaks(net: SimpleNN, source: CategorySource, layer: MeasuredLayer, mean_data: np.ndarray,
                    settings: StabilitySettings, forward: ForwardPass, num_filters: int | None,
                    layer_maps: Callable[[list[int]], torch.Tensor] | None = None) -> CategoryPeaks:
    """computeStability.m's loop over the images with a part (`layer` filled in by MeasuredLayer.of):
    getCNNFeature.m's forward passes (or `layer_maps`) and the peaks of the first `num_filters`."""
    truth = _checked_truth(source, settings.part_list)
    num_img = len(source.objects)
    valid = truth.valid_images[:num_img]
    indices = [int(i) for i in np.flatnonzero(valid)]
    target = target_layer_index(layer.convnet, layer.layer_id)
    mean = read_mean_data(mean_data)
    image_size = layer.image_size
    if mean.shape[:2] != tuple(image_size):
        raise EvaluationError(f"meanData is {mean.shape[0]} x {mean.shape[1]}, the net's input {image_size[0]} x "
                              f"{image_size[1]}: the mean belongs to another imdb or net")
    batch_size = forward.batch_size

    def load(i: int) -> np.ndarray:
        return source.load_patch(source.objects[i], image_size)

    def peaks(chosen: list[int]):
        if layer_maps is not None:
            chunks = (chosen[s:s + batch_size] for s in range(0, len(chosen), batch_size))
            maps = ((c, layer_maps(c)) for c in chunks)
        else:
            maps = layer_maps_of_batches(net, iterate_patch_batches(load, chosen, mean, batch_size), target,
                                         forward.device)
        return peaks_of_maps(maps, num_img, num_filters, settings.fix_nonsquare_index, forward.progress,
                             total=math.ceil(len(chosen) / batch_size))

    idx_h, idx_w, score, map_size = _peaks_over_ranks(peaks, indices)
    pos = peaks_to_image(idx_h, idx_w, layer.layer_id, layer.convnet)
    pos[~valid] = 0.0                                  # the original's zeros for skipped images
    return CategoryPeaks(truth, valid, pos, score, map_size, target)


def _peaks_over_ranks(peaks: Callable[[list[int]], tuple], indices: list[int]) -> tuple:
    """`peaks(indices)`; in a data-parallel run (reproduce.runtime.distributed) each rank runs its share
    indices[rank::K] and the ranks' arrays are added up: each image's row is non-zero on the one
    rank that ran it, so every rank ends with the arrays of one process."""
    dp = active()
    if dp is None or dp.world == 1:
        return peaks(indices)
    mine = indices[dp.rank::dp.world]
    parts = gather_over_ranks(peaks(mine) if mine else None, "sharing the location-stability forward passes")
    parts = [p for p in parts if p is not None]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), parts[0][3])


def _part_tuple(part_list: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(p) for p in np.asarray(part_list).reshape(-1))


def compute_stability(net: SimpleNN, source: CategorySource, layer: MeasuredLayer | int, mean_data: np.ndarray,
                      settings: StabilitySettings = StabilitySettings(), forward: ForwardPass = ForwardPass(),
                      layer_maps: Callable[[list[int]], torch.Tensor] | None = None) -> StabilityResult:
    """computeStability.m (with getCNNFeature.m batched): the location stability of one category.

    `net` is a SimpleNN (reproduce.layers.simplenn) in evaluation mode; `layer` the measured layer (a
    `MeasuredLayer`, or its layer_id: getConvNetPara's conv index); `mean_data` is the imdb's
    dataMean (H x W x 3, MATLAB layout). Only the images with at least one
    part are run through the net, up to the measured layer, `forward.batch_size` at
    a time on `forward.device` (None: the net's device). The patterns measured are the first
    round(P * part_rate) filters, of which round(that * selected_pattern_ratio)
    of the most stable are averaged (`settings`).

    No image with any part raises EvaluationError (the original crashes);
    a part no image has (fewer than 2) gives NaN for every filter and so a
    NaN stability, as in the original. The layer's image size (ih, iw) is the net's
    input size, read from net.meta.normalization.imageSize when not given.

    `layer_maps(indices)`, when given, is the measured layer's output (N x P x h x w) for those
    images (0-based indices into source.objects), computed beforehand (reproduce.ablation shares
    one forward pass with part interpretability): the net is then not run.
    """
    layer = (layer if isinstance(layer, MeasuredLayer) else MeasuredLayer(layer)).of(net)
    settings = replace(settings, part_list=_part_tuple(settings.part_list))
    target = target_layer_index(layer.convnet, layer.layer_id)
    pat_num = int(mround(np.float64(num_output_filters(net, target) * settings.part_rate)))
    selected = int(mround(np.float64(pat_num * settings.selected_pattern_ratio)))
    peaks = _category_peaks(net, source, layer, mean_data, settings, forward, pat_num, layer_maps)
    dist = get_dist_sqrt_var(peaks.pos, peaks.score, peaks.truth, settings.patch_num_per_pattern)
    if np.isnan(dist).all():
        warnings.warn(f"category {source.name!r}: every filter's distance spread is NaN (a part in "
                      f"{list(settings.part_list)} has fewer than 2 images): the stability is NaN",
                      RuntimeWarning, stacklevel=2)
    stability = stability_from_distances(dist, selected, layer.image_size)
    return StabilityResult(stability, dist, peaks.pos, peaks.score, peaks.valid, layer.image_size, peaks.map_size,
                           int(layer.layer_id), peaks.target, settings.part_list)


def compute_stability_multiclass(net: SimpleNN, sources: Sequence[CategorySource], layer: MeasuredLayer | int,
                                 mean_data: np.ndarray, settings: StabilitySettings = StabilitySettings(),
                                 forward: ForwardPass = ForwardPass()) -> tuple[float, dict[str, Any]]:
    """step_computeStability_multiClass.m: the location stability of a multi-class net.

    For each category (in net.meta.classes.name order) its own
    computeStability_multiClass: every filter's distSqrtVar / norm([ih iw])
    and its mean peak score over all the category's images; then
    `multiclass_stability`. Returns (stability, details) with details
    'stability' (P x C), 'score' (P x C), 'part_lists'. (settings.part_rate is not used: the
    multi-class step measures every filter.)

    Quirk kept: step_computeStability_multiClass.m sets partList = 1 when it
    meets the goldfish (n01443537) and never sets it back, so every category
    after the goldfish is measured on part 1 only.
    `settings.goldfish_rule_sticks=False` applies the rule to the goldfish alone.
    """
    layer = (layer if isinstance(layer, MeasuredLayer) else MeasuredLayer(layer)).of(net)
    part_list = _part_tuple(settings.part_list)
    stab_cols, score_cols, used_parts = [], [], []
    for source in sources:
        parts = part_list
        if source.name == GOLDFISH:
            parts = (1,)
            if settings.goldfish_rule_sticks:
                part_list = (1,)
        peaks = _category_peaks(net, source, layer, mean_data, replace(settings, part_list=parts), forward, None)
        dist = get_dist_sqrt_var(peaks.pos, peaks.score, peaks.truth, settings.patch_num_per_pattern)
        stab_cols.append(dist / np.linalg.norm(np.asarray(layer.image_size, dtype=np.float64)))
        score_cols.append(peaks.score.mean(axis=0))
        used_parts.append(parts)
    if not stab_cols:
        raise EvaluationError("no category given")
    stability = np.stack(stab_cols, axis=1)
    score = np.stack(score_cols, axis=1)
    value = multiclass_stability(stability, score, settings.selected_pattern_ratio)
    return value, {"stability": stability, "score": score, "part_lists": used_parts}
