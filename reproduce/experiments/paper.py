"""The paper's experiments as one command: a dataset x model x {ordinary, interpretable} grid.

    python -m reproduce.paper --dataset ilsvrcanimalpart --categories n02118333 --models vgg-vd-16 alexnet
    python -m reproduce.paper --dataset vocpart --categories all --models vgg-m       # one run per category
    python -m reproduce.paper --dataset vocpart --categories all --multiclass         # one 6-class net
    python -m reproduce.paper --table                                                # the results so far
    python -m reproduce.paper --help

Every run is demo.m's protocol through `reproduce.pipeline` (learn_icnn.m /
learn_icnn_multiclass.m, then showResults.m): set up the dataset, build the
imdb as getImdb / produceIMDB does, network_init, our_cnn_train, then the last
epoch's validation binary error and the location instability of the first
conv_mask layer (the conv layer at the same place for the ordinary CNN, the
same net with plain conv layers, trained with the same seed and schedule).

Each finished run is written at once to the results file (JSON, and a CSV
beside it; both written atomically, under a lock): its figures (binary error,
location instability, accuracy = 100 (1 - binary error) %, and as a control
the location instability of the same net before training), the per-epoch
curves, times, settings, machine and the command. A run already in the
results file is not run again (unless --force); a run that stopped half-way
resumes from its last epoch checkpoint. The last thing printed is the table of measured figures beside
the paper's published ones (`reproduce.paper_numbers`, CVPR 2018 Tables 3-5
and 7), averaged over the measured categories where the paper reports an
average. Folders under --out:

    results.json, results.csv                           the results file (default; --results)
    imdb/<dataset>-<H>px/mat/<name>/imdb/               imdb caches, shared by the models of one input size
    runs/<dataset>/<name>/<model>_<config>[-ordinary]/  checkpoints net-epoch-N.pt, net-train.png
    runs/<dataset>/<name>/<model>_<config>-draw_RF/     receptive-field drawings (--draw)
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from data_prep.facts import DATASETS, dataset_facts, datasets_with, default_category, has_parts
from data_prep.facts import all_categories as facts_categories
from data_prep.readers import default_readcode
from data_prep.setup import dataset_paths, default_data_root
from legacy_compat.atomic import atomic_write_text
from legacy_compat.cli import UserError
from legacy_compat.runlock import folder_lock
from reproduce.experiments.ablation import (
    format_table,
    has_part_regions,
    part_interpretability_of_run,
    run_ablation,
    summarise,
    write_results,
)
from reproduce.experiments.options import (
    add_common,
    add_data_root,
    add_image_folder,
    add_out,
    dropout_rate,
    image_folder_option,
    nonnegative_int,
    positive_int,
    run_cli,
    start_device,
)
from reproduce.experiments.pipeline import (
    Experiment,
    build_imdb,
    build_net,
    check_data_root,
    check_resume_early,
    dataset_option_error,
    image_size_of,
    prepare_dataset,
    run_experiment,
    save_mat_error,
    show_results,
)
from reproduce.experiments.pretrain import pretrain_and_finetune
from reproduce.experiments.published_numbers import format_rows, paper_rows, paper_source, rows_for
from reproduce.experiments.report import report_experiments
from reproduce.layers.losses import single_class_loss_error
from reproduce.models.builder import MODELS, train_opts, train_opts_multiclass
from reproduce.runtime import distributed as dd
from reproduce.runtime.device import tf32_allowed
from reproduce.runtime.distributed import shutdown

__all__ = ["GridExperiment", "ResultsStore", "RunnerError", "CNN_KINDS", "plan_grid", "config_slug",
           "run_record", "resolve_paths", "comparison_rows", "format_comparison", "format_runs",
           "all_categories", "build_parser", "main"]

RESULTS_FORMAT = "icnn-paper-results"
RESULTS_VERSION = 1
CNN_KINDS = ("ordinary", "interpretable")
#: Our small nets, compared with the published rows of the paper's net they are shaped after. The
#: table marks such rows (`*`): they are not the paper's network (smaller, random trunk).
PAPER_REFERENCE_MODEL = {"alexnet-narrow": "alexnet"}
CSV_COLUMNS = ("id", "dataset", "scope", "categories", "model", "cnn", "config", "binary_error",
               "location_instability", "location_instability_at_start", "part_interpretability",
               "part_interpretability_at_start", "accuracy_percent", "epochs",
               "seconds_learn", "seconds_show_results", "seconds_total", "device", "seed", "dropout", "loss",
               "pretrained", "finished", "command")


class RunnerError(UserError):
    """A problem with the runner's settings, data or results file, said before long work starts."""


