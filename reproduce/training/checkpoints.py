"""Training checkpoints: the package's own safe format, MATLAB `net-epoch-N.mat`, resuming.

Ports the checkpoint half of `tool/main/our_cnn_train.m` (saveState,
saveStats, loadState, findLastCheckpoint): after every epoch the training
state is written to ``<exp_dir>/net-epoch-N.pt``; a later run in the same
folder resumes from the highest epoch found.

The package's own format (``net-epoch-N.pt``)
----------------------------------------------
One ``torch.save`` file holding ONLY plain containers (dict, list, tuple, str,
int, float, bool, None) and tensors, so that it loads with
``torch.load(..., weights_only=True)``: nothing in it can run code.

| key            | holds                                                                 |
|----------------|-----------------------------------------------------------------------|
| `format`       | ``"icnn-train-checkpoint"``; `version` 1                              |
| `epoch`        | the last completed epoch (1-based, as MATLAB counts)                  |
| `architecture` | per layer ``[type, name, [weight shapes]]``: what must match to resume |
| `specs`        | the layer specs (LayerSpec as plain data, see `to_plain`); a weight    |
|                | that is a parameter of the net is stored once, as a reference into    |
|                | `state_dict`                                                          |
| `state_dict`   | ``net.state_dict()``: parameters and buffers (beta, sliceMag, ...)    |
| `momentum`     | per layer, per weight: the SGD momentum (PyTorch layout) or None where |
|                | MATLAB's solverState still holds the scalar 0                         |
| `stats`        | ``{"train": [per-epoch dict], "val": [...]}``                          |
| `options`      | the training options (learning rates, batch size, seed, ...)          |
| `meta`         | the net's meta (classes, normalization, ...) as plain data            |

MATLAB checkpoints (``net-epoch-N.mat``)
----------------------------------------
Written on request (``save_mat=True`` in `reproduce.train.train`) through
`legacy_compat.checkpoint.write_icnn_checkpoint`, read through
`legacy_compat.checkpoint.read_icnn_checkpoint`, so a run can resume from a
checkpoint the original MATLAB code wrote. When both files exist for an
epoch, the ``.pt`` one is used.

Safety rules
------------
- every file is written to a temporary file in the same folder and moved into
  place with ``os.replace``: a file named ``net-epoch-N.*`` is always complete;
- a checkpoint that fails to load raises `CheckpointError` naming the file; when resuming,
  the message says to move it out of the folder (never to delete it: it may be a user's only
  copy), and nothing falls back silently to an older one;
- a folder whose checkpoints belong to a different network raises
  `CheckpointMismatchError`; an existing ``net-epoch-N`` file is never
  overwritten.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from legacy_compat import checkpoint as legacy
from legacy_compat.atomic import TMP_PREFIX, atomic_write, remove_orphans
from legacy_compat.cli import UserError
from legacy_compat.mattypes import MatStruct, StructArray
from legacy_compat.simplenn import LayerSpec

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "CheckpointMismatchError",
    "ResumeMismatchError", "resume_differences", "check_resume", "recorded_options", "TrainingState",
    "checkpoint_path", "find_checkpoints", "last_checkpoint_epoch",
    "architecture_of", "check_architecture", "save_checkpoint", "load_checkpoint",
    "load_any_checkpoint", "save_mat_checkpoint", "load_mat_checkpoint", "mat_checkpoint_problem",
    "to_plain", "from_plain", "remove_stale_temporaries",
]

CHECKPOINT_FORMAT = "icnn-train-checkpoint"
CHECKPOINT_VERSION = 1
_NAME_RE = re.compile(r"^net-epoch-(\d+)\.(pt|mat)$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file could not be read or written; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoints in a folder belong to a different network than the one being trained."""


class ResumeMismatchError(CheckpointMismatchError):
    """The checkpoints in a folder were written by a run with other options (dataset, category,
    dropout, seed, ...) than the one asked for; the message names each difference."""


