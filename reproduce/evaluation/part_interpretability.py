"""Part interpretability: the papers' second measure of filter semantics (Table 1 / 2).

    python -m reproduce.interpretability --maps MAPS.npz --parts PARTS.npz --centre C --stride S \\
        --radius R --json OUT.json [--region round|upsample]

No counterpart in the original code: neither the MATLAB release (zqs1022/interpretableCNN,
whose showResults.m reports the binary error and location stability only) nor the
ada-shen/ICNN port computes it. This module implements the definition of CVPR 2018
Sec. 5.2.1 ("part interpretability", after Bau et al. 2017, "Network Dissection") and its
footnote, step by step, and says where each step comes from and which choices are ours.

The definition, as the command computes it on given maps (the contract other tools rely on):

1. Feature map. MAPS.npz `maps`, float32 (N, C, h, w): the measured tensor, as given (the
   command applies no ReLU). Paper: the feature map of filter f *after the ReLU / mask
   operations*. On a net (`measured_maps`) that is step_drawRF.m's `maskX`, the original code's
   own "masked feature map" of the measured filters: the output of the measured layer (the one
   location stability measures, showResults.m's layerID), ReLU'd, times the mask of the
   conv_mask layer above it (centred on the map's maximum, clipped at 0); for the ordinary CNN,
   whose layer above is a plain conv, the ReLU'd output alone. Location stability keeps its own
   tensor (the pre-ReLU output; computeStability.m, golden-checked).
2. Threshold. T_f = numpy.quantile(values, 1 - 0.005) (linear interpolation, numpy's default)
   over the N*h*w values of filter f: Bau et al.'s top 0.5 % of the activations over the dataset.
   A *valid* activation is a cell with x > T_f (strictly).
3. Region. Cell (i, j), 0-based, sits at pixel (C + i*S, C + j*S), pixels 1-based (row, column):
   x2p_.m's mapping, the one location stability uses for the peaks (C = targetCenter,
   S = targetStride of getConvNetPara.m). The paper's footnote to Sec. 5.2.1: instead of
   upsampling the map (Network Dissection's way), each valid activation gets a round receptive
   field, and the union of them all is the filter's region S_f^I: here the pixels p with
   |p - cell centre| <= R (Euclidean, in pixels) for at least one valid cell. The paper gives
   no radius. *Choice* (`default_radius`): R = S / sqrt(2), the circle through the corners of
   the S x S tile of pixels nearest to the cell, the smallest round field whose union over a
   block of valid cells covers the block's tiles without holes (VGG-16's conv_mask layer,
   S = 16: R = 11.3 px; the tiny net, S = 4: R = 2.83 px). `--radius` sets any other.
   `--region upsample` keeps Network Dissection's bilinear upsampling (anchored at the same
   cell centres, the border cell's value outside them; region = upsampled value > T_f) for
   comparison.
4. IoU with part k: |S_f^I n P_k^I| / |S_f^I u P_k^I| with PARTS.npz `parts`, bool
   (N, P, H, W), the part masks in the input crop (the toy's label maps; Pascal-Part's merged
   parts as getPart.m builds them). An empty region has IoU 0.
5. Association: filter f represents part k on image I when IoU > 0.2 (the papers' criterion).
6. P_{f,k} = the fraction of the images whose part k is non-empty on which f represents k.
   P_f = max over the parts that occur in at least one image (the papers: the highest
   probability of part association); `part_of_filter` is that part (the first of ties).
7. The figure: the mean of P_f over the filters.

Several categories (Table 2's multi-class nets; `multiclass_part_interpretability`): each
filter is assigned to the category c^ whose images activate it most, c^ = argmax_c mean over
c's images of sum_ij x_ij (the papers' rule), and measured (T_f, regions, parts) on c^'s images.

Images: the pipeline (reproduce.ablation, which the demo's ablation table, `reproduce.pretrain`
and `reproduce.paper --part-interpretability / --ablation` run) gives `compute_part_interpretability`
the held-out images: the imdb's validation objects of the measured category (`held_out_indices`:
getImdb.m's round(linspace) training picks left out), as the paper reports the measure on testing
images. (The toy has no test split.) A multi-class net's imdb (produceIMDB) repeats every
object and splits the repeated samples, so it holds no object out: there the same per-category
objects are measured, but the net has trained on copies of them (said in docs/RESULTS.md).

Memory: the maps are read once; the regions are built per block of filters from the valid
cells only (at most about 0.5 % of the cells, as sparse disc sums), never as an
images x filters x H x W tensor; the upsample method streams blocks of images x filters.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from PIL import Image

from data_prep.facts import DATASETS
from data_prep.images import MASK_IGNORE, mask_path, read_part_mask
from data_prep.imdb import linspace_split
from data_prep.toy import TOY_MASK_LABELS
from data_prep.vocpart import VOC_PART_MERGE, voc_part_masks_and_positions
from legacy_compat.atomic import atomic_write_bytes
from legacy_compat.cli import UserError, add_debug, run_cli
from legacy_compat.numerics import mlinspace, mround
from reproduce.evaluation.net_features import (
    iterate_patch_batches,
    layer_output,
    net_input_size,
    read_mean_data,
    target_layer_index,
)
from reproduce.evaluation.receptive_fields import drawing_setup, mask_x
from reproduce.layers.geometry import get_conv_net_para
from reproduce.runtime.device import module_device, resolve_device

__all__ = [
    "IOU_THRESHOLD",
    "REGION_METHODS",
    "TOP_QUANTILE",
    "InterpretabilityError",
    "MapGeometry",
    "PartInterpretability",
    "PartRegions",
    "compute_part_interpretability",
    "compute_part_interpretability_multiclass",
    "HeldOutImages",
    "default_radius",
    "disc_matrix",
    "filter_thresholds",
    "held_out_indices",
    "interpretability_from_hits",
    "interpretability_from_ious",
    "layer_geometry",
    "main",
    "measured_maps",
    "multiclass_part_interpretability",
    "part_interpretability",
    "part_regions_for",
    "region_part_ious",
    "report_radii",
    "source_layer_maps",
    "toy_part_regions",
    "upsample_matrix",
    "voc_part_regions",
]

TOP_QUANTILE = 0.005      # Bau et al. 2017: the top 0.5 % of a unit's activations over the dataset
IOU_THRESHOLD = 0.2       # CVPR 2018 Sec. 5.2.1: filter f represents part k on I when IoU > 0.2
REGION_METHODS = ("round", "upsample")
_CELL_BUDGET = 4_000_000  # region pixels (sparse entries) built at a time, about 50 MB


class InterpretabilityError(UserError, ValueError):
    """Bad input to the measure: the message names the argument, image or file."""


@dataclass
class PartRegions:
    """The part regions of the measured images, in the network-input crop.

    labels: (I, H, W) uint8 label maps (0 background, k = part k); parts: the part labels
    measured (a label not listed is ignored); names: part label -> name (for reports).
    """

    labels: np.ndarray
    parts: tuple[int, ...]
    names: dict[int, str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 3:
            raise InterpretabilityError(f"part label maps must be I x H x W, got shape {self.labels.shape}")
        self.parts = tuple(int(p) for p in self.parts)
        if not self.parts:
            raise InterpretabilityError("no part labels given")

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def masks(self, index: Sequence[int] | slice = slice(None)) -> np.ndarray:
        """(B, K, H, W) bool masks of the parts for images `index`."""
        lab = self.labels[index]
        return np.stack([lab == p for p in self.parts], axis=1)


@dataclass(frozen=True)
class MapGeometry:
    """Where the map's cells sit on the input crop (x2p_.m): cell (i, j), 0-based, at pixel
    (centre + i*stride, centre + j*stride), 1-based (row, column); the crop is H x W pixels."""

    centre: float
    stride: float
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.centre) and math.isfinite(self.stride) and self.stride > 0):
            raise InterpretabilityError(f"the stride must be a positive number and the centre finite, "
                                        f"got stride {self.stride}, centre {self.centre}")
        if min(self.image_size) < 1:
            raise InterpretabilityError(f"the image size must be positive, got {self.image_size}")


def default_radius(stride: float) -> float:
    """The round receptive field's default radius: stride / sqrt(2), the circle through the corners of
    the stride x stride tile of pixels nearest to a cell (step 3 of the module docstring)."""
    return float(stride) / math.sqrt(2.0)


def report_radii(stride: float) -> tuple[float, ...]:
    """The radii reported side by side (docs/RESULTS.md section 5): stride / sqrt(2) (the default),
    the stride (a field reaching the neighbouring cells' centres) and twice the stride."""
    return (default_radius(stride), float(stride), 2.0 * float(stride))


# ================================================================== steps 2-4
def filter_thresholds(maps: np.ndarray, top: float = TOP_QUANTILE) -> np.ndarray:
    """T_f per filter: numpy.quantile(values, 1 - top) over the N*h*w values of filter f, in the maps'
    own dtype (step 2). maps: (N, C, h, w). Returns (C,)."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] == 0 or maps.shape[1] == 0:
        raise InterpretabilityError(f"maps must be N x C x h x w with N, C >= 1, got shape {maps.shape}")
    if not 0.0 < top < 1.0:
        raise InterpretabilityError(f"the top fraction must lie in (0, 1), got {top}")
    if not np.isfinite(maps).all():
        raise InterpretabilityError("the feature maps hold NaN or Inf values")
    per_filter = np.moveaxis(maps, 1, 0).reshape(maps.shape[1], -1)
    return np.quantile(per_filter, 1 - top, axis=1)


def disc_matrix(map_size: tuple[int, int], geometry: MapGeometry, radius: float) -> scipy.sparse.csr_matrix:
    """(h*w, H*W) sparse 0/1: row i*w + j holds the pixels p (row-major, (r-1)*W + (c-1)) with
    |p - centre of cell (i, j)| <= radius, Euclidean (step 3)."""
    if not (math.isfinite(radius) and radius >= 0):
        raise InterpretabilityError(f"the radius must be a number >= 0, got {radius}")
    h, w = int(map_size[0]), int(map_size[1])
    big_h, big_w = geometry.image_size
    rows = np.arange(1, big_h + 1, dtype=np.float64)
    cols = np.arange(1, big_w + 1, dtype=np.float64)
    dr = rows[None, :] - (geometry.centre + np.arange(h) * geometry.stride)[:, None]        # h x H
    dc = cols[None, :] - (geometry.centre + np.arange(w) * geometry.stride)[:, None]        # w x W
    indptr, indices = [0], []
    for i in range(h):
        for j in range(w):
            inside = np.sqrt(dr[i][:, None] ** 2 + dc[j][None, :] ** 2) <= radius
            flat = np.flatnonzero(inside)
            indices.append(flat)
            indptr.append(indptr[-1] + flat.size)
    data = np.ones(indptr[-1], dtype=np.float32)
    return scipy.sparse.csr_matrix((data, np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
                                   shape=(h * w, big_h * big_w))


def upsample_matrix(image_len: int, map_len: int, centre: float, stride: float) -> np.ndarray:
    """(image_len, map_len) bilinear interpolation weights (`--region upsample`, Network Dissection's
    way): image pixel y (1-based) from cells whose centres lie at x2p_'s positions centre + i * stride
    (i 0-based). Outside the first and last cell centres the border cell's value is kept."""
    if map_len < 1 or image_len < 1:
        raise InterpretabilityError(f"sizes must be positive, got image {image_len}, map {map_len}")
    if not stride > 0:
        raise InterpretabilityError(f"stride must be positive, got {stride}")
    y = np.arange(1, image_len + 1, dtype=np.float64)
    u = np.clip((y - float(centre)) / float(stride), 0.0, map_len - 1.0)     # 0-based cell coordinate
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, map_len - 1)
    frac = u - lo
    a = np.zeros((image_len, map_len), dtype=np.float64)
    rows = np.arange(image_len)
    np.add.at(a, (rows, lo), 1.0 - frac)
    np.add.at(a, (rows, hi), frac)
    return a