# ================================================================== one run of the grid
@dataclass
class GridExperiment(Experiment):
    """A pipeline Experiment whose folders follow the runner's layout (module docstring):
    the imdb cache under `out` (shared by every model of the same input size and by both
    CNN kinds), the checkpoints in a folder per model and configuration under `runs_root`."""

    runs_root: Path = Path("output/paper/runs")
    config: str = ""

    @property
    def cnn(self) -> str:
        return "interpretable" if self.interpretable else "ordinary"

    @property
    def scope(self) -> str:
        return "multi-class" if self.multiclass else "single-class"

    @property
    def run_base(self) -> Path:
        return Path(self.runs_root) / self.dataset / self.name / f"{self.model}_{self.config}"

    @property
    def exp_dir(self) -> Path:
        base = self.run_base
        return base if self.interpretable else base.with_name(base.name + "-ordinary")

    @property
    def draw_dir(self) -> Path:
        return self.run_base.with_name(self.run_base.name + "-draw_RF")

    @property
    def run_id(self) -> str:
        return f"{self.dataset}/{self.name}/{self.model}_{self.config}/{self.cnn}"


def config_slug(model: str, dropout: float, epochs: int | None, seed: int, loss: str, multiclass: bool,
                pretrained: str, batch_size: int | None = None, fix_slicemag_quirk: bool = False) -> str:
    """The settings that make two runs of one model different, as a folder-name-safe text."""
    parts = [f"drop{dropout:g}", f"ep{epochs if epochs is not None else 'default'}", f"seed{seed}"]
    if multiclass:
        parts.append("softmax" if loss == "ourloss_softmaxlog" else "logistic")
    if batch_size is not None:
        parts.append(f"bs{batch_size}")
    if pretrained == "none" and MODELS[model].pretrained_file:
        parts.append("scratch")
    elif pretrained not in ("auto", "none"):
        parts.append("pre-" + "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in Path(pretrained).stem))
    if fix_slicemag_quirk:
        parts.append("fixslice")
    return "_".join(parts)


def all_categories(dataset: str) -> list[str]:
    """A dataset's categories (demo.m's lists; 'toy' the generated toy dataset's)."""
    if dataset not in DATASETS:
        raise RunnerError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    return list(facts_categories(dataset))


def _categories(dataset: str, given: Sequence[str] | None, multiclass: bool) -> list[str]:
    valid = all_categories(dataset)
    if not given:
        return valid if multiclass else [default_category(dataset)]
    if list(given) == ["all"]:
        return valid
    bad = [c for c in given if c not in valid]
    if bad:
        raise RunnerError(f"categor{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)} not in dataset {dataset!r}; "
                          f"valid: {' '.join(valid)} (or 'all')")
    return list(dict.fromkeys(given))


def plan_grid(args: argparse.Namespace) -> list[GridExperiment]:
    """The runs the options ask for: per dataset, per category (single-class) or one run for all the
    categories (--multiclass), per model, the CNN kinds (ordinary first, as demo.py --baseline)."""

    out = Path(args.out)
    runs: list[GridExperiment] = []
    image_folder = image_folder_option(args)          # --images DIR: dataset and category 'images'
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise RunnerError(f"unknown model(s) {', '.join(bad)}; valid: {', '.join(MODELS)}")
    kinds = [k for k in CNN_KINDS if k in args.cnn]
    loss = "ourloss_softmaxlog" if args.loss == "softmaxlog" else "ourloss_logistic"
    for model in args.models:
        if (problem := save_mat_error(model, args.save_mat)) is not None:
            raise RunnerError(problem)
    for dataset in args.dataset:
        if (problem := dataset_option_error(dataset, args.multiclass, loss)) is not None:
            raise RunnerError(f"--dataset {dataset}: {problem}")
        facts = dataset_facts(dataset)
        if getattr(args, "max_images", None) is not None and not facts.image_limit:
            raise RunnerError(f"--max-images is for the {' and '.join(datasets_with('image_limit'))} dataset, "
                              f"not {dataset!r}")
        cats = _categories(dataset, args.categories, args.multiclass)
        if args.multiclass and len(cats) < 2:
            raise RunnerError(f"--multiclass needs at least two categories of {dataset!r}")
        groups = [cats] if args.multiclass else [[c] for c in cats]
        toy_options = dict(_toy_options(args.toy_option)) if facts.generated else {}
        if facts.generated:
            toy_options.setdefault("categories", tuple(cats))
            toy_options.setdefault("progress", not args.no_progress)
        data_tag = _toy_tag(toy_options)   # other toy data, other runs and imdb caches
        if facts.image_limit and getattr(args, "max_images", None) is not None:
            data_tag += f"_max{args.max_images}"                 # another CelebA subset: other runs and caches
        if facts.own_folder:
            data_tag += image_folder.tag()                      # another folder: other runs and caches
        for model in args.models:
            size = MODELS[model].image_size
            slug = config_slug(model, args.dropout, args.epochs, args.seed, loss, args.multiclass, args.pretrained,
                               args.batch_size, args.fix_slicemag_quirk) + data_tag
            for group in groups:
                for kind in kinds:
                    runs.append(GridExperiment(
                        dataset=dataset, categories=list(group), model=model, dropout=args.dropout, loss=loss,
                        interpretable=kind == "interpretable", out=out / "imdb" / f"{dataset}-{size}px{data_tag}",
                        data_root=Path(args.data_root) if args.data_root else default_data_root(out),
                        models_root=Path(args.models_root) if args.models_root else None,
                        pretrained=args.pretrained, offline=args.offline or facts.generated, device=args.device,
                        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, save_mat=args.save_mat,
                        fix_slicemag_quirk=args.fix_slicemag_quirk, draw=args.draw and kind == "interpretable",
                        toy_options=toy_options, progress=not args.no_progress, runs_root=out / "runs",
                        resume_anyway=args.resume_anyway, max_images=getattr(args, "max_images", None),
                        config=slug, image_folder=image_folder))
    return runs


def _toy_tag(toy_options: dict) -> str:
    """'' for the default toy data (and the real datasets); else '_toy' + a hash of the generator's
    options, so that runs on other toy data get their own ids, folders and imdb caches."""
    options = {k: v for k, v in toy_options.items() if k not in ("categories", "progress")}
    if not options:
        return ""
    return "_toy" + hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _toy_options(items: Sequence[str] | None) -> Iterator[tuple[str, Any]]:
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RunnerError(f"--toy-option {item!r}: expected KEY=VALUE, e.g. n_pos=200")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        yield key.strip(), parsed


# ================================================================== where the data is
def resolve_paths(exp: Experiment, truth_dir: str | None = None, neg_dir: str | None = None,
                  image_dir: str | None = None) -> Any:
    """setup_<dataset>.m's conf for one run: `pipeline.prepare_dataset` (download / generate what is
    missing), or, when the truth files sit elsewhere (the options, or ../shared/data's layout with
    them under original/data_input_...), `data_prep.setup.dataset_paths` with those folders, after
    checking that the files the run reads are there."""

    if exp.facts.made_for_input_size:            # generated / checked and its landmarks in the input's crop
        return prepare_dataset(exp, MODELS[exp.model].image_size)
    root = Path(exp.data_root) if exp.data_root is not None else default_data_root()
    standard = root / DATASETS[exp.dataset].truth_dir
    found = Path(truth_dir) if truth_dir else default_readcode(root, standard.name)
    if not (truth_dir or neg_dir or image_dir) and found == standard:
        return prepare_dataset(exp)
    paths = dataset_paths(exp.dataset, root, exp.categories, truth_dir=found, neg_dir=neg_dir, image_dir=image_dir)
    _check_files(paths, exp.categories)
    return paths


def _check_files(paths: Any, categories: Sequence[str]) -> None:
    """The truth files, the category folders and the negatives a run reads, before hours of training."""
    missing = [str(paths.truth_file(c, p)) for c in categories for p in sorted(set(paths.parts_for(c)) | {1})
               if not paths.truth_file(c, p).is_file()]
    if not Path(paths.neg_dir).is_dir():
        missing.append(f"{paths.neg_dir}/ (the 1000 negatives)")
    data_file = dataset_facts(paths.name).category_data_file       # ILSVRC's <category>_obj/img/data.mat
    if data_file:
        missing += [str(Path(paths.image_dir) / data_file.format(category=c)) for c in categories
                    if not (Path(paths.image_dir) / data_file.format(category=c)).is_file()]
    if missing:
        raise RunnerError(f"dataset {paths.name!r} under {paths.root}: missing\n  " + "\n  ".join(missing))


# ================================================================== the results file
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


# ================================================================== one record
def machine_info(device: str) -> dict:
    """Where a run ran: host, OS, CPU, cores, torch, the device (the GPU's name for CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": platform.node(), "os": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_tf32"] = tf32_allowed()          # False: IEEE float32 convolutions, as MATLAB
    return info


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
                   for phase in ("train", "val") for k in ("lossForClassification", _error_name(exp))},
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


def _error_name(exp: Experiment) -> str:
    return "top1err" if exp.loss == "ourloss_softmaxlog" else "binerr"


# ================================================================== measured vs published
@dataclass
class ComparisonRow:
    """One line of the table: a published row (or none) and what was measured for it."""

    table: str
    dataset: str
    scope: str
    model: str
    config: str
    what: str                  # the category, or 'mean of k/N categories'
    metric: str                # 'location_instability' | 'accuracy_percent' | 'binary_error'
    measured: dict             # cnn kind -> value (NaN when not measured)
    paper: dict                # cnn kind -> value (None when the paper has none)


def _mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def comparison_rows(records: Sequence[dict]) -> list[ComparisonRow]:
    """The measured figures beside the paper's: per (dataset, scope, model, config), each published
    row that applies (the category's own row; a dataset-average row, compared with the mean over
    the categories measured; CUB's one row), then, for what the paper has no figure for (the toy
    data, our small nets, multi-class), the measured values alone."""

    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for r in records:
        key = (r["dataset"], r["scope"], r["model"], r["config"])
        groups.setdefault(key, {}).setdefault(r["name"], {})[r["cnn"]] = r
    out: list[ComparisonRow] = []
    for (dataset, scope, model, config), by_cat in groups.items():
        ref = PAPER_REFERENCE_MODEL.get(model, model)
        published = [p for p in paper_rows() if p.dataset == dataset and p.model == ref and p.scope == scope]
        n_all = len(DATASETS[dataset].categories) if dataset in DATASETS and DATASETS[dataset].categories else None
        for p in published:
            if p.category == "average":
                cats = list(by_cat)
                what = f"mean of {len(cats)}/{n_all} categories" if n_all else f"mean of {len(cats)} categories"
            elif p.category in by_cat:
                cats, what = [p.category], p.category
            else:
                continue
            measured = {k: _mean(by_cat[c][k].get(p.metric) for c in cats if k in by_cat[c]) for k in CNN_KINDS}
            table = p.table if ref == model else f"{p.table} *{ref}"
            out.append(ComparisonRow(table, dataset, scope, model, config, what, p.metric, measured,
                                     {"ordinary": p.ordinary, "interpretable": p.interpretable}))
            if p.metric == "location_instability":
                start = {k: _mean(by_cat[c][k].get("location_instability_at_start") for c in cats if k in by_cat[c])
                         for k in CNN_KINDS}
                if any(math.isfinite(v) for v in start.values()):
                    out.append(ComparisonRow("  control: before training", dataset, scope, model, config, what,
                                             "location_instability_at_start", start,
                                             {"ordinary": None, "interpretable": None}))
        if not published:
            cats = list(by_cat)
            what = cats[0] if len(cats) == 1 else f"mean of {len(cats)} runs"
            for metric in ("location_instability", "location_instability_at_start", "binary_error"):
                measured = {k: _mean(by_cat[c][k].get(metric) for c in cats if k in by_cat[c]) for k in CNN_KINDS}
                if not any(math.isfinite(v) for v in measured.values()):
                    continue
                label = "  control: before training" if metric.endswith("_at_start") else "not in the paper"
                out.append(ComparisonRow(label, dataset, scope, model, config, what, metric, measured,
                                         {"ordinary": None, "interpretable": None}))
    return out


_METRIC_LABEL = {"location_instability": "location instability", "accuracy_percent": "accuracy %",
                 "binary_error": "binary error", "location_instability_at_start": "location instability"}


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.2f}" if metric == "accuracy_percent" else f"{v:.3f}"


def _maybe(v: Any, spec: str) -> str:
    return "-" if v is None else format(float(v), spec)


def format_comparison(rows: Sequence[ComparisonRow]) -> str:
    """The table: each metric measured (ours) beside the paper's, ordinary -> interpretable CNN."""
    if not rows:
        return "No finished runs to compare."
    head = ("published row", "dataset", "model", "config", "measured on", "metric", "ordinary ours",
            "paper", "interpretable ours", "paper")
    lines = [head]
    for r in rows:
        lines.append((r.table, r.dataset + ("" if r.scope == "single-class" else " (multi)"), r.model, r.config,
                      r.what, _METRIC_LABEL[r.metric], _fmt(r.measured["ordinary"], r.metric),
                      _fmt(r.paper["ordinary"], r.metric), _fmt(r.measured["interpretable"], r.metric),
                      _fmt(r.paper["interpretable"], r.metric)))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    notes = sorted({(r.model, PAPER_REFERENCE_MODEL[r.model]) for r in rows if "*" in r.table})
    text += [f"*{ref}: the paper's {ref} row beside our {model}, which is NOT the paper's network (a smaller "
             f"net, trained from scratch): compare the direction, not the values" for model, ref in notes]
    return (f"Measured (ours) and published ({paper_source()}); location instability: lower is better; "
            f"accuracy = 100 (1 - binary error):\n" + "\n".join(text))


def format_runs(records: Sequence[dict]) -> str:
    """One line per run: binary error, location instability, accuracy, epochs, time."""
    if not records:
        return "No runs."
    head = ("run", "binary error", "location instability", "(before training)", "accuracy %", "epochs", "time", "")
    lines = [head] + [(r["id"], f"{r['binary_error']:.4f}",
                       "not measured" if r.get("location_instability_note") else f"{r['location_instability']:.4f}",
                       _maybe(r.get("location_instability_at_start"), ".4f"),
                       f"{r['accuracy_percent']:.2f}", str(r.get("epochs")),
                       _duration(r.get("seconds", {}).get("total")), "; ".join(r.get("warnings", [])))
                      for r in records]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(float(seconds)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    """The runner's options (one argparse call each, in the order --help shows them: it reads
    better whole than split)."""
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.paper", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=doc[0] + "\n\n" + "\n\n".join(doc[1:]),
        epilog="Published figures shipped (reproduce/experiments/data/paper_cvpr2018.json): location instability of "
               "ILSVRC part (fox and the 30-category average, Table 3), VOC Part (6-animal average, Table 4), "
               "CUB200 (Table 5) for alexnet, vgg-m, vgg-s, vgg-vd-16; single-class ILSVRC accuracy (Table 7). "
               "The paper's rows need the real datasets, the MatConvNet ImageNet models (--pretrained auto) and "
               "the original schedules (no --epochs); on a GPU (--device cuda) that is hours per vgg-vd-16 run. "
               "'tiny' and 'alexnet-narrow' are this package's small nets (random trunks), not the paper's.\n\n"
               "Every run also records a control: the location instability of the same net before training "
               "(--no-start-control skips it).\n\n"
               "example (the fox from ../shared/data, whose layout is recognised; ~25 min on a 2-core CPU; "
               "docs/RESULTS.md):\n"
               "  python -m reproduce.paper --dataset ilsvrcanimalpart --categories n02118333 "
               "--models alexnet-narrow --data-root ../shared/data --offline --device cpu --dropout 0.5 "
               "--out /tmp/paper_fox")
    parser.add_argument("--dataset", nargs="+", default=["ilsvrcanimalpart"],
                        choices=list(DATASETS),
                        help="dataset(s) (default ilsvrcanimalpart; 'toy' is generated offline)")
    parser.add_argument("--categories", nargs="+", default=None, metavar="C",
                        help="categories, or 'all' for every category of the dataset (30 ILSVRC animals, "
                             "6 VOC animals); default: the fox n02118333 (ILSVRC), cub200, the first "
                             "category otherwise, all of them with --multiclass")
    parser.add_argument("--models", nargs="+", default=["vgg-vd-16"], metavar="M", choices=list(MODELS),
                        help=f"networks: {', '.join(MODELS)} (default vgg-vd-16)")
    parser.add_argument("--cnn", nargs="+", default=list(CNN_KINDS), choices=list(CNN_KINDS),
                        help="which CNNs: the ordinary CNN (plain conv layers) and/or the interpretable "
                             "CNN (conv_mask); default both, trained with the same seed and schedule")
    parser.add_argument("--multiclass", action="store_true",
                        help="one CNN for all the categories (learn_icnn_multiclass.m) instead of one per category")
    parser.add_argument("--loss", choices=["logistic", "softmaxlog"], default="logistic",
                        help="loss of a multi-class CNN (default logistic)")
    parser.add_argument("--dropout", type=dropout_rate, default=0.8, help="dropout rate, 0 <= rate < 1 (demo.m: 0.8)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs (default: trainOpts.numEpochs, 50; 80 multi-class); the learning-rate "
                             "schedule is the original's cut to this length")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="override trainOpts.batchSize")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (weights, batch order, dropout)")
    add_common(parser)
    add_out(parser, "output/paper", "output folder (default output/paper)")
    parser.add_argument("--results", default=None,
                        help="results file, .json (default OUT/results.json; the .csv is written beside it)")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else OUT/data); ../shared/data's "
                               "layout (truth files under original/) is recognised")
    parser.add_argument("--truth-dir", default=None, help="folder of <category>/truth_partNN.mat (override)")
    parser.add_argument("--neg-dir", default=None, help="folder of the 1000 negatives (override)")
    parser.add_argument("--image-dir", default=None, help="conf.data.imgdir (override)")
    parser.add_argument("--models-root", default=None,
                        help="folder of the MatConvNet ImageNet models (default $ICNN_MODELS_ROOT or output/nets)")
    parser.add_argument("--pretrained", default="auto",
                        help="'auto' (the model's MatConvNet ImageNet file, downloaded when missing; none for "
                             "tiny and alexnet-narrow), 'none' (random trunk), or a model file")
    parser.add_argument("--offline", action="store_true", help="download nothing; say what is missing")
    parser.add_argument("--force", action="store_true",
                        help="redo runs already in the results file: their epoch checkpoints are deleted and "
                             "they train again from the start")
    parser.add_argument("--keep-going", action="store_true", help="after a failed run, go on with the next")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="resume from checkpoints written with other options (each difference is said); "
                             "without it such a run folder stops that run before any work")
    parser.add_argument("--no-start-control", action="store_true",
                        help="skip the control figure: the location instability of each net before training "
                             "(the same initial weights, evaluated the same way; seconds for the small nets)")
    parser.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                        help="celeba: at most N images of each partition (training, validation; default all)")
    parser.add_argument("--draw", action="store_true",
                        help="also draw the receptive fields of single-class ICNNs (step_drawRF.m; slow)")
    parser.add_argument("--save-mat", action="store_true", help="also write MATLAB net-epoch-N.mat checkpoints")
    parser.add_argument("--fix-slicemag-quirk", action="store_true",
                        help="the corrected sliceMag update instead of the original's column-1 quirk")
    parser.add_argument("--toy-option", action="append", default=None, metavar="KEY=VALUE",
                        help="toy dataset generator option (data_prep.toy.generate_toy_dataset), e.g. n_pos=200")
    parser.add_argument("--part-interpretability", action="store_true",
                        help="also record each run's part interpretability, trained and before training "
                             "(reproduce.interpretability; needs part regions: toy or vocpart)")
    parser.add_argument("--ablation", action="store_true",
                        help="instead of the grid, run the ablation (reproduce.ablation) for each single-class "
                             "cell: ordinary CNN, ICNN without the filter loss, ICNN, masks on and off, before "
                             "and after training, over --seeds; writes OUT/ablation/<dataset>-<model>-<category>/")
    parser.add_argument("--pretrain-finetune", action="store_true",
                        help="instead of the grid, the pretrain-then-fine-tune experiment (reproduce.pretrain): "
                             "pretrain the model's trunk on the dataset's other categories (or "
                             "--pretrain-categories), fine-tune on the first given category, over --seeds")
    parser.add_argument("--pretrain-categories", nargs="+", default=None, metavar="C",
                        help="with --pretrain-finetune: the pretraining categories")
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2],
                        help="with --ablation / --pretrain-finetune: the seeds (default 0 1 2)")
    add_image_folder(parser)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and the published rows; run nothing")
    parser.add_argument("--table", action="store_true",
                        help="print the table of every run in the results file; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--report", action="store_true",
                        help="after the grid, write an HTML report of each interpretable run beside its checkpoints "
                             "(<run>/report/index.html, reproduce.report), with the ordinary CNN of its cell side by side")
    return parser


