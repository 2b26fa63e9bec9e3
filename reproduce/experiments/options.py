"""The command lines' shared options and their checks, in one place, for reproduce and demo.py:
on top of `legacy_compat.cli` (the option types, flags, exit codes and `run_cli`: import them from
there), the options several command lines share (--device, --allow-tf32, --threads, --debug, --no-progress,
--offline, --models-root, --pretrained, --max-images, --toy-images, --images DIR ...), one set of
checks of what goes with which dataset (`run_option_problem`, `parse_checked`), and
`start_device`, which turns --device, --allow-tf32 and --threads into the device a run uses.

Not a port of an original file. Every command line of the package (demo.py, reproduce.train,
reproduce.paper, reproduce.ablation, reproduce.pretrain, reproduce.realimages, reproduce.report,
reproduce.bench.*) takes these options from the helpers here (legacy_compat.parity, which imports
nothing above legacy_compat, takes legacy_compat.cli's) and runs its body through `run_cli`, so an
error is one or two lines and an exit status (`legacy_compat.cli`'s module docstring lists them),
with a traceback only under --debug.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from data_prep.facts import DATASETS, DEFAULT_DATASET, IMAGES_CATEGORY, IMAGES_DATASET, dataset_facts, datasets_with
from data_prep.images import ImageFolder
from legacy_compat.cli import (
    DEVICE_HELP,
    UserError,
    add_allow_tf32,
    add_data_root,
    add_debug,
    add_device,
    add_out,
    positive_int,
)
from reproduce.experiments.pipeline import dataset_option_error, save_mat_error
from reproduce.layers.losses import single_class_loss_error
from reproduce.runtime.device import choose_device, set_tf32

__all__ = ["start_device", "add_common", "add_image_folder", "image_folder_option", "IMAGE_FOLDER_OPTIONS",
           "THREADS_HELP", "MODELS_ROOT_HELP", "add_threads", "add_no_progress", "add_offline", "add_models_root",
           "add_pretrained", "add_max_images", "add_toy_images", "add_toy_run_options", "toy_size_options",
           "run_option_problem", "parse_checked"]

THREADS_HELP = ("CPU threads for PyTorch (torch.set_num_threads; default its own choice; on a CPU shared with "
                "other jobs 1 was 5x faster than 2 here)")
MODELS_ROOT_HELP = "folder of the MatConvNet ImageNet models (default $ICNN_MODELS_ROOT or output/nets)"


def add_common(parser: argparse.ArgumentParser, *, tf32: bool = True, device_help: str = DEVICE_HELP) -> None:
    """--device (default auto), --allow-tf32 (unless `tf32` is False), --threads and --debug: every command
    line's (`start_device` applies them)."""
    add_device(parser, help=device_help)
    if tf32:
        add_allow_tf32(parser)
    add_threads(parser)
    add_debug(parser)


def add_threads(parser: argparse.ArgumentParser) -> None:
    """--threads N: torch.set_num_threads (applied by `start_device`)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP)


def add_no_progress(parser: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    """--no-progress: no progress bars (for logs and CI)."""
    parser.add_argument("--no-progress", action="store_true", help=help)


def add_offline(parser: argparse.ArgumentParser, help: str = "download nothing; say what is missing") -> None:
    """--offline: download nothing."""
    parser.add_argument("--offline", action="store_true", help=help)


def add_models_root(parser: argparse.ArgumentParser, help: str = MODELS_ROOT_HELP) -> None:
    """--models-root DIR: where the MatConvNet ImageNet models are (data_prep.setup.ensure_model)."""
    parser.add_argument("--models-root", default=None, help=help)


def add_pretrained(parser: argparse.ArgumentParser, help: str, default: str = "auto") -> None:
    """--pretrained: 'auto' (the model's MatConvNet file), 'none' (random trunk) or a model file."""
    parser.add_argument("--pretrained", default=default, help=help)


def add_max_images(parser: argparse.ArgumentParser, help: str) -> None:
    """--max-images N: at most N images of each partition, for the datasets that take it (image_limit)."""
    parser.add_argument("--max-images", type=positive_int, default=None, metavar="N", help=help)


def add_toy_images(parser: argparse.ArgumentParser, help: str = argparse.SUPPRESS) -> None:
    """--toy-images N: a toy dataset of N positives per category and N negatives (hidden unless `help`)."""
    parser.add_argument("--toy-images", type=positive_int, default=None, metavar="N", help=help)


def run_option_problem(dataset: str, *, model: str | None = None, multiclass: bool = False,
                       loss: str = "ourloss_logistic", save_mat: bool = False, toy_images: int | None = None,
                       max_images: int | None = None) -> str | None:
    """What does not go with the dataset (or the model), said before any work, or None: --toy-images for a
    dataset that is not generated, --max-images for one that takes no image limit, the dataset's own
    rules (`pipeline.dataset_option_error`: one net per category, attribute labels), --save-mat with a
    net that has no MATLAB form (`pipeline.save_mat_error`). Every command line asks this one function."""
    facts = dataset_facts(dataset)
    if toy_images is not None and not facts.generated:
        return f"--toy-images is for the {' and '.join(datasets_with('generated'))} dataset, not {dataset!r}"
    if max_images is not None and not facts.image_limit:
        return f"--max-images is for the {' and '.join(datasets_with('image_limit'))} dataset, not {dataset!r}"
    if (problem := dataset_option_error(dataset, multiclass, loss)) is not None:
        return problem
    return save_mat_error(model, save_mat) if model is not None else None


def parse_checked(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  multiclass_how: str = "--multiclass") -> argparse.Namespace:
    """`parser.parse_args(argv)`, then the checks every command line with --loss makes as argparse refuses a
    bad value (usage, exit status 2): --loss softmaxlog needs a multi-class net (`single_class_loss_error`;
    `multiclass_how` says how this command line asks for one)."""
    args = parser.parse_args(argv)
    if hasattr(args, "loss"):
        multiclass = args.multiclass if hasattr(args, "multiclass") else len(getattr(args, "category", [])) > 1
        if (problem := single_class_loss_error(args.loss, multiclass, multiclass_how)) is not None:
            parser.error(problem)
    return args


def add_toy_run_options(parser: argparse.ArgumentParser, out_default: str) -> None:
    """--out, --data-root, --toy-images and --no-progress of the experiment command lines that run
    on the toy dataset by default (reproduce.ablation, reproduce.pretrain)."""
    add_out(parser, out_default, f"results and checkpoints folder (default {out_default})")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else output/data)")
    add_toy_images(parser, help="toy dataset size: N positives per category and N negatives (default the toy's "
                                "1500/1000)")
    add_no_progress(parser)