# ------------------------------------------------------------------ state
@dataclass
class TrainingState:
    """What our_cnn_train's saveState/saveStats keep: net, solver state, statistics.

    `specs` rebuild the network (`SimpleNN.from_specs`); `state_dict`, when
    present, is loaded on top (exactly the saved parameters and buffers).
    `momentum[layer][j]` follows MATLAB's `state.solverState{layer}{j}`
    (0-based here) in PyTorch layout, None where MATLAB holds the scalar 0.
    """

    epoch: int
    specs: list[LayerSpec]
    momentum: list[list[torch.Tensor | None]]
    stats: dict[str, list[dict[str, float]]]
    state_dict: dict[str, torch.Tensor] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    meta: Any = None
    source: Path | None = None


# ------------------------------------------------------------------ names
def checkpoint_path(exp_dir: os.PathLike | str, epoch: int, ext: str = "pt") -> Path:
    """``<exp_dir>/net-epoch-<epoch>.<ext>`` (our_cnn_train's modelPath)."""
    return Path(exp_dir) / f"net-epoch-{int(epoch)}.{ext}"


def find_checkpoints(exp_dir: os.PathLike | str) -> dict[int, dict[str, Path]]:
    """Every ``net-epoch-N.pt`` / ``.mat`` in the folder: ``{N: {"pt": path, "mat": path}}``."""
    exp_dir = Path(exp_dir)
    found: dict[int, dict[str, Path]] = {}
    if not exp_dir.is_dir():
        return found
    for entry in exp_dir.iterdir():
        m = _NAME_RE.match(entry.name)
        if m and entry.is_file():
            found.setdefault(int(m.group(1)), {})[m.group(2)] = entry
    return found


def last_checkpoint_epoch(exp_dir: os.PathLike | str) -> int:
    """The highest N with a ``net-epoch-N`` file, 0 when none (findLastCheckpoint)."""
    return max(find_checkpoints(exp_dir), default=0)


def remove_stale_temporaries(exp_dir: os.PathLike | str) -> list[Path]:
    """Delete the temporary files (``.tmp-*``: checkpoints, plots) that writers now gone left in
    the folder; a live writer's temporary is never touched (legacy_compat.atomic.remove_orphans)."""
    return remove_orphans(exp_dir, (TMP_PREFIX,))


# ------------------------------------------------------------------ atomic writes
def write_new_file(path: os.PathLike | str, write: Callable[[Path], None]) -> Path:
    """A new checkpoint file through legacy_compat.atomic.atomic_write (a temporary beside `path`,
    then os.replace); an existing `path` is never overwritten: `CheckpointError`."""
    try:
        return atomic_write(path, write, overwrite=False)
    except FileExistsError as exc:
        raise CheckpointError(str(exc)) from None


