"""Layer geometry of a SimpleNN net: data sizes, receptive-field centres, feature -> image positions.

Ports
- the `dataSize` part of `tool/main/our_vl_simplenn_display.m` (`layer_output_sizes`): the spatial
  size of every layer's output, as `add_block.m` / `add_block_mask.m` use it to name a block 'fc'
  or 'conv' and to size `posTemp`;
- `tool/main/getConvNetPara.m` (`get_conv_net_para`): per conv layer (conv, conv_aNet, conv_mask)
  the stride, receptive-field size and centre of its output on the input image;
- `tool/main/x2p_.m` (`x2p`): a position on a conv layer's output map -> a position on the image.

The functions read a `reproduce.network.SimpleNN` or a list of layers (`GeometryNet`: its
modules, or the `LayerSpec`s reproduce.models builds before a SimpleNN exists). Positions are MATLAB's: 1-based (row h, column w), like the
original's truth files and like `x2p_`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, Union

import numpy as np

from legacy_compat.simplenn import LayerSpec, pair, quad

__all__ = ["LayerGeometry", "layer_geometry", "layer_output_sizes", "ConvNetPara",
           "get_conv_net_para", "x2p", "CONV_TYPES"]

# getConvNetPara.m: the layer types it treats as convolutions; plus 'torchvision' (reproduce.tv_blocks: a
# piece of a ResNet / DenseNet trunk, counted as the convolution equivalent to its main path)
CONV_TYPES = ("conv", "conv_aNet", "conv_mask", "torchvision")


@dataclass(frozen=True)
class LayerGeometry:
    """What the geometry functions need of one layer (MATLAB conventions).

    kernel: filter (kh, kw) for conv types, pool window for pools, (1, 1) otherwise (the
    filter size before dilation); dilate (y, x); pad (top, bottom, left, right); stride (y, x).
    """

    type: str
    kernel: tuple[int, int] = (1, 1)
    dilate: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    stride: tuple[int, int] = (1, 1)

    @property
    def support(self) -> tuple[int, int]:
        """our_vl_simplenn_display's `support`: (k - 1) * dilate + 1 for convs, the window for pools."""
        if self.type in ("conv", "conv_mask"):
            return tuple((max(k, 1) - 1) * d + 1 for k, d in zip(self.kernel, self.dilate))  # type: ignore[return-value]
        if self.type == "pool":
            return self.kernel
        return (1, 1)




class HasGeometry(Protocol):
    """A layer module of reproduce.network (or reproduce.tv_blocks): it states its own geometry."""

    def geometry(self) -> LayerGeometry: ...


class LayerStack(Protocol):
    """A net whose `layers` state their geometry: reproduce.network.SimpleNN."""

    layers: Sequence[HasGeometry]


#: One layer as the geometry reads it: a module, a ready LayerGeometry, or a LayerSpec (the
#: MATLAB-side description, read while reproduce.models builds a net's specs, as
#: our_vl_simplenn_display.m reads net.layers).
GeometryLayer = Union[LayerGeometry, HasGeometry, LayerSpec]
#: A net: a SimpleNN, or its layers in order.
GeometryNet = Union[LayerStack, Sequence[GeometryLayer]]


def layer_geometry(layer: GeometryLayer) -> LayerGeometry:
    """The geometry of one layer: a layer module of reproduce.network, a LayerSpec, or a ready LayerGeometry."""
    if isinstance(layer, LayerGeometry):
        return layer
    if hasattr(layer, "geometry") and callable(layer.geometry):      # reproduce.network modules
        return layer.geometry()
    ltype = getattr(layer, "type", None)
    if ltype is None:
        raise TypeError(f"cannot read the geometry of a {type(layer).__name__} (expected a LayerSpec or a layer module)")
    fields = getattr(layer, "fields", {})
    pad = quad(fields.get("pad", 0))
    stride = pair(fields.get("stride", 1))
    if ltype == "torchvision":       # its main path's equivalent convolution, stored by TorchvisionBlock.to_spec
        return LayerGeometry("conv", pair(fields["kernel"]), (1, 1), pad, stride)
    if ltype in CONV_TYPES:
        w = layer.weights[0] if getattr(layer, "weights", None) else None
        kernel = (int(w.shape[2]), int(w.shape[3])) if w is not None else (1, 1)
        return LayerGeometry(ltype, kernel, pair(fields.get("dilate", 1)), pad, stride)
    if ltype == "pool":
        return LayerGeometry(ltype, pair(fields["pool"]), (1, 1), pad, stride)
    return LayerGeometry(ltype, (1, 1), (1, 1), pad, stride)


def _layers_of(net: GeometryNet) -> list[GeometryLayer]:
    if hasattr(net, "layers") and not isinstance(net, (list, tuple)):
        return list(net.layers)
    return list(net)


