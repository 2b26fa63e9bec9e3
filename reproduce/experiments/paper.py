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
import shlex
import sys
from pathlib import Path
from typing import Sequence

from data_prep.facts import DATASETS
from legacy_compat.cli import add_data_root, add_out, dropout_rate, nonnegative_int, positive_int, run_cli
from legacy_compat.runlock import folder_lock
from reproduce.experiments.ablation import has_part_regions
from reproduce.experiments.ablation_cells import run_ablation_cells
from reproduce.experiments.comparison_tables import comparison_rows, format_comparison, format_runs
from reproduce.experiments.grid import (
    CNN_KINDS,
    RunnerError,
    plan_grid,
)
from reproduce.experiments.grid_runner import (
    after_all_ranks,
    join_ranks,
    run_grid,
    run_order,
    say,
)
from reproduce.experiments.options import (
    add_common,
    add_image_folder,
    add_max_images,
    add_models_root,
    add_no_progress,
    add_offline,
    add_pretrained,
    parse_checked,
    start_device,
)
from reproduce.experiments.pipeline import check_data_root
from reproduce.experiments.published_numbers import format_rows, rows_for
from reproduce.experiments.report import report_experiments
from reproduce.experiments.results_store import ResultsStore
from reproduce.models.registry import MODELS
from reproduce.runtime.distributed import shutdown

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The runner's options, in the order --help shows them: the grid, where things are, how to run,
    the experiments other than the grid."""
    parser = _new_parser()
    _add_grid_options(parser)
    _add_folder_options(parser)
    _add_run_options(parser)
    _add_other_experiments(parser)
    add_image_folder(parser)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and the published rows; run nothing")
    parser.add_argument("--table", action="store_true",
                        help="print the table of every run in the results file; run nothing")
    add_no_progress(parser)
    parser.add_argument("--report", action="store_true",
                        help="after the grid, write an HTML report of each interpretable run beside its checkpoints "
                             "(<run>/report/index.html, reproduce.report), with the ordinary CNN of its cell side by side")
    return parser


def _new_parser() -> argparse.ArgumentParser:
    """The parser with the module docstring as description and the epilog on the published figures."""
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
    return parser


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    """What the grid runs: datasets, categories, models, CNN kinds, and the training settings."""
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


def _add_folder_options(parser: argparse.ArgumentParser) -> None:
    """Where the results, the datasets and the models are."""
    add_out(parser, "output/paper", "output folder (default output/paper)")
    parser.add_argument("--results", default=None,
                        help="results file, .json (default OUT/results.json; the .csv is written beside it)")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else OUT/data); ../shared/data's "
                               "layout (truth files under original/) is recognised")
    parser.add_argument("--truth-dir", default=None, help="folder of <category>/truth_partNN.mat (override)")
    parser.add_argument("--neg-dir", default=None, help="folder of the 1000 negatives (override)")
    parser.add_argument("--image-dir", default=None, help="conf.data.imgdir (override)")
    add_models_root(parser)
    add_pretrained(parser, help="'auto' (the model's MatConvNet ImageNet file, downloaded when missing; none for "
                                "tiny and alexnet-narrow), 'none' (random trunk), or a model file")
    add_offline(parser)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """How the grid runs: redoing, resuming, the controls and what else each run records or writes."""
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
    add_max_images(parser, help="celeba: at most N images of each partition (training, validation; default all)")
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


def _add_other_experiments(parser: argparse.ArgumentParser) -> None:
    """--ablation and --pretrain-finetune: other experiments over the grid's cells."""
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


def _command(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m reproduce.paper " + " ".join(shlex.quote(a) for a in args)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.paper`: plan the grid, run what is missing, print the tables. Options are
    checked as they are parsed; errors are one or two lines (legacy_compat.cli.run_cli). Under torchrun
    (``--nproc_per_node K``, one process per GPU) the grid's runs are spread over the K processes,
    one run per GPU at a time."""
    args = parse_checked(build_parser(), argv)
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
        say(format_runs(records) + "\n\n" + format_comparison(comparison_rows(records)))
        return 0
    args.device = start_device(args)
    rank, world = join_ranks(args)
    if rank > 0 and args.dry_run:
        return 0
    runs = plan_grid(args)
    if args.dry_run:
        done = store.finished()
        for e in runs:
            state = "done" if e.run_id in done and not args.force else "to run"
            say(f"{state:7s} {e.run_id}   ({e.exp_dir})")
        for dataset, model, scope, first in dict.fromkeys((e.dataset, e.model, e.scope, e.categories[0])
                                                          for e in runs):
            say(f"{dataset} {model} {scope} ({first}): " + format_rows(rows_for(dataset, model, first, scope)))
        return 0
    if args.ablation or args.pretrain_finetune:
        bad = sorted({e.dataset for e in runs if e.facts.whole_images})
        if bad:
            raise RunnerError(f"--ablation / --pretrain-finetune measure location instability on a category's "
                              f"annotated objects, which {' and '.join(bad)} do{'es' if len(bad) == 1 else ''} "
                              f"not have")
        return run_ablation_cells(args, runs, _command(argv))
    if args.part_interpretability and not all(has_part_regions(e.dataset, e.image_folder and e.image_folder.part_masks)
                                              for e in runs):
        raise RunnerError("--part-interpretability needs part regions: the toy dataset, vocpart, or --images with "
                          "--part-masks")
    say(f"reproduce.paper: {len(runs)} runs, device {args.device}, results {store.path}"
        + (f" (rank {rank} of {world}: one run at a time, taking the next free one)" if world > 1 else ""))

    for exp in {(e.dataset, e.data_root): e for e in runs}.values():
        check_data_root(exp)
    with folder_lock(Path(args.out), _command(argv)):           # one runner per output folder (rank 0 holds it)
        records, failed = run_grid(args, runs, store, _command(argv), run_order(world, len(runs)))
    if world > 1:
        records, failed = after_all_ranks(runs, store, failed, rank)
        if rank > 0:
            return 1 if failed else 0
    if args.report:
        report_experiments(runs, progress=not args.no_progress, say=say)
    say("\n" + format_runs(records) + "\n\n" + format_comparison(comparison_rows(records)))
    if failed:
        say(f"\n{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
