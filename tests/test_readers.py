"""Dataset readers (data_prep.readers / ilsvrc / vocpart / cub200 / negatives)."""
from __future__ import annotations

import numpy as np
import pytest
from data_prep_fixtures import small_ilsvrc, write_cub, write_ilsvrc_category
from PIL import Image

from data_prep.annotations import read_annotation
from data_prep.cub200 import (
    CUB_PART_MERGE,
    cub200_conf,
    cub_part_positions,
    read_annotation_cub,
    read_annotation_sampling_cub,
    read_part_truth_cub,
    read_sampling,
)
from data_prep.get_i import ImageReadError
from data_prep.ilsvrc import ILSVRC_CATEGORIES, ilsvrc_conf, read_annotation_ilsvrc, read_part_truth_ilsvrc
from data_prep.negatives import get_neg_objset
from data_prep.readers import (
    BndBox,
    DataConf,
    DatasetError,
    ObjRecord,
    PartTruth,
    conf_from_paths,
    count_objects,
    int2str,
    objset_to_matlab,
    read_part_truth_file,
    save_part_truth,
)
from data_prep.vocpart import read_annotation_voc, read_part_truth_voc, voc_part_mask, vocpart_conf
from legacy_compat import MatStruct, StructArray, loadmat
from legacy_compat.matio import savemat

FOX = "n02118333"


# ----------------------------------------------------------------- basics
def test_int2str_rounds_half_away_and_area():
    assert [int2str(v) for v in (2.5, -2.5, 3.49, 7.0)] == ["3", "-3", "3", "7"]
    assert BndBox.from_values("35", 129.0, 216.4, 270.5) == BndBox(35, 129, 216, 271)
    assert BndBox(1, 1, 50, 50).area() == 2500
    assert BndBox(35, 129, 216, 271).to_matlab() == {"xmin": "35", "xmax": "216", "ymin": "129", "ymax": "271"}


def test_thirty_category_ids():
    assert len(ILSVRC_CATEGORIES) == 30 == len(set(ILSVRC_CATEGORIES))
    assert FOX in ILSVRC_CATEGORIES and ILSVRC_CATEGORIES[0] == "n01443537"


# ----------------------------------------------------------------- ILSVRC on the real fox
def test_fox_objset(shared_data):
    conf = ilsvrc_conf(shared_data)
    objset = read_annotation_ilsvrc(FOX, conf)
    assert len(objset) == 286 == count_objects(objset)
    first = objset[0]
    assert first.bndbox == BndBox(xmin=35, ymin=129, xmax=216, ymax=271)
    assert (first.folder, first.filename, first.name, first.ID) == (f"{FOX}_obj/img/img/", "00001.jpg", "00001.jpg", 1)
    assert [o.ID for o in objset] == list(range(1, 287))
    assert first.image_path(conf.imgdir).exists() and objset[-1].image_path(conf.imgdir).name == "00286.jpg"


def test_fox_part_truth_matches_the_annotation(shared_data):
    conf = ilsvrc_conf(shared_data)
    objset = read_annotation_ilsvrc(FOX, conf)
    head = read_part_truth_ilsvrc(FOX, 1, conf)
    legs = read_part_truth_ilsvrc(FOX, 2, conf)
    assert len(head) == len(legs) == 286
    np.testing.assert_allclose(head[0].center, [52.5, 190.0], rtol=1e-12)
    np.testing.assert_array_equal(head[0].pHW_scale.reshape(-1), [91.0, 70.0])
    assert sum(t.center is not None for t in head) == 211
    # the truth file's objects carry data.mat's boxes (data.mat has 0 raised to 1 in 22 of them)
    for o, t in zip(objset, head):
        if t.obj is not None:
            b = t.obj.bndbox
            assert BndBox(max(b.xmin, 1), max(b.ymin, 1), b.xmax, b.ymax) == o.bndbox
    assert all(t.center is None or (0 <= t.center).all() for t in legs)


