"""A MatConvNet SimpleNN net as a PyTorch module.

Ports the forward/backward layer cases of `tool/main/our_vl_simplenn.m` with MatConvNet beta24's
primitives: vl_nnconv (groups, dilation, asymmetric pads), vl_nnpool (max/avg, pads
[top bottom left right]), vl_nnrelu (leak), vl_nnnormalize (LRN), vl_nndropout, vl_nnsoftmax,
and the loss layers (`reproduce.losses`); the conv_mask layer is `reproduce.layers.conv_mask.ConvMask`
(its MATLAB fields are mapped here: `conv_mask_from_spec`, `conv_mask_to_spec`).
The backward of every layer is PyTorch autograd (conv_mask's is its own autograd Function);
`simplenn_res` shows a run the way our_vl_simplenn returns it (`res(i).x/dzdx/dzdw`).

Primitive semantics kept from MatConvNet:
- conv: correlation (no flip); groups = input channels / filter depth; output size
  floor((H + pt + pb - kh') / s) + 1 with kh' = (kh - 1) dilate + 1.
- pool: the window must fit in the padded input (same size formula); max ignores the padding
  (-Inf), and of equal maxima the backward picks the first in column-major order (MatConvNet
  scans the window column by column); avg divides by the number of non-padding pixels.
- lrn: y = x / (kappa + alpha sum_{q in Q(k)} x_q^2)^beta, Q(k) = [k - floor((N-1)/2),
  k + ceil((N-1)/2)] clipped to the channels; alpha is NOT divided by N (torch's is).
- dropout: training ('normal' mode) y = x * (rand >= rate) / (1 - rate); eval ('test') y = x.
- softmax over channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legacy_compat.cli import UserError
from legacy_compat.simplenn import (
    LayerSpec,
    filters_to_matlab,
    maps_to_matlab,
    maps_to_torch,
    pair,
    quad,
    vector_to_matlab,
)
from reproduce.layers import losses
from reproduce.layers.conv_mask import ConvMask, ConvMaskOptions, FilterLossContext
from reproduce.layers.geometry import LayerGeometry
from reproduce.layers.padding import conv2d_padded
from reproduce.layers.torchvision_blocks import TorchvisionBlock

__all__ = ["SimpleNN", "ParamInfo", "MatConv", "ReLU", "Pool", "LRN", "Dropout", "Softmax", "LossLayer",
           "InputGuardError", "LAYER_BUILDERS", "build_layer", "simplenn_res", "SimpleNNRes", "conv_mask_from_spec",
           "conv_mask_to_spec", "layer_to_spec"]


class InputGuardError(UserError, ValueError):
    """our_vl_simplenn.m's input check failed: no input value below -10."""




class _Layer(nn.Module):
    """Common attributes of a SimpleNN layer module: MATLAB type and name, the per-weight
    learningRate / weightDecay multipliers, and the MATLAB fields it does not use (kept for
    writing the net back)."""

    layer_type = ""

    def __init__(self, name: str = "", learning_rate: Sequence[float] = (), weight_decay: Sequence[float] = (),
                 extra_fields: dict | None = None):
        super().__init__()
        self.name = name
        self.learning_rate = tuple(float(v) for v in learning_rate)
        self.weight_decay = tuple(float(v) for v in weight_decay)
        self.extra_fields = dict(extra_fields or {})

    def weights(self) -> list[nn.Parameter]:
        """MATLAB's `weights` cell, in order."""
        return []

    def geometry(self) -> LayerGeometry:
        return LayerGeometry(self.layer_type)

    def _spec_fields(self) -> dict[str, Any]:
        return {}

    def to_spec(self) -> LayerSpec:
        fields = dict(self.extra_fields)
        fields.update(self._spec_fields())
        if self.weights():
            fields["learningRate"] = self.learning_rate
            fields["weightDecay"] = self.weight_decay
        return LayerSpec(self.layer_type, self.name, [p.detach().cpu().clone() for p in self.weights()], fields)

    def extra_repr(self) -> str:
        return repr(self.name)


