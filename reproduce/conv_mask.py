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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legacy_compat.numerics import mlinspace, mround
from legacy_compat.simplenn import pair, quad

__all__ = ["FilterLossContext", "FilterLossError", "ConvMask", "get_mu", "get_mask", "get_mask_separable",
           "pos_templates", "filter_loss_gradients", "divide_filters", "conv_mask_forward",
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


# ------------------------------------------------------------------ getMu / getMask
def _check_square(x: torch.Tensor, where: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{where}: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"{where}: the feature map is {x.shape[2]} x {x.shape[3]}; conv_mask needs square maps "
                         f"(the original getMu uses linspace(-1,1,h) for both axes)")


def get_mu(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Port of tool/main/getMu.m: activation centroid (mu_x, mu_y in linspace(-1,1,H) units)
    and its spread sqrtvar, each N x D. See the module docstring for the formulas. Maps need not
    be square here (mu_y is still read from linspace(-1,1,H), as the original does); the
    ConvMask layer requires square maps.

    `out_dtype` is the dtype of mu_x, mu_y (default x's; the original's are double).
    """
    return _get_mu(x, out_dtype)[:3]


def _get_mu(x: torch.Tensor, out_dtype: torch.dtype | None = None, where: str = "getMu"):
    """get_mu, plus the per-map sums (N x D) for the finiteness check."""
    if x.dim() != 4:
        raise ValueError(f"{where}: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    n, d, h, w = x.shape
    x3 = x.reshape(n * d, h, w)
    rows = (x3.reshape(-1, w) @ torch.ones(w, dtype=x.dtype, device=x.device)).view(n, d, h)  # sum over j
    cols = x3.sum(dim=1).view(n, d, w)                                                         # sum over i
    total = rows.sum(dim=2)
    if not bool(torch.isfinite(total).all()):
        raise ValueError(f"{where}: the input contains NaN or Inf values")
    s = total.clamp_min(1e-9)
    ii = torch.arange(1, h + 1, device=x.device, dtype=x.dtype)
    jj = torch.arange(1, w + 1, device=x.device, dtype=x.dtype)
    # max(round(.), 1); the upper clamps are a fix: the original indexes linspace(-1,1,h) with
    # both, past its end when a centroid lies beyond h (negative inputs, or w > h)
    mu_i = mround((rows * ii).sum(dim=2) / s).clamp(1, h)
    mu_j = mround((cols * jj).sum(dim=2) / s).clamp(1, w)
    var = ((ii - mu_i[..., None]) ** 2 * rows).sum(dim=2) + ((jj - mu_j[..., None]) ** 2 * cols).sum(dim=2)
    sqrtvar = torch.sqrt(var / s)
    t = torch.as_tensor(mlinspace(-1.0, 1.0, h), dtype=out_dtype or x.dtype, device=x.device)
    return t[mu_i.long() - 1], t[mu_j.long().clamp_max(h) - 1], sqrtvar, total


def get_mask(mu_x: torch.Tensor, mu_y: torch.Tensor, beta: torch.Tensor, filter_type: torch.Tensor,
             pos_x: torch.Tensor, pos_y: torch.Tensor) -> torch.Tensor:
    """Port of tool/main/getMask.m.

    mu_x, mu_y: N x D (cast to pos_x's dtype); beta (D,); filter_type (D,); pos_x, pos_y: D x H x W.
    Returns mask = max(1 - beta (|pos_x - mu_x| + |pos_y - mu_y|), -1), 1 where filter ~= 1.
    """
    dt = pos_x.dtype
    mx = mu_x.to(dt)[:, :, None, None]
    my = mu_y.to(dt)[:, :, None, None]
    mask = (pos_x[None] - mx).abs_()
    mask += (pos_y[None] - my).abs_()
    mask.mul_(beta.to(dt)[None, :, None, None]).neg_().add_(1).clamp_min_(-1)
    not_part = (filter_type != 1)
    mask.masked_fill_(not_part[None, :, None, None], 1.0)
    return mask


def get_mask_separable(mu_x: torch.Tensor, mu_y: torch.Tensor, beta: torch.Tensor, filter_type: torch.Tensor | None,
                       pos_rows: torch.Tensor, pos_cols: torch.Tensor) -> torch.Tensor:
    """get_mask for templates that vary along one axis each (posTemp_x(c,i,j) = pos_rows(c,i),
    posTemp_y(c,i,j) = pos_cols(c,j), as add_block_mask.m builds them): the same arithmetic,
    |pos_x - mu_x| + |pos_y - mu_y| formed from the row and column terms. filter_type None: all
    filters are parts (nothing to set to 1)."""
    dt = pos_rows.dtype
    dx = (pos_rows[None] - mu_x.to(dt)[:, :, None]).abs_()         # N x D x H
    dy = (pos_cols[None] - mu_y.to(dt)[:, :, None]).abs_()         # N x D x W
    dist = dx[:, :, :, None] + dy[:, :, None, :]
    one = torch.ones((), dtype=dt, device=dist.device)
    mask = torch.addcmul(one, dist, beta.to(dt).neg()[None, :, None, None], out=dist).clamp_min_(-1)
    if filter_type is not None:
        mask.masked_fill_((filter_type != 1)[None, :, None, None], 1.0)
    return mask


def pos_templates(channels: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """add_block_mask.m's posTemp: posTemp_x(c, i, j) = linspace(-1,1,h)(i), posTemp_y = linspace(-1,1,w)(j);
    single precision, C x H x W each."""
    tx = torch.as_tensor(mlinspace(-1.0, 1.0, h), dtype=torch.float64).to(dtype)
    ty = torch.as_tensor(mlinspace(-1.0, 1.0, w), dtype=torch.float64).to(dtype)
    px = tx[None, :, None].expand(channels, h, w).contiguous()
    py = ty[None, None, :].expand(channels, h, w).contiguous()
    return px, py


# ------------------------------------------------------------------ the filter loss
def divide_filters(labels: torch.Tensor, filter_type: torch.Tensor, slice_mag: torch.Tensor | None,
                   density: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """`Div` and the weights w_pos / w_neg of our_vl_simplenn.m's conv_mask backward, per channel.

    labels: N x L. Returns (group_of (D,) long: the class whose block holds each channel,
    positive (N x D) bool: image n is a positive of channel d's class, w_pos (D,), w_neg (D,)
    float64, number of groups).
    """
    n, n_labels = labels.shape
    depth = filter_type.shape[0]
    dev = labels.device
    if n_labels == 1 or slice_mag is None or slice_mag.numel() == 0:
        img_pos = labels[:, 0] == 1 if n_labels == 1 else labels.max(dim=1).values == 1
        ones = torch.ones(depth, dtype=torch.float64, device=dev)
        return (torch.zeros(depth, dtype=torch.long, device=dev), img_pos[:, None].expand(n, depth),
                ones, ones, 1)
    if tuple(slice_mag.shape) != (depth, n_labels):
        raise ValueError(f"conv_mask: sliceMag is {tuple(slice_mag.shape)}, expected {depth} x {n_labels} "
                         f"(channels x classes)")
    sm = slice_mag.to(dev)
    sm = torch.where(torch.isnan(sm), torch.full_like(sm, -torch.inf), sm)   # MATLAB's max skips NaN
    group_of = sm.argmax(dim=1)                                             # first of ties, like max
    positive = (labels == 1)[:, group_of]
    if n_labels > 10:
        w_pos = torch.full((n_labels,), 0.5 / (1 / n_labels), dtype=torch.float64, device=dev)
        w_neg = torch.full((n_labels,), 0.5 / (1 - 1 / n_labels), dtype=torch.float64, device=dev)
    else:
        dens = density.to(device=dev, dtype=torch.float64)
        w_pos = 0.5 / dens
        w_neg = 0.5 / (1 - dens)
    return group_of, positive, w_pos[group_of], w_neg[group_of], n_labels


def _replace_inf_by_block_max(v: torch.Tensor, member: torch.Tensor, group_of: torch.Tensor, n_groups: int,
                              fallback: float | None, bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`v(isinf(v)) = max(v(isinf(v)==0))` of our_vl_simplenn.m, separately on each block.

    v: N x D; member: N x D bool (the entries of channel d's block); group_of (D,): the block of
    each channel. MATLAB's max skips NaN (all NaN -> NaN). A block with Inf values and no
    other value is where MATLAB stops; it sets `bad` (or takes `fallback` when given).
    """
    isinf = torch.isinf(v)
    inf_m = isinf & member
    noninf = member & ~isinf
    finite = noninf & ~torch.isnan(v)
    ch_max = torch.where(finite, v, torch.full_like(v, -torch.inf)).amax(dim=0)
    g_max = torch.full((n_groups,), -torch.inf, dtype=v.dtype, device=v.device)
    g_max = g_max.scatter_reduce(0, group_of, ch_max, reduce="amax")

    def per_group(count: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=torch.long, device=v.device).scatter_add(0, group_of, count.sum(dim=0))

    g_finite, g_noninf, g_inf = per_group(finite), per_group(noninf), per_group(inf_m)
    rep = torch.where(g_finite > 0, g_max, torch.full_like(g_max, torch.nan))
    empty = (g_inf > 0) & (g_noninf == 0)
    if fallback is not None:
        rep = torch.where(empty, torch.full_like(rep, float(fallback)), rep)
    else:
        bad = bad | empty.any()
    return torch.where(inf_m, rep[group_of][None, :].expand_as(v), v), bad


def _nan_to_zero(v: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(v), torch.zeros_like(v), v)


def _block_strength(raw: torch.Tensor, member: torch.Tensor, group_of: torch.Tensor, n_groups: int,
                    mag: torch.Tensor, fallback: float | None, bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The replacement / normalisation sequence the original applies to both strengths."""
    s, bad = _replace_inf_by_block_max(raw, member, group_of, n_groups, fallback, bad)
    s = _nan_to_zero(s)
    count = member.sum(dim=0).to(s.dtype)
    mean = torch.where(member, s, torch.zeros_like(s)).sum(dim=0) / count       # mean(strength, 2)
    s = s / (mean * mag)[None, :]
    s = _nan_to_zero(s)
    return _replace_inf_by_block_max(s, member, group_of, n_groups, fallback, bad)


def _mean_hw(a: torch.Tensor) -> torch.Tensor:
    """mean(mean(a, 1), 2) of an H x W x D x N array: N x D (rows first, then columns)."""
    return a.mean(dim=2).mean(dim=2)


def _mean_hw_reversed(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_ij x(:,:,d,n) .* mask(:,:,D+1-d,N+1-n), N x D: with (n, d) flattened row-major,
    reversing both orders reverses the rows, so each entry is one dot product."""
    n, d, h, w = x.shape
    rows_x = x.reshape(n * d, 1, h * w)
    rows_m = mask.reshape(n * d, h * w).flip(0)
    return torch.bmm(rows_x, rows_m.unsqueeze(2)).view(n, d) / (h * w)


def filter_loss_gradients(x: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, sqrtvar: torch.Tensor,
                          beta: torch.Tensor, filter_type: torch.Tensor, slice_mag: torch.Tensor | None,
                          labels: torch.Tensor, epoch: int, density: torch.Tensor | None, layer_mag: Any,
                          all_inf_fallback: float | None = None, where: str = "conv_mask",
                          x_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The filter-loss part of our_vl_simplenn.m's conv_mask backward (see the module docstring).

    x, mask: N x D x H x W; strength S and sqrtvar: N x D; beta, filter_type: (D,);
    labels N x L; layer_mag: the layer's `mag` (0.1); x_mean: mean_ij x (N x D) when already known.
    Returns (coef_pos, coef_neg, dbeta): the input gradient gets
    `- mask * coef_pos[..., None, None] + coef_neg[..., None, None]` (N x D each) and
    dbeta (D,) is the beta gradient (`dzdw{3}`).
    """
    a = ALPHA_LOGZ
    dt = x.dtype
    n, depth = strength.shape
    n_labels = labels.shape[1]
    lab = labels.to(device=x.device)
    sm = slice_mag if (slice_mag is not None and slice_mag.numel() > 0) else None
    dens = None
    if n_labels > 1 and sm is not None and n_labels <= 10:
        dens = torch.as_tensor(density, dtype=torch.float64).reshape(-1) if density is not None else None
        if dens is None or dens.numel() != n_labels:
            raise ValueError(f"{where}: the label density (L = {n_labels} values) is needed with sliceMag set")
    group_of, positive, w_pos, w_neg, n_groups = divide_filters(lab, filter_type, sm, dens)
    part = (filter_type == 1)[None, :]
    active = (filter_type > 0)[None, :]
    bad = torch.zeros((), dtype=torch.bool, device=x.device)
    all_ch = torch.zeros(depth, dtype=torch.long, device=x.device)
    everyone = torch.ones(1, depth, dtype=torch.bool, device=x.device)

    # alpha_logZ_pos / _neg: over all images; the positive one with the reversed mask
    logz_pos = torch.log(torch.exp(_mean_hw_reversed(x, mask) / a).mean(dim=0)) * a
    m = _mean_hw(x) if x_mean is None else x_mean
    logz_neg = torch.log(torch.exp(-m / a).mean(dim=0)) * a
    logz_pos, bad = _replace_inf_by_block_max(logz_pos[None], everyone, all_ch, 1, all_inf_fallback, bad)
    logz_neg, bad = _replace_inf_by_block_max(logz_neg[None], everyone, all_ch, 1, all_inf_fallback, bad)

    # mag = ones(depth, imgNum) ./ (1/iter) ./ l.mag
    mag = ((1.0 / (1.0 / float(epoch))) / torch.as_tensor(layer_mag, dtype=torch.float64, device=x.device)).to(dt)

    member_pos = positive & part
    member_neg = ~positive & part
    s_pos = torch.exp(strength / a) * ((strength - logz_pos) + a)
    s_pos, bad = _block_strength(s_pos, member_pos, group_of, n_groups, mag, all_inf_fallback, bad)
    s_neg = torch.exp(-m / a) * ((-m - logz_neg) + a)
    s_neg, bad = _block_strength(s_neg, member_neg, group_of, n_groups, mag, all_inf_fallback, bad)
    zero = torch.zeros((), dtype=dt, device=x.device)
    coef_pos = torch.where(member_pos, s_pos * (LOSS_STEP * w_pos).to(dt)[None, :], zero)
    coef_neg = torch.where(member_neg, s_neg * (LOSS_STEP * w_neg).to(dt)[None, :], zero)

    # dzdw{3}: strength-weighted mean of sqrtvar over the positives of the channel's class
    member_beta = positive & active
    num = torch.where(member_beta, strength * sqrtvar, zero).sum(dim=0)
    den = torch.where(member_beta, strength, zero).sum(dim=0)
    r = BETA_TARGET / (num / den)
    r = torch.where(torch.isnan(r), torch.full_like(r, BETA_MAX), r).clamp(BETA_MIN, BETA_MAX)  # max(min(3./tmp,3),1.5)
    dbeta = torch.where(active[0], (r - beta.to(dt)) * BETA_GRAD_SCALE, zero)

    if all_inf_fallback is None and bool(bad):
        raise FilterLossError(
            f"{where}: a block of the filter loss holds only ±Inf values (activations too large for "
            f"exp(.../0.5) in single precision); the original our_vl_simplenn.m stops here with an "
            f"assignment error. Set the layer's all_inf_fallback to a number to continue with it instead.")
    return coef_pos, coef_neg, dbeta


# ------------------------------------------------------------------ the autograd function
@dataclass
class _LayerState:
    """What the Function needs of the module, captured at forward time."""

    pad: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilate: tuple[int, int]
    filter_type: torch.Tensor
    pos_x: torch.Tensor
    pos_y: torch.Tensor
    slice_mag: torch.Tensor | None
    mag: torch.Tensor
    context: FilterLossContext | None
    labels: torch.Tensor | None
    all_inf_fallback: float | None
    name: str
    pos_rows: torch.Tensor | None = None      # separable templates (see get_mask_separable)
    pos_cols: torch.Tensor | None = None
    any_nonpart: bool = True


def _symmetric(pad: tuple[int, int, int, int]) -> bool:
    return pad[0] == pad[1] and pad[2] == pad[3]


def _conv(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, st: _LayerState) -> torch.Tensor:
    t, b, l, r = st.pad
    if _symmetric(st.pad):
        return F.conv2d(inp, weight, bias, stride=st.stride, padding=(t, l), dilation=st.dilate)
    return F.conv2d(F.pad(inp, (l, r, t, b)), weight, bias, stride=st.stride, dilation=st.dilate)


def _conv_backward(gout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                   st: _LayerState, need: Sequence[bool]) -> tuple[Any, Any, Any]:
    t, b, l, r = st.pad
    sym = _symmetric(st.pad)
    padded = inp if sym else F.pad(inp, (l, r, t, b))
    gx, gw, gb = torch.ops.aten.convolution_backward(
        gout, padded, weight, [weight.shape[0]] if has_bias else None, list(st.stride),
        [t, l] if sym else [0, 0], list(st.dilate), False, [0, 0], 1,
        [bool(need[0]), bool(need[1]), bool(need[2]) and has_bias])
    if gx is not None and not sym:
        gx = gx[:, :, t:t + inp.shape[2], l:l + inp.shape[3]]
    return gx, gw, gb


class _ConvMaskFunction(torch.autograd.Function):
    """conv_mask forward and backward of our_vl_simplenn.m (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, st: _LayerState):
        mu_x, mu_y, sqrtvar, total = _get_mu(x, where=st.name)
        if st.pos_rows is not None:
            mask = get_mask_separable(mu_x, mu_y, beta, st.filter_type if st.any_nonpart else None,
                                      st.pos_rows, st.pos_cols)
        else:
            mask = get_mask(mu_x, mu_y, beta, st.filter_type, st.pos_x, st.pos_y)
        xm = x * mask
        hw = x.shape[2] * x.shape[3]
        strength = xm.sum(dim=(2, 3)) / hw if st.context is not None else None     # mean(mean(x.*mask,1),2)
        inp = xm.clamp_min_(0)
        out = _conv(inp, weight, bias, st)
        # for x >= 0 (a ReLU output, as in every ICNN net) max(x .* mask, 0) == x .* max(mask, 0):
        # the backward's conv input is the forward's, kept instead of recomputed
        same_input = bool(x.amin() >= 0)
        ctx.st = st
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, beta, mask, sqrtvar, strength, total / hw, inp if same_input else None)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, weight, beta, mask, sqrtvar, strength, x_mean, inp = ctx.saved_tensors
        st: _LayerState = ctx.st
        need_x, need_w, need_b, need_beta = ctx.needs_input_grad[:4]
        xin = inp if inp is not None else mask.clamp_min(0).mul_(x)          # x .* max(mask, 0)
        gx, gw, gb = _conv_backward(gout.contiguous(), xin, weight, ctx.has_bias, st, (need_x, need_w, need_b))
        del xin
        gbeta = None
        if gx is not None:
            gx.mul_(mask.clamp_min(0))
        if st.context is not None and (need_x or need_beta):
            loss_fn = filter_loss_gradients if st.context.whole_batch is None else \
                st.context.whole_batch.wrap(filter_loss_gradients)
            coef_pos, coef_neg, dbeta = loss_fn(
                x, mask, strength, sqrtvar, beta, st.filter_type, st.slice_mag, st.labels,
                st.context.epoch, st.context.density, st.mag, st.all_inf_fallback, st.name, x_mean=x_mean)
            if gx is not None:
                gx.addcmul_(mask, coef_pos[:, :, None, None], value=-1.0).add_(coef_neg[:, :, None, None])
            gbeta = dbeta.to(beta.dtype) if need_beta else None
        return gx, gw, gb if need_b else None, gbeta, None


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
        from .geometry import LayerGeometry
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
    def _state(self, x: torch.Tensor, context: FilterLossContext | None) -> _LayerState:
        where = f"conv_mask {self.name!r}" if self.name else "conv_mask"
        _check_square(x, where)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{where}: input has {x.shape[1]} channels, the layer expects {self.in_channels}")
        if tuple(x.shape[2:]) != self.feature_size:
            raise ValueError(f"{where}: input maps are {tuple(x.shape[2:])}, posTemp was built for {self.feature_size}")
        labels = None
        if context is not None:
            labels = context.labels_2d(x.shape[0], where).to(device=x.device, dtype=x.dtype)
            if self.has_slice_mag and labels.shape[1] > 1 and self.slice_mag.shape[1] != labels.shape[1]:
                raise ValueError(f"{where}: sliceMag has {self.slice_mag.shape[1]} classes, the labels {labels.shape[1]}")
            if self.has_slice_mag and 1 < labels.shape[1] <= 10:
                context.density_vector(labels.shape[1], where)
        elif self.training and self.require_context and torch.is_grad_enabled() and \
                (x.requires_grad or self.weight.requires_grad or self.beta.requires_grad):
            raise ValueError(f"{where}: in training mode the layer needs a FilterLossContext (labels, epoch, "
                             f"density) for its filter loss; pass context=..., call .eval() for evaluation, or set "
                             f"require_context = False to back-propagate without the filter loss")
        rows, cols, any_nonpart = self._template_info()
        return _LayerState(self.pad, self.stride, self.dilate, self.filter_type, self.pos_temp_x, self.pos_temp_y,
                           self.slice_mag if self.has_slice_mag else None, self.mag, context, labels,
                           self.all_inf_fallback, where, rows, cols, any_nonpart)

    def _template_info(self) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
        """(row terms, column terms) when posTemp is separable, and whether some filter is not a
        part; cached until a buffer is replaced or modified in place."""
        px, py, ft = self.pos_temp_x, self.pos_temp_y, self.filter_type
        key = tuple((t.data_ptr(), t._version, t.device, tuple(t.shape)) for t in (px, py, ft))
        cache = self.__dict__.get("_template_cache")
        if cache is None or cache[0] != key:
            rows, cols = px[:, :, :1], py[:, :1, :]
            separable = bool((px == rows).all()) and bool((py == cols).all())
            info = ((rows[:, :, 0].contiguous(), cols[:, 0, :].contiguous()) if separable else (None, None)) + \
                (bool((ft != 1).any()),)
            cache = (key, info)
            self.__dict__["_template_cache"] = cache
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
        from legacy_compat.simplenn import LayerSpec
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
