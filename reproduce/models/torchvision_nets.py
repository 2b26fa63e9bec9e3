"""Interpretable ResNet-18, ResNet-50 and DenseNet-121: network_init.m's job for torchvision trunks.

Not in the original MATLAB code. Where the conv_mask layers go, their sizes, rates and
initialisation follow the other PyTorch port, ada-shen/ICNN (model/resnet_18/resnet_18.py,
resnet_50.py, densenet_121/densenet_121.py, tools/lib.py init_lr, tools/train_model.py), which
puts two conv_mask layers (3x3, pad 1, C -> C, each followed by a ReLU) into the trunk:

    resnet-18     stem, layer1-3, conv_mask mask1 + relu, conv_mask mask2 + relu (C = 256, 14 x 14 at 224),
                  layer4, global average pool, fc
    resnet-50     the same with C = 1024 (layer3's output)
    densenet-121  features (conv0 .. denseblock4, norm5) + relu, mask1 + relu, mask2 + relu (C = 1024,
                  7 x 7 at 224), global average pool, fc

As the port (and the MatConvNet heads, add_block_mask.m): conv_mask filters ~ N(0, 0.01^2), biases 0,
beta 2, learning rates [1 2 0.05], weight decays [1 0 0], filter type 1 (parts), mag 0.1; the new
classifier ~ N(0, 0.01^2), bias 0; the pretrained trunk loads every key but the classifier's;
lrMag 10 x labelNum (the port's init_lr); the measured layer is the first conv_mask's output
(showResults.m's rule for the first conv_mask layer).

Where this differs from the port, and why:
- the learning-rate schedule is network_init.m's ([logspace(-4,-5,10), 1e-5 x 40] x lrMag, 50 epochs;
  multi-class logspace(-4,-5,80) x lrMag) where the port runs 1e-4 x lrMag for 500 epochs: the
  package's one schedule for every model;
- every weight learns: the port builds its optimizer from parameter names containing 'mask',
  'line' or 'conv', so its fc / classifier (left at its random init), its BatchNorm weights and
  ResNet's downsample convs never change (a name filter written for the VGGs). Here trunk convs
  learn at rate 1 with decay 1, BatchNorm weights and biases at rate 1 without decay, the
  classifier as a new layer ([1 2], decay [1 0]);
- ResNet-50's last block (layer4.2) loads its pretrained weights: the port drops every 'layer4.2'
  key (a filter that does nothing for ResNet-18) and leaves that block at random init;
- the input: the package's images are RGB 0..255 minus the imdb's dataMean (as MatConvNet's); the
  stem divides channel c by 255 x torchvision's std[c], the scale the pretrained weights expect.
  The port feeds BGR (cv2.imread, no conversion) 0..255 values to the RGB-trained trunk;
- batch size 32 (the port's 8 is what fits its GPU); no dropout layer (the port has none either;
  the `dropout_rate` argument is accepted and unused);
- float32 and any device (the port is CUDA-only); nothing is downloaded: a pretrained trunk is a
  local torchvision state_dict file (`--pretrained PATH`), otherwise the trunk gets torchvision's
  random initialisation (kaiming normal, BatchNorm 1 / 0).

Receptive fields (getConvNetPara / x2p_): each trunk piece reports the convolution equivalent to
its main path; the skip connections have the same stride and centres and a smaller receptive
field (reproduce.tv_blocks).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from legacy_compat.cli import UserError
from legacy_compat.simplenn import LayerSpec
from reproduce.layers.activation_mask import pos_templates
from reproduce.layers.geometry import layer_output_sizes
from reproduce.layers.simplenn import LossLayer, SimpleNN
from reproduce.layers.torchvision_blocks import IMAGENET_STD, TorchvisionBlock, arch_parts, rename_legacy_densenet_keys
from reproduce.models.registry import (
    ALPHA_INIT,
    LOSS_WEIGHT,
    MAG,
    TrainOpts,
    apply_multiclass_adjustments,
    init_weight,
    plain_cnn_specs,
    train_opts,
)

__all__ = ["TorchvisionNet", "TORCHVISION_NETS", "network_init_torchvision", "read_torchvision_state_dict",
           "load_into_parts", "icnn_specs", "PretrainedFileError"]


class PretrainedFileError(UserError, ValueError):
    """A --pretrained file that is not a torchvision state_dict of the architecture."""


@dataclass(frozen=True)
class TorchvisionNet:
    """Where the ICNN head goes in one torchvision architecture.

    stem: the parts of the first layer; mask_after: the part after which the two conv_mask layers
    go; mask_channels: their C; classifier: the prefix of torchvision's classifier keys (not
    loaded); published_file: the name of torchvision's ImageNet file (for the messages)."""

    name: str
    arch: str
    stem: tuple[str, ...]
    mask_after: str
    mask_channels: int
    classifier: str
    published_file: str


