"""The MatConvNet family: the four ICNN networks (and 'tiny', 'alexnet-narrow'), built the way
network_init.m builds them.

Ports `tool/main/network_init.m`, `tool/nets/{vgg_vd_16,alexnet,vgg_m,vgg_s}.m` and
`tool/basic_net_functions/{add_block,add_block_mask,add_dropout}.m` (the layers they add:
`reproduce.models.head_blocks`).

A network = a pretrained trunk (a MatConvNet ImageNet model cut as tool/nets/*.m cut it:
`layers(1:end-7)`, its last conv at learning rates [1 5]) + the ICNN head, as one table per
model (`reproduce.models.registry.MODELS`):

    conv_mask '6' (3x3, pad 1) + relu, max pool, conv_mask '7' (fc, k x k) + relu, dropout,
    conv '8' (1x1) + relu, dropout, conv '9' (1x1, label_num outputs), loss 'ourloss_logistic'

New weights ~ N(0, 0.01^2) (init_weight.m 'gaussian'), biases 0, beta 2, filter type 1 (all
parts: partRate 1, textureRate 0), mag 0.1, lossWeight 0.02, learning rates [1 2 (0.05)], weight
decays [1 0 (0)], `posTemp` sized from the data size at the layer; a block is named 'fc<id>'
when its filter covers the whole input map (our_vl_simplenn_display's data size), else
'conv<id>'. Dropout layers take the caller's rate.

'tiny' is not in the original: a 3-conv trunk (16/32/64 channels, for 64 x 64 input: the
conv_mask maps are 16 x 16) with the same head (64 channels, fc 128), for CPU demos and tests;
lrMag 15 (`TINY_LR_MAG`: the largest of 10 / 15 / 21 / 30 at which its ordinary counterpart
still learns).
Without a pretrained model the trunk is random (He / MatConvNet 'xavierimproved' init; a
warning says so for the four ImageNet models). The tiny net's head is also initialised
'xavierimproved' (classifier / 10, as network_init.m does for that method): with a random trunk
and the original N(0, 0.01^2) head, the filter loss's input gradient at conv6 is ~40x the
classification gradient at the start and the net does not learn its classes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from legacy_compat.simplenn import LayerSpec, quad
from reproduce.layers.geometry import layer_output_sizes
from reproduce.models.head_blocks import BlockShape, conv_mask_spec, conv_spec
from reproduce.models.network_request import FamilyNet, NetworkRequest
from reproduce.models.pretrained_files import load_pretrained
from reproduce.models.registry import ModelDef, init_weight, model_def

__all__ = ["build_matconvnet", "build_icnn_specs", "trunk_specs", "new_generator"]


# ------------------------------------------------------------------ the trunk
def new_generator(seed: int | None) -> torch.Generator:
    """A private generator: seeded, or from OS entropy (the global RNG is left alone)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _row_spec(row: tuple, gen: torch.Generator | None) -> LayerSpec:
    kind, name = row[0], row[1]
    if kind == "conv":
        _, _, kh, kw, cin, cout, stride, pad = row
        w = init_weight("xavierimproved", kh, kw, cin, cout, gen) if gen is not None else torch.zeros(cout, cin, kh, kw)
        return LayerSpec("conv", name, [w, torch.zeros(cout)],
                         {"pad": quad(pad), "stride": (stride, stride), "dilate": (1, 1)})
    if kind == "relu":
        return LayerSpec("relu", name, [], {"leak": 0.0})
    if kind == "lrn":
        return LayerSpec("lrn", name, [], {"param": tuple(float(v) for v in row[2])})
    if kind == "pool":
        _, _, size, stride, pad = row
        return LayerSpec("pool", name, [], {"pool": (size, size), "stride": (stride, stride), "pad": quad(pad),
                                            "method": "max"})
    if kind == "softmax":
        return LayerSpec("softmax", name, [], {})
    raise ValueError(f"unknown trunk row {row}")


