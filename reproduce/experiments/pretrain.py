"""The paper's regime on data we have: pretrain a trunk as a classifier, then fine-tune ICNNs from it.

    python -m reproduce.pretrain                           # toy: pretrain on toy02 + toy03, fine-tune on toy01
    python -m reproduce.pretrain --seeds 0 1 2 --out output/pretrain --toy-images 800

The paper fine-tunes ImageNet-pretrained trunks (MatConvNet's imagenet-*.mat, read by
network_init.m) on one category with the filter loss. We cannot reach ImageNet offline, so the
same steps run at toy scale:

1. Pretrain: the ordinary tiny CNN (`network_init(..., interpretable=False)`, a random trunk) is
   trained as a multi-way classifier on the toy categories other than the held-out one
   (learn_icnn_multiclass.m's protocol through reproduce.pipeline: produceIMDB, which takes each
   category's positives, at least 1500 per category, logistic loss, one output per category),
   `--pretrain-epochs` epochs at the tiny schedule's learning rates x `--pretrain-lr-scale` (0.2:
   at x1 this net diverged to NaN).
2. Save: its trunk (the layers network_init takes from a pretrained model: for 'tiny', whose
   cut is 0, the whole trunk conv1..relu3) with meta.normalization.imageSize and the classes,
   as a MatConvNet model file (`layers` cell + `meta`, MAT v5), like imagenet-*.mat.
3. Fine-tune: the held-out category (default toy01, never seen in pretraining) with the nets
   network_init builds from that file exactly as from an ImageNet model (`pretrained=<file>`):
   the ablation of reproduce.ablation (ordinary CNN, ICNN without the filter loss, ICNN; each
   ICNN also with its masks off; before fine-tuning = the pretrained trunk with the new head,
   after = fine-tuned), over the seeds (the seed draws the new head and the batch order; the
   trunk is the same pretrained one for every seed).

Results: ``<out>/ablation.json``/``.csv`` (the fine-tuning table), ``<out>/pretrain.json`` (the
pretraining run), the model file ``<out>/nets/tiny-pretrained-<categories>.mat``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.annotations import read_annotation
from data_prep.facts import DATASETS
from data_prep.imdb import load_or_build_imdb, produce_imdb_from_objects
from legacy_compat.atomic import atomic_write, atomic_write_bytes
from legacy_compat.cli import UserError, dropout_rate, nonnegative_int, positive_int, run_cli
from legacy_compat.matio import savemat
from legacy_compat.mattypes import MatStruct, cell
from legacy_compat.simplenn import net_to_matlab
from reproduce.evaluation.net_evaluation import load_net_for_evaluation
from reproduce.experiments.ablation import format_table, run_ablation, summarise, write_results
from reproduce.experiments.options import (
    add_common,
    add_toy_run_options,
    run_option_problem,
    start_device,
    toy_size_options,
)
from reproduce.experiments.pipeline import (
    Experiment,
    build_net,
    check_resume_early,
    image_size_of,
    prepare_dataset,
    run_options,
    slice_mag_fill,
)
from reproduce.models.registry import MODELS
from reproduce.training.checkpoints import checkpoint_path, last_checkpoint_epoch
from reproduce.training.cnn_train import train

#: The pretraining's learning rates: network_init's tiny schedule x this. At x1 the multi-class ordinary tiny
#: CNN (2 logistic outputs, the tiny lrMag chosen at the edge of what the single-class ordinary net survives)
#: went to NaN within 1-2 epochs in our runs (dropout 0.8 and 0.5).
PRETRAIN_LR_SCALE = 0.2

__all__ = ["main", "PretrainFinetune", "pretrain_and_finetune", "pretrain_and_save", "pretrain_trunk", "pretraining_imdb", "save_pretrained_model",
           "stopping_epoch", "top1_error"]


class _StopPretraining(Exception):
    """Raised by the epoch callback when the stopping rule is met (the epoch's checkpoint is written)."""


def pretraining_imdb(exp: Experiment, paths: Any, image_size: tuple[int, int]) -> Any:
    """The multi-class pretraining imdb (produceIMDB's rows, data_prep.imdb.produce_imdb_from_objects:
    built from the categories' objects, without their 2.4 GB single-category imdbs), cached in
    exp.imdb_dir and memory-mapped."""
    conf = paths.data_conf()
    objsets = [read_annotation(c, conf) for c in exp.categories]
    settings = {"dataset": exp.dataset, "categories": list(exp.categories), "image_size": list(image_size),
                "root": str(paths.root), "builder": "produce_imdb_from_objects",
                "toy_options": exp.toy_options if exp.facts.generated else None}
    return load_or_build_imdb(exp.imdb_dir, lambda tmp: produce_imdb_from_objects(
        objsets, list(exp.categories), conf.imgdir, image_size, out=tmp, progress=exp.progress), settings)


@torch.no_grad()
def top1_error(net: Any, imdb: Any, device: Any = "cpu", batch_size: int = 100) -> float:
    """The multi-way top-1 error on the imdb's validation images: the class of the largest output
    against the class labelled +1 (not in the original, whose multi-class runs report error_binary)."""
    net = net.to(device).eval()
    val = imdb.val_indices()
    wrong = 0
    for s in range(0, val.size, batch_size):
        idx = val[s:s + batch_size]
        pred = net(torch.from_numpy(np.asarray(imdb.data[idx], dtype=np.float32)).to(device))
        wrong += int((pred.reshape(len(idx), -1).argmax(1).cpu().numpy() != imdb.labels[idx].argmax(1)).sum())
    return wrong / max(1, int(val.size))


def stopping_epoch(errors: Sequence[float], patience: int) -> int | None:
    """The patience rule: training stops after the epoch that is `patience` epochs past the best
    (lowest) validation top-1 error without a lower one; returns that best epoch (1-based), or
    None while the rule is not met."""
    if not errors:
        return None
    best = int(np.argmin(np.asarray(errors))) + 1
    return best if len(errors) - best >= patience else None


def pretrain_trunk(exp: Experiment, paths: Any, patience: int = 3, say=print) -> tuple[Any, dict, Any]:
    """Step 1: train the ordinary CNN on exp.categories as a multi-way classifier (logistic loss, one
    output per category) for at most exp.epochs epochs, stopping when the validation top-1 error has
    not improved for `patience` epochs (`stopping_epoch`). Resumable: the per-epoch errors are kept
    in <exp_dir>/val_top1.json beside the checkpoints. Returns (the net of the best epoch, record, imdb)."""
    if not exp.multiclass:
        raise ValueError("pretraining needs at least two categories (a multi-way classifier)")
    exp = replace(exp, interpretable=False, draw=False)
    check_resume_early(exp)
    net, opts, meta = build_net(exp)
    imdb = pretraining_imdb(exp, paths, image_size_of(meta))
    history = exp.exp_dir / "val_top1.json"
    errors = _known_errors(history, exp, imdb)

    def on_epoch(epoch: int, stats: dict) -> None:
        errors[epoch - 1:] = [top1_error(net, imdb, exp.device)]
        atomic_write_bytes(history, json.dumps(errors).encode())
        say(f"pretrain: epoch {epoch}: validation top-1 error {errors[-1]:.4f}")
        if stopping_epoch(errors, patience) is not None:
            raise _StopPretraining
    if stopping_epoch(errors, patience) is None and len(errors) < int(opts.num_epochs):
        try:
            train(net, imdb, opts, exp.exp_dir, device=exp.device, seed=exp.seed, progress=exp.progress, meta=meta,
                  slice_mag_fill=slice_mag_fill(exp), run_options=run_options(exp), on_epoch=on_epoch)
        except _StopPretraining:
            pass
    best = int(np.argmin(np.asarray(errors))) + 1
    best_net, stats, _ = load_net_for_evaluation(checkpoint_path(exp.exp_dir, best), exp.device)
    record = {"epochs_trained": len(errors), "best_epoch": best, "val_top1_error": list(errors),
              "stopped_by": "patience" if stopping_epoch(errors, patience) else "epoch cap",
              "patience": patience, "max_epochs": int(opts.num_epochs),
              "val_binerr": [float(v.get("binerr", float("nan"))) for v in stats.get("val", [])],
              "images": {"train": int(imdb.train_indices().size), "val": int(imdb.val_indices().size)}}
    return best_net, record, imdb


def _known_errors(history: Path, exp: Experiment, imdb: Any) -> list[float]:
    """The per-epoch top-1 errors of the checkpoints already in exp.exp_dir (from val_top1.json; an
    epoch whose checkpoint is newer than the file is measured from its checkpoint)."""
    done = last_checkpoint_epoch(exp.exp_dir)
    errors = [float(v) for v in json.loads(history.read_text())][:done] if history.is_file() else []
    for epoch in range(len(errors) + 1, done + 1):
        net, _, _ = load_net_for_evaluation(checkpoint_path(exp.exp_dir, epoch), exp.device)
        errors.append(top1_error(net, imdb, exp.device))
    if errors:
        atomic_write_bytes(history, json.dumps(errors).encode())
    return errors


def save_pretrained_model(net: Any, model: str, path: Path, classes: Sequence[str]) -> Path:
    """Step 2: the trunk of `net` (its first meta['pretrained_count'] layers, what network_init took
    from the trunk) as a MatConvNet model file network_init reads (`pretrained=path`)."""

    count = int(net.meta["pretrained_count"])
    specs = net.to_specs()[:count]
    bad = [s.name for s in specs for w in s.weights if not bool(np.isfinite(w.detach().cpu().numpy()).all())]
    if bad:
        raise ValueError(f"the pretrained trunk has NaN/Inf weights in {', '.join(bad)}: pretraining diverged "
                         f"(try a lower --dropout or a smaller learning rate); nothing saved")
    if MODELS[model].cut:
        raise ValueError(f"{model!r} cuts {MODELS[model].cut} layers off its pretrained file; this writer "
                         f"saves trunks of uncut models (tiny) only")
    size = np.asarray(net.meta["image_size"], dtype=np.float64).reshape(1, -1)
    meta = MatStruct(normalization=MatStruct(imageSize=size),
                     classes=MatStruct(name=cell(list(classes)), description=cell(list(classes))))
    model_struct = net_to_matlab(specs, meta)
    atomic_write(path, lambda tmp: savemat(tmp, {"layers": model_struct["layers"], "meta": model_struct["meta"]},
                                           version="5"))
    return path


def pretrain_and_save(pre: Experiment, paths: Any, file: Path, patience: int, say=print) -> dict:
    """Step 1 with its trunk file: `pretrain_trunk` (the ordinary CNN of `pre`), the best epoch's trunk
    saved as a MatConvNet model file `file`; returns pretrain_trunk's record with the categories, seed
    and seconds (reproduce.pretrain and reproduce.realimages)."""
    say(f"pretrain: the ordinary {pre.model} CNN on {', '.join(pre.categories)} (at most {pre.epochs} "
        f"epochs, patience {patience}; checkpoints in {pre.exp_dir})")
    t0 = time.perf_counter()
    net, record, _ = pretrain_trunk(pre, paths, patience=patience, say=say)
    save_pretrained_model(net, pre.model, file, pre.categories)
    record.update(categories=list(pre.categories), seed=pre.seed, seconds=time.perf_counter() - t0)
    say(f"pretrain: best epoch {record['best_epoch']}, validation top-1 error "
        f"{record['val_top1_error'][record['best_epoch'] - 1]:.4f}; trunk saved to {file}")
    return record


@dataclass(frozen=True)
class PretrainFinetune:
    """What the pretrain-then-fine-tune experiment runs (reproduce.pretrain's options): pretrain the model's
    trunk on `pretrain_categories`, fine-tune on the held-out `finetune_category` over `seeds`."""

    dataset: str
    pretrain_categories: Sequence[str]
    finetune_category: str
    model: str = "tiny"
    seeds: Sequence[int] = (0, 1, 2)
    out: Path = Path("output/pretrain")
    pretrain_epochs: int = 8
    finetune_epochs: int = 8
    dropout: float = 0.5
    pretrain_lr_scale: float = PRETRAIN_LR_SCALE
    patience: int = 3
    device: str = "cpu"
    data_root: Path | None = None
    toy_options: dict = field(default_factory=dict)
    progress: bool = True


def pretrain_and_finetune(plan: PretrainFinetune, say=print) -> dict:
    """Steps 1-3. Returns {'pretrain': ..., 'model_file': ..., 'records': [...], 'summary': [...]}."""
    out = Path(plan.out)
    common = {"dataset": plan.dataset, "model": plan.model, "dropout": plan.dropout, "out": out,
              "data_root": plan.data_root, "offline": True, "device": plan.device, "draw": False,
              "toy_options": dict(plan.toy_options or {}), "progress": plan.progress}
    every = list(dict.fromkeys([*plan.pretrain_categories, plan.finetune_category]))
    if plan.finetune_category in plan.pretrain_categories:
        raise ValueError(f"the fine-tuning category {plan.finetune_category!r} must be held out of pretraining")
    paths = prepare_dataset(Experiment(categories=every, **common), MODELS[plan.model].image_size)
    pre = Experiment(categories=list(plan.pretrain_categories), pretrained="none", seed=int(plan.seeds[0]),
                     epochs=plan.pretrain_epochs, interpretable=False, learning_rate_scale=plan.pretrain_lr_scale,
                     **common)
    file = out / "nets" / f"{plan.model}-pretrained{pre.name}.mat"
    pre_record = pretrain_and_save(pre, paths, file, plan.patience, say=say)
    pre_record.update(model_file=str(file))
    fine = Experiment(categories=[plan.finetune_category], pretrained=str(file), seed=int(plan.seeds[0]),
                      epochs=plan.finetune_epochs, **common)
    records = run_ablation(fine, plan.seeds, paths, say=say)
    return {"pretrain": pre_record, "model_file": str(file), "records": records, "summary": summarise(records)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="toy", choices=list(DATASETS))
    p.add_argument("--pretrain-categories", nargs="+", default=["toy02", "toy03"], metavar="C")
    p.add_argument("--category", default="toy01", help="the held-out category fine-tuned on (default toy01)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=positive_int, default=8)
    p.add_argument("--pretrain-lr-scale", type=float, default=PRETRAIN_LR_SCALE,
                   help=f"the pretraining's learning rates x this (default {PRETRAIN_LR_SCALE}: at x1 it diverged)")
    p.add_argument("--epochs", type=positive_int, default=8, help="fine-tuning epochs (default 8)")
    p.add_argument("--dropout", type=dropout_rate, default=0.5)
    add_toy_run_options(p, "output/pretrain")
    add_common(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.pretrain`; errors are one or two lines (legacy_compat.cli.run_cli)."""
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.pretrain", lambda: _run(args, argv), debug=args.debug,
                   interrupted="run the same command again: finished nets resume from their checkpoints.")


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if (problem := run_option_problem(args.dataset, model=args.model, toy_images=args.toy_images)) is not None:
        raise UserError(problem)                # --toy-images for a dataset that is not generated

    t0 = time.perf_counter()
    toy = toy_size_options(args.toy_images)
    res = pretrain_and_finetune(PretrainFinetune(
        args.dataset, args.pretrain_categories, args.category, model=args.model, seeds=args.seeds,
        out=Path(args.out), pretrain_epochs=args.pretrain_epochs, pretrain_lr_scale=args.pretrain_lr_scale,
        finetune_epochs=args.epochs, dropout=args.dropout, device=start_device(args, auto="cpu"),
        data_root=Path(args.data_root) if args.data_root else None, toy_options=toy, progress=not args.no_progress))
    settings = {"command": "python -m reproduce.pretrain " + " ".join(sys.argv[1:] if argv is None else argv),
                **{k: v for k, v in vars(args).items()}, "seconds": time.perf_counter() - t0}
    js, cs = write_results(Path(args.out), res["records"], res["summary"], settings)
    atomic_write_bytes(Path(args.out) / "pretrain.json", json.dumps(res["pretrain"], indent=1, default=str).encode())
    print(f"\npretrained on {', '.join(args.pretrain_categories)} (validation error "
          f"{res['pretrain']['last_val'].get('binerr', float('nan')):.4f}); fine-tuned on {args.category}:")
    print(format_table(res["summary"]))
    print(f"\npretrain: done in {time.perf_counter() - t0:.0f} s; {js}, {cs}, {res['model_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
