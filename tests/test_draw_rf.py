"""Tests of reproduce.draw_rf: step_drawRF.m's pieces and the whole drawing on a tiny net."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from data_prep_fixtures import write_cub
from PIL import Image

from data_prep.cub200 import cub200_conf, read_annotation_cub, read_annotation_sampling_cub
from legacy_compat.matio import savemat
from reproduce.evaluation import receptive_fields as rf
from reproduce.experiments import pipeline
from reproduce.models.builder import network_init


def _imfilter_replicate_same(t: np.ndarray, k: np.ndarray) -> np.ndarray:
    """MATLAB imfilter(t, k, 'replicate', 'same') (correlation, anchor floor((size+1)/2)) by brute force."""
    kh, kw = k.shape
    ch, cw = (kh + 1) // 2 - 1, (kw + 1) // 2 - 1           # 0-based anchor
    padded = np.pad(t, ((ch, kh - 1 - ch), (cw, kw - 1 - cw)), mode="edge")
    out = np.zeros_like(t)
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            out[i, j] = np.sum(padded[i:i + kh, j:j + kw] * k)
    return out


@pytest.mark.parametrize("size,sigma", [(6, 2.0), (7, 1.5)])
def test_smooth_template_is_imfilter_replicate_same(size, sigma):
    t = np.random.default_rng(0).random((13, 11))
    t[3, 4] = 50.0                                           # an asymmetric spike shows the anchor
    expected = _imfilter_replicate_same(t, rf.gaussian_kernel(size, sigma))
    np.testing.assert_allclose(rf.smooth_template(t, size, sigma), expected, rtol=1e-12, atol=1e-12)


def test_gaussian_kernel_is_fspecial():
    k = rf.gaussian_kernel(50, 30)
    assert k.shape == (50, 50) and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert k[24, 24] == k.max() and k[0, 0] == k.min()


class _Convnet:
    """A stand-in for geometry.ConvNetPara with a fractional centre (like vgg-vd-16's 8.5)."""

    def __init__(self, center: float, stride: float):
        self.target_layers = np.array([2])
        self.target_stride = np.array([stride])
        self.target_center = np.array([center])
        self.target_scale = np.array([3.0])


def test_get_rf_mask_rounds_fractional_centres():
    ih = iw = 12
    xh = xw = 3
    template = np.random.default_rng(1).random((2 * ih, 2 * iw, 2))
    convnet = _Convnet(center=2.5, stride=4.0)
    mask = rf.get_rf_mask(template, (ih, iw), (xh, xw), 1, convnet)
    t = rf.smooth_template(template.sum(axis=2))
    assert mask.shape == (9, ih, iw) and mask.dtype == np.float32
    c = 0
    for w in range(1, xw + 1):                               # the original's loops: W outer, H inner
        for h in range(1, xh + 1):
            ph = int(np.floor(2.5 + (h - 1) * 4 + 0.5))     # MATLAB round of x.5 goes up here
            pw = int(np.floor(2.5 + (w - 1) * 4 + 0.5))
            hmin, wmin = ih - ph + 1, iw - pw + 1
            np.testing.assert_allclose(mask[c], t[hmin - 1:hmin - 1 + ih, wmin - 1:wmin - 1 + iw].astype(np.float32))
            c += 1


def test_get_rf_mask_refuses_positions_outside_the_image():
    with pytest.raises(rf.DrawRFError, match="outside"):
        rf.get_rf_mask(np.zeros((8, 8, 1)), (4, 4), (3, 3), 1, _Convnet(center=1.0, stride=4.0))


def test_get_region_known_answer():
    ih = iw = 4
    rf_mask = np.zeros((4, ih, iw), np.float32)               # 2 x 2 map, cell c covers one quadrant
    for c, (r, q) in enumerate([(0, 0), (2, 0), (0, 2), (2, 2)]):
        rf_mask[c, r:r + 2, q:q + 2] = 1.0
    fmap = np.array([[0.0, 0.1], [3.0, 0.0]], np.float32)    # column-major: cells 0, 1(=3.0), 2(=0.1), 3
    region = rf.get_region(ih, iw, 2, 2, fmap, 1.0, 0.5, rf_mask)
    expected = np.zeros((4, 4), np.float32)
    expected[2:, :2] = 1
    np.testing.assert_array_equal(region, expected)


def test_occlusions_cover_the_image_like_compute_rf():
    corners = rf.occlusion_list(224, 224)
    assert len(corners) == 22 * 22 and tuple(corners[1]) == (1, 10) and tuple(corners[22]) == (10, 1)
    img = torch.ones(3, 20, 20)
    batch = rf.occluded_batch(img, np.array([[1, 1], [5, 8]]), size=4)
    assert batch.shape == (2, 3, 20, 20)
    assert batch[0, :, :4, :4].abs().sum() == 0 and batch[0].sum() == 3 * (400 - 16)
    assert batch[1, :, 4:8, 7:11].abs().sum() == 0 and batch[1].sum() == 3 * (400 - 16)


def test_accumulate_template_shifts_the_square_to_the_peak():
    t = np.zeros((20, 20))
    rf.accumulate_template(t, np.array([[3, 4]]), np.array([[5.0, 6.0]]), np.array([2.0]), 10, 10, size=3)
    expected = np.zeros((20, 20))
    expected[8 - 1:10, 8 - 1:10] = 2.0     # hmin = 3-5+10 = 8 .. 3+2-5+10 = 10; w: 4-6+10 = 8 .. 10
    np.testing.assert_array_equal(t, expected)


def test_select_top_images_rules():
    dep_max = np.array([[5, 1, 4, 1, 3, 2], [1, 1, 1, 1, 1, 1]], np.float32)
    valid, tau = rf.select_top_images(dep_max, np.array([4.5, 0.5]), 3, np.random.default_rng(0))
    # filter 1: only one image over tau -> the 3 highest, tau = the 3rd value
    assert valid[0].tolist() == [True, False, True, False, True, False] and tau[0] == 3.0
    # filter 2: all six qualify, three of them drawn at random
    assert valid[1].sum() == 3 and tau[1] == 0.5
    with pytest.raises(rf.DrawRFError, match="showNum"):
        rf.select_top_images(dep_max[:, :2], np.zeros(2), 3, np.random.default_rng(0))


def test_mask_x_without_a_conv_mask_above_is_relu():
    x = torch.randn(2, 3, 5, 5)
    masked, mask, mu_x, mu_y = rf.mask_x(x, None, None)
    assert torch.equal(masked, x.clamp(min=0)) and torch.equal(mask, torch.ones_like(x)) and mu_x is None


def test_mask_x_centres_on_the_maximum():
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 1, 3] = 2.0
    x[0, 1, 4, 0] = 1.0
    masked, mask, mu_x, mu_y = rf.mask_x(x, torch.tensor([1.0, 1.0]), torch.tensor([1, 2]))
    assert mu_x[0].tolist() == [-0.5, 1.0] and mu_y[0].tolist() == [0.5, -1.0]
    assert mask[0, 0, 1, 3] == 1.0 and mask[0, 0, 4, 0] == 0.0
    assert torch.equal(mask[0, 1], torch.ones(5, 5))          # texture filter: not masked


