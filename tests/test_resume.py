"""Resuming checks what it resumes (issue 18): a checkpoint records the options of its run, and a
run asked for with other options stops before any work, naming each difference, unless
--resume-anyway; a longer run (--epochs) still resumes, as MatConvNet's."""
from __future__ import annotations

import types

import pytest

from legacy_compat import loadmat
from legacy_compat.simplenn import layers_from_matlab
from reproduce.experiments import pipeline
from reproduce.experiments import train_command as train_cli
from reproduce.experiments.pipeline import PLOT_BYTES, Experiment, checkpoint_bytes, space_needed
from reproduce.golden.training_cases import golden_imdb
from reproduce.layers.simplenn import SimpleNN
from reproduce.training import checkpoints as ckpt
from reproduce.training import cnn_train as tr

RUN = {"dataset": "toy", "categories": ["toy01"], "model": "tiny", "dropout": 0.5, "loss": "ourloss_logistic",
       "interpretable": True, "image_size": 64, "pretrained": "auto", "learning_rate_scale": 1.0, "toy_options": {}}


@pytest.fixture
def tiny(golden_dir):
    """(make_net, imdb): the golden cnn_train_single case's scaled-down ICNN and its 14 images."""
    case = loadmat(golden_dir / "cnn_train_single.mat")

    def make_net(dropout=None):
        specs = layers_from_matlab(case.inputs.net.layers)
        for spec in specs:
            if spec.type == "dropout" and dropout is not None:
                spec.fields["rate"] = float(dropout)
        return SimpleNN.from_specs(specs)
    return make_net, golden_imdb(case.inputs.imdb)


def _opts(epochs):
    return {"learning_rate": [2e-3, 1e-3, 5e-4][:epochs], "num_epochs": epochs, "batch_size": 4,
            "weight_decay": 5e-4, "momentum": 0.9}


def _train(tiny, folder, epochs=1, run=RUN, seed=0, dropout=None, **kw):
    make_net, imdb = tiny
    return tr.train(make_net(dropout), imdb, _opts(epochs), folder, seed=seed, progress=False, plot=False,
                    run_options=run, **kw)


def test_a_changed_option_is_refused_before_any_work_and_names_each_difference(tiny, tmp_path):
    _train(tiny, tmp_path)
    for change, words in (({"dropout": 0.1}, "dropout 0.5 there, 0.1 asked for"),
                          ({"dataset": "ilsvrcanimalpart", "categories": ["n02118333"]},
                           "dataset 'toy' there, 'ilsvrcanimalpart' asked for"),
                          ({"loss": "ourloss_softmaxlog"}, "loss")):
        with pytest.raises(ckpt.ResumeMismatchError) as info:
            _train(tiny, tmp_path, epochs=2, run={**RUN, **change})
        text = str(info.value)
        assert words in text and "--resume-anyway" in text and "another output folder (--out)" in text
        assert sorted(ckpt.find_checkpoints(tmp_path)) == [1]             # nothing trained
    with pytest.raises(ckpt.ResumeMismatchError, match="seed 0 there, 1 asked for"):
        _train(tiny, tmp_path, epochs=2, seed=1)


def test_a_longer_run_resumes_and_resume_anyway_continues_with_the_new_options(tiny, tmp_path, capsys):
    _train(tiny, tmp_path / "a")
    _, stats = _train(tiny, tmp_path / "a", epochs=2)                      # --epochs extended: resumes
    assert sorted(ckpt.find_checkpoints(tmp_path / "a")) == [1, 2] and len(stats["train"]) == 2
    _train(tiny, tmp_path / "b")
    _, stats = _train(tiny, tmp_path / "b", epochs=2, run={**RUN, "dropout": 0.1}, resume_anyway=True)
    assert sorted(ckpt.find_checkpoints(tmp_path / "b")) == [1, 2]
    assert "resuming anyway, with other options" in capsys.readouterr().err
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "b", 2)).options["run"]["dropout"] == 0.1


def test_a_checkpoint_without_recorded_options_is_still_compared_on_its_dropout(tiny, tmp_path):
    """A MATLAB checkpoint (or an older one of ours) records no options: its layers' dropout rate
    still tells a net trained with 0.8 from the one asked for."""
    _train(tiny, tmp_path, run=None, dropout=0.8)
    with pytest.raises(ckpt.ResumeMismatchError, match="dropout rate 0.8 there, 0.5 asked for"):
        _train(tiny, tmp_path, epochs=2, dropout=0.5)


def test_the_command_line_refuses_another_seed_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    make_net, imdb = tiny
    built = []

    def fake_net(exp):
        built.append(exp.seed)
        return make_net(exp.dropout), _opts(exp.epochs or 1), {"image_size": (16, 16, 3)}
    monkeypatch.setattr(pipeline, "build_net", fake_net)
    monkeypatch.setattr(pipeline, "prepare_dataset", lambda exp, size=None: "paths")
    monkeypatch.setattr(pipeline, "build_imdb", lambda exp, paths, size: imdb)
    argv = ["--dataset", "toy", "--category", "toy01", "--model", "tiny", "--dropout", "0.5",
            "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert train_cli.main(argv) == 0
    capsys.readouterr()
    assert train_cli.main(argv + ["--seed", "1", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed 0 there, 1 asked for" in err and "Traceback" not in err
    assert built == [0]                                       # refused before the net was even built
    assert train_cli.main(argv + ["--seed", "1", "--epochs", "2", "--resume-anyway"]) == 0
    assert sorted(ckpt.find_checkpoints(tmp_path / "mat" / "toy01")) == [1, 2]


def test_resuming_needs_the_space_of_the_remaining_epochs_only(tiny, tmp_path):
    """The disk check counts a checkpoint (the size one really has) for each epoch still to train."""
    exp = Experiment(dataset="toy", categories=["toy01"], model="tiny", out=tmp_path)
    make_net, imdb = tiny
    net = make_net()
    assert space_needed(exp, net, types.SimpleNamespace(num_epochs=3))["epochs"] == 3
    tr.train(net, imdb, _opts(1), exp.exp_dir, progress=False, plot=False)
    real = ckpt.checkpoint_path(exp.exp_dir, 1).stat().st_size
    assert real <= checkpoint_bytes(net) <= 1.1 * real + 128 * 1024
    need = space_needed(exp, net, types.SimpleNamespace(num_epochs=3))
    assert need["epochs"] == 2 and need["checkpoints"] == 2 * (checkpoint_bytes(net) + PLOT_BYTES)