def _command(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m reproduce.paper " + " ".join(shlex.quote(a) for a in args)


def _remove_checkpoints(folder: Path) -> int:
    """--force: the epoch checkpoints and plots of a run (nothing else) go, so it trains again."""
    n = 0
    if folder.is_dir():
        for p in list(folder.glob("net-epoch-*.pt")) + list(folder.glob("net-epoch-*.mat")) + \
                list(folder.glob("net-train.*")):
            p.unlink()
            n += 1
    return n


def _say(text: str) -> None:
    print(text, flush=True)


def _join_ranks(args: argparse.Namespace) -> tuple[int, int]:
    """Under torchrun: (rank, world size), each rank on its own GPU (cuda -> cuda:LOCAL_RANK); the
    grid's runs are dealt out one at a time (`_order`). Otherwise (0, 1)."""
    if not dd.launched_by_torchrun():
        return 0, 1
    rank, world, local = dd.init_scheduler()
    args.device = dd.rank_device(args.device, local)
    return rank, world


def _order(world: int, n: int) -> Iterable[int] | None:
    """The runs this rank takes: the next free one from the group's shared counter each time it is
    free (reproduce.distributed.claimed_runs), so K GPUs each run one at a time until the grid is done."""
    if world <= 1:
        return None
    return dd.claimed_runs(n, dd.store_counter("reproduce.paper/next-run"))


def _after_all_ranks(runs: Sequence[GridExperiment], store: ResultsStore, failed: list[str],
                     rank: int) -> tuple[list[dict], list[str]]:
    """Wait for the other ranks' runs (as long as they take), then every run's record from the results file."""

    dist.monitored_barrier(timeout=timedelta(days=30), wait_all_ranks=True)
    every_failed: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every_failed, failed)
    done = store.finished()
    return [done[e.run_id] for e in runs if e.run_id in done], [f for part in every_failed for f in part]

