"""The conv_mask layer of Interpretable CNNs as a function (`conv_mask`) and a thin module (`ConvMask`).

Ports the 'conv_mask' cases (forward and backward) of `tool/main/our_vl_simplenn.m`, with
`add_block_mask.m`'s initialisation, in the way torchvision.ops does `deform_conv2d` and
`DeformConv2d`: the function takes the inputs, the weights, beta and the layer's per-filter
state as a typed record (`ConvMaskState`) and is differentiable; the module holds the
parameters and buffers, builds the state and calls it. The parts live in files named for them:
`reproduce.layers.activation_mask` (getMu, getMask, posTemp), `reproduce.layers.filter_loss`
(the filter loss's terms and beta's derivative), `reproduce.layers.filter_loss_blocks` (its
blocks `Div`, w+ / w-, mag, sliceMag's classes); the MATLAB fields of the layer are mapped in
`reproduce.layers.simplenn` (`conv_mask_from_spec`, `conv_mask_to_spec`).

Notation: x is the layer input, N x D x H x W (H == W: the original assumes square maps),
positions i (rows) and j (columns) are 1-based; beta_d is the learned `weights{3}` (called
alpha in getMask.m); filter_d is the filter type (1 part, 2 texture, 0 none).

forward
    mask = getMask(getMu(x))  (reproduce.layers.activation_mask);   y = conv(max(x .* mask, 0))
backward (dzdy given; the per-batch labels, epoch and label density come in a FilterLossContext)
    dW, db = conv backward on the input x .* max(mask, 0);  dx = conv backward .* max(mask, 0)
    with a context: dx gets the filter loss and beta its derivative (reproduce.layers.filter_loss)

Errors (`ValueError`) rather than wrong numbers: a non-square map, NaN/Inf input, labels of the
wrong shape, a missing context in training mode (see `ConvMask.require_context`); the
deviations from the original are listed in the docstrings of the modules named above.

How it is computed (issue 15: the same arithmetic in few, large operations): getMu, getMask
and the mask product in one function (`_mask_maths`), the filter loss in another
(`filter_loss_from_maps`); the constants (grids, tables, filter-type masks) are cached per layer
(`ConvMask._constants`, handed to the function in `ConvMaskState.constants`) and per shape,
dtype and device (`mu_grid`). Nothing reads a value back to the host inside a CUDA training
step: the NaN/Inf-input and all-Inf-block checks are kept on the device (`ConvMask.check_mode`,
`DeferredChecks`) and raised, with the messages of the immediate checks, by
`raise_deferred_errors` (reproduce.training.cnn_train calls it after each phase of an epoch). `set_compile`
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

from legacy_compat.simplenn import pair, quad
from reproduce.layers.activation_mask import (
    NONFINITE_INPUT,
    MuGrid,
    centroid_indices,
    check_square,
    distance_table,
    linspace_table,
    mask_from_distance,
    mu_grid,
    pos_templates,
)
from reproduce.layers.filter_loss import (
    FilterLossError,
    FilterLossMaps,
    all_inf_message,
    filter_loss_by_labels,
    filter_loss_from_maps,
    row_divisors,
)
from reproduce.layers.filter_loss_blocks import ChannelConstants, FilterLossFacts, FilterLossSetup, loss_blocks
from reproduce.layers.geometry import LayerGeometry
from reproduce.layers.padding import conv2d_padded, is_symmetric
from reproduce.runtime.distributed import FilterLossBatch

__all__ = ["conv_mask", "ConvMask", "ConvMaskState", "ConvMaskOptions", "ConvMaskConstants", "layer_constants",
           "FilterLossContext", "FilterLossError", "DeferredChecks", "raise_deferred_errors", "set_compile"]


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
    whole_batch: Any = None     # several ranks, whole-batch filter loss: reproduce.runtime.distributed.WholeBatch

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


# ------------------------------------------------------------------ per-layer constants, checks, compile
@dataclass(frozen=True)
class ConvMaskConstants:
    """Built once per layer (and dtype, device), rebuilt when a buffer changes: getMu's grid,
    the distance table (None when posTemp differs between channels or the table would be
    large: get_mask then forms the distances per call), the filter types' constants, the
    divisors of the filter loss's exponent rows (`row_divisors`)."""

    grid: MuGrid
    table: torch.Tensor | None
    filter_type: torch.Tensor
    t: torch.Tensor
    channels: ChannelConstants
    pos_x: torch.Tensor
    pos_y: torch.Tensor
    divisors: torch.Tensor


