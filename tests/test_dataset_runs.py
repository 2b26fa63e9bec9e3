"""CelebA and voc2010_crop end to end at toy size (demo.py, reproduce.paper): set-up messages, imdb,
training the tiny net, evaluation, on small generated copies in their real layouts."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from data_prep_fixtures import write_celeba, write_voc2010_crop

import demo
from data_prep.celeba import celeba_evaluation_set
from data_prep.facts import CELEBA_ATTRIBUTES
from data_prep.setup import MissingDataError, ensure_dataset
from reproduce.evaluation.net_evaluation import final_val_error
from reproduce.experiments import grid, paper
from reproduce.training.checkpoints import load_checkpoint

RESULT = re.compile(r"^binary error (\d+\.\d{6})     location stability (\d+\.\d{6})$")
NOT_MEASURED = ("location stability not measured: voc2010_crop has no part annotations (binary error only)")


def _main(argv, capsys):
    rc = demo.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _last_line(out: str) -> str:
    return [ln for ln in out.splitlines() if ln.startswith("binary error")][-1]


# ------------------------------------------------------------------ set-up
def test_set_up_says_what_to_download_by_hand(tmp_path):
    with pytest.raises(MissingDataError, match=r"img_align_celeba\.zip.*celeba/Img/img_align_celeba/"):
        ensure_dataset("celeba", tmp_path, offline=True, categories=["Smiling"])
    write_celeba(tmp_path / "celeba")
    (tmp_path / "celeba" / "Anno" / "list_landmarks_align_celeba.txt").unlink()
    with pytest.raises(MissingDataError, match="list_landmarks_align_celeba.txt is missing"):
        ensure_dataset("celeba", tmp_path, offline=False, categories=["Smiling"])     # nothing downloads it
    root = tmp_path / "voc2010_crop"
    lines = write_voc2010_crop(root, "bird")
    (root / lines[4][1]).unlink()
    with pytest.raises(MissingDataError, match=r"chair7_2009_004289\.jpg.*ada-shen/ICNN.*not in that repository"):
        ensure_dataset("voc2010_crop", tmp_path, categories=["bird"])
    with pytest.raises(MissingDataError, match=r"cat_info\.txt"):
        ensure_dataset("voc2010_crop", tmp_path, categories=["cat"])


def test_celeba_evaluation_set_is_the_validation_images_with_the_attribute(tmp_path):
    _, attrs = write_celeba(tmp_path, n_train=2, n_val=6, n_test=1)
    smiling = CELEBA_ATTRIBUTES.index("Smiling")                     # 31: images k (0-based) with (k + 31) % 3 == 0
    objs, truth = celeba_evaluation_set(tmp_path, "Smiling", 64)
    assert [o.filename for o in objs] == ["000003.jpg", "000006.jpg"]           # k = 2, 5 (k = 8 is a test image)
    assert all(attrs[o.filename][smiling] == 1 for o in objs)
    assert objs[0].image_path(tmp_path).is_file() and (objs[0].bndbox.xmax, objs[0].bndbox.ymax) == (178, 218)
    nose = truth[3][0].center                                                     # landmark (77, 142) 0-based
    assert nose.tolist() == pytest.approx([(143 - 0.5) * 64 / 218 + 0.5, (78 - 0.5) * 64 / 178 + 0.5])
    assert [o.filename for o in celeba_evaluation_set(tmp_path, "Smiling", 64, limit=3)[0]] == ["000003.jpg"]


# ------------------------------------------------------------------ demo.py
def test_celeba_multilabel_demo_end_to_end(tmp_path, capsys):
    """--multiclass: one tiny net with 40 logistic outputs (learn_icnn_multiclass's path), location
    stability on the five landmarks; --net evaluates the saved checkpoint to the same line."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_celeba(data / "celeba", n_train=6, n_val=6, n_test=1)
    argv = ["--dataset", "celeba", "--multiclass", "--model", "tiny", "--epochs", 1, "--device", "cpu",
            "--pretrained", "none", "--out", out, "--data-root", data]
    rc, text, err = _main(argv, capsys)
    assert rc == 0, err
    line = _last_line(text)
    m = RESULT.match(line)
    assert m, line
    run = next((out / "mat").iterdir())
    meta = json.loads((run / "imdb" / "imdb.complete.json").read_text())
    assert meta["shape"] == [12, 3, 64, 64]                                       # 6 training + 6 validation faces
    state = load_checkpoint(run / "net-epoch-1.pt")
    assert float(m.group(1)) == pytest.approx(final_val_error(state.stats), abs=1e-6)
    assert len(state.stats["val"]) == 1 and state.specs[-2].weights[0].shape[0] == 40   # 40 outputs
    assert 0.0 < float(m.group(2)) < 1.0                                          # measured, over norm([64 64])
    rc, text, err = _main(["--dataset", "celeba", "--multiclass", "--model", "tiny", "--device", "cpu",
                           "--out", out, "--data-root", data, "--net", run / "net-epoch-1.pt"], capsys)
    assert rc == 0, err
    assert _last_line(text) == line


def test_voc2010_crop_demo_says_stability_is_not_measured(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    write_voc2010_crop(data / "voc2010_crop", "bird")
    rc, text, err = _main(["--dataset", "voc2010_crop", "--model", "tiny", "--epochs", 1, "--device", "cpu",
                           "--pretrained", "none", "--baseline", "--out", out, "--data-root", data], capsys)
    assert rc == 0, err
    line = _last_line(text)
    assert re.match(r"^binary error \d\.\d{6}     " + re.escape(NOT_MEASURED) + "$", line), line
    assert "nan" not in text.lower()                                  # no number stands for the missing measure
    assert "ablation: not run for voc2010_crop" in text
    assert re.search(r"ordinary CNN +\d\.\d{4} +not measured", text)
    state = load_checkpoint(out / "mat" / "bird" / "net-epoch-1.pt")
    assert float(line.split()[2]) == pytest.approx(final_val_error(state.stats), abs=1e-6)


def test_dataset_options_that_make_no_sense_are_refused_first(tmp_path, capsys):
    for argv, says in ((["--dataset", "voc2010_crop", "--multiclass"], "drop --multiclass"),
                       (["--dataset", "celeba", "--multiclass", "--loss", "softmaxlog"], "multi-label"),
                       (["--dataset", "vocpart", "--max-images", 5], "--max-images is for the celeba dataset")):
        rc, text, err = _main(argv + ["--model", "tiny", "--device", "cpu", "--out", tmp_path / "out"], capsys)
        assert rc == 2 and says in err and text == ""
    parser = demo.build_parser()
    settings = demo.resolve_settings(parser.parse_args(["--dataset", "celeba", "--multiclass", "--device", "cpu"]))
    assert settings["categories"] == list(CELEBA_ATTRIBUTES)
    with pytest.raises(grid.RunnerError, match="drop --multiclass"):
        grid.plan_grid(paper.build_parser().parse_args(["--dataset", "voc2010_crop", "--multiclass"]))
    assert paper.main(["--dataset", "voc2010_crop", "--ablation", "--models", "tiny", "--out", str(tmp_path / "p")]) == 2
    assert "which voc2010_crop does not have" in capsys.readouterr().err


# ------------------------------------------------------------------ reproduce.paper
def test_paper_records_voc2010_crop_without_a_stability(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "paper"
    write_voc2010_crop(data / "voc2010_crop", "bird")
    rc = paper.main(["--dataset", "voc2010_crop", "--models", "tiny", "--cnn", "interpretable", "--epochs", "1",
                     "--device", "cpu", "--pretrained", "none", "--out", str(out), "--data-root", str(data),
                     "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    (record,) = json.loads((out / "results.json").read_text())["runs"]
    assert record["location_instability_note"] == "voc2010_crop has no part annotations (binary error only)"
    assert math.isnan(record["location_instability"]) and record.get("location_instability_at_start") is None
    assert 0.0 <= record["binary_error"] <= 1.0 and np.isfinite(record["binary_error"])
    assert re.search(r"voc2010_crop/bird/\S+/interpretable +\d\.\d{4} +not measured", text)
