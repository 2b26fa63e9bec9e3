"""ResNet-18 / ResNet-50 / DenseNet-121 ICNNs (reproduce.torchvision_nets, reproduce.tv_blocks) at toy sizes."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import demo
from reproduce.evaluation.net_features import first_conv_mask_layer_id
from reproduce.layers.conv_mask import ConvMask, FilterLossContext
from reproduce.layers.geometry import get_conv_net_para, layer_output_sizes
from reproduce.layers.simplenn import SimpleNN
from reproduce.layers.torchvision_blocks import TorchvisionBlock, arch_parts, main_path_geometry
from reproduce.models.builder import network_init
from reproduce.models.torchvision_nets import TORCHVISION_NETS, PretrainedFileError, read_torchvision_state_dict
from reproduce.training.checkpoints import CheckpointError, TrainingState, from_plain, save_mat_checkpoint, to_plain
from reproduce.training.cnn_train import train

# torchvision's published parameter counts (ImageNet, 1000 classes): the architectures are written anew
# here, so these pin them to torchvision's
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "densenet121": 7_978_856}
# (model, toy input size, the layer after the second conv_mask's relu)
CASES = [("resnet-18", 64, "layer4.0"), ("resnet-50", 32, "layer4.0"), ("densenet-121", 32, "avgpool")]


def _build(model, size, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return network_init(1, model, 0.0, image_size=size, seed=0, **kw)


def torchvision_state_dict(arch: str, legacy_densenet_keys: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict in torchvision's key format (random values), its classifier included."""
    torch.manual_seed(1)
    parts, channels = arch_parts(arch)
    sd = {}
    for path, module in parts.items():
        for key, value in module.state_dict().items():
            if key.endswith("running_mean"):
                value = torch.randn(value.shape)
            sd[f"{path}.{key}"] = value.clone()
    last = channels["features.norm5"] if arch == "densenet121" else channels["layer4.1" if arch == "resnet18" else "layer4.2"]
    head = "classifier" if arch == "densenet121" else "fc"
    sd[f"{head}.weight"], sd[f"{head}.bias"] = torch.randn(1000, last), torch.randn(1000)
    if legacy_densenet_keys:      # the published densenet121 file's names: 'denselayer1.norm.1.weight'
        sd = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
              for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_architectures_have_torchvisions_parameter_counts(arch):
    sd = torchvision_state_dict(arch)
    params = sum(v.numel() for k, v in sd.items() if not k.split(".")[-1].startswith(("running_", "num_batches")))
    assert params == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize("model,size,after", CASES)
def test_forward_backward_with_filter_loss(model, size, after):
    net, opts, meta = _build(model, size)
    d = TORCHVISION_NETS[model]
    masks = net.conv_mask_layers()
    names = net.layer_names
    assert [layer.name for _, layer in masks] == ["mask1", "mask2"]
    (i1, m1), (i2, m2) = masks
    assert d.mask_after in net.layers[i1 - 1].parts              # the builder's place
    assert (i2, names[i1 + 1], names[i2 + 2]) == (i1 + 2, "relu_mask1", after)
    assert m1.in_channels == m1.out_channels == m2.in_channels == d.mask_channels
    assert m1.learning_rate == (1.0, 2.0, 0.05) and float(m1.beta.detach()[0]) == 2.0
    assert 0.008 < float(m1.weight.detach().std()) < 0.012                # N(0, 0.01^2)
    assert opts.batch_size == 32 and opts.learning_rate[0] == pytest.approx(1e-3)   # lrMag 10

    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size) * 60
    labels = torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1)
    net.train()
    m1.require_context = m2.require_context = False        # a pass without the filter loss is allowed
    # resnet-18 also runs without the filter loss, to see that it changes the trunk's gradient
    contexts = [FilterLossContext(labels, epoch=1)] + ([None] if model == "resnet-18" else [])
    grads = []
    for context in contexts:
        for p in net.parameters():
            p.grad = None
        xx = x.clone().requires_grad_()
        res = net.run(xx, context, upto=len(net.layers) - 1)
        res[i1].retain_grad()
        net.loss(res[-1], labels).backward()
        assert res[-1].shape == (2, 1, 1, 1)
        assert [tuple(r.shape[2:]) for r in res] == layer_output_sizes(net, size)[:-1]   # geometry: the real sizes
        assert torch.isfinite(xx.grad).all() and float(net.layers[0].weights()[0].grad.abs().sum()) > 0
        grads.append((res[i1].grad.clone(), m1.beta.grad))
    beta_grad = grads[0][1]
    assert beta_grad is not None and torch.isfinite(beta_grad).all() and float(beta_grad.abs().sum()) > 0
    if len(grads) == 2:
        assert grads[1][1] is None                                  # no filter loss: no beta gradient
        assert not torch.allclose(grads[0][0], grads[1][0])         # the filter loss reached the trunk


def test_geometry_and_measured_layer_resnet18():
    net, _, meta = _build("resnet-18", 224)
    sizes = layer_output_sizes(net, 224)
    i1 = net.conv_mask_layers()[0][0]
    assert sizes[i1] == (14, 14) and meta["data_sizes"] == sizes
    para = get_conv_net_para(net)
    lid = first_conv_mask_layer_id(net.layer_types)
    assert para.conv_layers[lid - 1] == i1 and lid == 8          # stem + 6 blocks, then mask1
    assert para.target_stride[lid - 1] == 16 and para.target_center[lid - 1] == 1.0
    # stem = conv 7/2 pad 3 + max pool 3/2 pad 1: one 11 x 11 conv, stride 4, pad 5
    assert main_path_geometry(net.layers[0].body) == (11, 4, 5)
    # a BasicBlock with stride 2: 3 + 2 * 2 = 7, pad 1 + 1 * 2 = 3 (the 1 x 1 downsample is left out)
    assert main_path_geometry([net.layers[3].body]) == (7, 2, 3)