def trunk_specs(model: str, seed: int | None = None, cut: bool = True,
                generator: torch.Generator | None = None) -> list[LayerSpec]:
    """The model's ImageNet layer list with random weights (He init), cut like tool/nets/*.m."""
    md = model_def(model)
    rows = list(md.trunk[:len(md.trunk) - md.cut] if cut else md.trunk)
    gen = generator if generator is not None else new_generator(seed)
    return [_row_spec(r, gen) for r in rows]


def _meta_image_size(meta: dict) -> int | None:
    try:
        size = np.asarray(meta["normalization"]["imageSize"]).reshape(-1)
        return int(size[0])
    except (KeyError, TypeError, IndexError):
        return None


def _tidy(spec: LayerSpec) -> LayerSpec:
    """vl_simplenn_tidy's defaults for a pretrained layer (learningRate / weightDecay ones, pads ...)."""
    f = spec.fields
    if spec.weights:
        f.setdefault("learningRate", (1.0,) * len(spec.weights))
        f.setdefault("weightDecay", (1.0,) * len(spec.weights))
    if spec.type in ("conv", "conv_mask"):
        f.setdefault("pad", (0, 0, 0, 0))
        f.setdefault("stride", (1, 1))
        f.setdefault("dilate", (1, 1))
    elif spec.type == "pool":
        f.setdefault("pad", (0, 0, 0, 0))
        f.setdefault("stride", (1, 1))
        f.setdefault("method", "max")
    elif spec.type == "relu":
        f.setdefault("leak", 0.0)
    elif spec.type == "dropout":
        f.setdefault("rate", 0.5)
    return spec


def _network_trunk(row: ModelDef, pretrained: str | Path | Sequence[LayerSpec] | None,
                   gen: torch.Generator) -> tuple[list[LayerSpec], dict]:
    """tool/nets/<model>.m's trunk: the pretrained model's layers cut as the original cuts them (from
    a model file, with its `net.meta`, or from LayerSpecs), or random layers (warned for the ImageNet
    models). Returns (trunk specs, the file's meta or {})."""
    if pretrained is None:
        if row.cut:
            warnings.warn(f"network_init({row.name!r}): no pretrained model given ({row.pretrained_file}); the "
                          f"trunk is randomly initialised, so results will not match the paper's", stacklevel=5)
        return trunk_specs(row.name, generator=gen), {}
    file_meta: dict = {}
    if isinstance(pretrained, (str, Path)):
        full, file_meta = load_pretrained(pretrained)
    else:
        full = [LayerSpec(s.type, s.name, [w.clone() for w in s.weights], dict(s.fields)) for s in pretrained]
    if len(full) <= row.cut + 1:
        raise ValueError(f"network_init({row.name!r}): the pretrained model has {len(full)} layers, too few to cut "
                         f"{row.cut}")
    return full[:len(full) - row.cut], file_meta


# ------------------------------------------------------------------ the head
@dataclass
class _Head:
    """The layer list network_init.m grows (add_block*.m append to `net.layers`): the data size at
    each new layer comes from the layers already there, for `image_size` input."""

    specs: list[LayerSpec]
    image_size: int
    gen: torch.Generator
    init: str

    def _name(self, prefix_id: str, shape: BlockShape) -> str:
        """add_block.m: 'fc<id>' when the filter covers the current data size, else 'conv<id>'."""
        size = layer_output_sizes(self.specs, self.image_size)[-1]
        return f"{'fc' if (shape.h, shape.w) == size else 'conv'}{prefix_id}"

    def add_block_mask(self, ident: str, shape: BlockShape) -> None:
        """add_block_mask.m: conv_mask + relu."""
        size = layer_output_sizes(self.specs, self.image_size)[-1]
        self.specs.append(conv_mask_spec(self._name(ident, shape), shape, size, shape.draw_filters(self.init, self.gen)))
        self.specs.append(LayerSpec("relu", f"relu{ident}", [], {"leak": 0.0}))

    def add_block(self, ident: str, shape: BlockShape) -> None:
        """add_block.m: conv + relu."""
        self.specs.append(conv_spec(self._name(ident, shape), shape, shape.draw_filters(self.init, self.gen)))
        self.specs.append(LayerSpec("relu", f"relu{ident}", [], {"leak": 0.0}))

    def add_dropout(self, ident: str, rate: float) -> None:
        """add_dropout.m."""
        self.specs.append(LayerSpec("dropout", f"dropout{ident}", [], {"rate": float(rate)}))


