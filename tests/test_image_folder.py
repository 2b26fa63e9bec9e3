"""--images DIR: a folder of your own pictures as the dataset 'images' (data_prep.images).

On a plain folder made from ../shared/data's fox images (tests/image_folder_fixtures.py): the objset
from a boxes CSV / VOC XML files / whole images, the landmarks CSV turned back into the original's
truth files, the bad-input checks, own negatives, part label maps, and demo.py end to end (tiny net,
1 epoch, 40 own negatives) with and without landmarks.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA
from image_folder_fixtures import centres_equal, copy_negatives, disc_part_masks, fox_folder
from PIL import Image

import demo
from data_prep.annotations import read_annotation
from data_prep.images import (
    ImageFolder,
    ImageFolderError,
    crop_landmark,
    prepare_image_folder,
    read_part_mask,
    scan_image_folder,
)
from data_prep.imdb import get_imdb
from data_prep.negatives import get_neg_objset
from data_prep.readers import BndBox, read_part_truth_file
from data_prep.setup import OwnImages, ensure_dataset
from reproduce.evaluation.part_interpretability import part_regions_for
from reproduce.experiments import paper


@pytest.fixture(scope="module")
def fox(tmp_path_factory):
    """40 fox images as plain files (20 of them in a nested folder), boxes.csv, landmarks.csv, 40 negatives."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared real data not found at {SHARED_DATA} (the ../shared folder of real project files "
                    f"is absent)")
    base = tmp_path_factory.mktemp("fox")
    folder = fox_folder(SHARED_DATA, base, 40)
    folder.negatives = copy_negatives(SHARED_DATA, base / "neg", 40)
    return folder


def _paths(folder, tmp_path, size=224, **options):
    spec = ImageFolder(folder.images, negatives=folder.negatives, **options)
    return ensure_dataset("images", root=tmp_path / "root", offline=True, progress=False,
                          images=OwnImages(spec, tmp_path / "truth", size))


def test_the_landmarks_csv_gives_back_the_original_truth_files(fox, tmp_path):
    """The landmarks (the fox's truth converted to image pixels by the fixture) are converted into the
    box crops again: the truth files written equal the original's entries for every image and part."""
    paths = _paths(fox, tmp_path, boxes=fox.boxes, landmarks=fox.landmarks)
    assert paths.part_list == (1, 2) and paths.image_dir == fox.images
    for part in (1, 2):
        written = read_part_truth_file(paths.truth_file("images", part))
        assert len(written) == 40
        assert all(centres_equal(a, b) for a, b in zip(written, fox.truth[part]))
        assert sum(not t.is_empty() for t in written) == sum(not t.is_empty() for t in fox.truth[part])


def test_objset_from_the_boxes_csv_voc_xml_and_whole_images(fox, tmp_path):
    paths = _paths(fox, tmp_path, boxes=fox.boxes)
    objs = read_annotation("images", paths.data_conf())
    assert [o.filename for o in objs] == fox.names and [o.ID for o in objs] == list(range(1, 41))
    assert [o.bndbox for o in objs] == [fox.boxes_by_name[n] for n in fox.names]
    voc = tmp_path / "xml"
    for name, b in fox.boxes_by_name.items():
        (voc / name).parent.mkdir(parents=True, exist_ok=True)
        (voc / name).with_suffix(".xml").write_text(
            f"<annotation><filename>{name}</filename><object><name>fox</name><bndbox><xmin>{b.xmin}</xmin>"
            f"<ymin>{b.ymin}</ymin><xmax>{b.xmax}</xmax><ymax>{b.ymax}</ymax></bndbox></object></annotation>")
    assert read_annotation("images", _paths(fox, tmp_path / "v", boxes=voc).data_conf()) == objs
    whole = read_annotation("images", _paths(fox, tmp_path / "w").data_conf())
    sizes = [Image.open(fox.images / n).size for n in fox.names]
    assert [o.bndbox for o in whole] == [BndBox(1, 1, w, h) for w, h in sizes]


def test_several_boxes_are_several_objects_and_landmarks_go_to_their_boxes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((100, 200, 3), 90, np.uint8)).save(images / "a.png")
    (tmp_path / "b.csv").write_text("image,xmin,ymin,xmax,ymax\na.png,1,1,100,100\na.png,101,1,200,100\n")
    (tmp_path / "l.csv").write_text("image,part,row,col\na.png,1,50.5,50.5\na.png,1,10,150\na.png,1,90,150\n"
                                    "a.png,2,20,30\n")
    spec = ImageFolder(images, boxes=tmp_path / "b.csv", landmarks=tmp_path / "l.csv", negatives=images)
    scanned = prepare_image_folder(spec, tmp_path / "truth", 224)
    objs = scanned.objset()
    assert [(o.ID, o.bndbox) for o in objs] == [(1, BndBox(1, 1, 100, 100)), (2, BndBox(101, 1, 200, 100))]
    p1 = read_part_truth_file(tmp_path / "truth" / "images" / "truth_part01.mat")
    p2 = read_part_truth_file(tmp_path / "truth" / "images" / "truth_part02.mat")
    assert np.allclose(p1[0].centres, [[112.5, 112.5]])            # the centre of a 100 x 100 box
    assert p1[1].is_multi_object() and p1[1].center is None        # two landmarks of part 1: skipped, as K > 1
    assert np.allclose(p1[1].centres, [crop_landmark(10, 150, objs[1].bndbox, 224),
                                       crop_landmark(90, 150, objs[1].bndbox, 224)])
    assert not p2[0].is_empty() and p2[1].is_empty()


