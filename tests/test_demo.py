"""demo.py (demo.m): its settings, the errors it gives before any long work, and one small
end-to-end run of the embedded default (toy dataset, tiny net, CPU) with the baseline."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import demo
from data_prep import download

RESULT_LINE = re.compile(r"^binary error (\d+\.\d{6})     location stability (\d+\.\d{6})$")


def _main(argv, capsys):
    rc = demo.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ settings
def test_quick_settings_and_demo_m_defaults():
    parser = demo.build_parser()
    quick = demo.resolve_settings(parser.parse_args(["--quick"]))
    assert (quick["dataset"], quick["categories"], quick["model"], quick["device"]) == ("toy", ["toy01"], "tiny", "cpu")
    assert quick["epochs"] == demo.QUICK["epochs"] and quick["out"] == Path("output/quick")
    full = demo.resolve_settings(parser.parse_args(["--device", "cpu"]))
    assert (full["dataset"], full["categories"], full["model"], full["dropout"], full["epochs"]) == \
        ("ilsvrcanimalpart", ["n02118333"], "vgg-vd-16", 0.8, None)                 # demo.m's values
    voc = demo.resolve_settings(parser.parse_args(["--dataset", "vocpart", "--multiclass", "--device", "cpu"]))
    assert voc["categories"] == ["bird", "cat", "cow", "dog", "horse", "sheep"]      # demo.m's multi-class run
    over = demo.resolve_settings(parser.parse_args(["--quick", "--epochs", "2", "--dropout", "0.1", "--out", "x"]))
    assert (over["epochs"], over["dropout"], over["out"]) == (2, 0.1, Path("x"))   # options override --quick


def test_quick_with_a_torchvision_net_uses_its_toy_size():
    parser = demo.build_parser()
    quick = demo.resolve_settings(parser.parse_args(["--quick", "--model", "resnet-18"]))
    assert (quick["model"], quick["image_size"], quick["toy_images"], quick["epochs"]) == ("resnet-18", 64, 100, 3)
    exp = demo.experiment(quick, parser.parse_args(["--quick", "--model", "resnet-18"]))
    assert exp.image_size == 64 and exp.toy_options == {"n_pos": 100, "n_neg": 100}
    assert exp.learning_rate_scale == 10.0
    assert demo.resolve_settings(parser.parse_args(["--quick"]))["image_size"] is None     # tiny: its own 64
    helen = demo.resolve_settings(parser.parse_args(["--dataset", "helen", "--model", "densenet-121"]))
    assert (helen["categories"], helen["toy_images"], helen["image_size"]) == (["face"], None, None)


def test_toy_images_sets_the_toy_size_and_the_disk_estimate():
    parser = demo.build_parser()
    args = parser.parse_args(["--quick", "--toy-images", "40"])
    assert demo.toy_options(args) == {"n_pos": 40, "n_neg": 40}
    assert demo.toy_options(parser.parse_args(["--quick"])) == {}
    quick = parser.parse_args(["--quick"])
    small = demo.estimate_bytes(demo.experiment(demo.resolve_settings(args), args))
    full = demo.estimate_bytes(demo.experiment(demo.resolve_settings(quick), quick))
    row = 3 * 64 * 64 * 4                   # imdb (4 x n_neg images) + the patches (n_pos + n_neg) while it is built
    assert small == (4 * 40 + 40 + 40) * row + 10**6 and full == (4 * 1000 + 1500 + 1000) * row + 10**6
    assert "--toy-images" not in parser.format_help()                                 # hidden


# ------------------------------------------------------------------ bad input
def test_unknown_dataset_and_model_list_the_valid_ones(capsys):
    err = _parse_error(["--dataset", "imagenet"], capsys)
    assert "imagenet" in err and all(d in err for d in ("ilsvrcanimalpart", "vocpart", "cub200", "toy"))
    err = _parse_error(["--model", "resnet50"], capsys)
    assert "resnet50" in err and all(m in err for m in ("vgg-vd-16", "alexnet", "vgg-m", "vgg-s", "tiny"))


def test_unknown_category_lists_the_valid_ones(capsys):
    rc, out, err = _main(["--category", "n99999999", "--device", "cpu"], capsys)
    assert rc == 2 and out == ""
    assert "'n99999999' is not in dataset 'ilsvrcanimalpart'" in err
    assert all(c in err for c in ("n02118333", "n01674464", "n01443537"))


def test_a_voc_category_with_ilsvrcanimalpart_names_its_dataset(capsys):
    rc, _, err = _main(["--dataset", "ilsvrcanimalpart", "--category", "bird", "--device", "cpu"], capsys)
    assert rc == 2 and "'bird' is not in dataset 'ilsvrcanimalpart' (bird is a category of vocpart)" in err
    rc, _, err = _main(["--dataset", "toy", "--category", "n02118333", "--device", "cpu"], capsys)
    assert rc == 2 and "of ilsvrcanimalpart" in err and "toy01 toy02 toy03" in err


def test_several_categories_need_multiclass(capsys):
    rc, _, err = _main(["--dataset", "vocpart", "--category", "bird", "cat", "--device", "cpu"], capsys)
    assert rc == 2 and "--multiclass" in err
    rc, _, err = _main(["--dataset", "vocpart", "--category", "bird", "--multiclass", "--device", "cpu"], capsys)
    assert rc == 2 and "at least two categories" in err


def test_toy_images_only_for_the_toy_dataset(capsys):
    rc, _, err = _main(["--toy-images", "10", "--device", "cpu"], capsys)
    assert rc == 2 and "--toy-images is for the toy dataset" in err
    assert "expected a whole number >= 1" in _parse_error(["--quick", "--toy-images", "0"], capsys)


def test_cuda_without_a_gpu_is_said_at_once(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, out, err = _main(["--quick", "--device", "cuda", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and "--device cuda asked for, but PyTorch sees no CUDA GPU" in err and "--device cpu" in err
    assert not (tmp_path / "out").exists()
    err = _parse_error(["--quick", "--device", "tpu", "--out", str(tmp_path / "out")], capsys)  # refused when parsed
    assert "use cpu, cuda or cuda:N" in err
    assert demo.resolve_device(None) == "cpu"                                         # the default without a GPU


def test_unwritable_output_folder_is_said_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = tmp_path / "data"
    rc, out, err = _main(["--quick", "--out", blocker / "out", "--data-root", data], capsys)
    assert rc == 2 and f"the output folder {blocker / 'out'} is not writable" in err
    assert not data.exists() and "epoch" not in out + err                            # nothing generated or trained


def test_a_full_disk_is_said_before_any_work(capsys, tmp_path, monkeypatch):

    def full(path, needed):
        raise download.InsufficientDiskSpaceError(f"not enough free disk space for {path}: need {needed} bytes")
    monkeypatch.setattr(download, "check_disk_space", full)
    rc, _, err = _main(["--quick", "--out", tmp_path / "out", "--data-root", tmp_path / "data"], capsys)
    assert rc == 2 and "not enough free disk space" in err and not (tmp_path / "data").exists()


def test_missing_net_file(capsys, tmp_path):
    rc, _, err = _main(["--quick", "--net", tmp_path / "nope.pt", "--out", tmp_path / "out",
                        "--data-root", tmp_path / "data"], capsys)
    assert rc == 2 and "nope.pt: no such file" in err


# ------------------------------------------------------------------ one whole run
def test_quick_end_to_end_on_a_small_toy_set_with_the_baseline(capsys, tmp_path):
    """--quick with 40 toy images a side and one epoch: every step of demo.m runs, the outputs are where
    the original put them, the last lines are showResults.m's line and the paper's (absent) figures;
    running the same command again resumes from the checkpoint and prints the same line."""
    out, data = tmp_path / "out", tmp_path / "data"
    argv = ["--quick", "--toy-images", 40, "--epochs", 1, "--baseline", "--out", out, "--data-root", data]
    args = demo.build_parser().parse_args([str(a) for a in argv])
    exp = demo.experiment(demo.resolve_settings(args), args)
    needed = demo.estimate_bytes(exp)
    rc, text, _ = _main(argv, capsys)
    assert rc == 0
    built = (out / "mat" / "toy01" / "imdb" / "data.npy").stat().st_size + (40 + 40) * 3 * 64 * 64 * 4
    assert built <= needed <= built + 2 * 10**6          # the imdb and its patches, what the build held at its peak
    assert demo.estimate_bytes(exp) == 10**6             # cached now
    lines = text.strip().splitlines()
    assert lines[-1] == "The paper reports no figures for this dataset/model."
    match = RESULT_LINE.match(lines[-2])
    assert match, lines[-2]
    binerr, stability = (float(v) for v in match.groups())
    assert 0 <= binerr <= 1 and 0 < stability < 1
    rows = {ln.split("  ")[1].strip(): ln for ln in lines if ln.startswith("  ordinary CNN")
            or ln.startswith("  interpretable CNN")}
    assert set(rows) == {"ordinary CNN", "interpretable CNN"}
    icnn = rows["interpretable CNN"].split()
    assert float(icnn[2]) == pytest.approx(binerr, abs=1e-4) and float(icnn[3]) == pytest.approx(stability, abs=1e-4)

    # the ablation table: its five rows, before -> after for the three figures
    start = lines.index(next(ln for ln in lines if ln.startswith("ablation (reproduce.ablation")))
    table = lines[start + 3:start + 8]
    assert [ln[2:40].strip() for ln in table] == ["ordinary CNN", "ICNN, filter loss off (masks only)",
                                                 "the same, masks off at eval (beta=0)", "ICNN as published",
                                                 "the same, masks off at eval (beta=0)"]
    published = [float(v) for v in table[3][40:].replace("->", " ").split()]
    assert published[3] == pytest.approx(stability, abs=5e-4)        # location instability after training
    assert published[1] == pytest.approx(binerr, abs=1e-6)          # binary error after: the last epoch's
    assert all(0.0 <= v <= 1.0 for v in published)
    assert (out / "mat" / "toy01-no-filter-loss" / "net-epoch-1.pt").is_file()

    assert (data / "toy" / "toy.json").is_file()
    for name in ("toy01", "toy01-ordinary"):
        assert (out / "mat" / name / "net-epoch-1.pt").is_file() and (out / "mat" / name / "net-train.png").is_file()
    assert (out / "mat" / "toy01" / "imdb").is_dir()
    sheet = out / "draw_RF" / "toy01_contact_sheet.png"
    assert sheet.is_file() and f"contact sheet: {sheet}" in text
    for sub in ("img_ori", "img_RF", "img_maskF"):
        assert any((out / "draw_RF" / sub).iterdir())

    rc, again, _ = _main(argv, capsys)                                      # resume: nothing to train
    assert rc == 0 and "epoch 01 (" not in again
    assert again.strip().splitlines()[-2] == lines[-2]
    for change, said in ((["--seed", "1"], "seed 0 there, 1 asked for"),   # another run's folder: refused
                         (["--dropout", "0.1"], "dropout 0.5 there, 0.1 asked for")):
        rc, text, err = _main(argv + change, capsys)
        assert rc == 2 and said in err and "--resume-anyway" in err and "epoch 01 (" not in text + err

    # --net: show results for the trained net alone (our checkpoint; the imdb cache gives dataMean)
    net_argv = ["--quick", "--toy-images", 40, "--out", out, "--data-root", data, "--no-draw",
                "--net", out / "mat" / "toy01" / "net-epoch-1.pt", "--imdb", out / "mat" / "toy01" / "imdb"]
    rc, shown, _ = _main(net_argv + ["--measure-error"], capsys)
    assert rc == 0 and "epoch 01 (" not in shown
    assert shown.strip().splitlines()[-2] == lines[-2]
    assert "is the one net-epoch-1.pt recorded for its last epoch" in shown
    measured = re.search(r"binary error measured now on the imdb's (\d+) validation images: (\S+)", shown)
    assert measured and float(measured.group(2)) == pytest.approx(binerr, abs=1e-6)   # the recorded one, measured


def test_no_progress_silences_the_bars_and_keeps_the_result_line(capsys, tmp_path):
    """--no-progress (as reproduce.paper and reproduce.ablation take it): no progress bar on stderr, for
    logs and CI; the run and its last lines are the same."""
    argv = ["--quick", "--toy-images", 10, "--epochs", 1, "--no-draw", "--out", tmp_path / "out",
            "--data-root", tmp_path / "data", "--no-progress"]
    rc, out, err = _main(argv, capsys)
    assert rc == 0 and RESULT_LINE.match(out.strip().splitlines()[-2])
    assert "batch/s" not in err and "it/s" not in err and "\r" not in err, err[-500:]
