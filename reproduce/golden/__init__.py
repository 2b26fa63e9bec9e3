"""The golden-case adapters: the port run on each recorded call of the original code.

`python -m reproduce.golden PATH... [--data-root DIR] [--device DEV]` runs the cases of
../shared/golden through legacy_compat.parity's runner (the library part, which imports nothing
above legacy_compat). Importing this package registers every adapter with `legacy_compat.parity.register`:

- `layer_cases`: conv_mask, the losses, our_vl_simplenn, network_init, getConvNetPara;
- `training_cases`: our_cnn_train runs (replayed batches) and checkpoints;
- `evaluation_cases`: getDistSqrtVar, computeStability, step_drawRF pieces;
- `data_cases`: getI, getImdb, getImdb_cub200, produceIMDB (with the GNU Octave numerics the cases
  were recorded under: Octave's linspace and single-precision mean, which only these adapters use).

A new golden case: record it (../shared/golden/README.md), then add `@register("<case_fn>")`
on an adapter in the module of its area here.
"""
from __future__ import annotations

from typing import Sequence

from legacy_compat import parity
from reproduce.golden import data_cases, evaluation_cases, layer_cases, training_cases

__all__ = ["main", "layer_cases", "training_cases", "evaluation_cases", "data_cases"]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.golden`: every registered adapter, through legacy_compat.parity.main."""
    return parity.main(None if argv is None else list(argv))