def _round_ious(maps: np.ndarray, thresholds: np.ndarray, parts: np.ndarray, discs: scipy.sparse.csr_matrix,
                ) -> np.ndarray:
    """Round receptive fields: (N, F, K) IoUs of F filters' regions (union of the discs of their valid
    cells) with the parts. Only (image, filter) pairs with a valid cell are built, a bounded number
    of region pixels at a time."""
    n, f = maps.shape[:2]
    k = parts.shape[1]
    flat_parts = parts.reshape(n, k, -1)
    part_size = flat_parts.sum(axis=2, dtype=np.int64)                       # N x K
    valid = (maps > thresholds.reshape(1, f, 1, 1)).reshape(n, f, -1)        # N x F x hw
    img, filt = np.nonzero(valid.any(axis=2))
    ious = np.zeros((n, f, k), dtype=np.float64)
    if img.size == 0:
        return ious
    per_disc = max(1, int(np.diff(discs.indptr).max()))
    cost = np.cumsum(valid[img, filt].sum(axis=1) * per_disc)              # region pixels, at most
    start = 0
    while start < img.size:
        base = cost[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cost, base + _CELL_BUDGET, side="right")))
        rows = slice(start, stop)
        cells = scipy.sparse.csr_matrix(valid[img[rows], filt[rows]].astype(np.float32))
        region = (cells @ discs).tocsr()                                     # pairs x HW, > 0 inside
        region.eliminate_zeros()
        size = np.diff(region.indptr)
        owner = np.repeat(np.arange(stop - start), size)
        inside = flat_parts[img[rows][owner], :, region.indices]            # entries x K
        inter = np.stack([np.bincount(owner, weights=inside[:, q], minlength=stop - start) for q in range(k)], 1)
        union = size[:, None] + part_size[img[rows]] - inter
        ious[img[rows], filt[rows]] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        start = stop
    return ious


