"""demo.m in Python: learn an interpretable CNN, then show its results.

    python demo.py --quick          # offline: toy dataset, tiny net, CPU, a few minutes
    python demo.py                  # demo.m's defaults: ILSVRC part fox, vgg-vd-16, dropout 0.8
    python demo.py --help           # every option
    torchrun --standalone --nproc_per_node 2 demo.py --quick    # 2 processes (GPUs), one result line

demo.m's settings are the options (dataset, category, model, dropout rate,
multi-class with its loss) with demo.m's values as defaults; its steps are the
same: set up the data and the pretrained model (downloading what is missing,
or saying exactly what is missing when offline), learn the ICNN
(learn_icnn.m / learn_icnn_multiclass.m), show results (showResults.m: binary
error, location stability, receptive-field drawings). The last line is
demo.m's `binary error <x>     location stability <y>`, followed by the
paper's figures for the same dataset and model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from data_prep import download
from data_prep.facts import DATASETS, all_categories, dataset_facts, default_category, has_parts
from data_prep.setup import default_data_root
from legacy_compat.cli import UserError, add_data_root, add_out, dropout_rate, nonnegative_int, positive_int, run_cli
from legacy_compat.runlock import folder_lock
from reproduce.evaluation.net_evaluation import load_net_for_evaluation
from reproduce.evaluation.net_features import net_input_size
from reproduce.experiments.ablation import format_table, run_ablation, summarise
from reproduce.experiments.options import (
    add_common,
    add_image_folder,
    add_max_images,
    add_models_root,
    add_no_progress,
    add_offline,
    add_pretrained,
    add_toy_images,
    image_folder_option,
    parse_checked,
    run_option_problem,
    start_device,
    toy_size_options,
)
from reproduce.experiments.pipeline import (
    Experiment,
    build_imdb,
    check_data_root,
    check_resume_early,
    imdb_build_bytes,
    input_size,
    ordinary_counterpart,
    prepare_dataset,
    run_experiment,
    show_results,
    write_test,
)
from reproduce.experiments.published_numbers import format_rows, rows_for
from reproduce.experiments.report import report_run_dir
from reproduce.models.registry import MODELS
from reproduce.runtime import distributed as dd
from reproduce.runtime.device import choose_device
from reproduce.runtime.distributed import add_arguments, is_main, shutdown
from reproduce.training.cnn_train import validation_error

# Before torch loads its OpenMP runtime (libgomp in the Linux wheels): idle OpenMP threads spin for
# 30000 rounds, not libgomp's default 300000, before they sleep. On a small machine shared with other
# work, long-spinning threads fight for the cores. Measured on 2 cores, one training batch of the tiny
# net: alone 52 ms (default) / 55 ms (30000) / 69 ms (OMP_WAIT_POLICY=PASSIVE); beside two busy
# processes 1183 / 137 / 168 ms. Setting OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself overrides this.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")

# --quick: the toy dataset's default size (1500 positives of toy01 + 1000 negatives -> an imdb of
# 4000 images, 3600 for training), the tiny net, 8 epochs (its lr schedule: the first 8 of
# network_init.m's logspace(-4, -5, 10) x lrMag), dropout 0.5 instead of demo.m's 0.8 (the tiny
# head has 128 fc channels, not 4096). Measured on an idle 2-core CPU: about 90 s for --quick and
# 140 s with --baseline (toy dataset generated in both), both nets to a validation error <= 1.5 %.
QUICK = {"dataset": "toy", "categories": ["toy01"], "model": "tiny", "dropout": 0.5, "epochs": 8,
         "device": "cpu", "out": "output/quick"}
# --quick with a torchvision trunk (resnet-18, resnet-50, densenet-121; random init, nothing downloaded): toy
# images at 64 x 64 (the conv_mask maps are 4 x 4 for the ResNets, 2 x 2 for DenseNet-121), 100 positives and
# 100 negatives (an imdb of 400), 3 epochs, the learning rates x 10 (1e-2, 7.7e-3, 6.0e-3). At network_init's
# rates (1e-3 ..) the randomly initialised resnet-18 still calls everything positive after 4 epochs
# (validation error 0.25); x 10 gave 0.05 and 0.075 after epoch 3 in two runs (0.125 after a 4th). README: time.
QUICK_TORCHVISION = {"image_size": 64, "toy_images": 100, "epochs": 3, "learning_rate_scale": 10.0}
DEMO_DEFAULTS = {"dataset": "ilsvrcanimalpart", "categories": ["n02118333"], "model": "vgg-vd-16",
                 "dropout": 0.8, "epochs": None, "device": None, "out": "output"}
LOSSES = {"logistic": "ourloss_logistic", "softmaxlog": "ourloss_softmaxlog"}


def _lists() -> tuple[dict, list[str]]:
    categories = {name: list(all_categories(name)) for name in DATASETS}
    return categories, list(MODELS)


def build_parser() -> argparse.ArgumentParser:
    """demo.py's options, in --help's order: demo.m's settings, where things are, --net's, training's."""
    parser = _new_parser()
    _add_demo_settings(parser)
    _add_folder_options(parser)
    _add_net_options(parser)
    _add_training_options(parser)
    add_image_folder(parser)
    add_arguments(parser)
    # hidden, for tests and smoke runs: a smaller toy dataset (N positives per category and N negatives)
    add_toy_images(parser)
    return parser


