"""MATLAB imresize (legacy_compat.imresize): golden getI crops, known answers, PIL's border difference."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from legacy_compat import loadmat
from legacy_compat.imresize import contributions, imresize, output_size_for, resize_matrix


# ----------------------------------------------------------------- golden getI
def _golden_getI(golden_dir, shared_data):
    case = loadmat(golden_dir / "getI.mat")
    inp, out = case["inputs"], case["outputs"]
    root = shared_data / inp["image_root"]
    for k, f in enumerate(inp["files"].reshape(-1, order="F")):
        image = np.asarray(Image.open(root / f).convert("RGB"))
        h, w = image.shape[:2]
        xmin, ymin, xmax, ymax = (int(v) for v in inp["bndbox"][k])
        # getI.m: clip the inclusive 1-based box to the image, crop, single, resize
        xmin, xmax, ymin, ymax = max(xmin, 1), min(xmax, w), max(ymin, 1), min(ymax, h)
        crop = image[ymin - 1:ymax, xmin - 1:xmax].astype(np.float32)
        yield (crop, tuple(int(v) for v in inp["tarSize"][k]), bool(inp["IsFlip"][0, k]),
               out["I_patch"][0, k], image, out["I"][0, k])


def test_imresize_matches_matlab_on_golden_getI(golden_dir, shared_data):
    n = 0
    for crop, size, flip, want, image, want_image in _golden_getI(golden_dir, shared_data):
        got = imresize(crop, size, "bilinear")
        if flip:
            got, image = got[:, ::-1], image[:, ::-1]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max() + 1e-6
        np.testing.assert_array_equal(image, want_image)   # PIL decodes the JPEGs as the golden did
        n += 1
    assert n == 6


def test_pil_bilinear_differs_at_the_borders(golden_dir, shared_data):
    """Why we have our own: PIL widens the kernel too but renormalises at the borders."""
    worst_border = 0.0
    for crop, size, _, _, _, _ in _golden_getI(golden_dir, shared_data):
        ours = imresize(crop, size)
        pil = np.stack([np.asarray(Image.fromarray(crop[:, :, c], mode="F").resize(
            (size[1], size[0]), Image.BILINEAR)) for c in range(3)], axis=2)
        diff = np.abs(ours - pil)
        assert diff[3:-3, 3:-3].max() < 1e-3                # the same away from the borders
        worst_border = max(worst_border, float(diff.max()))
    assert worst_border > 5.0                               # grey levels apart at the borders


# ----------------------------------------------------------------- known answers
def test_known_matlab_answers():
    # MATLAB: imresize([1 2 3 4], [1 2]) = [1.625 3.375] (antialiased triangle, mirrored borders)
    np.testing.assert_allclose(imresize(np.array([[1.0, 2, 3, 4]]), [1, 2]), [[1.625, 3.375]], rtol=0, atol=1e-15)
    # without antialiasing: u = 1.5 and 3.5 -> plain interpolation
    np.testing.assert_allclose(imresize(np.array([[1.0, 2, 3, 4]]), [1, 2], antialias=False), [[1.5, 3.5]])
    # upsampling [1 2] to 4 columns: u = 0.75, 1.25, 1.75, 2.25, mirrored at both ends
    np.testing.assert_allclose(imresize(np.array([[1.0, 2.0]]), [1, 4]), [[1.0, 1.25, 1.75, 2.0]])
    # nearest: box kernel, no antialiasing
    np.testing.assert_array_equal(imresize(np.array([[1.0, 2, 3, 4]]), [1, 2], "nearest"), [[2.0, 4.0]])


def test_contributions_weights_and_mirrored_indices():
    w, idx = contributions(4, 2, 0.5, "bilinear", True)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # output 1: inputs -1, 0 (mirrored to 1, 0 in 0-based), 1, 2 with weights 1/8 3/8 3/8 1/8
    row = dict()
    for wk, ik in zip(w[0], idx[0]):
        row[int(ik)] = row.get(int(ik), 0.0) + wk
    assert row == pytest.approx({0: 0.5, 1: 0.375, 2: 0.125})
    assert idx.min() >= 0 and idx.max() <= 3
    m = resize_matrix(4, 2, 0.5)
    np.testing.assert_allclose(m.toarray()[0], [0.5, 0.375, 0.125, 0.0])


def test_invariants_constant_image_and_dtypes():
    rng = np.random.default_rng(0)
    const = np.full((37, 53, 3), 7.25, dtype=np.float32)
    for method in ("nearest", "bilinear", "bicubic"):
        out = imresize(const, [20, 90], method)
        assert out.shape == (20, 90, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, 7.25, rtol=1e-6)
    img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    out8 = imresize(img, [17, 23])
    assert out8.dtype == np.uint8
    # MATLAB rounds to uint8 after each dimension: equal to resizing rows then columns with rounding
    rows_first = np.clip(np.floor(imresize(img.astype(np.float64), [17, 40]) + 0.5), 0, 255)
    both = np.clip(np.floor(imresize(rows_first, [17, 23]) + 0.5), 0, 255)
    np.testing.assert_array_equal(out8, both)
    # bicubic overshoots, uint8 saturates
    edge = np.zeros((8, 8), dtype=np.uint8)
    edge[:, 4:] = 255
    up = imresize(edge, [8, 20], "bicubic")
    assert up.min() == 0 and up.max() == 255
    assert imresize(edge.astype(np.float64), [8, 20], "bicubic").max() > 255


def test_smaller_scale_dimension_first():
    # shrinking rows (scale 0.25) and growing columns: rows go first; the other order differs
    rng = np.random.default_rng(1)
    img = (rng.random((40, 10)) * 255).astype(np.uint8)
    out = imresize(img, [10, 25])
    rows = np.clip(np.floor(imresize(img.astype(np.float64), [10, 10]) + 0.5), 0, 255)
    want = np.clip(np.floor(imresize(rows, [10, 25]) + 0.5), 0, 255)
    np.testing.assert_array_equal(out, want)
    cols = np.clip(np.floor(imresize(img.astype(np.float64), [40, 25]) + 0.5), 0, 255)
    other = np.clip(np.floor(imresize(cols, [10, 25]) + 0.5), 0, 255)
    assert np.any(other != want)


def test_output_size_rules_and_bad_input():
    assert output_size_for((100, 50), 0.333) == ((34, 17), (0.333, 0.333))
    assert output_size_for((100, 50), [np.nan, 25])[0] == (50, 25)
    assert output_size_for((100, 50), [224, 224])[1] == (2.24, 4.48)
    with pytest.raises(ValueError, match="method"):
        imresize(np.zeros((4, 4)), [2, 2], "lanczos5")
    with pytest.raises(ValueError, match="out_size"):
        imresize(np.zeros((4, 4)), [2, 2.5])
    with pytest.raises(ValueError, match="image"):
        imresize(np.zeros(4), [2, 2])
    with pytest.raises(ValueError, match="dtype"):
        imresize(np.zeros((4, 4), dtype=bool), [2, 2])


def test_batch_of_images_in_trailing_dims():
    rng = np.random.default_rng(2)
    batch = rng.random((31, 29, 3, 4)).astype(np.float32)
    out = imresize(batch, [12, 16])
    assert out.shape == (12, 16, 3, 4)
    np.testing.assert_allclose(out[..., 2], imresize(batch[..., 2], [12, 16]), rtol=1e-6)
