"""Tests of reproduce.evaluate: binary error, location stability, checkpoints, bad input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.facts import GOLDFISH
from data_prep.ilsvrc import ilsvrc_conf
from data_prep.readers import PartTruth
from legacy_compat import loadmat
from reproduce.evaluation import location_instability as li
from reproduce.evaluation import net_evaluation as ne
from reproduce.evaluation import net_features as nf
from reproduce.layers.geometry import get_conv_net_para
from reproduce.layers.simplenn import SimpleNN
from reproduce.models.builder import network_init
from reproduce.training.checkpoints import load_mat_checkpoint, save_checkpoint


# ------------------------------------------------------------------ helpers
def _tiny_net(seed: int = 0):
    net, _, _ = network_init(1, "tiny", 0.5, seed=seed)
    return net.eval()


def _blob_images(n: int, size: int = 64, seed: int = 0):
    """n synthetic images (size x size x 3, 0-255) with a bright blob at a known place, and the blob centres."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[1:size + 1, 1:size + 1]
    imgs, centres = [], []
    for _ in range(n):
        h, w = rng.uniform(12, size - 12, size=2)
        blob = 200 * np.exp(-((yy - h) ** 2 + (xx - w) ** 2) / (2 * 4.0 ** 2))
        img = rng.uniform(0, 40, size=(size, size, 3)) + blob[..., None]
        imgs.append(img.astype(np.float32))
        centres.append(np.array([h, w]))
    return imgs, centres


def _source(imgs, truths: dict, name: str = "synthetic") -> li.CategorySource:
    return li.CategorySource(name=name, objects=list(range(len(imgs))),
                             load_patch=lambda i, size: imgs[i], truth_files=truths)


MEAN64 = np.full((64, 64, 3), 100.0, dtype=np.float32)
PART1, PARTS12 = li.StabilitySettings(part_list=(1,)), li.StabilitySettings(part_list=(1, 2))


def _matlab_peaks(x: np.ndarray):
    """computeStability.m's peak search, literally, for one image: x is H x W x P (MATLAB layout)."""
    h, w, p = x.shape
    idx = np.argmax(x, axis=0)                 # (W, P), first max over h
    v = np.max(x, axis=0)
    tmp = np.argmax(v, axis=0)                 # (P,), first max over w
    flat = idx.reshape(-1, order="F")          # 1 x W x P in linear order
    idx_h = flat[tmp + np.arange(p) * h]
    return idx_h + 1, tmp + 1, v.max(axis=0)


# ------------------------------------------------------------------ showResults.m pieces
def test_format_result_line_matches_demo_output():
    assert ne.format_result_line(0.05, 0.123456789) == "binary error 0.050000     location stability 0.123457"
    assert ne.format_result_line(0, float("nan")) == "binary error 0.000000     location stability NaN"


def test_final_val_error_from_package_stats_and_softmax_hint():
    stats = {"train": [{"binerr": 0.5}], "val": [{"binerr": 0.4, "num": 10}, {"binerr": 0.25, "num": 10}]}
    assert ne.final_val_error(stats) == 0.25
    softmax = {"val": [{"top1err": 0.3, "lossForClassification": 1.0}]}
    assert ne.final_val_error(softmax, "top1err") == 0.3
    with pytest.raises(nf.EvaluationError, match="top1err"):
        ne.final_val_error(softmax)
    with pytest.raises(nf.EvaluationError, match="no validation"):
        ne.final_val_error({"train": [], "val": []})


def test_final_val_error_from_original_checkpoint(checkpoints_dir):
    stats = loadmat(checkpoints_dir / "checkpoint_single_epoch3.mat")["stats"]
    assert ne.final_val_error(stats) == pytest.approx(0.75)


def test_layer_and_part_choices():
    assert ne.layer_id_for_model("vgg-vd-16") == 14
    assert ne.layer_id_for_model("alexnet") == ne.layer_id_for_model("vgg-s") == 6
    with pytest.raises(nf.EvaluationError, match="invalid model"):
        ne.layer_id_for_model("resnet")
    assert ne.part_list_for("cub200") == (1, 6, 14)
    assert ne.part_list_for("ilsvrcanimalpart", "n01443537") == (1,)
    assert nf.first_conv_mask_layer_id(["conv", "relu", "pool", "conv", "conv_mask", "conv_mask"]) == 3
    assert nf.first_conv_mask_layer_id(["conv", "relu", "conv"]) is None