def _upsample_ious(maps: np.ndarray, thresholds: np.ndarray, parts: np.ndarray, up_h: np.ndarray,
                   up_w: np.ndarray) -> np.ndarray:
    """Network Dissection's region (bilinear upsampling, then > T_f): (N, F, K) IoUs, in blocks of
    images so that the upsampled maps take about 64 MB at a time."""
    n, f = maps.shape[:2]
    pixels = up_h.shape[0] * up_w.shape[0]
    step = max(1, (64 << 20) // max(1, 8 * f * pixels))
    m = torch.as_tensor(parts.reshape(n, parts.shape[1], -1)).to(torch.float32)
    t = torch.as_tensor(np.asarray(thresholds, dtype=np.float64))[None, :, None, None]
    out = []
    for s in range(0, n, step):
        x = torch.as_tensor(np.asarray(maps[s:s + step], dtype=np.float64))
        big = torch.einsum("Hh,bphw,Ww->bpHW", torch.as_tensor(up_h), x, torch.as_tensor(up_w))
        r = (big > t).flatten(2).to(torch.float32)                           # B x F x HW
        ms = m[s:s + step]
        inter = torch.bmm(r, ms.transpose(1, 2)).to(torch.float64)
        union = r.sum(2, dtype=torch.float64)[:, :, None] + ms.sum(2, dtype=torch.float64)[:, None, :] - inter
        out.append(torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter)).numpy())
    return np.concatenate(out)


