"""reproduce.paper's results file (JSON and a CSV beside it, written atomically under a lock) and the
record of one finished run. Not a port of an original file.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from legacy_compat.atomic import atomic_write_text
from reproduce.experiments.grid import GridExperiment, RunnerError
from reproduce.experiments.machine_info import machine_info
from reproduce.experiments.pipeline import Experiment
from reproduce.models.registry import MODELS, train_opts, train_opts_multiclass

__all__ = ["RESULTS_FORMAT", "RESULTS_VERSION", "CSV_COLUMNS", "ResultsStore", "run_record", "error_name"]


RESULTS_FORMAT = "icnn-paper-results"
RESULTS_VERSION = 1
CSV_COLUMNS = ("id", "dataset", "scope", "categories", "model", "cnn", "config", "binary_error",
               "location_instability", "location_instability_at_start", "part_interpretability",
               "part_interpretability_at_start", "accuracy_percent", "epochs",
               "seconds_learn", "seconds_show_results", "seconds_total", "device", "seed", "dropout", "loss",
               "pretrained", "finished", "command")


class ResultsStore:
    """The results file: JSON ``{"format", "version", "runs": [record, ...]}`` and a CSV beside it
    (`CSV_COLUMNS`, one line per run). Every change re-reads the file under an exclusive lock
    (``<file>.lock``), so that two runners sharing a file do not lose each other's runs, and
    rewrites both files atomically (temporary file in the same folder, then os.replace)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        if self.path.suffix.lower() != ".json":
            raise RunnerError(f"--results {self.path}: give a .json file (the CSV is written beside it)")
        self.csv_path = self.path.with_suffix(".csv")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunnerError(f"results file {self.path} cannot be read ({exc}); move it away or repair it") from exc
        if not isinstance(raw, dict) or raw.get("format") != RESULTS_FORMAT or not isinstance(raw.get("runs"), list):
            raise RunnerError(f"results file {self.path} is not a reproduce.paper results file "
                              f"(no 'format': {RESULTS_FORMAT!r} with a 'runs' list)")
        return list(raw["runs"])

    def finished(self) -> dict[str, dict]:
        return {r["id"]: r for r in self.load()}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except (ImportError, OSError):       # no POSIX locks (Windows): single writer assumed
                pass
            yield

    def add(self, record: dict) -> None:
        """Add a finished run (replacing an earlier one with the same id) and rewrite both files."""
        with self._locked():
            runs = [r for r in self.load() if r.get("id") != record["id"]] + [record]
            payload = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "runs": runs}
            atomic_write_text(self.path, json.dumps(payload, indent=1, default=_json_default) + "\n")
            atomic_write_text(self.csv_path, _csv_text(runs))


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _csv_text(runs: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in runs:
        s, sec = r.get("settings", {}), r.get("seconds", {})
        writer.writerow({**r, "categories": " ".join(r.get("categories", [])), "epochs": r.get("epochs"),
                         "seconds_learn": sec.get("learn"), "seconds_show_results": sec.get("show_results"),
                         "seconds_total": sec.get("total"), "device": s.get("device"), "seed": s.get("seed"),
                         "dropout": s.get("dropout"), "loss": s.get("loss"), "pretrained": s.get("pretrained")})
    return buf.getvalue()


def _train_settings(exp: Experiment) -> dict:
    """network_init's trainOpts for this run (learn_icnn_multiclass.m's adjustments included), as run."""
    n = len(exp.categories)
    opts = train_opts(n, exp.model)
    if exp.multiclass:
        opts, _ = train_opts_multiclass(opts, n, exp.loss, exp.model)
    epochs = int(exp.epochs) if exp.epochs is not None else opts.num_epochs
    lr = [v * exp.learning_rate_scale for v in opts.learning_rate[:epochs]]
    return {"num_epochs": epochs, "batch_size": int(exp.batch_size or opts.batch_size),
            "learning_rate_first": lr[0], "learning_rate_last": lr[min(epochs, len(lr)) - 1],
            "weight_decay": opts.weight_decay, "momentum": opts.momentum,
            "input_size": MODELS[exp.model].image_size}


def run_record(exp: GridExperiment, result: Any, command: str, seconds_total: float) -> dict:
    """The results-file entry of a finished run."""
    err = float(result.binary_error)
    stats = result.stats or {}
    last_train = dict(stats.get("train", [{}])[-1]) if stats.get("train") else {}
    last_val = dict(stats.get("val", [{}])[-1]) if stats.get("val") else {}
    layer_id = getattr(result.evaluation, "layer_id", None)
    warnings = []
    if any(not math.isfinite(float(s.get("lossForClassification", 0.0))) for s in (last_train, last_val)):
        # error_binary (our_cnn_train.m) counts a NaN prediction as right: the error alone would hide it
        warnings.append("diverged: the last epoch's loss is not finite, its binary error is meaningless")
    return {
        "id": exp.run_id, "dataset": exp.dataset, "scope": exp.scope, "categories": list(exp.categories),
        "name": exp.name, "model": exp.model, "cnn": exp.cnn, "config": exp.config,
        "binary_error": err, "location_instability": float(result.stability),
        "location_instability_note": getattr(result, "note", None),
        "accuracy_percent": 100.0 * (1.0 - err) if math.isfinite(err) else float("nan"),
        "epochs": len(stats.get("val", [])), "layer_id": layer_id,
        "last_train": last_train, "last_val": last_val,
        "curves": {f"{phase}_{k}": [float(e.get(k, float("nan"))) for e in stats.get(phase, [])]
                   for phase in ("train", "val") for k in ("lossForClassification", error_name(exp))},
        "seconds": {"learn": result.seconds.get("learn"), "show_results": result.seconds.get("show_results"),
                    "total": seconds_total},
        "settings": {"dropout": exp.dropout, "loss": exp.loss, "seed": exp.seed, "device": exp.device,
                     "pretrained": exp.pretrained, "epochs_option": exp.epochs, "fix_slicemag_quirk":
                     exp.fix_slicemag_quirk, "data_root": str(exp.data_root) if exp.data_root else None,
                     **_train_settings(exp)},
        "warnings": warnings, "exp_dir": str(exp.exp_dir), "imdb_dir": str(exp.imdb_dir),
        "machine": machine_info(exp.device), "command": command,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def error_name(exp: Experiment) -> str:
    return "top1err" if exp.loss == "ourloss_softmaxlog" else "binerr"
