"""reproduce.ablation's switches and table (the whole run is exercised by test_demo's --baseline run)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import reproduce.experiments.ablation as ablation
from reproduce.experiments.ablation import (
    ROWS,
    disable_filter_loss,
    format_table,
    masks_off,
    net_fingerprint,
    summarise,
)
from reproduce.experiments.pretrain import save_pretrained_model
from reproduce.layers.conv_mask import ConvMask, ConvMaskOptions, FilterLossContext
from reproduce.models.builder import network_init


def _layer():
    g = torch.Generator().manual_seed(0)
    return ConvMask(4, 3, 3, feature_size=6, pad=1, generator=g, options=ConvMaskOptions(init_std=0.1))


def _input():
    g = torch.Generator().manual_seed(1)
    return torch.relu(torch.randn(4, 4, 6, 6, generator=g)).requires_grad_()


def test_disable_filter_loss_leaves_the_mask_and_drops_the_loss_gradient():
    labels = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    on, off = _layer(), _layer()
    handles = disable_filter_loss(off)
    x_on, x_off = _input(), _input()
    y_on = on(x_on, FilterLossContext(labels, epoch=1))
    y_off = off(x_off, FilterLossContext(labels, epoch=1))
    assert torch.equal(y_on, y_off)                        # the same masked forward
    y_on.sum().backward()
    y_off.sum().backward()
    assert on.beta.grad is not None and off.beta.grad is None       # no beta update without the loss
    assert not torch.allclose(x_on.grad, x_off.grad)                # the filter loss's input gradient is gone
    plain = _layer()
    x_plain = _input()
    plain.require_context = False
    plain(x_plain).sum().backward()                                # a conv_mask without any context
    assert torch.equal(x_plain.grad, x_off.grad)
    for h in handles:
        h.remove()


def test_masks_off_is_a_plain_convolution_of_the_input():
    layer = _layer().eval()
    x = _input().detach()
    off = masks_off(layer)
    assert float(layer.beta.detach()[0]) == 2.0 and float(off.beta.detach().abs().max()) == 0.0     # the original untouched
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert torch.allclose(off(x), expected, atol=1e-6)
    assert not torch.allclose(layer(x), expected, atol=1e-3)                      # with the mask it differs


def _record(variant, seed, value):
    m = {"binary_error": value, "location_instability": value / 10, "part_interpretability": value / 100}
    rec = {"variant": variant, "seed": seed, "before": m, "after": {k: v / 2 for k, v in m.items()}}
    if variant != "ordinary":
        rec["before_masks_off"] = rec["after_masks_off"] = m
    return rec


def test_summary_mean_and_sample_std_over_seeds():
    records = [_record(v, s, x) for v in ("ordinary", "icnn-no-filter-loss", "icnn") for s, x in ((0, 0.2), (1, 0.4))]
    summary = summarise(records)
    assert [r["row"] for r in summary] == [r[0] for r in ROWS]
    icnn = summary[3]
    assert icnn["after_binary_error_mean"] == pytest.approx(0.15)
    assert icnn["after_binary_error_std"] == pytest.approx(math.sqrt(2) * 0.05)     # ddof 1 of (0.1, 0.2)
    assert summary[4]["after_binary_error_mean"] == pytest.approx(0.3)              # masks off: its own entry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = format_table(summary)
    assert "0.150±0.071" in text and "seeds: 0, 1" in text


def test_a_pretrained_trunk_is_saved_as_network_init_reads_it(tmp_path):
    """reproduce.pretrain step 2: the trunk of a trained ordinary net as a MatConvNet model file, from
    which network_init builds the ordinary and the interpretable net exactly as from an ImageNet model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _, _ = network_init(2, "tiny", 0.5, seed=5, interpretable=False)
    path = save_pretrained_model(source, "tiny", tmp_path / "nets" / "tiny-pretrained.mat", ["toy02", "toy03"])
    for interpretable in (False, True):
        net, _, meta = network_init(1, "tiny", 0.5, pretrained=path, seed=0, interpretable=interpretable)
        assert meta["pretrained_count"] == 8 and meta["image_size"] == (64, 64, 3)
        for i in (0, 3, 6):                                           # conv1..conv3: the saved weights
            torch.testing.assert_close(net.layers[i].weight.detach(), source.layers[i].weight.detach(), rtol=0, atol=0)
        assert ("conv_mask" in net.layer_types) == interpretable


def test_an_icnn_with_its_masks_off_is_the_ordinary_cnn_of_the_same_seed():
    """Why the ablation's 'before' rows of the ordinary CNN and of the ICNNs with masks off agree:
    network_init's ordinary CNN is the ICNN with plain convs (same weights), and beta = 0 makes every
    mask 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        icnn, _, _ = network_init(1, "tiny", 0.5, seed=4)
        plain, _, _ = network_init(1, "tiny", 0.5, seed=4, interpretable=False)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 50
    x[:, :, 0, 0] = -100.0                                           # the input guard: mean subtracted
    with torch.no_grad():
        off = masks_off(icnn).eval()(x)
        assert torch.allclose(off, plain.eval()(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(icnn.eval()(x), off, rtol=1e-3, atol=1e-4)


def test_a_net_equal_to_one_already_measured_is_not_measured_again(monkeypatch):
    """measure_net reuses the figures of an identical net (same layers, weights and buffers) and
    measures any difference anew: a changed beta, a plain conv in place of conv_mask."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        icnn, _, _ = network_init(1, "tiny", 0.5, seed=4)
        same, _, _ = network_init(1, "tiny", 0.5, seed=4)
        plain, _, _ = network_init(1, "tiny", 0.5, seed=4, interpretable=False)
    calls = []
    monkeypatch.setattr(ablation, "_measure", lambda net, m: calls.append(net) or {"binary_error": float(len(calls))})
    m = ablation._Measuring(*([None] * 8))
    first = ablation.measure_net(icnn, m)
    assert ablation.measure_net(same, m) == first and len(calls) == 1
    assert net_fingerprint(masks_off(icnn)) != net_fingerprint(icnn)
    assert ablation.measure_net(masks_off(icnn), m) == {"binary_error": 2.0}
    assert ablation.measure_net(plain, m) == {"binary_error": 3.0} and len(calls) == 3