def test_unknown_category_lists_the_valid_ones(shared_data):
    conf = ilsvrc_conf(shared_data)
    with pytest.raises(DatasetError, match=r"n99999999.*present under .*n01674464, n02118333.*n01443537"):
        read_annotation_ilsvrc("n99999999", conf)
    with pytest.raises(DatasetError, match="truth_part07.mat.*truth_part01.mat, truth_part02.mat"):
        read_part_truth_ilsvrc(FOX, 7, conf)


# ----------------------------------------------------------------- ILSVRC on synthetic layouts
def test_small_box_leaves_an_empty_element(tmp_path):
    conf, info = small_ilsvrc(tmp_path)
    objset = read_annotation(("nTEST"), conf)
    assert len(objset) == 6 and objset[2] is None and count_objects(objset) == 5
    assert objset[3].ID == 4 and objset[3].filename == "00004.jpg"
    assert objset[0].bndbox == BndBox(*info["boxes"][0])
    m = objset_to_matlab(objset)
    assert m.shape == (1, 6) and m[0, 2]["bndbox"].size == 0 and m[0, 0]["bndbox"]["xmin"] == str(info["boxes"][0][0])


def test_image_count_is_the_folder_entry_count(tmp_path):
    conf, _ = small_ilsvrc(tmp_path)
    folder = conf.imgdir / "nTEST_obj" / "img" / "img"
    (folder / "00006.jpg").unlink()                        # 5 entries: readAnnotation reads samples 1..5
    assert len(read_annotation_ilsvrc("nTEST", conf)) == 5
    for extra in ("Thumbs.db", "notes.txt"):               # every entry counts, as dir() counts it
        (folder / extra).write_text("x")
    with pytest.raises(DatasetError, match="holds 7 entries but .*data.mat describes only 6 samples"):
        read_annotation_ilsvrc("nTEST", conf)


def test_annotation_without_object_is_named(tmp_path):
    imgdir = tmp_path / "det"
    write_ilsvrc_category(imgdir, "nBAD", [(1, 1, 60, 60)] * 2, [(64, 64)] * 2, version="5")
    samples = StructArray.from_structs([MatStruct(obj=MatStruct(bndbox=MatStruct(
        xmin=np.array([[1.0]]), ymin=np.array([[1.0]]), xmax=np.array([[60.0]]), ymax=np.array([[60.0]])))),
        MatStruct(obj=np.zeros((0, 0)))])
    savemat(imgdir / "nBAD_obj" / "img" / "data.mat", {"samples": samples}, version="5")
    conf = DataConf(dataset="ilsvrcanimalpart", imgdir=imgdir, neg_dir=tmp_path / "neg")
    with pytest.raises(DatasetError, match=r"samples\(2\)"):
        read_annotation_ilsvrc("nBAD", conf)


# ----------------------------------------------------------------- VOC Part
def test_voc_cow_annotation(shared_data):
    conf = vocpart_conf(shared_data)
    objset = read_annotation_voc("cow", conf)
    raw = loadmat(shared_data / "original" / "data_input_VOC" / "truth_cow.mat")["truth"]
    areas = []
    for e in raw.elements():
        b = e["obj"]["bndbox"]
        areas.append((float(b["Wmax"][0, 0]) - float(b["Wmin"][0, 0]) + 1) * (float(b["Hmax"][0, 0]) - float(b["Hmin"][0, 0]) + 1))
    assert len(raw) == 217 and len(objset) == sum(a >= 2500 for a in areas) == 194
    assert objset[0].bndbox == BndBox(xmin=219, ymin=162, xmax=292, ymax=220)
    assert (objset[0].folder, objset[0].filename, objset[0].name) == ("./", "2008_000009.jpg", "cow")
    assert [o.ID for o in objset] == list(range(1, 195))
    assert all(o.bndbox.area() >= 2500 for o in objset)


