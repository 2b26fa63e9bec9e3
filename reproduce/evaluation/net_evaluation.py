"""Evaluation of a trained ICNN as showResults.m reports it: the net loaded from its checkpoint, the
binary error of its last validation epoch and the location instability of the measured layer.

Ports
- showResults.m: `getResult` / `getResult_multiClass` (the last epoch's validation `binerr`, the
  location stability of the chosen layer, `evaluate_net`) and the line demo.m ends with
  (`format_result_line`); its layerID per model (the model's row: `MODELS[model].layer_id`) and partList per dataset;
- loading the trained net the original reads (`net-epoch-N.mat`) or the port's `net-epoch-N.pt`
  (`load_net_for_evaluation`).

The measure itself (computeStability.m, getDistSqrtVar.m) is reproduce.evaluation.location_instability;
the images through the net, reproduce.evaluation.net_features.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_prep.facts import DATASETS, GOLDFISH, parts_for
from reproduce.evaluation.location_instability import (
    CategorySource,
    ForwardPass,
    MeasuredLayer,
    StabilitySettings,
    compute_stability,
    compute_stability_multiclass,
)
from reproduce.evaluation.net_features import EvaluationError, first_conv_mask_layer_id, read_mean_data
from reproduce.layers.simplenn import SimpleNN
from reproduce.models.registry import MODELS, default_layer_id
from reproduce.runtime.device import resolve_device
from reproduce.training.checkpoints import load_checkpoint, load_mat_checkpoint

__all__ = [
    "PART_LISTS", "EvaluationError", "EvaluationResult", "EvaluationSettings",
    "layer_id_for_model", "measured_layer_id", "part_list_for", "format_result_line", "final_val_error",
    "load_net_for_evaluation", "evaluate_net", "evaluate_checkpoint",
]

# showResults.m's layerID (the layer measured, an index into getConvNetPara's conv layers) is on each
# model's row: reproduce.models.registry.MODELS[model].layer_id (`layer_id_for_model`)
# showResults.m: the parts evaluated per dataset (kept in data_prep.facts.DATASETS)
PART_LISTS = {name: spec.part_list for name, spec in DATASETS.items()}


# =================================================================== small pieces of showResults.m
def layer_id_for_model(model: str) -> int:
    """showResults.m: layerID 14 for 'vgg-vd-16', 6 for 'alexnet', 'vgg-m', 'vgg-s' (the model's row:
    `MODELS[model].layer_id`, the first conv_mask layer of every registered network)."""
    layer_id = default_layer_id(model)
    if layer_id is None:
        raise EvaluationError(f"invalid model name {model!r}; valid: {', '.join(MODELS)}")
    return layer_id


def part_list_for(dataset: str, category: str | None = None) -> tuple[int, ...]:
    """showResults.m's partList per dataset; step_computeStability.m's goldfish rule (part 1 only)."""
    try:
        return parts_for(dataset, category)
    except ValueError:
        raise EvaluationError(f"unknown dataset {dataset!r}; valid: {', '.join(PART_LISTS)}") from None


def format_result_line(binary_error: float, stability: float) -> str:
    """The line showResults.m prints: fprintf('binary error %f     location stability %f\\n', ...).

    MATLAB's %f is six decimals; NaN prints as 'NaN' and Inf as 'Inf' (as MATLAB does).
    """
    return f"binary error {_matlab_f(binary_error)}     location stability {_matlab_f(stability)}"


def _matlab_f(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return f"{v:f}"


def final_val_error(stats: Any, name: str = "binerr") -> float:
    """showResults.m's `net.stats.val(end).binerr`: the last epoch's validation error.

    `stats` is a MATLAB `stats` struct (as loadmat reads it) or the package's
    ``{"train": [...], "val": [...]}`` lists of per-epoch dicts. A softmax
    run records `top1err` instead of `binerr` (the original crashes there):
    ask for `name="top1err"`; a missing field raises EvaluationError naming
    the fields that exist.
    """
    val = stats.get("val") if isinstance(stats, dict) else getattr(stats, "val", None)
    if val is None:
        raise EvaluationError("the statistics hold no 'val' entries (no validation epoch was recorded)")
    entries = list(np.asarray(val, dtype=object).reshape(-1, order="F")) if isinstance(val, np.ndarray) else list(val)
    if not entries:
        raise EvaluationError("the statistics hold no validation epoch")
    last = entries[-1]
    if name not in last:
        raise EvaluationError(f"the last validation epoch has no {name!r} (it has: {', '.join(map(str, last))}); "
                              f"a softmax run records 'top1err'")
    return float(np.asarray(last[name], dtype=np.float64).reshape(-1)[0])



# =================================================================== nets and checkpoints
@dataclass
class EvaluationResult:
    """evaluate_checkpoint's answer: what showResults.m prints, and how it was measured."""

    binary_error: float
    stability: float
    layer_id: int
    is_baseline: bool
    details: Any = None

    def line(self) -> str:
        return format_result_line(self.binary_error, self.stability)


