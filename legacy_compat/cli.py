"""What every command line of the package shares: option types that check values as they are
parsed, the common flags (one default and one help text each), and `run_cli`, which turns the
package's errors into one or two lines and an exit status.

Not a port of an original file (the original has no command lines). It lives in legacy_compat,
the bottom layer, so that every command line can use it: `legacy_compat.parity` (which imports
nothing above legacy_compat), data_prep's and reproduce's (`reproduce.cli` adds the device and
TF32 handling that needs torch).

Exit statuses of every command line:

    0    done
    1    the work failed (a write that failed, a disk that filled, a bug)
    2    refused before any work: an option, a combination of options, a file given as input,
         a folder another run is using, a checkpoint of another run (the message says what to do)
    3    the data is not all there (demo.py, reproduce.paper: the list of what is missing)
    130  interrupted (Ctrl-C)

Errors are printed as ``<prog>: <message>``; a traceback only with ``--debug``.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from typing import Callable

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "EXIT_MISSING_DATA", "EXIT_INTERRUPTED", "UserError", "DeviceNameError", "NoSuchDeviceError",
           "int_at_least", "positive_int", "nonnegative_int", "float_in", "dropout_rate", "device_name",
           "add_debug", "add_device", "add_allow_tf32", "add_out", "add_data_root", "choose_device",
           "describe_error", "run_cli", "is_disk_full", "DEVICE_HELP", "ALLOW_TF32_HELP", "DEBUG_HELP"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING_DATA = 3
EXIT_INTERRUPTED = 130

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default auto: cuda when PyTorch sees a GPU, else cpu)"
ALLOW_TF32_HELP = ("let CUDA convolutions and matrix products use TF32 (faster on Ampere and later GPUs; the "
                   "numbers are then no longer MATLAB's IEEE float32 ones, up to 1.6e-3 apart (relative) on an "
                   "H100). Default: off")
DEBUG_HELP = "on an error, print the whole traceback (by default one or two lines say what went wrong)"


class UserError(Exception):
    """A problem the user can fix, said in one or two lines naming the file, field or option and
    what to do. `exit_status`: 2 (refused before any work) unless a subclass says otherwise."""

    exit_status = EXIT_USAGE


class DeviceNameError(UserError, ValueError):
    """--device is not a device name."""


class NoSuchDeviceError(UserError, RuntimeError):
    """--device names a GPU this machine does not have."""


# ------------------------------------------------------------------ option types (argparse `type=`)
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (either end open on request); NaN and
    infinities are refused."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {left}{low:g}, {high:g}{right}, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low) \
                or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"expected a number in {left}{low:g}, {high:g}{right}, got {text}")
        return value
    parse.__name__ = f"number in {left}{low:g}, {high:g}{right}"
    return parse


#: dropout rate: the probability of zeroing an activation; 1 zeroes everything (and MatConvNet's
#: vl_nndropout divides by 1 - rate), so it is refused with everything outside [0, 1).
dropout_rate = float_in(0.0, 1.0, high_open=True)


def device_name(text: str) -> str:
    """An argparse type: 'auto', 'cpu', 'cuda' or 'cuda:N' (whether the GPU exists is checked by
    `choose_device` when the command starts)."""
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N (or auto)")


def choose_device(name: str | None) -> str:
    """'auto' (or None): cuda when PyTorch sees a GPU, else cpu; a CUDA device without a GPU (or
    past the last one) is a `UserError`. torch is imported here, not at import time."""
    import torch  # noqa: PLC0415 - deferred on purpose: legacy_compat needs no torch (only this check does)
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_name(name)
    except argparse.ArgumentTypeError as exc:
        raise DeviceNameError(f"--device {exc}") from None
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NoSuchDeviceError(f"--device {name} asked for, but PyTorch sees no CUDA GPU here "
                            f"(torch {torch.__version__}); use --device cpu")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise NoSuchDeviceError(f"--device {name} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    return name


# ------------------------------------------------------------------ the shared flags
def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def add_device(parser: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    parser.add_argument("--device", type=device_name, default="auto", help=help)


def add_allow_tf32(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-tf32", action="store_true", help=ALLOW_TF32_HELP)


def add_out(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument("--out", default=default, help=help)


def add_data_root(parser: argparse.ArgumentParser, default: str | None = None,
                  help: str = "datasets folder (default $ICNN_DATA_ROOT, else OUT/data)") -> None:
    parser.add_argument("--data-root", default=default, help=help)


# ------------------------------------------------------------------ errors -> message and status
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit status, message) for an error that reached a command line's top."""
    if isinstance(exc, UserError):
        return int(getattr(exc, "exit_status", EXIT_USAGE)), str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _describe_os_error(exc)
    if isinstance(exc, OSError):       # an OSError subclass raised with a message only
        return EXIT_FAILED, str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return EXIT_FAILED, (f"unexpected error {type(exc).__name__}: {first[:300]} "
                         f"(run again with --debug for the traceback)")


def _describe_os_error(exc: OSError) -> tuple[int, str]:
    where = exc.filename if exc.filename is not None else ""
    what = f"{where}: " if where else ""
    if exc.errno == errno.ENOSPC:
        return EXIT_FAILED, (f"disk full: {what}{exc.strerror or 'no space left on device'}. Free some space "
                             f"(or choose another --out) and run the same command again: finished epochs are kept")
    if exc.errno in _NOT_WRITABLE:
        return EXIT_USAGE, f"cannot write {what or 'a file'}({exc.strerror}); choose a folder you can write to"
    if exc.errno == errno.ENOENT:
        return EXIT_USAGE, f"{what}no such file or folder"
    return EXIT_FAILED, f"{what}{exc.strerror or exc}"


def run_cli(prog: str, body: Callable[[], int], *, debug: bool = False, interrupted: str = "") -> int:
    """Run a command line's `body`; an error becomes ``<prog>: <message>`` on stderr and its exit
    status (`describe_error`), or its traceback with `debug`. Ctrl-C gives 130 and `interrupted`."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error ends here as a message and a status
        if debug:
            raise
        status, text = describe_error(exc)
        print(f"{prog}: {text}", file=sys.stderr, flush=True)
        return status


def is_disk_full(exc: BaseException, folder: os.PathLike | str) -> bool:
    """Whether a failed write into `folder` failed because its disk is full: an ENOSPC error, or
    (libraries such as torch.save report a short write as their own RuntimeError) no free block
    left on the disk holding `folder`."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        st = os.statvfs(os.fspath(folder))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024
