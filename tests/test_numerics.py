"""MATLAB numerics (legacy_compat.numerics): known MATLAB answers, numpy and torch alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from legacy_compat import loadmat
from legacy_compat.numerics import (
    mfind,
    mind2sub,
    mlinspace,
    mmax,
    mmax_reduce,
    mmin,
    mmin_reduce,
    mround,
    msub2ind,
    mvar,
    sort_ascend_stable,
    sort_descend_stable,
    to0,
    to1,
)


def both(x, dtype=np.float64):
    """The same values as a numpy array and as a torch tensor."""
    a = np.asarray(x, dtype=dtype)
    return a, torch.from_numpy(a.copy())


def as_np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------- round
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mround_halves_away_from_zero(dtype):
    x = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, -2.5001, 0.0, 7.0]
    want = [1, 2, 3, -1, -2, -3, 2, -3, 0, 7]
    for v in both(x, dtype):
        out = mround(v)
        assert as_np(out).dtype == dtype
        np.testing.assert_array_equal(as_np(out), want)
    assert np.round(2.5) == 2.0  # numpy rounds halves to even: why mround exists


def test_mround_exact_near_half_and_specials():
    # floor(x + 0.5) gets this one wrong (0.49999999999999994 + 0.5 rounds to 1.0)
    x = np.array([0.49999999999999994, -0.49999999999999994, np.nan, np.inf, -np.inf, 2.0 ** 53 + 2])
    out = mround(x)
    np.testing.assert_array_equal(out[:2], [0, 0])
    assert np.isnan(out[2]) and out[3] == np.inf and out[4] == -np.inf and out[5] == 2.0 ** 53 + 2
    t = mround(torch.tensor([0.49999997, -0.49999997, float("nan")], dtype=torch.float32))
    assert t[0].item() == 0 and t[1].item() == 0 and torch.isnan(t[2])


def test_mround_integer_input_unchanged():
    x = np.array([1, -2, 3], dtype=np.int32)
    assert mround(x) is x


# ----------------------------------------------------------------- var
def test_mvar_n_minus_1_and_single_element():
    x = [[1.0, 2.0, 4.0], [2.0, 2.0, 2.0]]
    for v in both(x):
        np.testing.assert_allclose(as_np(mvar(v, axis=1)), [7 / 3, 0.0])
        assert as_np(mvar(v, axis=1, keepdims=True)).shape == (2, 1)
        np.testing.assert_allclose(as_np(mvar(v)), np.var(np.asarray(x), ddof=1))
        # MATLAB: var of one element is 0 (torch.var would give NaN)
        one = v[:, :1]
        np.testing.assert_array_equal(as_np(mvar(one, axis=1)), [0.0, 0.0])
        assert as_np(mvar(one, axis=1, keepdims=True)).shape == (2, 1)
    assert float(mvar(torch.tensor([5.0]))) == 0.0
    assert float(mvar(np.array([5.0]))) == 0.0


# ----------------------------------------------------------------- sort
def test_sort_descend_stable_ties_in_original_order_nan_first():
    x = [3, 1, 3, np.nan, 2, 3, np.nan]
    for v in both(x):
        vals, idx = sort_descend_stable(v)
        np.testing.assert_array_equal(as_np(idx), [3, 6, 0, 2, 5, 4, 1])   # MATLAB: [4 7 1 3 6 5 2]
        np.testing.assert_array_equal(as_np(vals)[2:], [3, 3, 3, 2, 1])


def test_sort_ascend_stable_nan_last():
    x = [3, 1, 3, np.nan, 2, 3]
    for v in both(x):
        vals, idx = sort_ascend_stable(v)
        np.testing.assert_array_equal(as_np(idx), [1, 4, 0, 2, 5, 3])
        assert np.isnan(as_np(vals)[-1])


def test_sort_descend_along_axis_integer_matrix():
    x = np.array([[1, 5, 5, 2], [7, 7, 0, 7]], dtype=np.int64)
    vals, idx = sort_descend_stable(x, axis=1)
    np.testing.assert_array_equal(idx, [[1, 2, 3, 0], [0, 1, 3, 2]])
    np.testing.assert_array_equal(vals, [[5, 5, 2, 1], [7, 7, 7, 0]])
    vals0, idx0 = sort_descend_stable(x, axis=0)
    np.testing.assert_array_equal(idx0, [[1, 1, 0, 1], [0, 0, 1, 0]])


# ----------------------------------------------------------------- min / max
def test_nan_ignoring_min_max_the_beta_update():
    # our_vl_simplenn beta update: max(min(3 ./ avg_sqrtvar, 3), 1.5) with avg_sqrtvar NaN
    assert mmax(mmin(3.0 / np.float64(np.nan), 3.0), 1.5) == 3.0
    t = mmax(mmin(torch.tensor([float("nan"), 1.0, 4.0]), 3.0), 1.5)
    np.testing.assert_array_equal(t.numpy(), [3.0, 1.5, 3.0])
    # both NaN -> NaN
    assert np.isnan(mmin(np.nan, np.nan))
    assert torch.isnan(mmax(torch.tensor(float("nan")), float("nan")))
    # torch.minimum propagates NaN: why mmin exists
    assert torch.isnan(torch.minimum(torch.tensor(float("nan")), torch.tensor(3.0)))


def test_max_min_reductions_first_index_nan_ignored():
    y = [[np.nan, -np.inf, np.nan], [np.nan, np.nan, np.nan], [1, 5, 5], [2, np.nan, 0]]
    for v in both(y):
        vals, idx = mmax_reduce(v, axis=1)
        np.testing.assert_array_equal(as_np(vals)[[0, 2, 3]], [-np.inf, 5, 2])
        assert np.isnan(as_np(vals)[1])
        np.testing.assert_array_equal(as_np(idx), [1, 0, 1, 0])   # MATLAB: [2 1 2 1]
        vals, idx = mmin_reduce(v, axis=1)
        np.testing.assert_array_equal(as_np(vals)[[0, 2, 3]], [-np.inf, 1, 0])
        np.testing.assert_array_equal(as_np(idx), [1, 0, 0, 2])
        vals, idx = mmax_reduce(v, axis=0, keepdims=True)
        assert as_np(vals).shape == (1, 3)
        np.testing.assert_array_equal(as_np(idx), [[3, 2, 2]])


# ----------------------------------------------------------------- linspace
def test_mlinspace_matlab_formula_and_ends():
    y = mlinspace(0, 1, 11)
    k = np.arange(11.0)
    np.testing.assert_array_equal(y, (k * 1.0) / 10)       # (0:n1).*(d2-d1)./n1, not k*step
    assert y[3] == 0.3 and 3 * 0.1 != 0.3                    # the product-then-divide order matters
    assert list(mlinspace(2, 5, 1)) == [5.0]
    assert mlinspace(2, 5, 0).size == 0
    z = mlinspace(1, 99, 89)
    assert z[0] == 1 and z[-1] == 99 and z[22] == 25.5      # 1 + 22*98/88 is exactly 25.5


def test_mlinspace_octave_flavor_differs_where_rounding_matters():
    # getImdb's train split: round(linspace(1, n, round(n * 0.9))); for n = 99 MATLAB and
    # Octave 7 (the golden cases) disagree at k = 22 (exact 25.5 vs 25.499999999999996)
    m = mround(mlinspace(1, 99, 89))
    o = mround(mlinspace(1, 99, 89, flavor="octave"))
    assert m[22] == 26 and o[22] == 25
    assert np.sum(m != o) == 1
    oct_ = mlinspace(-1, 1, 7, flavor="octave")
    assert oct_[3] == 0.0 and oct_[0] == -1 and oct_[-1] == 1


def test_mlinspace_single_matches_the_checkpoint_postemp(checkpoints_dir):
    net = loadmat(checkpoints_dir / "checkpoint_single_epoch3.mat")["net"]
    layers = [l for l in net["layers"].reshape(-1, order="F") if l["type"] == "conv_mask"]
    assert layers
    for l in layers:
        px, py = l["posTemp"].reshape(-1, order="F")
        h, w = px.shape[:2]
        # add_block_mask: posTemp_x = single(repmat(linspace(-1,1,h)', [1, w, in]))
        for flavor in ("matlab", "octave"):
            np.testing.assert_array_equal(px[:, 0, 0], mlinspace(-1, 1, h, np.float32, flavor))
            np.testing.assert_array_equal(py[0, :, 0], mlinspace(-1, 1, w, np.float32, flavor))
    # single(linspace(-1,1,n)) agrees between the two flavors for every map size used
    for n in range(2, 300):
        np.testing.assert_array_equal(mlinspace(-1, 1, n, np.float32), mlinspace(-1, 1, n, np.float32, "octave"))


# ----------------------------------------------------------------- indices
def test_index_helpers():
    assert to0(1) == 0 and to1(0) == 1
    np.testing.assert_array_equal(to0(np.array([[1.0, 5.0]])), [[0, 4]])
    assert to0(np.array([3.0])).dtype == np.int64
    with pytest.raises(ValueError):
        to0(np.array([1.5]))
    assert torch.equal(to1(torch.tensor([0, 2])), torch.tensor([1, 3]))
    # MATLAB: sub2ind([3 4], 2, 3) = 8; [r, c] = ind2sub([3 4], 8) = (2, 3)
    assert int(msub2ind((3, 4), 2, 3)) == 8
    r, c = mind2sub((3, 4), np.array([8, 1, 12]))
    np.testing.assert_array_equal(r, [2, 1, 3])
    np.testing.assert_array_equal(c, [3, 1, 4])
    # getMu: p = mu_x + (mu_y - 1) * h is the column-major linear index of (mu_x, mu_y)
    assert int(msub2ind((7, 7), 4, 6)) == 4 + (6 - 1) * 7
    m = np.array([[0, 1], [1, 1]], dtype=bool)                 # MATLAB find: [2; 3; 4]
    np.testing.assert_array_equal(mfind(m), [1, 2, 3])
    np.testing.assert_array_equal(mfind(torch.from_numpy(m)).numpy(), [1, 2, 3])