_TABLE_MAX = 1 << 22        # entries of the distance table (16 MiB in float32); larger: per-call distances


def layer_constants(pos_x: torch.Tensor, pos_y: torch.Tensor, filter_type: torch.Tensor,
                    dtype: torch.dtype) -> ConvMaskConstants:
    """The constants of a layer with these buffers, for inputs of `dtype` (synchronises once)."""
    d, h, w = pos_x.shape
    dev = pos_x.device
    t = linspace_table(h, w, dtype, dev)
    rows, cols = pos_x[:1, :, :1], pos_y[:1, :1, :]
    uniform = bool((pos_x == rows).all()) and bool((pos_y == cols).all())       # separable, same in every channel
    table = None
    if uniform and (h + 1) * (w + 1) * h * w <= _TABLE_MAX:
        table = distance_table(rows.reshape(h), cols.reshape(w), t)
    return ConvMaskConstants(mu_grid(h, w, dtype, dev), table, filter_type, t,
                             ChannelConstants.build(filter_type, dtype), pos_x, pos_y,
                             row_divisors(h * w, True, dtype, dev))


def _distances(ij: tuple[torch.Tensor, torch.Tensor], k: ConvMaskConstants) -> torch.Tensor:
    """|posX - mu_x| + |posY - mu_y|, N x D x H x W (a gather from the table by the centroids'
    indices (mu_i, mu_j) when there is a table)."""
    if k.table is not None:
        return k.table[ij]
    dt = k.pos_x.dtype
    dist = (k.pos_x - k.t[ij[0]].to(dt)[..., None, None]).abs_()
    return dist.add_((k.pos_y - k.t[ij[1]].to(dt)[..., None, None]).abs_())


