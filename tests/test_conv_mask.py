"""The conv_mask layer (reproduce.layers.conv_mask and the modules it is built from): getMu, getMask, the filter loss, beta's gradient, errors.

The filter loss is checked against `ref_filter_loss`, a literal transcription of the conv_mask
backward of our_vl_simplenn.m (loops over the classes of `Div`, numpy float32, MATLAB's
max-of-non-Inf rule), on cases the golden files do not cover (more classes, texture filters,
overflowing activations, ties in sliceMag).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reproduce.bench.conv_mask import count_ops
from reproduce.layers import conv_mask as cm
from reproduce.layers import filter_loss as fl
from reproduce.layers.activation_mask import get_mask, get_mask_separable, get_mu, pos_templates
from reproduce.layers.conv_mask import (
    ConvMask,
    ConvMaskOptions,
    ConvMaskState,
    FilterLossContext,
    FilterLossError,
    conv_mask,
    raise_deferred_errors,
    set_compile,
)
from reproduce.layers.filter_loss import filter_loss_gradients
from reproduce.layers.filter_loss_blocks import FilterLossFacts, filter_loss_setup
from reproduce.layers.simplenn import conv_mask_from_spec, conv_mask_to_spec
from reproduce.runtime.device import resolve_device


def _loss(x, mask, strength, sqrtvar, beta, labels, facts: FilterLossFacts):
    """filter_loss_gradients with the blocks built from the batch's labels (the layer's steps)."""
    return filter_loss_gradients(x, mask, strength, sqrtvar, beta, filter_loss_setup(labels, facts, x.dtype))


# ------------------------------------------------------------------ a literal reference
class _RefError(Exception):
    pass


def _rep_inf(v: np.ndarray) -> np.ndarray:
    """MATLAB: v(isinf(v)) = max(v(isinf(v)==0)) (max skips NaN; empty -> MATLAB error)."""
    v = v.copy()
    inf = np.isinf(v)
    if inf.any():
        rest = v[~inf]
        if rest.size == 0:
            raise _RefError("all Inf")
        v[inf] = np.nan if np.all(np.isnan(rest)) else np.nanmax(rest)
    return v


def ref_filter_loss(x, mask, sqrtvar, beta, filt, slice_mag, labels, epoch, density, layer_mag=0.1):
    """our_vl_simplenn.m's conv_mask loss terms; x, mask N x D x H x W float32 numpy, sqrtvar N x D.
    Returns (the term added to dzdx, N x D x H x W; dzdw{3}, D)."""
    f32 = np.float32
    n_img, depth, h, w = x.shape
    n_lab = labels.shape[1]
    depth_list = [d for d in range(depth) if filt[d] > 0]
    if n_lab == 1:
        div = [(depth_list, [n for n in range(n_img) if labels[n, 0] == 1])]
    else:
        the_class = labels.max(axis=1)
        if slice_mag is None:
            div = [(depth_list, [n for n in range(n_img) if the_class[n] == 1])]
        else:
            idx = []
            for d in depth_list:
                row = np.where(np.isnan(slice_mag[d]), -np.inf, slice_mag[d])
                idx.append(int(np.argmax(row)))
            div = [(sorted(d for d, i in zip(depth_list, idx) if i == lab),
                    [n for n in range(n_img) if labels[n, lab] == 1]) for lab in range(n_lab)]
    alpha = f32(0.5)
    add = np.zeros_like(x)
    strength = (x * mask).mean(axis=(2, 3)).T.astype(f32)                    # D x N
    with np.errstate(all="ignore"):
        rev = mask[::-1, ::-1]
        lz_pos = (np.log(np.exp((x * rev).mean(axis=(2, 3)) / alpha).mean(axis=0)) * alpha).astype(f32)
        lz_neg = (np.log(np.exp((-x).mean(axis=(2, 3)) / alpha).mean(axis=0)) * alpha).astype(f32)
        lz_pos, lz_neg = _rep_inf(lz_pos), _rep_inf(lz_neg)
        for lab, (dl, pos) in enumerate(div):
            if len(div) == 1:
                w_pos = w_neg = 1.0
            elif n_lab > 10:
                w_pos, w_neg = 0.5 / (1 / n_lab), 0.5 / (1 - 1 / n_lab)
            else:
                w_pos, w_neg = 0.5 / density[lab], 0.5 / (1 - density[lab])
            mag = f32((1 / (1 / epoch)) / layer_mag)
            dl = [d for d in dl if filt[d] == 1]
            if not dl:
                continue
            if pos:
                s = strength[np.ix_(dl, pos)]
                s = np.exp(s / alpha) * (s - lz_pos[dl][:, None] + alpha)
                s = _rep_inf(s)
                s[np.isnan(s)] = 0
                s = s / (s.mean(axis=1, keepdims=True) * mag)
                s[np.isnan(s)] = 0
                s = _rep_inf(s)
                for a, d in enumerate(dl):
                    for b, n in enumerate(pos):
                        add[n, d] -= mask[n, d] * s[a, b] * f32(0.00001 * w_pos)
            neg = [n for n in range(n_img) if n not in pos]
            if neg:
                m = x[np.ix_(neg, dl)].mean(axis=(2, 3)).T
                s = np.exp(-m / alpha) * (-m - lz_neg[dl][:, None] + alpha)
                s = _rep_inf(s)
                s[np.isnan(s)] = 0
                s = s / (s.mean(axis=1, keepdims=True) * mag)
                s[np.isnan(s)] = 0
                s = _rep_inf(s)
                for a, d in enumerate(dl):
                    for b, n in enumerate(neg):
                        add[n, d] += s[a, b] * f32(0.00001 * w_neg)
        dbeta = np.zeros(depth, dtype=f32)
        sv = sqrtvar.T
        for dl, pos in div:
            if not dl:
                continue
            sub_s, sub_v = strength[np.ix_(dl, pos)], sv[np.ix_(dl, pos)]
            tmp = (sub_s * sub_v).sum(axis=1) / sub_s.sum(axis=1)
            r = f32(3) / tmp
            r = np.where(np.isnan(r), f32(3), np.minimum(r, 3))                   # min(NaN, 3) = 3
            r = np.maximum(r, 1.5)
            dbeta[dl] = (r - beta[dl]) * -10000
    return add, dbeta


def _case(seed, n=6, d=5, size=6, n_lab=1, filt=None, slice_mag=True, scale=1.0, density=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, d, size, size, generator=g)) * scale
    labels = torch.where(torch.rand(n, n_lab, generator=g) < 0.5, 1.0, -1.0)
    beta = 1.5 + torch.rand(d, generator=g)
    filt = torch.ones(d, dtype=torch.long) if filt is None else torch.as_tensor(filt)
    sm = torch.rand(d, n_lab, generator=g) if (slice_mag and n_lab > 1) else None
    dens = torch.as_tensor(density if density is not None else np.linspace(0.2, 0.7, n_lab))
    return x, labels, beta, filt, sm, dens


def _run_both(x, labels, beta, filt, sm, dens, epoch=3):
    d, size = x.shape[1], x.shape[2]
    mu_x, mu_y, sqrtvar = get_mu(x)
    px, py = pos_templates(d, size, size)
    mask = get_mask(mu_x, mu_y, beta, filt, px, py)
    strength = (x * mask).mean(dim=(2, 3))
    cp, cn, dbeta = _loss(x, mask, strength, sqrtvar, beta, labels, FilterLossFacts(filt, sm, epoch, dens, 0.1))
    port_add = (-mask * cp[:, :, None, None] + cn[:, :, None, None]).numpy()
    ref_add, ref_dbeta = ref_filter_loss(x.numpy(), mask.numpy(), sqrtvar.numpy(), beta.numpy(), filt.numpy(),
                                         None if sm is None else sm.numpy(), labels.numpy(), epoch, dens.numpy())
    return port_add, dbeta.numpy(), ref_add, ref_dbeta


def _close(port, ref, rtol=1e-4):
    assert port.shape == ref.shape
    assert np.array_equal(np.isnan(port), np.isnan(ref))
    scale = np.nanmax(np.abs(ref)) if np.isfinite(ref).any() else 1.0
    np.testing.assert_allclose(port, ref, rtol=0, atol=rtol * scale + 1e-12)


# ------------------------------------------------------------------ getMu / getMask
def test_get_mu_rounds_halves_away_from_zero_and_handles_empty_maps():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 1, 2] = 1.0           # rows 2 and 3 (1-based), equal weights: mean row 2.5 -> 3
    x[0, 0, 2, 2] = 1.0
    x[0, 1, 3, 0] = 5.0           # one hot pixel at (4, 1)
    mu_x, mu_y, sqrtvar = get_mu(x, out_dtype=torch.float64)
    t = np.linspace(-1, 1, 4)
    assert mu_x[0, 0].item() == pytest.approx(t[2])      # torch.round(2.5) = 2 would give t[1]
    assert mu_y[0, 0].item() == pytest.approx(t[2])
    assert sqrtvar[0, 0].item() == pytest.approx(np.sqrt(((2 - 3) ** 2 + (3 - 3) ** 2) / 2))   # from the rounded centroid
    assert (mu_x[0, 1].item(), mu_y[0, 1].item()) == pytest.approx((t[3], t[0]))
    assert sqrtvar[0, 1].item() == 0.0
    assert (mu_x[0, 2].item(), mu_y[0, 2].item(), sqrtvar[0, 2].item()) == (-1.0, -1.0, 0.0)   # all zero: index 1


def test_get_mask_types_and_clipping():
    mu = torch.tensor([[0.0, 0.0, 0.0]])
    px, py = pos_templates(3, 5, 5)
    beta = torch.tensor([2.0, 2.0, 2.0])
    mask = get_mask(mu, mu, beta, torch.tensor([1, 2, 0]), px, py)
    assert mask[0, 0, 2, 2].item() == 1.0                       # at the centroid
    assert mask[0, 0, 0, 0].item() == -1.0                      # 1 - 2 * 2 = -3, clipped
    assert mask[0, 0, 2, 3].item() == pytest.approx(1 - 2 * 0.5)
    assert torch.all(mask[0, 1:] == 1.0)                        # texture and none: 1
    sep = get_mask_separable(mu, mu, beta, torch.tensor([1, 2, 0]), px[:, :, 0], py[:, 0, :])
    assert torch.equal(sep, mask)


# ------------------------------------------------------------------ the filter loss vs the reference
@pytest.mark.parametrize("kind", ["single", "single_texture", "multi_noslice", "multi_slice", "multi_many",
                                  "single_allpos", "single_allneg"])
def test_filter_loss_matches_literal_transcription(kind):
    if kind == "single":
        args = _case(1)
    elif kind == "single_texture":
        args = _case(2, filt=[1, 2, 0, 1, 2])
    elif kind == "multi_noslice":
        args = _case(3, n_lab=3, slice_mag=False)
    elif kind == "multi_slice":
        args = _case(4, n=8, d=7, n_lab=4, filt=[1, 1, 2, 1, 0, 1, 1])
    elif kind == "multi_many":
        args = _case(5, n=10, d=16, n_lab=12)
    else:
        x, labels, beta, filt, sm, dens = _case(6)
        labels = torch.full_like(labels, 1.0 if kind == "single_allpos" else -1.0)
        args = (x, labels, beta, filt, sm, dens)
    port_add, port_db, ref_add, ref_db = _run_both(*args)
    _close(port_add, ref_add)
    _close(port_db, ref_db)


def test_filter_loss_by_labels_equals_the_gradients_of_the_same_blocks():
    """filter_loss_by_labels (the form the whole-batch loss calls: FilterLossMaps, labels, facts)
    gives the terms of filter_loss_gradients on the blocks filter_loss_setup builds."""
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g))
    filt, beta = torch.tensor([1, 1, 2, 1]), torch.full((4,), 2.0)
    mu_x, mu_y, sqrtvar = get_mu(x)
    mask = get_mask(mu_x, mu_y, beta, filt, *pos_templates(4, 5, 5))
    strength = (x * mask).mean(dim=(2, 3))
    labels = torch.tensor([[1.0, -1], [-1, 1], [1, 1], [-1, -1], [1, -1], [-1, 1]])
    facts = FilterLossFacts(filt, torch.rand(4, 2, generator=g), 2, torch.tensor([0.5, 0.5]), 0.1)
    got = fl.filter_loss_by_labels(fl.FilterLossMaps(x, mask, strength, sqrtvar), beta, labels, facts)
    want = _loss(x, mask, strength, sqrtvar, beta, labels, facts)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert bool(got[0].ne(0).any()) and bool(got[2].ne(0).any())


def test_filter_loss_with_ties_in_slicemag_takes_the_first_class():
    x, labels, beta, filt, sm, dens = _case(7, n=6, d=4, n_lab=3)
    sm = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [float("nan"), 0.3, 0.3], [float("nan")] * 3])
    port_add, port_db, ref_add, ref_db = _run_both(x, labels, beta, filt, sm, dens)
    _close(port_add, ref_add)
    _close(port_db, ref_db)


def test_filter_loss_replaces_inf_by_the_largest_finite_value():
    # activations of ~60-120: exp(mean / 0.5) overflows single precision for some channels
    x, labels, beta, filt, sm, dens = _case(8, n=6, d=5, scale=1.0)
    x[:, 1] = x[:, 1] * 60 + 50
    x[0, 3] = x[0, 3] * 80 + 60
    port_add, port_db, ref_add, ref_db = _run_both(x, labels, beta, filt, sm, dens)
    assert np.isfinite(ref_add).all()
    _close(port_add, ref_add)
    _close(port_db, ref_db)


def test_filter_loss_all_inf_block_is_an_error_unless_a_fallback_is_set():
    x, labels, beta, filt, sm, dens = _case(9, n=4, d=3)
    x = x * 0 + 200.0                     # every exp(.../0.5) overflows: logZ+ is Inf in every channel
    labels[:, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mu_x, mu_y, sqrtvar = get_mu(x)
    px, py = pos_templates(3, x.shape[2], x.shape[3])
    mask = get_mask(mu_x, mu_y, beta, filt, px, py)
    strength = (x * mask).mean(dim=(2, 3))
    with pytest.raises(_RefError):
        ref_filter_loss(x.numpy(), mask.numpy(), sqrtvar.numpy(), beta.numpy(), filt.numpy(), None,
                        labels.numpy(), 3, dens.numpy())
    with pytest.raises(FilterLossError, match="only ±Inf"):
        _loss(x, mask, strength, sqrtvar, beta, labels, FilterLossFacts(filt, None, 3, dens, 0.1))
    cp, cn, db = _loss(x, mask, strength, sqrtvar, beta, labels,
                       FilterLossFacts(filt, None, 3, dens, 0.1, all_inf_fallback=0.0))
    assert torch.isfinite(db).all()


def test_beta_gradient_hand_made_case_with_matlab_nan_rules():
    # 2 images x 3 channels (part, texture, none) of 3 x 3; image 0 positive.
    x = torch.zeros(2, 3, 3, 3)
    x[0, 0, 0, 0], x[0, 0, 2, 2] = 1.0, 1.0          # centroid (2, 2), sqrtvar sqrt((2 + 2) / 2) = sqrt(2)
    x[0, 1, 1, 1] = 4.0                              # texture channel: one pixel, sqrtvar 0 -> 3/0 = Inf -> 3
    x[1] = 1.0
    beta = torch.tensor([2.0, 1.7, 2.2])
    filt = torch.tensor([1, 2, 0])
    labels = torch.tensor([[1.0], [-1.0]])
    mu_x, mu_y, sqrtvar = get_mu(x)
    assert sqrtvar[0, 0].item() == pytest.approx(np.sqrt(2.0))
    px, py = pos_templates(3, 3, 3)
    mask = get_mask(mu_x, mu_y, beta, filt, px, py)
    strength = (x * mask).mean(dim=(2, 3))
    _, _, db = _loss(x, mask, strength, sqrtvar, beta, labels, FilterLossFacts(filt, None, 1, None, 0.1))
    expected0 = (min(max(3 / np.sqrt(2.0), 1.5), 3.0) - 2.0) * -10000     # strength-weighted mean = sqrt(2)
    assert db[0].item() == pytest.approx(expected0, rel=1e-5)
    assert db[1].item() == pytest.approx((3.0 - 1.7) * -10000, rel=1e-5)
    assert db[2].item() == 0.0                                            # type 0: no update
    # no positives at all: sum over nothing = 0, 0/0 = NaN, max(min(3/NaN, 3), 1.5) = 3
    _, _, db = _loss(x, mask, strength, sqrtvar, beta, -labels.abs(), FilterLossFacts(filt, None, 1, None, 0.1))
    assert db[0].item() == pytest.approx((3.0 - 2.0) * -10000)
    assert db[1].item() == pytest.approx((3.0 - 1.7) * -10000)
    # a dead part filter (zero strength over the positives): NaN again -> 3, never NaN
    x2 = x.clone()
    x2[0, 0] = 0.0
    mu_x, mu_y, sqrtvar = get_mu(x2)
    mask = get_mask(mu_x, mu_y, beta, filt, px, py)
    strength = (x2 * mask).mean(dim=(2, 3))
    _, _, db = _loss(x2, mask, strength, sqrtvar, beta, labels, FilterLossFacts(filt, None, 1, None, 0.1))
    assert db[0].item() == pytest.approx((3.0 - 2.0) * -10000)


# ------------------------------------------------------------------ the module
def _layer(d=4, out=3, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ConvMask(d, out, 3, size, pad=1, generator=g, options=ConvMaskOptions(name="conv6"))


def test_module_backward_is_conv_part_plus_filter_loss():
    layer = _layer()
    layer.set_slice_mag(None)
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g)).requires_grad_(True)
    labels = torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [-1.0], [1.0]])
    ctx = FilterLossContext(labels, epoch=2)
    gout = torch.randn(6, 3, 5, 5, generator=g)
    layer(x, ctx).backward(gout)
    # the conv part: conv backward on x .* max(mask, 0), input gradient times max(mask, 0)
    with torch.no_grad():
        mu_x, mu_y, sqrtvar = get_mu(x)
        mask = get_mask(mu_x, mu_y, layer.beta, layer.filter_type, layer.pos_temp_x, layer.pos_temp_y)
    xin = (x.detach() * mask.clamp_min(0)).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    F.conv2d(xin, w, layer.bias.detach(), padding=1).backward(gout)
    ref_add, ref_db = ref_filter_loss(x.detach().numpy(), mask.numpy(), sqrtvar.numpy(), layer.beta.detach().numpy(),
                                      layer.filter_type.numpy(), None, labels.numpy(), 2, None)
    expected = (xin.grad * mask.clamp_min(0)).numpy() + ref_add
    _close(x.grad.numpy(), expected, rtol=1e-5)
    _close(layer.weight.grad.numpy(), w.grad.numpy(), rtol=1e-5)
    _close(layer.beta.grad.numpy(), ref_db, rtol=1e-5)


def test_conv_part_gradcheck_without_context():
    layer = _layer(d=3, out=2, size=4).double()
    layer.require_context = False
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)

    def f(x, w, b):
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        return conv_mask(x, w, b, layer.beta.detach(), layer.state(x))

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-5)
    out = layer(x)
    out.sum().backward()
    assert layer.beta.grad is None                       # no context: no beta update


def test_errors_are_clear():
    layer = _layer()
    x = torch.rand(2, 4, 5, 5)
    with pytest.raises(ValueError, match="FilterLossContext"):
        layer(x.clone().requires_grad_(True))            # training mode, no context
    layer.eval()
    layer(x.clone().requires_grad_(True))                # evaluation: fine
    layer.train()
    with torch.no_grad():
        layer(x)                                         # no backward possible: fine
    with pytest.raises(ValueError, match="N x L"):
        layer(x, FilterLossContext(torch.ones(3, 1), 1))
    with pytest.raises(ValueError, match="N x L"):
        layer(x, FilterLossContext(torch.ones(2), 1))
    with pytest.raises(ValueError, match="square"):
        layer(torch.rand(2, 4, 5, 6), FilterLossContext(torch.ones(2, 1), 1))
    bad = x.clone()
    bad[1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer(bad, FilterLossContext(torch.ones(2, 1), 1))
    layer.set_slice_mag(torch.rand(4, 3))
    with pytest.raises(ValueError, match="density"):
        layer(x, FilterLossContext(torch.ones(2, 3), 1))
    with pytest.raises(ValueError, match="sliceMag has 3 classes"):
        layer(x, FilterLossContext(torch.ones(2, 2), 1))


def test_state_dict_round_trip_with_slice_mag_and_mag():
    layer = _layer()
    layer.set_slice_mag(torch.rand(4, 3))
    layer.mag = layer.mag / 50
    layer.filter_type[1] = 2
    fresh = _layer(seed=5)
    assert fresh.slice_mag.shape == (0,) and not fresh.has_slice_mag
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.slice_mag, layer.slice_mag)
    assert float(fresh.mag) == pytest.approx(0.1 / 50)
    assert torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.beta, layer.beta)
    assert fresh.filter_type.tolist() == [1, 2, 1, 1]
    spec = conv_mask_to_spec(fresh)
    again = conv_mask_from_spec(spec)
    assert torch.equal(again.weight, fresh.weight) and torch.equal(again.slice_mag, fresh.slice_mag)
    assert again.learning_rate == (1.0, 2.0, 0.05) and again.weight_decay == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("case", ["no context", "one class", "classes with sliceMag"])
def test_the_function_with_a_hand_made_state_equals_the_module(case):
    """conv_mask(x, weight, bias, beta, ConvMaskState(...)) called without a module gives exactly
    the module's output and x / weight / beta gradients."""
    layer = _layer(d=4, out=3, size=5, seed=7)
    layer.filter_type[2] = 2                                       # a texture filter among the parts
    g = torch.Generator().manual_seed(11)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g))
    gout = torch.randn(6, 3, 5, 5, generator=g)
    context, slice_mag = None, None
    if case == "one class":
        context = FilterLossContext(torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [-1.0], [1.0]]), epoch=2)
    elif case == "classes with sliceMag":
        slice_mag = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.0, 0.1, 0.8]])
        layer.set_slice_mag(slice_mag)
        labels = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1], [1, -1, -1]])
        context = FilterLossContext(labels, epoch=3, density=torch.tensor([0.4, 0.3, 0.25]))
    else:
        layer.require_context = False
    xm = x.clone().requires_grad_(True)
    y_module = layer(xm, context)
    y_module.backward(gout)

    state = ConvMaskState(torch.tensor([1, 1, 2, 1]), *pos_templates(4, 5, 5), slice_mag=slice_mag, mag=0.1, pad=1)
    xf = x.clone().requires_grad_(True)
    weight, bias, beta = (p.detach().clone().requires_grad_(True) for p in (layer.weight, layer.bias, layer.beta))
    y_function = conv_mask(xf, weight, bias, beta, state, context)
    y_function.backward(gout)

    assert torch.equal(y_function, y_module)
    assert torch.equal(xf.grad, xm.grad) and torch.equal(weight.grad, layer.weight.grad)
    assert torch.equal(bias.grad, layer.bias.grad)
    if context is None:
        assert beta.grad is None and layer.beta.grad is None
    else:
        assert torch.equal(beta.grad, layer.beta.grad) and bool(beta.grad.ne(0).any())