def test_layer_id_out_of_range_is_a_clear_error():
    net = _tiny_net()
    convnet = get_conv_net_para(net)
    assert nf.target_layer_index(convnet, 4) == 9          # the first conv_mask layer (1-based SimpleNN index)
    assert net.layer_types[9 - 1] == "conv_mask"
    for bad in (0, 8, -1):
        with pytest.raises(nf.EvaluationError, match="out of range"):
            nf.target_layer_index(convnet, bad)


# ------------------------------------------------------------------ peaks
def test_peak_positions_follow_the_original_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(3, 5, 6, 6)).astype(np.float32)    # many ties
    idx_h, idx_w, score = li.peak_positions(torch.from_numpy(x))
    for n in range(3):
        h, w, s = _matlab_peaks(x[n].transpose(1, 2, 0))
        np.testing.assert_array_equal(idx_h[n].numpy(), h)
        np.testing.assert_array_equal(idx_w[n].numpy(), w)
        np.testing.assert_array_equal(score[n].numpy(), s)


def test_peak_positions_nonsquare_quirk_and_fix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)            # H=5 > W=3
    with pytest.raises(IndexError):
        # P*W = 12 cells, the original's index tmp + (P-1)*H reaches 15+: MATLAB errors too
        li.peak_positions(torch.from_numpy(x))
    x2 = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)           # H=3 < W=5: reads other cells
    h_quirk, _, _ = li.peak_positions(torch.from_numpy(x2))
    for n in range(2):
        np.testing.assert_array_equal(h_quirk[n].numpy(), _matlab_peaks(x2[n].transpose(1, 2, 0))[0])
    h_fix, w_fix, s_fix = li.peak_positions(torch.from_numpy(x2), fix_nonsquare_index=True)
    for n in range(2):
        for p in range(4):
            h, w = np.unravel_index(np.argmax(x2[n, p].T), (5, 3))[::-1]   # column-major first max
            assert (h_fix[n, p].item(), w_fix[n, p].item()) == (h + 1, w + 1)
    np.testing.assert_allclose(s_fix.numpy(), x2.reshape(2, 4, -1).max(axis=2))


def test_peaks_to_image_is_x2p():
    convnet = {"targetStride": [4.0, 8.0], "targetCenter": [1.0, 3.5]}
    pos = li.peaks_to_image(np.array([[1, 2]]), np.array([[3, 1]]), 2, convnet)
    np.testing.assert_array_equal(pos, [[[3.5, 19.5], [11.5, 3.5]]])


# ------------------------------------------------------------------ getDistSqrtVar
def test_get_dist_sqrt_var_known_answer():
    # 4 images, 2 filters, 1 part; image 3 has no landmark, image 4 has two (ignored)
    truth = li.part_centres([[np.array([[10.0], [10.0]]), np.array([10.0, 20.0]), None,
                              np.array([1.0, 2.0, 3.0, 4.0])]])
    pos = np.zeros((4, 2, 2))
    pos[:, 0] = [[13, 14], [10, 20], [0, 0], [0, 0]]      # filter 1: distances 5 and 0
    pos[:, 1] = [[10, 10], [10, 20], [0, 0], [0, 0]]      # filter 2: distances 0 and 0
    score = np.ones((4, 2))
    d = li.get_dist_sqrt_var(pos, score, truth, patch_num_per_pattern=100)
    np.testing.assert_allclose(d, [np.std([5.0, 0.0], ddof=1), 0.0])
    assert truth.valid_images.tolist() == [True, True, False, True]


def test_get_dist_sqrt_var_takes_the_top_scored_images_stably():
    centres = [np.array([0.0, 0.0])] * 5
    truth = li.part_centres([centres])
    pos = np.zeros((5, 1, 2))
    pos[:, 0, 0] = [1, 2, 3, 100, 200]
    score = np.array([[5.0], [5.0], [5.0], [1.0], [5.0]])  # ties: images 1, 2, 3, 5 in order
    d = li.get_dist_sqrt_var(pos, score, truth, patch_num_per_pattern=3)
    np.testing.assert_allclose(d, [np.std([1, 2, 3], ddof=1)])


