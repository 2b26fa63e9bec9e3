"""The command lines' shared parts (legacy_compat.cli, reproduce.cli): options refused when they
are parsed, in every command line; errors said in one or two lines with an exit status."""
from __future__ import annotations

import argparse
import errno

import pytest

import demo
from data_prep import check as data_check
from data_prep.download import InsufficientDiskSpaceError
from data_prep.readers import DatasetError
from data_prep.setup import MissingDataError
from legacy_compat import cli, parity
from legacy_compat.matio import MatFileError
from reproduce.bench import conv_mask as bench_conv_mask
from reproduce.bench import evaluation as bench_eval
from reproduce.bench import imdb as bench_imdb
from reproduce.bench import suite as bench
from reproduce.evaluation.net_features import EvaluationError
from reproduce.experiments import grid, paper
from reproduce.experiments import train_command as train_cli
from reproduce.training.checkpoints import CheckpointError

# every command line's main, and the arguments it needs besides the one under test
COMMANDS = {
    "demo": (demo.main, ["--quick"]),
    "train": (train_cli.main, ["--dataset", "toy", "--category", "toy01", "--model", "tiny", "--out", "OUT"]),
    "paper": (paper.main, ["--dataset", "toy", "--models", "tiny"]),
}


def _refused(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("value", ["1.5", "-0.5", "1.0", "1", "nan", "inf", "lots"])
def test_dropout_outside_0_1_is_refused_when_parsed(name, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, base = COMMANDS[name]
    err = _refused(main, base + ["--dropout", value], capsys)
    assert "--dropout" in err and "[0, 1)" in err
    assert not any(tmp_path.iterdir())                       # nothing written: refused before any work


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("value", ["0", "-1", "2.5"])
def test_epochs_below_one_is_refused_when_parsed(name, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, base = COMMANDS[name]
    err = _refused(main, base + ["--epochs", value], capsys)
    assert "--epochs" in err and "whole number" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", list(COMMANDS))
def test_seed_batch_size_and_device_are_checked_when_parsed(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, base = COMMANDS[name]
    assert "--seed" in _refused(main, base + ["--seed", "-3"], capsys)
    assert "use cpu, cuda or cuda:N" in _refused(main, base + ["--device", "gpu"], capsys)
    if name != "demo":
        assert "--batch-size" in _refused(main, base + ["--batch-size", "0"], capsys)


def test_every_command_line_has_the_same_device_default_and_debug():
    parsers = {"demo": demo.build_parser(), "train": train_cli.build_parser(), "paper": paper.build_parser(),
               "bench": bench.build_parser(), "bench_eval": bench_eval.build_parser(),
               "bench_conv_mask": bench_conv_mask.build_parser(), "bench_imdb": bench_imdb.build_parser(),
               "data_check": data_check.build_parser(),
               "parity": parity.build_parser()}
    for name, parser in parsers.items():
        actions = {a.dest: a for a in parser._actions}
        if name not in ("bench_imdb", "data_check"):            # these run no net
            assert actions["device"].default == "auto", name
        assert "debug" in actions, name
        if "allow_tf32" in actions:
            assert actions["allow_tf32"].help == cli.ALLOW_TF32_HELP, name


@pytest.mark.parametrize("main, argv", [
    (bench.main, ["--repeats", "0"]), (bench.main, ["--threads", "0"]), (bench.main, ["--imdb-size", "-2"]),
    (bench_eval.main, ["--batch-size", "0"]), (bench_eval.main, ["--max-images", "-1"]),
    (bench_conv_mask.main, ["--repeats", "0"]), (bench_conv_mask.main, ["--batch", "0"]),
    (bench_imdb.main, ["--size", "0"]), (bench_imdb.main, ["--workers", "0"]),
])
def test_benchmark_options_are_checked_when_parsed(main, argv, capsys):
    assert "whole number" in _refused(main, argv, capsys)


def test_demo_refuses_options_that_make_no_sense_together(capsys, tmp_path):
    assert "--imdb goes with --net" in _refused(demo.main, ["--quick", "--imdb", tmp_path], capsys)
    for extra in (["--baseline"], ["--epochs", "3"], ["--save-mat"]):
        err = _refused(demo.main, ["--quick", "--net", tmp_path / "n.pt"] + extra, capsys)
        assert "--net trains nothing" in err


def test_paper_refuses_a_model_it_does_not_know_when_parsed(capsys):
    assert "nope" in _refused(paper.main, ["--models", "nope"], capsys)


# ------------------------------------------------------------------ errors
def test_option_types():
    assert cli.dropout_rate("0") == 0.0 and cli.dropout_rate("0.8") == 0.8
    for bad in ("1", "nan", "-0.0001", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.dropout_rate(bad)
    assert cli.positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        cli.positive_int("0")


def test_disk_full_is_said_as_such_and_other_errors_in_one_line(capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/net-epoch-3.pt")
    assert cli.run_cli("demo", full) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo: disk full: /x/net-epoch-3.pt") and "Traceback" not in err

    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/ro/data")
    assert cli.run_cli("demo", denied) == 2
    assert "cannot write /ro/data" in capsys.readouterr().err

    def bug():
        raise KeyError("posTemp")
    assert cli.run_cli("demo", bug) == 1
    err = capsys.readouterr().err
    assert "KeyError" in err and "--debug" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(KeyError):                               # --debug: the traceback
        cli.run_cli("demo", bug, debug=True)


def test_the_package_errors_are_user_errors():
    for kind in (InsufficientDiskSpaceError, DatasetError, MatFileError, CheckpointError, EvaluationError,
                 grid.RunnerError, demo.DemoError):
        assert issubclass(kind, cli.UserError), kind
    assert cli.describe_error(MissingDataError("the fox images are missing"))[0] == 3