def test_voc_read_part_truth_cow(shared_data):
    conf = vocpart_conf(shared_data)
    head = read_part_truth_voc("cow", 1, conf)
    assert len(head) == 194                                     # one per object that passes minArea
    # truth(1): obj W 219..292, H 162..220; head W 219..236, H 195..214
    np.testing.assert_allclose(head[0].center, [(204.5 - 162) / 58 * 224, (227.5 - 219) / 73 * 224])
    np.testing.assert_allclose(head[0].pHW_scale.reshape(-1), [19 / 58 * 224, 17 / 73 * 224])
    assert head[0].obj.ID == 1 and head[0].obj.filename == "2008_000009.jpg"
    assert sum(t.is_empty() for t in head) == 12
    with pytest.raises(DatasetError, match="part 9 does not exist"):
        read_part_truth_voc("cow", 9, conf)


def test_voc_shipped_bird_truth_v5(shared_data):
    truth = read_part_truth_file(shared_data / "original" / "data_input_VOC" / "bird" / "truth_part01.mat")
    assert len(truth) == 388 and sum(t.is_empty() for t in truth) == 11
    assert truth[0].obj.bndbox == BndBox(xmin=114, ymin=148, xmax=195, ymax=208) and truth[0].obj.ID == 2
    np.testing.assert_allclose(truth[0].center, [11.2, 172.83950617], rtol=1e-8)


def test_voc_unknown_category(shared_data):
    with pytest.raises(DatasetError, match="'horse'.*Categories with a truth file there: cow.*bird, cat, cow"):
        read_annotation_voc("horse", vocpart_conf(shared_data))


def test_part_truth_round_trip(tmp_path, shared_data):
    truth = read_part_truth_voc("cow", 2, vocpart_conf(shared_data))[:20]
    save_part_truth(tmp_path / "t.mat", truth, version="5")
    back = read_part_truth_file(tmp_path / "t.mat")
    assert [t.is_empty() for t in back] == [t.is_empty() for t in truth]
    for a, b in zip(back, truth):
        if not b.is_empty():
            np.testing.assert_allclose(a.center, b.center)
            assert a.obj.bndbox == b.obj.bndbox and a.obj.filename == b.obj.filename


def test_voc_part_mask_from_annotation():
    h, w = 40, 60
    silh = np.zeros((h, w), dtype=bool)
    silh[5:35, 10:50] = True
    head = np.zeros_like(silh)
    head[6:15, 11:20] = True
    leg = np.zeros_like(silh)
    leg[25:34, 30:40] = True
    parts = StructArray.from_structs([MatStruct(part_name="head", mask=head), MatStruct(part_name="lfuleg", mask=leg)])
    anno = MatStruct(objects=StructArray.from_structs([MatStruct(class_ind=np.array([[10.0]]), mask=silh, parts=parts)]))
    obj = ObjRecord("./", "x.jpg", "cow", BndBox(6, 4, 55, 38), 1)
    mask = voc_part_mask(obj, anno, (h, w), (35, 50))       # the box is 35 x 50: no resampling
    assert mask.shape == (35, 50)
    np.testing.assert_array_equal(mask == 1, head[3:38, 5:55])     # cow part 1 (head) -> merged part 1
    np.testing.assert_array_equal(mask == 3, leg[3:38, 5:55])      # lfuleg (11) -> merged part 3


# ----------------------------------------------------------------- CUB-200-2011
def test_cub_annotation_and_train_list(tmp_path):
    conf = cub200_conf(tmp_path, catedir=write_cub(tmp_path))
    objset, train_list = read_annotation_cub("cub200", conf)
    assert [o.filename for o in objset] == ["001.Black_footed_Albatross/a1.jpg", "001.Black_footed_Albatross/a2.jpg",
                                            "001.Black_footed_Albatross/a3.jpg", "002.Laysan_Albatross/b2.jpg",
                                            "002.Laysan_Albatross/b3.jpg"]   # b1's 41 x 41 box is dropped
    assert objset[0].bndbox == BndBox(xmin=60, ymin=27, xmax=385, ymax=331)     # x + width, y + height
    assert objset[3].name == "002.Laysan_Albatross" and objset[3].ID == 4 and objset[3].image_id == 5
    np.testing.assert_array_equal(train_list, [1, 3, 5])
    assert [o.image_id for o in read_annotation_cub("2", conf)[0]] == [5, 6]
    with pytest.raises(DatasetError, match="'cub201'.*'cub200'.*'1'..'9'"):
        read_annotation_cub("cub201", conf)


