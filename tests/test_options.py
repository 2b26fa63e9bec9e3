"""The command lines' shared options and their one set of checks (reproduce.experiments.options)."""
from __future__ import annotations

import argparse

import pytest
import torch

from reproduce.experiments.options import add_common, parse_checked, run_option_problem, start_device


def test_run_option_problem_says_what_does_not_go_with_the_dataset():
    assert run_option_problem("toy", model="tiny", toy_images=10) is None
    assert run_option_problem("vocpart", toy_images=10) == "--toy-images is for the toy dataset, not 'vocpart'"
    assert run_option_problem("toy", max_images=5) == "--max-images is for the celeba dataset, not 'toy'"
    assert run_option_problem("celeba", max_images=5) is None
    assert "drop --multiclass" in run_option_problem("voc2010_crop", multiclass=True)
    assert "use the logistic loss" in run_option_problem("celeba", loss="ourloss_softmaxlog", multiclass=True)
    assert "--save-mat cannot write model 'resnet-18'" in run_option_problem("toy", model="resnet-18", save_mat=True)
    assert run_option_problem("toy", model="tiny", save_mat=True) is None


def test_parse_checked_refuses_softmaxlog_for_one_class(capsys):
    parser = argparse.ArgumentParser(prog="probe")
    parser.add_argument("--loss", default="logistic")
    parser.add_argument("--multiclass", action="store_true")
    assert parse_checked(parser, ["--loss", "softmaxlog", "--multiclass"]).loss == "softmaxlog"
    with pytest.raises(SystemExit) as stop:
        parse_checked(parser, ["--loss", "softmaxlog"])
    assert stop.value.code == 2 and "needs a multi-class net (--multiclass)" in capsys.readouterr().err


def test_threads_is_a_common_option_applied_with_the_device():
    parser = argparse.ArgumentParser()
    add_common(parser)
    args = parser.parse_args(["--device", "cpu", "--threads", "1"])
    before = torch.get_num_threads()
    try:
        assert start_device(args) == "cpu" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
