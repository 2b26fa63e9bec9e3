"""Receptive-field pictures of an ICNN's filters (step_drawRF.m, drawEdge.m).

Ports tool/main/step_drawRF.m (createImages, generateAMTOriginalImages,
drawRawFMaskF, getMaskMap, computeRF, getValue, getImg_occlude, drawRF,
getRFMask, getRegion, maskX, getMu_max, imagewrite) and tool/main/drawEdge.m.

What `draw_rf` writes, under ``<out_dir>`` (the original's ``./draw_RF``),
with the original's file names (`<name>` is Name_batch, `<dep>` the filter,
1-based, `%04d`, `<k>` the k-th top image, `%05d`):

- ``img_ori/<name>-<dep>-<k>.jpg``: the showNum (10) images that activate
  filter dep most (an image counts when its peak reaches `tau`, the value
  exceeded by `integrateEnergy` = 0.3 % of the filter's activations; showNum
  of them are drawn at random), as the network sees them (getI crop, uint8);
- ``img_ori/<name>_tau.mat``: `tau`, one threshold per filter;
- ``img_maskF/<name>-<dep>-<k>_rawX.jpg``, ``_mask.jpg``, ``_maskX.jpg``: the
  filter's raw (pre-ReLU) map, the mask of the layer above, and the masked
  map, each scaled to 0-255 and blown up 16 x (`imagewrite`);
- ``img_ori/<name>-<dep>_template.mat``: `template` (2ih x 2iw x showNum,
  the occlusion receptive field: where covering the image with a 33 x 33
  grey square lowers the filter most, relative to its peak) and `map`;
- ``img_RF/<name>-<dep>-<k>.jpg``: the image with the filter's receptive
  region (getRegion) kept bright, the rest darkened, its edge drawn red;
- beyond the original: ``<name>_contact_sheet.png``, one row per visualised
  filter with its top images as in img_RF, for a person to look at.

Filters drawn: 1, 1 + visualizationStep (50), ... as in the original.

Substitutions and fixes (each where the original cannot run or depends on
closed code):
- drawEdge.m finds the region's edge with MATLAB's `edge(wei, 'canny')`
  (Image Processing Toolbox); here `skimage.feature.canny` with MATLAB's
  sigma sqrt(2) and its automatic thresholds (high: the 70th percentile of
  the 64-bin histogram of the normalised gradient magnitude, low 0.4 x
  high). (showResults.m also puts Piotr's toolbox on the path, but
  drawEdge.m does not use its structured edges.) On these binary regions
  both give the region's outline; pixel-exact edges are not promised.
- getRFMask indexes `T(hmin:hmin+ih-1, ...)` with `hmin = ih - thePos + 1`,
  where thePos = x2p_ of a map cell can be fractional (targetCenter 8.5 for
  vgg-vd-16): MATLAB errors on non-integer subscripts. Here thePos is
  rounded first (MATLAB round, halves away from zero).
- The random draws (rng(1), randperm) cannot be replayed in Python: a
  seeded numpy Generator is used (`seed`, default 1), so which of the images
  over tau are drawn differs from MATLAB's, not the rule.
- Empty objset elements (boxes under minArea) are skipped (the original's
  getI would fail on them).
- A layer whose upper neighbour is a plain conv (the plain-CNN baseline):
  maskX returns max(x, 0) unmasked, as the original; its `mask` is all ones
  here (the original leaves it unset and getMaskMap crashes).

Batched: the top-image search runs `batch_size` images per forward, and the
occlusion pass of computeRF runs `occlusion_batch_size` occluded copies per
forward (the original: 32 and 65), on any device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.ndimage
import torch
from PIL import Image, ImageDraw
from skimage.feature import canny
from tqdm import tqdm

from data_prep.annotations import read_annotation
from data_prep.facts import category_samples_objects
from legacy_compat import loadmat
from legacy_compat.atomic import atomic_write
from legacy_compat.matio import savemat
from legacy_compat.numerics import mlinspace, mmax_reduce, mround, sort_ascend_stable, sort_descend_stable
from reproduce.evaluation.net_features import (
    layer_output,
    net_input_size,
    num_output_filters,
    read_mean_data,
    target_layer_index,
)
from reproduce.layers.conv_mask import ConvMask
from reproduce.layers.geometry import ConvNetPara, get_conv_net_para, x2p
from reproduce.layers.simplenn import SimpleNN
from reproduce.runtime.device import module_device, resolve_device

__all__ = [
    "SHOW_NUM", "INTEGRATE_ENERGY", "VISUALIZATION_STEP", "DRAW_THRESHOLD", "SCALE_W",
    "OCCLUDE_SIZE", "OCCLUDE_STRIDE", "TOP_OCC_NUM", "DrawRFError", "DrawRFResult",
    "get_mu_max", "mask_x", "image_to_uint8_blocks", "imagewrite", "gaussian_kernel",
    "smooth_template", "get_rf_mask", "scaled_rf_settings", "drawing_objset", "get_region", "canny_edges", "draw_edge",
    "occlusion_list", "occluded_batch", "select_top_images", "accumulate_template",
    "contact_sheet", "draw_rf", "RFSettings", "tau_from_batches", "tau_from_masked", "occlusion_values", "occlusion_values_all",
    "add_image_template", "drawing_setup", "DrawingSetup", "DrawingImages",
]

SHOW_NUM = 10                 # step_drawRF.m showNum
INTEGRATE_ENERGY = 0.003      # step_drawRF.m integrateEnergy
VISUALIZATION_STEP = 50       # step_drawRF.m visualizationStep
SAMPLING_TIMES = 1000         # generateAMTOriginalImages samplingTimes
DRAW_THRESHOLD = 0.5          # drawRF drawThreshold
SCALE_W = 16                  # imagewrite scaleW
OCCLUDE_SIZE = 33             # computeRF occludeSize
OCCLUDE_STRIDE = 9            # computeRF stride
TOP_OCC_NUM = 4               # computeRF topOccNum
GAUSS_SIZE, GAUSS_SIGMA = 50, 30   # getRFMask: fspecial('gaussian', 50, 30)


class DrawRFError(ValueError):
    """Bad input to the receptive-field drawing: the message names the argument or layer."""


# =================================================================== maskX, getMu_max
def get_mu_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """getMu_max (step_drawRF.m): the position of every map's maximum, in linspace(-1, 1, h) units.

    x: (N, D, H, W). The maximum is searched in MATLAB's column-major order
    (rows fastest; ties -> the first); mu_x is the row's value and mu_y the
    column's, both read from linspace(-1, 1, H) (the original assumes square
    maps; a column beyond H raises, where MATLAB errors). Returns (mu_x,
    mu_y) as float64 (N, D) and the 0-based (row, column) of the maxima.
    """
    n, d, h, w = x.shape
    flat = x.transpose(2, 3).reshape(n, d, w * h)          # column-major: index = col * H + row
    _, p = mmax_reduce(flat, axis=2)
    col, row = p // h, p % h
    if w > h and int(col.max()) >= h:
        raise DrawRFError(f"getMu_max: a maximum in column {int(col.max()) + 1} of a {h} x {w} map: the original "
                          f"reads linspace(-1,1,{h}) there (index past the end)")
    tmp = torch.as_tensor(mlinspace(-1, 1, h), dtype=torch.float64, device=x.device)
    return tmp[row], tmp[col], row, col


def mask_x(x: torch.Tensor, beta: torch.Tensor | None, filter_type: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """maskX (step_drawRF.m): the upper conv_mask layer's mask, centred on each map's maximum.

    x: (N, D, H, W), the measured layer's output; beta, filter_type: (D,) of
    the conv_mask layer ABOVE (its weights{3} and `filter`), or None when
    that layer is a plain conv. Computes
        x = max(x, 0);  (mu_x, mu_y) = getMu_max(x)
        mask = max(1 - beta_d (|posX - mu_x| + |posY - mu_y|), 0);  mask = 1 where filter ~= 1
    (note the clip at 0, where the layer's own mask clips at -1). Returns
    (x .* mask, mask, mu_x, mu_y); without a conv_mask above: (max(x, 0),
    ones, None, None).
    """
    x = torch.clamp(x, min=0)
    if beta is None:
        return x, torch.ones_like(x), None, None
    n, d, h, w = x.shape
    mu_x, mu_y, _, _ = get_mu_max(x)
    pos_x = torch.as_tensor(mlinspace(-1, 1, h, dtype=np.float32), device=x.device).view(1, 1, h, 1)
    pos_y = torch.as_tensor(mlinspace(-1, 1, w, dtype=np.float32), device=x.device).view(1, 1, 1, w)
    # single - double in MATLAB gives single: the double mu is rounded to single first
    dist = (pos_x - mu_x.to(x.dtype)[..., None, None]).abs() + (pos_y - mu_y.to(x.dtype)[..., None, None]).abs()
    mask = torch.clamp(1 - dist * beta.to(x.dtype).view(1, d, 1, 1), min=0)
    not_part = (filter_type.to(x.device).view(-1) != 1)
    mask[:, not_part] = 1
    return x * mask, mask, mu_x, mu_y


# =================================================================== imagewrite
def image_to_uint8_blocks(x: np.ndarray, scale: int = SCALE_W) -> np.ndarray:
    """imagewrite's picture: uint8(x ./ max(x(:)) .* 255), each cell blown up to scale x scale.

    x: (xh, xw) map (float32). MATLAB's uint8 rounds halves away from zero,
    saturates at 0 and 255 and maps NaN (0/0) to 0. Returns (xh*scale, xw*scale) uint8.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DrawRFError(f"imagewrite expects one map (xh x xw), got shape {x.shape}")
    top = np.fmax.reduce(x.reshape(-1)) if x.size else np.float32(np.nan)   # MATLAB max ignores NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (x / top) * np.float32(255)
    v = np.nan_to_num(mround(v), nan=0.0, posinf=255.0, neginf=0.0)
    img = np.clip(v, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def imagewrite(x: np.ndarray, filename: os.PathLike | str, scale: int = SCALE_W) -> np.ndarray:
    """imagewrite (step_drawRF.m): write `image_to_uint8_blocks(x)` as an image file (JPEG by name)."""
    img = image_to_uint8_blocks(x, scale)
    _write_image(img, filename)
    return img


# =================================================================== getRFMask, getRegion
def gaussian_kernel(size: int = GAUSS_SIZE, sigma: float = GAUSS_SIGMA) -> np.ndarray:
    """fspecial('gaussian', size, sigma): exp(-(x^2+y^2)/(2 sigma^2)) on -(size-1)/2..(size-1)/2, summing to 1."""
    half = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - half
    h = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def smooth_template(t: np.ndarray, size: int = GAUSS_SIZE, sigma: float = GAUSS_SIGMA) -> np.ndarray:
    """imfilter(T, fspecial('gaussian', size, sigma), 'replicate', 'same') for a 2-D T (float64).

    imfilter correlates with the kernel anchored at floor((size+1)/2): for an
    even size the window reaches one cell further down/right than up/left.
    The kernel is separable (its eps cut-off removes nothing for 50 / 30), so
    it is applied as two 1-D passes.
    """
    k2 = gaussian_kernel(size, sigma)
    g = k2.sum(axis=1)                       # the 1-D factor (normalised: sums to 1)
    origin = (size + 1) // 2 - 1 - size // 2  # scipy centres at size//2; MATLAB at floor((size+1)/2) (1-based)
    out = scipy.ndimage.correlate1d(np.asarray(t, dtype=np.float64), g, axis=0, mode="nearest", origin=origin)
    return scipy.ndimage.correlate1d(out, g, axis=1, mode="nearest", origin=origin)


def get_rf_mask(template: np.ndarray, image_size: tuple[int, int], map_size: tuple[int, int], layer_id: int,
                convnet: ConvNetPara, gauss_size: int = GAUSS_SIZE, gauss_sigma: float = GAUSS_SIGMA) -> np.ndarray:
    """getRFMask (step_drawRF.m): the smoothed occlusion template shifted onto every map cell.

    template: (2ih, 2iw, showNum) (MATLAB layout, as computeRF saves it), image_size (ih, iw),
    map_size (xh, xw);
    T = smoothed sum over the images. For map cell (H, W) (1-based) at image
    position thePos = x2p_([H; W]), the receptive field is
    T(ih-thePos(1)+1 : ..+ih-1, iw-thePos(2)+1 : ..+iw-1). Returns
    (xh*xw, ih, iw) float32, cells in MATLAB's column-major order
    (c = h + w*xh, 0-based).

    Fix: thePos is rounded (MATLAB round) because a fractional centre (8.5
    in vgg-vd-16) makes MATLAB fail on non-integer subscripts. The original
    takes the width range with ih (its nets are square); iw is used here.
    """
    (ih, iw), (xh, xw) = image_size, map_size
    t = smooth_template(np.asarray(template, dtype=np.float64).reshape(2 * ih, 2 * iw, -1).sum(axis=2),
                        gauss_size, gauss_sigma)
    hh, ww = np.meshgrid(np.arange(1, xh + 1), np.arange(1, xw + 1), indexing="ij")
    hh, ww = hh.reshape(-1, order="F"), ww.reshape(-1, order="F")        # H fastest, as the loops
    pos = mround(x2p(np.stack([hh, ww]), layer_id, convnet)).astype(np.int64)
    hmin, wmin = ih - pos[0], iw - pos[1]                               # 0-based starts
    if hmin.min() < 0 or wmin.min() < 0 or hmin.max() > ih or wmin.max() > iw:
        raise DrawRFError(f"getRFMask: map positions of layer {layer_id} fall outside the {ih} x {iw} image "
                          f"(rows {pos[0].min()}..{pos[0].max()}, columns {pos[1].min()}..{pos[1].max()})")
    rows = hmin[:, None] + np.arange(ih)[None, :]
    cols = wmin[:, None] + np.arange(iw)[None, :]
    return t[rows[:, :, None], cols[:, None, :]].astype(np.float32)


def get_region(ih: int, iw: int, xh: int, xw: int, feature_map: Any, tau: float,
               draw_threshold: float, rf_mask: Any) -> np.ndarray:
    """getRegion (step_drawRF.m): the pixels the filter's active cells cover.

    feature_map: (xh, xw) masked map of the filter; rf_mask: (xh*xw, ih, iw)
    as `get_rf_mask` gives it. In single precision, as the original:
        tau = min(tau, max(map)); map(map < tau) = 0;
        map = min(map * 1.5 / max(max(map), 1e-11), 1); map(map >= tau) = 1   (compared after scaling)
        wei = max_c RFMask(:,:,c) * map(c);  region = wei >= drawThreshold * max(wei)
    Returns (ih, iw) float32 of 0 / 1.
    """
    m = torch.as_tensor(np.asarray(feature_map, dtype=np.float32).reshape(-1, order="F")) \
        if not isinstance(feature_map, torch.Tensor) else feature_map.to(torch.float32).t().reshape(-1)
    rf = torch.as_tensor(rf_mask, dtype=torch.float32)
    if m.numel() != xh * xw or tuple(rf.shape) != (xh * xw, ih, iw):
        raise DrawRFError(f"getRegion: map has {m.numel()} cells for {xh} x {xw}, RFMask shape {tuple(rf.shape)}")
    rf = rf.to(m.device) if isinstance(feature_map, torch.Tensor) else rf
    tau = torch.minimum(torch.tensor(float(tau), dtype=torch.float32, device=m.device), m.max())
    m = torch.where(m < tau, torch.zeros_like(m), m)
    scale = torch.tensor(1.5, dtype=torch.float32, device=m.device) / torch.clamp(m.max(), min=1e-11)
    m = torch.clamp(m * scale, max=1)
    m = torch.where(m >= tau, torch.ones_like(m), m)
    wei = (rf * m.view(-1, 1, 1)).amax(dim=0)
    region = (wei >= torch.tensor(float(draw_threshold), dtype=torch.float32) * wei.max()).to(torch.float32)
    return region.cpu().numpy()


# =================================================================== drawEdge
def canny_edges(region: np.ndarray) -> np.ndarray:
    """edge(wei, 'canny') substitute: scikit-image's Canny with MATLAB's defaults.

    sigma sqrt(2); thresholds as MATLAB picks them when none are given: on
    the gradient magnitude normalised by its maximum, high = (the first of
    64 histogram bins whose cumulative count exceeds 70 % of the pixels) / 64,
    low = 0.4 * high. The magnitude used for the thresholds is a Gaussian-
    derivative magnitude (MATLAB's own); skimage then runs its Canny with
    them scaled to its Sobel magnitude.
    """

    wei = np.asarray(region, dtype=np.float64)
    sigma = math.sqrt(2.0)
    mag = scipy.ndimage.gaussian_gradient_magnitude(wei, sigma)
    top = mag.max()
    if top <= 0:
        return np.zeros(wei.shape, dtype=bool)
    counts, _ = np.histogram(mag / top, bins=64, range=(0.0, 1.0))
    high_rel = (int(np.argmax(np.cumsum(counts) > 0.7 * wei.size)) + 1) / 64.0
    smoothed = scipy.ndimage.gaussian_filter(wei, sigma, mode="constant")
    sob = np.hypot(scipy.ndimage.sobel(smoothed, axis=0), scipy.ndimage.sobel(smoothed, axis=1))
    top_sob = sob.max()
    if top_sob <= 0:
        return np.zeros(wei.shape, dtype=bool)
    return canny(wei, sigma=sigma, low_threshold=0.4 * high_rel * top_sob, high_threshold=high_rel * top_sob)


def draw_edge(region: np.ndarray, image: np.ndarray) -> np.ndarray:
    """drawEdge.m: darken the image outside the region, draw the region's edge in red.

        E = imfilter(edge(wei, 'canny'), ones(5)) > 0, times 255   (edges thickened to 5 x 5)
        R = max(I_r (wei+1)/2, E);  G = min(I_g (wei+1)/2, 255-E);  B likewise
    region: (ih, iw) 0/1; image: (ih, iw, 3) uint8. Returns uint8 (MATLAB's
    rounding and saturation). Edges: see `canny_edges`.
    """
    wei = np.asarray(region, dtype=np.float32)
    img = np.asarray(image, dtype=np.float32)
    if img.shape[:2] != wei.shape or img.ndim != 3:
        raise DrawRFError(f"drawEdge: region {wei.shape} and image {img.shape} do not match")
    edges = scipy.ndimage.binary_dilation(canny_edges(wei), structure=np.ones((5, 5), dtype=bool))
    e = edges.astype(np.float32) * np.float32(255)
    shade = (wei + 1) / 2
    out = np.empty_like(img)
    out[..., 0] = np.maximum(img[..., 0] * shade, e)
    out[..., 1] = np.minimum(img[..., 1] * shade, 255 - e)
    out[..., 2] = np.minimum(img[..., 2] * shade, 255 - e)
    return np.clip(mround(out), 0, 255).astype(np.uint8)


# =================================================================== occlusion (computeRF)
def occlusion_list(ih: int, iw: int, size: int = OCCLUDE_SIZE, stride: int = OCCLUDE_STRIDE) -> np.ndarray:
    """computeRF's occludeList: (n, 2) 1-based top-left corners [sh, sw], sw varying fastest."""
    sh = np.arange(1, ih - size + 2, stride)
    sw = np.arange(1, iw - size + 2, stride)
    hh, ww = np.meshgrid(sh, sw, indexing="ij")
    return np.stack([hh.reshape(-1), ww.reshape(-1)], axis=1)


def occluded_batch(image: torch.Tensor, corners: np.ndarray, size: int = OCCLUDE_SIZE) -> torch.Tensor:
    """getImg_occlude: copies of `image` (3 x H x W, mean already subtracted) with a size x size square set to 0."""
    n = len(corners)
    h, w = image.shape[-2:]
    rows = torch.arange(h, device=image.device).view(1, h, 1)
    cols = torch.arange(w, device=image.device).view(1, 1, w)
    sh = torch.as_tensor(corners[:, 0] - 1, device=image.device).view(n, 1, 1)
    sw = torch.as_tensor(corners[:, 1] - 1, device=image.device).view(n, 1, 1)
    hole = (rows >= sh) & (rows < sh + size) & (cols >= sw) & (cols < sw + size)     # (n, H, W)
    return image.unsqueeze(0).expand(n, -1, -1, -1) * (~hole).unsqueeze(1).to(image.dtype)


def accumulate_template(template: np.ndarray, corners: np.ndarray, peak_hw: np.ndarray, drop: np.ndarray,
                        ih: int, iw: int, size: int = OCCLUDE_SIZE) -> None:
    """computeRF's update of one image's template (2ih x 2iw, in place) for its chosen occlusions.

    For each chosen occlusion with corner (sh, sw), the occluded image's
    peak position pHW and value drop val: the square, shifted so that the
    peak sits at (ih, iw), gets + val:
        hmin = max(round(sh - pHW(1) + ih), 1), hmax = min(round(sh + size - 1 - pHW(1) + ih), 2ih)
    (1-based inclusive; likewise for w).
    """
    for (sh, sw), (ph, pw), val in zip(corners, peak_hw, drop):
        hmin = max(int(mround(np.float64(sh - ph + ih))), 1)
        hmax = min(int(mround(np.float64(sh + size - 1 - ph + ih))), ih * 2)
        wmin = max(int(mround(np.float64(sw - pw + iw))), 1)
        wmax = min(int(mround(np.float64(sw + size - 1 - pw + iw))), iw * 2)
        if hmax >= hmin and wmax >= wmin:
            template[hmin - 1:hmax, wmin - 1:wmax] += val


# =================================================================== top images (generateAMTOriginalImages)
def select_top_images(dep_max: np.ndarray, tau: np.ndarray, show_num: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """generateAMTOriginalImages' choice of images per filter.

    dep_max: (D, I) peak of each filter's masked map per image; tau: (D,).
    An image qualifies when its peak reaches tau; with fewer than show_num
    qualifying, the show_num highest (stable descending sort) qualify and tau
    becomes the show_num-th peak. Then show_num of the qualifying images are
    kept at random. Returns (valid_map (D, I) bool, tau updated).
    """
    d, n = dep_max.shape
    if n < show_num:
        raise DrawRFError(f"drawing needs at least showNum = {show_num} images, got {n}")
    tau = np.asarray(tau, dtype=np.float32).copy()
    valid = np.zeros((d, n), dtype=bool)
    for k in range(d):
        lst = np.flatnonzero(dep_max[k] >= tau[k])
        if lst.size < show_num:
            vals, order = sort_descend_stable(dep_max[k])
            lst = np.sort(order[:show_num])
            tau[k] = vals[show_num - 1]
        keep = lst[rng.permutation(lst.size)[:show_num]]
        valid[k, keep] = True
    return valid, tau


# =================================================================== contact sheet
def contact_sheet(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, gap: int = 4,
                  label_width: int = 72, background: int = 255) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """A grid picture: one row per filter, its images side by side.

    rows[r][c]: (h, w, 3) uint8, all the same size. Returns the sheet
    (H, W, 3) uint8, with H = R*(h+gap)+gap and W = label_width + C*(w+gap) + gap,
    and every cell's box (top, left, bottom, right), exclusive ends.
    """
    if not rows or not rows[0]:
        raise DrawRFError("contact sheet: nothing to draw")
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + gap) + gap, label_width + ncol * (w + gap) + gap, 3), background, np.uint8)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for r, row in enumerate(rows):
        top = gap + r * (h + gap)
        row_boxes = []
        for c, cell in enumerate(row):
            if cell.shape[:2] != (h, w):
                raise DrawRFError(f"contact sheet: cell ({r}, {c}) is {cell.shape[:2]}, expected {(h, w)}")
            left = label_width + gap + c * (w + gap)
            sheet[top:top + h, left:left + w] = cell
            row_boxes.append((top, left, top + h, left + w))
        boxes.append(row_boxes)
    if labels and label_width > 0:
        pil = Image.fromarray(sheet)
        draw = ImageDraw.Draw(pil)
        for r, text in enumerate(labels):
            draw.text((4, gap + r * (h + gap) + h // 2 - 6), str(text), fill=(0, 0, 0))
        sheet = np.asarray(pil).copy()
    return sheet, boxes


# =================================================================== files
def _write_image(img: np.ndarray, filename: os.PathLike | str) -> None:
    """imwrite, atomically: a temporary file in the same folder, then os.replace (format from the name)."""
    path = Path(filename)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    if fmt is None:
        raise DrawRFError(f"cannot write {path}: unknown image type {path.suffix!r}")
    pil = Image.fromarray(np.asarray(img, dtype=np.uint8))
    atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **({"quality": 75} if fmt == "JPEG" else {})))