def test_imagewrite_blows_up_cells(tmp_path):
    x = np.array([[0.0, 1.0], [0.5, -1.0]], np.float32)
    img = rf.imagewrite(x, tmp_path / "a.jpg")
    assert img.shape == (32, 32) and img.dtype == np.uint8
    assert img[0, 16] == 255 and img[16, 0] == 128 and img[0, 0] == 0 and img[31, 31] == 0
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.size == (32, 32)
    assert (rf.image_to_uint8_blocks(np.zeros((2, 3), np.float32)) == 0).all()   # 0/0 -> 0


def test_draw_edge_darkens_outside_and_outlines_in_red():
    region = np.zeros((40, 40), np.float32)
    region[10:30, 12:28] = 1
    image = np.full((40, 40, 3), 200, np.uint8)
    out = rf.draw_edge(region, image)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100)                # outside: half as bright
    assert tuple(out[20, 20]) == (200, 200, 200)              # inside, away from the edge
    red = (out[..., 0] == 255) & (out[..., 1] == 0) & (out[..., 2] == 0)
    assert red.any()
    rows, cols = np.nonzero(red)
    assert rows.min() >= 10 - 4 and rows.max() <= 29 + 4 and cols.min() >= 12 - 4 and cols.max() <= 27 + 4
    assert not red[18:22, 18:22].any()