# ------------------------------------------------------------------ plain data
def to_plain(value: Any, where: str = "value") -> Any:
    """Turn specs / MATLAB values into what ``torch.load(weights_only=True)`` accepts.

    Plain scalars, str and None stay (paths become str); tensors are stored detached on the CPU;
    numpy arrays, tuples, dicts, MatStruct, cells, struct arrays and
    LayerSpecs become dicts tagged with ``"__type__"`` that `from_plain`
    turns back into the same Python values; any other dataclass is stored
    (and read back) as a dict of its fields. Anything else is a TypeError.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, LayerSpec):
        return {"__type__": "LayerSpec", "type": value.type, "name": value.name,
                "weights": [to_plain(w, f"{where}.weights[{j}]") for j, w in enumerate(value.weights)],
                "fields": to_plain(dict(value.fields), f"{where}.fields")}
    if isinstance(value, StructArray):
        flat = list(np.asarray(value).reshape(-1))
        return {"__type__": "StructArray", "shape": list(value.shape), "fieldnames": list(value.fieldnames),
                "items": [to_plain(v, f"{where}[{i}]") for i, v in enumerate(flat)]}
    if isinstance(value, np.ndarray):
        return _ndarray_to_plain(value, where)
    if isinstance(value, MatStruct):
        return {"__type__": "MatStruct", "fields": {str(k): to_plain(v, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict keys must be strings to be stored in a checkpoint")
        return {"__type__": "dict", "fields": {k: to_plain(v, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, tuple):
        return {"__type__": "tuple", "items": [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": "dict", "fields": {f.name: to_plain(getattr(value, f.name), f"{where}.{f.name}")
                                               for f in dataclasses.fields(value)}}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint")


def _ndarray_to_plain(value: np.ndarray, where: str) -> dict:
    if value.dtype == object:
        flat = list(value.reshape(-1))
        return {"__type__": "cell", "shape": list(value.shape),
                "items": [to_plain(v, f"{where}[{i}]") for i, v in enumerate(flat)]}
    if value.dtype.kind == "U":
        return {"__type__": "chars", "shape": list(value.shape), "items": [str(v) for v in value.reshape(-1)]}
    if value.dtype.kind not in "biufc":
        raise TypeError(f"{where}: numpy dtype {value.dtype} cannot be stored in a checkpoint")
    arr = np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False))
    return {"__type__": "ndarray", "dtype": arr.dtype.str, "data": torch.from_numpy(arr.copy())}


def from_plain(value: Any) -> Any:
    """Inverse of `to_plain`."""
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__type__")
    if kind == "LayerSpec":
        return LayerSpec(type=value["type"], name=value["name"],
                         weights=[from_plain(w) for w in value["weights"]],
                         fields=from_plain(value["fields"]))
    if kind == "dict":
        return {k: from_plain(v) for k, v in value["fields"].items()}
    if kind == "MatStruct":
        return MatStruct((k, from_plain(v)) for k, v in value["fields"].items())
    if kind == "tuple":
        return tuple(from_plain(v) for v in value["items"])
    if kind == "ndarray":
        return value["data"].numpy().astype(np.dtype(value["dtype"]), copy=False)
    if kind == "chars":
        return np.array(value["items"], dtype="<U1").reshape(value["shape"])
    if kind == "cell":
        out = np.empty(len(value["items"]), dtype=object)
        for i, v in enumerate(value["items"]):
            out[i] = from_plain(v)
        return out.reshape(value["shape"])
    if kind == "StructArray":
        out = StructArray(value["shape"], value["fieldnames"])
        flat = np.asarray(out).reshape(-1)
        for i, v in enumerate(value["items"]):
            flat[i] = from_plain(v)
        return out
    if kind == "param_ref":
        return value  # resolved by load_checkpoint
    raise CheckpointError(f"unknown plain-data tag {kind!r}")


# ------------------------------------------------------------------ architecture
def architecture_of(specs: Iterable[LayerSpec]) -> list[list[Any]]:
    """Per layer ``[type, name, [weight shapes]]``: what identifies a network for resuming."""
    out = []
    for s in specs:
        shapes = [list(np.shape(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w))
                  for w in s.weights]
        out.append([str(s.type), str(s.name), shapes])
    return out


def check_architecture(expected: list[list[Any]], found: list[list[Any]], source: os.PathLike | str) -> None:
    """Raise `CheckpointMismatchError` (naming `source` and the first difference) unless equal."""
    def norm(arch):
        return [[str(t), str(n), [list(map(int, sh)) for sh in shapes]] for t, n, shapes in arch]
    expected, found = norm(expected), norm(found)
    if expected == found:
        return
    if len(expected) != len(found):
        why = f"{len(found)} layers there, {len(expected)} in the network being trained"
    else:
        i = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
        why = (f"layer {i + 1} is {found[i][0]} {found[i][1]!r} with weights {found[i][2]} there, "
               f"{expected[i][0]} {expected[i][1]!r} with weights {expected[i][2]} in the network being trained")
    raise CheckpointMismatchError(
        f"{source}: this checkpoint belongs to a different network ({why}); "
        f"train into another folder or delete the checkpoints of the other run")


# ------------------------------------------------------------------ what resuming compares
#: the training options (besides the run's own, ``options["run"]``) that must be the same to resume;
#: num_epochs is not among them: a longer run resumes, as MatConvNet's cnn_train does
RESUME_TRAINING_KEYS = ("batch_size", "weight_decay", "momentum", "seed", "slice_mag_fill", "replay")


def dropout_rates(specs: Iterable[LayerSpec]) -> list[float]:
    """The rate of every dropout layer, in order (what a MATLAB checkpoint says of its dropout)."""
    return [round(float(np.asarray(s.fields.get("rate", 0.5)).reshape(-1)[0]), 6) for s in specs
            if str(s.type) == "dropout"]


def resume_differences(recorded: dict, requested: dict, recorded_specs: Iterable[LayerSpec] = (),
                       requested_specs: Iterable[LayerSpec] = ()) -> list[str]:
    """What differs between the run that wrote a checkpoint and the run asked for, one phrase each.

    Compares the run's options (``options["run"]``: dataset, categories, model, dropout, loss,
    image size, ...), the training options of `RESUME_TRAINING_KEYS`, the learning rates of the
    epochs both schedules hold (a longer schedule of the same rates resumes), and the dropout
    rates in the layers (the one thing a MATLAB checkpoint says of its options). An option one
    side does not record is not compared (see `unrecorded_options`)."""
    out = []
    rec_run, req_run = dict(recorded.get("run") or {}), dict(requested.get("run") or {})
    for key in [k for k in req_run if k in rec_run]:
        if _canonical(rec_run[key]) != _canonical(req_run[key]):
            out.append(f"{key} {_show(rec_run[key])} there, {_show(req_run[key])} asked for")
    for key in RESUME_TRAINING_KEYS:
        if key in recorded and key in requested and _canonical(recorded[key]) != _canonical(requested[key]):
            out.append(f"{key} {_show(recorded[key])} there, {_show(requested[key])} asked for")
    old, new = list(recorded.get("learning_rate") or []), list(requested.get("learning_rate") or [])
    n = min(len(old), len(new))
    if n and not np.allclose(np.asarray(old[:n], dtype=float), np.asarray(new[:n], dtype=float), rtol=1e-9, atol=0):
        out.append(f"learning rates {_show(old[:n])} there, {_show(new[:n])} asked for")
    rates_old, rates_new = dropout_rates(recorded_specs), dropout_rates(requested_specs)
    if rates_old and rates_new and rates_old != rates_new and not any(o.startswith("dropout ") for o in out):
        one = lambda rates: rates[0] if len(set(rates)) == 1 else rates  # noqa: E731 - one rate, or each layer's
        out.append(f"dropout rate {_show(one(rates_old))} there, {_show(one(rates_new))} asked for")
    return out


def check_resume(exp_dir: os.PathLike | str, source: os.PathLike | str, recorded: dict, requested: dict, *,
                 resume_anyway: bool = False, recorded_specs: Iterable[LayerSpec] = (),
                 requested_specs: Iterable[LayerSpec] = ()) -> list[str]:
    """`ResumeMismatchError` naming each `resume_differences` and the two ways out, unless
    `resume_anyway`; returns the differences (empty when the same run resumes)."""
    diffs = resume_differences(recorded, requested, recorded_specs, requested_specs)
    if diffs and not resume_anyway:
        raise ResumeMismatchError(
            f"{exp_dir} holds checkpoints (up to {Path(source).name}) of a run with other options: "
            f"{'; '.join(diffs)}. Nothing was trained. Choose another output folder (--out) for this run, "
            f"or continue that run with these options (--resume-anyway)")
    return diffs


def recorded_options(path: os.PathLike | str) -> dict:
    """The `options` a ``net-epoch-N.pt`` records, read without loading its weights (memory-mapped);
    {} for a MATLAB checkpoint or a file that cannot be read (loading it proper says why)."""
    path = Path(path)
    if path.suffix != ".pt":
        return {}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return dict(from_plain(payload.get("options") or {}))
    except Exception:  # noqa: BLE001 - the full load reports an unreadable file, naming it
        return {}


def unrecorded_options(recorded: dict) -> bool:
    """True when a checkpoint does not record its run's options (a MATLAB one, or an older one of ours)."""
    return not recorded.get("run")


