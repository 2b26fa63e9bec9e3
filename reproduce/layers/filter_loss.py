"""The filter loss of the conv_mask layer: its input-gradient terms and beta's derivative.

Ports the filter-loss part of the 'conv_mask' backward of `tool/main/our_vl_simplenn.m`
(notation of `reproduce.layers.conv_mask`; the blocks, w+ / w- and mag come from
`reproduce.layers.filter_loss_blocks`). The per-batch labels, epoch and label density come in a
FilterLossContext.

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

Deviations from the original, each where the original would stop with an error:
- a layer with texture filters but no part filter: the original's beta update reads an unset
  `l.strength` (index error); here strength is always computed.
- a block whose values are ALL ±Inf: MATLAB's `v(isinf(v)) = max(v(~isinf(v)))` assigns an
  empty array to a non-empty selection, which is an error. Here too (`FilterLossError`), unless
  the layer's `all_inf_fallback` is set to a number, which is then used instead.

How it is computed (issue 15): on 2 x N x D arrays (positives and negatives stacked; with
classes, a class axis): logZ's and the strengths' exponents as one 4 x N x D division and one
exp (`_doubled_rows`), each block's Inf replacement one masked reduction
(`_replace_inf_by_block_max`), no Python loop over blocks or classes; nothing read back to the
host (`filter_loss_terms` returns the all-Inf flag as a tensor).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from reproduce.layers.activation_mask import scalar
from reproduce.layers.filter_loss_blocks import (
    ALPHA_LOGZ,
    BETA_MAX,
    BETA_MIN,
    FilterLossFacts,
    FilterLossSetup,
    filter_loss_setup,
)

__all__ = ["FilterLossError", "FilterLossMaps", "row_divisors", "filter_loss_terms", "filter_loss_from_maps",
           "all_inf_message", "filter_loss_gradients", "filter_loss_by_labels"]


class FilterLossError(RuntimeError):
    """The filter loss met a case where the original code stops with an error."""


@dataclass
class FilterLossMaps:
    """What the conv_mask forward keeps for the filter loss: x and its mask (N x D x H x W),
    the strength S = mean_ij x .* mask and sqrtvar (N x D), and the map means either as the
    map sums `total` or as neg_mean = -mean_ij x (N x D; one of the two)."""

    x: torch.Tensor
    mask: torch.Tensor
    strength: torch.Tensor
    sqrtvar: torch.Tensor
    total: torch.Tensor | None = None
    neg_mean: torch.Tensor | None = None


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
def row_divisors(hw: int, from_total: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The divisors of _doubled_rows' four rows, 4 x 1 x 1."""
    m = -hw / 2 if from_total else 0.5
    return torch.tensor([hw / 2, m, 0.5, m], dtype=torch.float64).to(dtype).view(4, 1, 1).to(device)


def _doubled_rows(maps: FilterLossMaps, divisors: torch.Tensor | None = None) -> torch.Tensor:
    """4 x N x D: twice [mean_ij x .* mask~, -mean_ij x, S, -mean_ij x] (the exponents of logZ+,
    logZ-, then of the positives' and negatives' strengths), in one division: the sums over
    hw / 2 (or -hw / 2), S over 0.5, which is exactly twice mean = sum / hw (scaling by 2 is
    exact). mask~ has both its channel and its image order reversed (mask(:,:,end:-1:1,end:-1:1)).
    From the map sums `maps.total`, or (total None) from maps.neg_mean = -mean_ij x."""
    x, total = maps.x, maps.total
    hw = x.shape[2] * x.shape[3]
    rev = torch.einsum("ndhw,ndhw->nd", x, maps.mask.flip((0, 1)))
    m = total if total is not None else maps.neg_mean
    if divisors is None:
        divisors = row_divisors(hw, total is not None, x.dtype, x.device)
    return torch.stack([rev, m, maps.strength, m]).div_(divisors)


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
    return filter_loss_from_maps(FilterLossMaps(x, mask, strength, sqrtvar, neg_mean=neg_mean), beta, setup)


def filter_loss_from_maps(maps: FilterLossMaps, beta: torch.Tensor, setup: FilterLossSetup,
                          divisors: torch.Tensor | None = None, half: torch.Tensor | None = None):
    """filter_loss_terms from the forward's maps (from the map sums when `maps.total` is set,
    else from maps.neg_mean); divisors, half: the layer's constants (row_divisors, 0.5), looked
    up when None."""
    x = maps.x
    w2 = _doubled_rows(maps, divisors)          # 2 [z+, z-, S, -m]
    e2 = w2.exp()
    ez, ev = e2.split(2)
    lz2, bad0 = _log_z(ez, setup.fallback)
    # exp(v/a) (v - logZ + a), a = 0.5, v = [S, -m]: (2v - 2 logZ) / 2 is v - logZ exactly
    half = scalar(ALPHA_LOGZ, x.dtype, x.device) if half is None else half
    s = torch.add(half, w2.split(2)[1] - lz2, alpha=0.5).mul_(ev)
    s, bad = _normalise(torch.where(setup.member, s, math.nan), setup)
    coef = s * setup.step
    return coef, _beta_derivative(maps.strength, maps.sqrtvar, beta, setup), (bad0 | bad).any()


def all_inf_message(where: str) -> str:
    """The message of FilterLossError for a block of only ±Inf values."""
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


def filter_loss_by_labels(maps: FilterLossMaps, beta: torch.Tensor, labels: torch.Tensor,
                          facts: FilterLossFacts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """filter_loss_gradients with its blocks built from `labels` (N x L) and `facts`: the form
    conv_mask's whole-batch loss runs on the batch reproduce.runtime.distributed's WholeBatch
    gathers. The map means come from maps.neg_mean (-mean_ij x), or from x when it is None."""
    x = maps.x
    setup = filter_loss_setup(labels.to(device=x.device, dtype=x.dtype), facts, x.dtype)
    neg_mean = -x.mean(dim=(2, 3)) if maps.neg_mean is None else maps.neg_mean
    coef, dbeta, bad = filter_loss_terms(x, maps.mask, maps.strength, maps.sqrtvar, neg_mean, beta, setup)
    if facts.all_inf_fallback is None and bool(bad):
        raise FilterLossError(all_inf_message(facts.where))
    return coef[0], coef[1], dbeta