def _read_image(filename: os.PathLike | str) -> np.ndarray:
    with Image.open(filename) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _save_mat(path: Path, variables: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, variables)


# =================================================================== the net
def _mask_params(net: SimpleNN, upper_layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """beta (weights{3}) and filter of SimpleNN layer `upper_layer` (1-based) when it is a conv_mask layer."""
    layer = net.layers[upper_layer - 1]
    if not isinstance(layer, ConvMask):
        return None, None
    return layer.beta.detach(), layer.filter_type.detach()


@dataclass
class DrawingSetup:
    layer_id: int
    target: int
    upper: int
    convnet: ConvNetPara
    ih: int
    iw: int
    depth: int
    beta: torch.Tensor | None
    filter_type: torch.Tensor | None


def drawing_setup(net: SimpleNN, layer_id: int, image_size: tuple[int, int]) -> DrawingSetup:
    convnet = get_conv_net_para(net)
    n_conv = len(np.asarray(convnet.target_layers).reshape(-1))
    if not 1 <= int(layer_id) < n_conv:
        raise DrawRFError(f"layerID {layer_id}: drawing needs the conv layer AND the one above it "
                          f"(layerID in 1..{n_conv - 1} for this net of {n_conv} conv layers)")
    target = target_layer_index(convnet, layer_id)
    upper = target_layer_index(convnet, layer_id + 1)
    beta, filt = _mask_params(net, upper)
    depth = num_output_filters(net, target)
    if beta is not None and beta.numel() != depth:
        raise DrawRFError(f"layer {upper} masks {beta.numel()} channels, layer {target} gives {depth}")
    return DrawingSetup(int(layer_id), target, upper, convnet, int(image_size[0]), int(image_size[1]), depth, beta, filt)


@torch.no_grad()
def _masked_maps(net: SimpleNN, st: DrawingSetup, images: torch.Tensor, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """getValue / getMaskMap's forward: (raw x, masked x, mask), each (N, D, xh, xw) on `device`."""
    raw = layer_output(net, images.to(device), st.target)
    beta = None if st.beta is None else st.beta.to(device)
    masked, mask, _, _ = mask_x(raw, beta, st.filter_type)
    return raw, masked, mask


@dataclass(frozen=True)
class RFSettings:
    """step_drawRF.m's settings (the original's values by default) and the port's run options.

    show_num, visualization_step, integrate_energy: step_drawRF.m's showNum, visualizationStep,
    integrateEnergy; sampling_times: generateAMTOriginalImages' samplingTimes; draw_threshold:
    drawRF's drawThreshold; occlude_size, occlude_stride, top_occ_num: computeRF's occluder;
    gauss_size, gauss_sigma: getRFMask's fspecial('gaussian', 50, 30) (`scaled_rf_settings`
    gives the occluder and smoothing for an input under 224). The rest is the port's: batch
    sizes, the random seed of the image sampling, whether existing template files are recomputed
    (the original skips them), the contact sheet's file name, progress bars, the device (None:
    where the net is; another device: the net is moved there; IEEE float32 on CUDA,
    reproduce.runtime.device.resolve_device).
    """
    show_num: int = SHOW_NUM
    visualization_step: int = VISUALIZATION_STEP
    integrate_energy: float = INTEGRATE_ENERGY
    sampling_times: int = SAMPLING_TIMES
    draw_threshold: float = DRAW_THRESHOLD
    occlude_size: int = OCCLUDE_SIZE
    occlude_stride: int = OCCLUDE_STRIDE
    top_occ_num: int = TOP_OCC_NUM
    gauss_size: int = GAUSS_SIZE
    gauss_sigma: float = GAUSS_SIGMA
    batch_size: int = 32
    occlusion_batch_size: int = 128
    seed: int = 1
    overwrite_templates: bool = False
    contact_sheet_name: str | None = None
    progress: bool = True
    device: Any = None



# =================================================================== the whole procedure
@dataclass
class DrawRFResult:
    """What draw_rf drew: per visualised filter its images' files and regions.

    filters: the visualised filters (1-based); images[dep]: the paths of its
    img_ori pictures; regions[dep]: (showNum, ih, iw) 0/1 float32 arrays;
    tau: (D,) thresholds; contact_sheet: path; sheet_boxes: cell boxes.
    """

    out_dir: Path
    filters: list[int]
    images: dict[int, list[Path]] = field(default_factory=dict)
    regions: dict[int, np.ndarray] = field(default_factory=dict)
    tau: np.ndarray | None = None
    contact_sheet: Path | None = None
    sheet_size: tuple[int, int] = (0, 0)
    sheet_boxes: list[list[tuple[int, int, int, int]]] = field(default_factory=list)


def tau_from_batches(net: SimpleNN, st: DrawingSetup, batches: Any, num_images: int, device: torch.device,
                     gen: torch.Generator, s: RFSettings) -> tuple[np.ndarray, np.ndarray]:
    """generateAMTOriginalImages' statistics (`tau_from_masked`, with s.integrate_energy,
    s.sampling_times and s.progress) of `batches` of (image indices, images)."""
    masked = ((idx, _masked_maps(net, st, x, device)[1]) for idx, x in batches)
    return tau_from_masked(masked, st.depth, num_images, gen, s.integrate_energy, s.sampling_times, s.progress)


def tau_from_masked(batches: Any, depth: int, num_images: int, gen: torch.Generator, integrate_energy: float,
                    sampling_times: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """generateAMTOriginalImages' statistics: tau per filter and each image's peak (dep_max).

    batches: (image indices, masked maps N x D x H x W, as maskX gives them). The original fills
    depStat (D x samplingTimes*imgNum) with each batch's
    activations of the masked map, randomly permuted and repeated to
    samplingTimes per image, sorts it and reads entry round(integrateEnergy *
    width). Only that many top values matter, so a running top-k is kept
    instead of the whole array (same result, far less memory).
    """
    tar_p = int(mround(np.float64(integrate_energy * sampling_times * num_images)))
    if tar_p < 1:
        raise DrawRFError(f"integrateEnergy {integrate_energy} x {sampling_times} x {num_images} images rounds to 0")
    top = None
    dep_max = np.zeros((depth, num_images), dtype=np.float32)
    for idx, masked in tqdm(batches, desc="top images", unit="batch", disable=not progress):
        b = masked.shape[0]
        vals = masked.transpose(0, 1).reshape(depth, -1)                        # (D, L)
        length = vals.shape[1]
        need = b * sampling_times
        keys = torch.rand(vals.shape, generator=gen).to(vals.device)
        perm = torch.argsort(keys, dim=1)
        shuffled = torch.gather(vals, 1, perm)
        sample = shuffled.repeat(1, math.ceil(need / length))[:, :need]
        pool = sample if top is None else torch.cat([top, sample], dim=1)
        k = min(tar_p, pool.shape[1])
        top = torch.topk(pool, k, dim=1, largest=True, sorted=True).values
        dep_max[:, idx] = masked.amax(dim=(2, 3)).t().cpu().numpy()
    if top is None:
        raise DrawRFError("no image to draw")
    if top.shape[1] < tar_p:   # depStat is zero-filled beyond the samples
        top = torch.cat([top, torch.zeros(depth, tar_p - top.shape[1], device=top.device)], dim=1)
    return top[:, tar_p - 1].cpu().numpy().astype(np.float32), dep_max


def scaled_rf_settings(input_size: int, reference: int = 224) -> dict[str, Any]:
    """The occluder and smoothing of computeRF / getRFMask for an input of `input_size`.

    step_drawRF.m always uses fspecial('gaussian', 50, 30), a 33 x 33 occluder
    and stride 9, whatever the net's input (224 for vgg-vd-16, 227 for
    AlexNet): those values are kept for every input of at least `reference`
    (224) pixels. Only smaller inputs (a package choice for the toy's 64 x 64)
    get them scaled by input_size / reference.
    """
    if int(input_size) >= reference:
        return {"occlude_size": OCCLUDE_SIZE, "occlude_stride": OCCLUDE_STRIDE,
                "gauss_size": GAUSS_SIZE, "gauss_sigma": GAUSS_SIGMA}
    s = float(input_size) / reference
    return {"occlude_size": max(3, int(round(OCCLUDE_SIZE * s))),
            "occlude_stride": max(1, int(round(OCCLUDE_STRIDE * s))),
            "gauss_size": max(3, int(round(GAUSS_SIZE * s))), "gauss_sigma": GAUSS_SIGMA * s}


def drawing_objset(name: str, conf: Any) -> list[Any]:
    """generateAMTOriginalImages' objset (step_drawRF.m): `readAnnotation(Name_batch, theConf)`.

    For 'cub200' this is CUB's readAnnotation (every object that passes
    minArea, of which draw_rf keeps the first 500), not
    readAnnotation_sampling's test objects that the evaluation
    (computeStability.m) measures. For the other datasets both are the same.
    """
    return list(read_annotation(name, conf))


def _settings_from(settings: RFSettings | None, overrides: dict[str, Any]) -> RFSettings:
    names = {f.name for f in fields(RFSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"draw_rf: unknown setting(s) {', '.join(unknown)} (RFSettings has {', '.join(sorted(names))})")
    return replace(settings or RFSettings(), **overrides)


@dataclass
class DrawingImages:
    """The images step_drawRF.m draws for one category: `name` (Name_batch, the files' prefix), the
    objset `objects` (data_prep readers; None entries are skipped; `drawing_objset`) and
    `load_patch(obj, (h, w))`, getI's patch (H x W x 3 float32, 0-255)."""

    name: str
    objects: Sequence[Any]
    load_patch: Callable[[Any, tuple[int, int]], np.ndarray]


@dataclass
class _Drawing:
    """One draw_rf run: the net and its setup, the images, where the files go, the settings."""
    net: SimpleNN
    st: DrawingSetup
    device: torch.device
    mean_t: torch.Tensor
    name: str
    objects: list[Any]
    kept: list[int]
    load_patch: Callable[[Any, tuple[int, int]], np.ndarray]
    out: Path
    s: RFSettings
    result: DrawRFResult

    def file(self, folder: str, dep: int, k: int, suffix: str = ".jpg") -> Path:
        """<out>/<folder>/<name>-<dep>-<k><suffix>, step_drawRF.m's file names."""
        return self.out / folder / f"{self.name}-{dep:04d}-{k:05d}{suffix}"

    def read_back(self, dep: int) -> tuple[list[np.ndarray], torch.Tensor]:
        """The filter's chosen pictures as written (JPEG), and as the net's input."""
        pics = [_read_image(p) for p in self.result.images[dep]]
        x = torch.from_numpy(np.stack(pics).astype(np.float32).transpose(0, 3, 1, 2)) - self.mean_t
        return pics, x


def draw_rf(net: SimpleNN, images: DrawingImages, mean_data: Any, layer_id: int,
            out_dir: os.PathLike | str = "draw_RF", settings: RFSettings | None = None, *,
            image_size: tuple[int, int] | None = None, **overrides: Any) -> DrawRFResult:
    """step_drawRF.m for one trained net: the four steps, then the contact sheet.

    net: a SimpleNN in evaluation mode; images: the category's `DrawingImages` (Name_batch, the
    objset: for 'cub200' the original keeps the first 500, getI); mean_data: the imdb's dataMean
    (any form reproduce.evaluation.net_features.read_mean_data takes: H x W x 3, 3 x H x W, an
    Imdb, an imdb.mat); layer_id: the measured conv layer (needs one above it); image_size: the
    net's input (None: from its meta).
    settings: `RFSettings` (the original's by default); any of its fields may also be given as a
    keyword (`show_num=3`, `device="cuda"`, `**scaled_rf_settings(64)`). Returns a DrawRFResult.
    """
    d = _start(net, images, mean_data, layer_id, Path(out_dir), _settings_from(settings, overrides), image_size)
    _original_images(d)
    _raw_and_masked_maps(d)
    templates = _templates(d)
    _receptive_fields(d, templates)
    return d.result


def _start(net: SimpleNN, images: DrawingImages, mean_data: Any, layer_id: int, out: Path, s: RFSettings,
           image_size: tuple[int, int] | None) -> _Drawing:
    """The device, the layers drawn (`drawing_setup`), the mean, the images kept."""
    device = resolve_device(module_device(net) if s.device is None else s.device)
    net.to(device)
    size = tuple(image_size) if image_size is not None else net_input_size(net)
    st = drawing_setup(net, layer_id, size)
    mean = read_mean_data(mean_data)
    if mean.shape != (st.ih, st.iw, 3):
        raise DrawRFError(f"mean_data has shape {mean.shape}, the net takes {st.ih} x {st.iw} x 3")
    mean_t = torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1)))
    name = images.name
    objects = list(images.objects)[:500] if category_samples_objects(name) else list(images.objects)   # CUB: 500
    kept = [i for i, o in enumerate(objects) if o is not None]
    filters = list(range(1, st.depth + 1, int(s.visualization_step)))
    return _Drawing(net, st, device, mean_t, name, objects, kept, images.load_patch, out, s,
                    DrawRFResult(out, filters))


def _original_images(d: _Drawing) -> None:
    """generateAMTOriginalImages: tau per filter, each filter's top images written to img_ori."""
    st, s, ih, iw = d.st, d.s, d.st.ih, d.st.iw
    rng = np.random.default_rng(s.seed)
    gen = torch.Generator().manual_seed(int(s.seed))

    def batches():
        for start in range(0, len(d.kept), s.batch_size):
            chunk = d.kept[start:start + s.batch_size]
            imgs = np.stack([np.asarray(d.load_patch(d.objects[i], (ih, iw)), np.float32) for i in chunk])
            x = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))) - d.mean_t
            yield list(range(start, start + len(chunk))), x

    tau, dep_max = tau_from_batches(d.net, st, batches(), len(d.kept), d.device, gen, s)
    valid, tau = select_top_images(dep_max, tau, s.show_num, rng)
    for dep in d.result.filters:
        paths = []
        for count, j in enumerate(np.flatnonzero(valid[dep - 1]), start=1):
            patch = np.asarray(d.load_patch(d.objects[d.kept[j]], (ih, iw)), np.float32)
            path = d.file("img_ori", dep, count)
            _write_image(np.clip(mround(patch), 0, 255).astype(np.uint8), path)
            paths.append(path)
        d.result.images[dep] = paths
    _save_mat(d.out / "img_ori" / f"{d.name}_tau.mat", {"tau": tau.reshape(-1, 1).astype(np.float32)})
    d.result.tau = tau