def instability_at_start(exp: GridExperiment, paths: Any) -> float:
    """The control figure: the location instability of the net as network_init builds it (same
    seed: the weights training starts from), measured as showResults.m measures the trained one.

    With a random trunk the conv_mask layer's test-time mask (centred on each map's centroid)
    already makes its peaks far more stable than a plain conv's, before any training; a trained
    ICNN's figure means something only beside this one."""

    net, _, meta = build_net(exp)
    imdb = build_imdb(exp, paths, image_size_of(meta))          # the cached imdb: only its mean is read
    quiet = replace(exp, draw=False, progress=False)
    stats = {"val": [{_error_name(exp): float("nan")}]}
    return float(show_results(quiet, net.to(exp.device), stats, imdb, paths).stability)


def _paths_for(exp: GridExperiment, args: argparse.Namespace, cache: dict) -> Any:
    key = (exp.dataset, tuple(exp.categories), exp.model if exp.facts.made_for_input_size else "")
    if key not in cache:
        cache[key] = resolve_paths(exp, args.truth_dir, args.neg_dir, args.image_dir)
    return cache[key]


def run_grid(args: argparse.Namespace, runs: Sequence[GridExperiment], store: ResultsStore,
             command: str, order: Iterable[int] | None = None) -> tuple[list[dict], list[str]]:
    """Run what is not in the results file yet (everything with --force); returns (the grid's
    records, old and new, in grid order; the ids that failed). A finished run recorded without
    the at-start control figure gets it added (an evaluation only), unless --no-start-control.
    `order`: the 0-based runs this process takes (several GPUs: `reproduce.distributed.claimed_runs`);
    default all, one after the other."""
    done = store.finished()
    paths_cache: dict[tuple, Any] = {}
    records: dict[str, dict] = {}
    failed: list[str] = []
    for i in (range(len(runs)) if order is None else order):
        exp = runs[i]
        i += 1
        tag = f"[{i}/{len(runs)}] {exp.run_id}"
        control = not args.no_start_control and (has_parts(exp.dataset) or exp.image_folder is not None
                                                  and exp.image_folder.landmarks is not None)  # voc2010_crop: none
        try:
            if exp.run_id in done and not args.force:
                record = done[exp.run_id]
                _say(f"{tag}: in the results file already (finished {record.get('finished')}); --force runs it again")
                if getattr(args, "part_interpretability", False) and record.get("part_interpretability") is None:
                    record = dict(record, **part_interpretability_of_run(exp, _paths_for(exp, args, paths_cache)))
                    store.add(record)
                    _say(f"{tag}: added the part interpretability, {record['part_interpretability']:.4f}")
                if control and record.get("location_instability_at_start") is None:
                    record = dict(record, location_instability_at_start=instability_at_start(
                        exp, _paths_for(exp, args, paths_cache)))
                    store.add(record)
                    _say(f"{tag}: added the location instability at the start of training, "
                         f"{record['location_instability_at_start']:.4f}")
                records[exp.run_id] = record
                continue
            if exp.run_id in done:
                removed = _remove_checkpoints(exp.exp_dir)
                _say(f"{tag}: --force: {removed} checkpoint files removed, training again")
            _say(f"{tag}: training the {exp.cnn} CNN on {exp.device} (checkpoints in {exp.exp_dir})")
            check_resume_early(exp)
            paths = _paths_for(exp, args, paths_cache)
            t0 = time.perf_counter()
            result = run_experiment(exp, paths)
            record = run_record(exp, result, command, time.perf_counter() - t0)
            if control:
                record["location_instability_at_start"] = instability_at_start(exp, paths)
            if getattr(args, "part_interpretability", False):
                record.update(part_interpretability_of_run(exp, paths))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, and with --keep-going the grid goes on
            if not args.keep_going:
                raise
            failed.append(exp.run_id)
            _say(f"{tag}: FAILED: {type(exc).__name__}: {exc}")
            continue
        store.add(record)
        records[exp.run_id] = record
        start = record.get("location_instability_at_start")
        _say(f"{tag}: {result.line()}" + (f"  (at the start of training {start:.6f})" if start is not None else "")
             + f"  ({_duration(record['seconds']['total'])}; written to {store.path})")
    return [records[e.run_id] for e in runs if e.run_id in records], failed