def region_part_ious(maps: np.ndarray, thresholds: np.ndarray, parts: np.ndarray, geometry: MapGeometry, *,
                     radius: float | None = None, method: str = "round",
                     discs: scipy.sparse.csr_matrix | None = None) -> np.ndarray:
    """IoU of every filter's region with every part, per image (steps 3-4): (N, F, K) float64.

    maps: (N, F, h, w); thresholds: (F,); parts: (N, K, H, W) bool; method 'round' (the paper's
    round receptive fields of `radius`, default `default_radius`) or 'upsample'."""
    maps, parts = np.asarray(maps), np.asarray(parts, dtype=bool)
    if parts.ndim != 4 or parts.shape[0] != maps.shape[0] or tuple(parts.shape[2:]) != tuple(geometry.image_size):
        raise InterpretabilityError(f"part masks {parts.shape} must be N x K x H x W with N = {maps.shape[0]} "
                                    f"images of {geometry.image_size[0]} x {geometry.image_size[1]} pixels")
    thresholds = np.asarray(thresholds)
    if method == "round":
        if discs is None:
            r = default_radius(geometry.stride) if radius is None else float(radius)
            discs = disc_matrix(maps.shape[2:], geometry, r)
        return _round_ious(maps, thresholds, parts, discs)
    if method == "upsample":
        up_h = upsample_matrix(geometry.image_size[0], maps.shape[2], geometry.centre, geometry.stride)
        up_w = upsample_matrix(geometry.image_size[1], maps.shape[3], geometry.centre, geometry.stride)
        return _upsample_ious(maps, thresholds, parts, up_h, up_w)
    raise InterpretabilityError(f"unknown region method {method!r}; valid: {', '.join(REGION_METHODS)}")


