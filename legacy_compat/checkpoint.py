"""ICNN training checkpoints `net-epoch-N.mat`, read and written losslessly.

Ports the checkpoint functions of ICNN `tool/main/our_cnn_train.m`:

- `saveState(fileName, net, state)`: `save(fileName, 'net', 'state')`;
- `saveStats(fileName, stats)`: `save(fileName, 'stats', '-append')`;
- `loadState(fileName)`: loads `net`, `state`, `stats`, runs
  `vl_simplenn_tidy(net)` and fails with "Epoch '<file>' was only partially
  saved. Delete this file and try again." when `stats` is missing (the run
  stopped between saveState and saveStats). Here `PartialCheckpointError` says what is wrong
  only: the file may be a user's input (``demo.py --net``), so what to do is the caller's to say.

A file holds three variables:

| variable | MATLAB value | here |
|---|---|---|
| `net` | `layers` (SimpleNN cell) and `meta` | `specs` (LayerSpec list, PyTorch layout), `meta` (MatStruct, MATLAB values) |
| `state.solverState` | a cell per layer of a cell per weight: the SGD momentum, in the weight's layout, or the double 0 it starts as (processEpoch); `[]` when saveSolverState is off | `momentum`: per layer a list per weight of a float32 tensor in PyTorch layout or None for the 0; None for `[]` |
| `state.stats` | the last epoch's `train` / `val` stats (processEpoch: `state.stats.(mode) = stats`) | `state_stats` (dict of dicts of float) |
| `stats` | `train` and `val` struct arrays, one element per epoch: lossForClassification, binerr (logistic) or top1err (softmax), num, time | `stats`: `{"train": [dict per epoch], "val": [...]}` of float |

Everything else (other fields of `state` such as `prof`, the MATLAB class
and orientation of each momentum array, the layers' MATLAB forms kept in
their `fields["_matlab"]`) is kept in `extra` so that writing a checkpoint
that was read gives back equal MATLAB values.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .matio import MatFileError, loadmat, savemat
from .mattypes import MatStruct, StructArray, cell, cell_items
from .simplenn import (
    MATLAB_FORM,
    LayerSpec,
    layers_from_matlab,
    layers_to_matlab,
    meta_to_matlab,
    weight_to_matlab,
    weight_to_torch,
)

__all__ = ["IcnnCheckpoint", "PartialCheckpointError", "read_icnn_checkpoint", "write_icnn_checkpoint",
           "epoch_from_filename"]

_EPOCH_RE = re.compile(r"^net-epoch-(\d+)\.mat$")


class PartialCheckpointError(MatFileError):
    """loadState's error: the file has `net` and `state` but no `stats` (saveStats never ran)."""


@dataclass
class IcnnCheckpoint:
    """One `net-epoch-N.mat` of our_cnn_train (see the module docstring for each part).

    `momentum[l][j]` is `state.solverState{l+1}{j+1}`: a float32 tensor in
    the PyTorch layout of `specs[l].weights[j]`, None for MATLAB's initial
    scalar 0 (or a MatStruct, as read, for another solver's state); the
    whole list is None where MATLAB saved `solverState = []`.
    `epoch` is N of the file name `net-epoch-N.mat`, else the number of
    epochs in `stats`.
    """

    specs: list[LayerSpec]
    meta: Any = None
    momentum: list[list[Any]] | None = None
    stats: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "val": []})
    epoch: int | None = None
    state_stats: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def epoch_from_filename(path: os.PathLike | str) -> int | None:
    """N of `net-epoch-N.mat` (our_cnn_train's modelPath / findLastCheckpoint), else None."""
    m = _EPOCH_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------- reading
def read_icnn_checkpoint(path: os.PathLike | str) -> IcnnCheckpoint:
    """Read a `net-epoch-N.mat` (MAT v5/v7 or v7.3) written by our_cnn_train (loadState's port).

    Raises MatFileError naming the file when it cannot be read or is not a
    checkpoint, PartialCheckpointError (a MatFileError) when `stats` is missing.
    """
    path = os.fspath(path)
    data = loadmat(path)
    if "net" not in data or not isinstance(data["net"], dict) or "layers" not in data["net"]:
        raise MatFileError(path, f"has no SimpleNN 'net' variable: not a net-epoch-N.mat of our_cnn_train "
                                 f"(variables: {list(data)})")
    if "stats" not in data:
        raise PartialCheckpointError(path, "was only partially saved (it has no 'stats': saveStats never ran)")
    if "state" not in data or not isinstance(data["state"], dict):
        raise MatFileError(path, "has no 'state' struct (state.solverState): not a checkpoint of our_cnn_train")
    net, state = data["net"], data["state"]
    try:
        specs = layers_from_matlab(net["layers"])
        momentum, forms = _momentum_from_matlab(state.get("solverState"), specs)
        stats, stats_shapes = _stats_from_matlab(data["stats"])
        state_stats = _state_stats_from_matlab(state.get("stats"))
    except (ValueError, TypeError, KeyError) as exc:
        raise MatFileError(path, f"is not a valid ICNN checkpoint: {exc}") from exc
    extra = {
        "net_order": tuple(net.keys()),
        "net_other": MatStruct((k, v) for k, v in net.items() if k not in ("layers", "meta")),
        "state_order": tuple(state.keys()),
        "state_other": MatStruct((k, v) for k, v in state.items() if k not in ("solverState", "stats")),
        "momentum_forms": forms,
        "stats_shapes": stats_shapes,
        "has_meta": "meta" in net,
        "has_state_stats": "stats" in state,
    }
    epoch = epoch_from_filename(path)
    if epoch is None:
        epoch = len(stats.get("train", []))
    return IcnnCheckpoint(specs=specs, meta=net.get("meta"), momentum=momentum, stats=stats, epoch=epoch,
                          state_stats=state_stats, extra=extra)


