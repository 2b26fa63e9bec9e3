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
field (reproduce.layers.torchvision_blocks).

Each network's facts (architecture, stem, where the conv_mask layers go, their C, the classifier's
keys, torchvision's file name, the measured layer) are on its row of
`reproduce.models.registry.MODELS` (`ModelDef.trunk`: a `TorchvisionTrunk`); `build_torchvision` is
the family's builder, called by the one builder `reproduce.models.builder.network_init`.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from legacy_compat.cli import UserError
from legacy_compat.simplenn import LayerSpec
from reproduce.layers.geometry import layer_output_sizes
from reproduce.layers.torchvision_blocks import IMAGENET_STD, TorchvisionBlock, arch_parts, rename_legacy_densenet_keys
from reproduce.models.head_blocks import BlockShape, conv_mask_spec, conv_spec
from reproduce.models.network_request import FamilyNet, NetworkRequest
from reproduce.models.registry import ModelDef, TorchvisionTrunk

__all__ = ["build_torchvision", "read_torchvision_state_dict", "load_into_parts", "icnn_specs",
           "PretrainedFileError"]


class PretrainedFileError(UserError, ValueError):
    """A --pretrained file that is not a torchvision state_dict of the architecture."""


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
def _pieces(trunk: TorchvisionTrunk, parts: Sequence[str]) -> list[tuple[str, ...]]:
    """The trunk cut into layers: the stem, then one part each (a parameterless 'relu' joins the one before)."""
    pieces = [trunk.stem]
    for p in parts:
        if p in trunk.stem:
            continue
        if p == "relu":
            pieces[-1] = pieces[-1] + (p,)
        else:
            pieces.append((p,))
    return pieces


def icnn_specs(row: ModelDef, parts: dict[str, nn.Module], channels: dict[str, int], label_num: int,
               image_size: int, gen: torch.Generator) -> list[LayerSpec]:
    """The ICNN's layer list: trunk pieces ('torchvision' layers), the two conv_mask + relu (add_block_mask.m's
    conv_mask: 3 x 3, pad 1, C -> C) after `mask_after`, the rest of the trunk, global average pool, fc
    (1 x 1 conv, add_block.m's), loss."""
    trunk, c = row.trunk, row.channel_num
    specs: list[LayerSpec] = []
    geoms: list[Any] = []            # what layer_output_sizes reads: the layer modules / specs
    for piece in _pieces(trunk, list(parts)):
        scale = tuple(255.0 * s for s in IMAGENET_STD) if piece == trunk.stem else None
        layer = TorchvisionBlock.from_parts(trunk.arch, piece, parts, channels, input_scale=scale,
                                            name="stem" if piece == trunk.stem else piece[0])
        specs.append(layer.to_spec())
        geoms.append(layer)
        cout = layer.out_channels
        if trunk.mask_after in piece:
            size = layer_output_sizes(geoms, image_size)[-1]
            shape = BlockShape(3, 3, c, c, 1, 1)
            for k in (1, 2):
                specs += [conv_mask_spec(f"mask{k}", shape, size, shape.draw_filters("gaussian", gen)),
                          LayerSpec("relu", f"relu_mask{k}", [], {"leak": 0.0})]
                geoms += specs[-2:]
            cout = c
    size = layer_output_sizes(geoms, image_size)[-1]
    specs.append(LayerSpec("pool", "avgpool", [], {"pool": size, "stride": (1, 1), "pad": (0, 0, 0, 0),
                                                   "method": "avg"}))
    fc = BlockShape(1, 1, cout, label_num)
    specs.append(conv_spec("fc", fc, fc.draw_filters("gaussian", gen)))
    specs.append(LayerSpec("ourloss_logistic", "loss", [], {}))
    return specs


def _trunk(name: str, trunk: TorchvisionTrunk, pretrained: Any, seed: int | None) -> tuple[OrderedDict, dict[str, int]]:
    """torchvision's random initialisation (seeded without touching the global RNG), then the pretrained file."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        parts, channels = arch_parts(trunk.arch)
    if pretrained is None:
        warnings.warn(f"network_init({name!r}): no pretrained model given (torchvision's {trunk.published_file}); "
                      f"the trunk is randomly initialised", stacklevel=5)
    elif isinstance(pretrained, dict):
        load_into_parts(parts, pretrained, trunk.classifier)
    else:
        load_into_parts(parts, read_torchvision_state_dict(pretrained), trunk.classifier, str(pretrained))
    return parts, channels


def build_torchvision(row: ModelDef, request: NetworkRequest) -> FamilyNet:
    """network_init's layer list for a torchvision-family row ('resnet-18', 'resnet-50', 'densenet-121').

    request.pretrained: a torchvision state_dict file (or the dict itself), or None for torchvision's
    random initialisation (warned). dropout_rate: unused (no dropout layer, module docstring).
    weight_init: only 'gaussian' (the head's N(0, 0.01^2)). image_size: default 224 (the row's).
    """
    if request.weight_init not in (None, "gaussian"):
        raise ValueError(f"network_init({row.name!r}): weight_init must be 'gaussian' (the port's head init), "
                         f"got {request.weight_init!r}")
    size = int(request.image_size or row.image_size)
    seed, pretrained = request.seed, request.pretrained
    parts, channels = _trunk(row.name, row.trunk, pretrained, seed)
    gen = torch.Generator()
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
    specs = icnn_specs(row, parts, channels, int(request.label_num), size, gen)
    meta = {"pretrained": None if pretrained is None or isinstance(pretrained, dict) else str(pretrained)}
    return FamilyNet(specs, sum(s.type == "torchvision" for s in specs), size, meta)
