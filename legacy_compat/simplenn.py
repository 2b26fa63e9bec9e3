"""MatConvNet SimpleNN nets <-> a neutral, PyTorch-layout layer list.

A SimpleNN net is `net.layers` (a cell of layer structs) and `net.meta`.
`layers_from_matlab` turns the cell into a list of `LayerSpec`, each holding
its weights as float32 torch tensors in PyTorch layout and its settings as
plain Python values; `reproduce` builds nn.Modules from LayerSpecs and gives
LayerSpecs back, and `layers_to_matlab` writes them as SimpleNN structs again.
legacy_compat never imports `reproduce`.

Layouts (MATLAB -> PyTorch):
- feature maps H x W x C x N            -> N x C x H x W
- conv filters H x W x IN/groups x OUT  -> OUT x IN/groups x H x W
- biases OUT x 1                        -> (OUT,)
- conv_mask beta `weights{3}` IN x 1    -> (IN,)
- conv_mask `posTemp{1,2}` H x W x IN   -> (IN, H, W) each
- conv_mask `filter` IN x 1             -> int64 (IN,) (1 part, 2 texture, 0 none)
- conv_mask `sliceMag` D x L or []      -> float32 (D, L) or None
- `pad` p or [top bottom left right]    -> (top, bottom, left, right)
- `stride`, `pool`, `dilate` s or [y x] -> (y, x)
- `lrn` `param` [N kappa alpha beta]    -> (N, kappa, alpha, beta) (MatConvNet's alpha: not divided by N)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .mattypes import MatStruct, cell_items

# ----------------------------------------------------------------- layouts
def maps_to_torch(x: np.ndarray) -> torch.Tensor:
    """H x W x C x N (MATLAB) -> N x C x H x W float32 tensor (missing trailing dims are 1)."""
    x = np.asarray(x, dtype=np.float32)
    x = x.reshape(x.shape + (1,) * (4 - x.ndim))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))


def maps_to_matlab(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """N x C x H x W -> H x W x C x N float32 array."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(x.astype(np.float32, copy=False).transpose(2, 3, 1, 0))


def filters_to_torch(w: np.ndarray) -> torch.Tensor:
    """H x W x IN x OUT (MATLAB, trailing singletons may be dropped) -> OUT x IN x H x W."""
    w = np.asarray(w, dtype=np.float32)
    w = w.reshape(w.shape + (1,) * (4 - w.ndim))
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))


def filters_to_matlab(w: torch.Tensor | np.ndarray) -> np.ndarray:
    """OUT x IN x H x W -> H x W x IN x OUT float32 array."""
    w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return np.ascontiguousarray(w.astype(np.float32, copy=False).transpose(2, 3, 1, 0))


def vector_to_torch(v: np.ndarray) -> torch.Tensor:
    """N x 1 or 1 x N -> (N,) float32."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(-1)))


def vector_to_matlab(v: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) -> N x 1 float32 column."""
    v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return np.ascontiguousarray(v.astype(np.float32, copy=False).reshape(-1, 1))


def pair(value: Any) -> tuple[int, int]:
    """MatConvNet's s or [y x] -> (y, x)."""
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size == 1:
        return int(v[0]), int(v[0])
    if v.size == 2:
        return int(v[0]), int(v[1])
    raise ValueError(f"expected a scalar or [y x], got {v.tolist()}")


def quad(value: Any) -> tuple[int, int, int, int]:
    """MatConvNet's pad p or [top bottom left right] -> (top, bottom, left, right)."""
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size == 1:
        return (int(v[0]),) * 4
    if v.size == 4:
        return tuple(int(a) for a in v)  # type: ignore[return-value]
    raise ValueError(f"expected a scalar or [top bottom left right], got {v.tolist()}")


# ----------------------------------------------------------------- layer specs
@dataclass
class LayerSpec:
    """One SimpleNN layer in PyTorch layout.

    `type` and `name` as in MatConvNet; `weights` as float32 tensors in the
    layouts listed in the module docstring; `fields` holds the rest with the
    conversions listed there (pad, stride, pool, dilate, param, rate, leak,
    method, learningRate, weightDecay, filter, mag, lossWeight, posTemp,
    sliceMag, groups ...). Unknown fields are kept as they were read so that
    writing back loses nothing.
    """

    type: str
    name: str
    weights: list[torch.Tensor] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


_PAIR_FIELDS = ("stride", "dilate", "pool")
# per-batch scratch the original stores on layers; never part of a model
_SCRATCH_FIELDS = ("mu_x", "mu_y", "sqrtvar", "strength", "iter", "class", "density")


def _is_empty(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.size == 0


def layer_from_matlab(s: MatStruct) -> LayerSpec:
    """One SimpleNN layer struct -> LayerSpec (see the module docstring for the layouts)."""
    ltype = str(s["type"])
    spec = LayerSpec(type=ltype, name=str(s.get("name", "")))
    raw_weights = cell_items(s["weights"]) if "weights" in s and not _is_empty(s["weights"]) else []
    for j, w in enumerate(raw_weights):
        if j == 0 and ltype in ("conv", "conv_mask", "convt"):
            spec.weights.append(filters_to_torch(w))
        else:
            spec.weights.append(vector_to_torch(w))
    for key, value in s.items():
        if key in ("type", "name", "weights") or key in _SCRATCH_FIELDS:
            continue
        if key == "pad" and ltype in ("conv", "conv_mask", "pool", "convt"):
            spec.fields[key] = quad(value)
        elif key in _PAIR_FIELDS and not _is_empty(value):
            spec.fields[key] = pair(value)
        elif key in ("learningRate", "weightDecay"):
            spec.fields[key] = tuple(float(a) for a in np.asarray(value).reshape(-1))
        elif key == "param":
            spec.fields[key] = tuple(float(a) for a in np.asarray(value).reshape(-1))
        elif key in ("rate", "leak", "mag", "lossWeight") and not _is_empty(value):
            spec.fields[key] = float(np.asarray(value).reshape(-1)[0])
        elif key == "filter":
            spec.fields[key] = np.asarray(value).reshape(-1).astype(np.int64)
        elif key == "posTemp":
            px, py = cell_items(value)
            spec.fields[key] = tuple(
                np.ascontiguousarray(np.asarray(p, dtype=np.float32).reshape(
                    np.asarray(p).shape + (1,) * (3 - np.asarray(p).ndim)).transpose(2, 0, 1))
                for p in (px, py))
        elif key == "sliceMag":
            spec.fields[key] = None if _is_empty(value) else np.asarray(value, dtype=np.float32)
        else:
            spec.fields[key] = value
    return spec


def layers_from_matlab(layers: np.ndarray) -> list[LayerSpec]:
    """`net.layers` (a cell of structs, as loadmat reads it) -> list of LayerSpec."""
    return [layer_from_matlab(s) for s in cell_items(layers)]