def layer_output_sizes(net: GeometryNet, input_size: Sequence[int] | int) -> list[tuple[int, int]]:
    """Spatial data sizes as our_vl_simplenn_display.m computes them.

    Returns [(H, W) of the input, (H, W) after layer 1, ...]: entry i is `info.dataSize(1:2, i)`
    for i = 1..numel(layers)+1, with, for every layer,
    size_out = floor((size_in + pad_a + pad_b - support) / stride) + 1.
    """
    if isinstance(input_size, (int, np.integer)):
        h, w = int(input_size), int(input_size)
    else:
        h, w = int(input_size[0]), int(input_size[1])
    sizes = [(h, w)]
    for layer in _layers_of(net):
        g = layer_geometry(layer)
        sh, sw = g.support
        h = math.floor((h + g.pad[0] + g.pad[1] - sh) / g.stride[0]) + 1
        w = math.floor((w + g.pad[2] + g.pad[3] - sw) / g.stride[1]) + 1
        sizes.append((h, w))
    return sizes


@dataclass
class ConvNetPara:
    """getConvNetPara's `convnet`, plus the 0-based indices of the conv layers.

    target_layers: MATLAB's `targetLayers` = (1-based conv layer index) + 1, i.e. the 1-based
    `res` index of each conv layer's output; in reproduce.network.SimpleNN.run terms,
    `run(x)[target_layers[k] - 1]` is that output.
    target_scale / target_stride / target_center: receptive-field size, stride and the centre of
    output position 1 on the input image (1-based image coordinates), per conv layer.
    conv_layers: 0-based indices of the conv layers in the layer list.
    """

    target_layers: np.ndarray
    target_scale: np.ndarray
    target_stride: np.ndarray
    target_center: np.ndarray
    conv_layers: list[int] = field(default_factory=list)

    def as_matlab(self) -> dict[str, np.ndarray]:
        """The fields under MATLAB's names, as 1 x n double rows."""
        return {"targetLayers": self.target_layers.reshape(1, -1).astype(np.float64),
                "targetScale": self.target_scale.reshape(1, -1),
                "targetStride": self.target_stride.reshape(1, -1),
                "targetCenter": self.target_center.reshape(1, -1)}


def get_conv_net_para(net: GeometryNet) -> ConvNetPara:
    """Port of tool/main/getConvNetPara.m.

    For conv layer i (in the order of the list) with filter size `scale` (rows), pad `pad` (top)
    and stride `stride` (rows), and, between conv i-1 and conv i, the LAST pool layer met (size,
    stride, top pad; none: IsPool = 0):
        stride_i = (1 + IsPool (poolStride - 1)) stride stride_{i-1}
        scale_i  = scale_{i-1} + IsPool (poolSize - 1) stride_{i-1} + stride_i (scale - 1)
        center_i = (scale - 2 pad - 1) poolStride stride_{i-1} / 2
                   + center_{i-1} + stride_{i-1} (poolSize - 2 poolPad - 1) / 2     (pool)
                 = (scale - 2 pad - 1) stride_{i-1} / 2 + center_{i-1}             (no pool)
    and for the first conv: stride, scale, (1 + scale - 2 pad) / 2.
    """
    geoms = [layer_geometry(layer) for layer in _layers_of(net)]
    conv_layers = [i for i, g in enumerate(geoms) if g.type in CONV_TYPES]
    n = len(conv_layers)
    stride = np.zeros(n)
    scale = np.zeros(n)
    center = np.zeros(n)
    for i, li in enumerate(conv_layers):
        g = geoms[li]
        pad, ksize, s = g.pad[0], g.kernel[0], g.stride[0]
        if i == 0:
            stride[i] = s
            scale[i] = ksize
            center[i] = (1 + ksize - pad * 2) / 2
            continue
        is_pool, pool_stride, pool_size, pool_pad = False, 0, 0, 0
        for j in range(conv_layers[i - 1] + 1, li):
            if geoms[j].type == "pool":
                is_pool = True
                pool_size, pool_stride, pool_pad = geoms[j].kernel[0], geoms[j].stride[0], geoms[j].pad[0]
        stride[i] = (1 + is_pool * (pool_stride - 1)) * s * stride[i - 1]
        scale[i] = scale[i - 1] + is_pool * (pool_size - 1) * stride[i - 1] + stride[i] * (ksize - 1)
        if is_pool:
            center[i] = ((ksize - pad * 2 - 1) * pool_stride * stride[i - 1] / 2
                         + (center[i - 1] + stride[i - 1] * (pool_size - 2 * pool_pad - 1) / 2))
        else:
            center[i] = (ksize - pad * 2 - 1) * stride[i - 1] / 2 + center[i - 1]
    return ConvNetPara(np.asarray(conv_layers, dtype=np.int64) + 2, scale, stride, center, conv_layers)


def x2p(x_hw: Any, layer_id: int, para: ConvNetPara) -> np.ndarray:
    """Port of tool/main/x2p_.m: centre + (x - 1) * stride.

    x_hw: positions on the output map of conv layer `layer_id` (MATLAB's layerID: 1-based index
    into the conv layers, e.g. 14 for the conv_mask layer of vgg-vd-16), 1-based, any shape
    (e.g. 2 x P rows [h; w]). Returns the 1-based image positions, same shape, float64.
    """
    if not 1 <= int(layer_id) <= len(para.target_stride):
        raise IndexError(f"x2p: layer_id {layer_id} is not a conv layer index in 1..{len(para.target_stride)}")
    k = int(layer_id) - 1
    return para.target_center[k] + (np.asarray(x_hw, dtype=np.float64) - 1) * para.target_stride[k]