def test_densenet_geometry_at_224():
    net, _, _ = _build("densenet-121", 224)
    i1 = net.conv_mask_layers()[0][0]
    assert layer_output_sizes(net, 224)[i1] == (7, 7)
    para = get_conv_net_para(net)
    lid = first_conv_mask_layer_id(net.layer_types)
    # the 2 x 2 average pools of the three transitions move the centre by 0.5 x (4 + 8 + 16) pixels
    assert para.target_stride[lid - 1] == 32 and para.target_center[lid - 1] == 15.0


@pytest.mark.parametrize("model,arch,legacy", [("resnet-18", "resnet18", False), ("densenet-121", "densenet121", True)])
def test_pretrained_torchvision_file(tmp_path, model, arch, legacy):
    sd = torchvision_state_dict(arch, legacy_densenet_keys=legacy)
    path = tmp_path / f"{arch}.pth"
    torch.save(sd, path)
    net, _, meta = _build(model, 32, pretrained=path)
    assert meta["pretrained"] == str(path)
    by_name = {layer.name: layer for layer in net.layers}
    key = "layer3.1.conv2.weight" if arch == "resnet18" else "features.denseblock2.denselayer3.conv.2.weight"
    layer = by_name["layer3.1"] if arch == "resnet18" else by_name["features.denseblock2"]
    ours = dict(layer.named_parameters())
    mine = {tv: k for k, tv in layer.torchvision_keys().items()}
    tv_key = key.replace("conv.2.", "conv2.")
    assert torch.equal(ours[mine[tv_key]], sd[key])
    bn = "bn1.running_mean" if arch == "resnet18" else "features.norm0.running_mean"
    stem = dict(net.layers[0].named_buffers())
    assert torch.equal(stem[{tv: k for k, tv in net.layers[0].torchvision_keys().items()}[bn]], sd[bn])
    fc = by_name["fc"].weight
    assert fc.shape == (1, 512 if arch == "resnet18" else 1024, 1, 1) and float(fc.detach().std()) < 0.02   # new, not loaded


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": torchvision_state_dict("resnet18")}, path)
    assert "layer1.0.conv1.weight" in read_torchvision_state_dict(path)
    with pytest.raises(PretrainedFileError, match="layer1.0.conv1.weight.*is \\(64, 64, 3, 3\\)"):
        _build("resnet-50", 32, pretrained=path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedFileError, match="bad.pth"):
        _build("resnet-18", 32, pretrained=bad)


def test_specs_round_trip_and_plain_baseline():
    net, _, _ = _build("resnet-18", 64)
    net.eval()
    x = torch.randn(2, 3, 64, 64) * 60
    specs = [from_plain(to_plain(s)) for s in net.to_specs()]        # what a .pt checkpoint stores
    again = SimpleNN.from_specs(specs).eval()
    with torch.no_grad():
        for layer in net.layers:
            if isinstance(layer, TorchvisionBlock):
                for b in layer.body.modules():
                    if isinstance(b, torch.nn.BatchNorm2d):
                        b.running_mean.normal_()
        again.load_state_dict(net.state_dict())
        assert torch.equal(net(x), again(x))
    plain, _, _ = _build("resnet-18", 64, interpretable=False)
    assert "conv_mask" not in plain.layer_types
    assert plain.layer_types == [("conv" if t == "conv_mask" else t) for t in net.layer_types]
    assert not any(isinstance(m, ConvMask) for m in plain.modules())
    assert np.isclose(float(plain.layers[7].weight.detach().std()), 0.01, rtol=0.2)


def test_save_mat_refuses_a_torchvision_trunk_and_writes_nothing(tmp_path, capsys):
    """--save-mat cannot represent resnet-18's residual blocks as SimpleNN net.layers: refused before any
    work (demo.py, the library's train, save_mat_checkpoint), naming the option and the model; no file."""
    rc = demo.main(["--quick", "--model", "resnet-18", "--save-mat", "--out", str(tmp_path / "out"),
                    "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and "--save-mat cannot write model 'resnet-18'" in err and "SimpleNN" in err
    assert not (tmp_path / "out" / "mat").exists() and not (tmp_path / "data").exists()
    net, opts, _ = _build("resnet-18", 64)
    imdb = {"data": np.zeros((4, 3, 64, 64), np.float32), "labels": np.array([[1.0], [-1.0], [1.0], [-1.0]]),
            "set": np.array([1, 1, 2, 2])}
    with pytest.raises(CheckpointError, match=r"--save-mat.*residual / dense blocks"):
        train(net, imdb, opts, tmp_path / "run", save_mat=True, device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
    state = TrainingState(epoch=1, specs=net.to_specs(), momentum=[], stats={"train": [], "val": []},
                          state_dict=None, options={}, meta={})
    with pytest.raises(CheckpointError, match="net-epoch-1.mat: cannot be written"):
        save_mat_checkpoint(tmp_path / "net-epoch-1.mat", state)
    assert list(tmp_path.glob("*.mat")) == [] and list(tmp_path.glob(".tmp*")) == []