def _is_unset_momentum(entry: np.ndarray, weight_form: tuple[str, tuple[int, ...]] | None) -> bool:
    """processEpoch's initial `{0}`: a double scalar 0 (a real momentum has the weight's class and shape)."""
    if entry.size != 1 or entry.dtype.kind not in "fiu" or float(entry.reshape(-1)[0]) != 0.0:
        return False
    if weight_form is None:
        return True
    w_dtype, w_shape = np.dtype(weight_form[0]), weight_form[1]
    return int(np.prod(w_shape)) != 1 or entry.dtype != w_dtype


def _momentum_from_matlab(solver: Any, specs: list[LayerSpec]) -> tuple[list[list[Any]] | None, list]:
    if solver is None or (isinstance(solver, np.ndarray) and solver.dtype != object and solver.size == 0):
        return None, []
    layers = cell_items(solver)
    if len(layers) != len(specs):
        raise ValueError(f"state.solverState has {len(layers)} entries for {len(specs)} layers")
    momentum, forms = [], []
    for spec, entries_cell in zip(specs, layers):
        entries = [] if np.size(entries_cell) == 0 else cell_items(entries_cell)
        if len(entries) != len(spec.weights):
            raise ValueError(f"state.solverState for layer {spec.name!r} has {len(entries)} entries "
                             f"for {len(spec.weights)} weights")
        w_forms = (spec.fields.get(MATLAB_FORM) or {}).get("weights") or [None] * len(entries)
        layer_m, layer_f = [], {"cell": tuple(np.shape(entries_cell)), "entries": []}
        for j, e in enumerate(entries):
            if isinstance(e, np.ndarray) and e.dtype.kind in "fiu":
                layer_f["entries"].append((e.dtype.str, tuple(e.shape)))
                layer_m.append(None if _is_unset_momentum(e, w_forms[j]) else weight_to_torch(spec.type, j, e))
            else:   # another solver's struct: kept as read
                layer_f["entries"].append(None)
                layer_m.append(e)
        momentum.append(layer_m)
        forms.append(layer_f)
    return momentum, forms


def _scalar_or_value(v: Any) -> Any:
    """A 1 x 1 double -> float (exact); anything else stays the MATLAB value."""
    if isinstance(v, np.ndarray) and v.dtype == np.float64 and v.shape == (1, 1):
        return float(v[0, 0])
    return v