def _mask_maths(x: torch.Tensor, beta: torch.Tensor, k: ConvMaskConstants, with_strength: bool):
    """getMu, getMask and the mask product of the forward: (max(x .* mask, 0), mask, sqrtvar,
    the map sums, strength S = mean_ij x .* mask or None)."""
    ij, sqrtvar, total = centroid_indices(x, k.grid)
    mask = mask_from_distance(_distances(ij, k), torch.where(k.channels.part_col, beta.view(-1, 1, 1), 0),
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
            raise ValueError(NONFINITE_INPUT.format(where=where) + " (found by the deferred check: in one of the "
                             "training steps since the last check)")
        if all_inf is not None and bool(all_inf):
            raise FilterLossError(all_inf_message(where) + " (found by the deferred check)")


def raise_deferred_errors(module: nn.Module) -> None:
    """Raise the error any ConvMask layer in `module` found in deferred mode (see ConvMask.check_mode)."""
    for m in module.modules():
        if isinstance(m, ConvMask):
            m.checks.raise_pending(m.where)


# ------------------------------------------------------------------ the state record and the function
@dataclass
class ConvMaskState:
    """The per-filter state and the geometry of a conv_mask layer, passed to `conv_mask`.

    filter_type (D,) int64 (1 part, 2 texture, 0 none); pos_temp_x, pos_temp_y: D x H x W
    (add_block_mask.m's posTemp, see `pos_templates`); slice_mag: D x L, or None (MATLAB's [],
    sliceMag unset); mag: `l.mag` (a number or a 0-d tensor; the filter loss's mag = epoch /
    l.mag); pad (t, b, l, r), stride (y, x), dilate (y, x) of the convolution (numbers are
    expanded as MatConvNet does); all_inf_fallback: None (raise `FilterLossError` where MATLAB
    stops with an error) or the number used instead; where: the layer, for messages; checks:
    None (check at once, which reads a value back to the host) or a DeferredChecks that keeps
    the checks on the device; constants: the layer's ConvMaskConstants for the input's dtype,
    built from the buffers when None (the module keeps them between calls)."""

    filter_type: torch.Tensor
    pos_temp_x: torch.Tensor
    pos_temp_y: torch.Tensor
    slice_mag: torch.Tensor | None = None
    mag: Any = 0.1
    pad: Any = 0
    stride: Any = 1
    dilate: Any = 1
    all_inf_fallback: float | None = None
    where: str = "conv_mask"
    checks: DeferredChecks | None = None
    constants: ConvMaskConstants | None = None

    def __post_init__(self) -> None:
        # numbers or lists expanded as MatConvNet does; the module's tuples kept as they are (no numpy per call)
        if not _is_int_tuple(self.pad, 4):
            self.pad = quad(self.pad)
        if not _is_int_tuple(self.stride, 2):
            self.stride = pair(self.stride)
        if not _is_int_tuple(self.dilate, 2):
            self.dilate = pair(self.dilate)


def _is_int_tuple(value: Any, n: int) -> bool:
    return type(value) is tuple and len(value) == n and all(type(v) is int for v in value)


@dataclass
class _Plan:
    """What the autograd Function needs besides the tensors, fixed at forward time: the state,
    its constants, and with a context the filter loss's blocks (`setup`; None with the
    whole-batch loss, whose blocks come from all ranks: then `facts` and `labels`)."""

    state: ConvMaskState
    consts: ConvMaskConstants
    loss: bool = False                     # a FilterLossContext was given: the filter loss in backward
    setup: FilterLossSetup | None = None
    whole_batch: Any = None                # reproduce.runtime.distributed.WholeBatch
    facts: FilterLossFacts | None = None
    labels: torch.Tensor | None = None


def _loss_inputs(context: FilterLossContext, x: torch.Tensor,
                 state: ConvMaskState) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's labels (N x L, x's device and dtype) and, with sliceMag and 2-10 classes,
    the label density, checked against the layer."""
    where, slice_mag = state.where, state.slice_mag
    labels = context.labels_2d(x.shape[0], where)
    if labels.device != x.device or labels.dtype != x.dtype:
        labels = labels.to(device=x.device, dtype=x.dtype, non_blocking=True)
    n_labels = labels.shape[1]
    density = None
    if slice_mag is not None and slice_mag.numel() > 0 and n_labels > 1:
        if slice_mag.shape[1] != n_labels:
            raise ValueError(f"{where}: sliceMag has {slice_mag.shape[1]} classes, the labels {n_labels}")
        if n_labels <= 10:        # checked here; converted once per density tensor (filter_loss_blocks)
            density = context.density
            if not isinstance(density, torch.Tensor) or density.numel() != n_labels:
                density = context.density_vector(n_labels, where)
    return labels, density


def _plan(x: torch.Tensor, state: ConvMaskState, context: FilterLossContext | None) -> _Plan:
    """Check x against the state and build the Function's plan (the filter loss's blocks from
    the context's labels)."""
    where = state.where
    check_square(x, where)
    if x.shape[1] != state.filter_type.numel():
        raise ValueError(f"{where}: input has {x.shape[1]} channels, the layer expects {state.filter_type.numel()}")
    if tuple(x.shape[2:]) != tuple(state.pos_temp_x.shape[1:]):
        raise ValueError(f"{where}: input maps are {tuple(x.shape[2:])}, posTemp was built for "
                         f"{tuple(state.pos_temp_x.shape[1:])}")
    consts = state.constants
    if consts is None:
        consts = layer_constants(state.pos_temp_x, state.pos_temp_y, state.filter_type, x.dtype)
    if context is None:
        return _Plan(state, consts)
    labels, density = _loss_inputs(context, x, state)
    slice_mag = state.slice_mag if state.slice_mag is not None and state.slice_mag.numel() > 0 else None
    whole = context.whole_batch     # several ranks: the density and labels are gathered as given
    facts = FilterLossFacts(consts.filter_type, slice_mag, context.epoch, density if whole is None else context.density,
                            state.mag, state.all_inf_fallback, where)
    if whole is None:
        return _Plan(state, consts, True, loss_blocks(labels, consts.channels, facts, x.dtype))
    return _Plan(state, consts, True, None, whole, facts, context.labels_2d(x.shape[0], where))