# ================================================================== steps 5-7
def interpretability_from_hits(hits: np.ndarray, present_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 6 from counts: hits (F, K), the images whose part k is non-empty on which filter f represents
    k; present_count (K,), the images whose part k is non-empty. Returns (P_{f,k} as F x K, NaN for a
    part no image has; P_f as (F,), the max over the parts that occur, NaN when none occurs)."""
    count = np.asarray(present_count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_fk = np.asarray(hits, dtype=np.float64) / count[None, :]
    p_fk[:, count == 0] = np.nan
    p_f = np.full(p_fk.shape[0], np.nan) if (count == 0).all() else np.nanmax(p_fk, axis=1)
    return p_fk, p_f


def interpretability_from_ious(ious: np.ndarray, present: np.ndarray,
                               iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Steps 5-6 from IoUs (I, F, K) and present (I, K) (image I's part k is non-empty)."""
    ious = np.asarray(ious, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if ious.ndim != 3 or present.shape != (ious.shape[0], ious.shape[2]):
        raise InterpretabilityError(f"ious {ious.shape} and present {present.shape} must be I x F x K and I x K")
    hits = ((ious > iou_threshold) & present[:, None, :]).sum(axis=0)
    return interpretability_from_hits(hits, present.sum(axis=0))


@dataclass
class PartInterpretability:
    """The measure and its pieces: value (mean P_f), per_filter P_f (F,), per_filter_part P_{f,k}
    (F x K), part_of_filter (F,) the argmax part's index (-1 when no part occurs), thresholds T_f (F,),
    images_per_part (K,), and the settings (radius None for 'upsample')."""

    value: float
    per_filter: np.ndarray
    per_filter_part: np.ndarray
    part_of_filter: np.ndarray
    thresholds: np.ndarray
    images_per_part: np.ndarray
    method: str
    radius: float | None
    top: float
    iou_threshold: float
    parts: tuple[int, ...] = ()
    category_of_filter: np.ndarray | None = None

    def to_json(self) -> dict:
        """The JSON the command writes (NaN -> null)."""
        def num(v: Any) -> Any:
            return None if v is None or not math.isfinite(float(v)) else float(v)
        rows = [[num(v) for v in row] for row in self.per_filter_part]
        out = {"filters": [num(v) for v in self.per_filter], "mean": num(self.value),
               "part_of_filter": [None if int(k) < 0 else int(k) for k in self.part_of_filter],
               "per_filter_part": rows, "thresholds": [float(t) for t in self.thresholds],
               "images_per_part": [int(c) for c in self.images_per_part], "method": self.method,
               "radius": self.radius, "top": self.top, "iou_threshold": self.iou_threshold}
        if self.category_of_filter is not None:
            out["category_of_filter"] = [int(c) for c in self.category_of_filter]
        return out


def _part_of_filter(p_fk: np.ndarray) -> np.ndarray:
    """The part (0-based index) with the highest P_{f,k} (the first of ties), -1 when no part occurs."""
    filled = np.where(np.isnan(p_fk), -np.inf, p_fk)
    return np.where(np.isfinite(filled.max(axis=1)), np.argmax(filled, axis=1), -1)


def part_interpretability(maps: np.ndarray, parts: np.ndarray | PartRegions, geometry: MapGeometry, *,
                          radius: float | None = None, method: str = "round", top: float = TOP_QUANTILE,
                          iou_threshold: float = IOU_THRESHOLD, filter_block: int = 64) -> PartInterpretability:
    """Steps 2-7 on given maps (N, F, h, w) and part masks (N, K, H, W) bool (or PartRegions), streamed
    over blocks of `filter_block` filters."""
    maps = np.asarray(maps)
    labels = parts.parts if isinstance(parts, PartRegions) else ()
    parts = parts.masks() if isinstance(parts, PartRegions) else np.asarray(parts)
    if parts.ndim != 4 or parts.shape[0] != maps.shape[0]:
        raise InterpretabilityError(f"{maps.shape[0]} feature maps for part masks of shape {parts.shape} "
                                    f"(N x K x H x W)")
    if method not in REGION_METHODS:
        raise InterpretabilityError(f"unknown region method {method!r}; valid: {', '.join(REGION_METHODS)}")
    thresholds = filter_thresholds(maps, top)
    r = (default_radius(geometry.stride) if radius is None else float(radius)) if method == "round" else None
    discs = disc_matrix(maps.shape[2:], geometry, r) if method == "round" else None
    present = parts.reshape(parts.shape[0], parts.shape[1], -1).any(axis=2)            # N x K
    hits = np.zeros((maps.shape[1], parts.shape[1]), dtype=np.int64)
    for s in range(0, maps.shape[1], filter_block):
        ious = region_part_ious(maps[:, s:s + filter_block], thresholds[s:s + filter_block], parts, geometry,
                                radius=r, method=method, discs=discs)
        hits[s:s + filter_block] = ((ious > iou_threshold) & present[:, None, :]).sum(axis=0)
    p_fk, p_f = interpretability_from_hits(hits, present.sum(axis=0))
    finite = p_f[np.isfinite(p_f)]
    value = float(finite.mean()) if finite.size else float("nan")
    return PartInterpretability(value, p_f, p_fk, _part_of_filter(p_fk), thresholds, present.sum(axis=0), method,
                                r, top, iou_threshold, tuple(labels))


def multiclass_part_interpretability(maps: Sequence[np.ndarray], parts: Sequence[np.ndarray | PartRegions],
                                     geometry: MapGeometry, **kwargs: Any) -> PartInterpretability:
    """Several categories: maps[c] (N_c, F, h, w) and parts[c] of category c's images. Each filter is
    assigned to c^ = argmax_c mean over c's images of sum_ij x (the papers' rule; first of ties) and
    measured on c^'s images only (its own T_f there). per_filter_part holds the P_{f,k} of the filter's
    category (its parts, padded with NaN to the largest part count)."""
    if len(maps) != len(parts) or not maps:
        raise InterpretabilityError(f"{len(maps)} categories of maps for {len(parts)} of parts")
    score = np.stack([np.asarray(m).sum(axis=(2, 3), dtype=np.float64).mean(axis=0) for m in maps], axis=1)
    assigned = np.argmax(score, axis=1)                                        # F
    num_f = score.shape[0]
    results = {}
    for c in np.unique(assigned):
        sel = np.flatnonzero(assigned == c)
        results[int(c)] = (sel, part_interpretability(np.asarray(maps[c])[:, sel], parts[c], geometry, **kwargs))
    width = max(r.per_filter_part.shape[1] for _, r in results.values())
    p_f, p_fk = np.full(num_f, np.nan), np.full((num_f, width), np.nan)
    part_of, thresholds = np.full(num_f, -1), np.zeros(num_f)
    for sel, r in results.values():
        p_f[sel], part_of[sel], thresholds[sel] = r.per_filter, r.part_of_filter, r.thresholds
        p_fk[sel, :r.per_filter_part.shape[1]] = r.per_filter_part
    first = next(iter(results.values()))[1]
    finite = p_f[np.isfinite(p_f)]
    return PartInterpretability(float(finite.mean()) if finite.size else float("nan"), p_f, p_fk, part_of,
                                thresholds, np.zeros(0, dtype=np.int64), first.method, first.radius, first.top,
                                first.iou_threshold, (), assigned)


# ================================================================== part regions of the datasets
def _sample_crop(label_map: np.ndarray, box: Any, size: tuple[int, int]) -> np.ndarray:
    """getPart.m's crop and sampling: the box's rows and columns, sampled at round(linspace(1, n, tar))."""
    crop = label_map[box.ymin - 1:box.ymax, box.xmin - 1:box.xmax]
    if crop.size == 0:
        raise InterpretabilityError(f"the box {box} is empty in a {label_map.shape} label map")
    rows = mround(mlinspace(1, crop.shape[0], int(size[0]))).astype(np.int64) - 1
    cols = mround(mlinspace(1, crop.shape[1], int(size[1]))).astype(np.int64) - 1
    return crop[np.ix_(rows, cols)]


def toy_part_regions(objects: Sequence[Any], image_dir: Path | str, category: str, size: tuple[int, int],
                     parts: Sequence[int] | None = None) -> PartRegions:
    """The toy dataset's part label maps (<imgdir>/<wnid>_obj/mask/NNNNN.png, data_prep.toy) of
    `objects` (ObjRecords), cropped to each box and sampled to the input size as getPart.m does.
    parts: default every labelled part of the category (TOY_MASK_LABELS: the landmark parts, the
    body and the other limbs; Pascal-Part's part groups include the torso too)."""

    if category not in TOY_MASK_LABELS:
        raise InterpretabilityError(f"{category!r} is not a toy category ({', '.join(TOY_MASK_LABELS)})")
    names = dict(TOY_MASK_LABELS[category])
    labels = np.zeros((len(objects), int(size[0]), int(size[1])), dtype=np.uint8)
    for n, obj in enumerate(objects):
        path = Path(image_dir) / f"{category}_obj" / "mask" / f"{Path(obj.filename).stem}.png"
        if not path.is_file():
            raise InterpretabilityError(f"toy part mask not found: {path}")
        with Image.open(path) as im:
            labels[n] = _sample_crop(np.asarray(im, dtype=np.uint8), obj.bndbox, size)
    return PartRegions(labels, tuple(parts) if parts is not None else tuple(sorted(names)), names)


def voc_part_regions(objects: Sequence[Any], annodir: Path | str, conf: Any, size: tuple[int, int]) -> PartRegions:
    """Pascal-Part's merged part regions (getPart.m's getIMDBMask, data_prep.vocpart) of `objects`."""
    masks, _ = voc_part_masks_and_positions(objects, annodir, conf, size)
    merge = VOC_PART_MERGE.get(objects[0].name, ()) if objects else ()
    parts = tuple(range(1, len(merge) + 1)) or tuple(int(v) for v in np.unique(masks) if v > 0)
    return PartRegions(np.moveaxis(masks, 2, 0), parts, {p: f"part group {p}" for p in parts})


def part_regions_for(dataset: str, category: str, objects: Sequence[Any], conf: Any,
                     size: tuple[int, int], annodir: Path | str | None = None) -> PartRegions:
    """The part regions of a dataset's objects: the toy's label maps, or Pascal-Part's (vocpart,
    with `annodir` the Pascal-Part Annotations_Part folder; your own images' label maps, with `annodir` their
    --part-masks folder): the dataset row's part_regions (data_prep.facts). Other datasets have part landmarks
    only."""
    source = DATASETS[dataset].part_regions if dataset in DATASETS else None
    if source == "generated-masks":
        return toy_part_regions(objects, conf.imgdir, category, size)
    if source == "pascal-part":
        if annodir is None:
            raise InterpretabilityError(f"{dataset}: give annodir, the Pascal-Part Annotations_Part folder")
        return voc_part_regions(objects, annodir, conf, size)
    if source == "label-maps":
        if annodir is None:
            raise InterpretabilityError("not measured: no part masks (give --part-masks DIR)")
        return image_part_regions(objects, annodir, size)
    raise InterpretabilityError(f"dataset {dataset!r} has no part regions (only landmarks): part "
                                f"interpretability needs the toy dataset's masks, Pascal-Part's or --part-masks")


def image_part_regions(objects: Sequence[Any], masks: Path | str, size: tuple[int, int]) -> PartRegions:
    """A folder of your own images' label maps (--part-masks DIR, data_prep.images), cropped to each
    object's box and sampled to the input size as getPart.m does (`_sample_crop`); an image without a
    map has no part; 255 (VOC's 'void') is no part. The parts: every label > 0 the maps hold."""
    labels = np.zeros((len(objects), int(size[0]), int(size[1])), dtype=np.uint8)
    for n, obj in enumerate(objects):
        path = mask_path(Path(masks), obj.filename)
        if path.is_file():
            labels[n] = _sample_crop(read_part_mask(path), obj.bndbox, size)
    labels[labels == MASK_IGNORE] = 0
    parts = tuple(int(v) for v in np.unique(labels) if v > 0)
    if not parts:
        raise InterpretabilityError(f"the label maps in {masks} hold no part (every value 0 or {MASK_IGNORE}) "
                                    f"inside the objects' boxes")
    return PartRegions(labels, parts, {p: f"part {p}" for p in parts})


def held_out_indices(objects: Sequence[Any]) -> list[int]:
    """The held-out objects: indices into `objects` (the readAnnotation objset, None for skipped boxes)
    of the imdb's validation positives. getImdb.m trains on the objects round(linspace(1, n, round(0.9 n)))
    of the n read ones (both mirrors; data_prep.imdb.linspace_split); the others are validation images."""
    kept = [i for i, o in enumerate(objects) if o is not None]
    if not kept:
        return []
    train = set(int(t) - 1 for t in linspace_split(len(kept)))
    return [i for p, i in enumerate(kept) if p not in train]


# ================================================================== on a net
@torch.no_grad()
def layer_maps(net: Any, load_patch: Callable[[int], np.ndarray], indices: Sequence[int], mean_data: np.ndarray,
               target_layer: int, *, num_filters: int | None = None, device: Any = None,
               batch_size: int = 64) -> np.ndarray:
    """(len(indices), P, h, w) float32: the output of SimpleNN layer `target_layer` (1-based) for the images."""
    device = resolve_device(module_device(net) if device is None else device)
    net.to(device)
    out = []
    for _, x in iterate_patch_batches(load_patch, list(indices), mean_data, batch_size):
        y = layer_output(net, x.to(device), target_layer)
        out.append((y[:, :num_filters] if num_filters is not None else y).float().cpu().numpy())
    if not out:
        raise InterpretabilityError("no image to measure")
    return np.concatenate(out)


def source_layer_maps(net: Any, source: Any, layer_id: int, mean_data: Any, indices: Sequence[int], *,
                      device: Any = None, batch_size: int = 64, convnet: Any = None) -> np.ndarray:
    """(len(indices), P, h, w) float32: the output of the layer `layer_id` measures (getConvNetPara's conv
    index, `reproduce.evaluation.net_features.target_layer_index`) for source.objects[indices], the net in
    evaluation mode: location stability's tensor (pre-ReLU); `measured_maps` makes part
    interpretability's from it."""
    target = target_layer_index(get_conv_net_para(net) if convnet is None else convnet, layer_id)
    size = net_input_size(net)

    def load(i: int) -> np.ndarray:
        return source.load_patch(source.objects[i], size)
    return layer_maps(net.eval(), load, indices, read_mean_data(mean_data), target, device=device,
                      batch_size=batch_size)


def measured_maps(net: Any, layer_id: int, raw: np.ndarray) -> np.ndarray:
    """Part interpretability's tensor from the measured layer's output `raw` (N, F, h, w): step_drawRF.m's
    maskX, i.e. max(raw, 0) times the mask of the conv_mask layer above (getMu_max's peak, clipped at 0),
    or max(raw, 0) alone when the layer above is a plain conv (the ordinary CNN) or there is none. float32."""
    beta = filter_type = None
    if int(layer_id) < np.asarray(get_conv_net_para(net).target_layers).size:    # a conv layer above it
        setup = drawing_setup(net, layer_id, net_input_size(net))
        if setup.beta is not None:
            beta, filter_type = setup.beta.detach().cpu(), setup.filter_type.detach().cpu()
    masked, _, _, _ = mask_x(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)), beta, filter_type)
    return masked.numpy()