def test_cub_sampling_and_part_truth(tmp_path):
    conf = cub200_conf(tmp_path, catedir=write_cub(tmp_path), readcode=tmp_path / "code")
    (tmp_path / "code").mkdir()
    savemat(tmp_path / "code" / "sampling.mat", {"validObj": np.array([[2.0], [3.0]])}, version="5")
    sampled = read_annotation_sampling_cub("cub200", conf)       # test images 2, 4, 6 -> picks 4 and 6
    assert [(o.image_id, o.ID) for o in sampled] == [(4, 1), (6, 2)]
    savemat(tmp_path / "s2.mat", {"validObj": np.array([[1.0], [2.0]])}, version="5")
    truth = read_part_truth_cub("0", 1, conf, sampling=tmp_path / "s2.mat")
    # image 2 visible -> entry 1; image 4 under minArea -> dropped; image 6 invisible -> empty entry 2
    assert len(truth) == 2 and truth[1].is_empty() and truth[0].obj.image_id == 2 and truth[0].obj.ID == 1
    np.testing.assert_allclose(truth[0].center, [(122 - 30) / 264 * 224, (103 - 139) / 153 * 224])
    assert truth[0].pHW_scale is None
    np.testing.assert_array_equal(read_sampling(tmp_path / "s2.mat"), [1, 2])


def test_cub_part_positions(tmp_path):
    conf = cub200_conf(tmp_path, catedir=write_cub(tmp_path))
    objset, _ = read_annotation_cub("cub200", conf)
    pos = cub_part_positions(objset, conf, (224, 224))
    assert len(pos) == 5 and pos[0].shape == (2, len(CUB_PART_MERGE))
    np.testing.assert_array_equal(pos[0][:, 0], [-1, -1])         # merged part 1 lost its landmarks to part 11
    b = objset[0].bndbox
    np.testing.assert_allclose(pos[0][:, 1], [(121 - b.ymin) / (b.ymax - b.ymin) * 223 + 1,
                                              (103 - b.xmin) / (b.xmax - b.xmin) * 223 + 1])
    np.testing.assert_allclose(pos[0][:, 10], [(121 - b.ymin) / (b.ymax - b.ymin) * 223 + 1,
                                               (102 - b.xmin) / (b.xmax - b.xmin) * 223 + 1])


def test_cub_real_sampling(shared_data):
    v = read_sampling(shared_data / "original" / "data_input_CUB-200-2011" / "sampling.mat")
    assert v.shape == (2000,) and v[:5].tolist() == [2, 6, 8, 9, 16] and np.all(np.diff(v) > 0)


def test_cub_missing_file_is_named(tmp_path):
    cub = write_cub(tmp_path)
    (cub / "bounding_boxes.txt").unlink()
    with pytest.raises(DatasetError, match="bounding_boxes.txt not found"):
        read_annotation_cub("cub200", cub200_conf(tmp_path, catedir=cub))


# ----------------------------------------------------------------- negatives
def test_real_negatives(shared_data):
    negs = get_neg_objset(ilsvrc_conf(shared_data), FOX)
    assert len(negs) == 1000
    w, h = Image.open(shared_data / "neg" / "00001.JPEG").size
    assert negs[0].bndbox == BndBox(1, 1, w, h) and negs[0].ID == 1000000001 and negs[0].name == f"{FOX}_neg"
    assert negs[-1].filename == "01000.JPEG" and negs[0].image_path("/elsewhere").exists()


def test_missing_negative_is_named(tmp_path):
    conf, _ = small_ilsvrc(tmp_path, n_neg=2)
    with pytest.raises(ImageReadError, match="00003.JPEG.*no such file"):
        get_neg_objset(conf, "nTEST", count=3)