def conv_mask(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, beta: torch.Tensor,
              state: ConvMaskState, context: FilterLossContext | None = None) -> torch.Tensor:
    """The conv_mask layer of our_vl_simplenn.m as a function: y = conv(max(x .* mask, 0)),
    mask = getMask(getMu(x)) with beta and the state's filter types and posTemp.

    x: N x D x H x W (square maps); weight OUT x D x kh x kw, bias (OUT,) or None, beta (D,)
    [MATLAB weights{1..3}]; state: the layer's ConvMaskState. Differentiable in x, weight,
    bias and beta: without a context the backward is the convolution's through the mask (beta
    gets no gradient); with a FilterLossContext it adds the filter loss to x's gradient and
    gives beta's derivative exactly as the original (see the module docstring)."""
    return _ConvMaskFunction.apply(x, weight, bias, beta, _plan(x, state, context))


# ------------------------------------------------------------------ the autograd function
def _conv(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, st: ConvMaskState) -> torch.Tensor:
    return conv2d_padded(inp, weight, bias, st.pad, st.stride, st.dilate)


def _conv_backward(gout: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                   st: ConvMaskState, need: Sequence[bool]) -> tuple[Any, Any, Any]:
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


def _check_input(total: torch.Tensor, st: ConvMaskState) -> None:
    """Every map sum finite: sum_nd total .* 0 is 0 then, NaN otherwise (one reduction, the
    products formed before any sum, so that large finite sums cannot overflow)."""
    probe = torch.einsum("nd,nd->", total, _zeros(tuple(total.shape), total.dtype, total.device))
    if st.checks is not None:
        st.checks.note_input(torch.isfinite(probe))
    elif not math.isfinite(probe.item()):
        raise ValueError(NONFINITE_INPUT.format(where=st.where))