def _canonical(value: Any) -> Any:
    """Options as comparable plain data (tuples as lists, numbers as floats)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.number)):
        return round(float(value), 9)
    return str(value)


def _show(value: Any) -> str:
    value = _canonical(value)
    if isinstance(value, float) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, list) and len(value) > 6:
        return "[" + ", ".join(_show(v) for v in value[:6]) + ", ...]"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


# ------------------------------------------------------------------ the package's format
def save_checkpoint(path: os.PathLike | str, state: TrainingState,
                    param_names: dict[tuple[int, int], str] | None = None) -> Path:
    """Write `state` atomically to `path` in the package's format (never over an existing file).

    `param_names` maps (layer 0-based, weight 0-based) to the `state_dict`
    key of that weight, so that each weight is stored once.
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu() for k, v in (state.state_dict or {}).items()}
    specs_plain = []
    for li, spec in enumerate(state.specs):
        plain = to_plain(spec, f"specs[{li}]")
        for j in range(len(spec.weights)):
            key = (param_names or {}).get((li, j))
            if key is not None and key in state_dict and tuple(state_dict[key].shape) == tuple(spec.weights[j].shape):
                plain["weights"][j] = {"__type__": "param_ref", "key": key}
        specs_plain.append(plain)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": int(state.epoch),
        "architecture": architecture_of(state.specs),
        "specs": specs_plain,
        "state_dict": state_dict,
        "momentum": [[None if m is None else m.detach().cpu() for m in layer] for layer in state.momentum],
        "stats": to_plain(_plain_stats(state.stats), "stats"),
        "options": to_plain(dict(state.options), "options"),
        "meta": to_plain(state.meta, "meta"),
        "torch_version": str(torch.__version__),
    }
    return write_new_file(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: os.PathLike | str, map_location: str | torch.device = "cpu") -> TrainingState:
    """Read a ``net-epoch-N.pt`` written by `save_checkpoint` (safe: weights_only)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise CheckpointError(_unreadable(path, _short_reason(exc))) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(_unreadable(path, "it is not an ICNN training checkpoint of this package"))
    if int(payload.get("version", -1)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload['version']} is newer than this "
                              f"package reads ({CHECKPOINT_VERSION}); update the package")
    try:
        state_dict = dict(payload["state_dict"])
        specs = []
        for plain in payload["specs"]:
            spec = from_plain(plain)
            spec.weights = [state_dict[w["key"]].clone() if isinstance(w, dict) else w for w in spec.weights]
            specs.append(spec)
        return TrainingState(
            epoch=int(payload["epoch"]), specs=specs,
            momentum=[list(layer) for layer in payload["momentum"]],
            stats=from_plain(payload["stats"]), state_dict=state_dict,
            options=from_plain(payload["options"]), meta=from_plain(payload["meta"]), source=path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(_unreadable(path, f"incomplete or damaged content ({type(exc).__name__}: {exc})")) from exc


def _short_reason(exc: BaseException) -> str:
    """The exception's type and first line (torch's weights_only errors run to many lines)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    first = first if len(first) <= 160 else first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _unreadable(path: Path, why: str) -> str:
    """What is wrong with a file, and nothing about what to do: whether the file is a run's own last
    checkpoint (`load_any_checkpoint` says to move it aside) or a user's input (--net) is the caller's."""
    return f"{path}: cannot load this checkpoint ({why})"