def test_a_part_with_fewer_than_two_images_gives_nan():
    truth = li.part_centres([[np.array([1.0, 1.0])] * 3, [np.array([2.0, 2.0]), None, None]])
    d = li.get_dist_sqrt_var(np.zeros((3, 2, 2)), np.ones((3, 2)), truth)
    assert np.isnan(d).all()


def test_stability_from_distances_drops_nan_and_keeps_the_smallest():
    d = np.array([3.0, np.nan, 1.0, 2.0])
    assert li.stability_from_distances(d, 2, (3, 4)) == pytest.approx(1.5 / 5)
    assert li.stability_from_distances(d, 10, (3, 4)) == pytest.approx(2.0 / 5)
    assert np.isnan(li.stability_from_distances(np.array([np.nan, np.nan]), 2, (3, 4)))


def test_multiclass_stability_assigns_each_filter_to_its_best_category():
    stab = np.array([[0.1, 0.5], [0.3, 0.2], [np.nan, 0.4]])
    score = np.array([[2.0, 1.0], [1.0, 3.0], [5.0, 5.0]])   # filter 3: tie -> category 1 (NaN, dropped)
    assert li.multiclass_stability(stab, score) == pytest.approx((0.1 + 0.2) / 2)


def test_location_stability_on_real_fox_truth_files(shared_data):
    """Peaks placed at a fixed offset from the fox's head never move relative to it: stability 0;
    random peaks reproduce a direct loop over the original's steps."""
    conf = ilsvrc_conf(shared_data)
    files = [conf.truth_file("n02118333", p) for p in (1, 2)]
    truth = li.read_part_centres(files)
    assert truth.num_images == 286
    assert truth.present.sum(axis=1).tolist() == [211, 143]
    head = truth.centres[0]
    usable = ~np.isnan(head[:, 0])
    pos = np.zeros((286, 3, 2))
    pos[usable] = head[usable][:, None, :] + np.array([5.0, -7.0])
    d = li.get_dist_sqrt_var(pos, np.random.default_rng(0).random((286, 3)), li.read_part_centres(files[:1]))
    np.testing.assert_allclose(d, 0.0, atol=1e-12)
    assert li.stability_from_distances(d, 3, (224, 224)) == pytest.approx(0.0, abs=1e-12)

    rng = np.random.default_rng(1)
    pos = rng.uniform(1, 224, size=(286, 4, 2))
    score = rng.random((286, 4))
    d = li.get_dist_sqrt_var(pos, score, truth, 100)
    expected = np.zeros(4)
    for p in range(4):
        order = np.argsort(-score[:, p], kind="stable")
        for k in range(2):
            keep = [i for i in order if not np.isnan(truth.centres[k, i, 0])][:100]
            dist = np.linalg.norm(truth.centres[k, keep] - pos[keep, p], axis=1)
            expected[p] += np.std(dist, ddof=1) / 2
    np.testing.assert_allclose(d, expected, rtol=1e-12)


# ------------------------------------------------------------------ end to end on a tiny net
def test_compute_stability_batched_equals_one_by_one():
    net = _tiny_net()
    imgs, centres = _blob_images(10)
    source = _source(imgs, {1: centres, 2: [c + 3 for c in centres]})
    results = [li.compute_stability(net, source, 4, MEAN64, PARTS12, li.ForwardPass(batch_size=b)) for b in (1, 4, 32)]
    for r in results[1:]:
        np.testing.assert_array_equal(r.pos, results[0].pos)
        np.testing.assert_allclose(r.score, results[0].score, rtol=1e-5)   # conv sums differ by batch size
        assert r.stability == pytest.approx(results[0].stability, rel=1e-12)
    r = results[0]
    assert r.map_size == (16, 16) and r.image_size == (64, 64) and r.target_layer == 9
    assert r.pos.shape == (10, 64, 2) and np.isfinite(r.stability)
    # positions are x2p_ of map cells: centre 2.5, stride 4
    assert set(np.unique((r.pos - 2.5) / 4)) <= set(range(16))


