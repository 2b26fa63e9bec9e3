"""The model registry: one row per network (`MODELS`), the training options and the new layers' init.

Ports the settings of `tool/nets/{vgg_vd_16,alexnet,vgg_m,vgg_s}.m` and `tool/main/network_init.m`
(the trunk tables, the head's sizes, trainOpts, lrMag), the MatConvNet model files of
`setup_matconvnet.m` (name, MD5, URL), showResults.m's layerID, the training-option adjustments of
`learn_icnn_multiclass.m` and `tool/basic_net_functions/init_weight.m`. Every fact of a network is
on its row; the one builder (`reproduce.models.builder.network_init`) reads the row and hands it to
its family's builder (`reproduce.models.matconvnet_nets` or `reproduce.models.torchvision_nets`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from legacy_compat.simplenn import LayerSpec
from reproduce.layers.simplenn import LossLayer, SimpleNN

__all__ = ["MODELS", "ModelDef", "PretrainedFile", "TorchvisionTrunk", "TrainOpts", "default_layer_id", "model_def",
           "train_opts", "train_opts_multiclass", "apply_multiclass_adjustments", "set_loss_type", "init_weight",
           "plain_cnn_specs", "LOSS_WEIGHT", "MAG", "ALPHA_INIT", "INIT_STD", "CUT", "TINY_LR_MAG"]

LOSS_WEIGHT = 0.02     # network_init.m: lossWeight
MAG = 0.1              # tool/nets/*.m: mag
ALPHA_INIT = 2.0       # add_block_mask.m: alphaInit (beta)
INIT_STD = 0.01        # init_weight.m 'gaussian': 0.01 / opts.scale
CUT = 7                # tool/nets/*.m: net.layers(1:end-7)


# ------------------------------------------------------------------ model tables
# trunk rows: ("conv", name, kh, kw, in/groups, out, stride, pad) | ("relu", name)
#             | ("lrn", name, (N, kappa, alpha, beta)) | ("pool", name, size, stride, pad) | ("softmax", name)
def _vgg16_table() -> list[tuple]:
    rows: list[tuple] = []
    cin = 3
    for block, (n_conv, cout) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for k in range(1, n_conv + 1):
            rows += [("conv", f"conv{block}_{k}", 3, 3, cin, cout, 1, 1), ("relu", f"relu{block}_{k}")]
            cin = cout
        rows.append(("pool", f"pool{block}", 2, 2, (0, 1, 0, 1)))
    return rows + _classifier(7, 512)


def _classifier(k: int, cin: int) -> list[tuple]:
    """fc6 .. prob of the ImageNet models (cut away by the ICNN builders)."""
    return [("conv", "fc6", k, k, cin, 4096, 1, 0), ("relu", "relu6"), ("conv", "fc7", 1, 1, 4096, 4096, 1, 0),
            ("relu", "relu7"), ("conv", "fc8", 1, 1, 4096, 1000, 1, 0), ("softmax", "prob")]


def _alexnet_table() -> list[tuple]:
    lrn = (5.0, 1.0, 2e-5, 0.75)
    p = (0, 1, 0, 1)
    return [("conv", "conv1", 11, 11, 3, 96, 4, 0), ("relu", "relu1"), ("lrn", "norm1", lrn),
            ("pool", "pool1", 3, 2, p), ("conv", "conv2", 5, 5, 48, 256, 1, 2), ("relu", "relu2"),
            ("lrn", "norm2", lrn), ("pool", "pool2", 3, 2, p), ("conv", "conv3", 3, 3, 256, 384, 1, 1),
            ("relu", "relu3"), ("conv", "conv4", 3, 3, 192, 384, 1, 1), ("relu", "relu4"),
            ("conv", "conv5", 3, 3, 192, 256, 1, 1), ("relu", "relu5"), ("pool", "pool5", 3, 2, p)] + _classifier(6, 256)


def _vggm_table() -> list[tuple]:
    lrn = (5.0, 2.0, 1e-4, 0.75)
    p = (0, 1, 0, 1)
    return [("conv", "conv1", 7, 7, 3, 96, 2, 0), ("relu", "relu1"), ("lrn", "norm1", lrn),
            ("pool", "pool1", 3, 2, p), ("conv", "conv2", 5, 5, 96, 256, 2, 1), ("relu", "relu2"),
            ("lrn", "norm2", lrn), ("pool", "pool2", 3, 2, p), ("conv", "conv3", 3, 3, 256, 512, 1, 1),
            ("relu", "relu3"), ("conv", "conv4", 3, 3, 512, 512, 1, 1), ("relu", "relu4"),
            ("conv", "conv5", 3, 3, 512, 512, 1, 1), ("relu", "relu5"), ("pool", "pool5", 3, 2, p)] + _classifier(6, 512)


def _vggs_table() -> list[tuple]:
    lrn = (5.0, 2.0, 1e-4, 0.75)
    return [("conv", "conv1", 7, 7, 3, 96, 2, 0), ("relu", "relu1"), ("lrn", "norm1", lrn),
            ("pool", "pool1", 3, 3, (0, 2, 0, 2)), ("conv", "conv2", 5, 5, 96, 256, 1, 0), ("relu", "relu2"),
            ("pool", "pool2", 2, 2, (0, 1, 0, 1)), ("conv", "conv3", 3, 3, 256, 512, 1, 1), ("relu", "relu3"),
            ("conv", "conv4", 3, 3, 512, 512, 1, 1), ("relu", "relu4"), ("conv", "conv5", 3, 3, 512, 512, 1, 1),
            ("relu", "relu5"), ("pool", "pool5", 3, 3, (0, 2, 0, 2))] + _classifier(6, 512)


def _alexnet_narrow_table() -> list[tuple]:
    """'alexnet-narrow', NOT the paper's network: an AlexNet-shaped trunk (conv1 11x11 stride 4,
    max pools 3/2, conv2 5x5, conv3-5 3x3) with 1/6 .. 1/8 of AlexNet's channels (16, 32, 48, 48,
    32), no channel groups and no LRN but one, `scale0`, in front: an LRN with N = 1, alpha = 0,
    i.e. vl_nnnormalize's y = x / kappa^beta = x / 64, which brings the mean-subtracted 0-255
    pixels to about unit scale, as the He ('xavierimproved') init of a random trunk assumes.
    Without it (std ~60 input) the ordinary CNN's loss is NaN within 3 steps at lr 0.01 and dead
    (all-positive) at 0.003, the ICNN filter loss's exp(S / 0.5) overflows single precision at
    0.03, and the CPU runs ~2.5x slower (denormal gradients). For 224 x 224 input (the crop size
    the truth files' pHW_center use), trained from scratch (no pretrained file) with the
    original 50-epoch schedule in ~12 minutes on a 2-core CPU. Maps 54 -> 27 -> 27 -> 13 -> 13;
    the ICNN head as alexnet's: conv_mask conv6 (32 filters, 13 x 13, layerID 6), pool6 3/2 ->
    6 x 6, conv_mask fc7 6 x 6 (128), fc8, fc9. Registry row: batch 32 (alexnet's 512 gives 7
    steps an epoch), lrMag 100 (lr 0.01 -> 0.001 over the first 10 epochs, then 0.001), head
    init 'xavierimproved' (as 'tiny': random trunk)."""
    p = (0, 1, 0, 1)
    return [("lrn", "scale0", (1.0, 64.0, 0.0, 1.0)),
            ("conv", "conv1", 11, 11, 3, 16, 4, 0), ("relu", "relu1"), ("pool", "pool1", 3, 2, p),
            ("conv", "conv2", 5, 5, 16, 32, 1, 2), ("relu", "relu2"), ("pool", "pool2", 3, 2, p),
            ("conv", "conv3", 3, 3, 32, 48, 1, 1), ("relu", "relu3"), ("conv", "conv4", 3, 3, 48, 48, 1, 1),
            ("relu", "relu4"), ("conv", "conv5", 3, 3, 48, 32, 1, 1), ("relu", "relu5")]


def _tiny_table() -> list[tuple]:
    return [("conv", "conv1", 3, 3, 3, 16, 1, 1), ("relu", "relu1"), ("pool", "pool1", 2, 2, 0),
            ("conv", "conv2", 3, 3, 16, 32, 1, 1), ("relu", "relu2"), ("pool", "pool2", 2, 2, 0),
            ("conv", "conv3", 3, 3, 32, 64, 1, 1), ("relu", "relu3")]


# The tiny net's lrMag (network_init.m: 1 for vgg-vd-16, 30 for alexnet / vgg-m, 10 for vgg-s):
# its first epochs then run at 1.5e-3 .. 7.5e-4. At 30 (3e-3) the ICNN trains fine, but its ordinary
# counterpart (plain_cnn_specs: the same weights without the masks) starts with ~10x larger head
# activations (classifier outputs ~20, not ~3: the masks zero most of the conv6 / fc7 input) and
# its first steps blow up and kill relu6 (seed 0: validation error stuck at 0.25; at 21 too).
# At 15 both learn the toy set in 8 epochs (README, "demo results").
TINY_LR_MAG = 15.0


# ------------------------------------------------------------------ the rows
MATCONVNET_MODELS_URL = "https://www.vlfeat.org/matconvnet/models/"   # setup_matconvnet.m's download site


@dataclass(frozen=True)
class PretrainedFile:
    """A MatConvNet ImageNet model file that tool/nets/*.m loads (setup_matconvnet.m downloads it):
    its name, MatConvNet's published MD5, its download size (for the disk check and the messages)
    and where it is downloaded from."""

    filename: str
    md5: str
    approx_bytes: int
    url: str


def _matconvnet_file(filename: str, md5: str, approx_bytes: int) -> PretrainedFile:
    """A file of MatConvNet's model site."""
    return PretrainedFile(filename, md5, approx_bytes, MATCONVNET_MODELS_URL + filename)


@dataclass(frozen=True)
class TorchvisionTrunk:
    """Where the ICNN head goes in one torchvision architecture (reproduce.models.torchvision_nets).

    arch: the architecture of reproduce.layers.torchvision_blocks.ARCHS; stem: the parts of the
    first layer; mask_after: the part after which the two conv_mask layers go; classifier: the
    prefix of torchvision's classifier keys (not loaded); published_file: the name of
    torchvision's ImageNet file (for the messages: nothing downloads it)."""

    arch: str
    stem: tuple[str, ...]
    mask_after: str
    classifier: str
    published_file: str


@dataclass(frozen=True, kw_only=True)
class ModelDef:
    """One row of the model registry: the trunk, the head's settings, the training defaults, the
    pretrained file and the evaluated layer (keyword fields only, so that a row reads as what each
    value is).

    trunk: the MatConvNet family's layer table (rows as above), or the torchvision family's
    `TorchvisionTrunk`. fc7_kernel None: the whole map (the tiny net); the originals hard-code 7 / 6.
    layer_id: showResults.m's layerID, the conv layer evaluation measures (1-based among the conv /
    conv_mask / torchvision layers): the first conv_mask layer of every network.
    """

    name: str
    netname: str
    trunk: tuple | TorchvisionTrunk
    cut: int
    image_size: int
    channel_num: int       # the conv_mask layers' C (the torchvision nets': both conv_mask layers')
    pool: tuple            # (name, size, stride, pad) of the pool between the conv_mask blocks
    fc7_kernel: int | None
    fc_channels: int
    ids: tuple             # add_dropout / add_block ids of '7' and '8'
    batch_size: int
    lr_mag: float          # network_init.m: lrMag = lr_mag * labelNum
    layer_id: int          # showResults.m's layerID
    pretrained: PretrainedFile | None = None   # the MatConvNet file tool/nets/*.m loads (None: none to download)
    head_init: str = "gaussian"   # init_weight.m method of the new layers (network_init.m: 'gaussian')
    family: str = "matconvnet"    # 'torchvision': built by reproduce.models.torchvision_nets

    @property
    def pretrained_file(self) -> str:
        """The pretrained file's name, '' when the row has none to download."""
        return self.pretrained.filename if self.pretrained is not None else ""


_VGG16_FILE = _matconvnet_file("imagenet-vgg-verydeep-16.mat", "f72d927587ca4c97fbd165ec9cb9997f", 560_000_000)
_ALEXNET_FILE = _matconvnet_file("imagenet-caffe-alex.mat", "b5152a54bf61100a8ed61827c76e7d08", 240_000_000)
_VGGM_FILE = _matconvnet_file("imagenet-vgg-m.mat", "29294d5f62578c96a3533859514235f2", 400_000_000)
_VGGS_FILE = _matconvnet_file("imagenet-vgg-s.mat", "dbe23da22e82078debda75842b16d5fa", 400_000_000)
_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
_DENSENET_STEM = ("features.conv0", "features.norm0", "features.relu0", "features.pool0")


def _torchvision_row(name: str, channel_num: int, layer_id: int, trunk: TorchvisionTrunk) -> ModelDef:
    """A torchvision row: two conv_mask layers in the trunk (reproduce.models.torchvision_nets); lrMag 10
    (ada-shen/ICNN's init_lr); no download: --pretrained PATH, else random. layer_id: the first conv_mask
    layer (stem + the pieces before it + 1), which evaluation measured before the rows had the field."""
    return ModelDef(name=name, netname=name, trunk=trunk, cut=0, image_size=224, channel_num=channel_num, pool=(),
                    fc7_kernel=None, fc_channels=0, ids=(), batch_size=32, lr_mag=10.0, layer_id=layer_id,
                    head_init="gaussian", family="torchvision")


# layer_id (showResults.m: 14 for vgg-vd-16, 6 for alexnet / vgg-m / vgg-s): the first conv_mask layer;
# 'tiny': conv1-3, then conv_mask conv6 = the 4th conv layer; 'alexnet-narrow' (ours, not the paper's):
# conv1-5, then conv_mask conv6 = the 6th, as alexnet
MODELS: dict[str, ModelDef] = {
    "vgg-vd-16": ModelDef(name="vgg-vd-16", netname="vgg-vd-16", trunk=tuple(_vgg16_table()), cut=CUT,
                          image_size=224, channel_num=512, pool=("pool5", 2, 2, 0), fc7_kernel=7, fc_channels=4096,
                          ids=("fc--7", "fc--8"), batch_size=32, lr_mag=1.0, layer_id=14, pretrained=_VGG16_FILE),
    "alexnet": ModelDef(name="alexnet", netname="alexnet", trunk=tuple(_alexnet_table()), cut=CUT, image_size=227,
                        channel_num=256, pool=("pool6", 3, 2, 0), fc7_kernel=6, fc_channels=4096,
                        ids=("fc-7", "fc-8"), batch_size=512, lr_mag=30.0, layer_id=6, pretrained=_ALEXNET_FILE),
    "vgg-m": ModelDef(name="vgg-m", netname="vgg-m", trunk=tuple(_vggm_table()), cut=CUT, image_size=224,
                      channel_num=512, pool=("pool6", 3, 2, 0), fc7_kernel=6, fc_channels=4096, ids=("7", "8"),
                      batch_size=196, lr_mag=30.0, layer_id=6, pretrained=_VGGM_FILE),
    "vgg-s": ModelDef(name="vgg-s", netname="vgg-s", trunk=tuple(_vggs_table()), cut=CUT, image_size=224,
                      channel_num=512, pool=("pool6", 3, 3, (0, 1, 0, 1)), fc7_kernel=6, fc_channels=4096,
                      ids=("7", "8"), batch_size=128, lr_mag=10.0, layer_id=6, pretrained=_VGGS_FILE),
    "tiny": ModelDef(name="tiny", netname="tiny", trunk=tuple(_tiny_table()), cut=0, image_size=64, channel_num=64,
                     pool=("pool5", 2, 2, 0), fc7_kernel=None, fc_channels=128, ids=("fc--7", "fc--8"),
                     batch_size=32, lr_mag=TINY_LR_MAG, layer_id=4, head_init="xavierimproved"),
    # not the paper's (see _alexnet_narrow_table): alexnet's head (pool6 3/2, fc7 6 x 6), narrow
    "alexnet-narrow": ModelDef(name="alexnet-narrow", netname="alexnet-narrow",
                               trunk=tuple(_alexnet_narrow_table()), cut=0, image_size=224, channel_num=32,
                               pool=("pool6", 3, 2, 0), fc7_kernel=6, fc_channels=128, ids=("fc-7", "fc-8"),
                               batch_size=32, lr_mag=100.0, layer_id=6, head_init="xavierimproved"),
    # not in the original: torchvision trunks with two conv_mask layers (reproduce.models.torchvision_nets)
    "resnet-18": _torchvision_row("resnet-18", 256, 8, TorchvisionTrunk(
        "resnet18", _RESNET_STEM, "layer3.1", "fc", "resnet18-f37072fd.pth")),          # stem + 6 blocks
    "resnet-50": _torchvision_row("resnet-50", 1024, 15, TorchvisionTrunk(
        "resnet50", _RESNET_STEM, "layer3.5", "fc", "resnet50-0676ba61.pth")),          # stem + 13 blocks
    "densenet-121": _torchvision_row("densenet-121", 1024, 10, TorchvisionTrunk(
        "densenet121", _DENSENET_STEM, "relu", "classifier", "densenet121-a639ec97.pth")),  # stem + 8 pieces
}


def model_def(model: str) -> ModelDef:
    """`MODELS[model]`, or a ValueError naming the valid models."""
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r} (choose from {', '.join(MODELS)})")
    return MODELS[model]


def default_layer_id(model: str | None) -> int | None:
    """showResults.m's layerID of a registered model (its row's `layer_id`); None for another name."""
    row = MODELS.get(model) if model is not None else None
    return row.layer_id if row is not None else None


# ------------------------------------------------------------------ training options
@dataclass
class TrainOpts:
    """net.meta.trainOpts (+ our_cnn_train's momentum)."""

    learning_rate: list[float]
    num_epochs: int
    batch_size: int
    weight_decay: float = 5e-4
    momentum: float = 0.9

    def as_matlab(self) -> dict[str, Any]:
        return {"learningRate": np.asarray(self.learning_rate, dtype=np.float64).reshape(1, -1),
                "numEpochs": np.array([[float(self.num_epochs)]]),
                "batchSize": np.array([[float(self.batch_size)]]),
                "weightDecay": np.array([[float(self.weight_decay)]])}


def _logspace(a: float, b: float, n: int) -> np.ndarray:
    return 10.0 ** np.linspace(a, b, n)   # MATLAB logspace = 10.^linspace(a, b, n)


def train_opts(label_num: int, model: str) -> TrainOpts:
    """network_init.m's trainOpts: one class: [logspace(-4,-5,10), 1e-5 x 40] x lrMag (50 epochs);
    several: logspace(-4,-5,80) x lrMag; lrMag = (1 | 30 | 30 | 10) x labelNum."""
    md = model_def(model)
    lr_mag = md.lr_mag * label_num
    if label_num == 1:
        lr = np.concatenate([_logspace(-4, -5, 10), _logspace(-5, -5, 50)])[:50] * lr_mag
    else:
        lr = _logspace(-4, -5, 80) * lr_mag
    return TrainOpts([float(v) for v in lr], int(lr.size), md.batch_size, 0.0005)


def train_opts_multiclass(opts: TrainOpts, label_num: int, loss_type: str, model: str,
                          fix_vggm_name: bool = False) -> tuple[TrainOpts, float]:
    """learn_icnn_multiclass.m's adjustments: returns (new options, factor for every conv_mask's mag).

    softmax ('ourloss_softmaxlog'): > 10 classes lr / 50 and mag / 50 (vggm: lr / 10 more, mag
    / 1e6 more); otherwise lr / 5 and mag x 0.2. logistic: > 10 classes lr / 10 (vggm: x 2).
    Quirk kept: the original compares the model name with 'vggm', which the names it is called
    with ('vgg-m') never equal, so the vggm rules never apply; `fix_vggm_name=True` applies them
    to 'vgg-m'.
    """
    is_vggm = model == "vggm" or (fix_vggm_name and model == "vgg-m")
    lr = np.asarray(opts.learning_rate, dtype=np.float64)
    mag = 1.0
    if loss_type == "ourloss_softmaxlog":
        if label_num > 10:
            lr = lr / 50
            if is_vggm:
                lr = lr / 10
            mag = 1.0 / 50
            if is_vggm:
                mag = mag / 1000000
        else:
            lr = lr / 5
            mag = 0.2
    elif label_num > 10:
        lr = lr / 10
        if is_vggm:
            lr = lr * 2
    return replace(opts, learning_rate=[float(v) for v in lr]), mag


def apply_multiclass_adjustments(net: SimpleNN, opts: TrainOpts, label_num: int, loss_type: str, model: str,
                                 fix_vggm_name: bool = False) -> TrainOpts:
    """learn_icnn_multiclass.m after network_init: set the loss type, scale the conv_mask mags,
    return the adjusted training options."""
    new_opts, factor = train_opts_multiclass(opts, label_num, loss_type, model, fix_vggm_name)
    set_loss_type(net, loss_type)
    for _, layer in net.conv_mask_layers():
        layer.mag = layer.mag * factor
    return new_opts


def set_loss_type(net: SimpleNN, loss_type: str) -> None:
    """learn_icnn_multiclass.m's `net.layers{end}.type = lossType`: the last layer becomes a loss of
    `loss_type`, keeping its name and its other MATLAB fields (`extra_fields`). The one loss swap of
    both families (network_init and apply_multiclass_adjustments)."""
    old = net.layers[-1]
    if not isinstance(old, LossLayer):
        raise ValueError("the net has no loss layer to change")
    net.layers[-1] = LossLayer(loss_type, name=old.name, extra_fields=old.extra_fields)


def init_weight(method: str, h: int, w: int, cin: int, cout: int, gen: torch.Generator,
                scale: float = 1.0) -> torch.Tensor:
    """Port of tool/basic_net_functions/init_weight.m, filters OUT x IN x h x w:
    'gaussian' randn * 0.01 / scale; 'xavier' (rand * 2 - 1) * sqrt(3 / (h w in));
    'xavierimproved' randn * sqrt(2 / (h w out))."""
    method = method.lower()
    shape = (cout, cin, h, w)
    if method == "gaussian":
        return torch.empty(shape).normal_(0.0, 1.0, generator=gen).mul_(INIT_STD / scale)
    if method == "xavier":
        return torch.empty(shape).uniform_(0.0, 1.0, generator=gen).mul_(2).sub_(1).mul_(float(np.sqrt(3 / (h * w * cin))))
    if method == "xavierimproved":
        return torch.empty(shape).normal_(0.0, 1.0, generator=gen).mul_(float(np.sqrt(2 / (h * w * cout))))
    raise ValueError(f"Unknown weight initialization method {method!r} (gaussian, xavier, xavierimproved)")


_CONV_MASK_ONLY_FIELDS = ("posTemp", "lossWeight", "sliceMag", "filter", "mag", "mu_x", "mu_y", "sqrtvar",
                          "strength", "iter")


def plain_cnn_specs(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
    """The ordinary CNN of the paper's comparison: every conv_mask layer becomes a plain conv.

    Same filters and biases (so the same random initialisation), learning rates [1 2] and
    weight decays [1 0] (add_block.m's), no beta, no filter loss, no sliceMag.
    """
    out = []
    for s in specs:
        if s.type != "conv_mask":
            out.append(s)
            continue
        fields = {k: v for k, v in s.fields.items() if k not in _CONV_MASK_ONLY_FIELDS and k != "_matlab"}
        fields["learningRate"] = tuple(s.fields.get("learningRate", (1.0, 2.0)))[:2]
        fields["weightDecay"] = tuple(s.fields.get("weightDecay", (1.0, 0.0)))[:2]
        out.append(LayerSpec("conv", s.name, list(s.weights[:2]), fields))
    return out