def layer_geometry(net: Any, layer_id: int) -> MapGeometry:
    """x2p_.m's targetCenter and targetStride of conv layer `layer_id`, and the net's input size."""
    convnet = get_conv_net_para(net)
    target_layer_index(convnet, layer_id)                      # a layer_id out of range is said first
    stride = float(np.asarray(convnet.target_stride).reshape(-1)[layer_id - 1])
    centre = float(np.asarray(convnet.target_center).reshape(-1)[layer_id - 1])
    return MapGeometry(centre, stride, net_input_size(net))


@dataclass
class HeldOutImages:
    """The images of one category part interpretability is measured on: `source` (a
    location_instability.CategorySource: its objects and getI), `regions` the part label maps of the
    images, `indices` which of source.objects they are (same order; None: all; the pipeline passes
    `held_out_indices`), `maps` the measured layer's raw output for them when computed beforehand
    (`source_layer_maps`; None: the net runs)."""

    source: Any
    regions: PartRegions
    indices: Sequence[int] | None = None
    maps: np.ndarray | None = None


def _net_maps(net: Any, images: HeldOutImages, mean_data: Any, layer_id: int, device: Any) -> np.ndarray:
    """The post-ReLU/mask maps of `images` (`measured_maps`), checked against their part label maps."""
    source, regions, indices, maps = images.source, images.regions, images.indices, images.maps
    size = net_input_size(net)
    if tuple(regions.labels.shape[1:]) != tuple(size):
        raise InterpretabilityError(f"part label maps are {regions.labels.shape[1:]}, the net's input {size}")
    indices = list(range(len(source.objects))) if indices is None else [int(i) for i in indices]
    if len(indices) != regions.num_images:
        raise InterpretabilityError(f"{len(indices)} images for {regions.num_images} part label maps")
    if maps is None:
        maps = source_layer_maps(net, source, layer_id, mean_data, indices, device=device)
    return measured_maps(net, layer_id, maps)