def test_compute_stability_part_rate_and_selected_ratio():
    net = _tiny_net()
    imgs, centres = _blob_images(6)
    source = _source(imgs, {1: centres})
    full = li.compute_stability(net, source, 4, MEAN64, PART1)
    half = li.compute_stability(net, source, 4, MEAN64, li.StabilitySettings(part_list=(1,), part_rate=0.5,
                                                                              selected_pattern_ratio=0.5))
    assert half.dist_sqrt_var.shape == (32,)
    np.testing.assert_array_equal(half.dist_sqrt_var, full.dist_sqrt_var[:32])
    expected = np.sort(full.dist_sqrt_var[:32])[:16].mean() / np.hypot(64, 64)
    assert half.stability == pytest.approx(expected)


def test_an_image_with_landmarks_but_no_object_is_left_out_with_a_warning():
    """ILSVRC n02503517's truth(35): landmarks on an object readAnnotation.m skipped for minArea (an empty
    objset element). The original's getI fails on it; the port leaves the image out, as one without a
    part: the same figures as the category without that image's landmarks."""
    net = _tiny_net()
    imgs, centres = _blob_images(8)
    truths = {1: centres, 2: [c + 3 for c in centres]}
    source = _source(imgs, truths)
    source.objects[2] = None                               # the box under minArea
    with pytest.warns(RuntimeWarning, match=r"image\(s\) 3 have part landmarks but no object"):
        got = li.compute_stability(net, source, 4, MEAN64, PARTS12)
    blanked = _source(imgs, {k: [None if i == 2 else c for i, c in enumerate(v)] for k, v in truths.items()})
    want = li.compute_stability(net, blanked, 4, MEAN64, PARTS12)
    assert not got.valid_images[2] and got.valid_images.sum() == 7 and not got.score[2].any()
    np.testing.assert_array_equal(got.dist_sqrt_var, want.dist_sqrt_var)
    assert got.stability == want.stability and np.isfinite(got.stability)


def test_no_image_with_any_part_is_a_clear_error():
    net = _tiny_net()
    imgs, _ = _blob_images(3)
    with pytest.raises(nf.EvaluationError, match="no image has any of the parts"):
        li.compute_stability(net, _source(imgs, {1: [None] * 3}), 4, MEAN64, PART1)


def test_a_part_without_images_gives_nan_with_a_warning():
    net = _tiny_net()
    imgs, centres = _blob_images(4)
    with pytest.warns(RuntimeWarning, match="NaN"):
        r = li.compute_stability(net, _source(imgs, {1: centres, 2: [None] * 4}), 4, MEAN64, PARTS12)
    assert np.isnan(r.stability) and np.isnan(r.dist_sqrt_var).all()


def test_filters_that_never_fire_are_dropped_like_nan():
    # a filter that never fires peaks at the first cell everywhere: distance spread of the landmarks
    net = _tiny_net()
    imgs, centres = _blob_images(5)
    with torch.no_grad():
        layer = net.layers[8]
        layer.weight[:3] = 0
        layer.bias[:3] = -1.0
    r = li.compute_stability(net, _source(imgs, {1: centres}), 4, MEAN64, PART1)
    assert (r.pos[:, :3] == 2.5).all() and (r.score[:, :3] == -1.0).all()
    d = r.dist_sqrt_var.copy()
    d[5] = np.nan                                          # a NaN filter is left out of the mean
    assert li.stability_from_distances(d, 64, (64, 64)) == pytest.approx(np.delete(d, 5).mean() / np.hypot(64, 64))


def test_input_guard_names_the_image():
    net = _tiny_net()
    imgs, centres = _blob_images(3)
    with pytest.raises(nf.EvaluationError, match="no value below -10"):
        li.compute_stability(net, _source(imgs, {1: centres}), 4, np.zeros((64, 64, 3), np.float32), PART1)
    with pytest.raises(nf.EvaluationError, match="meanData is 32 x 32"):
        li.compute_stability(net, _source(imgs, {1: centres}), 4, np.zeros((32, 32, 3), np.float32), PART1)


