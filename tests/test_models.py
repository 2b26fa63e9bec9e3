"""The ICNN networks and their training options (reproduce.models), the tiny net trained for a
few SGD steps with the filter loss active, and getConvNetPara / x2p (reproduce.geometry)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from legacy_compat import savemat
from legacy_compat.mattypes import MatStruct
from legacy_compat.simplenn import net_to_matlab
from reproduce.evaluation.net_evaluation import layer_id_for_model
from reproduce.evaluation.net_features import EvaluationError, first_conv_mask_layer_id
from reproduce.layers.activation_mask import get_mask, get_mu
from reproduce.layers.conv_mask import FilterLossContext
from reproduce.layers.geometry import get_conv_net_para, layer_output_sizes, x2p
from reproduce.layers.simplenn import LossLayer, MatConv
from reproduce.models.builder import FAMILY_BUILDERS, NetworkRequest, create_network, network_init
from reproduce.models.head_blocks import BlockShape, conv_mask_spec, conv_spec
from reproduce.models.matconvnet_nets import trunk_specs
from reproduce.models.registry import (
    MODELS,
    TrainOpts,
    apply_multiclass_adjustments,
    default_layer_id,
    train_opts,
    train_opts_multiclass,
)

HEAD = ["conv6", "relu6", "pool5", "fc7", "relu7", "dropoutfc--7", "fcfc--8", "relufc--8", "dropoutfc--8", "fc9",
        "loss"]


def test_tiny_has_the_vgg16_icnn_head():
    net, opts, meta = network_init(3, "tiny", 0.7, seed=0)
    assert net.layer_names[-len(HEAD):] == HEAD
    assert net.layer_types[-len(HEAD):] == ["conv_mask", "relu", "pool", "conv_mask", "relu", "dropout", "conv",
                                            "relu", "dropout", "conv", "ourloss_logistic"]
    n_pre = meta["pretrained_count"]
    assert net.layers[n_pre - 2].learning_rate == (1.0, 5.0)            # the last trunk conv
    conv6, fc7 = (layer for _, layer in net.conv_mask_layers())
    assert conv6.feature_size == (16, 16) and fc7.feature_size == (8, 8)  # posTemp from the data size
    assert fc7.weight.shape[2:] == (8, 8) and net.layers[-2].weight.shape[0] == 3
    assert torch.all(conv6.beta == 2.0) and float(conv6.mag) == pytest.approx(0.1)
    assert conv6.learning_rate == (1.0, 2.0, 0.05) and conv6.weight_decay == (1.0, 0.0, 0.0)
    assert torch.all(conv6.filter_type == 1) and not conv6.has_slice_mag
    assert all(layer.rate == 0.7 for layer in net.layers if layer.layer_type == "dropout")
    assert meta["image_size"] == (64, 64, 3)
    he = np.sqrt(2 / (8 * 8 * 128))                                     # tiny: 'xavierimproved' head
    assert 0.9 * he < fc7.weight.std().item() < 1.1 * he
    assert net.layers[-2].weight.std().item() < 0.2 * np.sqrt(2 / 3)    # classifier / 10
    gnet, _, _ = network_init(3, "tiny", 0.7, seed=0, weight_init="gaussian")
    assert 0.009 < gnet.conv_mask_layers()[1][1].weight.std().item() < 0.011   # the original N(0, 0.01^2)
    para = get_conv_net_para(net)
    assert para.conv_layers == [0, 3, 6, 8, 11, 14, 17]
    assert para.target_stride.tolist() == [1, 2, 4, 4, 8, 8, 8]
    assert opts.batch_size == 32 and opts.num_epochs == 80          # several classes: logspace(-4,-5,80)
    assert opts.learning_rate[0] == pytest.approx(1e-4 * 15 * 3)      # lrMag 15 x labelNum (TINY_LR_MAG)


def test_train_opts_follow_network_init():
    o = train_opts(1, "vgg-vd-16")
    assert o.num_epochs == 50 and o.batch_size == 32 and o.weight_decay == 0.0005
    assert o.learning_rate[0] == pytest.approx(1e-4) and o.learning_rate[9] == pytest.approx(1e-5)
    assert all(v == pytest.approx(1e-5) for v in o.learning_rate[10:])
    o = train_opts(6, "alexnet")
    assert o.num_epochs == 80 and o.batch_size == 512
    assert o.learning_rate[0] == pytest.approx(1e-4 * 30 * 6) and o.learning_rate[-1] == pytest.approx(1e-5 * 180)
    assert train_opts(1, "vgg-m").batch_size == 196 and train_opts(2, "vgg-s").learning_rate[0] == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="Unknown model"):
        train_opts(1, "resnet")


def test_multiclass_adjustments():
    base = TrainOpts([1.0, 0.5], 2, 32)
    o, mag = train_opts_multiclass(base, 6, "ourloss_softmaxlog", "vgg-vd-16")
    assert o.learning_rate == pytest.approx([0.2, 0.1]) and mag == pytest.approx(0.2)
    o, mag = train_opts_multiclass(base, 12, "ourloss_softmaxlog", "vgg-m")
    assert o.learning_rate == pytest.approx([0.02, 0.01]) and mag == pytest.approx(1 / 50)   # 'vggm' quirk
    o, mag = train_opts_multiclass(base, 12, "ourloss_softmaxlog", "vgg-m", fix_vggm_name=True)
    assert o.learning_rate == pytest.approx([0.002, 0.001]) and mag == pytest.approx(1 / 50 / 1e6)
    o, mag = train_opts_multiclass(base, 12, "ourloss_logistic", "vgg-s")
    assert o.learning_rate == pytest.approx([0.1, 0.05]) and mag == 1.0
    o, mag = train_opts_multiclass(base, 6, "ourloss_logistic", "vgg-s")
    assert o.learning_rate == base.learning_rate
    net, opts, _ = network_init(3, "tiny", 0.5, seed=1)
    new = apply_multiclass_adjustments(net, opts, 3, "ourloss_softmaxlog", "tiny")
    assert isinstance(net.layers[-1], LossLayer) and net.layers[-1].layer_type == "ourloss_softmaxlog"
    assert all(float(layer.mag) == pytest.approx(0.02) for _, layer in net.conv_mask_layers())
    assert new.learning_rate[0] == pytest.approx(opts.learning_rate[0] / 5)


def test_alexnet_random_trunk_warns_and_uses_real_groups():
    with pytest.warns(UserWarning, match="randomly initialised"):
        net, opts, meta = network_init(2, "alexnet", 0.5, seed=0)
    assert meta["image_size"] == (227, 227, 3) and meta["pretrained_count"] == 14
    convs = {layer.name: layer for layer in net.layers if isinstance(layer, MatConv)}
    assert (convs["conv2"].groups, convs["conv3"].groups, convs["conv4"].groups, convs["conv5"].groups) == (2, 1, 2, 2)
    assert net.layer_names[14:] == ["conv6", "relu6", "pool6", "fc7", "relu7", "dropoutfc-7", "fcfc-8",
                                    "relufc-8", "dropoutfc-8", "fc9", "loss"]
    sizes = layer_output_sizes(net, 227)
    assert sizes[14] == (13, 13) and sizes[17] == (6, 6) and sizes[-2] == (1, 1)


def test_network_init_reads_a_pretrained_model_file(tmp_path):
    """pretrained=<MatConvNet file>: the trunk's weights and the file's normalization.imageSize."""
    trunk = trunk_specs("tiny", seed=3, cut=False)
    model = net_to_matlab(trunk, MatStruct(normalization=MatStruct(imageSize=np.array([[48.0, 48, 3]]))))
    path = tmp_path / "pretrained.mat"
    savemat(path, {"layers": model["layers"], "meta": model["meta"]}, version="5")
    net, _, meta = network_init(2, "tiny", 0.5, pretrained=path, seed=0)
    assert meta["image_size"] == (48, 48, 3) and meta["pretrained_count"] == len(trunk)
    assert meta["normalization"]["imageSize"].tolist() == [[48.0, 48.0, 3.0]]
    torch.testing.assert_close(net.layers[0].weight.detach(), trunk[0].weights[0], rtol=0, atol=0)
    torch.testing.assert_close(net.layers[6].weight.detach(), trunk[6].weights[0], rtol=0, atol=0)
    assert net.conv_mask_layers()[0][1].feature_size == (12, 12)
    with pytest.raises(FileNotFoundError, match="not found"):
        network_init(2, "tiny", 0.5, pretrained=tmp_path / "missing.mat")


def test_x2p_is_center_plus_stride():
    net, _, _ = network_init(1, "tiny", 0.5, seed=0)
    para = get_conv_net_para(net)
    pos = x2p(np.array([[1, 2], [3, 16]]), 4, para)                 # layerID 4: conv6 (stride 4, centre 2.5)
    np.testing.assert_allclose(pos, [[2.5, 6.5], [10.5, 62.5]])
    with pytest.raises(IndexError):
        x2p(1, 8, para)


def test_tiny_trains_a_few_steps_and_beta_moves_as_the_formula_says():
    """MatConvNet SGD (our_cnn_train): g = dzdw / batch + decay * layerDecay * w; m = 0.9 m - g;
    w += lr * layerLr * m. For beta (lr x0.05, decay 0) from m = 0 the first step is
    beta - lr * 0.05 * dbeta / batch with dbeta = (clamp(3 / avg_sqrtvar, 1.5, 3) - beta) * -10000."""
    torch.manual_seed(0)
    net, opts, _ = network_init(1, "tiny", 0.0, seed=0)
    g = torch.Generator().manual_seed(2)
    n = 8
    x = torch.rand(n, 3, 64, 64, generator=g) * 255 - 128
    labels = torch.tensor([[1.0], [-1.0]] * (n // 2))
    idx, conv6 = net.conv_mask_layers()[0]
    params = net.matconvnet_params()
    momentum = [torch.zeros_like(p.param) for p in params]
    lr = 1e-3
    losses = []
    for step in range(3):
        ctx = FilterLossContext(labels, epoch=1)
        net.zero_grad()
        res = net.run(x, ctx)
        losses.append(res[-1].item())
        res[-1].backward()
        if step == 0:   # the formula, from the layer's input
            xin = res[idx].detach()
            mu_x, mu_y, sqrtvar = get_mu(xin)
            mask = get_mask(mu_x, mu_y, conv6.beta.detach(), conv6.filter_type, conv6.pos_temp_x, conv6.pos_temp_y)
            s = (xin * mask).mean(dim=(2, 3))
            pos = labels[:, 0] == 1
            avg = (s[pos] * sqrtvar[pos]).sum(0) / s[pos].sum(0)
            r = torch.where(torch.isnan(3 / avg), torch.tensor(3.0), 3 / avg).clamp(1.5, 3.0)
            dbeta = (r - conv6.beta.detach()) * -10000
            torch.testing.assert_close(conv6.beta.grad, dbeta, rtol=1e-5, atol=1e-2)
            expected_beta = conv6.beta.detach() - lr * 0.05 * dbeta / n
        with torch.no_grad():
            for p, m in zip(params, momentum):
                grad = p.param.grad / n + opts.weight_decay * p.weight_decay * p.param
                m.mul_(0.9).sub_(grad)
                p.param.add_(lr * p.learning_rate * m)
        if step == 0:
            torch.testing.assert_close(conv6.beta.detach(), expected_beta)
            assert not torch.equal(expected_beta, torch.full_like(expected_beta, 2.0))
    assert all(np.isfinite(losses))
    assert torch.isfinite(conv6.beta).all() and torch.all((conv6.beta > 1.0) & (conv6.beta < 4.0))


def test_models_registry_matches_tool_nets():
    assert set(MODELS) == {"vgg-vd-16", "alexnet", "vgg-m", "vgg-s", "tiny", "alexnet-narrow", "resnet-18", "resnet-50",
                           "densenet-121"}
    assert {m for m, d in MODELS.items() if d.family == "torchvision"} == {"resnet-18", "resnet-50", "densenet-121"}
    # tool/nets/*.m hard-code the conv_mask input depth (512, or 256 for alexnet): the cut trunk's last conv
    expected_in = {"vgg-vd-16": 512, "alexnet": 256, "vgg-m": 512, "vgg-s": 512}
    for name, in_ch in expected_in.items():
        md = MODELS[name]
        rows = md.trunk[:len(md.trunk) - md.cut]
        assert rows[-1][0] == "relu" and rows[-2][0] == "conv" and rows[-2][5] == in_ch, name
        assert len(md.trunk) == {"vgg-vd-16": 37, "alexnet": 21, "vgg-m": 21, "vgg-s": 20}[name]


def test_every_row_measures_its_first_conv_mask_layer():
    """The rows' layer_id (showResults.m's layerID: 14 / 6 / 6 / 6 for the paper's four) is the first
    conv_mask layer of the net network_init builds, for every registered network; evaluation reads it."""
    assert {m: MODELS[m].layer_id for m in ("vgg-vd-16", "alexnet", "vgg-m", "vgg-s")} == \
        {"vgg-vd-16": 14, "alexnet": 6, "vgg-m": 6, "vgg-s": 6}
    for model, row in MODELS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = 32 if row.family == "torchvision" else None
            net, _, _ = network_init(1, model, 0.5, seed=0, image_size=small)
        assert first_conv_mask_layer_id(net.layer_types) == row.layer_id == layer_id_for_model(model), model
    assert default_layer_id("resnet") is None and default_layer_id(None) is None
    with pytest.raises(EvaluationError, match="resnet-18"):
        layer_id_for_model("resnet")


def test_one_builder_for_both_families():
    """network_init = create_network(NetworkRequest(...)); the row's family picks the layer-list builder;
    the steps after it (loss type, multi-class adjustments, ordinary CNN, meta) are the same for both."""
    assert set(FAMILY_BUILDERS) == {row.family for row in MODELS.values()} == {"matconvnet", "torchvision"}
    a, _, meta_a = network_init(2, "tiny", 0.5, seed=3, loss_type="ourloss_softmaxlog")
    b, _, meta_b = create_network(NetworkRequest(label_num=2, model="tiny", dropout_rate=0.5, seed=3,
                                                 loss_type="ourloss_softmaxlog"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert meta_a == meta_b and list(meta_a)[:8] == ["model", "netname", "label_num", "image_size", "interpretable",
                                                      "pretrained_count", "data_sizes", "classes"]
    with pytest.raises(TypeError, match="seeds"):
        network_init(2, "tiny", 0.5, seeds=3)
    for model in ("tiny", "resnet-18"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, opts, _ = network_init(3, model, 0.5, seed=0, image_size=32 if model != "tiny" else None,
                                        loss_type="ourloss_softmaxlog", multiclass_adjust=True)
        loss = net.layers[-1]
        assert isinstance(loss, LossLayer) and (loss.layer_type, loss.name, loss.extra_fields) == \
            ("ourloss_softmaxlog", "loss", {})
        assert all(float(layer.mag) == pytest.approx(0.02) for _, layer in net.conv_mask_layers())
        assert opts.learning_rate[0] == pytest.approx(train_opts(3, model).learning_rate[0] / 5)


def test_head_blocks_are_add_block_masks_layers():
    shape = BlockShape(3, 3, 4, 6, 1, 1)
    filters = shape.draw_filters("gaussian", torch.Generator().manual_seed(0))
    spec = conv_mask_spec("conv6", shape, (5, 7), filters)
    assert spec.type == "conv_mask" and [tuple(w.shape) for w in spec.weights] == [(6, 4, 3, 3), (6,), (4,)]
    assert torch.all(spec.weights[2] == 2.0) and spec.fields["pad"] == (1, 1, 1, 1)
    assert spec.fields["learningRate"] == (1.0, 2.0, 0.05) and spec.fields["posTemp"][0].shape == (4, 5, 7)
    plain = conv_spec("fc8", BlockShape(1, 1, 6, 2), torch.zeros(2, 6, 1, 1))
    assert plain.fields["weightDecay"] == (1.0, 0.0) and plain.fields["stride"] == (1, 1)