def _new_parser() -> argparse.ArgumentParser:
    """The parser, with the module docstring and the categories of each dataset."""
    categories, _ = _lists()
    return argparse.ArgumentParser(
        prog="python demo.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        epilog="categories:\n"
               f"  ilsvrcanimalpart: {' '.join(categories['ilsvrcanimalpart'])}\n"
               f"  vocpart:          {' '.join(categories['vocpart'])}\n"
               "  cub200:           cub200\n"
               "  helen:            face\n"
               "  celeba:           its 40 attributes (5_o_Clock_Shadow ... Young; --multiclass: all 40 in one net)\n"
               f"  voc2010_crop:     {' '.join(categories['voc2010_crop'])} (no parts: binary error only)\n"
               f"  toy:              {' '.join(categories['toy'])} (generated offline)\n\n"
               "outputs (under --out): mat/<category>/ (imdb cache, net-epoch-N.pt checkpoints, "
               "net-train.png), mat/<category>-ordinary/ (with --baseline), draw_RF/ (receptive fields "
               "and a contact sheet).\n"
               "Running the same command again resumes training from the last checkpoint.")


def _add_demo_settings(parser: argparse.ArgumentParser) -> None:
    """demo.m's settings: dataset, category, model, dropout rate, multi-class and its loss (and --quick)."""
    categories, models = _lists()
    parser.add_argument("--quick", action="store_true",
                        help="the embedded default: generate the toy dataset, train the tiny net on the CPU "
                             f"({QUICK['epochs']} epochs) and show results, all offline "
                             "(other options still override)")
    parser.add_argument("--dataset", choices=list(categories), default=None,
                        help="dataset (demo.m: 'ilsvrcanimalpart', 'vocpart', 'cub200'; plus 'toy', and 'helen', "
                             "'celeba', 'voc2010_crop': manual downloads, see README); default ilsvrcanimalpart")
    parser.add_argument("--category", nargs="+", default=None, metavar="C",
                        help="category (default n02118333, the fox); several with --multiclass; "
                             "the valid ones are listed below")
    parser.add_argument("--model", choices=models, default=None,
                        help="network (default vgg-vd-16; 'tiny' is the package's small CPU net)")
    parser.add_argument("--dropout", type=dropout_rate, default=None,
                        help="dropout rate, 0 <= rate < 1 (demo.m: 0.8; --quick: 0.5)")
    parser.add_argument("--multiclass", action="store_true",
                        help="learn one CNN for several categories (learn_icnn_multiclass.m); "
                             "vocpart defaults to its six animals, as demo.m; celeba to its 40 attributes")
    parser.add_argument("--loss", choices=list(LOSSES), default="logistic",
                        help="loss of a multi-class CNN (demo.m's lossType; default logistic)")
    add_common(parser, device_help="cpu, cuda, cuda:N or auto (default auto: cuda when PyTorch sees a GPU, else "
                                   "cpu; --quick: cpu unless a device is named)")