def toy_size_options(toy_images: int | None) -> dict:
    """data_prep.toy.generate_toy_dataset's size options: its defaults unless --toy-images N."""
    return {} if toy_images is None else {"n_pos": int(toy_images), "n_neg": int(toy_images)}


def start_device(args: argparse.Namespace, auto: str | None = None) -> str:
    """The device of the run: --device checked (`choose_device`; 'auto' gives `auto` when given,
    else cuda when PyTorch sees a GPU, else cpu), with --allow-tf32's and --threads' choices applied."""
    set_tf32(bool(getattr(args, "allow_tf32", False)))
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    name = getattr(args, "device", "auto")
    return choose_device(auto if name == "auto" and auto else name)


#: The options of a folder of your own images (data_prep.images), as argparse dests.
IMAGE_FOLDER_OPTIONS = ("boxes", "landmarks", "part_masks", "negatives")


def add_image_folder(parser: argparse.ArgumentParser) -> None:
    """--images DIR and its --boxes, --landmarks, --part-masks, --negatives (data_prep.images)."""
    group = parser.add_argument_group(
        "your own images (data_prep.images; not in the original)",
        "an interpretable CNN for any folder of pictures of one category: the dataset 'images', category\n"
        "'images', the 1000 shared negatives of the data root (fetched as for every category). Location\n"
        "stability needs --landmarks; without it the run says 'not measured: no landmarks'.")
    group.add_argument("--images", default=None, metavar="DIR",
                       help="positives: every JPEG/PNG under DIR (nested folders too), the whole image as the "
                            "object unless --boxes")
    group.add_argument("--boxes", default=None, metavar="FILE",
                       help="the objects: a CSV image,xmin,ymin,xmax,ymax (image relative to DIR; 1-based, "
                            "inclusive pixels, as the original's bndbox; several rows of one image: several "
                            "objects), or a folder of Pascal VOC XML files")
    group.add_argument("--landmarks", default=None, metavar="FILE",
                       help="part positions: a CSV image,part,row,col (part 1, 2, ...; row and col 1-based "
                            "pixels of the original image): location stability is measured on them")
    group.add_argument("--part-masks", default=None, metavar="DIR",
                       help="part label maps: DIR/<image path>.png of the image's size, 0 background, k part k "
                            "(part interpretability)")
    group.add_argument("--negatives", default=None, metavar="DIR",
                       help="your own negatives (every JPEG/PNG under DIR) instead of the 1000 shared ones")


def image_folder_option(args: argparse.Namespace) -> ImageFolder | None:
    """The `ImageFolder` that --images and its options name (None without --images), with args' dataset and
    category set to 'images' (demo.py's --dataset / --category, reproduce.paper's --dataset / --categories);
    a UserError, before any work, for what does not go with it."""
    given = [f"--{name.replace('_', '-')}" for name in IMAGE_FOLDER_OPTIONS if getattr(args, name, None)]
    dataset = getattr(args, "dataset", None)
    names = [dataset] if isinstance(dataset, str) else list(dataset or [])
    if not getattr(args, "images", None):
        if given:
            raise UserError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --images DIR")
        if any(DATASETS[n].own_folder for n in names if n in DATASETS):
            raise UserError(f"dataset {IMAGES_DATASET!r} is a folder of your own pictures: give it with --images DIR")
        return None
    paper_default = isinstance(dataset, list) and names == [DEFAULT_DATASET]     # reproduce.paper's default
    if names and names != [IMAGES_DATASET] and not paper_default:
        raise UserError(f"--images DIR is its own dataset ('images'): drop --dataset {' '.join(names)}")
    key = "categories" if hasattr(args, "categories") else "category"
    if getattr(args, key, None) not in (None, [IMAGES_CATEGORY]):
        raise UserError(f"--images DIR is one category, {IMAGES_CATEGORY!r}: drop --{key}")
    if getattr(args, "multiclass", False):
        raise UserError("--images DIR is one category: drop --multiclass")
    args.dataset = [IMAGES_DATASET] if isinstance(dataset, list) else IMAGES_DATASET
    setattr(args, key, [IMAGES_CATEGORY])
    return ImageFolder(args.images, **{name: getattr(args, name, None) for name in IMAGE_FOLDER_OPTIONS})
