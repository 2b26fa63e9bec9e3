"""Part interpretability: the paper's second measure of filter semantics (Table 1 / 2).

No counterpart in the original code: neither the MATLAB release (zqs1022/interpretableCNN,
whose showResults.m reports the binary error and location stability only) nor the
ada-shen/ICNN port computes it. This module implements the definition of the papers,
step by step, and says where each step comes from and which choices were ours.

The definition (CVPR 2018 Sec. 4 "Part interpretability", TPAMI 2020 Sec. 5.2.1; both follow
Bau et al. 2017, "Network Dissection", Sec. 2.2):

1. Feature map. For image I and filter f, the map x_f of the measured layer. *Choice*: the
   same layer and the same tensor location stability uses (`reproduce.evaluate`:
   showResults.m's layerID, the output `res(targetLayer+1).x` of the first conv_mask layer,
   or of the plain conv at that place in the ordinary CNN), so the two measures describe the
   same filters. Pre-ReLU values; the threshold below lies far in the upper tail, where ReLU
   changes nothing unless fewer than 0.5 % of the values are positive (then the region is the
   positive cells, exactly as after a ReLU).
2. Threshold. T_f is the activation value that the top 0.5 % of filter f's activations over the
   whole dataset exceed: p(x_f > T_f) = 0.005 (Bau et al.'s top quantile; the papers use it
   unchanged). *Choice*: as Network Dissection's code does, the quantile is taken over the
   map cells (all images, all positions; numpy's linear interpolation between order
   statistics), not over the upsampled pixels.
3. Receptive field on the image. The map is upsampled to the network input (the image crop
   getI makes) and thresholded: S_f^I = {pixels: x'_f > T_f}. Bau et al.: bilinear
   interpolation "anchoring interpolants at the center of each unit's receptive field".
   *Choice*: each cell (i, j) sits at x2p_'s image position (targetCenter + (i - 1) *
   targetStride, 1-based pixels: the same mapping location stability uses for the peaks);
   between cell centres the interpolation is bilinear (separable), outside the outermost
   centres the border cell's value is kept.
4. IoU with each part: IoU_{f,k}^I = |S_f^I n P_k^I| / |S_f^I u P_k^I|, P_k^I the ground-truth
   region of part k in the same crop (the toy dataset's label maps; Pascal-Part's merged parts
   as getPart.m builds them). An empty region gives IoU 0.
5. Association: filter f represents part k on image I when IoU_{f,k}^I > 0.2 (the papers'
   criterion; stricter than Network Dissection's 0.04 over the dataset).
6. P_{f,k} = mean over the images that contain part k of 1(IoU_{f,k}^I > 0.2). The filter's
   part interpretability P_f = max_k P_{f,k} (the papers report the highest probability of
   part association). *Choice*: a part no image contains is left out of the max; a filter
   then still has a value when at least one part occurs.
7. The figure reported: the mean of P_f over the measured filters (all filters of the layer;
   the papers average over filters).

What the measure can and cannot show: the region is, by construction, the top 0.5 % of the
filter's activations over the dataset, i.e. 0.5 % of all map cells in all, so a part that
covers much more than 0.5 % of the pixels of every image cannot be matched with IoU > 0.2 on
every image, however well a filter localises it. The values are therefore low for large parts
(the toy's body, or a head that fills 10 % of the crop), for every net alike; they are
comparable between nets measured on the same images and parts, not across datasets.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_prep.images import MASK_IGNORE, mask_path, read_part_mask
from data_prep.toy import TOY_MASK_LABELS
from data_prep.vocpart import VOC_PART_MERGE, voc_part_masks_and_positions
from legacy_compat.cli import UserError
from legacy_compat.numerics import mlinspace, mround

from .device import module_device, resolve_device
from .evaluate import iterate_patch_batches, layer_output, net_input_size, read_mean_data, target_layer_index
from .geometry import get_conv_net_para

__all__ = [
    "IOU_THRESHOLD",
    "TOP_QUANTILE",
    "InterpretabilityError",
    "PartInterpretability",
    "PartRegions",
    "compute_part_interpretability",
    "filter_thresholds",
    "interpretability_from_ious",
    "part_interpretability",
    "part_regions_for",
    "region_part_ious",
    "source_layer_maps",
    "toy_part_regions",
    "upsample_matrix",
    "voc_part_regions",
]

TOP_QUANTILE = 0.005      # Bau et al. 2017: the top 0.5 % of a unit's activations over the dataset
IOU_THRESHOLD = 0.2       # CVPR 2018 Sec. 4 / TPAMI 2020: filter f represents part k on I when IoU > 0.2


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

    def masks(self, index: Sequence[int] | slice) -> np.ndarray:
        """(B, K, H, W) bool masks of the parts for images `index`."""
        lab = self.labels[index]
        return np.stack([lab == p for p in self.parts], axis=1)


# ================================================================== the pieces of the definition
def upsample_matrix(image_len: int, map_len: int, centre: float, stride: float) -> np.ndarray:
    """(image_len, map_len) bilinear interpolation weights: image pixel y (1-based) from cells whose
    centres lie at x2p_'s positions `centre + (i - 1) * stride` (step 3 of the module docstring).

    Outside the first and last cell centres the border cell's value is kept. Each row sums to 1.
    """
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


def filter_thresholds(maps: np.ndarray, top: float = TOP_QUANTILE) -> np.ndarray:
    """T_f per filter: the value the top `top` fraction of the filter's map cells exceed over
    the dataset (step 2). maps: (I, P, h, w). Returns (P,) float64."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[0] == 0:
        raise InterpretabilityError(f"maps must be I x P x h x w with I >= 1, got shape {maps.shape}")
    if not 0.0 < top < 1.0:
        raise InterpretabilityError(f"the top fraction must lie in (0, 1), got {top}")
    if not np.isfinite(maps).all():
        raise InterpretabilityError("the feature maps hold NaN or Inf values")
    per_filter = np.moveaxis(maps, 1, 0).reshape(maps.shape[1], -1).astype(np.float64)
    return np.quantile(per_filter, 1.0 - top, axis=1)