def load_net_for_evaluation(path: os.PathLike | str, device: Any = "cpu") -> tuple[Any, dict[str, Any], Any]:
    """Load a trained net: the package's ``net-epoch-N.pt`` or a MATLAB ``net-epoch-N.mat``.

    Returns (net in evaluation mode on `device`, stats, meta).
    """

    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"checkpoint not found: {path}")
    state = load_mat_checkpoint(path) if path.suffix.lower() == ".mat" else load_checkpoint(path)
    try:
        net = SimpleNN.from_specs(state.specs)
        if state.state_dict:          # a .pt written from a MATLAB state holds the weights in its specs only
            net.load_state_dict(state.state_dict)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise EvaluationError(f"{path}: its layers do not make a network ({type(exc).__name__}: "
                              f"{str(exc).strip()[:300]})") from exc
    if state.meta is not None:
        try:
            net.meta = state.meta
        except AttributeError:
            pass
    net = net.to(resolve_device(device)).eval()
    return net, state.stats, state.meta


@dataclass(frozen=True)
class EvaluationSettings:
    """What showResults.m measures on a net.

    layer_id: the measured conv layer (getConvNetPara's conv index); None: `model`'s
    (showResults.m: 14 for vgg-vd-16, 6 for alexnet / vgg-m / vgg-s), else the first conv_mask
    layer. part_list: showResults.m's partList (the goldfish alone is measured on part 1).
    multiclass: getResult_multiClass; None: when there is more than one category. error_name:
    the statistic read as the binary error ('top1err' for a softmax run). image_size: the net's
    input (ih, iw); None: read from the net's meta.
    """

    layer_id: int | None = None
    model: str | None = None
    part_list: Sequence[int] = (1, 2)
    multiclass: bool | None = None
    error_name: str = "binerr"
    image_size: Sequence[int] | None = None


def measured_layer_id(net: SimpleNN, layer_id: int | None = None, model: str | None = None) -> int:
    """The layerID showResults.m measures: `layer_id` when given, else the model's row's, else the
    net's first conv_mask layer (EvaluationError for a plain net of an unregistered model)."""
    if layer_id is not None:
        return int(layer_id)
    found = default_layer_id(model)
    if found is None:
        found = first_conv_mask_layer_id(net.layer_types)
    if found is None:
        raise EvaluationError("the net has no conv_mask layer (a plain-CNN baseline): pass model= (one of "
                              f"{', '.join(MODELS)}) or layer_id= to say which conv layer to measure")
    return found


def evaluate_net(net: SimpleNN, stats: Any, sources: Sequence[CategorySource], mean_data: np.ndarray,
                 settings: EvaluationSettings = EvaluationSettings(),
                 forward: ForwardPass = ForwardPass()) -> EvaluationResult:
    """showResults.m's getResult / getResult_multiClass on a loaded net.

    settings: which layer, parts, statistic (`EvaluationSettings`). A net without conv_mask
    layers (the plain-CNN baseline) is measured the same way on its conv layer at `layer_id`
    (give `model` or `layer_id`). forward: the device, batch size and progress bar of the
    forward passes.

    Unlike the original's getResult, which wraps everything in try/catch and
    reports 0 for a net it cannot evaluate, errors are raised here.
    """
    is_baseline = "conv_mask" not in net.layer_types
    layer_id = measured_layer_id(net, settings.layer_id, settings.model)
    binary_error = final_val_error(stats, settings.error_name)
    multiclass = len(sources) > 1 if settings.multiclass is None else settings.multiclass
    layer = MeasuredLayer(layer_id, image_size=settings.image_size)
    if multiclass:
        value, details = compute_stability_multiclass(net, sources, layer, mean_data,
                                                      StabilitySettings(part_list=settings.part_list), forward)
    else:
        if len(sources) != 1:
            raise EvaluationError(f"single-class evaluation takes one category, got {len(sources)}")
        parts = (1,) if sources[0].name == GOLDFISH else settings.part_list
        details = compute_stability(net, sources[0], layer, mean_data, StabilitySettings(part_list=parts), forward)
        value = details.stability
    return EvaluationResult(binary_error, value, int(layer_id), is_baseline, details)


def evaluate_checkpoint(path: os.PathLike | str, categories: Sequence[str] | str, conf: Any,
                        mean_data: np.ndarray | os.PathLike | str,
                        settings: EvaluationSettings = EvaluationSettings(),
                        forward: ForwardPass = ForwardPass(device="cpu", progress=True), *,
                        dataset: str | None = None) -> EvaluationResult:
    """Binary error and location stability of a trained net, as showResults.m reports them.

    path: ``net-epoch-N.pt`` (reproduce.training.checkpoints) or a MATLAB
    ``net-epoch-N.mat`` (legacy_compat.checkpoint; the original's own files
    too). categories: the category name(s) (net.meta.classes.name order for
    a multi-class net). conf: a data_prep DataConf (images, truth files).
    mean_data: the imdb's dataMean in any form `read_mean_data` takes (an
    H x W x 3 or 3 x H x W array, an Imdb, a MATLAB imdb.mat, an imdb cache
    folder). dataset defaults to conf.dataset and picks the part list
    (showResults.m; settings.part_list is replaced by it). settings: see `evaluate_net` (a
    checkpoint without conv_mask layers, the plain-CNN baseline, needs its layer_id or model).
    forward: where the net is loaded and run (by default the CPU, with a progress bar).
    """
    net, stats, _ = load_net_for_evaluation(path, "cpu" if forward.device is None else forward.device)
    if isinstance(categories, str):
        categories = [categories]
    dataset = dataset or getattr(conf, "dataset", None)
    part_list = part_list_for(dataset) if dataset else (1, 2)
    mean = read_mean_data(mean_data)
    sources = [CategorySource.from_conf(c, conf, sorted(set(part_list) | {1})) for c in categories]
    return evaluate_net(net, stats, sources, mean, replace(settings, part_list=part_list), forward)