def _plain_stats(stats: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    return {mode: [{k: float(v) for k, v in entry.items()} for entry in stats.get(mode, [])]
            for mode in ("train", "val")}


# ------------------------------------------------------------------ MATLAB checkpoints
def mat_checkpoint_problem(layer_types: Iterable[str]) -> str | None:
    """Why a net with these layer types has no ``net-epoch-N.mat`` form, or None. MatConvNet's SimpleNN
    (``net.layers``, what the original code reads) is a chain of layers; a torchvision trunk's residual
    and dense blocks (reproduce.tv_blocks, layer type 'torchvision') are not, and writing their
    parameters as SimpleNN layers would give a file neither MATLAB nor `load_mat_checkpoint` can run."""
    if "torchvision" in set(layer_types):
        return ("its torchvision trunk (residual / dense blocks) has no form in MatConvNet's SimpleNN net.layers, "
                "the layout of net-epoch-N.mat; the net-epoch-N.pt checkpoints hold the whole net")
    return None


def save_mat_checkpoint(path: os.PathLike | str, state: TrainingState, version: str = "7.3") -> Path:
    """Write `state` as the original's ``net-epoch-N.mat`` (net, state.solverState, stats), atomically.
    A net `mat_checkpoint_problem` refuses raises CheckpointError before anything is written."""
    why = mat_checkpoint_problem(s.type for s in state.specs)
    if why is not None:
        raise CheckpointError(f"{path}: cannot be written: {why}")
    ckpt = legacy.IcnnCheckpoint(specs=state.specs, meta=state.meta, momentum=state.momentum,
                                 stats=_plain_stats(state.stats), epoch=int(state.epoch))
    return write_new_file(path, lambda tmp: legacy.write_icnn_checkpoint(tmp, ckpt, version=version))


def load_mat_checkpoint(path: os.PathLike | str, epoch: int | None = None) -> TrainingState:
    """Read a ``net-epoch-N.mat`` (the original code's, or ours) into a `TrainingState`."""
    path = Path(path)
    try:
        ckpt = legacy.read_icnn_checkpoint(path)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(_unreadable(path, _short_reason(exc))) from exc
    stats = ckpt.stats
    if stats is None:  # loadState: 'was only partially saved'
        raise CheckpointError(f"{path}: epoch was only partially saved (no stats)")
    if epoch is None:
        epoch = ckpt.epoch
        if epoch is None:
            m = _NAME_RE.match(path.name)
            epoch = int(m.group(1)) if m else 0
    try:
        momentum = [[_momentum_tensor(m) for m in layer] for layer in (ckpt.momentum or [])]
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if not momentum:
        momentum = [[None] * len(s.weights) for s in ckpt.specs]
    return TrainingState(epoch=int(epoch), specs=list(ckpt.specs), momentum=momentum,
                         stats=normalize_stats(stats), state_dict=None, options={},
                         meta=ckpt.meta, source=path)


def _momentum_tensor(m: Any) -> torch.Tensor | None:
    """A solverState entry: None for MATLAB's scalar 0 (never updated), else a float32 tensor."""
    if m is None:
        return None
    if not isinstance(m, (torch.Tensor, np.ndarray)) or (isinstance(m, np.ndarray) and m.dtype.kind not in "fiu"):
        raise CheckpointError(f"solverState holds a {type(m).__name__}, not SGD momentum: the checkpoint was "
                              f"written with another solver, which this port does not implement")
    t = m if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m, dtype=np.float32).copy())
    if t.numel() <= 1 and (t.numel() == 0 or float(t.reshape(-1)[0]) == 0.0) and t.dim() <= 2:
        return None
    return t.to(torch.float32)