def test_contact_sheet_layout():
    cells = [[np.full((8, 6, 3), 10 * (r + c), np.uint8) for c in range(3)] for r in range(2)]
    sheet, boxes = rf.contact_sheet(cells, ["a", "b"], gap=2, label_width=5)
    assert sheet.shape == (2 * (8 + 2) + 2, 5 + 3 * (6 + 2) + 2, 3)
    top, left, bottom, right = boxes[1][2]
    assert (sheet[top:bottom, left:right] == 30).all()


# ------------------------------------------------------------------ the whole drawing
def test_draw_rf_on_a_tiny_network_writes_the_original_files_and_a_contact_sheet(tmp_path):
    net, _, _ = network_init(1, "tiny", 0.5, seed=3)
    net.eval()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    imgs = []
    for _ in range(12):
        h, w = rng.uniform(10, 54, size=2)
        blob = 200 * np.exp(-((yy - h) ** 2 + (xx - w) ** 2) / 30.0)
        imgs.append((rng.uniform(0, 50, (64, 64, 3)) + blob[..., None]).astype(np.float32))
    objects = list(range(12)) + [None]                       # an empty objset element is skipped
    mean = np.full((64, 64, 3), 90.0, np.float32)
    res = rf.draw_rf(net, rf.DrawingImages("toy", objects, lambda o, size: imgs[o]), mean, 4, tmp_path / "draw_RF",
                     show_num=3, visualization_step=32, occlude_size=17, occlude_stride=8,
                     occlusion_batch_size=16, progress=False)
    assert res.filters == [1, 33]
    root = tmp_path / "draw_RF"
    for dep in res.filters:
        for k in range(1, 4):
            stem = f"toy-{dep:04d}-{k:05d}"
            assert (root / "img_ori" / f"{stem}.jpg").exists() and (root / "img_RF" / f"{stem}.jpg").exists()
            for suffix in ("rawX", "mask", "maskX"):
                with Image.open(root / "img_maskF" / f"{stem}_{suffix}.jpg") as im:
                    assert im.size == (16 * 16, 16 * 16)    # the 16 x 16 map blown up 16 x
        assert (root / "img_ori" / f"toy-{dep:04d}_template.mat").exists()
    assert (root / "img_ori" / "toy_tau.mat").exists() and res.tau.shape == (64,)

    # the contact sheet: 2 rows of 3 images of 64 x 64, gap 4, label column 72
    with Image.open(res.contact_sheet) as im:
        assert im.size == (72 + 3 * (64 + 4) + 4, 2 * (64 + 4) + 4)
        sheet = np.asarray(im.convert("RGB"))
    for dep, row_boxes in zip(res.filters, res.sheet_boxes):
        regions = res.regions[dep]
        assert regions.shape == (3, 64, 64)
        for region, (top, left, bottom, right) in zip(regions, row_boxes):
            assert set(np.unique(region)) <= {0.0, 1.0} and 0 < region.sum() < 64 * 64
            rows, cols = np.nonzero(region)
            assert rows.min() >= 0 and rows.max() < 64 and cols.min() >= 0 and cols.max() < 64
            assert 0 <= top < bottom <= sheet.shape[0] and 72 <= left < right <= sheet.shape[1]
    # red edge pixels appear only inside the picture cells
    red = (sheet[..., 0] == 255) & (sheet[..., 1] == 0) & (sheet[..., 2] == 0)
    assert red.any()
    inside = np.zeros(red.shape, bool)
    for row_boxes in res.sheet_boxes:
        for top, left, bottom, right in row_boxes:
            inside[top:bottom, left:right] = True
    assert not (red & ~inside).any()

    # the templates exist now: a second run reuses them (the original skips existing files)
    again = rf.draw_rf(net, rf.DrawingImages("toy", objects, lambda o, size: imgs[o]), mean, 4, root, show_num=3,
                       visualization_step=32, occlude_size=17, occlude_stride=8, progress=False)
    assert again.sheet_size == res.sheet_size


