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

from .device import choose_device, set_tf32

__all__ = ["ALLOW_TF32_HELP", "DEBUG_HELP", "DEVICE_HELP", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_MISSING_DATA",
           "EXIT_USAGE", "UserError", "add_allow_tf32", "add_data_root", "add_debug", "add_device", "add_out",
           "describe_error", "device_name", "dropout_rate", "float_in", "int_at_least", "nonnegative_int",
           "positive_int", "run_cli", "start_device", "add_common"]


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