def compute_part_interpretability(net: Any, images: HeldOutImages, mean_data: Any, *, layer_id: int,
                                  device: Any = None, **settings: Any) -> PartInterpretability:
    """Part interpretability of the filters of layer `layer_id` (getConvNetPara's conv index, as
    `reproduce.evaluation.location_instability.compute_stability`) over the `HeldOutImages` (the
    net in evaluation mode on `device` when their maps are not given), on the post-ReLU/mask tensor
    (`measured_maps`).

    settings: `part_interpretability`'s radius (default from the layer's stride), method, top, ..."""
    geometry = layer_geometry(net, layer_id)
    masked = _net_maps(net.eval(), images, mean_data, layer_id, device)
    return part_interpretability(masked, images.regions, geometry, **settings)


def compute_part_interpretability_multiclass(net: Any, images: Sequence[HeldOutImages], mean_data: Any, *,
                                             layer_id: int, device: Any = None,
                                             **settings: Any) -> PartInterpretability:
    """A multi-class net: each category's held-out images (images[c]); every filter assigned to the
    category that activates it most (`multiclass_part_interpretability`); `category_of_filter` says
    which."""
    geometry = layer_geometry(net, layer_id)
    maps = [_net_maps(net.eval(), c, mean_data, layer_id, device) for c in images]
    return multiclass_part_interpretability(maps, [c.regions for c in images], geometry, **settings)