class _ConvMaskFunction(torch.autograd.Function):
    """conv_mask forward and backward of our_vl_simplenn.m (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, plan: _Plan):
        maths = _maybe_compiled(_mask_maths, x.device)
        inp, mask, sqrtvar, total, strength = maths(x, beta, plan.consts, plan.loss)
        _check_input(total, plan.state)
        out = _conv(inp, weight, bias, plan.state)
        ctx.plan = plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, beta, mask, sqrtvar, strength, total)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, weight, beta, mask, sqrtvar, strength, total = ctx.saved_tensors
        plan: _Plan = ctx.plan
        need_x, need_w, need_b, need_beta = ctx.needs_input_grad[:4]
        positive = mask.clamp_min(0)
        # dW, db: the convolution's backward on x .* max(mask, 0); dx: its input gradient .* max(mask, 0)
        gx, gw, gb = _conv_backward(gout.contiguous(), x * positive, weight, ctx.has_bias, plan.state,
                                    (need_x, need_w, need_b))
        gbeta = None
        loss = plan.loss and (need_x or need_beta)
        if gx is not None and not loss:
            gx.mul_(positive)
        if loss:
            maps = FilterLossMaps(x, mask, strength, sqrtvar, total)
            coef, dbeta = _filter_loss_terms(maps, beta, plan)
            if gx is not None:     # dx .* max(mask, 0) - mask .* coef+ + coef- (one of the two is 0 per map)
                coef_pos, coef_neg = coef.view(*coef.shape, 1, 1).unbind(0)
                gx = torch.addcmul(coef_neg, gx, positive).addcmul_(mask, coef_pos, value=-1.0)
            gbeta = dbeta if need_beta else None
        return gx, gw, gb if need_b else None, gbeta, None


def _filter_loss_terms(maps: FilterLossMaps, beta: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """(coef 2 x N x D, dbeta (D,)) of the filter loss: on this batch's blocks, or through
    reproduce.runtime.distributed's whole-batch wrapper (its blocks are built from the gathered
    labels; it synchronises, as gathering does)."""
    if plan.whole_batch is None:
        terms = _maybe_compiled(filter_loss_from_maps, maps.x.device)
        k = plan.consts
        coef, dbeta, bad = terms(maps, beta, plan.setup, k.divisors, k.grid.half)
        if plan.setup.fallback is None:
            _check_all_inf(bad, plan.state)
        return coef, dbeta

    def loss(b: FilterLossBatch):
        whole = FilterLossMaps(b.x, b.mask, b.strength, b.sqrtvar, neg_mean=-b.x_mean)
        return filter_loss_by_labels(whole, beta, b.labels, plan.facts)
    x = maps.x
    batch = FilterLossBatch(x, maps.mask, maps.strength, maps.sqrtvar, maps.total / (x.shape[2] * x.shape[3]),
                            plan.labels)
    cp, cn, dbeta = plan.whole_batch.wrap(loss)(batch, plan.state.where)
    return torch.stack([cp, cn]), dbeta


def _check_all_inf(bad: torch.Tensor, st: ConvMaskState) -> None:
    if st.checks is not None:
        st.checks.note_all_inf(bad)
    elif bool(bad):
        raise FilterLossError(all_inf_message(st.where))


# ------------------------------------------------------------------ the module
@dataclass
class ConvMaskOptions:
    """The rarely changed settings of a new ConvMask (add_block_mask.m's values by default).

    dilate (y, x); name; filter_type (D,) (1 part, 2 texture, 0 none; default all parts);
    beta_init (2); mag (0.1); loss_weight (0.02; kept as metadata); init_std, init_bias: the
    filters ~ N(0, init_std^2) (init_weight.m 'gaussian'), the biases init_bias; learning_rate,
    weight_decay: MatConvNet's per-weight multipliers; device; weight: given filters
    (OUT x IN x kh x kw), used as they are instead of drawn."""

    dilate: Any = 1
    name: str = ""
    filter_type: Any = None
    beta_init: float = 2.0
    mag: float = 0.1
    loss_weight: float = 0.02
    init_std: float = 0.01
    init_bias: float = 0.0
    learning_rate: Sequence[float] = (1.0, 2.0, 0.05)
    weight_decay: Sequence[float] = (1.0, 0.0, 0.0)
    device: Any = None
    weight: torch.Tensor | None = None


def _initial_filters(in_channels: int, out_channels: int, kernel: tuple[int, int], generator: torch.Generator | None,
                     opts: ConvMaskOptions) -> torch.Tensor:
    """The filters of a new layer: opts.weight (checked), or N(0, init_std^2) (init_weight.m 'gaussian')."""
    kh, kw = kernel
    if opts.weight is not None:            # given filters (OUT x IN x kh x kw), used as they are
        w = torch.as_tensor(opts.weight, dtype=torch.float32, device=opts.device)
        if tuple(w.shape) != (out_channels, in_channels, kh, kw):
            raise ValueError(f"ConvMask {opts.name!r}: weight {tuple(w.shape)} != {(out_channels, in_channels, kh, kw)}")
        return w
    w = torch.empty(out_channels, in_channels, kh, kw, dtype=torch.float32, device=opts.device)
    return w.normal_(0.0, 1.0, generator=generator).mul_(opts.init_std)  # init_weight.m 'gaussian'


class ConvMask(nn.Module):
    """The conv_mask layer (add_block_mask.m + our_vl_simplenn.m), usable like nn.Conv2d: a
    holder of the parameters and buffers around the function `conv_mask`.

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
    MATLAB errors, see reproduce.layers.filter_loss).
    The rarely changed settings of a new layer (dilate, name, filter types, beta's and the
    weights' initialisation, mag, rates, device, given filters) come in a ConvMaskOptions.

    forward(x, context=None): without context there is no filter loss in backward (and no beta
    gradient); with a FilterLossContext the backward adds the filter loss to the input gradient
    and produces beta's gradient exactly as the original.
    """

    layer_type = "conv_mask"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 feature_size: int | Sequence[int], *, stride: Any = 1, pad: Any = 0,
                 generator: torch.Generator | None = None, options: ConvMaskOptions | None = None):
        super().__init__()
        opts = ConvMaskOptions() if options is None else options
        fh, fw = pair(feature_size)
        dev = opts.device
        self.weight = nn.Parameter(_initial_filters(in_channels, out_channels, pair(kernel_size), generator, opts))
        self.bias = nn.Parameter(torch.full((out_channels,), float(opts.init_bias), dtype=torch.float32, device=dev))
        self.beta = nn.Parameter(torch.full((in_channels,), float(opts.beta_init), dtype=torch.float32, device=dev))
        ft = torch.ones(in_channels, dtype=torch.int64) if opts.filter_type is None else \
            torch.as_tensor(np.asarray(opts.filter_type).reshape(-1).astype(np.int64))
        if ft.numel() != in_channels:
            raise ValueError(f"ConvMask {opts.name!r}: filter_type has {ft.numel()} entries for {in_channels} "
                             f"input channels")
        self.register_buffer("filter_type", ft.to(dev))
        px, py = pos_templates(in_channels, fh, fw)
        self.register_buffer("pos_temp_x", px.to(dev))
        self.register_buffer("pos_temp_y", py.to(dev))
        self.register_buffer("slice_mag", torch.zeros(0, dtype=torch.float32, device=dev))
        self.register_buffer("mag", torch.tensor(float(opts.mag), dtype=torch.float64, device=dev))
        self.register_buffer("loss_weight", torch.tensor(float(opts.loss_weight), dtype=torch.float64, device=dev))
        self.stride = pair(stride)
        self.pad = quad(pad)
        self.dilate = pair(opts.dilate)
        self.name = opts.name
        self.learning_rate = tuple(float(v) for v in opts.learning_rate)
        self.weight_decay = tuple(float(v) for v in opts.weight_decay)
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

    def state(self, x: torch.Tensor) -> ConvMaskState:
        """The layer's ConvMaskState for an input like x (its constants for x's dtype, its checks
        deferred or not by check_mode)."""
        return ConvMaskState(self.filter_type, self.pos_temp_x, self.pos_temp_y,
                             self.slice_mag if self.has_slice_mag else None, self.mag, self.pad, self.stride,
                             self.dilate, self.all_inf_fallback, self.where, self._deferred(x),
                             self._constants(x.dtype))

    def _deferred(self, x: torch.Tensor) -> DeferredChecks | None:
        """Where the checks that need a value on the host go: None (now) or the layer's
        DeferredChecks. check_mode 'auto': deferred in CUDA training steps (no host
        synchronisation; raised by raise_deferred_errors, which reproduce.training.cnn_train calls after each
        phase of an epoch), immediate otherwise; 'immediate' or 'deferred' to choose."""
        mode = self.check_mode
        if mode not in ("auto", "immediate", "deferred"):
            raise ValueError(f"{self.where}: check_mode must be 'auto', 'immediate' or 'deferred', got {mode!r}")
        deferred = mode == "deferred" or (mode == "auto" and x.device.type != "cpu" and self.training
                                          and torch.is_grad_enabled())
        return self.checks if deferred else None

    def _constants(self, dtype: torch.dtype) -> ConvMaskConstants:
        """The layer's constants (getMu's grid, the distance table, the filter types'), cached
        until a buffer is replaced or modified in place, or the dtype changes."""
        px, py, ft = self.pos_temp_x, self.pos_temp_y, self.filter_type
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in (px, py, ft)) + (dtype,)
        cache = self.__dict__.get("_constants_cache")
        if cache is None or cache[0] != key:
            cache = (key, layer_constants(px, py, ft, dtype))
            self.__dict__["_constants_cache"] = cache
        return cache[1]

    def forward(self, x: torch.Tensor, context: FilterLossContext | None = None) -> torch.Tensor:
        if context is None and self.training and self.require_context and torch.is_grad_enabled() and \
                (x.requires_grad or self.weight.requires_grad or self.beta.requires_grad):
            raise ValueError(f"{self.where}: in training mode the layer needs a FilterLossContext (labels, epoch, "
                             f"density) for its filter loss; pass context=..., call .eval() for evaluation, or set "
                             f"require_context = False to back-propagate without the filter loss")
        return conv_mask(x, self.weight, self.bias, self.beta, self.state(x), context)
