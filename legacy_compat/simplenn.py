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
  (MATLAB drops trailing singleton dimensions: a 1 x 1 x 4096 x 1 filter is
  stored 1 x 1 x 4096, a 1 x 1 x 1 x 1 one 1 x 1; they are restored)
- convt filters H x W x OUT x IN        -> IN x OUT x H x W (torch's ConvTranspose2d layout)
- biases OUT x 1 (or 1 x OUT)           -> (OUT,)
- other weights: vectors -> (N,); a matrix (bnorm moments OUT x 2) keeps its MATLAB shape
- conv_mask beta `weights{3}` IN x 1    -> (IN,)
- conv_mask `posTemp{1,2}` H x W x IN   -> (IN, H, W) each
- conv_mask `filter` IN x 1             -> int64 (IN,) (1 part, 2 texture, 0 none)
- conv_mask `sliceMag` D x L or []      -> float32 (D, L) or None
- `pad` p or [top bottom left right]    -> (top, bottom, left, right)
- `stride`, `pool`, `dilate` s or [y x] -> (y, x)
- `lrn` `param` [N kappa alpha beta]    -> (N, kappa, alpha, beta) (MatConvNet's alpha: not divided by N)
- `learningRate`, `weightDecay`         -> tuple of floats (empty tuple for 1 x 0)
- `rate`, `leak`, `mag`, `lossWeight`   -> float
- `precious` (logical; our_cnn_train sets the double 1 on the prediction layer) -> bool
- anything else (`opts`, `precious`, `method`, ...) stays the MATLAB value as read.

Derived fields: `groups` (conv and conv_mask: input channels / filter IN,
inferred by walking the layers from the 3 input channels; AlexNet's conv2,
conv4 and conv5 have 2) is added by `layers_from_matlab` and never written.

Lossless round trip: `fields["_matlab"]` (a plain dict, see `MATLAB_FORM`)
records what was read: the struct's field order, every converted field's
MATLAB value, the per-batch scratch fields the original keeps on layers
(conv_mask `mu_x`, `mu_y`, `sqrtvar`, `strength`, `iter`; the loss layer's
`class`, `iter`, `density`), and the class and shape of every weight.
`layers_to_matlab` writes a field whose converted value is unchanged as the
MATLAB value it was read from (a scalar `pad` stays scalar, a single
`sliceMag` stays single), a changed one in the same form where it fits, and
a layer built in Python (no record) the way MatConvNet would hold it after
vl_simplenn_tidy and our_cnn_train's initialisation.

Ports: MatConvNet beta24 `matlab/simplenn/vl_simplenn_tidy.m` (older
`filters`/`biases` fields, defaults), `utils/import-caffe.py` (the layout of
the ImageNet model files), ICNN `tool/main/our_cnn_train.m` (learningRate
/ weightDecay defaults) and `tool/basic_net_functions/add_block_mask.m` (the
conv_mask fields).
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .matio import MatFileError, loadmat
from .mattypes import MatStruct, StructArray, cell, cell_items

__all__ = [
    "LayerSpec", "ModelMeta", "MATLAB_FORM",
    "maps_to_torch", "maps_to_matlab", "filters_to_torch", "filters_to_matlab",
    "vector_to_torch", "vector_to_matlab", "pair", "quad",
    "weight_to_torch", "weight_to_matlab", "layer_from_matlab", "layers_from_matlab",
    "layer_to_matlab", "layers_to_matlab", "infer_groups", "meta_from_matlab", "meta_to_matlab",
    "load_matconvnet_model", "net_to_matlab",
]

MATLAB_FORM = "_matlab"   # key in LayerSpec.fields of the record of what was read (never a MATLAB field name)

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


def _matlab_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """MATLAB's size: trailing singleton dimensions beyond the second dropped."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape if len(shape) >= 2 else shape + (1,) * (2 - len(shape))


_FILTER_TYPES = ("conv", "conv_mask", "convt")


def weight_to_torch(ltype: str, j: int, w: np.ndarray) -> torch.Tensor:
    """`weights{j+1}` of a layer of type `ltype` (MATLAB layout) -> PyTorch layout float32.

    Also used for the SGD momentum in `state.solverState`, which has the
    weights' shapes.
    """
    w = np.asarray(w)
    if w.dtype.kind not in "fiub":
        raise ValueError(f"expected a numeric weight array, got dtype {w.dtype}")
    if j == 0 and ltype in _FILTER_TYPES:
        return filters_to_torch(w)
    if w.ndim == 2 and min(w.shape) > 1:   # bnorm moments OUT x 2: keep the matrix
        return torch.from_numpy(np.ascontiguousarray(w.astype(np.float32)))
    return vector_to_torch(w)


def weight_to_matlab(ltype: str, j: int, t: torch.Tensor | np.ndarray,
                     like: tuple[str, tuple[int, ...]] | None = None) -> np.ndarray:
    """Inverse of `weight_to_torch`: MATLAB layout, trailing singletons dropped.

    `like` = (dtype, shape) as read: the class is restored and a vector keeps
    its orientation (1 x N stays 1 x N) when the number of elements fits.
    """
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if j == 0 and ltype in _FILTER_TYPES:
        a = a.reshape(a.shape + (1,) * (4 - a.ndim)).transpose(2, 3, 1, 0)
    elif a.ndim != 2:
        a = a.reshape(-1, 1)
    shape = _matlab_shape(a.shape)
    dtype = np.float32
    if like is not None:
        dtype = np.dtype(like[0])
        like_shape = tuple(int(s) for s in like[1])
        if like_shape != shape and len(like_shape) == 2 and len(shape) == 2 and 1 in like_shape \
                and 1 in shape and int(np.prod(like_shape)) == int(np.prod(shape)):
            shape = like_shape   # the vector's orientation as read
    return np.ascontiguousarray(a.reshape(shape).astype(dtype, copy=False))


# ----------------------------------------------------------------- layer specs
@dataclass
class LayerSpec:
    """One SimpleNN layer in PyTorch layout.

    `type` and `name` as in MatConvNet; `weights` as float32 tensors in the
    layouts listed in the module docstring; `fields` holds the rest with the
    conversions listed there (pad, stride, pool, dilate, param, rate, leak,
    method, learningRate, weightDecay, filter, mag, lossWeight, posTemp,
    sliceMag, groups ...). Unknown fields are kept as they were read so that
    writing back loses nothing; `fields["_matlab"]` is the record of the
    MATLAB form (module docstring) - copy it along with the other fields.
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
_DERIVED_FIELDS = ("groups",)
_PAD_TYPES = ("conv", "conv_mask", "pool", "convt")


def _is_empty(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.size == 0


def _field_to_python(ltype: str, key: str, value: Any) -> tuple[bool, Any]:
    """(converted?, value): one SimpleNN field -> its Python form (module docstring)."""
    if key == "pad" and ltype in _PAD_TYPES:
        return True, quad(value)
    if key in _PAIR_FIELDS and not _is_empty(value):
        return True, pair(value)
    if key in ("learningRate", "weightDecay", "param"):
        return True, tuple(float(a) for a in np.asarray(value).reshape(-1))
    if key in ("rate", "leak", "mag", "lossWeight") and not _is_empty(value):
        return True, float(np.asarray(value).reshape(-1)[0])
    if key == "filter":
        return True, np.asarray(value).reshape(-1).astype(np.int64)
    if key == "precious" and np.size(value) == 1 and np.asarray(value).dtype.kind in "biuf":
        return True, bool(np.asarray(value).reshape(-1)[0])
    if key == "posTemp":
        px, py = cell_items(value)
        return True, tuple(_postemp_to_python(p) for p in (px, py))
    if key == "sliceMag":
        return True, None if _is_empty(value) else np.asarray(value, dtype=np.float32)
    return False, value


def _postemp_to_python(p: Any) -> np.ndarray:
    p = np.asarray(p, dtype=np.float32)
    return np.ascontiguousarray(p.reshape(p.shape + (1,) * (3 - p.ndim)).transpose(2, 0, 1))


def layer_from_matlab(s: MatStruct) -> LayerSpec:
    """One SimpleNN layer struct -> LayerSpec (see the module docstring for the layouts).

    Older MatConvNet files hold `filters` and `biases` instead of `weights`
    (vl_simplenn_tidy turns them into `weights = {filters, biases}`); both
    are read. `groups` is not set here: `layers_from_matlab` infers it.
    """
    if "type" not in s:
        raise ValueError(f"SimpleNN layer {s.get('name', '?')!r} has no 'type' field (fields: {list(s)})")
    if not isinstance(s["type"], str) or not isinstance(s.get("name", ""), str):
        raise ValueError(f"SimpleNN layer type / name must be strings, got {s['type']!r} / {s.get('name')!r}")
    ltype = s["type"]
    spec = LayerSpec(type=ltype, name=s.get("name", ""))
    form: dict[str, Any] = {"order": tuple(s.keys()), "raw": {}, "scratch": {}, "weights": None,
                            "weights_cell": None}
    if "weights" in s:
        raw_weights = [] if _is_empty(s["weights"]) else cell_items(s["weights"])
        form["weights_cell"] = tuple(np.shape(s["weights"]))
    elif "filters" in s:   # vl_simplenn_tidy: weights = {filters, biases}
        raw_weights = [s["filters"]] + ([s["biases"]] if "biases" in s else [])
    else:
        raw_weights = []
    where = f"layer {spec.name!r} ({ltype})"
    for j, w in enumerate(raw_weights):
        try:
            spec.weights.append(weight_to_torch(ltype, j, w))
        except ValueError as exc:
            raise ValueError(f"{where}: weights{{{j + 1}}}: {exc}") from None
    form["weights"] = [(np.asarray(w).dtype.str, tuple(np.shape(w))) for w in raw_weights]
    for key, value in s.items():
        if key in ("type", "name", "weights", "filters", "biases"):
            continue
        if key in _SCRATCH_FIELDS:
            form["scratch"][key] = value
            continue
        try:
            converted, pyvalue = _field_to_python(ltype, key, value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: field {key!r}: {exc}") from None
        if converted:
            form["raw"][key] = value
        spec.fields[key] = pyvalue
    spec.fields[MATLAB_FORM] = form
    return spec


def layers_from_matlab(layers: np.ndarray, in_channels: int | None = 3) -> list[LayerSpec]:
    """`net.layers` (a cell of structs, as loadmat reads it) -> list of LayerSpec.

    `in_channels` (3: an RGB image) starts the channel walk of
    `infer_groups`; None skips it.
    """
    specs = [layer_from_matlab(s) for s in cell_items(layers)]
    if in_channels is not None:
        infer_groups(specs, in_channels)
    return specs


def infer_groups(specs: list[LayerSpec], in_channels: int = 3) -> list[LayerSpec]:
    """Set fields['groups'] of every conv / conv_mask: input channels / filter IN.

    Walks the layers from `in_channels`: a conv-type layer outputs its
    filter's OUT channels (convt: OUT x numGroups), every other layer keeps
    the count. A filter IN that does not divide the input channels, or an OUT
    that the groups do not divide, raises ValueError naming the layer.
    MatConvNet's vl_nnconv infers groups the same way at run time.
    """
    channels = int(in_channels)
    for i, spec in enumerate(specs):
        if spec.type in ("conv", "conv_mask") and spec.weights:
            out_c, in_f = int(spec.weights[0].shape[0]), int(spec.weights[0].shape[1])
            if in_f < 1 or channels % in_f != 0:
                raise ValueError(
                    f"layer {i + 1} {spec.name!r} ({spec.type}): its filters take {in_f} input channels, "
                    f"which does not divide the {channels} channels reaching it")
            groups = channels // in_f
            if out_c % groups != 0:
                raise ValueError(
                    f"layer {i + 1} {spec.name!r} ({spec.type}): {out_c} filters cannot be split into "
                    f"{groups} groups ({channels} input channels / {in_f} per filter)")
            spec.fields["groups"] = groups
            channels = out_c
        elif spec.type == "convt" and spec.weights:
            groups = int(np.asarray(spec.fields.get("numGroups", 1)).reshape(-1)[0])
            channels = int(spec.weights[0].shape[1]) * groups
    return specs


# ----------------------------------------------------------------- writing layers
def _same(a: Any, b: Any) -> bool:
    """Equal Python values (arrays by shape and values, NaN equal to NaN)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().numpy()
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return False
        return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or (a.dtype.kind in "OU") != (b.dtype.kind in "OU"):
            return False
        if a.dtype.kind in "OU":
            return bool(np.all(a == b))
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"))
    try:
        return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))
    except Exception:  # noqa: BLE001
        return False


def _like(raw: Any, default: Any = np.float64) -> np.dtype:
    return np.asarray(raw).dtype if isinstance(raw, np.ndarray) and raw.dtype.kind in "fiub" else np.dtype(default)


def _numbers_to_matlab(values: Sequence[float], raw: Any, scalar_if_equal: bool) -> np.ndarray:
    """A tuple of numbers -> a MATLAB row (or the scalar / shape it was read in)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    dtype = _like(raw)
    if isinstance(raw, np.ndarray) and raw.size == 1 and v.size > 0 and np.all(v == v[0]):
        return np.full((1, 1), v[0], dtype=dtype)
    if isinstance(raw, np.ndarray) and raw.size == v.size and raw.ndim == 2:
        return v.reshape(raw.shape).astype(dtype)
    if raw is None and scalar_if_equal and v.size > 0 and np.all(v == v[0]):
        return np.full((1, 1), v[0], dtype=dtype)
    return v.reshape(1, -1).astype(dtype)


def _python_to_matlab(value: Any, where: str) -> Any:
    """A plain Python value of an unconverted field -> a MATLAB value."""
    if isinstance(value, (bool, np.bool_)):
        return np.array([[bool(value)]])
    if isinstance(value, (int, float, np.integer, np.floating)):
        return np.array([[float(value)]])
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (tuple, list)) and all(isinstance(x, (int, float, np.integer, np.floating))
                                                and not isinstance(x, bool) for x in value):
        return np.asarray(value, dtype=np.float64).reshape(1, -1)
    if isinstance(value, (tuple, list)):
        return cell([_python_to_matlab(x, where) for x in value])
    if isinstance(value, dict) and not isinstance(value, MatStruct):
        return MatStruct((k, _python_to_matlab(v, f"{where}.{k}")) for k, v in value.items())
    if value is None:
        return np.zeros((0, 0))
    return value   # str, numpy arrays, MatStruct, StructArray, cells, sparse: MATLAB values already


def _field_to_matlab(ltype: str, key: str, value: Any, raw: Any, where: str) -> Any:
    """A converted field -> its MATLAB value, in the form `raw` was read in (None: a new field)."""
    if raw is not None:
        converted, back = _field_to_python(ltype, key, raw)
        if converted and _same(back, value):
            return raw
    if key == "pad" and ltype in _PAD_TYPES:
        return _numbers_to_matlab(quad(value), raw, scalar_if_equal=True)
    if key in _PAIR_FIELDS:
        return _numbers_to_matlab(pair(value), raw, scalar_if_equal=(key != "pool"))
    if key in ("learningRate", "weightDecay", "param"):
        return _numbers_to_matlab(tuple(value), raw, scalar_if_equal=False)
    if key in ("rate", "leak", "mag", "lossWeight"):
        return np.full((1, 1), float(value), dtype=_like(raw))
    if key == "filter":
        v = np.asarray(value).reshape(-1, 1)
        return v.astype(_like(raw)).reshape(np.shape(raw) if raw is not None and np.size(raw) == v.size else v.shape)
    if key == "posTemp":
        return cell([_postemp_to_matlab(p, raw_p) for p, raw_p in
                     zip(value, cell_items(raw) if raw is not None else (None, None))])
    if key == "precious":
        return np.array([[bool(value)]])
    if key == "sliceMag":
        if value is None:
            return np.zeros((0, 0), dtype=_like(raw))
        v = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return np.ascontiguousarray(v.reshape(v.shape[0], -1).astype(_like(raw)))
    return _python_to_matlab(value, where)


def _postemp_to_matlab(p: Any, raw: Any) -> np.ndarray:
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    a = p.transpose(1, 2, 0)
    return np.ascontiguousarray(a.reshape(_matlab_shape(a.shape)).astype(_like(raw, np.float32)))


def _tidy_defaults(ltype: str, n_weights: int) -> list[tuple[str, Any]]:
    """What vl_simplenn_tidy, our_cnn_train and add_block_mask put on a layer of this type."""
    empty = np.zeros((0, 0))
    common = [("precious", np.array([[False]]))]
    lr = [("learningRate", np.ones((1, n_weights))), ("weightDecay", np.ones((1, n_weights)))]
    by_type: dict[str, list[tuple[str, Any]]] = {
        "conv": [("pad", np.zeros((1, 1))), ("stride", np.ones((1, 1))), ("dilate", np.ones((1, 1))),
                 ("opts", np.empty((0, 0), dtype=object))],
        "conv_mask": [("pad", np.zeros((1, 1))), ("stride", np.ones((1, 1))), ("dilate", np.ones((1, 1))),
                      ("mu_x", empty), ("mu_y", empty), ("sqrtvar", empty), ("strength", empty),
                      ("sliceMag", empty), ("iter", empty), ("opts", np.empty((0, 0), dtype=object))],
        "pool": [("method", "max"), ("pad", np.zeros((1, 1))), ("stride", np.ones((1, 1))),
                 ("opts", np.empty((0, 0), dtype=object))],
        "convt": [("crop", np.zeros((1, 1))), ("upsample", np.ones((1, 1))), ("numGroups", np.ones((1, 1))),
                  ("opts", np.empty((0, 0), dtype=object))],
        "relu": [("leak", np.zeros((1, 1)))],
        "dropout": [("rate", np.full((1, 1), 0.5))],
        "lrn": [("param", np.array([[5, 1, 0.0001 / 5, 0.75]]))],
        "normalize": [("param", np.array([[5, 1, 0.0001 / 5, 0.75]]))],
        "bnorm": [("epsilon", np.full((1, 1), 1e-5))],
    }
    return by_type.get(ltype, []) + common + lr


_MATLAB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


def layer_to_matlab(spec: LayerSpec) -> MatStruct:
    """LayerSpec -> one SimpleNN layer struct (inverse of `layer_from_matlab`; module docstring)."""
    form = spec.fields.get(MATLAB_FORM) or {}
    raw = form.get("raw") or {}
    scratch = form.get("scratch") or {}
    where = f"layer {spec.name!r} ({spec.type})"
    w_forms = form.get("weights") or []
    weights = [weight_to_matlab(spec.type, j, w, w_forms[j] if j < len(w_forms) else None)
               for j, w in enumerate(spec.weights)]
    cell_shape = form.get("weights_cell")
    if weights:
        wcell = cell(weights, tuple(cell_shape) if cell_shape and int(np.prod(cell_shape)) == len(weights) else None)
    else:
        wcell = np.empty(tuple(cell_shape) if cell_shape and int(np.prod(cell_shape)) == 0 else (0, 0), dtype=object)

    values: dict[str, Any] = {"type": spec.type, "name": spec.name}
    if "weights" in form.get("order", ()) or "filters" in form.get("order", ()) or weights or not form:
        values["weights"] = wcell
    for key, value in spec.fields.items():
        if key == MATLAB_FORM or (key in _DERIVED_FIELDS and key not in form.get("order", ())):
            continue
        if not _MATLAB_NAME.match(key):
            raise ValueError(f"{where}: field {key!r} is not a valid MATLAB field name")
        values[key] = _field_to_matlab(spec.type, key, value, raw.get(key), f"{where}.{key}")
    for key, value in scratch.items():
        values.setdefault(key, value)
    if not form:   # built in Python: fill in what MatConvNet / ICNN would hold
        for key, value in _tidy_defaults(spec.type, len(weights)):
            values.setdefault(key, value)

    order = [("weights" if k == "filters" else k) for k in form.get("order", ()) if k != "biases"]
    out = MatStruct()
    for key in order:
        if key in values:
            out[key] = values.pop(key)
    for key, value in values.items():
        out[key] = value
    return out


def layers_to_matlab(specs: Iterable[LayerSpec]) -> np.ndarray:
    """list of LayerSpec -> `net.layers`: a 1 x N cell of SimpleNN layer structs."""
    return cell([layer_to_matlab(s) for s in specs])


# ----------------------------------------------------------------- meta
@dataclass
class ModelMeta:
    """`net.meta` of a SimpleNN model, the parts the port uses converted.

    `image_size`: normalization.imageSize as ints ((224, 224, 3) or with a
    4th element as in the beta24 files); `average_image`: float32 in
    PyTorch layout, (3,) for a per-channel mean (MATLAB 1 x 1 x 3, 3 x 1,
    1 x 3) or (3, H, W) for a mean image (H x W x 3), None when absent or
    empty; `class_names` / `class_descriptions`: classes.name /
    classes.description as lists of str; `raw`: the MATLAB struct as read
    (everything else: interpolation, keepAspect, border, cropSize,
    trainOpts ...).
    """

    image_size: tuple[int, ...] | None = None
    average_image: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    class_descriptions: list[str] = field(default_factory=list)
    raw: MatStruct = field(default_factory=MatStruct)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    a = np.asarray(value)
    if a.dtype == object:
        return [s if isinstance(s, str) else "".join(np.asarray(s).reshape(-1).tolist()) for s in cell_items(a)]
    if a.dtype.kind == "U":   # char matrix: one name per row
        return ["".join(row).rstrip() for row in a.reshape(a.shape[0], -1)]
    return []


def _average_image_to_python(a: Any) -> np.ndarray | None:
    if a is None or _is_empty(a):
        return None
    a = np.asarray(a, dtype=np.float32)
    if a.size == 3:
        return a.reshape(3).copy()
    if a.ndim == 3:
        return np.ascontiguousarray(a.transpose(2, 0, 1))
    raise ValueError(f"averageImage must be 3 values or H x W x 3, got shape {a.shape}")


def meta_from_matlab(meta: Any) -> ModelMeta:
    """`net.meta` (MatStruct) -> ModelMeta (see its docstring)."""
    meta = meta if isinstance(meta, MatStruct) else MatStruct(meta or {})
    norm = meta.get("normalization", MatStruct())
    classes = meta.get("classes", MatStruct())
    size = norm.get("imageSize") if isinstance(norm, dict) else None
    return ModelMeta(
        image_size=None if size is None or _is_empty(size) else tuple(int(v) for v in np.asarray(size).reshape(-1)),
        average_image=_average_image_to_python(norm.get("averageImage")) if isinstance(norm, dict) else None,
        class_names=_strings(classes.get("name")) if isinstance(classes, dict) else [],
        class_descriptions=_strings(classes.get("description")) if isinstance(classes, dict) else [],
        raw=meta,
    )


def meta_to_matlab(meta: ModelMeta | MatStruct | dict | None) -> MatStruct:
    """ModelMeta -> `net.meta` (the raw struct with the converted parts written back where changed).

    A MatStruct / dict is taken as MATLAB values already; None gives an empty struct.
    """
    if meta is None:
        return MatStruct()
    if not isinstance(meta, ModelMeta):
        return meta if isinstance(meta, MatStruct) else MatStruct(meta)
    out = copy.deepcopy(meta.raw) if meta.raw is not None else MatStruct()
    was = meta_from_matlab(meta.raw)
    norm = out.get("normalization")
    norm = MatStruct(norm) if isinstance(norm, dict) else MatStruct()
    if not _same(was.image_size, meta.image_size):
        norm["imageSize"] = np.zeros((0, 0)) if meta.image_size is None else \
            np.asarray(meta.image_size, dtype=np.float64).reshape(1, -1)
    if not _same(was.average_image, meta.average_image):
        a = meta.average_image
        if a is None:
            norm["averageImage"] = np.zeros((0, 0), dtype=np.float32)
        else:
            a = np.asarray(a)
            old = np.asarray(meta.raw.get("normalization", {}).get("averageImage", np.zeros((0, 0), np.float32)))
            dtype = old.dtype if old.dtype.kind == "f" else np.float32
            norm["averageImage"] = (a.reshape(1, 1, 3) if a.ndim == 1 else a.transpose(1, 2, 0)).astype(dtype)
    if norm or "normalization" in out:
        out["normalization"] = norm
    classes = out.get("classes")
    classes = MatStruct(classes) if isinstance(classes, dict) else MatStruct()
    for key, now, old in (("name", meta.class_names, was.class_names),
                          ("description", meta.class_descriptions, was.class_descriptions)):
        if list(now) != list(old):
            classes[key] = cell(list(now))
    if classes or "classes" in out:
        out["classes"] = classes
    return out


# ----------------------------------------------------------------- model files
def load_matconvnet_model(path: os.PathLike | str, in_channels: int = 3) -> tuple[list[LayerSpec], ModelMeta]:
    """A MatConvNet SimpleNN model file -> (layer specs, meta).

    Reads the beta24 ImageNet models (imagenet-vgg-verydeep-16,
    imagenet-caffe-alex, imagenet-vgg-m, imagenet-vgg-s: variables `layers`
    and `meta`, as utils/import-caffe.py and tidy_ref_models.m save them),
    older files (top-level `classes` / `normalization`, layers with
    `filters` / `biases`: what vl_simplenn_tidy upgrades) and files holding
    one variable `net` with `layers` and `meta`. What the ICNN nets do with
    them is `net = load('../nets/imagenet-*.mat')` (tool/nets/*.m). A
    DagNN file, or one without layers, raises MatFileError naming the file.
    """

    path = os.fspath(path)
    data = loadmat(path)
    if "layers" not in data and isinstance(data.get("net"), dict):
        data = data["net"]
    if "params" in data and "layers" in data and not _looks_simplenn(data["layers"]):
        raise MatFileError(path, "is a DagNN model (it has 'params'); only SimpleNN models are supported")
    if "layers" not in data:
        raise MatFileError(path, f"has no 'layers' variable: not a MatConvNet SimpleNN model (variables: {list(data)})")
    meta = MatStruct(data["meta"]) if isinstance(data.get("meta"), dict) else MatStruct()
    for key in ("classes", "normalization"):   # vl_simplenn_tidy: copy into net.meta
        if key in data and key not in meta:
            meta[key] = data[key]
    try:
        specs = layers_from_matlab(data["layers"], in_channels)
        model_meta = meta_from_matlab(meta)
    except (ValueError, TypeError, KeyError) as exc:
        raise MatFileError(path, f"is not a valid SimpleNN model: {exc}") from exc
    return specs, model_meta


def _looks_simplenn(layers: Any) -> bool:
    return isinstance(layers, np.ndarray) and not isinstance(layers, StructArray) and layers.dtype == object


def net_to_matlab(specs: Iterable[LayerSpec], meta: ModelMeta | MatStruct | dict | None = None) -> MatStruct:
    """specs + meta -> a SimpleNN `net` struct (`layers` cell, `meta` struct), as MATLAB would load it."""
    return MatStruct(layers=layers_to_matlab(specs), meta=meta_to_matlab(meta))