# ------------------------------------------------------------------ layers
class MatConv(_Layer):
    """vl_nnconv: 'conv' layer (filters OUT x IN/groups x kh x kw, biases (OUT,) or none)."""

    layer_type = "conv"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, pad: Any = 0, stride: Any = 1,
                 dilate: Any = 1, groups: int = 1, copy: bool = True, **kw):
        super().__init__(**kw)
        w = torch.as_tensor(weight, dtype=torch.float32)
        self.weight = nn.Parameter(w.clone() if copy else w)
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).reshape(-1).clone())
        self.pad = quad(pad)
        self.stride = pair(stride)
        self.dilate = pair(dilate)
        self.groups = int(groups)

    def weights(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def geometry(self):
        return LayerGeometry("conv", (int(self.weight.shape[2]), int(self.weight.shape[3])), self.dilate,
                             self.pad, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_padded(x, self.weight, self.bias, self.pad, self.stride, self.dilate, self.groups)

    def _spec_fields(self):
        f = {"pad": self.pad, "stride": self.stride, "dilate": self.dilate}
        if self.groups != 1:
            f["groups"] = self.groups
        return f

    def extra_repr(self):
        return (f"{self.name!r}, {self.weight.shape[1] * self.groups}->{self.weight.shape[0]}, "
                f"kernel={tuple(self.weight.shape[2:])}, pad={self.pad}, stride={self.stride}, groups={self.groups}")


class ReLU(_Layer):
    """vl_nnrelu: max(x, 0), or leak * x for x < 0 when leak > 0."""

    layer_type = "relu"

    def __init__(self, leak: float = 0.0, **kw):
        super().__init__(**kw)
        self.leak = float(leak)

    def forward(self, x):
        return F.leaky_relu(x, self.leak) if self.leak > 0 else F.relu(x)

    def _spec_fields(self):
        return {"leak": self.leak}


class Pool(_Layer):
    """vl_nnpool: max or avg pooling with MatConvNet's pads and window rules (module docstring)."""

    layer_type = "pool"

    def __init__(self, pool: Any, *, stride: Any = 1, pad: Any = 0, method: str = "max", **kw):
        super().__init__(**kw)
        self.pool = pair(pool)
        self.stride = pair(stride)
        self.pad = quad(pad)
        self.method = str(method).lower()
        if self.method not in ("max", "avg"):
            raise ValueError(f"pool layer {self.name!r}: unknown method {method!r} (max or avg)")
        t, b, l, r = self.pad
        if max(t, b) >= self.pool[0] or max(l, r) >= self.pool[1]:
            raise ValueError(f"pool layer {self.name!r}: the pool size {self.pool} must exceed the padding {self.pad}")

    def geometry(self):
        return LayerGeometry("pool", self.pool, (1, 1), self.pad, self.stride)

    def forward(self, x):
        t, b, l, r = self.pad
        ph, pw = self.pool
        if x.shape[2] + t + b < ph or x.shape[3] + l + r < pw:
            raise ValueError(f"pool layer {self.name!r}: the window {self.pool} is larger than the padded input "
                             f"{x.shape[2] + t + b} x {x.shape[3] + l + r}")
        if self.method == "max":
            # transposed so that torch's row-major scan is MatConvNet's column-major one (ties)
            xt = x.transpose(2, 3)
            if any(self.pad):
                xt = F.pad(xt, (t, b, l, r), value=-math.inf)
            return F.max_pool2d(xt, (pw, ph), (self.stride[1], self.stride[0])).transpose(2, 3)
        if not any(self.pad):
            return F.avg_pool2d(x, self.pool, self.stride)
        k = float(ph * pw)
        total = F.avg_pool2d(F.pad(x, (l, r, t, b)), self.pool, self.stride) * k
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(F.pad(ones, (l, r, t, b)), self.pool, self.stride) * k
        return total / count

    def _spec_fields(self):
        return {"pool": self.pool, "stride": self.stride, "pad": self.pad, "method": self.method}

    def extra_repr(self):
        return f"{self.name!r}, {self.method}, pool={self.pool}, stride={self.stride}, pad={self.pad}"


class LRN(_Layer):
    """vl_nnnormalize with param [N kappa alpha beta] (MatConvNet's alpha, module docstring)."""

    layer_type = "lrn"

    def __init__(self, param: Sequence[float], *, layer_type: str = "lrn", **kw):
        super().__init__(**kw)
        p = [float(v) for v in np.asarray(param, dtype=np.float64).reshape(-1)]
        if len(p) != 4:
            raise ValueError(f"lrn layer {self.name!r}: param must be [N kappa alpha beta], got {p}")
        self.size, self.kappa, self.alpha, self.beta = int(p[0]), p[1], p[2], p[3]
        self.layer_type = layer_type      # 'lrn' or 'normalize'

    def forward(self, x):
        n = self.size
        lo, hi = (n - 1) // 2, n - 1 - (n - 1) // 2
        sq = F.pad(x * x, (0, 0, 0, 0, lo, hi))
        window = F.avg_pool3d(sq.unsqueeze(1), (n, 1, 1), stride=1).squeeze(1) * n
        return x / (self.kappa + self.alpha * window) ** self.beta

    def _spec_fields(self):
        return {"param": (float(self.size), self.kappa, self.alpha, self.beta)}


class Dropout(_Layer):
    """vl_nndropout: in training y = x .* (rand >= rate) / (1 - rate); in eval (test mode) y = x."""

    layer_type = "dropout"

    def __init__(self, rate: float = 0.5, **kw):
        super().__init__(**kw)
        self.rate = float(rate)

    def forward(self, x):
        if not self.training:
            return x
        scale = 1.0 / (1.0 - self.rate)
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.rate
        return x * (keep.to(x.dtype) * scale)

    def _spec_fields(self):
        return {"rate": self.rate}


class Softmax(_Layer):
    """vl_nnsoftmax over the channels."""

    layer_type = "softmax"

    def forward(self, x):
        return torch.softmax(x, dim=1)


class LossLayer(_Layer):
    """The last layer: 'ourloss_logistic' / 'ourloss' (summed logistic on +1/-1 labels),
    'ourloss_softmaxlog' (softmaxlog on argmax of the labels, backward x L), 'loss' /
    'softmaxloss' (vl_nnloss softmaxlog on 0-based class indices). See reproduce.losses."""

    def __init__(self, layer_type: str = "ourloss_logistic", **kw):
        super().__init__(**kw)
        if layer_type not in losses.LOSS_LAYER_TYPES:
            raise ValueError(f"layer {self.name!r}: unknown loss type {layer_type!r} ({', '.join(losses.LOSS_LAYER_TYPES)})")
        self.layer_type = layer_type

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.layer_type in ("ourloss_logistic", "ourloss"):
            return losses.ourloss_logistic(x, labels)
        if self.layer_type == "ourloss_softmaxlog":
            return losses.ourloss_softmaxlog(x, labels)
        return losses.softmaxlog(x, labels)

    def extra_repr(self):
        return f"{self.name!r}, {self.layer_type}"


# ------------------------------------------------------------------ building from LayerSpecs
def _common(spec: LayerSpec, known: Sequence[str]) -> dict[str, Any]:
    f = spec.fields
    n_w = len(spec.weights)
    lr = f.get("learningRate", (1.0,) * n_w)     # our_cnn_train: missing -> ones(1, J)
    wd = f.get("weightDecay", (1.0,) * n_w)
    skip = set(known) | {"learningRate", "weightDecay"}
    return {"name": spec.name, "learning_rate": lr, "weight_decay": wd,
            "extra_fields": {k: v for k, v in f.items() if k not in skip}}


def _build_conv(spec: LayerSpec, channels: int | None, copy: bool = True) -> MatConv:
    w = spec.weights[0]
    groups = spec.get("groups")
    if groups is None:
        depth = int(w.shape[1])
        if channels is None or channels % depth != 0:
            raise ValueError(f"conv layer {spec.name!r}: filter depth {depth} does not divide the {channels} input channels")
        groups = channels // depth
    bias = spec.weights[1] if len(spec.weights) > 1 and spec.weights[1].numel() > 0 else None
    return MatConv(w, bias, pad=spec.get("pad", 0), stride=spec.get("stride", 1), dilate=spec.get("dilate", 1),
                   groups=int(groups), copy=copy, **_common(spec, ("pad", "stride", "dilate", "groups")))


# the conv_mask layer's MATLAB fields (add_block_mask.m) <-> ConvMask
_CONV_MASK_FIELDS = {"pad", "stride", "dilate", "filter", "mag", "lossWeight", "learningRate", "weightDecay",
                     "posTemp", "sliceMag"}


def conv_mask_from_spec(spec: LayerSpec, feature_size: Sequence[int] | None = None, copy: bool = True) -> ConvMask:
    """A ConvMask from a LayerSpec of type 'conv_mask' (add_block_mask.m's fields: weights
    {filters, biases, beta}, pad, stride, dilate, filter, mag, lossWeight, learningRate,
    weightDecay, posTemp, sliceMag; the other fields kept in extra_fields). Weights copied
    unless copy=False; `feature_size` only where the spec has no posTemp."""
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
    opts = ConvMaskOptions(dilate=f.get("dilate", 1), name=spec.name, filter_type=f.get("filter"),
                           mag=float(f.get("mag", 0.1)), loss_weight=float(f.get("lossWeight", 0.02)),
                           learning_rate=f.get("learningRate", (1.0, 2.0, 0.05)),
                           weight_decay=f.get("weightDecay", (1.0, 0.0, 0.0)),
                           weight=torch.as_tensor(w, dtype=torch.float32).clone() if copy else w)
    layer = ConvMask(int(w.shape[1]), int(w.shape[0]), (int(w.shape[2]), int(w.shape[3])), fs,
                     stride=f.get("stride", 1), pad=f.get("pad", 0), options=opts)
    with torch.no_grad():
        layer.bias.copy_(torch.as_tensor(spec.weights[1], dtype=torch.float32).reshape(-1))
        layer.beta.copy_(torch.as_tensor(spec.weights[2], dtype=torch.float32).reshape(-1))
    if pos is not None:
        layer.pos_temp_x = torch.as_tensor(np.asarray(pos[0]), dtype=torch.float32).clone()
        layer.pos_temp_y = torch.as_tensor(np.asarray(pos[1]), dtype=torch.float32).clone()
    sm = f.get("sliceMag")
    if sm is not None and np.asarray(sm).size > 0:
        layer.set_slice_mag(np.asarray(sm, dtype=np.float32))
    layer.extra_fields = {k: v for k, v in f.items() if k not in _CONV_MASK_FIELDS}
    return layer


def conv_mask_to_spec(layer: ConvMask) -> LayerSpec:
    """A LayerSpec of type 'conv_mask' (CPU copies of the weights, PyTorch layouts) with
    add_block_mask.m's fields: the inverse of conv_mask_from_spec."""
    fields = dict(layer.extra_fields)
    fields.update({
        "stride": layer.stride, "pad": layer.pad, "dilate": layer.dilate,
        "learningRate": layer.learning_rate, "weightDecay": layer.weight_decay,
        "posTemp": (layer.pos_temp_x.detach().cpu().numpy().copy(), layer.pos_temp_y.detach().cpu().numpy().copy()),
        "lossWeight": float(layer.loss_weight), "sliceMag": layer.slice_mag.detach().cpu().numpy().copy()
        if layer.has_slice_mag else None,
        "filter": layer.filter_type.detach().cpu().numpy().copy(), "mag": float(layer.mag),
    })
    return LayerSpec("conv_mask", layer.name, [p.detach().cpu().clone() for p in layer.weights()], fields)


def layer_to_spec(layer: nn.Module) -> LayerSpec:
    """The LayerSpec of one SimpleNN layer module (for writing MATLAB nets)."""
    return conv_mask_to_spec(layer) if isinstance(layer, ConvMask) else layer.to_spec()


def _build_conv_mask(spec: LayerSpec, channels: int | None, copy: bool = True) -> ConvMask:
    return conv_mask_from_spec(spec, copy=copy)


def _build_relu(spec, channels, copy=True):
    return ReLU(float(spec.get("leak", 0.0) or 0.0), **_common(spec, ("leak",)))


def _build_pool(spec, channels, copy=True):
    return Pool(spec.get("pool"), stride=spec.get("stride", 1), pad=spec.get("pad", 0),
                method=str(spec.get("method", "max")), **_common(spec, ("pool", "stride", "pad", "method")))


def _build_lrn(spec, channels, copy=True):
    return LRN(spec.get("param"), layer_type=spec.type, **_common(spec, ("param",)))


def _build_dropout(spec, channels, copy=True):
    return Dropout(float(spec.get("rate", 0.5)), **_common(spec, ("rate",)))


def _build_softmax(spec, channels, copy=True):
    return Softmax(**_common(spec, ()))


def _build_loss(spec, channels, copy=True):
    return LossLayer(spec.type, **_common(spec, ()))


def _build_torchvision(spec, channels, copy=True):
    return TorchvisionBlock.from_spec(spec, copy_weights=copy)


LAYER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "conv": _build_conv, "conv_mask": _build_conv_mask, "relu": _build_relu, "pool": _build_pool,
    "lrn": _build_lrn, "normalize": _build_lrn, "dropout": _build_dropout, "softmax": _build_softmax,
    "torchvision": _build_torchvision,
    **{t: _build_loss for t in losses.LOSS_LAYER_TYPES},
}


def build_layer(spec: LayerSpec, channels: int | None = None, index: int | None = None,
                copy: bool = True) -> nn.Module:
    """One layer module from a LayerSpec; `channels` (input channels) infers conv groups;
    copy=False lets the module's parameters share the spec's filter tensors."""
    builder = LAYER_BUILDERS.get(spec.type)
    where = f"layer {index + 1} " if index is not None else "layer "
    if builder is None:
        raise ValueError(f"{where}{spec.name!r}: unknown layer type {spec.type!r} "
                         f"(supported: {', '.join(sorted(LAYER_BUILDERS))})")
    return builder(spec, channels, copy=copy)


# ------------------------------------------------------------------ the network
@dataclass
class ParamInfo:
    """One MatConvNet weight: layers{layer_index+1}.weights{j+1} with its multipliers."""

    layer_index: int
    j: int
    name: str
    param: nn.Parameter
    learning_rate: float
    weight_decay: float


class SimpleNN(nn.Module):
    """A MatConvNet SimpleNN as a PyTorch module: one submodule per SimpleNN layer, in MATLAB
    order, the loss layer last.

    train() / eval() are MatConvNet's 'normal' / 'test' modes (dropout on / off).
    `input_guard` (default True): like our_vl_simplenn.m, refuse an input with no value below
    -10 (the data mean was not subtracted); set it to False to allow such inputs.
    `meta`: the net's meta (normalization, classes, ...) as plain Python values.
    """

    def __init__(self, layers: Sequence[nn.Module], input_guard: bool = True, meta: dict | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.input_guard = bool(input_guard)
        self.meta = dict(meta or {})

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_specs(cls, specs: Sequence[LayerSpec], input_channels: int = 3, input_guard: bool = True,
                   meta: dict | None = None, copy: bool = True) -> "SimpleNN":
        """Build from legacy_compat LayerSpecs (weights copied unless copy=False; conv groups
        inferred from the channel counts)."""
        layers = []
        channels: int | None = input_channels
        for i, spec in enumerate(specs):
            layer = build_layer(spec, channels, i, copy=copy)
            if isinstance(layer, (MatConv, ConvMask)):
                channels = int(layer.weight.shape[0])
            elif isinstance(layer, TorchvisionBlock):
                channels = layer.out_channels
            layers.append(layer)
        return cls(layers, input_guard=input_guard, meta=meta)

    def to_specs(self) -> list[LayerSpec]:
        """LayerSpecs of the layers (CPU copies of the weights), for writing MATLAB nets."""
        return [layer_to_spec(layer) for layer in self.layers]

    # ---------------------------------------------------------------- description
    @property
    def layer_types(self) -> list[str]:
        return [layer.layer_type for layer in self.layers]

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def has_loss_layer(self) -> bool:
        return len(self.layers) > 0 and isinstance(self.layers[-1], LossLayer)

    def conv_mask_layers(self) -> list[tuple[int, ConvMask]]:
        """(0-based layer index, module) of every conv_mask layer."""
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, ConvMask)]

    def matconvnet_params(self) -> list[ParamInfo]:
        """Every weight with its MatConvNet learningRate / weightDecay multiplier (1 when missing)."""
        out = []
        attr_names = ("weight", "bias", "beta")
        for i, layer in enumerate(self.layers):
            for j, p in enumerate(layer.weights()):
                lr = layer.learning_rate[j] if j < len(layer.learning_rate) else 1.0
                wd = layer.weight_decay[j] if j < len(layer.weight_decay) else 1.0
                attr = attr_names[j] if j < 3 else str(j)
                if isinstance(layer, MatConv) and layer.bias is None and j > 0:
                    attr = str(j)
                out.append(ParamInfo(i, j, f"layers.{i}.{attr}", p, float(lr), float(wd)))
        return out

    # ---------------------------------------------------------------- running
    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"SimpleNN: expected an N x C x H x W tensor, got {getattr(x, 'shape', type(x))}")
        if self.input_guard and not bool((x < -10).any()):
            raise InputGuardError(
                "SimpleNN: no input value is below -10, so the data mean was probably not subtracted "
                "(our_vl_simplenn.m stops here with 'Errors in input'); subtract the mean image, or "
                "turn the check off with SimpleNN(..., input_guard=False) / net.input_guard = False")

    def run(self, x: torch.Tensor, context: FilterLossContext | None = None, upto: int | None = None) -> list[torch.Tensor]:
        """res[0] = x, res[i] = output of layer i (1-based, MATLAB's res(i+1).x); stops after layer
        `upto`. Without a context the run stops before the loss layer (which needs the labels);
        conv_mask layers get the context. Autograd flows through the result."""
        self.check_input(x)
        n = len(self.layers)
        if upto is None:
            upto = n if (context is not None or not self.has_loss_layer) else n - 1
        if not 0 <= upto <= n:
            raise ValueError(f"SimpleNN.run: upto must lie in 0..{n}, got {upto}")
        res = [x]
        for i in range(upto):
            layer = self.layers[i]
            if isinstance(layer, LossLayer):
                if context is None:
                    raise ValueError(f"SimpleNN.run: layer {i + 1} ({layer.layer_type}) needs labels: pass a FilterLossContext")
                res.append(layer(res[-1], context.labels))
            elif isinstance(layer, ConvMask):
                res.append(layer(res[-1], context))
            else:
                res.append(layer(res[-1]))
        return res

    def forward(self, x: torch.Tensor, context: FilterLossContext | None = None) -> torch.Tensor:
        """N x C x H x W in, the prediction out (the input of the loss layer, N x L x 1 x 1)."""
        upto = len(self.layers) - 1 if self.has_loss_layer else len(self.layers)
        return self.run(x, context, upto=upto)[-1]

    def loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss layer on the prediction, summed over the batch as the original."""
        if not self.has_loss_layer:
            raise ValueError("SimpleNN.loss: the net has no loss layer")
        return self.layers[-1](prediction, labels)


# ------------------------------------------------------------------ the SimpleNN-style run
@dataclass
class SimpleNNRes:
    """our_vl_simplenn's `res` in MATLAB layout: x, dzdx, dzdw per res(i), i = 1..n+1."""

    x: list[np.ndarray]
    dzdx: list[np.ndarray]
    dzdw: list[Any]

    def __iter__(self):
        """`res_x, res_dzdx, res_dzdw = simplenn_res(...)`."""
        return iter((self.x, self.dzdx, self.dzdw))


