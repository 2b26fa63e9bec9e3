"""MATLAB numerics that numpy and torch do differently.

Every function here takes a numpy array or a torch tensor and returns the
same kind (same device for tensors), so that the port uses one definition
everywhere instead of ad-hoc copies:

| MATLAB                         | here                         | numpy / torch default that differs          |
|--------------------------------|------------------------------|---------------------------------------------|
| `round(x)`                     | `mround(x)`                  | np.round / torch.round round halves to even |
| `var(x, [], dim)`              | `mvar(x, axis)`              | np.var normalises by N; torch.var gives NaN |
|                                |                              | for one element (MATLAB: 0)                 |
| `[v, i] = sort(x, dim, 'descend')` | `sort_descend_stable(x, axis)` | np.sort has no stable descending order; |
|                                |                              | MATLAB keeps ties in their original order   |
| `sort(x, dim)`                 | `sort_ascend_stable(x, axis)`|                                             |
| `min(a, b)`, `max(a, b)`       | `mmin(a, b)`, `mmax(a, b)`   | np.minimum / torch.min propagate NaN;       |
|                                |                              | MATLAB ignores a NaN when the other is a    |
|                                |                              | number: `max(min(3./NaN, 3), 1.5)` is 3     |
| `[v, i] = max(x, [], dim)`     | `mmax_reduce(x, axis)`       | NaN ignored unless all NaN; index of the    |
| `[v, i] = min(x, [], dim)`     | `mmin_reduce(x, axis)`       | first occurrence (0-based here)             |
| `linspace(a, b, n)`            | `mlinspace(a, b, n)`         | np.linspace computes a + k*step             |
| `sub2ind`, `ind2sub`, `find`   | `msub2ind`, `mind2sub`,      | column-major (Fortran) linear indices       |
|                                | `mfind`                      |                                             |
| 1-based indices                | `to0`, `to1`                 |                                             |

Random numbers: MATLAB `rng(s)` seeds the Mersenne Twister with `s` (`s = 0`
means 5489) and its `rand` stream equals `numpy.random.RandomState(seed)
.random_sample()`, but `randperm` (and `randn`) use algorithms numpy does not
reproduce. Functions of the port that need a permutation therefore accept one
as an argument (the golden cases record every `randperm` draw for replay)
instead of drawing it.

Ported from MATLAB built-ins (round, var, sort, min, max, linspace,
sub2ind, ind2sub, find); MATLAB's linspace.m (R2013-R2016 text) is the
reference for `mlinspace`.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

__all__ = [
    "mround", "mvar", "sort_descend_stable", "sort_ascend_stable",
    "mmin", "mmax", "mmin_reduce", "mmax_reduce", "mlinspace",
    "to0", "to1", "msub2ind", "mind2sub", "mfind",
]


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


# ----------------------------------------------------------------- round
def mround(x: Array) -> Array:
    """MATLAB `round`: to the nearest integer, halves away from zero.

    Exact for every float (it does not compute floor(x + 0.5), which
    misrounds 0.49999999999999994). Keeps the dtype; NaN and Inf pass through;
    integer input is returned unchanged.
    """
    if _is_torch(x):
        if not torch.is_floating_point(x):
            return x
        t = torch.trunc(x)
        half = (x - t).abs() >= 0.5   # x - trunc(x) is exact
        return torch.where(half, t + torch.sign(x), t)
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return x
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):
        half = np.abs(x - t) >= 0.5
    return np.where(half, t + np.sign(x), t).astype(x.dtype, copy=False)


# ----------------------------------------------------------------- var
def mvar(x: Array, axis: int | None = None, keepdims: bool = False) -> Array:
    """MATLAB `var(x, [], dim)`: normalised by N-1, and 0 for one element.

    `axis=None` takes the variance of all elements (MATLAB's `var(x(:))`);
    `keepdims=True` keeps the reduced axis as MATLAB does. Empty input gives
    NaN, as in MATLAB.
    """
    if _is_torch(x):
        flat = axis is None
        y = x.reshape(-1) if flat else x
        dim = 0 if flat else axis
        if y.shape[dim] == 1:
            v = torch.zeros_like(y.sum(dim=dim, keepdim=True))
            if flat or not keepdims:
                v = v.squeeze(dim)
        else:
            v = torch.var(y, dim=dim, unbiased=True, keepdim=keepdims and not flat)
        return v.reshape((1,) * x.dim()) if flat and keepdims else v
    x = np.asarray(x)
    n = x.size if axis is None else x.shape[axis]
    if n == 1:
        return np.zeros_like(np.mean(x, axis=axis, keepdims=keepdims))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.var(x, axis=axis, ddof=1, keepdims=keepdims)


# ----------------------------------------------------------------- sort
def sort_ascend_stable(x: Array, axis: int = -1) -> tuple[Array, Array]:
    """MATLAB `[v, i] = sort(x, dim)`: ascending, ties in original order, NaN last.

    Returns (values, 0-based indices as int64).
    """
    if _is_torch(x):
        v, i = torch.sort(x, dim=axis, descending=False, stable=True)
        return v, i
    x = np.asarray(x)
    idx = np.argsort(x, axis=axis, kind="stable")
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64, copy=False)


def sort_descend_stable(x: Array, axis: int = -1) -> tuple[Array, Array]:
    """MATLAB `[v, i] = sort(x, dim, 'descend')`: ties keep their original order, NaN first.

    Returns (values, 0-based indices as int64). numpy: a stable ascending
    sort of the reversed array, reversed back.
    """
    if _is_torch(x):
        v, i = torch.sort(x, dim=axis, descending=True, stable=True)
        return v, i
    x = np.asarray(x)
    n = x.shape[axis]
    rev = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
    idx = (n - 1) - np.flip(rev, axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64, copy=False)


# ----------------------------------------------------------------- min / max
def mmin(a: Any, b: Any) -> Array:
    """MATLAB `min(a, b)`: elementwise, a NaN loses to a number, NaN only where both are NaN."""
    if _is_torch(a) or _is_torch(b):
        a, b = _as_tensors(a, b)
        return torch.fmin(a, b)
    return np.fmin(a, b)


def mmax(a: Any, b: Any) -> Array:
    """MATLAB `max(a, b)`: elementwise, a NaN loses to a number, NaN only where both are NaN."""
    if _is_torch(a) or _is_torch(b):
        a, b = _as_tensors(a, b)
        return torch.fmax(a, b)
    return np.fmax(a, b)


def _as_tensors(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ref = a if _is_torch(a) else b
    if not _is_torch(a):
        a = torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
    if not _is_torch(b):
        b = torch.as_tensor(b, dtype=ref.dtype, device=ref.device)
    return a, b


def _reduce(x: Array, axis: int, largest: bool, keepdims: bool) -> tuple[Array, Array]:
    if _is_torch(x):
        filled = x
        if x.is_floating_point():   # NaN must lose: fill with the value that never wins
            fill = torch.full_like(x, -float("inf") if largest else float("inf"))
            filled = torch.where(torch.isnan(x), fill, x)
        v = filled.amax(dim=axis, keepdim=True) if largest else filled.amin(dim=axis, keepdim=True)
        if x.is_floating_point():
            all_nan = torch.isnan(x).all(dim=axis, keepdim=True)
            v = torch.where(all_nan, torch.full_like(v, float("nan")), v)
        hit = (x == v).to(torch.uint8)
        i = torch.argmax(hit, dim=axis, keepdim=True)  # first True; 0 when none (all NaN)
        if not keepdims:
            v, i = v.squeeze(axis), i.squeeze(axis)
        return v, i
    x = np.asarray(x)
    ufunc = np.fmax if largest else np.fmin
    v = ufunc.reduce(x, axis=axis, keepdims=True)
    i = np.argmax(x == v, axis=axis, keepdims=True)  # first occurrence; 0 when all NaN
    if not keepdims:
        v, i = np.squeeze(v, axis=axis), np.squeeze(i, axis=axis)
    return v, i.astype(np.int64, copy=False)


def mmax_reduce(x: Array, axis: int, keepdims: bool = False) -> tuple[Array, Array]:
    """MATLAB `[v, i] = max(x, [], dim)`: NaN ignored unless all NaN (then NaN, index 0).

    The index (0-based, int64) is the first occurrence of the maximum.
    """
    return _reduce(x, axis, True, keepdims)


def mmin_reduce(x: Array, axis: int, keepdims: bool = False) -> tuple[Array, Array]:
    """MATLAB `[v, i] = min(x, [], dim)`: NaN ignored unless all NaN (then NaN, index 0).

    The index (0-based, int64) is the first occurrence of the minimum.
    """
    return _reduce(x, axis, False, keepdims)


# ----------------------------------------------------------------- linspace
def mlinspace(a: float, b: float, n: int, dtype: Any = np.float64, flavor: str = "matlab") -> np.ndarray:
    """MATLAB `linspace(a, b, n)` as a 1-D array, computed in float64 then cast to `dtype`.

    flavor "matlab" (linspace.m): y = a + ((0:n-1) * (b - a)) / (n - 1), then
    y(1) = a and y(end) = b (the overflow branches of linspace.m included).
    flavor "octave" (GNU Octave 7, which computed the golden cases): built
    symmetrically from both ends, y(i) = a + i*d and y(n-1-i) = b - i*d with
    d = (b - a) / (n - 1), the middle element (a + b) / 2 (0 when a == -b).
    n < 1 gives an empty array, n == 1 gives [b], as in both.
    `single(linspace(...))` is `mlinspace(..., dtype=np.float32)`.
    """
    n = int(np.floor(n))
    a, b = float(a), float(b)
    if n < 1:
        return np.zeros(0, dtype=dtype)
    if n == 1:
        return np.array([b], dtype=dtype)
    if flavor == "matlab":
        y = _linspace_matlab(a, b, n)
    elif flavor == "octave":
        y = _linspace_octave(a, b, n)
    else:
        raise ValueError(f"mlinspace: flavor must be 'matlab' or 'octave', got {flavor!r}")
    return y.astype(dtype, copy=False)


def _linspace_matlab(a: float, b: float, n: int) -> np.ndarray:
    n1 = n - 1
    k = np.arange(n, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        c = (b - a) * (n1 - 1)
        if np.isinf(c):
            if np.isinf(b - a):   # opposite signs overflow
                y = a + (b / n1) * k - (a / n1) * k
            else:
                y = a + k * ((b - a) / n1)
        else:
            y = a + (k * (b - a)) / n1
    y[0] = a
    y[-1] = b
    return y


def _linspace_octave(a: float, b: float, n: int) -> np.ndarray:
    y = np.empty(n, dtype=np.float64)
    y[0], y[-1] = a, b
    if a == b:
        y[:] = b
        return y
    with np.errstate(over="ignore", invalid="ignore"):
        d = (b - a) / (n - 1)
        if np.isinf(d):
            d = np.nan
        i = np.arange(1, n // 2, dtype=np.float64)
        y[1:n // 2] = a + i * d
        y[n - 1 - np.arange(1, n // 2)] = b - i * d
        if n % 2 == 1:
            y[n // 2] = 0.0 if a == -b else (a + b) / 2
    return y


# ----------------------------------------------------------------- indices
def to0(idx: Any) -> Any:
    """1-based MATLAB indices -> 0-based int64 (array, tensor or int)."""
    if _is_torch(idx):
        return idx.to(torch.int64) - 1
    if isinstance(idx, (int, np.integer)) or (isinstance(idx, float) and float(idx).is_integer()):
        return int(idx) - 1
    a = np.asarray(idx)
    if a.dtype.kind == "f" and not np.all(np.equal(np.mod(a, 1), 0)):
        raise ValueError("to0: MATLAB indices must be whole numbers")
    return a.astype(np.int64) - 1


def to1(idx: Any) -> Any:
    """0-based indices -> 1-based MATLAB indices (int64; float64 for MATLAB files: `to1(i).astype(float)`)."""
    if _is_torch(idx):
        return idx.to(torch.int64) + 1
    if isinstance(idx, (int, np.integer)):
        return int(idx) + 1
    return np.asarray(idx).astype(np.int64) + 1


def msub2ind(shape: Sequence[int], *subs: Any) -> np.ndarray:
    """MATLAB `sub2ind(shape, i, j, ...)`: 1-based subscripts -> 1-based column-major linear index."""
    zero = [np.asarray(to0(s)) for s in subs]
    return np.ravel_multi_index(tuple(zero), tuple(int(d) for d in shape), order="F") + 1


def mind2sub(shape: Sequence[int], idx: Any) -> tuple[np.ndarray, ...]:
    """MATLAB `[i, j, ...] = ind2sub(shape, idx)`: 1-based column-major linear index -> 1-based subscripts."""
    subs = np.unravel_index(np.asarray(to0(idx)), tuple(int(d) for d in shape), order="F")
    return tuple(s.astype(np.int64) + 1 for s in subs)


def mfind(mask: Array) -> Array:
    """MATLAB `find(mask)` in 0-based form: the column-major linear indices of the nonzeros, ascending.

    For an array in MATLAB layout (as read from a MAT file). Returns int64.
    """
    if _is_torch(mask):
        flat = mask.permute(*reversed(range(mask.dim()))).reshape(-1) if mask.dim() > 1 else mask.reshape(-1)
        return torch.nonzero(flat, as_tuple=False).reshape(-1)
    return np.flatnonzero(np.asarray(mask).reshape(-1, order="F")).astype(np.int64)
