"""The command line of `python -m reproduce.train` (also `python -m reproduce.train_cli`).

learn_icnn.m / learn_icnn_multiclass.m from the shell: the dataset, network_init, the imdb cache
and `reproduce.train.train`, all through `reproduce.pipeline.learn`. It sits above the pipeline,
which sits above reproduce.train; reproduce/train.py's `__main__` block hands over to `main` here.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from data_prep.facts import DATASETS
from data_prep.setup import default_data_root
from legacy_compat.cli import UserError, add_data_root, dropout_rate, nonnegative_int, positive_int, run_cli
from legacy_compat.runlock import folder_lock
from reproduce.experiments.options import (
    add_common,
    add_models_root,
    add_no_progress,
    add_offline,
    add_pretrained,
    parse_checked,
    run_option_problem,
    start_device,
)
from reproduce.experiments.pipeline import Experiment, check_data_root, learn
from reproduce.models.registry import MODELS
from reproduce.runtime import distributed as dd

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.train",
        description="Train an interpretable CNN as the original learn_icnn.m / learn_icnn_multiclass.m do "
                    "(our_cnn_train.m: MatConvNet SGD with momentum, the conv_mask filter loss, sliceMag). "
                    "Builds (or reuses) the imdb with data_prep in OUT/mat/<name>/imdb, the network with "
                    "network_init from the pretrained ImageNet model, then trains, writing net-epoch-N.pt "
                    "checkpoints and net-train.png/.pdf into OUT/mat/<name> (<name>: the category, or the "
                    "original's multi-class name). Running the same command again resumes from the last "
                    "checkpoint; Ctrl-C stops without leaving a half-written file.",
        epilog="example: python -m reproduce.train --dataset ilsvrcanimalpart --category n02118333 "
               "--model vgg-vd-16 --dropout 0.8 --device cuda --out output")
    parser.add_argument("--dataset", required=True, choices=list(DATASETS),
                        help="dataset the imdb is built from (demo.m's choices, plus the offline toy dataset)")
    parser.add_argument("--category", required=True, nargs="+",
                        help="category, e.g. n02118333 (fox), bird (VOC), cub200; several categories train one "
                             "multi-class net as learn_icnn_multiclass.m")
    parser.add_argument("--model", default="vgg-vd-16", choices=list(MODELS),
                        help="network (network_init.m; default vgg-vd-16; 'tiny' is the package's small net "
                             "for 64 x 64 inputs, without pretrained weights)")
    add_pretrained(parser, help="the MatConvNet ImageNet model file the trunk comes from; 'auto' (default): the "
                                "model's file under --models-root, downloaded when missing; 'none': random trunk")
    parser.add_argument("--dropout", type=dropout_rate, default=0.8,
                        help="dropout rate, 0 <= rate < 1 (demo.m's default 0.8)")
    parser.add_argument("--loss", default="ourloss_logistic", choices=["ourloss_logistic", "ourloss_softmaxlog"],
                        help="loss of a multi-class net (learn_icnn_multiclass.m's lossType; default logistic)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="number of epochs (default: network_init's trainOpts.numEpochs: 50, multi-class 80)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="override trainOpts.batchSize")
    add_common(parser)
    parser.add_argument("--out", required=True, help="output folder (as demo.py's): OUT/mat/<name>/ gets the "
                                                     "checkpoints, the plots and the imdb cache")
    add_data_root(parser)
    add_models_root(parser, help="folder of the MatConvNet ImageNet models (default: data_prep's default)")
    add_offline(parser, help="download nothing; fail naming what is missing")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="opts.randomSeed: epoch e is seeded with e + seed")
    parser.add_argument("--save-mat", action="store_true", help="also write MATLAB net-epoch-N.mat checkpoints")
    parser.add_argument("--fix-slicemag-quirk", action="store_true",
                        help="sliceMag update: fill zero means from the class's own column instead of column 1 "
                             "(the original's linear-indexing quirk, kept by default)")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="resume from checkpoints in OUT/mat/<name> although they were written with other "
                             "options (each difference is said); without it such a folder stops the run before "
                             "any work")
    add_no_progress(parser, help="no progress bars or epoch summaries")
    dd.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.train`: learn_icnn.m / learn_icnn_multiclass.m through
    reproduce.pipeline (data, network_init, imdb, train); prints the last epoch's val statistics.
    Options are checked as they are parsed; errors are one or two lines (legacy_compat.cli.run_cli)."""
    args = parse_checked(build_parser(), argv, "several --category values")
    try:
        return run_cli("reproduce.train", lambda: _run(args), debug=args.debug,
                       interrupted="run the same command again to resume from the last checkpoint.")
    finally:
        dd.shutdown()


def _run(args: argparse.Namespace) -> int:
    if (problem := run_option_problem(args.dataset, model=args.model, multiclass=len(args.category) > 1,
                                      loss=args.loss, save_mat=args.save_mat)) is not None:
        raise UserError(problem)
    dp, device = dd.start_from_args(args, start_device(args))
    if dp is not None and not dp.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone prints
        args.no_progress = True
    out = Path(args.out)
    exp = Experiment(dataset=args.dataset, categories=args.category, model=args.model, dropout=args.dropout,
                     loss=args.loss, out=out,
                     data_root=Path(args.data_root) if args.data_root else default_data_root(out),
                     models_root=Path(args.models_root) if args.models_root else None,
                     pretrained=args.pretrained, offline=args.offline, device=device, seed=args.seed,
                     epochs=args.epochs, batch_size=args.batch_size, save_mat=args.save_mat,
                     fix_slicemag_quirk=args.fix_slicemag_quirk, progress=not args.no_progress,
                     resume_anyway=args.resume_anyway)
    check_data_root(exp)
    with folder_lock(out):                  # one run per output folder (under torchrun: rank 0 holds it)
        net, stats, _, _ = learn(exp)
    last = stats["val"][-1] if stats["val"] else {}
    print(" ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("num", "time")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
