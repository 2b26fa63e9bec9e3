"""data_prep.toy: the generated toy dataset (ILSVRC layout, deterministic, consistent landmarks and masks)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import toy
from data_prep.toy import (
    TOY_CATEGORIES,
    TOY_PART_NAMES,
    ToyOptions,
    crop_coordinates,
    generate_toy_dataset,
    manifest_matches,
    read_manifest,
    render_negative,
    render_positive,
)
from legacy_compat.matio import loadmat

N_POS, N_NEG = 12, 10


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "toy"
    generate_toy_dataset(root, ToyOptions(seed=0, n_pos=N_POS, n_neg=N_NEG), progress=False)
    return root


@pytest.fixture(scope="module")
def annotations(toy_root) -> dict:
    return {c: json.loads((toy_root / f"detanimalpart/{c}_obj/annotations.json").read_text())
            for c in TOY_CATEGORIES}


# ------------------------------------------------------------------ determinism

def test_same_seed_gives_byte_identical_files(toy_root, tmp_path):
    again = generate_toy_dataset(tmp_path / "again", ToyOptions(seed=0, n_pos=N_POS, n_neg=N_NEG), progress=False)
    a, b = _files(toy_root), _files(again.root)
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k] != b[k]]
    assert different == []
    assert sorted(os.listdir(tmp_path)) == ["again"]            # written atomically: no temp folder left


def test_other_seed_differs_and_prefix_is_stable(toy_root, tmp_path):
    other = generate_toy_dataset(tmp_path / "s1", ToyOptions(seed=1, n_pos=3, n_neg=2, categories=["toy02"]),
                                 progress=False)
    assert (other.images("toy02") / "00001.jpg").read_bytes() != (toy_root / "detanimalpart/toy02_obj/img/img/00001.jpg").read_bytes()
    fewer = generate_toy_dataset(tmp_path / "s0", ToyOptions(seed=0, n_pos=3, n_neg=2, categories=["toy02"]),
                                 progress=False)
    for i in (1, 2, 3):   # images do not depend on how many are generated, nor on the other categories
        assert (fewer.images("toy02") / f"{i:05d}.jpg").read_bytes() == \
            (toy_root / f"detanimalpart/toy02_obj/img/img/{i:05d}.jpg").read_bytes()
        assert (fewer.masks("toy02") / f"{i:05d}.png").read_bytes() == \
            (toy_root / f"detanimalpart/toy02_obj/mask/{i:05d}.png").read_bytes()
    assert (fewer.neg_dir / "00002.JPEG").read_bytes() == (toy_root / "neg/00002.JPEG").read_bytes()


# ------------------------------------------------------------------ layout

def test_layout_and_counts(toy_root):
    for c in TOY_CATEGORIES:
        obj = toy_root / f"detanimalpart/{c}_obj"
        # readAnnotation.m counts every entry of img/img: it must hold the images and nothing else
        assert sorted(os.listdir(obj / "img/img")) == [f"{i:05d}.jpg" for i in range(1, N_POS + 1)]
        assert sorted(os.listdir(obj / "mask")) == [f"{i:05d}.png" for i in range(1, N_POS + 1)]
        assert sorted(os.listdir(toy_root / f"data_input/{c}")) == ["truth_part01.mat", "truth_part02.mat",
                                                                     "truth_part03.mat"]
    assert sorted(os.listdir(toy_root / "neg")) == [f"{i:05d}.JPEG" for i in range(1, N_NEG + 1)]
    m = read_manifest(toy_root)
    assert m["n_pos"] == N_POS and m["n_neg"] == N_NEG and m["categories"] == list(TOY_CATEGORIES)
    assert m["input_size"] == 64 and m["part_list"] == [1, 2] and m["min_area"] == 256
    with Image.open(toy_root / "detanimalpart/toy01_obj/img/img/00001.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    with Image.open(toy_root / "neg/00001.JPEG") as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_data_mat_mirrors_the_real_structure(toy_root):
    data = loadmat(toy_root / "detanimalpart/toy01_obj/img/data.mat")
    samples = data.samples
    assert samples.shape == (1, N_POS) and samples.fieldnames == ["obj", "class"]
    s = samples[0, 0]
    assert list(s.obj.bndbox) == ["ymin", "ymax", "xmin", "xmax"]          # the real file's field order
    assert s.obj.bndbox.xmin.shape == (1, 1) and s.obj.bndbox.xmin.dtype == np.float64
    assert float(s["class"][0, 0]) == 1.0
    with open(toy_root / "detanimalpart/toy01_obj/img/data.mat", "rb") as f:
        assert f.read(19) == b"MATLAB 7.3 MAT-file"


def test_truth_files_mirror_the_real_structure(toy_root, annotations):
    for c in TOY_CATEGORIES:
        for part in TOY_PART_NAMES[c]:
            truth = loadmat(toy_root / f"data_input/{c}/truth_part{part:02d}.mat").truth
            assert truth.shape == (1, N_POS) and truth.fieldnames == ["pHW_center", "pHW_scale", "obj"]
            for i, e in enumerate(truth.elements(), start=1):
                ann = annotations[c]["objects"][i - 1]
                if ann["landmarks_yx"][str(part)] is None:
                    assert e.pHW_center.shape == (0, 0) and e.pHW_scale.shape == (0, 0) and e.obj.shape == (0, 0)
                    continue
                assert e.pHW_center.shape == (2, 1) and e.pHW_center.dtype == np.float64
                assert e.pHW_scale.shape == (2, 1) and (e.pHW_scale > 0).all()
                xmin, ymin, xmax, ymax = ann["bndbox_xyxy"]
                assert e.obj.bndbox == {"xmin": str(xmin), "xmax": str(xmax), "ymin": str(ymin), "ymax": str(ymax)}
                assert e.obj.folder == c and e.obj.filename == f"{c}_{i:05d}" and float(e.obj.ID[0, 0]) == i


def test_readable_by_the_ilsvrc_reader(toy_root):
    ilsvrc = pytest.importorskip("data_prep.ilsvrc")
    conf = ilsvrc.ilsvrc_conf(toy_root, readcode=toy_root / "data_input", min_area=toy.toy_min_area(64))
    objset = ilsvrc.read_annotation_ilsvrc("toy03", conf)
    assert len(objset) == N_POS and all(o is not None for o in objset)
    assert objset[4].filename == "00005.jpg" and objset[4].folder == "toy03_obj/img/img/"
    truth = ilsvrc.read_part_truth_ilsvrc("toy03", 1, conf)
    assert len(truth) == N_POS and all(t.center is not None for t in truth)


# ------------------------------------------------------------------ landmarks and masks

def test_crop_coordinates_known_answers():
    box = (101, 11, 120, 20)                  # xmin, ymin, xmax, ymax: 20 wide, 10 high
    assert crop_coordinates((11, 101), box, 20) == (1.5, 1.0)            # first pixel centres
    assert crop_coordinates((20, 120), box, 20) == (19.5, 20.0)          # last pixel centres
    assert crop_coordinates((10.5, 100.5), box, 20) == (0.5, 0.5)        # the crop's outer edges
    assert crop_coordinates((20.5, 120.5), box, 20) == (20.5, 20.5)
    assert crop_coordinates((15.5, 110.5), box, 224) == (112.5, 112.5)  # the centre


def test_landmarks_inside_images_and_crops(toy_root, annotations):
    for c in TOY_CATEGORIES:
        for ann in annotations[c]["objects"]:
            xmin, ymin, xmax, ymax = ann["bndbox_xyxy"]
            assert 1 <= xmin < xmax <= 64 and 1 <= ymin < ymax <= 64
            assert (xmax - xmin + 1) * (ymax - ymin + 1) >= toy.toy_min_area(64)
            for part in ("1", "2"):
                assert ann["landmarks_yx"][part] is not None          # partList [1 2] always present
            for part, yx in ann["landmarks_yx"].items():
                if yx is None:
                    continue
                assert ymin - 0.5 <= yx[0] <= ymax + 0.5 and xmin - 0.5 <= yx[1] <= xmax + 0.5
        for part in TOY_PART_NAMES[c]:
            truth = loadmat(toy_root / f"data_input/{c}/truth_part{part:02d}.mat").truth
            for e, ann in zip(truth.elements(), annotations[c]["objects"]):
                yx = ann["landmarks_yx"][str(part)]
                if yx is None:
                    continue
                hw = e.pHW_center[:, 0]
                assert ((0.5 <= hw) & (hw <= 64.5)).all()
                np.testing.assert_allclose(hw, crop_coordinates(yx, ann["bndbox_xyxy"], 64), atol=1e-3)


def test_masks_agree_with_landmarks_and_boxes(toy_root, annotations):
    checked = 0
    for c in TOY_CATEGORIES:
        for ann in annotations[c]["objects"]:
            i = ann["index"]
            mask = np.asarray(Image.open(toy_root / f"detanimalpart/{c}_obj/mask/{i:05d}.png"))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= set(range(0, 6))
            xmin, ymin, xmax, ymax = ann["bndbox_xyxy"]
            rows, cols = np.nonzero(mask)
            assert rows.min() + 1 >= ymin and rows.max() + 1 <= ymax        # the box holds the object
            assert cols.min() + 1 >= xmin and cols.max() + 1 <= xmax
            assert (mask == 4).sum() > 20                                     # a body
            for part, yx in ann["landmarks_yx"].items():
                hit = mask == int(part)
                if yx is None:
                    assert not hit.any()                                      # absent part: no pixels
                    continue
                r, q = np.nonzero(hit)
                assert r.size > 0
                # the landmark is the centre of the part's visible extent (1-based pixel centres)
                centre = ((r.min() + r.max()) / 2 + 1, (q.min() + q.max()) / 2 + 1)
                assert abs(centre[0] - yx[0]) <= 1.0 and abs(centre[1] - yx[1]) <= 1.0
                checked += 1
    assert checked >= 2 * N_POS * len(TOY_CATEGORIES)


def test_some_optional_parts_are_absent_and_counted(toy_root):
    m = read_manifest(toy_root)
    for c in ("toy01", "toy03"):
        truth = loadmat(toy_root / f"data_input/{c}/truth_part03.mat").truth
        empty = sum(e.pHW_center.size == 0 for e in truth.elements())
        assert empty == m["stats"][c]["absent"]["3"]
    # over more images the tail of toy01 is missing now and then, never head or legs
    absent = [render_positive("toy01", 0, i).landmarks for i in range(1, 41)]
    assert 0 < sum(lm[3] is None for lm in absent) < 20
    assert all(lm[1] is not None and lm[2] is not None for lm in absent)


def test_positions_poses_and_colours_vary(annotations):
    objs = annotations["toy01"]["objects"]
    assert {o["facing"] for o in objs} == {"left", "right"}
    assert len({tuple(o["bndbox_xyxy"]) for o in objs}) == len(objs)
    heads = np.array([o["landmarks_yx"]["1"] for o in objs])
    assert np.ptp(heads[:, 0]) > 10 and np.ptp(heads[:, 1]) > 10


def test_head_is_on_the_facing_side_in_crop_coordinates(toy_root, annotations):
    """Parts sit consistently relative to the box: the head in the upper part, on the side the animal faces."""
    truth = loadmat(toy_root / "data_input/toy01/truth_part01.mat").truth
    legs = loadmat(toy_root / "data_input/toy01/truth_part02.mat").truth
    for e, f, ann in zip(truth.elements(), legs.elements(), annotations["toy01"]["objects"]):
        h, w = e.pHW_center[:, 0]
        lh, lw = f.pHW_center[:, 0]
        assert h < 32 and lh > 32                                     # head high, front legs low
        assert (w > 32) == (ann["facing"] == "right")
        assert (w > lw) == (ann["facing"] == "right")                 # head ahead of the front legs


# ------------------------------------------------------------------ negatives

def test_negatives_have_stray_parts_of_one_kind_only(toy_root):
    kinds = read_manifest(toy_root)["negatives"]
    assert len(kinds) == N_NEG
    for i in range(1, 41):
        image, meta = render_negative(0, i)
        strays = meta["distractors"]
        assert 1 <= len(strays) <= 3
        assert len({s["kind"] for s in strays}) == 1                  # never head + legs (+ body ...)
        if i <= N_NEG:                                               # the files are these renderings
            assert strays[0]["kind"] == kinds[i - 1]
            assert toy._jpeg_bytes(image) == (toy_root / f"neg/{i:05d}.JPEG").read_bytes()
    assert len(set(kinds)) > 1


# ------------------------------------------------------------------ options and bad input

def test_manifest_matching(toy_root):
    assert manifest_matches(toy_root, ToyOptions(seed=0, n_pos=N_POS, n_neg=N_NEG))
    assert manifest_matches(toy_root, ToyOptions(seed=0, n_pos=N_POS, n_neg=N_NEG, categories=["toy02"]))
    assert not manifest_matches(toy_root, ToyOptions(seed=1, n_pos=N_POS, n_neg=N_NEG))
    assert not manifest_matches(toy_root, ToyOptions(seed=0, n_pos=N_POS, n_neg=N_NEG, input_size=224))
    assert read_manifest(toy_root.parent / "nothing") is None


def test_input_size_scales_the_truth(tmp_path):
    p = generate_toy_dataset(tmp_path / "t", ToyOptions(n_pos=2, n_neg=1, categories=["toy01"], input_size=224),
                             progress=False)
    ann = json.loads(p.annotations("toy01").read_text())["objects"][0]
    e = loadmat(p.truth_file("toy01", 1)).truth[0, 0]
    np.testing.assert_allclose(e.pHW_center[:, 0], crop_coordinates(ann["landmarks_yx"]["1"],
                                                                     ann["bndbox_xyxy"], 224), atol=1e-9)
    small = generate_toy_dataset(tmp_path / "t64", ToyOptions(n_pos=2, n_neg=1, categories=["toy01"]), progress=False)
    e64 = loadmat(small.truth_file("toy01", 1)).truth[0, 0]
    np.testing.assert_allclose(e.pHW_center - 0.5, (e64.pHW_center - 0.5) * 224 / 64, rtol=1e-12)
    np.testing.assert_allclose(e.pHW_scale, e64.pHW_scale * 224 / 64, rtol=1e-12)


def test_bad_arguments(tmp_path, toy_root):
    with pytest.raises(ValueError, match="toy01, toy02, toy03"):
        generate_toy_dataset(tmp_path / "x", ToyOptions(categories=["toy09"]), progress=False)
    with pytest.raises(ValueError, match="n_pos"):
        generate_toy_dataset(tmp_path / "x", ToyOptions(n_pos=0), progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_toy_dataset(toy_root, ToyOptions(n_pos=1, n_neg=1), progress=False)
    assert read_manifest(toy_root)["n_pos"] == N_POS                    # untouched


def test_truth_as_mat_73_holds_the_same_values(toy_root, tmp_path):
    p = generate_toy_dataset(tmp_path / "t73", ToyOptions(n_pos=N_POS, n_neg=1, categories=["toy01"],
                                                          truth_version="7.3"), progress=False)
    with open(p.truth_file("toy01", 3), "rb") as f:
        assert f.read(19) == b"MATLAB 7.3 MAT-file"
    with open(toy_root / "data_input/toy01/truth_part03.mat", "rb") as f:
        assert f.read(10) == b"MATLAB 5.0"
    a = loadmat(p.truth_file("toy01", 3)).truth
    b = loadmat(toy_root / "data_input/toy01/truth_part03.mat").truth
    assert a.shape == b.shape and a.fieldnames == b.fieldnames
    for x, y in zip(a.elements(), b.elements()):
        np.testing.assert_array_equal(x.pHW_center, y.pHW_center)
        np.testing.assert_array_equal(x.pHW_scale, y.pHW_scale)
        assert (x.obj.shape == (0, 0) and y.obj.shape == (0, 0)) if not isinstance(x.obj, dict) else x.obj == y.obj
    with pytest.raises(ValueError, match="truth_version"):
        generate_toy_dataset(tmp_path / "bad", ToyOptions(truth_version="4"), progress=False)


def test_toy_options_crop_size_and_manifest_fields():
    assert ToyOptions().crop_size == 64 and ToyOptions(image_size=96).crop_size == 96
    fields = ToyOptions(seed=2, n_pos=3, n_neg=1, categories=("toy02",), input_size=224).manifest_fields()
    assert fields == {"seed": 2, "n_pos": 3, "n_neg": 1, "categories": ["toy02"], "image_size": 64,
                      "input_size": 224, "truth_version": "5"}
