"""reproduce.paper --ablation / --pretrain-finetune: reproduce.ablation (or reproduce.pretrain) for
each single-class cell of the grid. Not a port of an original file.
"""
from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import Sequence

from reproduce.experiments.ablation import (
    format_table,
    run_ablation,
    summarise,
    write_results,
)
from reproduce.experiments.grid import GridExperiment, RunnerError, all_categories, resolve_paths
from reproduce.experiments.grid_runner import say
from reproduce.experiments.pipeline import Experiment
from reproduce.experiments.pretrain import PretrainFinetune, pretrain_and_finetune

__all__ = ["run_ablation_cells"]


def run_ablation_cells(args: argparse.Namespace, runs: Sequence[GridExperiment], command: str) -> int:
    """--ablation / --pretrain-finetune: reproduce.ablation (or reproduce.pretrain) for each single-class
    cell of the grid (dataset x category x model), written to OUT/ablation/... or OUT/pretrain/...; `command`:
    the command line, recorded with the results."""

    cells = {(e.dataset, tuple(e.categories), e.model): e for e in runs if e.interpretable or not args.ablation}
    if any(len(c[1]) != 1 for c in cells):
        raise RunnerError("--ablation and --pretrain-finetune run single-class nets (no --multiclass)")
    for (dataset, (category,), model), grid_exp in cells.items():
        kind = "ablation" if args.ablation else "pretrain"
        out = Path(args.out) / kind / f"{dataset}-{model}-{category}"
        exp = Experiment(**{f.name: getattr(grid_exp, f.name) for f in fields(Experiment)})
        exp = replace(exp, out=out, interpretable=True, draw=False, seed=int(args.seeds[0]))
        say(f"reproduce.paper --{kind}: {dataset} {category} {model}, seeds {args.seeds}, in {out}")
        if args.ablation:
            records = run_ablation(exp, args.seeds, resolve_paths(exp, args.truth_dir, args.neg_dir, args.image_dir),
                                   say=say)
        else:
            pre = args.pretrain_categories or [c for c in all_categories(dataset) if c != category]
            res = pretrain_and_finetune(PretrainFinetune(
                dataset, pre, category, model=model, seeds=args.seeds, out=out, pretrain_epochs=args.epochs or 8,
                finetune_epochs=args.epochs or 8, dropout=args.dropout, device=args.device, data_root=exp.data_root,
                toy_options={k: v for k, v in exp.toy_options.items() if k not in ("categories", "progress")},
                progress=exp.progress), say=say)
            records = res["records"]
        summary = summarise(records)
        js, cs = write_results(out, records, summary, {"command": command, "dataset": dataset,
                                                       "category": category, "model": model, "seeds": args.seeds})
        say("\n" + format_table(summary) + f"\n(written to {js} and {cs})")
    return 0