def test_bad_input_is_listed_whole_before_anything_is_written(fox, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(fox.images, images)
    (images / "more" / "broken.jpg").write_bytes((fox.images / fox.names[0]).read_bytes()[:800])
    rows = fox.boxes.read_text().splitlines()
    rows[3] = rows[3].split(",")[0] + ",1,1,9999,20"                 # line 4: outside its image
    rows.append("nothere.jpg,1,1,10,10")                            # line 42: names no image
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "landmarks.csv").write_text("image,part,row,col\n00001.jpg,1,5000,3\n00002.jpg,x,1,1\n")
    truth = tmp_path / "truth"
    spec = ImageFolder(images, boxes=tmp_path / "boxes.csv", landmarks=tmp_path / "landmarks.csv")
    with pytest.raises(ImageFolderError) as info:
        prepare_image_folder(spec, truth, 224)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"5 problems with --images {images}") and len(lines) == 6
    text = str(info.value)
    assert f"cannot read the image {images / 'more' / 'broken.jpg'}" in text
    assert f"{tmp_path / 'boxes.csv'}, line 4 ({fox.names[2]}): box [xmin 1, ymin 1, xmax 9999, ymax 20] lies " \
           "outside its image" in text
    assert f"{tmp_path / 'boxes.csv'}, line 42: names no image under the --images folder ('nothere.jpg'" in text
    assert f"{tmp_path / 'landmarks.csv'}, line 2 (00001.jpg): landmark (row 5000, col 3) lies outside" in text
    assert f"{tmp_path / 'landmarks.csv'}, line 3: part 'x' is not a number" in text
    assert not truth.exists()


def test_an_empty_folder_and_a_bad_label_map_are_said(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(ImageFolderError, match="no JPEG or PNG image in it"):
        scan_image_folder(ImageFolder(tmp_path / "empty"))
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.zeros((60, 81), np.uint8)).save(masks / "a.png")
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(masks / "b.png")
    with pytest.raises(ImageFolderError) as info:
        scan_image_folder(ImageFolder(images, part_masks=masks))
    assert f"{masks / 'a.png'}: the label map is 81 x 60 pixels, its image 80 x 60" in str(info.value)
    assert f"{masks / 'b.png'}: this label map names no image" in str(info.value)


def test_part_label_maps_are_cropped_to_each_object(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks" / "sub"
    (images / "sub").mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(images / "sub" / "a.jpg")
    labels = np.zeros((60, 80), np.uint8)
    labels[:30, :40] = 1                                            # part 1: the top-left quarter
    labels[30:, 40:] = 2
    Image.fromarray(labels).save(masks / "a.png")
    spec = ImageFolder(images, part_masks=tmp_path / "masks", negatives=images)
    paths = ensure_dataset("images", root=tmp_path, offline=True, progress=False,
                           images=OwnImages(spec, tmp_path / "truth", 8))
    assert np.array_equal(read_part_mask(masks / "a.png", (60, 80)), labels)
    conf = paths.data_conf()
    regions = part_regions_for("images", "images", read_annotation("images", conf), conf, (8, 8), paths.anno_dir)
    assert regions.parts == (1, 2) and regions.labels.shape == (1, 8, 8)
    assert (regions.labels[0, :4, :4] == 1).all() and (regions.labels[0, 4:, 4:] == 2).all()


def test_own_negatives_replace_the_shared_ones(fox, tmp_path):
    paths = _paths(fox, tmp_path, boxes=fox.boxes)
    conf = paths.data_conf()
    negs = get_neg_objset(conf, "images")
    assert conf.num_neg == 40 and [n.filename for n in negs] == [f"neg{i:03d}.jpg" for i in range(1, 41)]
    imdb = get_imdb("images", conf, (16, 16), progress=False)
    assert imdb.labels.shape[0] == 4 * 40 and (imdb.labels[:, 0] == 1).sum() == 3 * 40    # getImdb: tarN 3 x 40


def _demo(argv, capsys):
    rc = demo.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _common(fox, tmp_path, out):
    return ["--images", fox.images, "--negatives", fox.negatives, "--model", "tiny", "--epochs", "1",
            "--data-root", tmp_path / "root", "--offline", "--device", "cpu", "--no-draw", "--out", tmp_path / out]


def test_demo_on_a_plain_folder_says_stability_is_not_measured(fox, tmp_path, capsys):
    rc, out, err = _demo(_common(fox, tmp_path, "plain"), capsys)
    assert rc == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("binary error")][-1]
    assert re.fullmatch(r"binary error \d\.\d{6}     location stability not measured: no landmarks "
                        r"\(give --landmarks FILE, a CSV image,part,row,col\)", line)
    assert (tmp_path / "plain" / "mat" / "images" / "net-epoch-1.pt").is_file()


