"""Tests of data_prep.check: the dataset check, on ../shared/data and on small broken datasets."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from data_prep_fixtures import write_celeba, write_helen, write_ilsvrc_category, write_voc2010_crop

from data_prep import check
from data_prep.readers import BndBox, ObjRecord, PartTruth, save_part_truth
from data_prep.setup import ensure_dataset
from data_prep.toy import ToyOptions, generate_toy_dataset

FOX = "n02118333"
TRUTH = "data_input/data_input_DET-2015-subset-ILSVRC2013train"


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("ilsvrcanimalpart ")}


def test_shared_data_ilsvrc_table(shared_data, capsys):
    """Fox and lizard with images; goldfish and zebra with truth files only (several-object entries)."""
    rc = check.main(["--data-root", str(shared_data), "--dataset", "ilsvrcanimalpart", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _rows(out)
    assert sorted(rows) == ["n01443537", "n01674464", "n02118333", "n02391049"]
    #          objects kept images parts entries multi          empty      missing unreadable problems
    assert rows[FOX][2:] == ["286", "286", "286", "1,2", "286", "0", "(0/0)", "75/143", "0", "0", "0"]
    assert rows["n01674464"][2:] == ["144", "144", "144", "1,2", "144", "0", "(0/0)", "9/35", "0", "0", "0"]
    assert rows["n02391049"][2:] == ["-", "-", "-", "1,2", "679", "27", "(15/12)", "502/528", "1", "0", "0"]
    assert rows["n01443537"][2:] == ["-", "-", "-", "1", "844", "9", "644", "1", "0", "0"]
    assert f"missing     ilsvrcanimalpart n02391049: {shared_data}/detanimalpart/n02391049_obj/img/data.mat" in out
    assert "4 categories, 7 truth files read, 0 unreadable, 0 problems, 2 missing" in out


def _obj(i: int) -> ObjRecord:
    return ObjRecord(FOX, f"{FOX}_{i}", FOX, BndBox(1, 1, 60, 60), i)


def _broken_root(tmp: Path) -> Path:
    """The fox with 4 images: image 2 is not an image, image 3's box is under minArea; truth part 1
    fine (entry 1 with two objects), part 2 not a MAT file, part 3 one entry short, with the part on image 3."""
    write_ilsvrc_category(tmp / "detanimalpart", FOX, [(1, 1, 60, 60), (1, 1, 60, 60), (1, 1, 10, 10), (1, 1, 60, 60)],
                          [(64, 64)] * 4)
    (tmp / "detanimalpart" / f"{FOX}_obj/img/img/00002.jpg").write_bytes(b"not an image")
    truth = tmp / TRUTH / FOX
    truth.mkdir(parents=True)
    two = PartTruth(pHW_center=np.array([[10.0, 50.0], [20.0, 60.0]]), pHW_scale=np.ones((2, 2)),
                    objects=(_obj(1), _obj(1)))
    one = [PartTruth(pHW_center=np.array([[5.0], [6.0]]), pHW_scale=np.ones((2, 1)), obj=_obj(i)) for i in (2, 3, 4)]
    save_part_truth(truth / "truth_part01.mat", [two, one[0], PartTruth(), one[2]], version="5")
    (truth / "truth_part02.mat").write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    save_part_truth(truth / "truth_part03.mat", [PartTruth(), PartTruth(), one[1]], version="5")
    return tmp


def test_unreadable_files_and_problems_are_named_and_fail(tmp_path, capsys):
    root = _broken_root(tmp_path)
    rc = check.main(["--data-root", str(root), "--dataset", "ilsvrcanimalpart", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    row = _rows(out)[FOX]
    #               objects kept images parts entries multi       empty    missing unreadable problems
    assert row[2:] == ["4", "3", "2", "1,3", "4/3", "1", "(1/0)", "1/2", "0", "2", "2"]
    assert f"UNREADABLE  {root}/detanimalpart/{FOX}_obj/img/img/00002.jpg" in out
    assert f"UNREADABLE  {root}/{TRUTH}/{FOX}/truth_part02.mat" in out
    assert f"PROBLEM     {root}/{TRUTH}/{FOX}/truth_part03.mat: 3 entries, but the evaluation indexes it with 4" in out
    assert (f"PROBLEM     {root}/{TRUTH}/{FOX}/truth_part03.mat: 1 entries with the part on objects skipped for "
            f"minArea (first: truth(3))") in out


def test_only_truth_files_report_the_rest_missing(tmp_path, capsys):
    """The original repository's data_input folder alone: annotations and images missing, truth files read;
    ILSVRC entries compared with the category's known image count."""
    root = _broken_root(tmp_path)
    (root / TRUTH / FOX / "truth_part02.mat").unlink()
    (root / TRUTH / FOX / "truth_part03.mat").unlink()
    shutil.rmtree(root / "detanimalpart")
    rc = check.main(["--data-root", str(root), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1                                                 # 4 entries, but the fox has 286 images
    #                          objects kept images parts entries multi empty missing unreadable problems
    assert _rows(out)[FOX][2:] == ["-", "-", "-", "1", "4", "1", "1", "2", "0", "1"]
    assert f"missing     ilsvrcanimalpart {FOX}: {root}/detanimalpart/{FOX}_obj/img/data.mat" in out
    assert f"missing     ilsvrcanimalpart {FOX}: {root}/{TRUTH}/{FOX}/truth_part02.mat" in out
    assert f"PROBLEM     {root}/{TRUTH}/{FOX}/truth_part01.mat: 4 entries, but the category has 286 images" in out


def test_help_explains_columns_exit_status_and_truth_only_runs(capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("multi-object", "no decoding", "With only truth files present", "exit status: 0",
                   "1 when a file cannot be read or a problem is found", "--data-root"):
        assert phrase in text


def test_unknown_category_and_empty_root_are_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--data-root", str(tmp_path), "--dataset", "ilsvrcanimalpart", "--category", "n99999999"])
    assert exc.value.code == 2 and "n99999999" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        check.main(["--data-root", str(tmp_path)])
    assert exc.value.code == 2 and "nothing of any dataset" in capsys.readouterr().err


def test_generated_toy_dataset_checks_clean(tmp_path, capsys):
    """The toy writer's truth files and images read as the real ones (one entry per object, no problem)."""
    generate_toy_dataset(tmp_path / "toy", ToyOptions(n_pos=6, n_neg=3), progress=False)
    rc = check.main(["--data-root", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith("toy ")]
    assert [r[1] for r in rows] == ["toy01", "toy02", "toy03"]
    for r in rows:
        assert r[2:7] == ["6", "6", "6", "1-3", "6"] and r[-3:] == ["0", "0", "0"]


def test_each_dataset_is_checked_by_its_own_rule(tmp_path, capsys):
    """Helen (not the CUB rule): its faces, images and the truth files set-up writes from the landmarks;
    CelebA as one row with its five landmarks; voc2010_crop's list and crops, no parts."""
    write_helen(tmp_path / "helen")
    neg = tmp_path / "neg"
    neg.mkdir()
    for i in range(1, 1001):
        (neg / f"{i:05d}.JPEG").write_bytes(b"")
    ensure_dataset("helen", tmp_path, offline=True)                      # writes data_input/data_input_helen/face/
    write_celeba(tmp_path / "celeba")
    lines = write_voc2010_crop(tmp_path / "voc2010_crop", "bird")
    (tmp_path / "voc2010_crop" / lines[2][1]).write_bytes(b"not an image")
    rep = check.check_category("helen", "face", tmp_path)              # once read by CUB's rule (crashed)
    assert (rep.objects, rep.kept, rep.images_checked, rep.missing, rep.unreadable) == (2, 2, 2, [], [])
    assert check.find_categories("helen", tmp_path) == ["face"]
    rc = check.main(["--data-root", str(tmp_path), "--dataset", "helen", "celeba", "voc2010_crop", "--no-progress"])
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()
            if line.split()[:1] in (["helen"], ["celeba"], ["voc2010_crop"])}
    #                                   objects kept images parts entries multi empty missing unreadable problems
    assert rows[("helen", "face")] == ["2", "2", "2", "1-4", "2", "0", "(0/0/0/0)", "0/0/0/0", "0", "0", "0"]
    assert rows[("celeba", "(all)")] == ["6", "6", "6", "1-5", "6", "0", "(0/0/0/0/0)", "0/0/0/0/0", "0", "0", "0"]
    assert rows[("voc2010_crop", "bird")] == ["6", "6", "5", "-", "-", "-", "-", "0", "1", "0"]
    assert f"UNREADABLE  {tmp_path}/voc2010_crop/{lines[2][1]}" in out and rc == 1
    (tmp_path / "data_input" / "data_input_helen" / "face" / "truth_part02.mat").unlink()
    rc = check.main(["--data-root", str(tmp_path), "--dataset", "helen", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and f"missing     helen face: {tmp_path}/data_input/data_input_helen/face/truth_part02.mat" in out


def test_decode_lists_a_truncated_and_an_empty_jpeg_together(shared_data, tmp_path, capsys):
    """--decode reads every image whole: a real fox JPEG cut to its first 3,000 bytes passes the header
    check but not the decode; an empty file fails both. Both are listed in one pass, exit 1."""
    src = shared_data / "detanimalpart" / f"{FOX}_obj"
    root = tmp_path / "data"
    shutil.copytree(src, root / "detanimalpart" / f"{FOX}_obj")
    shutil.copytree(shared_data / "original" / "data_input_DET-2015-subset-ILSVRC2013train" / FOX, root / TRUTH / FOX)
    img = root / "detanimalpart" / f"{FOX}_obj" / "img" / "img"
    truncated, empty = img / "00002.jpg", img / "00005.jpg"
    truncated.write_bytes((src / "img" / "img" / "00002.jpg").read_bytes()[:3000])
    empty.write_bytes(b"")
    args = ["--data-root", str(root), "--dataset", "ilsvrcanimalpart", "--no-progress"]

    assert check.main(args) == 1                      # headers only: the empty file alone
    out = capsys.readouterr().out
    assert f"UNREADABLE  {empty}" in out and str(truncated) not in out

    assert check.main(args + ["--decode"]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("UNREADABLE")]
    assert [line.split()[1].rstrip(":") for line in bad] == [str(truncated), str(empty)]
    assert "truncated" in bad[0]
    assert _rows(out)[FOX][2:5] == ["286", "286", "284"]     # objects, kept, images decoded
    assert "1 categories, 2 truth files read, 2 unreadable" in out


def test_the_imdb_build_error_points_to_check_decode(tmp_path):
    """The imdb build stops at the first unreadable image with its name and the way to find the others."""
    from data_prep.get_i import ImageReadError, read_image  # noqa: PLC0415 - only this test needs it

    bad = tmp_path / "00001.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        read_image(bad)
    assert str(bad) in str(info.value) and "python -m data_prep.check --decode" in str(info.value)