def test_conf_from_setup_paths(tmp_path):
    conf, _ = small_ilsvrc(tmp_path, n_neg=4)

    class Paths:   # the fields data_prep.setup.DatasetPaths has
        name, image_dir, truth_dir, neg_dir, cate_dir, min_area = ("toy", conf.imgdir, conf.readcode, conf.neg_dir,
                                                                   None, 100)
    c = conf_from_paths(Paths)
    assert c.dataset == "toy" and c.num_neg == 4 and c.min_area == 100
    assert count_objects(read_annotation("nTEST", c)) == 5
    assert len(get_neg_objset(c, "nTEST")) == 4


def test_part_truth_center_rules():
    assert PartTruth().center is None
    assert PartTruth(pHW_center=np.ones((4, 1))).center is None          # getDistSqrtVar ignores > 2 numbers
    np.testing.assert_array_equal(PartTruth(pHW_center=np.array([[3.0], [4.0]])).center, [3, 4])


# ------------------------------------------------------------------ truth entries with several objects
ILSVRC_TRUTH = "original/data_input_DET-2015-subset-ILSVRC2013train"


def test_multi_object_truth_entries_are_read(shared_data):
    """The goldfish's truth(12): pHW_center 2 x 3, obj a 1 x 3 struct array (the original's file)."""
    truth = read_part_truth_file(shared_data / ILSVRC_TRUTH / "n01443537" / "truth_part01.mat")
    assert len(truth) == 844 and sum(t.is_empty() for t in truth) == 644
    multi = [i for i, t in enumerate(truth) if t.is_multi_object()]
    assert len(multi) == 9 and multi[:3] == [11, 33, 99]
    e = truth[11]
    assert e.num_objects == len(e.objects) == 3 and not e.is_empty()
    assert e.center is None                                       # getDistSqrtVar.m: numel(pHW_center) > 2
    np.testing.assert_allclose(e.centres, [[152.0, 38.0], [186.5, 101.5], [69.5, 42.5]], rtol=1e-14)
    np.testing.assert_allclose(e.pHW_scale, [[132.0, 77.0, 119.0], [74.0, 65.0, 83.0]], rtol=1e-14)
    assert {(o.filename, o.ID, o.bndbox) for o in e.objects} == {
        ("n01443537_10242", 12, BndBox(xmin=110, ymin=40, xmax=271, ymax=136))}
    with pytest.raises(DatasetError, match="3 objects; use .objects"):
        _ = e.obj
    assert truth[0].num_objects in (0, 1) and len(truth[0].objects) == truth[0].num_objects
    zebra = [read_part_truth_file(shared_data / ILSVRC_TRUTH / "n02391049" / f"truth_part0{p}.mat") for p in (1, 2)]
    assert [sum(t.is_multi_object() for t in z) for z in zebra] == [15, 12]     # the 27


def test_multi_object_truth_round_trip_keeps_the_original_layout(tmp_path, shared_data):
    """save_part_truth writes a K-object entry as the original file holds it: 2 x K, obj 1 x K."""
    src = shared_data / ILSVRC_TRUTH / "n02391049" / "truth_part01.mat"
    truth = read_part_truth_file(src)[:30]
    for version in ("5", "7.3"):
        save_part_truth(tmp_path / f"t{version}.mat", truth, version=version)
        raw = loadmat(tmp_path / f"t{version}.mat").truth
        orig = loadmat(src).truth
        for i in (0, 11, 29):                                   # one object, two objects, two objects
            a, b = raw[0, i], orig[0, i]
            np.testing.assert_array_equal(a.pHW_center, b.pHW_center)
            np.testing.assert_array_equal(a.pHW_scale, b.pHW_scale)
            assert type(a.obj) is type(b.obj)
            if isinstance(b.obj, StructArray):
                assert a.obj.shape == b.obj.shape == (1, 2)
        back = read_part_truth_file(tmp_path / f"t{version}.mat")
        assert [t.objects for t in back] == [t.objects for t in truth]
        assert [t.num_objects for t in back] == [t.num_objects for t in truth]
