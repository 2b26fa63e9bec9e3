"""The SimpleNN module (reproduce.network): MatConvNet primitive semantics, building from
LayerSpecs, running, parameters, the SimpleNN-style res view."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from legacy_compat.simplenn import LayerSpec, filters_to_matlab, maps_to_matlab
from reproduce.layers.activation_mask import pos_templates
from reproduce.layers.conv_mask import FilterLossContext
from reproduce.layers.simplenn import LRN, Dropout, InputGuardError, Pool, SimpleNN, simplenn_res


# ------------------------------------------------------------------ references (MatConvNet's loops)
def ref_pool(x: np.ndarray, pool, stride, pad, method, dzdy=None):
    """nnpooling.cu's CPU loops: windows clipped to the image; max backward to the first strict
    maximum scanning columns (x) outer, rows (y) inner."""
    n, c, h, w = x.shape
    (ph, pw), (sy, sx), (pt, pb, pl, pr) = pool, stride, pad
    oh, ow = (h + pt + pb - ph) // sy + 1, (w + pl + pr - pw) // sx + 1
    y = np.zeros((n, c, oh, ow), dtype=np.float64)
    dx = np.zeros_like(x, dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    y1, x1 = i * sy - pt, j * sx - pl
                    y2, x2 = min(y1 + ph, h), min(x1 + pw, w)
                    y1, x1 = max(y1, 0), max(x1, 0)
                    if method == "max":
                        best, at = -np.inf, None
                        for u in range(x1, x2):
                            for v in range(y1, y2):
                                if x[a, b, v, u] > best:
                                    best, at = x[a, b, v, u], (v, u)
                        y[a, b, i, j] = best
                        if dzdy is not None and at is not None:
                            dx[a, b, at[0], at[1]] += dzdy[a, b, i, j]
                    else:
                        cnt = (y2 - y1) * (x2 - x1)
                        y[a, b, i, j] = x[a, b, y1:y2, x1:x2].sum() / cnt
                        if dzdy is not None:
                            dx[a, b, y1:y2, x1:x2] += dzdy[a, b, i, j] / cnt
    return y, dx


@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("pool,stride,pad", [((3, 3), (2, 2), (0, 1, 0, 1)), ((2, 2), (2, 2), (0, 0, 0, 0)),
                                              ((3, 3), (3, 3), (0, 2, 0, 2)), ((3, 2), (1, 2), (1, 0, 1, 1))])
def test_pool_matches_matconvnet_loops(method, pool, stride, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (2, 3, 7, 7), generator=g).to(torch.float64)     # many ties
    x = x.requires_grad_(True)
    layer = Pool(pool, stride=stride, pad=pad, method=method, name="p")
    y = layer(x)
    dzdy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(dzdy)
    ry, rdx = ref_pool(x.detach().numpy(), pool, stride, pad, method, dzdy.numpy())
    np.testing.assert_allclose(y.detach().numpy(), ry, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), rdx, rtol=1e-12, atol=1e-12)


def test_pool_rejects_padding_not_smaller_than_the_window():
    with pytest.raises(ValueError, match="exceed the padding"):
        Pool((2, 2), stride=2, pad=(0, 2, 0, 2))


@pytest.mark.parametrize("n", [5, 4])
def test_lrn_matconvnet_formula(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, 3, generator=g, dtype=torch.float64)
    kappa, alpha, beta = 2.0, 1e-2, 0.75
    y = LRN((n, kappa, alpha, beta))(x)
    ref = torch.empty_like(x)
    for k in range(7):
        lo, hi = max(0, k - (n - 1) // 2), min(6, k + int(np.ceil((n - 1) / 2)))
        ref[:, k] = x[:, k] / (kappa + alpha * (x[:, lo:hi + 1] ** 2).sum(1)) ** beta
    torch.testing.assert_close(y, ref)
    if n == 5:   # torch's alpha is divided by the window size
        torch.testing.assert_close(y, torch.nn.functional.local_response_norm(x, 5, alpha * 5, beta, kappa))


def test_dropout_modes():
    x = torch.ones(1000)
    layer = Dropout(0.75)
    y = layer(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 4.0}
    assert 0.15 < (y > 0).float().mean().item() < 0.35
    assert torch.equal(Dropout(0.0)(x), x)
    layer.eval()
    assert layer(x) is x


# ------------------------------------------------------------------ a small ICNN net from specs
def _specs(n_classes=1, groups=False):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1   # noqa: E731
    px, py = pos_templates(6, 4, 4)
    conv2_in = 3 if groups else 6
    return [
        LayerSpec("conv", "conv1", [r(6, 3, 3, 3), r(6)], {"pad": (1, 1, 1, 1), "stride": (1, 1)}),
        LayerSpec("relu", "relu1", [], {"leak": 0.0}),
        LayerSpec("pool", "pool1", [], {"pool": (2, 2), "stride": (2, 2), "pad": (0, 1, 0, 1), "method": "max"}),
        LayerSpec("conv", "conv2", [r(6, conv2_in, 3, 3), r(6)], {"pad": (1, 1, 1, 1), "stride": (1, 1),
                                                                  "learningRate": (1.0, 5.0), "opts": "kept"}),
        LayerSpec("relu", "relu2", [], {}),
        LayerSpec("conv_mask", "conv6", [r(6, 6, 3, 3) * 0.1, torch.zeros(6), torch.full((6,), 2.0)],
                  {"pad": (1, 1, 1, 1), "stride": (1, 1), "filter": np.ones(6, dtype=np.int64), "mag": 0.1,
                   "lossWeight": 0.02, "posTemp": (px.numpy(), py.numpy()), "sliceMag": None,
                   "learningRate": (1.0, 2.0, 0.05), "weightDecay": (1.0, 0.0, 0.0)}),
        LayerSpec("relu", "relu6", [], {}),
        LayerSpec("dropout", "dropout7", [], {"rate": 0.0}),
        LayerSpec("conv", "fc9", [r(n_classes, 6, 4, 4), r(n_classes)], {"pad": 0, "stride": 1}),
        LayerSpec("ourloss_logistic", "loss", [], {}),
    ]


def _input(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * 50


def test_from_specs_run_and_forward():
    net = SimpleNN.from_specs(_specs())
    assert net.layer_types == ["conv", "relu", "pool", "conv", "relu", "conv_mask", "relu", "dropout", "conv",
                               "ourloss_logistic"]
    x = _input()
    with pytest.raises(ValueError, match="FilterLossContext"):
        net.run(x)                                       # training mode, back-propagatable, no context
    with torch.no_grad():
        res = net.run(x)                                 # no context: stops before the loss
    assert len(res) == 10 and res[0] is x
    assert tuple(res[3].shape) == (4, 6, 4, 4)           # pool 2/2 with pad [0 1 0 1]: floor((8+1-2)/2)+1
    assert tuple(res[-1].shape) == (4, 1, 1, 1)
    net.eval()
    pred = net(x)
    torch.testing.assert_close(pred, net.run(x)[-1])
    labels = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    full = net.run(x, FilterLossContext(labels, 1))
    assert len(full) == 11 and full[-1].shape == ()
    torch.testing.assert_close(full[-1], net.loss(pred, labels))
    assert len(net.run(x, upto=3)) == 4
    assert [i for i, _ in net.conv_mask_layers()] == [5]


def test_groups_are_inferred_and_round_trip_keeps_everything():
    specs = _specs(groups=True)
    net = SimpleNN.from_specs(specs)
    assert net.layers[3].groups == 2
    back = net.to_specs()
    assert [s.name for s in back] == [s.name for s in specs]
    assert back[3].fields["opts"] == "kept" and back[3].fields["learningRate"] == (1.0, 5.0)
    for a, b in zip(specs, back):
        assert len(a.weights) == len(b.weights)
        for wa, wb in zip(a.weights, b.weights):
            torch.testing.assert_close(wa.float(), wb)
    again = SimpleNN.from_specs(back)
    torch.testing.assert_close(again.eval()(_input()), net.eval()(_input()))


def test_matconvnet_params():
    net = SimpleNN.from_specs(_specs())
    info = {(p.layer_index, p.j): (p.learning_rate, p.weight_decay, p.name) for p in net.matconvnet_params()}
    assert info[(3, 1)][:2] == (5.0, 1.0)                 # given [1 5]; missing weightDecay -> 1
    assert info[(5, 2)] == (0.05, 0.0, "layers.5.beta")
    assert info[(0, 0)][:2] == (1.0, 1.0)
    assert len(info) == 2 + 2 + 3 + 2


def test_input_guard_and_unknown_layer():
    net = SimpleNN.from_specs(_specs())
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(InputGuardError, match="mean"):
        net.eval()(x)
    net.input_guard = False
    net(x)
    with pytest.raises(ValueError, match="layer 2 'weird'.*unknown layer type 'bnorm'"):
        SimpleNN.from_specs([_specs()[0], LayerSpec("bnorm", "weird", [], {})])


def test_simplenn_res_is_a_view_of_the_modules():
    net = SimpleNN.from_specs(_specs())
    x = _input()
    labels = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    ctx = FilterLossContext(labels, 2)
    res = simplenn_res(net, maps_to_matlab(x), 1.0, "normal", ctx)
    assert len(res.x) == len(res.dzdx) == len(res.dzdw) == 11
    run = net.run(x, ctx)
    for a, b in zip(res.x, run):
        np.testing.assert_allclose(a.reshape(-1), (maps_to_matlab(b) if b.dim() else b.reshape(1, 1).detach().numpy())
                                   .reshape(-1), rtol=1e-6)
    assert res.dzdw[1].shape == (0, 0) and len(res.dzdw[5]) == 3
    np.testing.assert_array_equal(res.dzdw[5][0], filters_to_matlab(net.layers[5].weight.grad))
    assert res.dzdw[5][2].shape == (6, 1)
    xx = x.clone().requires_grad_(True)
    net.zero_grad()
    net.run(xx, ctx)[-1].backward()
    np.testing.assert_allclose(res.dzdx[0], maps_to_matlab(xx.grad), rtol=1e-6, atol=1e-9)
    test = simplenn_res(net, maps_to_matlab(x), None, "test", ctx)
    assert all(d.size == 0 for d in test.dzdx) and len(test.x) == 11