def _to_matlab(t: torch.Tensor) -> np.ndarray:
    if t.dim() == 0:
        return np.asarray(t.detach().cpu().numpy(), dtype=np.float32).reshape(1, 1)
    return maps_to_matlab(t)


def _weight_grads(layer: nn.Module) -> list[np.ndarray]:
    out = []
    for j, p in enumerate(layer.weights()):
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out.append(filters_to_matlab(g) if j == 0 else vector_to_matlab(g))
    return out


def simplenn_res(net: SimpleNN, x: np.ndarray, dzdy: Any = None, mode: str = "normal",
                 context: FilterLossContext | None = None) -> SimpleNNRes:
    """A run of `net` shown as our_vl_simplenn(net, x, dzdy, [], 'mode', mode) returns it.

    A view onto the real modules: the forward is `net.run`, the backward PyTorch autograd (with
    retain_grad on every res), nothing is recomputed here. x: H x W x C x N (MATLAB layout);
    dzdy: the derivative at the loss (1), or None / empty for no backward. Returns res.x, and
    res.dzdx, res.dzdw (the cells {dW (H x W x IN x OUT), db (OUT x 1)[, dbeta (IN x 1)]} of
    layers with weights, [] elsewhere); without a backward every dzdx and dzdw is [] (0 x 0).
    The parameters' .grad are overwritten.
    """
    if mode not in ("normal", "test"):
        raise ValueError(f"simplenn_res: unknown mode {mode!r} ('normal' or 'test')")
    backward = dzdy is not None and np.asarray(dzdy).size > 0
    net.train(mode == "normal")
    xt = maps_to_torch(x).to(next(net.parameters()).device)
    if backward:
        xt.requires_grad_(True)
        for p in net.parameters():
            p.grad = None
    with torch.set_grad_enabled(backward):
        res = net.run(xt, context, upto=len(net.layers) if context is not None else None)
        if backward:
            for r in res:
                if r.requires_grad:
                    r.retain_grad()
            d = torch.as_tensor(np.asarray(dzdy, dtype=np.float32), device=res[-1].device).reshape(res[-1].shape)
            res[-1].backward(d)
    empty = np.zeros((0, 0))
    out = SimpleNNRes([_to_matlab(r) for r in res], [], [])
    if not backward:
        out.dzdx = [empty] * len(res)
        out.dzdw = [empty] * len(res)
    else:
        for r in res[:-1]:
            out.dzdx.append(_to_matlab(r.grad) if r.grad is not None else _to_matlab(torch.zeros_like(r)))
        out.dzdx.append(np.asarray(dzdy, dtype=np.float32).reshape(1, 1) if np.asarray(dzdy).size == 1
                        else np.asarray(dzdy, dtype=np.float32))
        for layer in net.layers:
            out.dzdw.append(_weight_grads(layer) if layer.weights() else empty)
        out.dzdw.append(empty)
    return out
