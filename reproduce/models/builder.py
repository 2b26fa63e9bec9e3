"""The four ICNN networks (and a tiny one), built the way network_init.m builds them.

Ports `tool/main/network_init.m`, `tool/nets/{vgg_vd_16,alexnet,vgg_m,vgg_s}.m`,
`tool/basic_net_functions/{add_block,add_block_mask,add_dropout,init_weight}.m` and the
training-option adjustments of `learn_icnn_multiclass.m`.

A network = a pretrained trunk (a MatConvNet ImageNet model cut as tool/nets/*.m cut it:
`layers(1:end-7)`, its last conv at learning rates [1 5]) + the ICNN head, as one table per
model (`MODELS`):

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
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from legacy_compat.simplenn import LayerSpec, load_matconvnet_model, quad
from reproduce.layers.activation_mask import pos_templates
from reproduce.layers.geometry import layer_output_sizes
from reproduce.layers.simplenn import SimpleNN
from reproduce.models.registry import (
    ALPHA_INIT,
    INIT_STD,
    LOSS_WEIGHT,
    MAG,
    MODELS,
    ModelDef,
    TrainOpts,
    apply_multiclass_adjustments,
    init_weight,
    model_def,
    plain_cnn_specs,
    set_loss_type,
    train_opts,
    train_opts_multiclass,
)
from reproduce.models.torchvision_nets import network_init_torchvision

__all__ = ["MODELS", "ModelDef", "TrainOpts", "network_init", "plain_cnn_specs", "init_weight", "build_icnn_specs", "train_opts", "train_opts_multiclass",
           "apply_multiclass_adjustments", "trunk_specs", "load_pretrained", "LOSS_WEIGHT", "MAG",
           "ALPHA_INIT", "INIT_STD"]

# ------------------------------------------------------------------ layer specs
def _generator(seed: int | None) -> torch.Generator:
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
    gen = generator if generator is not None else _generator(seed)
    return [_row_spec(r, gen) for r in rows]


def load_pretrained(path: str | Path) -> tuple[list[LayerSpec], dict]:
    """A MatConvNet model file (what tool/nets/*.m loads) -> (LayerSpecs, its `net.meta` as MATLAB
    values), through legacy_compat.simplenn.load_matconvnet_model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained model file not found: {path}")
    specs, meta = load_matconvnet_model(path)
    return specs, meta.raw


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


def _fc_or_conv(h: int, w: int, size: tuple[int, int]) -> str:
    """add_block.m: 'fc' when the filter covers the current data size, else 'conv'."""
    return "fc" if (h == size[0] and w == size[1]) else "conv"


def _add_block_mask(specs: list[LayerSpec], ident: str, h: int, w: int, cin: int, cout: int, stride: int, pad: int,
                    image_size: int, gen: torch.Generator, init: str) -> None:
    """add_block_mask.m: conv_mask + relu."""
    size = layer_output_sizes(specs, image_size)[-1]
    px, py = pos_templates(cin, size[0], size[1])
    filt = np.ones(cin, dtype=np.int64)          # partRate 1, textureRate 0
    specs.append(LayerSpec("conv_mask", f"{_fc_or_conv(h, w, size)}{ident}",
                           [init_weight(init, h, w, cin, cout, gen), torch.zeros(cout), torch.full((cin,), ALPHA_INIT)],
                           {"stride": (stride, stride), "pad": (pad,) * 4, "dilate": (1, 1),
                            "learningRate": (1.0, 2.0, 0.05), "weightDecay": (1.0, 0.0, 0.0),
                            "posTemp": (px.numpy(), py.numpy()), "lossWeight": LOSS_WEIGHT, "sliceMag": None,
                            "filter": filt, "mag": MAG}))
    specs.append(LayerSpec("relu", f"relu{ident}", [], {"leak": 0.0}))


def _add_block(specs: list[LayerSpec], ident: str, h: int, w: int, cin: int, cout: int, stride: int, pad: int,
               image_size: int, gen: torch.Generator, init: str) -> None:
    """add_block.m: conv + relu."""
    size = layer_output_sizes(specs, image_size)[-1]
    specs.append(LayerSpec("conv", f"{_fc_or_conv(h, w, size)}{ident}", [init_weight(init, h, w, cin, cout, gen), torch.zeros(cout)],
                           {"stride": (stride, stride), "pad": (pad,) * 4, "dilate": (1, 1),
                            "learningRate": (1.0, 2.0), "weightDecay": (1.0, 0.0)}))
    specs.append(LayerSpec("relu", f"relu{ident}", [], {"leak": 0.0}))


def _add_dropout(specs: list[LayerSpec], ident: str, rate: float) -> None:
    specs.append(LayerSpec("dropout", f"dropout{ident}", [], {"rate": float(rate)}))


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
    gen = generator if generator is not None else _generator(seed)
    cin = _out_channels(specs)
    c = md.channel_num
    _add_block_mask(specs, "6", 3, 3, cin, c, 1, 1, image_size, gen, init)
    pname, psize, pstride, ppad = md.pool
    specs.append(LayerSpec("pool", pname, [], {"method": "max", "pool": (psize, psize), "stride": (pstride, pstride),
                                               "pad": quad(ppad)}))
    k = md.fc7_kernel or layer_output_sizes(specs, image_size)[-1][0]
    _add_block_mask(specs, "7", k, k, c, md.fc_channels, 1, 0, image_size, gen, init)
    id7, id8 = md.ids
    _add_dropout(specs, id7, dropout_rate)
    _add_block(specs, id8, 1, 1, md.fc_channels, md.fc_channels, 1, 0, image_size, gen, init)
    _add_dropout(specs, id8, dropout_rate)
    _add_block(specs, "9", 1, 1, md.fc_channels, label_num, 1, 0, image_size, gen, init)
    specs.pop()                                              # net.layers(end) = []: no relu on the classifier
    if init in ("xavier", "xavierimproved"):                 # network_init.m's "final touches"
        specs[-1].weights[0] = specs[-1].weights[0] / 10
    specs.append(LayerSpec("ourloss_logistic", "loss", [], {}))
    for s in specs:                                          # network_init: every dropout at the caller's rate
        if s.type == "dropout":
            s.fields["rate"] = float(dropout_rate)
    return specs


def network_init(label_num: int, model: str, dropout_rate: float,
                 pretrained: str | Path | Sequence[LayerSpec] | None = None, loss_type: str = "ourloss_logistic",
                 image_size: int | None = None, seed: int | None = None, multiclass_adjust: bool = False,
                 input_guard: bool = True, weight_init: str | None = None,
                 interpretable: bool = True) -> tuple[SimpleNN, TrainOpts, dict]:
    """Port of network_init.m (with tool/nets/<model>.m): (net, trainOpts, meta).

    label_num: number of classes (outputs); model: a key of MODELS; dropout_rate: every dropout
    layer's rate; pretrained: the MatConvNet ImageNet model file (the one tool/nets/*.m loads,
    MODELS[model].pretrained_file), its LayerSpecs (the full list, cut here as the original cuts
    it), or None for a random trunk (warned for the ImageNet models); loss_type: the last
    layer's type (learn_icnn_multiclass.m sets it after network_init); multiclass_adjust: also
    apply learn_icnn_multiclass.m's learning-rate and mag adjustments (`train_opts_multiclass`);
    image_size: the input size (default: the model file's meta, else 227 for alexnet, 224 for
    the VGGs, 64 for tiny); seed: for the random weights; weight_init: init_weight.m's method
    for the new layers (default 'gaussian', N(0, 0.01^2), as the original; 'xavierimproved' for
    tiny, see the module docstring).
    interpretable: False builds the ordinary CNN the paper compares with: the same layers,
    weights and rates, with plain conv layers in place of the conv_mask ones (`plain_cnn_specs`).
    meta: model, netname, label_num, image_size (H, W, 3), pretrained_count (how many leading
    layers come from the trunk), data_sizes (our_vl_simplenn_display's data size per res),
    classes, and the pretrained file's normalization when there is one.
    """
    md = model_def(model)
    if md.family == "torchvision":
        return network_init_torchvision(label_num, model, dropout_rate, pretrained, loss_type, image_size, seed,
                                        multiclass_adjust, input_guard, weight_init, interpretable)
    if int(label_num) < 1:
        raise ValueError(f"network_init: label_num must be >= 1, got {label_num}")
    label_num = int(label_num)
    gen = _generator(seed)
    trunk, file_meta = _network_trunk(model, pretrained, gen)
    size = int(image_size or _meta_image_size(file_meta) or md.image_size)
    specs = build_icnn_specs(trunk, model, label_num, dropout_rate, size, weight_init=weight_init, generator=gen)
    if not interpretable:
        specs = plain_cnn_specs(specs)
    net = SimpleNN.from_specs(specs, input_guard=input_guard, copy=False)
    opts = train_opts(label_num, model)
    if loss_type != "ourloss_logistic":
        set_loss_type(net, loss_type)
    if multiclass_adjust:
        opts = apply_multiclass_adjustments(net, opts, label_num, loss_type, model)
    meta = {"model": model, "netname": md.netname, "label_num": label_num, "image_size": (size, size, 3),
            "interpretable": bool(interpretable),
            "pretrained_count": len(trunk), "data_sizes": layer_output_sizes(specs, size),
            "classes": {"name": ["pos"], "description": ["pos"]}}
    if "normalization" in file_meta:
        meta["normalization"] = file_meta["normalization"]
    net.meta.update(meta)
    return net, opts, meta


def _network_trunk(model: str, pretrained: str | Path | Sequence[LayerSpec] | None,
                   gen: torch.Generator) -> tuple[list[LayerSpec], dict]:
    """tool/nets/<model>.m's trunk: the pretrained model's layers cut as the original cuts them (from
    a model file, with its `net.meta`, or from LayerSpecs), or random layers (warned for the ImageNet
    models). Returns (trunk specs, the file's meta or {})."""
    md = model_def(model)
    if pretrained is None:
        if md.cut:
            warnings.warn(f"network_init({model!r}): no pretrained model given ({md.pretrained_file}); the trunk is "
                          f"randomly initialised, so results will not match the paper's", stacklevel=3)
        return trunk_specs(model, generator=gen), {}
    file_meta: dict = {}
    if isinstance(pretrained, (str, Path)):
        full, file_meta = load_pretrained(pretrained)
    else:
        full = [LayerSpec(s.type, s.name, [w.clone() for w in s.weights], dict(s.fields)) for s in pretrained]
    if len(full) <= md.cut + 1:
        raise ValueError(f"network_init({model!r}): the pretrained model has {len(full)} layers, too few to cut "
                         f"{md.cut}")
    return full[:len(full) - md.cut], file_meta