TORCHVISION_NETS: dict[str, TorchvisionNet] = {
    "resnet-18": TorchvisionNet("resnet-18", "resnet18", ("conv1", "bn1", "relu", "maxpool"), "layer3.1", 256, "fc",
                                "resnet18-f37072fd.pth"),
    "resnet-50": TorchvisionNet("resnet-50", "resnet50", ("conv1", "bn1", "relu", "maxpool"), "layer3.5", 1024, "fc",
                                "resnet50-0676ba61.pth"),
    "densenet-121": TorchvisionNet("densenet-121", "densenet121",
                                   ("features.conv0", "features.norm0", "features.relu0", "features.pool0"),
                                   "relu", 1024, "classifier", "densenet121-a639ec97.pth"),
}


def _net(model: str) -> TorchvisionNet:
    if model not in TORCHVISION_NETS:
        raise ValueError(f"unknown torchvision model {model!r} (choose from {', '.join(TORCHVISION_NETS)})")
    return TORCHVISION_NETS[model]


# ------------------------------------------------------------------ pretrained files
def read_torchvision_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision state_dict file (what torch.save(model.state_dict()) writes; also a dict holding
    one under 'state_dict' or 'model', and keys prefixed 'module.' by DataParallel)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise PretrainedFileError(f"{path}: not a PyTorch state_dict file ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        data = data.get("state_dict", data.get("model", data))
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PretrainedFileError(f"{path}: expected a dict of tensors (a torchvision state_dict)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in data.items()}


def load_into_parts(parts: dict[str, nn.Module], state_dict: dict[str, torch.Tensor], classifier: str,
                    source: str = "state_dict") -> None:
    """Load torchvision keys '<part>.<key>' into parts[part]; the classifier's keys are skipped (the
    head is new). Missing keys (but BatchNorm's num_batches_tracked, which old files lack), shape
    mismatches and keys of no part are errors naming the key."""
    sd = rename_legacy_densenet_keys(state_dict)
    used: set[str] = set()
    for path, module in parts.items():
        own = module.state_dict()
        if not own:
            continue
        sub = {}
        for key, target in own.items():
            full = f"{path}.{key}"
            if full not in sd:
                if key.endswith("num_batches_tracked"):
                    continue
                raise PretrainedFileError(f"{source}: no key {full!r} (is it a state_dict of this architecture?)")
            if tuple(sd[full].shape) != tuple(target.shape):
                raise PretrainedFileError(f"{source}: {full!r} is {tuple(sd[full].shape)}, the network's is "
                                          f"{tuple(target.shape)}")
            sub[key] = sd[full]
            used.add(full)
        module.load_state_dict(sub, strict=False)
    extra = sorted(k for k in sd if k not in used and not k.startswith(classifier + "."))
    if extra:
        raise PretrainedFileError(f"{source}: {len(extra)} key(s) of no layer of this architecture, e.g. "
                                  f"{', '.join(extra[:3])}")


# ------------------------------------------------------------------ specs
def _pieces(net: TorchvisionNet, parts: Sequence[str]) -> list[tuple[str, ...]]:
    """The trunk cut into layers: the stem, then one part each (a parameterless 'relu' joins the one before)."""
    pieces = [net.stem]
    for p in parts:
        if p in net.stem:
            continue
        if p == "relu":
            pieces[-1] = pieces[-1] + (p,)
        else:
            pieces.append((p,))
    return pieces


def _conv_mask_spec(name: str, c: int, size: tuple[int, int], gen: torch.Generator) -> LayerSpec:
    """add_block_mask.m's conv_mask (3 x 3, pad 1, C -> C) for a C x size map."""
    px, py = pos_templates(c, size[0], size[1])
    weights = [init_weight("gaussian", 3, 3, c, c, gen), torch.zeros(c), torch.full((c,), ALPHA_INIT)]
    return LayerSpec("conv_mask", name, weights,
                     {"stride": (1, 1), "pad": (1, 1, 1, 1), "dilate": (1, 1), "learningRate": (1.0, 2.0, 0.05),
                      "weightDecay": (1.0, 0.0, 0.0), "posTemp": (px.numpy(), py.numpy()), "lossWeight": LOSS_WEIGHT,
                      "sliceMag": None, "filter": np.ones(c, dtype=np.int64), "mag": MAG})


def icnn_specs(model: str, parts: dict[str, nn.Module], channels: dict[str, int], label_num: int, image_size: int,
               gen: torch.Generator) -> list[LayerSpec]:
    """The ICNN's layer list: trunk pieces ('torchvision' layers), the two conv_mask + relu after
    `mask_after`, the rest of the trunk, global average pool, fc (1 x 1 conv), loss."""
    net = _net(model)
    specs: list[LayerSpec] = []
    geoms: list[Any] = []            # what layer_output_sizes reads: the layer modules / specs
    for piece in _pieces(net, list(parts)):
        scale = tuple(255.0 * s for s in IMAGENET_STD) if piece == net.stem else None
        layer = TorchvisionBlock.from_parts(net.arch, piece, parts, channels, input_scale=scale,
                                            name="stem" if piece == net.stem else piece[0])
        specs.append(layer.to_spec())
        geoms.append(layer)
        cout = layer.out_channels
        if net.mask_after in piece:
            size = layer_output_sizes(geoms, image_size)[-1]
            for k in (1, 2):
                specs += [_conv_mask_spec(f"mask{k}", net.mask_channels, size, gen),
                          LayerSpec("relu", f"relu_mask{k}", [], {"leak": 0.0})]
                geoms += specs[-2:]
            cout = net.mask_channels
    size = layer_output_sizes(geoms, image_size)[-1]
    specs.append(LayerSpec("pool", "avgpool", [], {"pool": size, "stride": (1, 1), "pad": (0, 0, 0, 0),
                                                   "method": "avg"}))
    specs.append(LayerSpec("conv", "fc", [init_weight("gaussian", 1, 1, cout, label_num, gen), torch.zeros(label_num)],
                           {"pad": (0, 0, 0, 0), "stride": (1, 1), "dilate": (1, 1), "learningRate": (1.0, 2.0),
                            "weightDecay": (1.0, 0.0)}))
    specs.append(LayerSpec("ourloss_logistic", "loss", [], {}))
    return specs


def _trunk(net: TorchvisionNet, pretrained: Any, seed: int | None) -> tuple[OrderedDict, dict[str, int]]:
    """torchvision's random initialisation (seeded without touching the global RNG), then the pretrained file."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        parts, channels = arch_parts(net.arch)
    if pretrained is None:
        warnings.warn(f"network_init({net.name!r}): no pretrained model given (torchvision's {net.published_file}); "
                      f"the trunk is randomly initialised", stacklevel=3)
    elif isinstance(pretrained, dict):
        load_into_parts(parts, pretrained, net.classifier)
    else:
        load_into_parts(parts, read_torchvision_state_dict(pretrained), net.classifier, str(pretrained))
    return parts, channels


def network_init_torchvision(label_num: int, model: str, dropout_rate: float = 0.0, pretrained: Any = None,
                             loss_type: str = "ourloss_logistic", image_size: int | None = None,
                             seed: int | None = None, multiclass_adjust: bool = False, input_guard: bool = True,
                             weight_init: str | None = None, interpretable: bool = True
                             ) -> tuple[SimpleNN, TrainOpts, dict]:
    """`reproduce.models.network_init` for 'resnet-18', 'resnet-50', 'densenet-121': (net, trainOpts, meta).

    pretrained: a torchvision state_dict file (or the dict itself), or None for torchvision's random
    initialisation (warned). dropout_rate: unused (no dropout layer, module docstring). weight_init:
    only 'gaussian' (the head's N(0, 0.01^2)). interpretable=False: the ordinary CNN (plain convs
    where the conv_mask layers are). image_size: default 224.
    """
    net_def = _net(model)
    if int(label_num) < 1:
        raise ValueError(f"network_init: label_num must be >= 1, got {label_num}")
    if weight_init not in (None, "gaussian"):
        raise ValueError(f"network_init({model!r}): weight_init must be 'gaussian' (the port's head init), "
                         f"got {weight_init!r}")
    size = int(image_size or 224)
    parts, channels = _trunk(net_def, pretrained, seed)
    gen = torch.Generator()
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
    specs = icnn_specs(model, parts, channels, int(label_num), size, gen)
    if not interpretable:
        specs = plain_cnn_specs(specs)
    net = SimpleNN.from_specs(specs, input_guard=input_guard, copy=False)
    opts = train_opts(int(label_num), model)
    if loss_type != "ourloss_logistic":
        old = net.layers[-1]
        net.layers[-1] = LossLayer(loss_type, name=old.name)
    if multiclass_adjust:
        opts = apply_multiclass_adjustments(net, opts, int(label_num), loss_type, model)
    meta = {"model": model, "netname": model, "label_num": int(label_num), "image_size": (size, size, 3),
            "interpretable": bool(interpretable), "pretrained_count": sum(s.type == "torchvision" for s in specs),
            "data_sizes": layer_output_sizes(net, size),
            "pretrained": None if pretrained is None or isinstance(pretrained, dict) else str(pretrained),
            "classes": {"name": ["pos"], "description": ["pos"]}}
    net.meta.update(meta)
    return net, opts, meta