def _raw_and_masked_maps(d: _Drawing) -> None:
    """drawRawFMaskF: each chosen image's raw map, mask and masked map, written to img_maskF."""
    for dep in d.result.filters:
        _, x = d.read_back(dep)
        raw, masked, mask = _masked_maps(d.net, d.st, x, d.device)
        for k in range(x.shape[0]):
            stem = d.file("img_maskF", dep, k + 1, "")
            imagewrite(raw[k, dep - 1].cpu().numpy(), stem.with_name(stem.name + "_rawX.jpg"))
            imagewrite(mask[k, dep - 1].cpu().numpy(), stem.with_name(stem.name + "_mask.jpg"))
            imagewrite(masked[k, dep - 1].cpu().numpy(), stem.with_name(stem.name + "_maskX.jpg"))


def _templates(d: _Drawing) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """computeRF: per filter, the occlusion template and the masked maps (saved as
    <name>-<dep>_template.mat; an existing file is read back unless overwrite_templates)."""
    s, ih, iw = d.s, d.st.ih, d.st.iw
    corners = occlusion_list(ih, iw, s.occlude_size, s.occlude_stride)
    templates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for dep in tqdm(d.result.filters, desc="occlusion", unit="filter", disable=not s.progress):
        tfile = d.out / "img_ori" / f"{d.name}-{dep:04d}_template.mat"
        if tfile.exists() and not s.overwrite_templates:
            saved = loadmat(tfile)
            templates[dep] = (np.asarray(saved["template"], np.float64), np.asarray(saved["map"], np.float64))
            continue
        _, x = d.read_back(dep)
        template = np.zeros((2 * ih, 2 * iw, x.shape[0]))
        _, masked, _ = _masked_maps(d.net, d.st, x, d.device)
        fmaps = masked[:, dep - 1]                                   # (n_img, xh, xw)
        for k in range(x.shape[0]):
            values, peaks = occlusion_values(d.net, d.st, x[k].to(d.device), corners, s.occlude_size, dep,
                                             s.occlusion_batch_size, d.device)
            add_image_template(template[:, :, k], corners, values, peaks, float(fmaps[k].sum()), s.top_occ_num,
                               s.occlude_size)
        maps = fmaps.permute(1, 2, 0).to(torch.float64).cpu().numpy()
        _save_mat(tfile, {"template": template, "map": maps})
        templates[dep] = (template, maps)
    return templates


