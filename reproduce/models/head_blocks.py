"""The new layers of every ICNN head, for both families: add_block_mask.m's conv_mask and add_block.m's
conv, with the learning rates, weight decays and conv_mask fields the originals give them.

Ports the layer each of `tool/basic_net_functions/{add_block,add_block_mask}.m` adds (the relu after
it is the caller's): new filters drawn by init_weight.m (the caller's generator and method), biases
0, beta 2 (alphaInit), filter type 1 (all parts: partRate 1, textureRate 0), mag 0.1, lossWeight
0.02, learning rates [1 2 (0.05)], weight decays [1 0 (0)], `posTemp` sized from the data size at
the layer's input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from legacy_compat.simplenn import LayerSpec
from reproduce.layers.activation_mask import pos_templates
from reproduce.models.registry import ALPHA_INIT, LOSS_WEIGHT, MAG, init_weight

__all__ = ["BlockShape", "conv_mask_spec", "conv_spec"]


@dataclass(frozen=True)
class BlockShape:
    """add_block.m's h, w, in, out, stride, pad: an h x w filter from `cin` to `cout` channels."""

    h: int
    w: int
    cin: int
    cout: int
    stride: int = 1
    pad: int = 0

    def draw_filters(self, method: str, gen: torch.Generator) -> torch.Tensor:
        """init_weight.m's filters (OUT x IN x h x w) for this shape."""
        return init_weight(method, self.h, self.w, self.cin, self.cout, gen)

    def conv_fields(self) -> dict:
        return {"stride": (self.stride, self.stride), "pad": (self.pad,) * 4, "dilate": (1, 1)}


def conv_mask_spec(name: str, shape: BlockShape, map_size: tuple[int, int], filters: torch.Tensor) -> LayerSpec:
    """add_block_mask.m's conv_mask layer for a `map_size` (H, W) input: `filters`, zero biases, beta 2."""
    px, py = pos_templates(shape.cin, map_size[0], map_size[1])
    weights = [filters, torch.zeros(shape.cout), torch.full((shape.cin,), ALPHA_INIT)]
    return LayerSpec("conv_mask", name, weights,
                     {**shape.conv_fields(), "learningRate": (1.0, 2.0, 0.05), "weightDecay": (1.0, 0.0, 0.0),
                      "posTemp": (px.numpy(), py.numpy()), "lossWeight": LOSS_WEIGHT, "sliceMag": None,
                      "filter": np.ones(shape.cin, dtype=np.int64), "mag": MAG})


def conv_spec(name: str, shape: BlockShape, filters: torch.Tensor) -> LayerSpec:
    """add_block.m's conv layer: `filters`, zero biases, learning rates [1 2], weight decays [1 0]."""
    return LayerSpec("conv", name, [filters, torch.zeros(shape.cout)],
                     {**shape.conv_fields(), "learningRate": (1.0, 2.0), "weightDecay": (1.0, 0.0)})