def normalize_stats(stats: Any) -> dict[str, list[dict[str, float]]]:
    """Statistics in any form a checkpoint holds -> ``{"train": [dict per epoch], "val": [...]}``."""
    out: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
    if stats is None:
        return out
    for mode in ("train", "val"):
        entries = stats.get(mode) if isinstance(stats, dict) else getattr(stats, mode, None)
        if entries is None:
            continue
        if isinstance(entries, dict):
            entries = [entries]
        elif isinstance(entries, np.ndarray):
            entries = list(entries.reshape(-1, order="F"))
        out[mode] = [{str(k): float(np.asarray(v, dtype=np.float64).reshape(-1)[0]) if np.size(v) else float("nan")
                      for k, v in dict(e).items()} for e in entries]
    return out


# ------------------------------------------------------------------ choosing what to resume from
def load_any_checkpoint(exp_dir: os.PathLike | str, epoch: int) -> TrainingState:
    """The checkpoint of `epoch` in `exp_dir`: the ``.pt`` file when there is one, else the ``.mat``."""
    files = find_checkpoints(exp_dir).get(int(epoch), {})
    if not files:
        raise CheckpointError(f"{exp_dir}: no checkpoint for epoch {epoch}")
    try:
        if "pt" in files:
            return load_checkpoint(files["pt"])
        return load_mat_checkpoint(files["mat"], epoch=int(epoch))
    except CheckpointError as exc:
        # our_cnn_train's loadState says "Delete this file and try again"; the file may be the only copy
        # of a MATLAB checkpoint the user put there, so: move it aside
        raise CheckpointError(f"{exc}. It is the last checkpoint in {exp_dir}: move it out of that folder and "
                              f"run again to resume from the one before, or choose another --out") from exc