def region_part_ious(maps: np.ndarray, thresholds: np.ndarray, part_masks: np.ndarray,
                     up_h: np.ndarray, up_w: np.ndarray) -> np.ndarray:
    """IoU of every filter's region with every part, per image (steps 3-4).

    maps: (B, P, h, w); thresholds: (P,); part_masks: (B, K, H, W) bool; up_h (H, h), up_w (W, w)
    from `upsample_matrix`. Returns (B, P, K) float64 (0 where the union is empty).
    """
    x = torch.as_tensor(np.asarray(maps, dtype=np.float64))
    big = torch.einsum("Hh,bphw,Ww->bpHW", torch.as_tensor(up_h), x, torch.as_tensor(up_w))
    region = big > torch.as_tensor(np.asarray(thresholds, dtype=np.float64))[None, :, None, None]
    parts = torch.as_tensor(np.asarray(part_masks, dtype=bool))
    if parts.shape[0] != region.shape[0] or parts.shape[2:] != region.shape[2:]:
        raise InterpretabilityError(f"part masks {tuple(parts.shape)} do not match the upsampled maps "
                                    f"{tuple(region.shape)} (B x K x H x W vs B x P x H x W)")
    # Pixel counts: float32 holds every integer below 2**24 exactly, so the counts are exact for any
    # image under 4096 x 4096, and converting to float32 is much cheaper than to float64.
    r = region.flatten(2).to(torch.float32)                   # B x P x HW
    m = parts.flatten(2).to(torch.float32)                    # B x K x HW
    inter = torch.bmm(r, m.transpose(1, 2)).to(torch.float64)  # B x P x K
    union = r.sum(2, dtype=torch.float64)[:, :, None] + m.sum(2, dtype=torch.float64)[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
    return iou.numpy()


def interpretability_from_ious(ious: np.ndarray, present: np.ndarray,
                               iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Steps 5-6: (P_{f,k} as P x K, NaN for a part no image has; P_f as (P,), NaN when no part occurs).

    ious: (I, P, K); present: (I, K) bool, image I contains part k."""
    ious = np.asarray(ious, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if ious.ndim != 3 or present.shape != (ious.shape[0], ious.shape[2]):
        raise InterpretabilityError(f"ious {ious.shape} and present {present.shape} must be I x P x K and I x K")
    hit = (ious > iou_threshold) & present[:, None, :]
    count = present.sum(axis=0).astype(np.float64)            # images with part k
    with np.errstate(invalid="ignore", divide="ignore"):
        p_fk = hit.sum(axis=0) / count[None, :]
    p_fk[:, count == 0] = np.nan
    p_f = np.full(p_fk.shape[0], np.nan) if (count == 0).all() else np.nanmax(p_fk, axis=1)
    return p_fk, p_f


def part_interpretability(maps: np.ndarray, regions: PartRegions, up_h: np.ndarray, up_w: np.ndarray, *,
                          top: float = TOP_QUANTILE, iou_threshold: float = IOU_THRESHOLD,
                          batch_size: int = 64) -> PartInterpretability:
    """Steps 2-7 on given feature maps (I, P, h, w) of the images whose regions are `regions`."""
    maps = np.asarray(maps)
    if maps.shape[0] != regions.num_images:
        raise InterpretabilityError(f"{maps.shape[0]} feature maps for {regions.num_images} part label maps")
    thresholds = filter_thresholds(maps, top)
    ious = np.concatenate([region_part_ious(maps[s:s + batch_size], thresholds,
                                            regions.masks(slice(s, s + batch_size)), up_h, up_w)
                           for s in range(0, maps.shape[0], batch_size)])
    present = regions.masks(slice(None)).any(axis=(2, 3))
    p_fk, p_f = interpretability_from_ious(ious, present, iou_threshold)
    finite = p_f[np.isfinite(p_f)]
    value = float(finite.mean()) if finite.size else float("nan")
    return PartInterpretability(value, p_f, p_fk, thresholds, regions.parts, present.sum(axis=0),
                                top, iou_threshold)


@dataclass
class PartInterpretability:
    """The measure and its pieces: value (mean P_f), per_filter P_f (P,), per_filter_part
    P_{f,k} (P x K), thresholds T_f (P,), parts (K labels), images_per_part (K,)."""

    value: float
    per_filter: np.ndarray
    per_filter_part: np.ndarray
    thresholds: np.ndarray
    parts: tuple[int, ...]
    images_per_part: np.ndarray
    top: float
    iou_threshold: float


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
    with `annodir` the Pascal-Part Annotations_Part folder). Other datasets have part landmarks only."""
    if dataset == "toy":
        return toy_part_regions(objects, conf.imgdir, category, size)
    if dataset == "vocpart":
        if annodir is None:
            raise InterpretabilityError("vocpart: give annodir, the Pascal-Part Annotations_Part folder")
        return voc_part_regions(objects, annodir, conf, size)
    if dataset == "images":
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
    index, `reproduce.evaluate.target_layer_index`) for source.objects[indices], the net in evaluation mode."""
    target = target_layer_index(get_conv_net_para(net) if convnet is None else convnet, layer_id)
    size = net_input_size(net)

    def load(i: int) -> np.ndarray:
        return source.load_patch(source.objects[i], size)
    return layer_maps(net.eval(), load, indices, read_mean_data(mean_data), target, device=device,
                      batch_size=batch_size)


def compute_part_interpretability(net: Any, source: Any, regions: PartRegions, mean_data: Any, *,
                                  layer_id: int, indices: Sequence[int] | None = None, device: Any = None,
                                  top: float = TOP_QUANTILE, iou_threshold: float = IOU_THRESHOLD,
                                  batch_size: int = 64, maps: np.ndarray | None = None) -> PartInterpretability:
    """Part interpretability of the filters of layer `layer_id` (getConvNetPara's conv index, as
    `reproduce.evaluate.compute_stability`) over `source`'s objects (an evaluate.CategorySource).

    regions: the part label maps of the objects `indices` (default: all of source.objects), in
    the same order. The net runs in evaluation mode up to the measured layer, unless `maps`, that
    layer's output for those images (`source_layer_maps`), was computed beforehand."""
    convnet = get_conv_net_para(net)
    target_layer_index(convnet, layer_id)                      # a layer_id out of range is said first
    size = net_input_size(net)
    if tuple(regions.labels.shape[1:]) != tuple(size):
        raise InterpretabilityError(f"part label maps are {regions.labels.shape[1:]}, the net's input {size}")
    indices = list(range(len(source.objects))) if indices is None else [int(i) for i in indices]
    if len(indices) != regions.num_images:
        raise InterpretabilityError(f"{len(indices)} images for {regions.num_images} part label maps")
    if maps is None:
        maps = source_layer_maps(net, source, layer_id, mean_data, indices, device=device, batch_size=batch_size,
                                 convnet=convnet)
    stride = float(np.asarray(convnet.target_stride).reshape(-1)[layer_id - 1])
    centre = float(np.asarray(convnet.target_center).reshape(-1)[layer_id - 1])
    up_h = upsample_matrix(size[0], maps.shape[2], centre, stride)
    up_w = upsample_matrix(size[1], maps.shape[3], centre, stride)
    return part_interpretability(maps, regions, up_h, up_w, top=top, iou_threshold=iou_threshold)