def test_multiclass_on_two_synthetic_categories():
    net = _tiny_net()
    a_imgs, a_c = _blob_images(5, seed=1)
    b_imgs, b_c = _blob_images(5, seed=2)
    sources = [_source(a_imgs, {1: a_c, 2: a_c}, "a"), _source(b_imgs, {1: b_c, 2: b_c}, "b")]
    value, details = li.compute_stability_multiclass(net, sources, 4, MEAN64, PARTS12)
    assert details["stability"].shape == (64, 2)
    singles = [li.compute_stability(net, s, 4, MEAN64, PARTS12) for s in sources]
    for k, s in enumerate(singles):
        np.testing.assert_allclose(details["stability"][:, k], s.dist_sqrt_var / np.hypot(64, 64))
        np.testing.assert_allclose(details["score"][:, k], s.score.mean(axis=0))
    assert value == pytest.approx(li.multiclass_stability(details["stability"], details["score"]))


def test_goldfish_rule_sticks_for_later_categories():
    net = _tiny_net()
    imgs, c = _blob_images(4)
    sources = [_source(imgs, {1: c, 2: c}, GOLDFISH), _source(imgs, {1: c, 2: [None] * 4}, "later")]
    _, details = li.compute_stability_multiclass(net, sources, 4, MEAN64, PARTS12)
    assert details["part_lists"] == [(1,), (1,)]
    pass_through = li.compute_stability_multiclass(
        net, sources, 4, MEAN64, li.StabilitySettings(part_list=(1, 2), goldfish_rule_sticks=False))
    assert pass_through[1]["part_lists"] == [(1,), (1, 2)]
    assert np.isnan(pass_through[1]["stability"][:, 1]).all()


# ------------------------------------------------------------------ baseline and checkpoints
def _plain_copy(net):
    """The same net with every conv_mask layer replaced by a plain conv (the baseline)."""
    specs = net.to_specs()
    for s in specs:
        if s.type == "conv_mask":
            s.type = "conv"
            s.weights = s.weights[:2]
            s.fields = {k: v for k, v in s.fields.items() if k in ("pad", "stride", "dilate")}
    plain = SimpleNN.from_specs(specs, meta=dict(net.meta)).eval()
    return plain


def test_plain_cnn_baseline_is_measured_on_its_conv_layer():
    net = _tiny_net()
    plain = _plain_copy(net)
    assert "conv_mask" not in plain.layer_types
    imgs, centres = _blob_images(5)
    stats = {"val": [{"binerr": 0.125}]}
    with pytest.raises(nf.EvaluationError, match="no conv_mask layer"):
        ne.evaluate_net(plain, stats, [_source(imgs, {1: centres})], MEAN64, ne.EvaluationSettings(part_list=(1,)))
    res = ne.evaluate_net(plain, stats, [_source(imgs, {1: centres})], MEAN64,
                          ne.EvaluationSettings(part_list=(1,), layer_id=4))
    assert res.is_baseline and res.binary_error == 0.125 and np.isfinite(res.stability)
    # the plain conv at layerID 4 sees an unmasked input: compare with the ICNN's masked one
    icnn = ne.evaluate_net(net, stats, [_source(imgs, {1: centres})], MEAN64, ne.EvaluationSettings(part_list=(1,)))
    assert icnn.layer_id == 4 and not icnn.is_baseline
    assert res.line() == ne.format_result_line(0.125, res.stability)


def _subset_fox_conf(tmp_path: Path, shared_data: Path, n: int):
    """A data folder holding the first n fox images (links), the real data.mat and truth files."""
    root = tmp_path / "detanimalpart" / "n02118333_obj" / "img"
    (root / "img").mkdir(parents=True)
    src = shared_data / "detanimalpart" / "n02118333_obj" / "img"
    os.symlink(src / "data.mat", root / "data.mat")
    for i in range(1, n + 1):
        os.symlink(src / "img" / f"{i:05d}.jpg", root / "img" / f"{i:05d}.jpg")
    return ilsvrc_conf(shared_data, imgdir=tmp_path / "detanimalpart")


def test_evaluate_original_mat_checkpoint_and_package_checkpoint_agree(tmp_path, shared_data, checkpoints_dir):
    conf = _subset_fox_conf(tmp_path, shared_data, 24)
    mat = checkpoints_dir / "checkpoint_single_epoch3.mat"
    mean = np.full((16, 16, 3), 120.0, dtype=np.float32)
    res_mat = ne.evaluate_checkpoint(mat, "n02118333", conf, mean, forward=li.ForwardPass("cpu", progress=False))
    assert res_mat.binary_error == pytest.approx(0.75) and res_mat.layer_id == 3
    assert np.isfinite(res_mat.stability) and res_mat.details.pos.shape == (24, 6, 2)

    state = load_mat_checkpoint(mat)
    pt = save_checkpoint(tmp_path / "net-epoch-3.pt", state)
    res_pt = ne.evaluate_checkpoint(pt, "n02118333", conf, mean.transpose(2, 0, 1),
                                    forward=li.ForwardPass("cpu", progress=False))
    assert res_pt.stability == pytest.approx(res_mat.stability, rel=1e-12)
    assert res_pt.binary_error == res_mat.binary_error
    assert res_pt.line().startswith("binary error 0.750000     location stability ")


