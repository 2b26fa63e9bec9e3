"""The blocks of the conv_mask filter loss (`Div`), their weights w+ / w-, mag and the class of each filter.

Ports the set-up part of the 'conv_mask' backward of `tool/main/our_vl_simplenn.m` (the
formulas are in `reproduce.layers.filter_loss`'s docstring): which images are the positives and
the negatives of each part filter, and the step 1e-5 w+ / 1e-5 w- each gets.

    Classes: one class (L = 1): positives = images with label 1, w+ = w- = 1. L > 1 without
    sliceMag: positives = images positive for any class, w = 1. L > 1 with sliceMag: channel d
    belongs to class argmax_l sliceMag(d, l) (first of ties); its positives are that class's
    positives; w+ = 0.5 / density_l, w- = 0.5 / (1 - density_l), or, when L > 10,
    w+ = 0.5 L, w- = 0.5 / (1 - 1/L).
    "The block" of a replacement is (the part channels of one class) x (its positives, or
    its negatives), as the original indexes `strength(dList, list)`.

How it is computed (issue 15): the blocks as 2 x N x D membership arrays (positives and
negatives stacked; with classes, a class axis), built without a Python loop over blocks or
classes; what depends only on the filter types, sliceMag, mag and the density is kept per
layer (`ChannelConstants`) or for the last density tensor (`_density_steps`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ALPHA_LOGZ", "LOSS_STEP", "BETA_TARGET", "BETA_MIN", "BETA_MAX", "BETA_GRAD_SCALE", "FilterLossFacts",
           "FilterLossSetup", "ChannelConstants", "filter_loss_setup", "loss_blocks"]

ALPHA_LOGZ = 0.5        # `alpha=0.5` in our_vl_simplenn.m (the temperature of logZ)
LOSS_STEP = 1e-5        # `0.00001*w_pos`, `0.00001*w_neg`
BETA_TARGET = 3.0       # `beta=3`: dbeta uses clamp(3 / avg_sqrtvar, 1.5, 3)
BETA_MIN, BETA_MAX = 1.5, 3.0
BETA_GRAD_SCALE = -10000.0


@dataclass
class FilterLossFacts:
    """What shapes the blocks of the filter loss besides the labels: the layer's fields and the
    batch's epoch and density (our_vl_simplenn.m reads them from `l` and `net.layers{end}`).

    filter_type (D,) int64 (1 part, 2 texture, 0 none); slice_mag D x L or None (MATLAB's []);
    epoch: `iter`, 1-based; density: (L,) mean(labels > 0) per class over the imdb, or None
    (needed with sliceMag and 2-10 classes); layer_mag: `l.mag` (a number or a 0-d tensor);
    all_inf_fallback: None (raise where MATLAB errors) or the number used instead; where: the
    layer, for messages."""

    filter_type: torch.Tensor
    slice_mag: torch.Tensor | None
    epoch: int
    density: torch.Tensor | None
    layer_mag: Any
    all_inf_fallback: float | None = None
    where: str = "conv_mask"


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


def filter_loss_setup(labels: torch.Tensor, facts: FilterLossFacts, dtype: torch.dtype = torch.float32) -> FilterLossSetup:
    """`Div` and the weights of our_vl_simplenn.m's conv_mask backward for a batch (labels N x L)."""
    return loss_blocks(labels, ChannelConstants.build(facts.filter_type, dtype), facts, dtype)


@dataclass(frozen=True)
class ChannelConstants:
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
    def build(cls, filter_type: torch.Tensor, dtype: torch.dtype) -> "ChannelConstants":
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


def loss_blocks(labels: torch.Tensor, consts: ChannelConstants, facts: FilterLossFacts,
                dtype: torch.dtype) -> FilterLossSetup:
    """Div: one block (one class, or several classes without sliceMag: the positives are the
    images positive for any class, w = 1) or one block per class (sliceMag: channel d belongs
    to class argmax_l sliceMag(d, l), first of ties, NaN skipped as MATLAB's max does)."""
    n_labels = labels.shape[1]
    slice_mag, fallback, where = facts.slice_mag, facts.all_inf_fallback, facts.where
    mag = consts.mag(facts.epoch, facts.layer_mag)
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
                           _class_steps(n_labels, facts.density, group_of, dtype, where, consts.groups), mag, consts.three,
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