def run_ablation_cells(args: argparse.Namespace, runs: Sequence[GridExperiment]) -> int:
    """--ablation / --pretrain-finetune: reproduce.ablation (or reproduce.pretrain) for each single-class
    cell of the grid (dataset x category x model), written to OUT/ablation/... or OUT/pretrain/..."""

    cells = {(e.dataset, tuple(e.categories), e.model): e for e in runs if e.interpretable or not args.ablation}
    if any(len(c[1]) != 1 for c in cells):
        raise RunnerError("--ablation and --pretrain-finetune run single-class nets (no --multiclass)")
    for (dataset, (category,), model), grid_exp in cells.items():
        kind = "ablation" if args.ablation else "pretrain"
        out = Path(args.out) / kind / f"{dataset}-{model}-{category}"
        exp = Experiment(**{f.name: getattr(grid_exp, f.name) for f in fields(Experiment)})
        exp = replace(exp, out=out, interpretable=True, draw=False, seed=int(args.seeds[0]))
        _say(f"reproduce.paper --{kind}: {dataset} {category} {model}, seeds {args.seeds}, in {out}")
        if args.ablation:
            records = run_ablation(exp, args.seeds, resolve_paths(exp, args.truth_dir, args.neg_dir, args.image_dir),
                                   say=_say)
        else:
            pre = args.pretrain_categories or [c for c in all_categories(dataset) if c != category]
            res = pretrain_and_finetune(dataset, pre, category, model=model, seeds=args.seeds, out=out,
                                        pretrain_epochs=args.epochs or 8, finetune_epochs=args.epochs or 8,
                                        dropout=args.dropout, device=args.device, data_root=exp.data_root,
                                        toy_options={k: v for k, v in exp.toy_options.items()
                                                     if k not in ("categories", "progress")},
                                        progress=exp.progress, say=_say)
            records = res["records"]
        summary = summarise(records)
        js, cs = write_results(out, records, summary, {"command": _command(None), "dataset": dataset,
                                                       "category": category, "model": model, "seeds": args.seeds})
        _say("\n" + format_table(summary) + f"\n(written to {js} and {cs})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.paper`: plan the grid, run what is missing, print the tables. Options are
    checked as they are parsed; errors are one or two lines (reproduce.cli.run_cli). Under torchrun
    (``--nproc_per_node K``, one process per GPU) the grid's runs are spread over the K processes,
    one run per GPU at a time."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (problem := single_class_loss_error(args.loss, args.multiclass)) is not None:
        parser.error(problem)
    try:
        return run_cli("reproduce.paper", lambda: _run(args, argv), debug=args.debug,
                       interrupted="run the same command again to resume (finished runs are kept, the run in "
                                   "progress resumes from its last epoch checkpoint).")
    finally:
        shutdown()


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    store = ResultsStore(args.results or Path(args.out) / "results.json")
    if args.table:
        records = store.load()
        _say(format_runs(records) + "\n\n" + format_comparison(comparison_rows(records)))
        return 0
    args.device = start_device(args)
    rank, world = _join_ranks(args)
    if rank > 0 and args.dry_run:
        return 0
    runs = plan_grid(args)
    if args.dry_run:
        done = store.finished()
        for e in runs:
            state = "done" if e.run_id in done and not args.force else "to run"
            _say(f"{state:7s} {e.run_id}   ({e.exp_dir})")
        for dataset, model, scope, first in dict.fromkeys((e.dataset, e.model, e.scope, e.categories[0])
                                                          for e in runs):
            _say(f"{dataset} {model} {scope} ({first}): " + format_rows(rows_for(dataset, model, first, scope)))
        return 0
    if args.ablation or args.pretrain_finetune:
        bad = sorted({e.dataset for e in runs if e.facts.whole_images})
        if bad:
            raise RunnerError(f"--ablation / --pretrain-finetune measure location instability on a category's "
                              f"annotated objects, which {' and '.join(bad)} do{'es' if len(bad) == 1 else ''} "
                              f"not have")
        return run_ablation_cells(args, runs)
    if args.part_interpretability and not all(has_part_regions(e.dataset, e.image_folder and e.image_folder.part_masks)
                                              for e in runs):
        raise RunnerError("--part-interpretability needs part regions: the toy dataset, vocpart, or --images with "
                          "--part-masks")
    _say(f"reproduce.paper: {len(runs)} runs, device {args.device}, results {store.path}"
         + (f" (rank {rank} of {world}: one run at a time, taking the next free one)" if world > 1 else ""))

    for exp in {(e.dataset, e.data_root): e for e in runs}.values():
        check_data_root(exp)
    with folder_lock(Path(args.out), _command(argv)):           # one runner per output folder (rank 0 holds it)
        records, failed = run_grid(args, runs, store, _command(argv), _order(world, len(runs)))
    if world > 1:
        records, failed = _after_all_ranks(runs, store, failed, rank)
        if rank > 0:
            return 1 if failed else 0
    if args.report:
        report_experiments(runs, progress=not args.no_progress, say=_say)
    _say("\n" + format_runs(records) + "\n\n" + format_comparison(comparison_rows(records)))
    if failed:
        _say(f"\n{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
