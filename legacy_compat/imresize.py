"""MATLAB's `imresize`, with its weights and indices computed exactly.

Ports the Image Processing Toolbox `imresize.m` (its `contributions`,
kernel and `resizeAlongDim` steps), which `getI.m` of every data_input
folder calls as `imresize(single(I_patch), tarSize, 'bilinear')`:

- scale per dimension = output length / input length (or the given scale);
- kernels: 'nearest' (box, width 1), 'bilinear' (triangle, width 2),
  'bicubic' (Keys cubic with a = -0.5, width 4);
- antialiasing (default on except for 'nearest') when shrinking: the kernel
  becomes scale * k(scale * x) and its width width / scale;
- output pixel x (1-based) maps to u = x / scale + 0.5 * (1 - 1 / scale);
  it reads ceil(width) + 2 input pixels from floor(u - width / 2) on, with
  weights k(u - index) divided by their sum (normalised per output pixel);
- indices that fall outside the image are mirrored at the borders
  (symmetric: ... 2 1 1 2 ... n n-1 ...), not clamped or renormalised;
- the dimension with the smaller scale is resized first (`sort(scale)`,
  rows first on a tie); uint8 input is rounded (halves away from zero) and
  clipped to 0..255 after each dimension, as MATLAB's imresizemex returns
  the input class from every pass.

PIL's BILINEAR resize of a float image widens the kernel too but
renormalises at the borders instead of mirroring (equal inside, up to a few
grey levels apart at the borders); cv2.resize does not antialias. Neither
reproduces MATLAB, hence this module.

The resampling is vectorised: one sparse (out x in) weight matrix per
dimension, cached by (in, out, scale, method, antialias), applied with a
sparse-dense product over all columns and channels at once. Arithmetic is
float64; the result has the input's dtype.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import scipy.sparse

from .numerics import mround

__all__ = ["imresize", "contributions", "resize_matrix", "output_size_for"]


# ----------------------------------------------------------------- kernels
def _triangle(x: np.ndarray) -> np.ndarray:
    return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((1 < ax) & (ax <= 2)))


def _box(x: np.ndarray) -> np.ndarray:
    return ((-0.5 <= x) & (x < 0.5)).astype(np.float64)


_KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "nearest": (_box, 1.0),
    "box": (_box, 1.0),
    "bilinear": (_triangle, 2.0),
    "triangle": (_triangle, 2.0),
    "bicubic": (_cubic, 4.0),
    "cubic": (_cubic, 4.0),
}


# ----------------------------------------------------------------- weights
def contributions(in_length: int, out_length: int, scale: float, method: str = "bilinear",
                  antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's `contributions`: (weights, indices), each out_length x P.

    Indices are 0-based and already mirrored into 0..in_length-1; columns
    whose weights are all zero are dropped, as MATLAB does.
    """
    if method not in _KERNELS:
        raise ValueError(f"imresize: unknown method {method!r} (use one of {sorted(_KERNELS)})")
    if in_length < 1 or out_length < 1:
        raise ValueError(f"imresize: lengths must be positive, got in={in_length}, out={out_length}")
    kernel, width = _KERNELS[method]
    if scale < 1 and antialias:
        h = lambda x: scale * kernel(scale * x)  # noqa: E731
        width = width / scale
    else:
        h = kernel
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(np.ceil(width)) + 2
    indices = left + np.arange(p, dtype=np.float64)[None, :]   # 1-based, may be out of range
    weights = h(u - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


@lru_cache(maxsize=256)
def resize_matrix(in_length: int, out_length: int, scale: float, method: str = "bilinear",
                  antialias: bool = True) -> scipy.sparse.csr_matrix:
    """The (out_length x in_length) sparse matrix of `contributions` (mirrored duplicates summed)."""
    w, idx = contributions(in_length, out_length, scale, method, antialias)
    rows = np.repeat(np.arange(out_length), w.shape[1])
    m = scipy.sparse.csr_matrix((w.reshape(-1), (rows, idx.reshape(-1))), shape=(out_length, in_length))
    m.sum_duplicates()
    return m


def output_size_for(in_size: Sequence[int], out_size: float | Sequence[float]) -> tuple[tuple[int, int], tuple[float, float]]:
    """MATLAB's output size and scale: a scale factor s gives ceil(s * size) and scale s;
    [h w] gives scale [h/H w/W]; one NaN in [h w] keeps the aspect ratio."""
    H, W = int(in_size[0]), int(in_size[1])
    if np.isscalar(out_size):
        s = float(out_size)  # type: ignore[arg-type]
        if not s > 0:
            raise ValueError(f"imresize: scale must be positive, got {s}")
        return (int(np.ceil(s * H)), int(np.ceil(s * W))), (s, s)
    o = [float(v) for v in np.asarray(out_size, dtype=np.float64).reshape(-1)]
    if len(o) != 2:
        raise ValueError(f"imresize: out_size must be a scale or [rows cols], got {out_size!r}")
    if np.isnan(o[0]) and np.isnan(o[1]):
        raise ValueError("imresize: out_size cannot be [NaN NaN]")
    if np.isnan(o[0]):
        s = o[1] / W
        o[0] = np.ceil(s * H)
        return (int(o[0]), int(o[1])), (s, s)
    if np.isnan(o[1]):
        s = o[0] / H
        o[1] = np.ceil(s * W)
        return (int(o[0]), int(o[1])), (s, s)
    if o[0] < 1 or o[1] < 1 or o[0] != int(o[0]) or o[1] != int(o[1]):
        raise ValueError(f"imresize: out_size must be positive whole numbers, got {out_size!r}")
    return (int(o[0]), int(o[1])), (o[0] / H, o[1] / W)


# ----------------------------------------------------------------- resize
def imresize(img: np.ndarray, out_size: float | Sequence[float], method: str = "bilinear",
             antialias: bool | None = None) -> np.ndarray:
    """MATLAB `imresize(img, out_size, method)` for an H x W or H x W x C image (numpy).

    `out_size` is [rows cols] (MATLAB's `[h w]`, NaN allowed for one of them)
    or a scale factor. `antialias` defaults to MATLAB's: True except for
    'nearest'. float32/float64 keep their dtype (computed in float64); uint8
    is rounded and clipped after each dimension like MATLAB. Extra trailing
    dimensions (channels, a batch H x W x C x N) are resized alike.
    """
    img = np.asarray(img)
    if img.ndim < 2:
        raise ValueError(f"imresize: expected an H x W (x C ...) image, got shape {img.shape}")
    if img.dtype.kind not in "fui":
        raise ValueError(f"imresize: unsupported dtype {img.dtype} (float or integer images only)")
    if antialias is None:
        antialias = method not in ("nearest", "box")
    (oh, ow), (sh, sw) = output_size_for(img.shape[:2], out_size)
    out_dtype = img.dtype
    x = img.astype(np.float64) if img.dtype != np.float64 else img
    # MATLAB: [~, order] = sort(scale): the smaller scale first, rows on a tie
    order = (0, 1) if sh <= sw else (1, 0)
    for dim in order:
        length, new, scale = (img.shape[0], oh, sh) if dim == 0 else (img.shape[1], ow, sw)
        x = _resize_along(x, dim, resize_matrix(length, new, scale, method, bool(antialias)))
        if out_dtype.kind in "ui":
            x = _to_integer_class(x, out_dtype)
    return x.astype(out_dtype, copy=False)


def _resize_along(x: np.ndarray, dim: int, m: scipy.sparse.csr_matrix) -> np.ndarray:
    if dim == 0:
        rest = x.shape[1:]
        return np.asarray(m @ x.reshape(x.shape[0], -1)).reshape((m.shape[0],) + rest)
    xt = np.moveaxis(x, 1, 0)
    rest = xt.shape[1:]
    y = np.asarray(m @ np.ascontiguousarray(xt).reshape(xt.shape[0], -1)).reshape((m.shape[0],) + rest)
    return np.moveaxis(y, 0, 1)


def _to_integer_class(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """MATLAB's conversion to an integer class: round halves away from zero, saturate."""
    info = np.iinfo(dtype)
    return np.clip(mround(x), info.min, info.max)