def _receptive_fields(d: _Drawing, templates: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """drawRF: each picture with its receptive-field region's edge (img_RF), then the contact sheet."""
    s, ih, iw, result = d.s, d.st.ih, d.st.iw, d.result
    rows, labels = [], []
    for dep in result.filters:
        template, maps = templates[dep]
        xh, xw = maps.shape[:2]
        rf = get_rf_mask(template, (ih, iw), (xh, xw), d.st.layer_id, d.st.convnet, s.gauss_size, s.gauss_sigma)
        regions, drawn = [], []
        for k, pic in enumerate(_read_image(p) for p in result.images[dep]):
            region = get_region(ih, iw, xh, xw, maps[:, :, k], float(result.tau[dep - 1]), s.draw_threshold, rf)
            pic_rf = draw_edge(region, pic)
            _write_image(pic_rf, d.file("img_RF", dep, k + 1))
            regions.append(region)
            drawn.append(pic_rf)
        result.regions[dep] = np.stack(regions) if regions else np.zeros((0, ih, iw), np.float32)
        rows.append(drawn)
        labels.append(f"filter {dep}")
    sheet, boxes = contact_sheet(rows, labels)
    sheet_path = d.out / (s.contact_sheet_name or f"{d.name}_contact_sheet.png")
    _write_image(sheet, sheet_path)
    result.contact_sheet, result.sheet_size, result.sheet_boxes = sheet_path, sheet.shape[:2], boxes


def add_image_template(template: np.ndarray, corners: np.ndarray, values: np.ndarray, peaks: np.ndarray,
                       map_sum: float, top_occ_num: int, size: int = OCCLUDE_SIZE) -> None:
    """computeRF's step for one image (template 2ih x 2iw for an ih x iw image, updated in place): the `top_occ_num`
    occlusions that lower the filter's summed masked map most (stable ascending sort of `values`),
    each adding its drop max(map_sum - value, 0) at its square, shifted to the peak (`accumulate_template`).
    values: (n,) the filter's summed masked map per occluded copy; peaks: (n, 2) its peak positions."""
    v, order = sort_ascend_stable(np.asarray(values))
    drop = np.maximum(float(map_sum) - v[:top_occ_num], 0)
    chosen = order[:top_occ_num]
    ih, iw = template.shape[0] // 2, template.shape[1] // 2
    accumulate_template(template, corners[chosen], np.asarray(peaks)[chosen], drop, ih, iw, size)


def occlusion_values(net: SimpleNN, st: DrawingSetup, image: torch.Tensor, corners: np.ndarray, size: int, dep: int,
                     batch: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """getValue over every occluded copy: the filter's summed masked map and its peak's image position."""
    values, peaks = occlusion_values_all(net, st, image, corners, size, batch, device, filters=[dep])
    return values[:, 0], peaks[:, 0]


@torch.no_grad()
def occlusion_values_all(net: SimpleNN, st: DrawingSetup, image: torch.Tensor, corners: np.ndarray, size: int,
                         batch: int, device: torch.device, filters: Sequence[int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """getValue over every occluded copy, for several filters from the same forward passes:
    (n, F) summed masked maps and (n, F, 2) peak image positions [h, w] of `filters` (1-based; None: all)."""
    cols = list(range(st.depth)) if filters is None else [int(f) - 1 for f in filters]
    values, peaks = [], []
    for s in range(0, len(corners), batch):
        imgs = occluded_batch(image, corners[s:s + batch], size)
        _, masked, _ = _masked_maps(net, st, imgs, device)
        fmap = masked[:, cols]                                              # (n, F, xh, xw)
        n, f, xh, xw = fmap.shape
        _, p = mmax_reduce(fmap.transpose(2, 3).reshape(n, f, xh * xw), axis=2)  # column-major argmax
        ph, pw = (p % xh + 1).cpu().numpy(), (p // xh + 1).cpu().numpy()
        peaks.append(x2p(np.stack([ph.reshape(-1), pw.reshape(-1)], axis=1), st.layer_id, st.convnet).reshape(n, f, 2))
        values.append(fmap.sum(dim=(2, 3)).to(torch.float64).cpu().numpy())
    return np.concatenate(values), np.concatenate(peaks)