def test_demo_with_boxes_and_landmarks_measures_location_stability(fox, tmp_path, capsys):
    argv = _common(fox, tmp_path, "parts") + ["--boxes", fox.boxes, "--landmarks", fox.landmarks]
    rc, out, err = _demo(argv, capsys)
    assert rc == 0, err
    value = float(re.search(r"binary error \d\.\d{6}     location stability (\d\.\d{6})$", out, re.M).group(1))
    assert 0 < value < 1
    truth = read_part_truth_file(tmp_path / "parts" / "data_input" / "images" / "truth_part01.mat")
    scale = 64 / 224                                           # the tiny net's input: the truth in its crop
    assert np.allclose([t.centres[0] for t in truth], [(t.centres[0] - 0.5) * scale + 0.5 for t in fox.truth[1]])
    # the same output folder with another folder's boxes: refused before any work, as any other change
    rc, _, err = _demo(_common(fox, tmp_path, "parts") + ["--landmarks", fox.landmarks], capsys)
    assert rc == 2 and "holds checkpoints" in err and "images" in err


def test_demo_refuses_bad_input_and_misplaced_options(fox, tmp_path, capsys):
    bad = tmp_path / "boxes.csv"
    bad.write_text("image,xmin,ymin,xmax,ymax\n00001.jpg,1,1,100000,5\n")
    rc, out, err = _demo(_common(fox, tmp_path, "bad") + ["--boxes", bad], capsys)
    assert rc == 2 and f"{bad}, line 2 (00001.jpg): box [xmin 1, ymin 1, xmax 100000, ymax 5] lies outside" in err
    assert not (tmp_path / "bad" / "mat").exists()
    rc, _, err = _demo(["--boxes", bad, "--device", "cpu", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "--boxes goes with --images DIR" in err
    rc, _, err = _demo(_common(fox, tmp_path, "o") + ["--dataset", "vocpart"], capsys)
    assert rc == 2 and "drop --dataset vocpart" in err


def test_paper_plans_the_folder_as_the_dataset_images(fox, tmp_path, capsys):
    """reproduce.paper --images: the grid's runs are on dataset 'images', with the folder's options in their
    ids (another folder, other runs and imdb caches); --dry-run trains nothing."""
    base = ["--models", "tiny", "--epochs", "1", "--offline", "--device", "cpu", "--out", str(tmp_path / "p"),
            "--dry-run", "--images", str(fox.images)]
    assert paper.main(base) == 0
    first = capsys.readouterr().out
    assert paper.main(base + ["--boxes", str(fox.boxes)]) == 0
    second = capsys.readouterr().out
    ids = [re.findall(r"to run  (images/images/tiny_\S+)", text) for text in (first, second)]
    assert len(ids[0]) == 2 and len(ids[1]) == 2 and not set(ids[0]) & set(ids[1])
    tag = ImageFolder(fox.images).tag()
    assert all(i.split("/")[2].endswith(tag) for i in ids[0])
    assert paper.main(["--dataset", "images", "--device", "cpu", "--out", str(tmp_path / "q"), "--dry-run"]) == 2
    assert "give it with --images DIR" in capsys.readouterr().err


def test_paper_measures_part_interpretability_on_label_maps(fox, tmp_path, capsys):
    """--images with --part-masks (discs around the fox's landmarks) gives reproduce.paper's part
    interpretability; with landmarks too, location instability and its before-training control."""
    masks = disc_part_masks(fox, tmp_path / "masks")
    argv = ["--images", fox.images, "--boxes", fox.boxes, "--landmarks", fox.landmarks, "--part-masks", masks,
            "--negatives", fox.negatives, "--models", "tiny", "--epochs", "1", "--cnn", "interpretable",
            "--part-interpretability", "--offline", "--device", "cpu", "--no-progress",
            "--data-root", tmp_path / "root", "--out", tmp_path / "p"]
    assert paper.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    (record,) = json.loads((tmp_path / "p" / "results.json").read_text())["runs"]
    assert record["dataset"] == "images" and 0 <= record["part_interpretability"] <= 1
    assert 0 < record["location_instability"] < 1 and 0 < record["location_instability_at_start"] < 1
