"""The stable surface (README "Using it from Python"): the documented names import from their
homes, and the modules moved by the reshape (issue 26) still import by their old names, as the
same module objects, with a DeprecationWarning that says where they live now."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest
import torch

import reproduce
from reproduce import MOVED

DOCUMENTED = {
    "reproduce.layers.conv_mask": ["conv_mask", "ConvMask", "ConvMaskState", "ConvMaskOptions", "FilterLossContext"],
    "reproduce.models": ["network_init"],
    "reproduce.models.registry": ["MODELS"],
    "reproduce.training.cnn_train": ["train"],
    "reproduce.train": ["train"],
    "reproduce.evaluation.net_evaluation": ["load_net_for_evaluation", "evaluate_net", "evaluate_checkpoint"],
    "reproduce.evaluation.location_instability": ["compute_stability"],
    "reproduce.evaluation.part_interpretability": ["part_interpretability", "compute_part_interpretability"],
    "reproduce.evaluation.receptive_fields": ["draw_rf"],
    "reproduce.experiments.pipeline": ["Experiment", "learn", "show_results", "run_experiment"],
    "legacy_compat": ["loadmat", "savemat"],
    "data_prep": ["read_annotation", "get_i", "get_imdb", "DATASETS"],
}


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_the_documented_names_import_from_their_homes(module):
    found = importlib.import_module(module)
    missing = [name for name in DOCUMENTED[module] if not hasattr(found, name)]
    assert missing == []


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_gives_the_new_module_and_says_where(old, monkeypatch):
    new = importlib.import_module(MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    monkeypatch.delattr(reproduce, old.rsplit(".", 1)[1], raising=False)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        found = importlib.import_module(old)
    assert found is new


def test_the_readme_example_through_the_old_path():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("reproduce.conv_mask")       # the README's path before the reshape
    ConvMask, FilterLossContext = old.ConvMask, old.FilterLossContext
    torch.manual_seed(0)
    layer = ConvMask(64, 32, 3, feature_size=14, pad=1)
    x = torch.relu(torch.randn(8, 64, 14, 14)).requires_grad_()
    labels = torch.tensor([1.0, -1.0] * 4).reshape(8, 1)
    y = layer(x, FilterLossContext(labels, epoch=1))
    y.sum().backward()
    assert y.shape == (8, 32, 14, 14)
    assert torch.isfinite(x.grad).all() and layer.beta.grad is not None and layer.beta.grad.abs().sum() > 0


def test_an_old_command_name_still_runs():
    out = subprocess.run([sys.executable, "-m", "reproduce.train_cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage: python -m reproduce.train" in out.stdout