def test_the_function_checks_its_input_against_the_state():
    state = ConvMaskState(torch.ones(4, dtype=torch.int64), *pos_templates(4, 5, 5), pad=1, where="conv_mask 'f'")
    weight, bias, beta = torch.zeros(3, 4, 3, 3), torch.zeros(3), torch.full((4,), 2.0)
    assert state.pad == (1, 1, 1, 1) and state.stride == (1, 1)
    with pytest.raises(ValueError, match="conv_mask 'f': input has 3 channels"):
        conv_mask(torch.rand(2, 3, 5, 5), weight[:, :3], bias, beta[:3], state)
    with pytest.raises(ValueError, match="posTemp was built for"):
        conv_mask(torch.rand(2, 4, 6, 6), weight, bias, beta, state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g))
    labels = torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [-1.0], [1.0]])
    grads = []
    for dev in ("cpu", "cuda"):
        lay = _layer().to(resolve_device(dev))                 # IEEE float32 on the GPU (no TF32)
        xx = x.clone().to(dev).requires_grad_(True)
        lay(xx, FilterLossContext(labels.to(dev), 2)).sum().backward()
        grads.append((xx.grad.cpu(), lay.beta.grad.cpu()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ operations, deferred checks, compile
def test_forward_backward_operation_counts():
    # issue 15: 414 top-level ATen operations before (1 class), 5 for Conv2d, with this counter;
    # 104 / 118 after the first rewrite, 93 / 107 after the second, 90 / 96 now. The issue's
    # targets are 80 (1 class, not reached: see docs/RESULTS.md) and 100 (6 classes, met); these
    # bounds keep the counts from growing back.
    c = count_ops("cpu", batch=8, channels=64, size=14)
    assert c["plain"]["aten_ops"] == 5
    assert c["single"]["aten_ops"] <= 90
    assert c["multi"]["aten_ops"] <= 96


def test_deferred_checks_raise_the_same_errors_later():
    layer = _layer()
    layer.check_mode = "deferred"
    x = torch.rand(2, 4, 5, 5)
    bad = x.clone()
    bad[1, 2, 3, 3] = float("nan")
    layer(bad, FilterLossContext(torch.ones(2, 1), 1))          # no error yet: the flag stays on the device
    with pytest.raises(ValueError, match="NaN or Inf.*deferred check"):
        raise_deferred_errors(layer)
    raise_deferred_errors(layer)                                # reported once
    big = (x * 0 + 200.0).requires_grad_(True)
    layer(big, FilterLossContext(torch.tensor([[1.0], [-1.0]]), 3)).sum().backward()
    with pytest.raises(FilterLossError, match="only ±Inf"):
        raise_deferred_errors(torch.nn.Sequential(layer))
    layer.check_mode = "auto"                                   # CPU: immediate
    with pytest.raises(FilterLossError, match="only ±Inf"):
        layer(big, FilterLossContext(torch.tensor([[1.0], [-1.0]]), 3)).sum().backward()


def test_compile_is_off_by_default_and_never_on_the_cpu():
    assert not cm._COMPILE["enabled"]
    layer = _layer()
    x = torch.rand(2, 4, 5, 5, requires_grad=True)
    ctx = FilterLossContext(torch.tensor([[1.0], [-1.0]]), 2)
    try:
        set_compile(True, backend="eager")
        layer(x, ctx).sum().backward()
        assert cm._COMPILED == {}                               # the CPU path never compiles
    finally:
        set_compile(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_step_without_host_sync_and_deferred_errors():
    dev = resolve_device("cuda")
    layer = _layer().to(dev)
    layer.set_slice_mag(torch.rand(4, 3))
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g)).to(dev).requires_grad_(True)
    labels = -torch.ones(6, 3)
    labels[torch.arange(6), torch.arange(6) % 3] = 1
    ctx = FilterLossContext(labels.to(dev), 2, density=torch.full((3,), 1 / 3, dtype=torch.float64).to(dev))
    layer(x, ctx).sum().backward()                       # warm-up: the layer's constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x, ctx).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    bad = x.detach().clone()
    bad[0, 0, 0, 0] = float("inf")
    layer(bad.requires_grad_(True), ctx).sum().backward()   # deferred on CUDA in training
    with pytest.raises(ValueError, match="NaN or Inf"):
        raise_deferred_errors(layer)


def test_finiteness_check_is_not_fooled_by_large_finite_sums():
    # the check is one reduction of (map sums) .* 0: finite map sums near float32's largest
    # value must pass (a sum of the sums would overflow), one Inf or NaN value must not
    layer = _layer().eval()
    x = torch.full((3, 4, 5, 5), 1.2e37)                # map sums 3e38: finite, their sum is not
    with torch.no_grad():
        layer(x)
        for bad in (math.inf, math.nan):
            y = x.clone()
            y[2, 1, 0, 0] = bad
            with pytest.raises(ValueError, match="NaN or Inf"):
                layer(y)


def _ref_normalise_block(s: np.ndarray, mag: np.float32) -> np.ndarray:
    """our_vl_simplenn.m's five lines on one block (channels x images), float32."""
    with np.errstate(all="ignore"):
        s = _rep_inf(s)
        s[np.isnan(s)] = 0
        s = s / (s.mean(axis=1, keepdims=True) * mag)
        s[np.isnan(s)] = 0
        return _rep_inf(s)


@pytest.mark.parametrize("n_lab", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_normalise_matches_the_original_with_nan_and_inf_in_the_blocks(n_lab, seed):
    """The replacement / normalisation sequence on strengths holding NaN, ±Inf, blocks with no
    finite value (Inf and NaN only) and channels whose mean is 0, against the original's lines."""
    g = np.random.default_rng(seed)
    n, d = 7, 6
    labels = torch.as_tensor(np.where(g.random((n, n_lab)) < 0.5, 1.0, -1.0), dtype=torch.float32)
    filt = torch.tensor([1, 1, 2, 1, 1, 1])
    slice_mag = torch.as_tensor(g.random((d, n_lab)), dtype=torch.float32) if n_lab > 1 else None
    setup = filter_loss_setup(labels, FilterLossFacts(filt, slice_mag, 2, torch.full((n_lab,), 0.4), 0.1))
    s = g.standard_normal((2, n, d)).astype(np.float32)
    pick = g.random((2, n, d))
    s[pick < 0.15] = np.inf
    s[(pick >= 0.15) & (pick < 0.22)] = -np.inf
    s[(pick >= 0.22) & (pick < 0.3)] = np.nan
    if seed % 2:                                   # one channel's positives with no finite value
        s[0, :, 0] = np.where(g.random(n) < 0.5, np.inf, np.nan)
        s[0, 0, 0] = np.nan
    if seed % 3 == 0:                              # a channel whose finite values sum to 0
        s[1, :, 3] = 0.0
    member = setup.member.numpy()
    t = torch.where(setup.member, torch.as_tensor(s), math.nan)
    port, bad = fl._normalise(t, setup)
    mag = np.float32(2 / 0.1)
    group_of = np.zeros(d, int) if slice_mag is None else slice_mag.numpy().argmax(axis=1)
    expect = np.zeros((2, n, d), np.float32)
    any_bad = False
    for k in range(2):
        for lab in range(n_lab if slice_mag is not None else 1):
            chans = [c for c in range(d) if filt[c] == 1 and group_of[c] == lab]
            imgs = [i for i in range(n) if member[k, i, chans[0]]] if chans else []
            if not chans or not imgs:
                continue
            try:
                out = _ref_normalise_block(s[np.ix_([k], imgs, chans)][0].T.copy(), mag)
            except _RefError:
                any_bad = True
                continue
            expect[np.ix_([k], imgs, chans)] = out.T[None]
    assert bool(bad.any()) == any_bad
    if not any_bad:
        _close(port.numpy(), expect, rtol=1e-6)


def test_a_changed_slice_mag_changes_the_classes():
    """The layer keeps sliceMag's classes between steps; a new or modified sliceMag is seen."""
    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(6, 4, 5, 5, generator=g))
    labels = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    density = torch.tensor([0.5, 0.5])
    first, second = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]]), torch.tensor([[0.0, 1], [1, 0], [1, 0], [0, 1]])

    def beta_grad(layer):
        xg = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        layer(xg, FilterLossContext(labels, epoch=2, density=density)).sum().backward()
        return xg.grad.clone(), layer.beta.grad.clone()

    layer, fresh = _layer(), _layer()
    layer.set_slice_mag(first)
    beta_grad(layer)
    layer.set_slice_mag(second)                        # a new tensor
    fresh.set_slice_mag(second)
    for got, want in zip(beta_grad(layer), beta_grad(fresh)):
        assert torch.equal(got, want)
    layer.slice_mag.copy_(first)                       # changed in place
    fresh.set_slice_mag(first)
    for got, want in zip(beta_grad(layer), beta_grad(fresh)):
        assert torch.equal(got, want)
    other = _layer()
    other.set_slice_mag(second)
    assert not torch.equal(beta_grad(layer)[0], beta_grad(other)[0])      # the classes matter here