def _out_channels(specs: Sequence[LayerSpec]) -> int:
    for s in reversed(specs):
        if s.type in ("conv", "conv_mask") and s.weights:
            return int(s.weights[0].shape[0])
    return 3


def build_icnn_specs(trunk: list[LayerSpec], model: str, label_num: int, dropout_rate: float, image_size: int,
                     seed: int | None = None, weight_init: str | None = None,
                     generator: torch.Generator | None = None) -> list[LayerSpec]:
    """tool/nets/<model>.m + network_init.m on an already cut trunk: the head, loss, rates.

    weight_init: network_init.m's opts.weightInitMethod for the new layers (default: the
    model's, 'gaussian' for the four ImageNet models); with 'xavier' / 'xavierimproved' the
    classifier's weights are divided by 10, as network_init.m does.
    """
    md = model_def(model)
    init = (weight_init or md.head_init).lower()
    specs = [_tidy(s) for s in trunk]
    # net.layers{end-1}.learningRate = [1, 5]  (the last pretrained conv)
    specs[-2].fields["learningRate"] = (1.0, 5.0)
    head = _Head(specs, image_size, generator if generator is not None else new_generator(seed), init)
    c = md.channel_num
    head.add_block_mask("6", BlockShape(3, 3, _out_channels(specs), c, 1, 1))
    pname, psize, pstride, ppad = md.pool
    specs.append(LayerSpec("pool", pname, [], {"method": "max", "pool": (psize, psize), "stride": (pstride, pstride),
                                               "pad": quad(ppad)}))
    k = md.fc7_kernel or layer_output_sizes(specs, image_size)[-1][0]
    head.add_block_mask("7", BlockShape(k, k, c, md.fc_channels, 1, 0))
    id7, id8 = md.ids
    head.add_dropout(id7, dropout_rate)
    head.add_block(id8, BlockShape(1, 1, md.fc_channels, md.fc_channels, 1, 0))
    head.add_dropout(id8, dropout_rate)
    head.add_block("9", BlockShape(1, 1, md.fc_channels, label_num, 1, 0))
    specs.pop()                                              # net.layers(end) = []: no relu on the classifier
    if init in ("xavier", "xavierimproved"):                 # network_init.m's "final touches"
        specs[-1].weights[0] = specs[-1].weights[0] / 10
    specs.append(LayerSpec("ourloss_logistic", "loss", [], {}))
    for s in specs:                                          # network_init: every dropout at the caller's rate
        if s.type == "dropout":
            s.fields["rate"] = float(dropout_rate)
    return specs


def build_matconvnet(row: ModelDef, request: NetworkRequest) -> FamilyNet:
    """tool/nets/<model>.m + network_init.m's layer list for a MatConvNet-family row: the trunk (from
    `request.pretrained`: a model file or its LayerSpecs, the full list, cut here as the original cuts
    it; None: random, warned for the ImageNet models), then the head. The input size is the request's,
    else the model file's meta (normalization.imageSize), else the row's; the file's normalization
    goes into the net's meta."""
    gen = new_generator(request.seed)
    trunk, file_meta = _network_trunk(row, request.pretrained, gen)
    size = int(request.image_size or _meta_image_size(file_meta) or row.image_size)
    specs = build_icnn_specs(trunk, row.name, request.label_num, request.dropout_rate, size,
                             weight_init=request.weight_init, generator=gen)
    meta = {"normalization": file_meta["normalization"]} if "normalization" in file_meta else {}
    return FamilyNet(specs, len(trunk), size, meta)