def test_draw_rf_needs_a_layer_above():
    net, _, _ = network_init(1, "tiny", 0.5, seed=0)
    with pytest.raises(rf.DrawRFError, match="layerID 7"):
        rf.draw_rf(net.eval(), rf.DrawingImages("toy", [0] * 12, lambda o, s: np.zeros((64, 64, 3), np.float32)),
                   np.zeros((64, 64, 3), np.float32), 7, "/nonexistent", progress=False)


# ------------------------------------------------------------------ settings and objset as step_drawRF.m
def test_rf_settings_are_the_originals_from_224_up():
    """step_drawRF.m always uses fspecial('gaussian', 50, 30), a 33 x 33 occluder and stride 9:
    AlexNet's 227 input keeps them; only inputs under 224 are scaled (the toy's 64)."""
    original = {"occlude_size": 33, "occlude_stride": 9, "gauss_size": 50, "gauss_sigma": 30}
    for size in (224, 227, 300):
        assert rf.scaled_rf_settings(size) == original
    small = rf.scaled_rf_settings(64)
    assert small == {"occlude_size": 9, "occlude_stride": 3, "gauss_size": 14, "gauss_sigma": pytest.approx(30 * 64 / 224)}


def test_cub_drawings_use_read_annotations_objset(tmp_path, monkeypatch):
    """showResults draws from readAnnotation's objset (step_drawRF.m), not the evaluation's
    readAnnotation_sampling objset: for CUB they differ."""



    conf = cub200_conf(tmp_path, catedir=write_cub(tmp_path), readcode=tmp_path / "code")
    (tmp_path / "code").mkdir()
    savemat(tmp_path / "code" / "sampling.mat", {"validObj": np.array([[2.0], [3.0]])}, version="5")
    sampled = read_annotation_sampling_cub("cub200", conf)
    everything = read_annotation_cub("cub200", conf)[0]
    assert len(sampled) == 2 and len(everything) == 5                 # the fixture: 6 images, one under minArea
    paths = SimpleNamespace(data_conf=lambda: conf, parts_for=lambda c: (1,))
    evaluation = SimpleNamespace(binary_error=0.1, stability=0.2, layer_id=4)
    monkeypatch.setattr(pipeline, "evaluate_net", lambda *a, **k: evaluation)   # as pipeline calls it
    drawn = {}

    def fake_draw_rf(net, images, mean, layer_id, out_dir, **kw):
        drawn.update(name=images.name, objects=list(images.objects), kw=kw)
        return "drawing"
    monkeypatch.setattr(pipeline, "draw_rf", fake_draw_rf)
    exp = pipeline.Experiment("cub200", ["cub200"], model="vgg-vd-16", out=tmp_path / "out", progress=False)
    result = pipeline.show_results(exp, torch.nn.Sequential(), {}, np.zeros((224, 224, 3), np.float32), paths)
    assert result.drawing == "drawing" and drawn["name"] == "cub200"
    assert [o.filename for o in drawn["objects"]] == [o.filename for o in everything]
    assert drawn["kw"]["gauss_size"] == 50 and drawn["kw"]["occlude_size"] == 33
