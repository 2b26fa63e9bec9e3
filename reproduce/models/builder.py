"""The one network builder: `network_init`, which every network goes through (MatConvNet and
torchvision families alike).

Ports `tool/main/network_init.m` (with `tool/nets/<model>.m`) and the training-option adjustments
of `learn_icnn_multiclass.m`. Like timm's `create_model`: the model's row of
`reproduce.models.registry.MODELS` says which family builds it (`FAMILY_BUILDERS`:
`reproduce.models.matconvnet_nets.build_matconvnet`, `reproduce.models.torchvision_nets.build_torchvision`);
the family builder returns the layer list (trunk, head, loss 'ourloss_logistic'), and the steps every
network shares are done here once: the ordinary CNN (conv_mask layers as plain convs), the SimpleNN,
network_init.m's trainOpts, the loss type, learn_icnn_multiclass.m's adjustments and the meta.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from legacy_compat.simplenn import LayerSpec
from reproduce.layers.geometry import layer_output_sizes
from reproduce.layers.simplenn import SimpleNN
from reproduce.models.matconvnet_nets import build_matconvnet
from reproduce.models.network_request import FamilyNet, NetworkRequest
from reproduce.models.registry import (
    ModelDef,
    TrainOpts,
    apply_multiclass_adjustments,
    model_def,
    plain_cnn_specs,
    set_loss_type,
    train_opts,
)
from reproduce.models.torchvision_nets import build_torchvision

__all__ = ["network_init", "create_network", "NetworkRequest", "FAMILY_BUILDERS"]

#: A row's `family` -> the builder of its layer list.
FAMILY_BUILDERS: dict[str, Callable[[ModelDef, NetworkRequest], FamilyNet]] = {
    "matconvnet": build_matconvnet,
    "torchvision": build_torchvision,
}


def network_init(label_num: int, model: str, dropout_rate: float,
                 pretrained: str | Path | Sequence[LayerSpec] | dict | None = None,
                 **options: Any) -> tuple[SimpleNN, TrainOpts, dict]:
    """Port of network_init.m (with tool/nets/<model>.m): (net, trainOpts, meta).

    label_num: number of classes (outputs); model: a key of MODELS; dropout_rate: every dropout
    layer's rate (the torchvision nets have none); pretrained: for the MatConvNet family the
    ImageNet model file tool/nets/*.m loads (MODELS[model].pretrained) or its LayerSpecs (the full
    list, cut here as the original cuts it); for the torchvision family a torchvision state_dict
    file or the dict; None for a random trunk (warned for the ImageNet models).
    options (keywords, the fields of `NetworkRequest`):
    loss_type: the last layer's type (learn_icnn_multiclass.m sets it after network_init);
    multiclass_adjust: also apply learn_icnn_multiclass.m's learning-rate and mag adjustments
    (`train_opts_multiclass`); image_size: the input size (default: the model file's meta, else the
    row's: 227 for alexnet, 224 for the VGGs and the torchvision nets, 64 for tiny); seed: for the
    random weights; weight_init: init_weight.m's method for the new layers (default the row's:
    'gaussian', N(0, 0.01^2), as the original; 'xavierimproved' for tiny, see
    reproduce.models.matconvnet_nets); input_guard: the SimpleNN's input check;
    interpretable: False builds the ordinary CNN the paper compares with: the same layers,
    weights and rates, with plain conv layers in place of the conv_mask ones (`plain_cnn_specs`).
    meta: model, netname, label_num, image_size (H, W, 3), interpretable, pretrained_count (how
    many leading layers come from the trunk), data_sizes (our_vl_simplenn_display's data size per
    res), classes, and the family's own: the pretrained file's normalization when there is one
    (MatConvNet), the pretrained file's path (torchvision).
    """
    return create_network(NetworkRequest(label_num=label_num, model=model, dropout_rate=dropout_rate,
                                         pretrained=pretrained, **options))


def create_network(request: NetworkRequest) -> tuple[SimpleNN, TrainOpts, dict]:
    """`network_init` for a `NetworkRequest`: the row's family builds the layer list, then the steps
    every network shares (the ordinary CNN, the SimpleNN, trainOpts, the loss type, the multi-class
    adjustments, the meta)."""
    row = model_def(request.model)
    if int(request.label_num) < 1:
        raise ValueError(f"network_init: label_num must be >= 1, got {request.label_num}")
    label_num = int(request.label_num)
    built = FAMILY_BUILDERS[row.family](row, request)
    specs = built.specs if request.interpretable else plain_cnn_specs(built.specs)
    net = SimpleNN.from_specs(specs, input_guard=request.input_guard, copy=False)
    opts = train_opts(label_num, row.name)
    if request.loss_type != "ourloss_logistic":
        set_loss_type(net, request.loss_type)
    if request.multiclass_adjust:
        opts = apply_multiclass_adjustments(net, opts, label_num, request.loss_type, row.name)
    size = built.image_size
    meta = {"model": row.name, "netname": row.netname, "label_num": label_num, "image_size": (size, size, 3),
            "interpretable": bool(request.interpretable), "pretrained_count": built.pretrained_count,
            "data_sizes": layer_output_sizes(specs, size), "classes": {"name": ["pos"], "description": ["pos"]},
            **built.meta}
    net.meta.update(meta)
    return net, opts, meta