def _stats_from_matlab(stats: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[int, ...]]]:
    if not isinstance(stats, dict):
        raise ValueError("'stats' is not a struct with train and val")
    out: dict[str, list[dict[str, Any]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for mode, entries in stats.items():
        if isinstance(entries, StructArray):
            shapes[mode] = tuple(entries.shape)
            out[mode] = [{k: _scalar_or_value(v) for k, v in e.items()} for e in entries.elements()]
        elif isinstance(entries, dict):   # one epoch: a 1 x 1 struct
            shapes[mode] = (1, 1)
            out[mode] = [{k: _scalar_or_value(v) for k, v in entries.items()}]
        else:
            raise ValueError(f"stats.{mode} is not a struct array")
    return out, shapes


def _state_stats_from_matlab(s: Any) -> dict[str, dict[str, Any]] | None:
    if s is None or not isinstance(s, dict):
        return None if s is None else {"__raw__": s}
    return {mode: ({k: _scalar_or_value(v) for k, v in e.items()} if isinstance(e, dict) else {"__raw__": e})
            for mode, e in s.items()}


# ----------------------------------------------------------------- writing
def write_icnn_checkpoint(path: os.PathLike | str, ckpt: IcnnCheckpoint, version: str = "7.3") -> Path:
    """Write `ckpt` as a `net-epoch-N.mat` our_cnn_train's loadState can load (saveState + saveStats).

    `version` "7.3" (HDF5, what the ICNN README's MATLAB preference gives) or
    "5". Atomic: written to a temporary file in the same folder, then renamed
    over `path`. A checkpoint read with `read_icnn_checkpoint` is written back
    as equal MATLAB values.
    """

    path = Path(path)
    variables = MatStruct(net=_net_to_matlab(ckpt), state=_state_to_matlab(ckpt), stats=_stats_to_matlab(ckpt))
    savemat(path, variables, version=version)      # atomic
    return path


def _ordered(values: dict[str, Any], order: tuple[str, ...]) -> MatStruct:
    out = MatStruct()
    for k in order:
        if k in values:
            out[k] = values.pop(k)
    out.update(values)
    return out


def _net_to_matlab(ckpt: IcnnCheckpoint) -> MatStruct:
    extra = ckpt.extra or {}
    values: dict[str, Any] = {"layers": layers_to_matlab(ckpt.specs)}
    if ckpt.meta is not None or extra.get("has_meta", True):
        values["meta"] = meta_to_matlab(ckpt.meta)   # MatStruct as is, ModelMeta converted, None: empty
    values.update(extra.get("net_other") or {})
    return _ordered(values, tuple(extra.get("net_order", ("layers", "meta"))))


def _momentum_to_matlab(ckpt: IcnnCheckpoint) -> Any:
    if ckpt.momentum is None:
        return np.zeros((0, 0))
    if len(ckpt.momentum) != len(ckpt.specs):
        raise ValueError(f"momentum has {len(ckpt.momentum)} layers for {len(ckpt.specs)} layers in specs")
    forms = (ckpt.extra or {}).get("momentum_forms") or []
    layers = []
    for l, (spec, entries) in enumerate(zip(ckpt.specs, ckpt.momentum)):
        if len(entries) != len(spec.weights):
            raise ValueError(f"momentum of layer {l + 1} {spec.name!r} has {len(entries)} entries "
                             f"for {len(spec.weights)} weights")
        lf = forms[l] if l < len(forms) else {}
        e_forms = lf.get("entries") or []
        w_forms = (spec.fields.get(MATLAB_FORM) or {}).get("weights") or []
        out = []
        for j, m in enumerate(entries):
            like = e_forms[j] if j < len(e_forms) and e_forms[j] is not None else \
                (w_forms[j] if j < len(w_forms) else None)
            if m is None:
                out.append(np.zeros((1, 1)))     # processEpoch: state.solverState{i}(:) = {0}
            elif isinstance(m, torch.Tensor) or (isinstance(m, np.ndarray) and m.dtype.kind in "fiu"):
                out.append(weight_to_matlab(spec.type, j, m, like))
            else:
                out.append(m)
        shape = tuple(lf.get("cell") or (1, len(out)))
        layers.append(cell(out, shape if int(np.prod(shape)) == len(out) else (1, len(out))))
    return cell(layers)


def _stat_value(v: Any) -> Any:
    if isinstance(v, (np.ndarray, MatStruct, str)):
        return v
    if isinstance(v, torch.Tensor):
        v = v.item()
    return np.array([[float(v)]])


def _stats_to_matlab(ckpt: IcnnCheckpoint) -> MatStruct:
    shapes = (ckpt.extra or {}).get("stats_shapes") or {}
    out = MatStruct()
    stats = ckpt.stats or {"train": [], "val": []}
    for mode, entries in stats.items():
        structs = [MatStruct((str(k), _stat_value(v)) for k, v in e.items()) for e in entries]
        shape = tuple(shapes.get(mode, (1, len(structs))))
        if int(np.prod(shape)) != len(structs):
            shape = (1, len(structs))
        out[mode] = structs[0] if shape == (1, 1) else StructArray.from_structs(structs, shape)
    return out


def _state_to_matlab(ckpt: IcnnCheckpoint) -> MatStruct:
    extra = ckpt.extra or {}
    values: dict[str, Any] = {"solverState": _momentum_to_matlab(ckpt)}
    state_stats = ckpt.state_stats
    if state_stats is None and extra.get("has_state_stats", True) and ckpt.stats:
        # processEpoch keeps the epoch's stats in state.stats.(mode)
        state_stats = {mode: entries[-1] for mode, entries in ckpt.stats.items() if entries}
    if state_stats is not None:
        if "__raw__" in state_stats:
            values["stats"] = state_stats["__raw__"]
        else:
            values["stats"] = MatStruct(
                (mode, e["__raw__"] if "__raw__" in e else MatStruct((str(k), _stat_value(v)) for k, v in e.items()))
                for mode, e in state_stats.items())
    values.update(extra.get("state_other") or {})
    return _ordered(values, tuple(extra.get("state_order", ("solverState", "stats"))))