def test_missing_checkpoint_and_bad_mean():
    with pytest.raises(nf.EvaluationError, match="not found"):
        ne.load_net_for_evaluation("/nonexistent/net-epoch-1.mat")
    with pytest.raises(nf.EvaluationError, match="H x W x 3"):
        nf.read_mean_data(np.zeros((5, 5)))


# ------------------------------------------------------------------ truth entries with several objects
def test_multi_object_entries_count_as_present_but_never_as_usable(shared_data):
    """The goldfish's real truth file: 200 entries with the part (computeStability.m's validImg),
    9 of them with several objects, which getDistSqrtVar.m leaves out (numel(pHW_center) > 2)."""
    truth = li.read_part_centres([ilsvrc_conf(shared_data).truth_file("n01443537", 1)])
    assert truth.num_images == 844
    assert truth.present.sum() == 200 and truth.usable.sum() == 191
    assert truth.present[0, 11] and not truth.usable[0, 11]


def test_multi_object_image_is_processed_and_scored_but_not_measured():
    """computeStability.m runs an image whose only entry has several objects (its score counts in
    step_computeStability_multiClass.m's mean), getDistSqrtVar.m leaves it out of the distances."""
    net = _tiny_net()
    imgs, centres = _blob_images(6)
    two = PartTruth(pHW_center=np.array([[10.0, 40.0], [12.0, 30.0]]))
    multi = li.compute_stability(net, _source(imgs, {1: [two] + centres[1:]}), 4, MEAN64, PART1)
    none = li.compute_stability(net, _source(imgs, {1: [None] + centres[1:]}), 4, MEAN64, PART1)
    assert multi.valid_images.tolist() == [True] * 6 and none.valid_images.tolist() == [False] + [True] * 5
    assert (multi.score[0] != 0).any() and (none.score[0] == 0).all()
    np.testing.assert_allclose(multi.score[1:], none.score[1:], rtol=1e-5)    # batches differ in size
    np.testing.assert_array_equal(multi.dist_sqrt_var, none.dist_sqrt_var)
    _, d_multi = li.compute_stability_multiclass(net, [_source(imgs, {1: [two] + centres[1:]})], 4, MEAN64,
                                                 PART1, li.ForwardPass(batch_size=1))
    _, d_none = li.compute_stability_multiclass(net, [_source(imgs, {1: [None] + centres[1:]})], 4, MEAN64,
                                                PART1, li.ForwardPass(batch_size=1))
    np.testing.assert_allclose(d_multi["score"][:, 0] * 6 - d_none["score"][:, 0] * 6,
                               multi.score[0], rtol=1e-4, atol=1e-4)


def test_measured_layer_fills_in_the_geometry_from_the_net():
    net = _tiny_net()
    layer = li.MeasuredLayer(4).of(net)
    assert layer.layer_id == 4 and layer.image_size == (64, 64)
    np.testing.assert_array_equal(np.asarray(layer.convnet.target_layers),
                                  np.asarray(get_conv_net_para(net).target_layers))
    given = li.MeasuredLayer(4, convnet=layer.convnet, image_size=[32.0, 48.0]).of(net)
    assert given.convnet is layer.convnet and given.image_size == (32, 48)


def test_layer_maps_of_batches_are_the_layers_output():
    net = _tiny_net()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32) - 100)
    target = nf.target_layer_index(get_conv_net_para(net), 4)
    (chunk, y), = list(nf.layer_maps_of_batches(net, [([0, 1, 2], x)], target))
    assert chunk == [0, 1, 2] and not y.requires_grad
    torch.testing.assert_close(y, nf.layer_output(net, x, target), rtol=0, atol=0)
