"""The device a run uses, and its float32 arithmetic.

Not a port of an original file: MatConvNet computes in IEEE single precision
on the CPU and on the GPU (gpuArray single). PyTorch, on Ampere and later
GPUs, lets cuDNN convolutions use TF32 by default (inputs rounded to a 10-bit
mantissa): on an H100 that moved the port's conv_mask outputs and gradients
up to 1.6e-3 (relative) away from the golden MATLAB numbers, where IEEE
float32 stays within 1e-5. So every run this package starts on a CUDA device
goes through `resolve_device`, which switches TF32 off for convolutions and
matrix products, unless TF32 was asked for with `set_tf32(True)` (the command
lines' ``--allow-tf32``: faster, no longer MATLAB's numbers).

These are PyTorch's process-wide flags (``torch.backends.cudnn.allow_tf32``,
``torch.backends.cuda.matmul.allow_tf32``): a program that builds its own
loop around the package's modules, without `resolve_device`, gets PyTorch's
defaults unless it calls `set_tf32(False)` itself.
"""
from __future__ import annotations

from typing import Any

import torch

from legacy_compat.cli import choose_device as _choose_device

__all__ = ["resolve_device", "choose_device", "module_device", "set_tf32", "tf32_allowed"]

_TF32 = {"allowed": False}      # the package's choice, applied by resolve_device / set_tf32


def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False, the package's default) TF32 in CUDA convolutions and matrix
    products, now and in every later `resolve_device` of a CUDA device."""
    _TF32["allowed"] = bool(enabled)
    _apply_tf32()


def tf32_allowed() -> bool:
    """The package's current choice (see `set_tf32`)."""
    return _TF32["allowed"]


def _apply_tf32() -> None:
    torch.backends.cudnn.allow_tf32 = _TF32["allowed"]
    torch.backends.cuda.matmul.allow_tf32 = _TF32["allowed"]


def resolve_device(device: Any) -> torch.device:
    """torch.device(device), checked: a CUDA device without a usable GPU (or past the last one) is
    a clear error (`legacy_compat.cli.choose_device`'s checks). For a CUDA device, applies the package's TF32 choice (off by default: IEEE
    float32, as MATLAB computes)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        _choose_device(str(dev))          # a GPU there, the index in range: else a UserError (a RuntimeError)
        _apply_tf32()
    return dev


def module_device(module: Any) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def choose_device(device: str | None) -> str:
    """The command lines' --device (`legacy_compat.cli.choose_device`): None or 'auto' gives cuda
    when a GPU is there, else cpu; a name is checked (cpu, cuda or cuda:N; a GPU that exists) and
    returned as given. Errors are `UserError`s (a ValueError for a bad name, a RuntimeError for a
    missing GPU)."""
    return _choose_device(device)
