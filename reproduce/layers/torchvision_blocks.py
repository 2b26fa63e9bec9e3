"""torchvision's ResNet-18, ResNet-50 and DenseNet-121 trunks, and the SimpleNN layer that holds a piece of one.

Not in the original MATLAB code (it has only MatConvNet VGGs and AlexNet): the TPAMI paper and the
other PyTorch port (ada-shen/ICNN, model/resnet_18, resnet_50, densenet_121) put conv_mask layers
into these networks. The architectures are written out here, module for module as torchvision
0.28 defines them (`torchvision/models/resnet.py`, `densenet.py`: the same submodule names,
shapes, strides, paddings and initialisation), so that a torchvision `state_dict` file loads key
for key, without importing torchvision (its wheels on PyPI are CUDA builds that cannot load their
operators beside the pinned CPU torch).

A trunk is cut into pieces that map one feature map to the next: ResNet's stem (conv1, bn1, relu,
maxpool) and each residual block ('layer2.0' ...); DenseNet's stem (conv0 .. pool0), each dense
block (a dense block's layers take the list of all earlier maps, so the whole block is one
piece), each transition, and norm5 + relu. A piece becomes one SimpleNN layer, `TorchvisionBlock`
(layer type 'torchvision'), so that the rest of the package (training with the filter loss,
location stability, drawings, checkpoints) runs on it as on the MatConvNet layers.

Geometry (for getConvNetPara / x2p_ and the data sizes): a piece reports the single convolution
that is equivalent to its main path, i.e. its convolutions and pools in order, composed as
    k = k1 + (k2 - 1) s1,   s = s1 s2,   p = p1 + p2 s1      (kernel k after dilation, stride s, pad p)
which gives exactly the output size, the stride and the centre of the first output position. The
skip connections are left out: ResNet's identity / 1x1-stride-s downsample and DenseNet's
concatenation of the block input have the same stride and the same centres as the main path and a
receptive field inside the main path's, so the main path is the (largest) analytic receptive field.
"""
from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch import nn

from legacy_compat.simplenn import LayerSpec, pair
from reproduce.layers.geometry import LayerGeometry

__all__ = ["ARCHS", "TorchvisionBlock", "arch_parts", "IMAGENET_STD", "main_path_geometry",
           "rename_legacy_densenet_keys"]

# torchvision's ImageNet normalisation std (RGB, on 0..1 pixels). The package's images are 0..255 minus
# the imdb's dataMean, so the stem divides channel c by 255 * std[c] to give the pretrained weights the
# input scale they were trained on (the mean is already subtracted).
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ ResNet (torchvision/models/resnet.py)
def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, pad, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18's block: conv3x3(stride) bn relu conv3x3 bn, + identity or downsample, relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50's block (torchvision's v1.5: the stride on the 3x3 conv): 1x1, 3x3(stride), 1x1 x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _resnet_parts(block: type, layers: Sequence[int]) -> tuple[OrderedDict, dict[str, int]]:
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=_conv(3, 64, 7, 2, 3), bn1=nn.BatchNorm2d(64), relu=nn.ReLU(),
        maxpool=nn.MaxPool2d(3, 2, 1))
    channels = {"conv1": 64, "bn1": 64}
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            stride = 2 if (b == 0 and li > 1) else 1
            down = None
            if b == 0 and (stride != 1 or inplanes != planes * block.expansion):
                down = nn.Sequential(_conv(inplanes, planes * block.expansion, 1, stride),
                                     nn.BatchNorm2d(planes * block.expansion))
            parts[f"layer{li}.{b}"] = block(inplanes, planes, stride, down)
            inplanes = planes * block.expansion
            channels[f"layer{li}.{b}"] = inplanes
    for m in parts.values():                      # torchvision ResNet.__init__'s initialisation
        for sub in m.modules():
            if isinstance(sub, nn.Conv2d):
                nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(sub, nn.BatchNorm2d):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)
    return parts, channels


