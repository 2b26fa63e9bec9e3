"""The activation masks of the conv_mask layer: getMu (centroid and spread) and getMask (the template).

Ports `tool/main/getMu.m`, `tool/main/getMask.m` and `add_block_mask.m`'s position templates
(posTemp). Notation as in `reproduce.layers.conv_mask`: x is the layer input, N x D x H x W
(H == W: the original assumes square maps), positions i (rows) and j (columns) are 1-based;
beta_d is the learned `weights{3}` (called alpha in getMask.m); filter_d is the filter type
(1 part, 2 texture, 0 none).

getMu (per image n and channel d)
    s      = max(sum_ij x, 1e-9)
    mu_i   = max(round(sum_ij i x / s), 1),  mu_j likewise with j   (round: halves away from 0)
    sqrtvar = sqrt(sum_ij ((i - mu_i)^2 + (j - mu_j)^2) x / s)
    mu_x   = t[mu_i], mu_y = t[mu_j],  t = linspace(-1, 1, H)   (H for both: square maps)
getMask
    mask = max(1 - beta_d (|posX - mu_x| + |posY - mu_y|), -1);   mask = 1 where filter_d ~= 1
    (posX, posY = posTemp: linspace(-1, 1, H) down the rows, linspace(-1, 1, W) along the columns)

Deviation from the original, where it would stop with an error: a centroid index beyond H
(inputs with negative values): the original indexes past linspace's end (error); here it is
clamped to H.

How it is computed (issue 15): getMu's sums in one matrix product (`centroids`), sqrtvar's
weights (i - mu_i)^2, (j - mu_j)^2 gathered from a per-grid table by the centroid's index pair
(`mu_grid`); getMask as a gather from a per-layer table of the distances of every possible
centroid (`distance_table`; built once, as getMask's float operations would give them) by the
same index, then one addcmul with beta (`mask_from_distance`; addcmul may round its product
and sum once, as a fused multiply-add; the golden cases are unchanged within 1e-6).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from legacy_compat.numerics import mlinspace

__all__ = ["MuGrid", "mu_grid", "linspace_table", "check_square", "NONFINITE_INPUT", "get_mu", "centroids",
           "centroid_indices", "get_mask", "mask_from_distance", "scalar", "get_mask_separable", "distance_table",
           "pos_templates"]


# ------------------------------------------------------------------ constants built once
@dataclass(frozen=True)
class MuGrid:
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
def mu_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> MuGrid:
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
    grid = MuGrid(proj, pos, torch.ones(2, dtype=torch.float64), torch.tensor([h, w], dtype=torch.float64),
                   sq.view(h + 1, w + 1, h + w), torch.tensor(0.5, dtype=torch.float64),
                   torch.tensor(1.0, dtype=torch.float64))
    return MuGrid(*(t.to(device=device, dtype=dtype) for t in vars(grid).values()))


@functools.lru_cache(maxsize=64)
def linspace_table(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """t = linspace(-1,1,H) indexed by a 1-based centroid: entry 0 unused, entries past H repeat
    t(H) (mu_j may reach W; the original indexes t with it, see get_mu)."""
    t = mlinspace(-1.0, 1.0, h)
    idx = np.clip(np.arange(max(h, w) + 1), 1, h) - 1
    return torch.as_tensor(t[idx], dtype=torch.float64).to(device=device, dtype=dtype)


# ------------------------------------------------------------------ getMu / getMask
def check_square(x: torch.Tensor, where: str) -> None:
    """A ValueError unless x is N x D x H x W with H == W (getMu reads linspace(-1,1,h) for both axes)."""
    if x.dim() != 4:
        raise ValueError(f"{where}: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"{where}: the feature map is {x.shape[2]} x {x.shape[3]}; conv_mask needs square maps "
                         f"(the original getMu uses linspace(-1,1,h) for both axes)")


NONFINITE_INPUT = "{where}: the input contains NaN or Inf values"


def get_mu(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Port of tool/main/getMu.m: activation centroid (mu_x, mu_y in linspace(-1,1,H) units)
    and its spread sqrtvar, each N x D. See the module docstring for the formulas. Maps need not
    be square here (mu_y is still read from linspace(-1,1,H), as the original does); the
    ConvMask layer requires square maps.

    `out_dtype` is the dtype of mu_x, mu_y (default x's; the original's are double).
    """
    if x.dim() != 4:
        raise ValueError(f"getMu: expected an N x D x H x W input, got shape {tuple(x.shape)}")
    (i, j), sqrtvar, total = centroid_indices(x)
    if not bool(torch.isfinite(total).all()):
        raise ValueError(NONFINITE_INPUT.format(where="getMu"))
    t = linspace_table(x.shape[2], x.shape[3], out_dtype or x.dtype, x.device)
    return t[i], t[j], sqrtvar


def centroids(x: torch.Tensor, grid: "MuGrid | None" = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """getMu.m's arithmetic for N x D x H x W maps in one matrix product and a few element-wise
    steps: (mu N x D x 2, the 1-based centroid row and column as floats; sqrtvar N x D; the map
    sums N x D, for the finiteness check and mean_ij x).

    s = max(sum_ij x, 1e-9); mu_i = min(max(round(sum_ij i x / s), 1), H) (round: halves away
    from zero, computed as floor(v + 0.5), which is exact for v >= 0.5 and clamps to 1 below);
    sqrtvar = sqrt(sum_ij ((i - mu_i)^2 + (j - mu_j)^2) x / s), from the row and column sums.
    The upper clamps are a fix: the original indexes linspace(-1,1,h) past its end when a
    centroid lies beyond the map (negative inputs)."""
    ij, sqrtvar, total = centroid_indices(x, grid)
    return torch.stack(ij, dim=2).to(x.dtype), sqrtvar, total


def centroid_indices(x: torch.Tensor, grid: "MuGrid | None" = None):
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
    return mask_from_distance(dist, torch.where(filter_type == 1, beta.to(dt), 0).view(-1, 1, 1))


def mask_from_distance(dist: torch.Tensor, beta_part: torch.Tensor, one: torch.Tensor | None = None) -> torch.Tensor:
    """max(1 - beta dist, -1), in place on dist; beta_part: D x 1 x 1, 0 for the filters that
    are not parts (1 - 0 dist = 1 exactly: their mask is 1, as getMask sets it)."""
    one = scalar(1.0, dist.dtype, dist.device) if one is None else one
    return torch.addcmul(one, dist, beta_part, value=-1).clamp_min_(-1)


@functools.lru_cache(maxsize=16)
def scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
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
    return mask_from_distance(dx[:, :, :, None] + dy[:, :, None, :], torch.where(part, beta.to(dt), 0).view(-1, 1, 1))


def distance_table(pos_rows: torch.Tensor, pos_cols: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """|posX - mu_x| + |posY - mu_y| for every possible centroid, (H+1) x (W+1) x H x W: entry
    [mu_i, mu_j] is the distance map of the centroid (mu_i, mu_j) (1-based; row 0 and column 0
    unused), with posTemp the same in every channel (pos_rows (H,), pos_cols (W,)) and
    t the centroid's coordinate table (linspace_table). The same float operations as get_mask,
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
