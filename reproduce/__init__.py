"""The method: Interpretable CNNs (Zhang, Wu & Zhu), ported from the authors' MATLAB/MatConvNet code.

The sub-packages are stages, lowest first; a stage imports only from the stages above it in this
list (tests/test_architecture.py checks it; docs/ARCHITECTURE.md draws it):

    runtime/      where and how code runs: device and float32 rules, SIGTERM, several GPUs
    layers/       conv_mask (a function and a thin module), the losses, geometry, SimpleNN, torchvision blocks
    models/       one registry of networks, one builder, the pretrained model files
    training/     SGD as our_cnn_train.m, checkpoints, plots
    evaluation/   binary error, location instability, part interpretability, receptive fields
    experiments/  demo.m's pipeline, the ablation, pretraining, the paper runner, the report, the command lines
    bench/, golden/   benchmarks and the golden-case adapters (they test the stages; nothing imports them)

The flat modules here are the command lines' names only (`python -m reproduce.paper`, ...): each
calls into the stage where its code lives.

Modules moved by the reshape (issue 26) are still importable by their old names (for example
`reproduce.conv_mask`, `reproduce.evaluate`); such an import gives the module's new home and a
DeprecationWarning that names it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Old module name -> its home since the reshape.
MOVED = {
    "reproduce.device": "reproduce.runtime.device",
    "reproduce.interrupt": "reproduce.runtime.interrupt",
    "reproduce.distributed": "reproduce.runtime.distributed",
    "reproduce.ops": "reproduce.layers.padding",
    "reproduce.geometry": "reproduce.layers.geometry",
    "reproduce.losses": "reproduce.layers.losses",
    "reproduce.conv_mask": "reproduce.layers.conv_mask",
    "reproduce.network": "reproduce.layers.simplenn",
    "reproduce.tv_blocks": "reproduce.layers.torchvision_blocks",
    "reproduce.model_registry": "reproduce.models.registry",
    "reproduce.torchvision_nets": "reproduce.models.torchvision_nets",
    "reproduce.checkpoints": "reproduce.training.checkpoints",
    "reproduce.plots": "reproduce.training.plots",
    "reproduce.evaluate": "reproduce.evaluation.net_evaluation",
    "reproduce.draw_rf": "reproduce.evaluation.receptive_fields",
    "reproduce.pipeline": "reproduce.experiments.pipeline",
    "reproduce.paper_numbers": "reproduce.experiments.published_numbers",
    "reproduce.cli": "reproduce.experiments.options",
    "reproduce.train_cli": "reproduce.experiments.train_command",
}


class _MovedModuleLoader(importlib.abc.Loader):
    """Gives the module at its new home for an import under its old name."""

    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        warnings.warn(f"{spec.name} has moved to {self.new_name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new_name)

    def exec_module(self, module) -> None:
        """Nothing to run: the module ran at its new home."""

    def get_code(self, fullname: str):
        """The new home's code, for `python -m <old name>` (runpy asks the loader for it)."""
        spec = importlib.util.find_spec(self.new_name)
        return spec.loader.get_code(self.new_name)


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of moved modules (last on sys.meta_path: real files always win)."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED.get(fullname)
        if new_name is None or new_name == fullname:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new_name))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
