"""reproduce.paper's grid: the runs the options ask for (dataset x categories x model x {ordinary,
interpretable}), their folders and ids, and where each run's data is (module docstring of
reproduce.experiments.paper: the folders under --out). Not a port of an original file: each run is
demo.m's protocol through reproduce.experiments.pipeline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from data_prep.facts import DATASETS, dataset_facts, default_category
from data_prep.facts import all_categories as facts_categories
from data_prep.readers import default_readcode
from data_prep.setup import dataset_paths, default_data_root
from legacy_compat.cli import UserError
from reproduce.experiments.options import image_folder_option, run_option_problem
from reproduce.experiments.pipeline import Experiment, prepare_dataset
from reproduce.models.registry import MODELS

__all__ = ["CNN_KINDS", "RunnerError", "GridExperiment", "config_slug", "all_categories", "plan_grid", "toy_tag",
           "resolve_paths"]


CNN_KINDS = ("ordinary", "interpretable")


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


def config_slug(exp: Experiment) -> str:
    """The settings that make two runs of one model different (dropout, epochs, seed, the multi-class
    loss, batch size, pretrained model, the sliceMag fix), as a folder-name-safe text."""
    parts = [f"drop{exp.dropout:g}", f"ep{exp.epochs if exp.epochs is not None else 'default'}", f"seed{exp.seed}"]
    if exp.multiclass:
        parts.append("softmax" if exp.loss == "ourloss_softmaxlog" else "logistic")
    if exp.batch_size is not None:
        parts.append(f"bs{exp.batch_size}")
    if exp.pretrained == "none" and MODELS[exp.model].pretrained_file:
        parts.append("scratch")
    elif exp.pretrained not in ("auto", "none"):
        parts.append("pre-" + "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in Path(exp.pretrained).stem))
    if exp.fix_slicemag_quirk:
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
    for dataset in args.dataset:
        for model in args.models:
            if (problem := run_option_problem(dataset, model=model, multiclass=args.multiclass, loss=loss,
                                              save_mat=args.save_mat,
                                              max_images=getattr(args, "max_images", None))) is not None:
                raise RunnerError(problem)
        facts = dataset_facts(dataset)
        cats = _categories(dataset, args.categories, args.multiclass)
        if args.multiclass and len(cats) < 2:
            raise RunnerError(f"--multiclass needs at least two categories of {dataset!r}")
        groups = [cats] if args.multiclass else [[c] for c in cats]
        toy_options = dict(_toy_options(args.toy_option)) if facts.generated else {}
        if facts.generated:
            toy_options.setdefault("categories", tuple(cats))
            toy_options.setdefault("progress", not args.no_progress)
        data_tag = toy_tag(toy_options)   # other toy data, other runs and imdb caches
        if facts.image_limit and getattr(args, "max_images", None) is not None:
            data_tag += f"_max{args.max_images}"                 # another CelebA subset: other runs and caches
        if facts.own_folder:
            data_tag += image_folder.tag()                      # another folder: other runs and caches
        for model in args.models:
            size = MODELS[model].image_size
            for group in groups:
                for kind in kinds:
                    run = GridExperiment(
                        dataset=dataset, categories=list(group), model=model, dropout=args.dropout, loss=loss,
                        interpretable=kind == "interpretable", out=out / "imdb" / f"{dataset}-{size}px{data_tag}",
                        data_root=Path(args.data_root) if args.data_root else default_data_root(out),
                        models_root=Path(args.models_root) if args.models_root else None,
                        pretrained=args.pretrained, offline=args.offline or facts.generated, device=args.device,
                        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, save_mat=args.save_mat,
                        fix_slicemag_quirk=args.fix_slicemag_quirk, draw=args.draw and kind == "interpretable",
                        toy_options=toy_options, progress=not args.no_progress, runs_root=out / "runs",
                        resume_anyway=args.resume_anyway, max_images=getattr(args, "max_images", None),
                        image_folder=image_folder)
                    runs.append(replace(run, config=config_slug(run) + data_tag))
    return runs


def toy_tag(toy_options: dict) -> str:
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