# ================================================================== command line
def _load_array(path: str, field: str) -> np.ndarray:
    """`field` of the .npz file `path`, or an InterpretabilityError naming both."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InterpretabilityError(f"{path}: cannot read it as an .npz file ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InterpretabilityError(f"{path}: not an .npz file (np.savez writes one, with an array '{field}')")
    with data:
        if field not in data.files:
            raise InterpretabilityError(f"{path}: no array '{field}' (it holds {', '.join(data.files) or 'none'})")
        try:
            return np.asarray(data[field])
        except ValueError as exc:                      # an object array (pickled): refused
            raise InterpretabilityError(f"{path}: '{field}' cannot be read ({exc})") from None


def _checked_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, MapGeometry]:
    maps = _load_array(args.maps, "maps")
    parts = _load_array(args.parts, "parts")
    if maps.ndim != 4 or min(maps.shape) < 1 or not np.issubdtype(maps.dtype, np.number):
        raise InterpretabilityError(f"{args.maps}: 'maps' must be a numeric N x C x h x w array, got "
                                    f"{maps.dtype} {maps.shape}")
    if not np.isfinite(maps).all():
        raise InterpretabilityError(f"{args.maps}: 'maps' holds NaN or Inf values")
    if parts.ndim != 4 or min(parts.shape) < 1 or not (parts.dtype == bool or np.issubdtype(parts.dtype, np.integer)):
        raise InterpretabilityError(f"{args.parts}: 'parts' must be a bool N x P x H x W array, got "
                                    f"{parts.dtype} {parts.shape}")
    if parts.shape[0] != maps.shape[0]:
        raise InterpretabilityError(f"{args.parts}: 'parts' has {parts.shape[0]} images, {args.maps}'s 'maps' "
                                    f"{maps.shape[0]}")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    return maps, parts.astype(bool, copy=False), MapGeometry(args.centre, args.stride, tuple(parts.shape[2:]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.interpretability",
                                description="Part interpretability (CVPR 2018 Sec. 5.2.1) of saved feature maps. "
                                "Cell (i, j), 0-based, sits at pixel (C + i*S, C + j*S), 1-based (row, column); "
                                "T_f = numpy.quantile of filter f's N*h*w values at 1 - top; valid cells x > T_f; "
                                "region = pixels within R of a valid cell (union); association IoU > 0.2; P_f = "
                                "max over the parts present in some image of the fraction of the images with "
                                "that part on which the filter associates.")
    p.add_argument("--maps", required=True, help="NPZ with 'maps', float32 N x C x h x w (no ReLU is applied)")
    p.add_argument("--parts", required=True, help="NPZ with 'parts', bool N x P x H x W (part masks in the crop)")
    p.add_argument("--centre", type=float, required=True, help="C: the pixel (1-based) of cell 0 (targetCenter)")
    p.add_argument("--stride", type=float, required=True, help="S: pixels between cells (targetStride)")
    p.add_argument("--radius", type=float, default=None,
                   help="R: the round receptive field's radius in pixels (default S / sqrt(2))")
    p.add_argument("--region", choices=REGION_METHODS, default="round",
                   help="round (the paper's footnote, default) or upsample (Network Dissection's bilinear)")
    p.add_argument("--top", type=float, default=TOP_QUANTILE, help="the top fraction (default 0.005)")
    p.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="the association IoU (default 0.2, strict >)")
    p.add_argument("--json", required=True, help="the output JSON file (written atomically)")
    add_debug(p)
    return p


def _run(args: argparse.Namespace) -> int:
    maps, parts, geometry = _checked_inputs(args)
    res = part_interpretability(maps, parts, geometry, radius=args.radius, method=args.region, top=args.top,
                                iou_threshold=args.iou)
    out = {**res.to_json(), "centre": geometry.centre, "stride": geometry.stride,
           "num_images": int(maps.shape[0]), "maps": str(args.maps), "parts": str(args.parts)}
    atomic_write_bytes(Path(args.json), json.dumps(out, indent=1).encode())
    where = f"radius {res.radius:g} px" if res.radius is not None else "bilinear upsampling"
    print(f"part interpretability {out['mean'] if out['mean'] is None else format(out['mean'], '.4f')} "
          f"(mean P_f over {maps.shape[1]} filters, {maps.shape[0]} images, {args.region} regions, {where}); "
          f"{args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.interpretability`; errors are one line (legacy_compat.cli.run_cli)."""
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.interpretability", lambda: _run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