# ------------------------------------------------------------------ DenseNet (torchvision/models/densenet.py)
class DenseLayer(nn.Module):
    """norm1 relu1 conv1 (1x1, bn_size * growth) norm2 relu2 conv2 (3x3, growth) on the concatenated inputs."""

    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv(cin, bn_size * growth, 1)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv(bn_size * growth, growth, 3, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """denselayer1..n; each takes every earlier map; the output concatenates them all."""

    def __init__(self, n: int, cin: int, growth: int, bn_size: int):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(OrderedDict(norm=nn.BatchNorm2d(cin), relu=nn.ReLU(), conv=_conv(cin, cout, 1),
                                     pool=nn.AvgPool2d(2, 2)))


def _densenet_parts(blocks: Sequence[int] = (6, 12, 24, 16), growth: int = 32, init: int = 64,
                    bn_size: int = 4) -> tuple[OrderedDict, dict[str, int]]:
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    parts["features.conv0"] = _conv(3, init, 7, 2, 3)
    parts["features.norm0"] = nn.BatchNorm2d(init)
    parts["features.relu0"] = nn.ReLU()
    parts["features.pool0"] = nn.MaxPool2d(3, 2, 1)
    channels = {"features.conv0": init, "features.norm0": init}
    c = init
    for i, n in enumerate(blocks, start=1):
        parts[f"features.denseblock{i}"] = DenseBlock(n, c, growth, bn_size)
        c += n * growth
        channels[f"features.denseblock{i}"] = c
        if i != len(blocks):
            parts[f"features.transition{i}"] = Transition(c, c // 2)
            c //= 2
            channels[f"features.transition{i}"] = c
    parts["features.norm5"] = nn.BatchNorm2d(c)
    channels["features.norm5"] = c
    parts["relu"] = nn.ReLU()                     # DenseNet.forward's F.relu after the features
    for m in parts.values():                      # torchvision DenseNet.__init__'s initialisation
        for sub in m.modules():
            if isinstance(sub, nn.Conv2d):
                nn.init.kaiming_normal_(sub.weight)
            elif isinstance(sub, nn.BatchNorm2d):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)
    return parts, channels


ARCHS: dict[str, Callable[[], tuple[OrderedDict, dict[str, int]]]] = {
    "resnet18": lambda: _resnet_parts(BasicBlock, (2, 2, 2, 2)),
    "resnet50": lambda: _resnet_parts(Bottleneck, (3, 4, 6, 3)),
    "densenet121": lambda: _densenet_parts(),
}


def arch_parts(arch: str, device: Any = None) -> tuple[OrderedDict, dict[str, int]]:
    """The trunk of torchvision's `arch` (without its classifier) as {torchvision module path: module},
    in forward order, and the output channels of the parts that have channels. device 'meta'
    builds shapes only (no memory, no initialisation)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision architecture {arch!r} (choose from {', '.join(ARCHS)})")
    with torch.device(device or "cpu"):
        return ARCHS[arch]()


@functools.lru_cache(maxsize=None)
def _meta_parts(arch: str) -> OrderedDict:
    """arch_parts on the meta device, built once per architecture (copied before use)."""
    return arch_parts(arch, device="meta")[0]


def rename_legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published DenseNet files name a dense layer's modules 'norm.1', 'conv.2' ...;
    the modules are 'norm1', 'conv2' (torchvision's own loader renames them the same way)."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if "denselayer" in key and len(parts) >= 3 and parts[-3] in ("norm", "relu", "conv") and parts[-2] in ("1", "2"):
            key = ".".join(parts[:-3] + [parts[-3] + parts[-2], parts[-1]])
        out[key] = value
    return out


# ------------------------------------------------------------------ geometry
def _primitive_geometry(m: nn.Module) -> tuple[int, int, int] | None:
    """(kernel after dilation, stride, pad) of a conv or pool, rows; None for other modules."""
    if isinstance(m, nn.Conv2d):
        k, d, s, p = m.kernel_size[0], m.dilation[0], m.stride[0], m.padding[0]
        return (k - 1) * d + 1, s, p
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (pair(v)[0] for v in (m.kernel_size, m.stride, m.padding))
        return k, s, p
    return None


def main_path_geometry(modules: Sequence[nn.Module]) -> tuple[int, int, int]:
    """(k, s, p) of the single convolution equivalent to the convs and pools of `modules` in order,
    leaving out every 'downsample' branch (module docstring)."""
    k, s, p = 1, 1, 0
    for top in modules:
        for name, m in top.named_modules():
            if "downsample" in name.split("."):
                continue
            g = _primitive_geometry(m)
            if g is None:
                continue
            k2, s2, p2 = g
            k, p, s = k + (k2 - 1) * s, p + p2 * s, s * s2
    return k, s, p


# ------------------------------------------------------------------ the SimpleNN layer
class _ScaleInput(nn.Module):
    """x[:, c] / scale[c] (no parameters; not in the state_dict)."""

    def __init__(self, scale: Sequence[float]):
        super().__init__()
        self.register_buffer("scale", torch.tensor([float(v) for v in scale]).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale


class TorchvisionBlock(nn.Module):
    """One piece of a torchvision trunk as a SimpleNN layer (type 'torchvision').

    parts: the torchvision module paths it runs in order (e.g. ('conv1', 'bn1', 'relu',
    'maxpool') or ('layer3.1',)); body: those modules; input_scale: per-channel divisors applied
    first (the stem), or None. weights(): every parameter in `body.parameters()` order, with the
    learning-rate / weight-decay multipliers of `learning_rate` / `weight_decay` (one per weight).
    geometry(): the equivalent convolution of the main path (module docstring).
    """

    layer_type = "torchvision"

    def __init__(self, arch: str, parts: Sequence[str], body: Sequence[nn.Module], out_channels: int, *,
                 input_scale: Sequence[float] | None = None, name: str = "",
                 learning_rate: Sequence[float] | None = None, weight_decay: Sequence[float] | None = None):
        super().__init__()
        self.arch = arch
        self.parts = tuple(parts)
        if len(self.parts) != len(body):
            raise ValueError(f"torchvision layer {name!r}: {len(self.parts)} part names for {len(body)} modules")
        self.body = nn.Sequential(*body)
        self.input_scale = None if input_scale is None else tuple(float(v) for v in input_scale)
        self.scale = _ScaleInput(self.input_scale) if self.input_scale is not None else None
        self.out_channels = int(out_channels)
        self.name = name
        n = len(self.weights())
        self.learning_rate = tuple(float(v) for v in (learning_rate if learning_rate is not None else [1.0] * n))
        self.weight_decay = tuple(float(v) for v in (weight_decay if weight_decay is not None else [1.0] * n))
        self.extra_fields: dict = {}           # the spec's other fields (from_spec), written back by to_spec
        self._geometry = main_path_geometry(list(self.body))

    @classmethod
    def from_parts(cls, arch: str, parts: Sequence[str], modules: dict[str, nn.Module], channels: dict[str, int],
                   **kw) -> "TorchvisionBlock":
        """A layer over `modules[p]` for p in parts (shared, not copied); BatchNorm weights and biases
        learn at rate 1 without decay, conv filters at rate 1 with decay."""
        body = [modules[p] for p in parts]
        out = [channels[p] for p in parts if p in channels][-1]
        lr, wd = [], []
        for m in body:
            for sub in m.modules():
                for _ in sub.parameters(recurse=False):
                    lr.append(1.0)
                    wd.append(0.0 if isinstance(sub, nn.BatchNorm2d) else 1.0)
        return cls(arch, parts, body, out, learning_rate=lr, weight_decay=wd, **kw)

    def weights(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def geometry(self) -> LayerGeometry:
        k, s, p = self._geometry
        return LayerGeometry("conv", (k, k), (1, 1), (p, p, p, p), (s, s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = self.scale(x)
        return self.body(x)

    def torchvision_keys(self) -> dict[str, str]:
        """{our state_dict key under this layer (relative): torchvision's key} for every parameter and buffer."""
        out = {}
        for key in self.body.state_dict():
            index, rest = key.split(".", 1)
            out[f"body.{key}"] = f"{self.parts[int(index)]}.{rest}"
        return out

    # ---------------------------------------------------------------- specs
    def to_spec(self) -> LayerSpec:
        k, s, p = self._geometry
        buffers = {key: b.detach().cpu().clone() for key, b in self.body.named_buffers()}
        fields = dict(self.extra_fields)
        fields.update({"arch": self.arch, "parts": self.parts, "out_channels": self.out_channels,
                       "input_scale": self.input_scale, "buffers": buffers, "kernel": (k, k), "stride": (s, s),
                       "pad": (p, p, p, p), "learningRate": self.learning_rate, "weightDecay": self.weight_decay})
        return LayerSpec("torchvision", self.name, [q.detach().cpu().clone() for q in self.weights()], fields)

    @classmethod
    def from_spec(cls, spec: LayerSpec, copy_weights: bool = True) -> "TorchvisionBlock":
        """Rebuild from a spec written by `to_spec`: the modules are made on the meta device, then get
        the spec's weights and buffers."""
        f = spec.fields
        arch, parts = str(f["arch"]), tuple(str(p) for p in f["parts"])
        modules = _meta_parts(arch)
        missing = [p for p in parts if p not in modules]
        if missing:
            raise ValueError(f"torchvision layer {spec.name!r}: {arch} has no module {', '.join(missing)}")
        body = [copy.deepcopy(modules[p]).to_empty(device="cpu") for p in parts]
        layer = cls(arch, parts, body, int(f["out_channels"]), input_scale=f.get("input_scale"), name=spec.name,
                    learning_rate=f.get("learningRate"), weight_decay=f.get("weightDecay"))
        layer.extra_fields = {k: v for k, v in f.items() if k not in _SPEC_FIELDS}
        params = layer.weights()
        if len(params) != len(spec.weights):
            raise ValueError(f"torchvision layer {spec.name!r}: {len(spec.weights)} weights for {len(params)} parameters")
        with torch.no_grad():
            for j, (q, w) in enumerate(zip(params, spec.weights)):
                w = torch.as_tensor(w, dtype=torch.float32)
                if tuple(w.shape) != tuple(q.shape):
                    raise ValueError(f"torchvision layer {spec.name!r}: weight {j + 1} is {tuple(w.shape)}, "
                                     f"expected {tuple(q.shape)}")
                if copy_weights:
                    q.copy_(w)
                else:
                    q.data = w
            _load_buffers(layer, dict(f.get("buffers") or {}), spec.name)
        return layer

    def extra_repr(self) -> str:
        k, s, p = self._geometry
        return f"{self.name!r}, {self.arch} {'+'.join(self.parts)}, out {self.out_channels}, main path k={k} s={s} p={p}"


_SPEC_FIELDS = ("arch", "parts", "out_channels", "input_scale", "buffers", "kernel", "stride", "pad",
                "learningRate", "weightDecay")


def _load_buffers(layer: TorchvisionBlock, buffers: dict[str, Any], name: str) -> None:
    own = dict(layer.body.named_buffers())
    for key, target in own.items():
        if key not in buffers:
            if key.endswith("num_batches_tracked"):
                target.zero_()
                continue
            raise ValueError(f"torchvision layer {name!r}: its spec has no buffer {key!r}")
        value = torch.as_tensor(buffers[key])
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"torchvision layer {name!r}: buffer {key!r} is {tuple(value.shape)}, "
                             f"expected {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