def _add_folder_options(parser: argparse.ArgumentParser) -> None:
    """Where the output, the datasets and the models are, and whether to download."""
    add_out(parser, None, "output folder (default ./output; --quick: ./output/quick)")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else OUT/data: under the output folder)")
    add_models_root(parser)
    add_pretrained(parser, help="'auto' (the model's MatConvNet file, downloaded when missing), 'none' "
                                "(random trunk), or a model file")
    add_offline(parser, help="download nothing: say exactly what is missing, from where, and where it goes")


def _add_net_options(parser: argparse.ArgumentParser) -> None:
    """--net: show results for a trained net instead of training one."""
    parser.add_argument("--net", default=None, metavar="PATH",
                        help="skip training: show results for a trained net, a net-epoch-N.mat written by "
                             "the original MATLAB code or this package's net-epoch-N.pt")
    parser.add_argument("--imdb", default=None, metavar="PATH",
                        help="with --net: the imdb whose dataMean the net was trained with (the original's "
                             "imdb.mat, or this package's imdb cache folder); default: build or reuse ours")
    parser.add_argument("--measure-error", action="store_true",
                        help="with --net: also measure the binary error on the imdb's validation images (the "
                             "line showResults.m prints shows the error the checkpoint recorded for its last "
                             "epoch, not a measured one)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """What training runs and writes beside the ICNN: the baseline, epochs, seed, checkpoints, drawings."""
    parser.add_argument("--baseline", action="store_true",
                        help="also train the ordinary CNN (plain conv layers instead of conv_mask, trained "
                             "the same way) and print the two side by side; then the ablation table (reproduce.ablation): "
                             "also the ICNN trained without the filter loss, every net before and after "
                             "training, the ICNNs also with their masks off, with binary error, location "
                             "instability and part interpretability (single-category toy or VOC runs)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="number of epochs (default: the original's 50, multi-class 80; --quick: "
                             f"{QUICK['epochs']})")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (weights, batch order)")
    add_max_images(parser, help="celeba: at most N images of each partition (training, validation) in the imdb and "
                                "the evaluation (default all: 182,637 images, about 110 GB at 224 x 224)")
    parser.add_argument("--save-mat", action="store_true",
                        help="also write MATLAB net-epoch-N.mat checkpoints")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="resume from checkpoints in the output folder although they were written with other "
                             "options (dataset, category, model, dropout, seed ...; each difference is said); "
                             "without it such a folder stops the run before any work")
    parser.add_argument("--no-draw", action="store_true", help="skip the receptive-field drawings")
    add_no_progress(parser, help="no progress bars (as every command line of the package; for logs and CI)")
    parser.add_argument("--report", action="store_true",
                        help="at the end, write OUT/report/index.html (reproduce.report): every filter of the measured "
                             "layer with its top images, receptive fields, location instability and part "
                             "interpretability, side by side with the ordinary CNN under --baseline; it opens from "
                             "the file system (no server, no network)")
    parser.add_argument("--fix-slicemag-quirk", action="store_true",
                        help="use the corrected sliceMag update instead of the original's column-1 quirk")


#: options that mean nothing with --net (it trains nothing) or without it
_NET_ONLY = ("imdb", "measure_error")
_TRAINING_ONLY = ("baseline", "epochs", "save_mat", "fix_slicemag_quirk", "resume_anyway", "report")


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, as argparse refuses a bad value (usage, exit status 2), the combinations that make no sense."""
    given = lambda name: getattr(args, name) not in (None, False)  # noqa: E731
    if args.net is None:
        for name in _NET_ONLY:
            if given(name):
                parser.error(f"--{name.replace('_', '-')} goes with --net (it is about a given trained net)")
    else:
        for name in _TRAINING_ONLY:
            if given(name):
                parser.error(f"--{name.replace('_', '-')} is a training option; --net trains nothing")


class DemoError(UserError):
    """A problem with the demo's settings or environment, said before any long work starts."""


def resolve_settings(args: argparse.Namespace) -> dict:
    """demo.m's settings from the options: --quick's, then demo.m's defaults, then what was given."""
    categories, models = _lists()
    image_folder = image_folder_option(args)          # --images DIR: dataset and category 'images'
    base = dict(QUICK if args.quick else DEMO_DEFAULTS)
    dataset = args.dataset or base["dataset"]
    if args.category:
        cats = list(args.category)
    elif dataset == base["dataset"]:
        cats = list(base["categories"])
    elif args.multiclass:
        cats = list(categories[dataset])                # demo.m's multi-class VOC run: the six animals
    else:
        cats = [default_category(dataset)]
    valid = categories[dataset]
    for c in cats:
        if c not in valid:
            other = [d for d, cs in categories.items() if c in cs]
            hint = f" ({c} is a category of {other[0]})" if other else ""
            raise DemoError(f"category {c!r} is not in dataset {dataset!r}{hint}; valid categories: "
                            f"{' '.join(valid)}")
    if len(cats) > 1 and not args.multiclass:
        raise DemoError(f"{len(cats)} categories given: add --multiclass to learn one CNN for all of them")
    if args.multiclass and len(cats) < 2:
        raise DemoError("--multiclass needs at least two categories (--category A B ...)")
    model = args.model or base["model"]
    if model not in models:
        raise DemoError(f"unknown model {model!r}; valid models: {' '.join(models)}")
    if (problem := run_option_problem(dataset, model=model, multiclass=args.multiclass, loss=args.loss,
                                      save_mat=args.save_mat, toy_images=args.toy_images,
                                      max_images=args.max_images)) is not None:
        raise DemoError(problem)
    if args.quick and MODELS[model].family == "torchvision":
        base.update(QUICK_TORCHVISION)
    toy_images = args.toy_images if args.toy_images is not None else base.get("toy_images")
    return {"dataset": dataset, "categories": cats, "model": model,
            "dropout": args.dropout if args.dropout is not None else base["dropout"],
            "epochs": args.epochs if args.epochs is not None else base["epochs"],
            "device": start_device(args, auto=base["device"]),     # --device, --allow-tf32, --threads
            "out": Path(args.out or base["out"]), "toy_images": toy_images if dataset_facts(dataset).generated else None,
            "image_size": base.get("image_size"), "learning_rate_scale": base.get("learning_rate_scale", 1.0),
            "image_folder": image_folder}


def resolve_device(device: str | None) -> str:
    """cuda when present (unless asked otherwise); asking for cuda without a GPU is an error
    (reproduce.device.choose_device, a UserError)."""
    return choose_device(device)


def check_output_folder(out: Path, needed_bytes: int) -> None:
    """Say before hours of training, not after, that the output folder is unusable or too small."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_test(out)
    except OSError as exc:
        raise DemoError(f"the output folder {out} is not writable: {exc}") from exc
    try:
        download.check_disk_space(out, needed_bytes)
    except download.InsufficientDiskSpaceError as exc:
        raise DemoError(str(exc)) from exc


def estimate_bytes(exp) -> int:
    """What a run needs free before it starts: the imdb build at its peak, unless cached
    (reproduce.pipeline.imdb_build_bytes). The checkpoints (one per epoch still to train) are
    counted once the net is built, before the imdb (reproduce.pipeline.check_space)."""
    return imdb_build_bytes(exp, input_size(exp)) + 10**6


def experiment(settings: dict, args: argparse.Namespace):
    return Experiment(dataset=settings["dataset"], categories=settings["categories"], model=settings["model"],
                      dropout=settings["dropout"], loss=LOSSES[args.loss], out=settings["out"],
                      data_root=data_root(args, settings["out"]),
                      models_root=Path(args.models_root) if args.models_root else None,
                      pretrained=args.pretrained, offline=args.offline or dataset_facts(settings["dataset"]).generated,
                      device=settings["device"], seed=args.seed, epochs=settings["epochs"],
                      save_mat=args.save_mat, fix_slicemag_quirk=args.fix_slicemag_quirk,
                      draw=not args.no_draw, toy_options=toy_size_options(settings.get("toy_images")),
                      image_size=settings.get("image_size"), resume_anyway=args.resume_anyway,
                      learning_rate_scale=settings.get("learning_rate_scale", 1.0),
                      max_images=getattr(args, "max_images", None), image_folder=settings.get("image_folder"))


def data_root(args: argparse.Namespace, out: Path) -> Path:
    """--data-root, else $ICNN_DATA_ROOT, else OUT/data: the datasets go under the output folder
    (data_prep.setup.default_data_root), never into a folder the current directory decides."""
    return Path(args.data_root) if args.data_root else default_data_root(out)


def toy_options(args: argparse.Namespace) -> dict:
    """data_prep.toy.generate_toy_dataset's size options: its defaults unless --toy-images N."""
    return toy_size_options(args.toy_images)


def show_trained_net(exp, net_path: Path, imdb_path: str | None, measure: bool = False):
    """--net: showResults.m on an existing net (MATLAB net-epoch-N.mat or this package's .pt).

    The dataMean the net was trained with comes from --imdb (the original's imdb.mat or our
    imdb cache folder), else from our own imdb of the category (built once, then reused)."""
    if not net_path.is_file():
        raise DemoError(f"--net {net_path}: no such file")
    try:
        net, stats, _ = load_net_for_evaluation(net_path, exp.device)
        size = net_input_size(net)
    except UserError as exc:          # CheckpointError, MatFileError, EvaluationError: the file is named
        raise DemoError(f"--net: {exc}. Give a net-epoch-N.pt of this package or a net-epoch-N.mat of "
                        f"the original code") from exc
    paths = prepare_dataset(exp, size[0])
    mean_data = imdb_path if imdb_path else build_imdb(exp, paths, size)
    measured = None
    if measure:
        imdb = mean_data if not imdb_path else build_imdb(exp, paths, size)
        measured = validation_error(net, imdb, exp.device)
    result = show_results(exp, net, stats, mean_data, paths)
    error_name = "top1err" if exp.loss == "ourloss_softmaxlog" else "binerr"
    if measured is not None:
        print(f"binary error measured now on the imdb's {int(measured['num'])} validation images: "
              f"{measured[error_name]:.6f}")
    print(f"note: the binary error on the next line is the one {net_path.name} recorded for its last epoch, "
          f"as showResults.m reads it{'' if measure else '; --measure-error measures it'}")
    return result


def print_comparison(ordinary, interpretable) -> None:
    print()
    print("                       binary error   location instability   learn s   show s   (lower is better)")
    for label, r in (("ordinary CNN", ordinary), ("interpretable CNN", interpretable)):
        t = r.seconds or {}
        stability = f"{r.stability:20.4f}" if r.note is None else f"{'not measured':>20s}"
        print(f"  {label:<20s} {r.binary_error:12.4f}   {stability}   {t.get('learn', float('nan')):7.0f}"
              f"   {t.get('show_results', float('nan')):6.0f}")


def run_ablation_table(exp, paths) -> str:
    """--baseline: the ablation (reproduce.ablation) for the demo's seed. The ordinary CNN and the ICNN
    are the two just trained (their checkpoints are reused); the ICNN without the filter loss is
    trained; every net is measured before and after training, each ICNN also with its masks off."""
    stage("the ablation: the ICNN without the filter loss (masks only), then every net measured before and "
          "after training (binary error, location instability, part interpretability), the ICNNs also with "
          "their masks off (beta = 0)")
    return format_table(summarise(run_ablation(exp, [exp.seed], paths)))


def stage(text: str) -> None:
    """A heading between the steps, so that the progress bars below it say whose they are."""
    print(f"\n== {text}", flush=True)


def _join_ranks(args: argparse.Namespace, device: str) -> str:
    """Under torchrun: join the other ranks (reproduce.distributed); this rank's device. Ranks other
    than 0 print nothing on stdout (errors still go to stderr), so every line appears once."""
    try:
        dp, device = dd.start_from_args(args, device)
    except dd.DistributedError as exc:
        raise DemoError(str(exc)) from None
    if dp is not None and not dp.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
    return device


def main(argv: list[str] | None = None) -> int:
    """demo.m: the options checked as they are parsed, then `run` through `run_cli` (an error is
    one or two lines and exit status 2, 1 or 3; a traceback only with --debug)."""
    parser = build_parser()
    args = parse_checked(parser, argv)
    check_combinations(parser, args)
    try:
        return run_cli("demo", lambda: run(args), debug=args.debug,
                       interrupted="run the same command again to resume from the last checkpoint.")
    finally:
        shutdown()


def run(args: argparse.Namespace) -> int:
    """demo.m after its settings: checked up front (device, output folder and its disk space, one run
    per output folder, the checkpoints there), then learn and show results."""
    start = time.perf_counter()
    settings = resolve_settings(args)
    settings["device"] = _join_ranks(args, settings["device"])
    exp = experiment(settings, args)
    exp.progress = is_main() and not args.no_progress
    check_output_folder(exp.out, estimate_bytes(exp) if args.net is None else 10**6)
    check_data_root(exp)
    with folder_lock(exp.out):
        result, ordinary, ablation = _learn_and_show(args, exp)
        if args.report and is_main():
            print(f"report: {report_run_dir(exp.out, name=exp.name, data_root=exp.data_root, device=exp.device)}")
    if ordinary is not None:
        print_comparison(ordinary, result)
    if ablation is not None:
        print(f"\nablation (reproduce.ablation; seed {exp.seed}; binary error on the validation images):")
        print(ablation)
    if result.drawing is not None:
        print(f"receptive fields: {exp.draw_dir} (contact sheet: {result.drawing.contact_sheet})")
    print(f"demo: done in {time.perf_counter() - start:.0f} s")
    print(result.line())
    scope = "multi-class" if exp.multiclass else "single-class"
    print(format_rows(rows_for(exp.dataset, exp.model, exp.categories[0], scope)))
    return 0


def _learn_and_show(args: argparse.Namespace, exp):
    """(the ICNN's RunResult, the ordinary CNN's or None, the ablation table or None): --net's
    results, or learn then show."""
    print(f"demo: dataset {exp.dataset}, {'categories' if exp.multiclass else 'category'} "
          f"{' '.join(exp.categories)}, model {exp.model}, dropout {exp.dropout:g}, device {exp.device}"
          f"{' (TF32 allowed)' if args.allow_tf32 and exp.device.startswith('cuda') else ''}, "
          f"output {exp.out}", flush=True)
    if args.net:
        return show_trained_net(exp, Path(args.net), args.imdb, args.measure_error), None, None
    for e in ([ordinary_counterpart(exp)] if args.baseline else []) + [exp]:
        check_resume_early(e)                   # a folder of another run: said before any work
    how = ("generated once, then reused" if exp.facts.generated else
           "checked: a manual download" if exp.facts.manual_download else
           "checked" if exp.offline else "downloaded when missing")
    stage(f"data: {exp.dataset} in {exp.data_root} ({how})")
    paths = prepare_dataset(exp, input_size(exp))
    ordinary = None
    if args.baseline:
        stage("the ordinary CNN (baseline): learn, then binary error and location instability")
        ordinary = run_experiment(ordinary_counterpart(exp), paths)
    stage("the interpretable CNN: learn (learn_icnn), then show results (showResults)")
    result = run_experiment(exp, paths)
    ablation = None
    if args.baseline and not exp.multiclass:
        if has_parts(exp.dataset) and not exp.facts.attribute_labels:
            ablation = run_ablation_table(exp, paths)
        else:
            print(f"ablation: not run for {exp.dataset} (it measures location instability and part "
                  f"interpretability on the category's annotated objects, which {exp.dataset} does not have)")
    return result, ordinary, ablation


if __name__ == "__main__":
    sys.exit(main())
