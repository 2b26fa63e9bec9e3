"""Small tensor operations the layers share.

`conv2d_padded`: MatConvNet's vl_nnconv with its [top bottom left right] padding, which may be
uneven (the original's pool/conv `pad` of 4 values); torch's conv2d pads evenly only, so uneven
padding is applied with F.pad first (zeros, as vl_nnconv pads).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv2d_padded", "is_symmetric"]


def is_symmetric(pad: tuple[int, int, int, int]) -> bool:
    """Whether a [top bottom left right] padding is the same on both sides of each axis."""
    return pad[0] == pad[1] and pad[2] == pad[3]


def conv2d_padded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: tuple[int, int, int, int],
                  stride: tuple[int, int], dilate: tuple[int, int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """vl_nnconv(x, weight, bias, 'pad', [t b l r], 'stride', ..., 'dilate', ...) in NCHW."""
    t, b, l, r = pad
    if is_symmetric(pad):
        return F.conv2d(x, weight, bias, stride, (t, l), dilate, groups)
    return F.conv2d(F.pad(x, (l, r, t, b)), weight, bias, stride, 0, dilate, groups)
