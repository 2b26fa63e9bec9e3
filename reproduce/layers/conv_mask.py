"""The conv_mask layer of Interpretable CNNs: activation mask, filter loss and learned beta.

Ports `tool/main/getMu.m`, `tool/main/getMask.m` and the 'conv_mask' cases (forward and
backward) of `tool/main/our_vl_simplenn.m`, with `add_block_mask.m`'s initialisation.

Notation: x is the layer input, N x D x H x W (H == W: the original assumes square maps),
positions i (rows) and j (columns) are 1-based; beta_d is the learned `weights{3}` (called
alpha in getMask.m); filter_d is the filter type (1 part, 2 texture, 0 none).

getMu (per image n and channel d)
    s      = max(sum_ij x, 1e-9)
    mu_i   = max(round(sum_ij i x / s), 1),  mu_j likewise with j   (round: halves away from 0)
    sqrtvar = sqrt(sum_ij ((i - mu_i)^2 + (j - mu_j)^2) x / s)
    mu_x   = t[mu_i], mu_y = t[mu_j],  t = linspace(-1, 1, H)   (H for both: square maps)
getMask
    mask = max(1 - beta_d (|posX - mu_x| + |posY - mu_y|), -1);   mask = 1 where filter_d ~= 1
    (posX, posY = posTemp: linspace(-1, 1, H) down the rows, linspace(-1, 1, W) along the columns)
forward
    y = conv(max(x .* mask, 0))
backward (dzdy given; the per-batch labels, epoch and label density come in a FilterLossContext)
    dW, db = conv backward on the input x .* max(mask, 0);  dx = conv backward .* max(mask, 0)
    S(d,n)   = mean_ij x .* mask                                   ("strength")
    logZ+(d) = a log mean_n exp(mean_ij(x .* mask~) / a),  mask~ = mask with BOTH its channel
               and its image order reversed (mask(:,:,end:-1:1,end:-1:1) in the original)
    logZ-(d) = a log mean_n exp(mean_ij(-x) / a),   a = 0.5;  ±Inf in logZ -> the largest
               finite value of the vector
    positives n of channel d's class (part filters only):
        s+ = exp(S / a) (S - logZ+ + a);  Inf -> max finite of the block, NaN -> 0
        s+ = s+ / (mean_{positives} s+ * mag),  mag = epoch / l.mag;  NaN -> 0, Inf -> max
        dx(:,:,d,n) -= mask(:,:,d,n) s+(d,n) 1e-5 w+
    negatives n (the other images):
        m = mean_ij x;  s- = exp(-m / a) (-m - logZ- + a); same replacements and normalisation
        dx(:,:,d,n) += s-(d,n) 1e-5 w-
    dbeta(d) = (clamp(3 / (sum_pos S sqrtvar / sum_pos S), 1.5, 3) - beta_d) * (-10000) for
               filters of type 1 and 2, 0 for type 0 (MATLAB min/max: 3/NaN -> 3)
    Classes: one class (L = 1): positives = images with label 1, w+ = w- = 1. L > 1 without
    sliceMag: positives = images positive for any class, w = 1. L > 1 with sliceMag: channel d
    belongs to class argmax_l sliceMag(d, l) (first of ties); its positives are that class's
    positives; w+ = 0.5 / density_l, w- = 0.5 / (1 - density_l), or, when L > 10,
    w+ = 0.5 L, w- = 0.5 / (1 - 1/L).
    "The block" of a replacement is (the part channels of one class) x (its positives, or
    its negatives), as the original indexes `strength(dList, list)`.

Deviations from the original, each where the original would stop with an error:
- a layer with texture filters but no part filter: the original's beta update reads an unset
  `l.strength` (index error); here strength is always computed.
- a centroid index beyond H (inputs with negative values): the original indexes past
  linspace's end (error); here it is clamped to H.
- a block whose values are ALL ±Inf: MATLAB's `v(isinf(v)) = max(v(~isinf(v)))` assigns an
  empty array to a non-empty selection, which is an error. Here too (`FilterLossError`), unless
  the layer's `all_inf_fallback` is set to a number, which is then used instead.
Errors (`ValueError`) rather than wrong numbers: a non-square map, NaN/Inf input, labels of the
wrong shape, a missing context in training mode (see `ConvMask.require_context`).

How it is computed (issue 15: the same arithmetic in few, large operations): getMu's sums in
one matrix product (`centroids`), sqrtvar's weights (i - mu_i)^2, (j - mu_j)^2 gathered from a
per-grid table by the centroid's index pair (`mu_grid`); getMask as a gather from a per-layer
table of the distances of every possible centroid (`distance_table`; built once, as getMask's
float operations would give them) by the same index, then one addcmul with beta; the filter
loss on 2 x N x D arrays (positives and negatives stacked; with classes, a class axis): logZ's
and the strengths' exponents as one 4 x N x D division and one exp (`_doubled_rows`), each
block's Inf replacement one masked reduction (`_replace_inf_by_block_max`), no Python loop
over blocks or classes. (addcmul may round its product and sum once, as a fused multiply-add;
the golden cases are unchanged within 1e-6.) The constants (grids,
tables, filter-type masks) are cached per layer (`ConvMask._constants`) and per shape, dtype
and device (`mu_grid`). Nothing reads a value back to the host inside a CUDA training step: the
NaN/Inf-input and all-Inf-block checks are kept on the device (`ConvMask.check_mode`,
`DeferredChecks`) and raised, with the messages of the immediate checks, by
`raise_deferred_errors` (reproduce.train calls it after each phase of an epoch). `set_compile`
(or ICNN_COMPILE_CONV_MASK=1) runs the maths through torch.compile on CUDA; off by default.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legacy_compat.numerics import mlinspace
from legacy_compat.simplenn import LayerSpec, pair, quad
from reproduce.layers.geometry import LayerGeometry
from reproduce.layers.padding import conv2d_padded, is_symmetric
from reproduce.runtime.distributed import FilterLossBatch

__all__ = ["FilterLossContext", "FilterLossError", "ConvMask", "get_mu", "get_mask", "get_mask_separable",
           "pos_templates", "centroids", "mu_grid", "distance_table", "FilterLossSetup", "filter_loss_setup",
           "filter_loss_terms", "filter_loss_gradients", "conv_mask_forward", "DeferredChecks",
           "raise_deferred_errors", "set_compile",
           "ALPHA_LOGZ", "LOSS_STEP", "BETA_TARGET", "BETA_GRAD_SCALE"]

ALPHA_LOGZ = 0.5        # `alpha=0.5` in our_vl_simplenn.m (the temperature of logZ)
LOSS_STEP = 1e-5        # `0.00001*w_pos`, `0.00001*w_neg`
BETA_TARGET = 3.0       # `beta=3`: dbeta uses clamp(3 / avg_sqrtvar, 1.5, 3)
BETA_MIN, BETA_MAX = 1.5, 3.0
BETA_GRAD_SCALE = -10000.0


class FilterLossError(RuntimeError):
    """The filter loss met a case where the original code stops with an error."""


@dataclass
class FilterLossContext:
    """Per-batch inputs of the conv_mask filter loss (what our_cnn_train puts on net.layers{end}).

    labels: N x L float tensor of +1/-1 (L = number of classes; `class`, 1 x 1 x L x N in
    MATLAB); epoch: int (`net.layers{end}.iter`, 1-based); density: (L,) float tensor =
    mean(labels > 0) per class over the WHOLE imdb (0/None when L == 1).
    """

    labels: torch.Tensor
    epoch: int
    density: torch.Tensor | None = None
    whole_batch: Any = None     # several ranks, whole-batch filter loss: reproduce.distributed.WholeBatch

    def labels_2d(self, batch: int, where: str = "conv_mask") -> torch.Tensor:
        """The labels as N x L, checked against the batch size."""
        lab = self.labels
        if not isinstance(lab, torch.Tensor):
            lab = torch.as_tensor(np.asarray(lab))
        if lab.dim() == 4 and lab.shape[2] == 1 and lab.shape[3] == 1:
            lab = lab.reshape(lab.shape[0], lab.shape[1])
        if lab.dim() != 2 or lab.shape[0] != batch or lab.shape[1] < 1:
            raise ValueError(f"{where}: FilterLossContext.labels must be N x L (N = {batch} images, "
                             f"+1/-1 per class), got shape {tuple(lab.shape)}")
        return lab

    def density_vector(self, n_labels: int, where: str = "conv_mask") -> torch.Tensor:
        """The density as an (L,) float64 tensor (checked)."""
        if self.density is None:
            raise ValueError(f"{where}: FilterLossContext.density is needed with {n_labels} classes and sliceMag "
                             f"set (mean(labels > 0) per class over the imdb)")
        d = torch.as_tensor(self.density, dtype=torch.float64).reshape(-1)
        if d.numel() != n_labels:
            raise ValueError(f"{where}: FilterLossContext.density has {d.numel()} values for {n_labels} classes")
        return d


# ------------------------------------------------------------------ constants built once
@dataclass(frozen=True)
class _MuGrid:
    """getMu's position grids for H x W maps (one dtype, one device), built once (see `mu_grid`).

    proj: H x W x (H+W+3), tensordot(x, proj, 2) = [row sums (H), column sums (W), total,
    sum i x, sum j x] in one matrix product; pos: (H+W,) the positions 1..H, 1..W of those sums;
    lower, upper: (2,) the centroid bounds [1, 1], [H, W]; sq: (H+1) x (W+1) x (H+W), entry
    [mu_i, mu_j] holds (i - mu_i)^2 under the row sums and (j - mu_j)^2 under the column sums
    (exact small integers: sqrtvar's weights gathered instead of formed per map); half, one:
    0.5, 1 (0-d)."""

    proj: torch.Tensor
    pos: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    sq: torch.Tensor
    half: torch.Tensor
    one: torch.Tensor


@functools.lru_cache(maxsize=64)
def mu_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _MuGrid:
    """getMu's constants for H x W maps, cached by (shape, dtype, device)."""
    ii = torch.arange(1, h + 1, dtype=torch.float64).repeat_interleave(w)      # row of each pixel (1-based)
    jj = torch.arange(1, w + 1, dtype=torch.float64).repeat(h)                 # its column
    pix = torch.arange(h * w)
    proj = torch.zeros(h * w, h + w + 3, dtype=torch.float64)
    proj[pix, ii.long() - 1] = 1.0
    proj[pix, h + jj.long() - 1] = 1.0
    proj[:, h + w], proj[:, h + w + 1], proj[:, h + w + 2] = 1.0, ii, jj
    proj = proj.view(h, w, h + w + 3)
    pos = torch.cat([torch.arange(1, h + 1), torch.arange(1, w + 1)]).to(torch.float64)
    mi = torch.arange(h + 1, dtype=torch.float64).repeat_interleave(w + 1)      # centroid row of each flat index
    mj = torch.arange(w + 1, dtype=torch.float64).repeat(h + 1)                 # its column
    sq = torch.cat([(pos[None, :h] - mi[:, None]) ** 2, (pos[None, h:] - mj[:, None]) ** 2], dim=1)
    grid = _MuGrid(proj, pos, torch.ones(2, dtype=torch.float64), torch.tensor([h, w], dtype=torch.float64),
                   sq.view(h + 1, w + 1, h + w), torch.tensor(0.5, dtype=torch.float64),
                   torch.tensor(1.0, dtype=torch.float64))
    return _MuGrid(*(t.to(device=device, dtype=dtype) for t in vars(grid).values()))


@functools.lru_cache(maxsize=64)
def _linspace_table(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """t = linspace(-1,1,H) indexed by a 1-based centroid: entry 0 unused, entries past H repeat
    t(H) (mu_j may reach W; the original indexes t with it, see get_mu)."""
    t = mlinspace(-1.0, 1.0, h)
    idx = np.clip(np.arange(max(h, w) + 1), 1, h) - 1
    return torch.as_tensor(t[idx], dtype=torch.float64).to(device=device, dtype=dtype)


# ------------------------------------------------------------------ getMu / getMask
def _check_square(x: torch.Tensor, where: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{where}: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"{where}: the feature map is {x.shape[2]} x {x.shape[3]}; conv_mask needs square maps "
                         f"(the original getMu uses linspace(-1,1,h) for both axes)")


_NONFINITE_INPUT = "{where}: the input contains NaN or Inf values"


def get_mu(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Port of tool/main/getMu.m: activation centroid (mu_x, mu_y in linspace(-1,1,H) units)
    and its spread sqrtvar, each N x D. See the module docstring for the formulas. Maps need not
    be square here (mu_y is still read from linspace(-1,1,H), as the original does); the
    ConvMask layer requires square maps.

    `out_dtype` is the dtype of mu_x, mu_y (default x's; the original's are double).
    """
    if x.dim() != 4:
        raise ValueError(f"getMu: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    (i, j), sqrtvar, total = _centroids(x)
    if not bool(torch.isfinite(total).all()):
        raise ValueError(_NONFINITE_INPUT.format(where="getMu"))
    t = _linspace_table(x.shape[2], x.shape[3], out_dtype or x.dtype, x.device)
    return t[i], t[j], sqrtvar


def centroids(x: torch.Tensor, grid: "_MuGrid | None" = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """getMu.m's arithmetic for N x D x H x W maps in one matrix product and a few element-wise
    steps: (mu N x D x 2, the 1-based centroid row and column as floats; sqrtvar N x D; the map
    sums N x D, for the finiteness check and mean_ij x).

    s = max(sum_ij x, 1e-9); mu_i = min(max(round(sum_ij i x / s), 1), H) (round: halves away
    from zero, computed as floor(v + 0.5), which is exact for v >= 0.5 and clamps to 1 below);
    sqrtvar = sqrt(sum_ij ((i - mu_i)^2 + (j - mu_j)^2) x / s), from the row and column sums.
    The upper clamps are a fix: the original indexes linspace(-1,1,h) past its end when a
    centroid lies beyond the map (negative inputs)."""
    ij, sqrtvar, total = _centroids(x, grid)
    return torch.stack(ij, dim=2).to(x.dtype), sqrtvar, total


def _centroids(x: torch.Tensor, grid: "_MuGrid | None" = None):
    """centroids with the centroid as a pair of int64 indices (mu_i, mu_j), N x D each:
    ((mu_i, mu_j), sqrtvar, total)."""
    n, d, h, w = x.shape
    g = mu_grid(h, w, x.dtype, x.device) if grid is None else grid
    margins, total, moments = torch.tensordot(x, g.proj, dims=2).split([h + w, 1, 2], dim=2)
    s = total.clamp_min(1e-9)
    # floor(v) clamped to [1, H] is v clamped to [1, H], then truncated (floor and truncation agree
    # from 1 up; below 1 both clamp to 1); NaN (a non-finite input, checked later) -> 1
    ij = torch.addcdiv(g.half, moments, s).nan_to_num_(nan=1.0).clamp_(min=g.lower, max=g.upper).long().unbind(2)
    # sum_i (i - mu_i)^2 r_i / s + sum_j (j - mu_j)^2 c_j / s
    var = torch.einsum("ndp,ndp->nd", g.sq[ij], margins / s)
    return ij, var.sqrt_(), total.squeeze(2)


def get_mask(mu_x: torch.Tensor, mu_y: torch.Tensor, beta: torch.Tensor, filter_type: torch.Tensor,
             pos_x: torch.Tensor, pos_y: torch.Tensor) -> torch.Tensor:
    """Port of tool/main/getMask.m.

    mu_x, mu_y: N x D (cast to pos_x's dtype); beta (D,); filter_type (D,); pos_x, pos_y: D x H x W.
    Returns mask = max(1 - beta (|pos_x - mu_x| + |pos_y - mu_y|), -1), 1 where filter ~= 1.
    """
    dt = pos_x.dtype
    dist = (pos_x[None] - mu_x.to(dt)[:, :, None, None]).abs_()
    dist += (pos_y[None] - mu_y.to(dt)[:, :, None, None]).abs_()
    return _mask_from_distance(dist, torch.where(filter_type == 1, beta.to(dt), 0).view(-1, 1, 1))


def _mask_from_distance(dist: torch.Tensor, beta_part: torch.Tensor, one: torch.Tensor | None = None) -> torch.Tensor:
    """max(1 - beta dist, -1), in place on dist; beta_part: D x 1 x 1, 0 for the filters that
    are not parts (1 - 0 dist = 1 exactly: their mask is 1, as getMask sets it)."""
    one = _const(1.0, dist.dtype, dist.device) if one is None else one
    return torch.addcmul(one, dist, beta_part, value=-1).clamp_min_(-1)


@functools.lru_cache(maxsize=16)
def _const(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A number as a 0-d tensor (the first operand of addcmul / add), built once per dtype and device."""
    return torch.full((), value, dtype=dtype, device=device)


def get_mask_separable(mu_x: torch.Tensor, mu_y: torch.Tensor, beta: torch.Tensor, filter_type: torch.Tensor | None,
                       pos_rows: torch.Tensor, pos_cols: torch.Tensor) -> torch.Tensor:
    """get_mask for templates that vary along one axis each (posTemp_x(c,i,j) = pos_rows(c,i),
    posTemp_y(c,i,j) = pos_cols(c,j), as add_block_mask.m builds them): the same arithmetic,
    |pos_x - mu_x| + |pos_y - mu_y| formed from the row and column terms. filter_type None: all
    filters are parts."""
    dt = pos_rows.dtype
    dx = (pos_rows[None] - mu_x.to(dt)[:, :, None]).abs_()         # N x D x H
    dy = (pos_cols[None] - mu_y.to(dt)[:, :, None]).abs_()         # N x D x W
    part = torch.ones_like(beta, dtype=torch.bool) if filter_type is None else filter_type == 1
    return _mask_from_distance(dx[:, :, :, None] + dy[:, :, None, :], torch.where(part, beta.to(dt), 0).view(-1, 1, 1))


def distance_table(pos_rows: torch.Tensor, pos_cols: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """|posX - mu_x| + |posY - mu_y| for every possible centroid, (H+1) x (W+1) x H x W: entry
    [mu_i, mu_j] is the distance map of the centroid (mu_i, mu_j) (1-based; row 0 and column 0
    unused), with posTemp the same in every channel (pos_rows (H,), pos_cols (W,)) and
    t the centroid's coordinate table (_linspace_table). The same float operations as get_mask,
    done once per layer instead of once per map."""
    h, w = pos_rows.numel(), pos_cols.numel()
    tx, ty = t[: h + 1].to(pos_rows.dtype), t[: w + 1].to(pos_rows.dtype)
    dx = (pos_rows[None, :] - tx[:, None]).abs_()                  # (H+1) x H
    dy = (pos_cols[None, :] - ty[:, None]).abs_()                  # (W+1) x W
    return dx[:, None, :, None] + dy[None, :, None, :]


def pos_templates(channels: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """add_block_mask.m's posTemp: posTemp_x(c, i, j) = linspace(-1,1,h)(i), posTemp_y = linspace(-1,1,w)(j);
    single precision, C x H x W each."""
    tx = torch.as_tensor(mlinspace(-1.0, 1.0, h), dtype=torch.float64).to(dtype)
    ty = torch.as_tensor(mlinspace(-1.0, 1.0, w), dtype=torch.float64).to(dtype)
    px = tx[None, :, None].expand(channels, h, w).contiguous()
    py = ty[None, None, :].expand(channels, h, w).contiguous()
    return px, py


# ------------------------------------------------------------------ the filter loss: blocks ("Div")
@dataclass
class FilterLossSetup:
    """The per-batch constants of the filter loss (our_vl_simplenn.m's `Div`, w_pos, w_neg, mag).

    member: 2 x N x D bool, [positives, negatives] of each part channel's class (the entries of
    the blocks); count: 2 x 1 x D, images per channel in its block; block_size: entries per
    block, at least 1 (2 x 1 x 1, or G x 2 x 1 x 1 with classes); groups: G x 1 x 1 x D bool,
    channel d in class g's block (None: one block); group_of (D,): its class; beta_member: N x D
    (or N x 1), the positives of each channel's class; beta_scale (D,): -10000 for the part and
    texture channels, 0 for the others (whose dbeta is then 0); step: 1e-5 w+, 1e-5 w- (a number when both are 1e-5, else 2 x 1 x D);
    mag: epoch / l.mag (0-d); three: 3 (0-d, BETA_TARGET); fallback: the layer's all_inf_fallback; where: for messages.
    """

    member: torch.Tensor
    count: torch.Tensor
    block_size: torch.Tensor
    groups: torch.Tensor | None
    group_of: torch.Tensor | None
    beta_member: torch.Tensor
    beta_scale: torch.Tensor
    step: torch.Tensor | float
    mag: torch.Tensor
    three: torch.Tensor
    fallback: float | None = None
    where: str = "conv_mask"


def filter_loss_setup(labels: torch.Tensor, filter_type: torch.Tensor, slice_mag: torch.Tensor | None, epoch: int,
                      density: torch.Tensor | None, layer_mag: Any, dtype: torch.dtype = torch.float32,
                      fallback: float | None = None, where: str = "conv_mask") -> FilterLossSetup:
    """`Div` and the weights of our_vl_simplenn.m's conv_mask backward for a batch (labels N x L)."""
    consts = _ChannelConstants.build(filter_type, dtype)
    return _blocks(labels, consts, slice_mag, epoch, density, layer_mag, dtype, fallback, where)


@dataclass(frozen=True)
class _ChannelConstants:
    """What the filter types give, built once per layer: part (D,) bool, part_col (D x 1 x 1),
    active (D,) bool (part or texture), beta_scale (D,); member_key: 2 x 1 x D int64, [1, 0] for
    part channels and 2 (never equal to a 0/1 label test) for the others, so that
    `(labels == 1) == member_key` forms [positives, negatives] of the part channels in one
    step; three: 3 (0-d); the last `mag` tensor, by epoch; the last sliceMag's classes
    (`class_groups`)."""

    part: torch.Tensor
    part_col: torch.Tensor
    active: torch.Tensor
    beta_scale: torch.Tensor
    member_key: torch.Tensor
    three: torch.Tensor
    mags: dict
    groups: dict

    @classmethod
    def build(cls, filter_type: torch.Tensor, dtype: torch.dtype) -> "_ChannelConstants":
        part = filter_type == 1
        active = filter_type > 0
        scale = torch.where(active, BETA_GRAD_SCALE, 0.0).to(dtype)
        dev = filter_type.device
        key = torch.where(part, torch.tensor([[1], [0]], device=dev), 2).unsqueeze(1)      # 2 x 1 x D
        return cls(part, part.view(-1, 1, 1), active, scale, key, torch.full((), BETA_TARGET, dtype=dtype, device=dev),
                   {}, {})

    def mag(self, epoch: int, layer_mag: Any) -> torch.Tensor:
        """`ones(depth, imgNum) ./ (1/iter) ./ l.mag` (one value), in the constants' dtype; kept
        while the epoch and the layer's mag tensor stay the same."""
        key = (epoch, id(layer_mag), getattr(layer_mag, "_version", None), float(layer_mag)
               if not isinstance(layer_mag, torch.Tensor) else None)
        if key not in self.mags:
            lm = torch.as_tensor(layer_mag, dtype=torch.float64, device=self.three.device)
            self.mags.clear()
            self.mags[key] = (torch.full((), 1.0 / (1.0 / float(epoch)), dtype=torch.float64,
                                         device=lm.device).div_(lm).to(self.three.dtype), layer_mag)
        return self.mags[key][0]

    def class_groups(self, slice_mag: torch.Tensor, n_labels: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(group_of (D,), groups G x 1 x 1 x D bool) of sliceMag (D x L): channel d belongs to
        class argmax_l sliceMag(d, l), first of ties, NaN skipped as MATLAB's max does; kept
        while the same sliceMag tensor is unchanged (it changes once per epoch at most)."""
        depth = self.part.numel()
        if tuple(slice_mag.shape) != (depth, n_labels):
            raise ValueError(f"{where}: sliceMag is {tuple(slice_mag.shape)}, expected {depth} x {n_labels} "
                             f"(channels x classes)")
        key = (id(slice_mag), slice_mag._version, slice_mag.data_ptr(), slice_mag.device)
        hit = self.groups.get("last")
        if hit is None or hit[0] != key:
            group_of = slice_mag.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf).argmax(dim=1)
            groups = group_of == _arange(n_labels, slice_mag.device).view(-1, 1, 1, 1)
            hit = (key, group_of, groups, slice_mag)      # the tensor kept alive: its id stays its own
            self.groups.clear()                           # (and the steps of the old classes)
            self.groups["last"] = hit
        return hit[1], hit[2]


def _blocks(labels: torch.Tensor, consts: _ChannelConstants, slice_mag: torch.Tensor | None, epoch: int,
            density: torch.Tensor | None, layer_mag: Any, dtype: torch.dtype, fallback: float | None,
            where: str) -> FilterLossSetup:
    """Div: one block (one class, or several classes without sliceMag: the positives are the
    images positive for any class, w = 1) or one block per class (sliceMag: channel d belongs
    to class argmax_l sliceMag(d, l), first of ties, NaN skipped as MATLAB's max does)."""
    n_labels = labels.shape[1]
    mag = consts.mag(epoch, layer_mag)
    if n_labels == 1 or slice_mag is None or slice_mag.numel() == 0:
        pos = labels == 1 if n_labels == 1 else labels.amax(dim=1, keepdim=True) == 1      # N x 1
        member = pos == consts.member_key                            # [positives, negatives] x N x D
        count = member.sum(dim=1, keepdim=True)
        # beta's positives: all channels (beta_scale is 0 for the channels of type 0)
        return FilterLossSetup(member, count, count.sum(dim=2, keepdim=True).clamp_min_(1), None, None,
                               pos, consts.beta_scale, LOSS_STEP, mag, consts.three, fallback, where)
    group_of, groups = consts.class_groups(slice_mag, n_labels, where)
    pos = (labels == 1).index_select(1, group_of)                                            # N x D
    member = pos == consts.member_key
    count = member.sum(dim=1, keepdim=True)
    block_size = (count * groups).sum(dim=3, keepdim=True).clamp_min_(1)                    # G x 2 x 1 x 1
    return FilterLossSetup(member, count, block_size, groups, group_of, pos, consts.beta_scale,
                           _class_steps(n_labels, density, group_of, dtype, where, consts.groups), mag, consts.three,
                           fallback, where)


@functools.lru_cache(maxsize=16)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=16)
def _many_class_steps(n_labels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1e-5 w+, 1e-5 w- for more than 10 classes: w+ = 0.5 L, w- = 0.5 / (1 - 1/L); 2 x 1 x 1."""
    w = [0.5 / (1 / n_labels), 0.5 / (1 - 1 / n_labels)]
    return torch.tensor([LOSS_STEP * v for v in w], dtype=torch.float64).to(dtype).view(2, 1, 1).to(device)


def _class_steps(n_labels: int, density: torch.Tensor | None, group_of: torch.Tensor, dtype: torch.dtype,
                 where: str, cache: dict) -> torch.Tensor:
    """1e-5 w+ and 1e-5 w- of each channel's class, 2 x 1 x D (w+ = 0.5 / density_l,
    w- = 0.5 / (1 - density_l); more than 10 classes: _many_class_steps); kept in `cache` (the
    layer's) for the same density and classes."""
    if n_labels > 10:
        return _many_class_steps(n_labels, dtype, group_of.device)
    if density is None or density.numel() != n_labels:
        raise ValueError(f"{where}: the label density (L = {n_labels} values) is needed with sliceMag set")
    steps = _density_steps(density, dtype, group_of.device)
    key = (id(steps), id(group_of))
    hit = cache.get("steps")
    if hit is None or hit[0] != key:
        hit = (key, steps.index_select(2, group_of), steps, group_of)     # both kept alive: their ids stay theirs
        cache["steps"] = hit
    return hit[1]


_DENSITY_STEPS: dict = {}


def _density_steps(density: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1e-5 (0.5 ./ density), 1e-5 (0.5 ./ (1 - density)) per class, 2 x 1 x L (in float64,
    then `dtype`); kept for the last density tensor (the imdb's, the same every batch)."""
    key = (id(density), density._version, density.device, dtype, device)
    hit = _DENSITY_STEPS.get("last")
    if hit is None or hit[0] != key:
        dens = density.reshape(-1).to(device=device, dtype=torch.float64, non_blocking=True)
        w = torch.stack([dens, 1 - dens]).reciprocal_().mul_(0.5 * LOSS_STEP).to(dtype).unsqueeze(1)
        hit = (key, w, density)                # the tensor kept alive: its id stays its own
        _DENSITY_STEPS["last"] = hit
    return hit[1]


# ------------------------------------------------------------------ the filter loss: arithmetic
def _replace_inf_by_block_max(v: torch.Tensor, setup: FilterLossSetup,
                              zero_nan: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`v(isinf(v)) = max(v(isinf(v)==0))` of our_vl_simplenn.m on every block at once, then
    `v(isnan(v)) = 0` (zero_nan False: NaN left, in and outside the blocks, for a caller that
    treats NaN as 0 itself).

    v: 2 x N x D with NaN outside the blocks (`setup.member`). MATLAB's max skips NaN; a block
    whose non-Inf values are all NaN gives NaN, then 0. Returns (v, infs): infs (2 x 1 x 1, or
    G x 2 x 1 x 1) the number of ±Inf values of each block; a block with as many as it has
    entries (`infs >= setup.block_size`) holds Inf values and no other value, where MATLAB
    stops with an error (their values become `setup.fallback`, or 0 when it is None). Entries
    outside the blocks come out 0 (zero_nan False: NaN, or 0 with classes)."""
    if setup.groups is not None:                            # G x 2 x N x D: NaN outside class g's block
        v = torch.where(setup.groups, v, math.nan)
    inf = v.isinf()
    top = v.nan_to_num(nan=-math.inf, posinf=-math.inf, neginf=-math.inf).amax(dim=(-2, -1), keepdim=True)
    infs = inf.sum(dim=(-2, -1), keepdim=True)
    if setup.fallback is not None:
        top = torch.where(infs >= setup.block_size, float(setup.fallback), top)
    # -inf left in v: no finite value in the block (NaN -> 0, or MATLAB's error)
    v = torch.where(inf, top, v)
    if setup.groups is not None:                            # each channel's own class; NaN elsewhere
        v = v.nansum(dim=0)
    return (v.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0) if zero_nan else v), infs


@functools.lru_cache(maxsize=64)
def _row_divisors(hw: int, from_total: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The divisors of _doubled_rows' four rows, 4 x 1 x 1."""
    m = -hw / 2 if from_total else 0.5
    return torch.tensor([hw / 2, m, 0.5, m], dtype=torch.float64).to(dtype).view(4, 1, 1).to(device)


def _doubled_rows(x: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, total: torch.Tensor | None,
                  neg_mean: torch.Tensor | None, divisors: torch.Tensor | None = None) -> torch.Tensor:
    """4 x N x D: twice [mean_ij x .* mask~, -mean_ij x, S, -mean_ij x] (the exponents of logZ+,
    logZ-, then of the positives' and negatives' strengths), in one division: the sums over
    hw / 2 (or -hw / 2), S over 0.5, which is exactly twice mean = sum / hw (scaling by 2 is
    exact). mask~ has both its channel and its image order reversed (mask(:,:,end:-1:1,end:-1:1)).
    From the map sums `total`, or from neg_mean = -mean_ij x."""
    hw = x.shape[2] * x.shape[3]
    rev = torch.einsum("ndhw,ndhw->nd", x, mask.flip((0, 1)))
    m = total if total is not None else neg_mean
    if divisors is None:
        divisors = _row_divisors(hw, total is not None, x.dtype, x.device)
    return torch.stack([rev, m, strength, m]).div_(divisors)


def _log_z(ez: torch.Tensor, fallback: float | None):
    """2 log mean_n exp(2 z) from ez = exp(2 z) (2 x N x D, z = [mean_ij x .* mask~, -mean_ij x]):
    twice alpha_logZ_pos / _neg (alpha = 0.5), ±Inf replaced by the largest finite value of
    each. Returns (2 logZ 2 x 1 x D, bad 2 x 1 x 1: where every value is ±Inf, MATLAB's error)."""
    lz = ez.mean(dim=1, keepdim=True).log_()
    inf = lz.isinf()
    top = lz.nan_to_num(posinf=-math.inf, neginf=-math.inf).amax(dim=2, keepdim=True)
    bad = top == -math.inf
    if fallback is not None:
        top = torch.where(bad, 2 * float(fallback), top)
    return torch.where(inf, top, lz), bad


def _normalise(s: torch.Tensor, setup: FilterLossSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """The replacement / normalisation sequence the original applies to both strengths, on
    2 x N x D (NaN outside the blocks): Inf -> block max, NaN -> 0, s / (mean_block s * mag),
    NaN -> 0, Inf -> block max. Returns (s, 0 outside the blocks; bad blocks).

    The first NaN -> 0 is done by the mean (a nansum) and the NaN -> 0 after the quotient (a
    NaN over any divisor stays NaN, where the original's 0 over it gives 0 or NaN: both 0 then);
    -Inf left by the first pass (a block with no finite value) gives 0 there too, as 0 would."""
    s, infs1 = _replace_inf_by_block_max(s, setup, zero_nan=False)
    s = s / ((s.nansum(dim=1, keepdim=True) / setup.count) * setup.mag)     # mean(strength, 2) .* mag
    s = torch.where(setup.member, s.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf), math.nan)
    s, infs2 = _replace_inf_by_block_max(s, setup)
    return s, torch.maximum(infs1, infs2) >= setup.block_size


def _beta_derivative(strength: torch.Tensor, sqrtvar: torch.Tensor, beta: torch.Tensor,
                     setup: FilterLossSetup) -> torch.Tensor:
    """dzdw{3}: (clamp(3 / (sum_pos S sqrtvar / sum_pos S), 1.5, 3) - beta) * (-10000) for part
    and texture channels, 0 for the others (MATLAB min/max: 3/NaN -> 3)."""
    s = torch.where(setup.beta_member, strength, 0)
    r = torch.div(setup.three, torch.linalg.vecdot(s, sqrtvar, dim=0) / s.sum(dim=0))     # 3 ./ tmp
    r = r.nan_to_num_(nan=BETA_MAX, posinf=math.inf, neginf=-math.inf).clamp_(BETA_MIN, BETA_MAX)
    return (r - beta).mul_(setup.beta_scale)


def filter_loss_terms(x: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, sqrtvar: torch.Tensor,
                      neg_mean: torch.Tensor, beta: torch.Tensor,
                      setup: FilterLossSetup) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The filter-loss part of our_vl_simplenn.m's conv_mask backward (see the module
    docstring), without host synchronisation: (coef 2 x N x D: the input gradient gets
    `- mask * coef[0] + coef[1]`; dbeta (D,); bad: 0-d bool, a block held only ±Inf values).
    neg_mean: -mean_ij x, N x D."""
    return _filter_loss(x, mask, strength, sqrtvar, None, neg_mean, beta, setup)


def _filter_loss(x, mask, strength, sqrtvar, total, neg_mean, beta, setup: FilterLossSetup, divisors=None, half=None):
    """filter_loss_terms from the map sums `total` (or from neg_mean when total is None);
    divisors, half: the layer's constants (_row_divisors, 0.5), looked up when None."""
    w2 = _doubled_rows(x, mask, strength, total, neg_mean, divisors)          # 2 [z+, z-, S, -m]
    e2 = w2.exp()
    ez, ev = e2.split(2)
    lz2, bad0 = _log_z(ez, setup.fallback)
    # exp(v/a) (v - logZ + a), a = 0.5, v = [S, -m]: (2v - 2 logZ) / 2 is v - logZ exactly
    half = _const(ALPHA_LOGZ, x.dtype, x.device) if half is None else half
    s = torch.add(half, w2.split(2)[1] - lz2, alpha=0.5).mul_(ev)
    s, bad = _normalise(torch.where(setup.member, s, math.nan), setup)
    coef = s * setup.step
    return coef, _beta_derivative(strength, sqrtvar, beta, setup), (bad0 | bad).any()


def all_inf_message(where: str) -> str:
    return (f"{where}: a block of the filter loss holds only ±Inf values (activations too large for "
            f"exp(.../0.5) in single precision); the original our_vl_simplenn.m stops here with an "
            f"assignment error. Set the layer's all_inf_fallback to a number to continue with it instead.")


def filter_loss_gradients(x: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, sqrtvar: torch.Tensor,
                          beta: torch.Tensor, setup: FilterLossSetup,
                          x_sum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """filter_loss_terms with its error raised here (a host synchronisation): (coef_pos,
    coef_neg, dbeta); x, mask N x D x H x W, strength and sqrtvar N x D, beta (D,)."""
    x_sum = x.sum(dim=(2, 3)) if x_sum is None else x_sum
    coef, dbeta, bad = filter_loss_terms(x, mask, strength, sqrtvar, x_sum / -(x.shape[2] * x.shape[3]), beta, setup)
    if setup.fallback is None and bool(bad):
        raise FilterLossError(all_inf_message(setup.where))
    return coef[0], coef[1], dbeta


# ------------------------------------------------------------------ per-layer constants, checks, compile
@dataclass(frozen=True)
class _LayerConstants:
    """Built once per layer (and dtype, device), rebuilt when a buffer changes: getMu's grid,
    the distance table (None when posTemp differs between channels or the table would be
    large: get_mask then forms the distances per call), the filter types' constants, the
    divisors of the filter loss's exponent rows (`_row_divisors`)."""

    grid: _MuGrid
    table: torch.Tensor | None
    filter_type: torch.Tensor
    t: torch.Tensor
    channels: _ChannelConstants
    pos_x: torch.Tensor
    pos_y: torch.Tensor
    divisors: torch.Tensor


_TABLE_MAX = 1 << 22        # entries of the distance table (16 MiB in float32); larger: per-call distances


def _layer_constants(pos_x: torch.Tensor, pos_y: torch.Tensor, filter_type: torch.Tensor,
                     dtype: torch.dtype) -> _LayerConstants:
    """The constants of a layer with these buffers, for inputs of `dtype` (synchronises once)."""
    d, h, w = pos_x.shape
    dev = pos_x.device
    t = _linspace_table(h, w, dtype, dev)
    rows, cols = pos_x[:1, :, :1], pos_y[:1, :1, :]
    uniform = bool((pos_x == rows).all()) and bool((pos_y == cols).all())       # separable, same in every channel
    table = None
    if uniform and (h + 1) * (w + 1) * h * w <= _TABLE_MAX:
        table = distance_table(rows.reshape(h), cols.reshape(w), t)
    return _LayerConstants(mu_grid(h, w, dtype, dev), table, filter_type, t, _ChannelConstants.build(filter_type, dtype),
                           pos_x, pos_y, _row_divisors(h * w, True, dtype, dev))


def _distances(ij: tuple[torch.Tensor, torch.Tensor], k: _LayerConstants) -> torch.Tensor:
    """|posX - mu_x| + |posY - mu_y|, N x D x H x W (a gather from the table by the centroids'
    indices (mu_i, mu_j) when there is a table)."""
    if k.table is not None:
        return k.table[ij]
    dt = k.pos_x.dtype
    dist = (k.pos_x - k.t[ij[0]].to(dt)[..., None, None]).abs_()
    return dist.add_((k.pos_y - k.t[ij[1]].to(dt)[..., None, None]).abs_())


def _mask_maths(x: torch.Tensor, beta: torch.Tensor, k: _LayerConstants, with_strength: bool):
    """getMu, getMask and the mask product of the forward: (max(x .* mask, 0), mask, sqrtvar,
    the map sums, strength S = mean_ij x .* mask or None)."""
    ij, sqrtvar, total = _centroids(x, k.grid)
    mask = _mask_from_distance(_distances(ij, k), torch.where(k.channels.part_col, beta.view(-1, 1, 1), 0),
                               k.grid.one)
    xm = x * mask
    strength = xm.mean(dim=(2, 3)) if with_strength else None              # mean(mean(x.*mask,1),2)
    return xm.clamp_min_(0), mask, sqrtvar, total, strength


_COMPILE = {"enabled": os.environ.get("ICNN_COMPILE_CONV_MASK", "") == "1", "backend": "inductor", "failed": False}
_COMPILED: dict[Any, Any] = {}


def set_compile(enabled: bool, backend: str = "inductor") -> None:
    """torch.compile the conv_mask maths (getMu, getMask, the filter loss) on CUDA: OFF by
    default (its results are not checked against the golden cases here); also switched on by
    the environment variable ICNN_COMPILE_CONV_MASK=1. The convolutions stay eager; the CPU
    never compiles. Where compiling fails the layer warns once and runs eagerly."""
    _COMPILE.update(enabled=bool(enabled), backend=backend, failed=False)
    _COMPILED.clear()


def _maybe_compiled(fn: Any, device: torch.device, allow_cpu: bool = False) -> Any:
    if not _COMPILE["enabled"] or _COMPILE["failed"] or (device.type == "cpu" and not allow_cpu):
        return fn
    key = (fn, _COMPILE["backend"])
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, backend=_COMPILE["backend"], dynamic=False)
    compiled = _COMPILED[key]

    def run(*args):
        if _COMPILE["failed"]:
            return fn(*args)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - no compiler, unsupported GPU, ...: eager from now on
            _COMPILE["failed"] = True
            warnings.warn(f"conv_mask: torch.compile failed ({type(err).__name__}: {err}); running eagerly")
            return fn(*args)
    return run


class DeferredChecks:
    """The layer's input and filter-loss checks, kept on the device where reading them would
    synchronise (CUDA training steps): `raise_pending` raises the error they found, with the
    message an immediate check gives."""

    def __init__(self) -> None:
        self.finite: torch.Tensor | None = None       # every input seen was finite
        self.all_inf: torch.Tensor | None = None      # some filter-loss block held only ±Inf

    def note_input(self, finite: torch.Tensor) -> None:
        self.finite = finite if self.finite is None else self.finite & finite

    def note_all_inf(self, bad: torch.Tensor) -> None:
        self.all_inf = bad if self.all_inf is None else self.all_inf | bad

    def raise_pending(self, where: str) -> None:
        finite, all_inf = self.finite, self.all_inf
        self.finite = self.all_inf = None
        if finite is not None and not bool(finite):
            raise ValueError(_NONFINITE_INPUT.format(where=where) + " (found by the deferred check: in one of the "
                             "training steps since the last check)")
        if all_inf is not None and bool(all_inf):
            raise FilterLossError(all_inf_message(where) + " (found by the deferred check)")


def raise_deferred_errors(module: nn.Module) -> None:
    """Raise the error any ConvMask layer in `module` found in deferred mode (see ConvMask.check_mode)."""
    for m in module.modules():
        if isinstance(m, ConvMask):
            m.checks.raise_pending(m.where)


# ------------------------------------------------------------------ the autograd function
@dataclass
class _LayerState:
    """What the Function needs of the module, captured at forward time."""

    pad: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilate: tuple[int, int]
    consts: _LayerConstants
    setup: FilterLossSetup | None          # None with the whole-batch loss (its blocks come from all ranks)
    checks: DeferredChecks | None          # None: check now (raise at once)
    name: str
    loss: bool = False                     # a FilterLossContext was given: the filter loss in backward
    fallback: float | None = None          # the layer's all_inf_fallback
    context: FilterLossContext | None = None       # for reproduce.distributed's whole-batch loss
    whole_batch: Any = None
    labels: torch.Tensor | None = None
    slice_mag: torch.Tensor | None = None
    density: torch.Tensor | None = None
    mag: torch.Tensor | None = None


def _conv(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, st: _LayerState) -> torch.Tensor:
    return conv2d_padded(inp, weight, bias, st.pad, st.stride, st.dilate)


def _conv_backward(gout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                   st: _LayerState, need: Sequence[bool]) -> tuple[Any, Any, Any]:
    t, b, l, r = st.pad
    sym = is_symmetric(st.pad)
    padded = inp if sym else F.pad(inp, (l, r, t, b))
    gx, gw, gb = torch.ops.aten.convolution_backward(
        gout, padded, weight, [weight.shape[0]] if has_bias else None, list(st.stride),
        [t, l] if sym else [0, 0], list(st.dilate), False, [0, 0], 1,
        [bool(need[0]), bool(need[1]), bool(need[2]) and has_bias])
    if gx is not None and not sym:
        gx = gx[:, :, t:t + inp.shape[2], l:l + inp.shape[3]]
    return gx, gw, gb


@functools.lru_cache(maxsize=16)
def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


def _check_input(total: torch.Tensor, st: _LayerState) -> None:
    """Every map sum finite: sum_nd total .* 0 is 0 then, NaN otherwise (one reduction, the
    products formed before any sum, so that large finite sums cannot overflow)."""
    probe = torch.einsum("nd,nd->", total, _zeros(tuple(total.shape), total.dtype, total.device))
    if st.checks is not None:
        st.checks.note_input(torch.isfinite(probe))
    elif not math.isfinite(probe.item()):
        raise ValueError(_NONFINITE_INPUT.format(where=st.name))


class _ConvMaskFunction(torch.autograd.Function):
    """conv_mask forward and backward of our_vl_simplenn.m (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, st: _LayerState):
        maths = _maybe_compiled(_mask_maths, x.device)
        inp, mask, sqrtvar, total, strength = maths(x, beta, st.consts, st.loss)
        _check_input(total, st)
        out = _conv(inp, weight, bias, st)
        ctx.st = st
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, beta, mask, sqrtvar, strength, total)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, weight, beta, mask, sqrtvar, strength, total = ctx.saved_tensors
        st: _LayerState = ctx.st
        need_x, need_w, need_b, need_beta = ctx.needs_input_grad[:4]
        positive = mask.clamp_min(0)
        # dW, db: the convolution's backward on x .* max(mask, 0); dx: its input gradient .* max(mask, 0)
        gx, gw, gb = _conv_backward(gout.contiguous(), x * positive, weight, ctx.has_bias, st, (need_x, need_w, need_b))
        gbeta = None
        loss = st.loss and (need_x or need_beta)
        if gx is not None and not loss:
            gx.mul_(positive)
        if loss:
            if st.whole_batch is None:
                terms = _maybe_compiled(_filter_loss, x.device)
                k = st.consts
                coef, dbeta, bad = terms(x, mask, strength, sqrtvar, total, None, beta, st.setup, k.divisors, k.grid.half)
                if st.setup.fallback is None:
                    _check_all_inf(bad, st)
            else:                       # several ranks: the loss over the whole batch (reproduce.distributed)
                coef, dbeta = _whole_batch_terms(x, mask, strength, sqrtvar, total, beta, st)
            if gx is not None:     # dx .* max(mask, 0) - mask .* coef+ + coef- (one of the two is 0 per map)
                coef_pos, coef_neg = coef.view(*coef.shape, 1, 1).unbind(0)
                gx = torch.addcmul(coef_neg, gx, positive).addcmul_(mask, coef_pos, value=-1.0)
            gbeta = dbeta if need_beta else None
        return gx, gw, gb if need_b else None, gbeta, None


def _whole_batch_terms(x, mask, strength, sqrtvar, total, beta, st: _LayerState):
    """The filter loss through reproduce.distributed's whole-batch wrapper (its blocks are
    built from the gathered labels; it synchronises, as gathering does)."""
    ctx = st.context

    def loss(b: FilterLossBatch):
        return filter_loss_by_labels(b.x, b.mask, b.strength, b.sqrtvar, beta, st.consts.filter_type, st.slice_mag,
                                     b.labels, ctx.epoch, st.density, st.mag, st.fallback, st.name, x_mean=b.x_mean)
    batch = FilterLossBatch(x, mask, strength, sqrtvar, total / (x.shape[2] * x.shape[3]), st.labels)
    cp, cn, dbeta = ctx.whole_batch.wrap(loss)(batch, st.name)
    return torch.stack([cp, cn]), dbeta


def filter_loss_by_labels(x, mask, strength, sqrtvar, beta, filter_type, slice_mag, labels, epoch, density, layer_mag,
                          all_inf_fallback=None, where="conv_mask", x_mean=None):
    """filter_loss_gradients with its blocks built from `labels` (N x L): the form
    reproduce.distributed's WholeBatch.wrap calls, on the gathered batch."""
    setup = filter_loss_setup(labels.to(device=x.device, dtype=x.dtype), filter_type, slice_mag, epoch, density,
                              layer_mag, x.dtype, all_inf_fallback, where)
    x_mean = x.mean(dim=(2, 3)) if x_mean is None else x_mean
    coef, dbeta, bad = filter_loss_terms(x, mask, strength, sqrtvar, -x_mean, beta, setup)
    if all_inf_fallback is None and bool(bad):
        raise FilterLossError(all_inf_message(where))
    return coef[0], coef[1], dbeta


def _check_all_inf(bad: torch.Tensor, st: _LayerState) -> None:
    if st.checks is not None:
        st.checks.note_all_inf(bad)
    elif bool(bad):
        raise FilterLossError(all_inf_message(st.name))


def conv_mask_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, beta: torch.Tensor,
                      st: _LayerState) -> torch.Tensor:
    """Functional form of ConvMask.forward (state already checked)."""
    return _ConvMaskFunction.apply(x, weight, bias, beta, st)


# ------------------------------------------------------------------ the module
class ConvMask(nn.Module):
    """The conv_mask layer (add_block_mask.m + our_vl_simplenn.m), usable like nn.Conv2d.

    Parameters: weight (OUT x IN x kh x kw), bias (OUT,), beta (IN,) [MATLAB weights{1..3};
    beta is getMask's learned alpha, initialised to 2, learning rate x0.05, no decay].
    Buffers (in state_dict): filter_type (IN,) int64 (1 part, 2 texture, 0 none), pos_temp_x,
    pos_temp_y (IN x H x W float32), slice_mag (IN x L float32, or shape (0,) while unset =
    MATLAB's []), mag (0.1) and loss_weight (0.02; kept as metadata, unused by the original's
    computation) as 0-d float64 tensors (assigning a number works).
    Attributes: pad (t, b, l, r), stride (y, x), dilate (y, x), name, learning_rate,
    weight_decay (MatConvNet per-weight multipliers), extra_fields (other MATLAB fields kept for
    writing back), require_context (True: a forward in training mode that may be
    back-propagated without a FilterLossContext raises), all_inf_fallback (None: raise where
    MATLAB errors, see the module docstring).

    forward(x, context=None): without context there is no filter loss in backward (and no beta
    gradient); with a FilterLossContext the backward adds the filter loss to the input gradient
    and produces beta's gradient exactly as the original.
    """

    layer_type = "conv_mask"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 feature_size: int | Sequence[int], *, stride: Any = 1, pad: Any = 0, dilate: Any = 1,
                 filter_type: Any = None, beta_init: float = 2.0, mag: float = 0.1, loss_weight: float = 0.02,
                 init_std: float = 0.01, init_bias: float = 0.0, name: str = "",
                 learning_rate: Sequence[float] = (1.0, 2.0, 0.05), weight_decay: Sequence[float] = (1.0, 0.0, 0.0),
                 generator: torch.Generator | None = None, device: Any = None,
                 weight: torch.Tensor | None = None):
        super().__init__()
        kh, kw = pair(kernel_size)
        fh, fw = pair(feature_size)
        if weight is not None:            # given filters (OUT x IN x kh x kw), used as they are
            w = torch.as_tensor(weight, dtype=torch.float32, device=device)
            if tuple(w.shape) != (out_channels, in_channels, kh, kw):
                raise ValueError(f"ConvMask {name!r}: weight {tuple(w.shape)} != {(out_channels, in_channels, kh, kw)}")
        else:
            w = torch.empty(out_channels, in_channels, kh, kw, dtype=torch.float32, device=device)
            w.normal_(0.0, 1.0, generator=generator).mul_(init_std)  # init_weight.m 'gaussian'
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.full((out_channels,), float(init_bias), dtype=torch.float32, device=device))
        self.beta = nn.Parameter(torch.full((in_channels,), float(beta_init), dtype=torch.float32, device=device))
        ft = torch.ones(in_channels, dtype=torch.int64) if filter_type is None else \
            torch.as_tensor(np.asarray(filter_type).reshape(-1).astype(np.int64))
        if ft.numel() != in_channels:
            raise ValueError(f"ConvMask {name!r}: filter_type has {ft.numel()} entries for {in_channels} input channels")
        self.register_buffer("filter_type", ft.to(device))
        px, py = pos_templates(in_channels, fh, fw)
        self.register_buffer("pos_temp_x", px.to(device))
        self.register_buffer("pos_temp_y", py.to(device))
        self.register_buffer("slice_mag", torch.zeros(0, dtype=torch.float32, device=device))
        self.register_buffer("mag", torch.tensor(float(mag), dtype=torch.float64, device=device))
        self.register_buffer("loss_weight", torch.tensor(float(loss_weight), dtype=torch.float64, device=device))
        self.stride = pair(stride)
        self.pad = quad(pad)
        self.dilate = pair(dilate)
        self.name = name
        self.learning_rate = tuple(float(v) for v in learning_rate)
        self.weight_decay = tuple(float(v) for v in weight_decay)
        self.extra_fields: dict[str, Any] = {}
        self.require_context = True
        self.all_inf_fallback: float | None = None
        self.check_mode = "auto"
        self.checks = DeferredChecks()

    # numbers assigned to the scalar buffers become tensors (learn_icnn_multiclass divides mag)
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("mag", "loss_weight") and "_buffers" in self.__dict__ and name in self._buffers \
                and not isinstance(value, torch.Tensor):
            old = self._buffers[name]
            value = torch.tensor(float(value), dtype=torch.float64, device=old.device if old is not None else None)
        super().__setattr__(name, value)

    # ---------------------------------------------------------------- properties
    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_size(self) -> tuple[int, int]:
        return int(self.pos_temp_x.shape[1]), int(self.pos_temp_x.shape[2])

    @property
    def has_slice_mag(self) -> bool:
        return self.slice_mag.numel() > 0

    def set_slice_mag(self, value: torch.Tensor | np.ndarray | None) -> None:
        """Set sliceMag (IN x L), or clear it with None."""
        if value is None:
            self.slice_mag = torch.zeros(0, dtype=torch.float32, device=self.weight.device)
            return
        v = torch.as_tensor(value, dtype=torch.float32, device=self.weight.device)
        if v.dim() != 2 or v.shape[0] != self.in_channels:
            raise ValueError(f"ConvMask {self.name!r}: sliceMag must be {self.in_channels} x L, got {tuple(v.shape)}")
        self.slice_mag = v.clone()

    def weights(self) -> list[nn.Parameter]:
        """MATLAB's `weights` cell in order: {filters, biases, beta}."""
        return [self.weight, self.bias, self.beta]

    def geometry(self):
        return LayerGeometry("conv_mask", (int(self.weight.shape[2]), int(self.weight.shape[3])),
                             self.dilate, self.pad, self.stride)

    def extra_repr(self) -> str:
        return (f"{self.name!r}, {self.in_channels}->{self.out_channels}, kernel={tuple(self.weight.shape[2:])}, "
                f"map={self.feature_size}, pad={self.pad}, stride={self.stride}, mag={float(self.mag):g}")

    # ---------------------------------------------------------------- state_dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "slice_mag"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.slice_mag.shape):
            self.slice_mag = torch.zeros(state_dict[key].shape, dtype=torch.float32, device=self.slice_mag.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- forward
    @property
    def where(self) -> str:
        return f"conv_mask {self.name!r}" if self.name else "conv_mask"

    def _state(self, x: torch.Tensor, context: FilterLossContext | None) -> _LayerState:
        where = self.where
        _check_square(x, where)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{where}: input has {x.shape[1]} channels, the layer expects {self.in_channels}")
        if tuple(x.shape[2:]) != self.feature_size:
            raise ValueError(f"{where}: input maps are {tuple(x.shape[2:])}, posTemp was built for {self.feature_size}")
        consts = self._constants(x.dtype)
        setup = None
        if context is not None:
            labels, density = self._loss_inputs(context, x, where)
            if context.whole_batch is None:
                setup = _blocks(labels, consts.channels, self.slice_mag if self.has_slice_mag else None,
                                context.epoch, density, self.mag, x.dtype, self.all_inf_fallback, where)
        elif self.training and self.require_context and torch.is_grad_enabled() and \
                (x.requires_grad or self.weight.requires_grad or self.beta.requires_grad):
            raise ValueError(f"{where}: in training mode the layer needs a FilterLossContext (labels, epoch, "
                             f"density) for its filter loss; pass context=..., call .eval() for evaluation, or set "
                             f"require_context = False to back-propagate without the filter loss")
        st = _LayerState(self.pad, self.stride, self.dilate, consts, setup, self._deferred(x), where,
                         context is not None, self.all_inf_fallback)
        if context is not None and context.whole_batch is not None:
            st.context, st.whole_batch, st.mag = context, context.whole_batch, self.mag
            st.labels = context.labels_2d(x.shape[0], where)
            st.slice_mag = self.slice_mag if self.has_slice_mag else None
            st.density = context.density
        return st

    def _loss_inputs(self, context: FilterLossContext, x: torch.Tensor,
                     where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's labels (N x L, x's device and dtype) and, with sliceMag and 2-10 classes,
        the label density, checked against the layer."""
        labels = context.labels_2d(x.shape[0], where)
        if labels.device != x.device or labels.dtype != x.dtype:
            labels = labels.to(device=x.device, dtype=x.dtype, non_blocking=True)
        n_labels = labels.shape[1]
        density = None
        if self.has_slice_mag and n_labels > 1:
            if self.slice_mag.shape[1] != n_labels:
                raise ValueError(f"{where}: sliceMag has {self.slice_mag.shape[1]} classes, the labels {n_labels}")
            if n_labels <= 10:        # checked here; converted once per density tensor (_density_steps)
                density = context.density
                if not isinstance(density, torch.Tensor) or density.numel() != n_labels:
                    density = context.density_vector(n_labels, where)
        return labels, density

    def _deferred(self, x: torch.Tensor) -> DeferredChecks | None:
        """Where the checks that need a value on the host go: None (now) or the layer's
        DeferredChecks. check_mode 'auto': deferred in CUDA training steps (no host
        synchronisation; raised by raise_deferred_errors, which reproduce.train calls after each
        phase of an epoch), immediate otherwise; 'immediate' or 'deferred' to choose."""
        mode = self.check_mode
        if mode not in ("auto", "immediate", "deferred"):
            raise ValueError(f"{self.where}: check_mode must be 'auto', 'immediate' or 'deferred', got {mode!r}")
        deferred = mode == "deferred" or (mode == "auto" and x.device.type != "cpu" and self.training
                                          and torch.is_grad_enabled())
        return self.checks if deferred else None

    def _constants(self, dtype: torch.dtype) -> _LayerConstants:
        """The layer's constants (getMu's grid, the distance table, the filter types'), cached
        until a buffer is replaced or modified in place, or the dtype changes."""
        px, py, ft = self.pos_temp_x, self.pos_temp_y, self.filter_type
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in (px, py, ft)) + (dtype,)
        cache = self.__dict__.get("_constants_cache")
        if cache is None or cache[0] != key:
            cache = (key, _layer_constants(px, py, ft, dtype))
            self.__dict__["_constants_cache"] = cache
        return cache[1]

    def forward(self, x: torch.Tensor, context: FilterLossContext | None = None) -> torch.Tensor:
        st = self._state(x, context)
        return _ConvMaskFunction.apply(x, self.weight, self.bias, self.beta, st)

    # ---------------------------------------------------------------- LayerSpec
    @classmethod
    def from_spec(cls, spec: Any, feature_size: Sequence[int] | None = None, copy: bool = True) -> "ConvMask":
        """Build from a legacy_compat LayerSpec of type 'conv_mask' (weights copied unless copy=False)."""
        f = spec.fields
        w = spec.weights[0]
        if len(spec.weights) < 3:
            raise ValueError(f"conv_mask {spec.name!r}: expected weights {{filters, biases, beta}}, got {len(spec.weights)}")
        pos = f.get("posTemp")
        if pos is not None:
            fs = (int(pos[0].shape[1]), int(pos[0].shape[2]))
        elif feature_size is not None:
            fs = pair(feature_size)
        else:
            raise ValueError(f"conv_mask {spec.name!r}: no posTemp and no feature size given")
        filt = f.get("filter")
        layer = cls(int(w.shape[1]), int(w.shape[0]), (int(w.shape[2]), int(w.shape[3])), fs,
                    stride=f.get("stride", 1), pad=f.get("pad", 0), dilate=f.get("dilate", 1),
                    filter_type=filt, mag=float(f.get("mag", 0.1)), loss_weight=float(f.get("lossWeight", 0.02)),
                    name=spec.name, learning_rate=f.get("learningRate", (1.0, 2.0, 0.05)),
                    weight_decay=f.get("weightDecay", (1.0, 0.0, 0.0)),
                    weight=torch.as_tensor(w, dtype=torch.float32).clone() if copy else w)
        with torch.no_grad():
            layer.bias.copy_(torch.as_tensor(spec.weights[1], dtype=torch.float32).reshape(-1))
            layer.beta.copy_(torch.as_tensor(spec.weights[2], dtype=torch.float32).reshape(-1))
        if pos is not None:
            layer.pos_temp_x = torch.as_tensor(np.asarray(pos[0]), dtype=torch.float32).clone()
            layer.pos_temp_y = torch.as_tensor(np.asarray(pos[1]), dtype=torch.float32).clone()
        sm = f.get("sliceMag")
        if sm is not None and np.asarray(sm).size > 0:
            layer.set_slice_mag(np.asarray(sm, dtype=np.float32))
        known = {"pad", "stride", "dilate", "filter", "mag", "lossWeight", "learningRate", "weightDecay",
                 "posTemp", "sliceMag"}
        layer.extra_fields = {k: v for k, v in f.items() if k not in known}
        return layer

    def to_spec(self):
        """A legacy_compat LayerSpec (CPU copies of the weights, PyTorch layouts)."""
        fields = dict(self.extra_fields)
        fields.update({
            "stride": self.stride, "pad": self.pad, "dilate": self.dilate,
            "learningRate": self.learning_rate, "weightDecay": self.weight_decay,
            "posTemp": (self.pos_temp_x.detach().cpu().numpy().copy(), self.pos_temp_y.detach().cpu().numpy().copy()),
            "lossWeight": float(self.loss_weight), "sliceMag": self.slice_mag.detach().cpu().numpy().copy()
            if self.has_slice_mag else None,
            "filter": self.filter_type.detach().cpu().numpy().copy(), "mag": float(self.mag),
        })
        return LayerSpec("conv_mask", self.name, [p.detach().cpu().clone() for p in self.weights()], fields)
