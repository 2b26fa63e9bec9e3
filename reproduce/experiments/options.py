"""The command lines' shared parts for reproduce and demo.py: `legacy_compat.cli`'s option types,
flags and error handling (re-exported here), plus `start_device`, which turns --device and
--allow-tf32 into the device a run uses.

Not a port of an original file. Every command line of the package (demo.py, reproduce.train,
reproduce.paper, reproduce.bench.*, legacy_compat.parity) takes its
--device (default auto), --allow-tf32, --debug, --out and --data-root from these helpers and
runs its body through `run_cli`, so an error is one or two lines and an exit status
(`legacy_compat.cli`'s module docstring lists them), with a traceback only under --debug.
"""
from __future__ import annotations

import argparse

from data_prep.facts import DATASETS, DEFAULT_DATASET, IMAGES_CATEGORY, IMAGES_DATASET
from data_prep.images import ImageFolder
from legacy_compat.cli import (
    ALLOW_TF32_HELP,
    DEBUG_HELP,
    DEVICE_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MISSING_DATA,
    EXIT_USAGE,
    UserError,
    add_allow_tf32,
    add_data_root,
    add_debug,
    add_device,
    add_out,
    describe_error,
    device_name,
    dropout_rate,
    float_in,
    int_at_least,
    nonnegative_int,
    positive_int,
    run_cli,
)
from reproduce.runtime.device import choose_device, set_tf32

__all__ = ["ALLOW_TF32_HELP", "DEBUG_HELP", "DEVICE_HELP", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_MISSING_DATA",
           "EXIT_USAGE", "UserError", "add_allow_tf32", "add_data_root", "add_debug", "add_device", "add_out",
           "describe_error", "device_name", "dropout_rate", "float_in", "int_at_least", "nonnegative_int",
           "positive_int", "run_cli", "start_device", "add_common", "add_image_folder", "image_folder_option",
           "IMAGE_FOLDER_OPTIONS"]


def add_common(parser: argparse.ArgumentParser, *, tf32: bool = True) -> None:
    """--device (default auto), --allow-tf32 (unless `tf32` is False) and --debug."""
    add_device(parser)
    if tf32:
        add_allow_tf32(parser)
    add_debug(parser)


def add_toy_run_options(parser: argparse.ArgumentParser, out_default: str) -> None:
    """--out, --data-root, --toy-images and --no-progress of the experiment command lines that run
    on the toy dataset by default (reproduce.ablation, reproduce.pretrain)."""
    add_out(parser, out_default, f"results and checkpoints folder (default {out_default})")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else output/data)")
    parser.add_argument("--toy-images", type=positive_int, default=None, metavar="N",
                        help="toy dataset size: N positives per category and N negatives (default the toy's "
                             "1500/1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def toy_size_options(toy_images: int | None) -> dict:
    """data_prep.toy.generate_toy_dataset's size options: its defaults unless --toy-images N."""
    return {} if toy_images is None else {"n_pos": int(toy_images), "n_neg": int(toy_images)}


def start_device(args: argparse.Namespace, auto: str | None = None) -> str:
    """The device of the run: --device checked (`choose_device`; 'auto' gives `auto` when given,
    else cuda when PyTorch sees a GPU, else cpu), with --allow-tf32's choice applied."""
    set_tf32(bool(getattr(args, "allow_tf32", False)))
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
