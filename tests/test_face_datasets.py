"""CelebA, Helen and voc2010_crop readers and imdbs on small copies in their real layouts."""
from __future__ import annotations

import numpy as np
import pytest
from data_prep_fixtures import write_celeba, write_helen, write_jpg, write_voc2010_crop

from data_prep.annotations import read_annotation
from data_prep.celeba import build_celeba_imdb, celeba_part_truth, find_celeba_files, read_celeba
from data_prep.facts import CELEBA_ATTRIBUTES
from data_prep.helen import HELEN_PARTS, face_box, helen_objset, helen_part_truth, read_helen, write_helen_truth
from data_prep.imdb import get_imdb
from data_prep.readers import DataConf, DatasetError, conf_from_paths, read_part_truth_file
from data_prep.setup import MissingDataError, ensure_dataset
from data_prep.voc2010_crop import build_voc2010_crop_imdb, read_voc2010_crop

ATTRS = list(CELEBA_ATTRIBUTES)


# ------------------------------------------------------------------ CelebA
@pytest.mark.parametrize("flat", [False, True])
def test_celeba_reader_and_imdb(tmp_path, flat):
    names, attrs = write_celeba(tmp_path, flat)
    columns, images = read_celeba(tmp_path)
    assert columns == ATTRS and [im.filename for im in images] == names
    assert [im.partition for im in images] == [0, 0, 0, 1, 1, 2]
    assert all((im.attributes == attrs[im.filename]).all() for im in images)          # matched by name
    assert images[0].landmarks[0].tolist() == [70.0, 110.0]                            # 1-based (x, y)
    imdb = build_celeba_imdb(tmp_path, (32, 32))
    assert imdb.data.shape == (5, 3, 32, 32) and imdb.classes == ATTRS
    assert imdb.set.tolist() == [1, 1, 1, 2, 2]                                         # no test images
    assert imdb.labels.shape == (5, 40) and imdb.labels[3].tolist() == attrs[names[3]]
    assert np.abs(imdb.data[:3].mean(axis=0)).max() < 1e-3                             # training mean subtracted
    assert 60 < float(imdb.data_mean.mean()) < 200
    on_disk = build_celeba_imdb(tmp_path, (32, 32), out=tmp_path / "rows.npy", attributes=["Smiling", "Male"])
    assert str(on_disk.data.filename) == str(tmp_path / "rows.npy") and on_disk.classes == ["Smiling", "Male"]
    assert np.array_equal(on_disk.data, imdb.data) and np.array_equal(on_disk.data_mean, imdb.data_mean)
    assert on_disk.labels.tolist() == imdb.labels[:, [ATTRS.index("Smiling"), ATTRS.index("Male")]].tolist()
    truth = celeba_part_truth(images, 32)
    assert len(truth) == 5 and truth[3][0].center.tolist() == pytest.approx(
        [(143 - 0.5) * 32 / 218 + 0.5, (78 - 0.5) * 32 / 178 + 0.5])                   # the nose


def test_celeba_missing_files_are_named(tmp_path):
    write_celeba(tmp_path)
    (tmp_path / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match="partition.*Eval"):
        find_celeba_files(tmp_path)


# ------------------------------------------------------------------ Helen
def test_helen_reader_boxes_and_truth(tmp_path):
    root = tmp_path / "helen"
    write_helen(root)
    faces = read_helen(root)
    assert [f.name for f in faces] == ["100032540_1", "1002681492_1"] and [f.split for f in faces] == ["train", ""]
    assert faces[0].image == "helen_1/100032540_1.jpg" and faces[0].landmarks.shape == (194, 2)
    objs = helen_objset(faces, root)
    b = objs[0].bndbox
    lm = faces[0].landmarks
    assert b.xmin <= lm[:, 0].min() and b.xmax >= lm[:, 0].max() and b.ymin <= lm[:, 1].min() and b.ymax <= 120
    truth = helen_part_truth(faces, objs, 224)
    assert sorted(truth) == sorted(HELEN_PARTS)
    h = (81.0 - b.ymin + 0.5) * 224 / (b.ymax - b.ymin + 1) + 0.5
    w = (72.0 - b.xmin + 0.5) * 224 / (b.xmax - b.xmin + 1) + 0.5
    assert truth[3][0].center.tolist() == pytest.approx([h, w])
    written = write_helen_truth(root, tmp_path / "data_input", 224)
    back = read_part_truth_file(written[2])
    assert back[0].center.tolist() == pytest.approx([h, w]) and len(back) == 2
    assert face_box(np.array([[10.0, 10.0], [20.0, 30.0]]), (25, 100)).ymax == 25      # clipped to the image


def test_helen_imdb_through_the_readers(tmp_path):
    root = tmp_path / "helen"
    write_helen(root)
    neg = tmp_path / "neg"
    for i in range(1, 3):
        write_jpg(neg / f"{i:05d}.JPEG", 90, 70, 10 + i)
    conf = DataConf(dataset="helen", imgdir=root, neg_dir=neg, num_neg=2)
    imdb = get_imdb("face", conf, (32, 32), progress=False)
    assert imdb.classes == ["face"] and imdb.data.shape[1:] == (3, 32, 32)
    assert (imdb.labels == 1).sum() > 0 and (imdb.labels == -1).sum() > 0
    with pytest.raises(DatasetError, match="face"):
        get_imdb("cat", conf, (32, 32), progress=False)


def test_helen_bad_annotation_is_named(tmp_path):
    root = tmp_path / "helen"
    write_helen(root)
    (root / "annotation" / "2.txt").write_text("1002681492_1\n1 , 2\n")
    with pytest.raises(DatasetError, match="2.txt"):
        read_helen(root)


# ------------------------------------------------------------------ voc2010_crop
def test_voc2010_crop_reader_and_imdb(tmp_path):
    root = tmp_path / "voc2010_crop"
    write_voc2010_crop(root, "bird")
    entries = read_voc2010_crop(root, "bird")
    assert [(e.positive, e.train) for e in entries][:3] == [(True, True), (True, True), (False, True)]
    imdb = build_voc2010_crop_imdb(root, "bird", (24, 24))
    assert imdb.labels[:, 0].tolist() == [1, 1, 1, -1, 1, -1]        # train pos, train neg, val pos, val neg
    assert imdb.set.tolist() == [1, 1, 1, 1, 2, 2]
    assert np.abs(imdb.data[:4].mean(axis=0)).max() < 1e-3
    (root / "cat_info.txt").write_text("0,a.jpg,2,1\n")
    with pytest.raises(DatasetError, match="cat_info.txt, line 1"):
        read_voc2010_crop(root, "cat")


def test_helen_set_up_writes_the_truth_files(tmp_path):
    with pytest.raises(MissingDataError, match="annotation.zip.*helen_1.zip"):
        ensure_dataset("helen", tmp_path, offline=True)
    write_helen(tmp_path / "helen")
    for i in range(1, 1001):                                   # the shared negatives' names (empty files do)
        (tmp_path / "neg").mkdir(exist_ok=True)
        (tmp_path / "neg" / f"{i:05d}.JPEG").write_bytes(b"")
    paths = ensure_dataset("helen", tmp_path, offline=True)
    assert paths.categories == ("face",) and paths.parts_for("face") == (1, 2, 3, 4)
    truth = read_part_truth_file(paths.truth_file("face", 3))
    assert len(truth) == 2 and truth[0].obj is not None
    objs = read_annotation("face", conf_from_paths(paths))
    assert [o.filename for o in objs] == ["helen_1/100032540_1.jpg", "helen_2/1002681492_1.jpg"]
