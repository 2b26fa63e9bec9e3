"""The training figure: ``net-train.png`` and ``net-train.pdf`` in the experiment folder.

Ports the plotting block of `tool/main/our_cnn_train.m` (cnn_train's figure 1):
one subplot per statistic (every field of stats.train / stats.val except
`num` and `time`, in sorted order as MATLAB's setdiff gives them), the train
and val values per epoch drawn 'o-', x label 'epoch', the statistic as
title, a legend and a grid. Written after every epoch on a bare Figure (no pyplot, no GUI backend);
both files are written atomically.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from legacy_compat.atomic import atomic_write

__all__ = ["plot_training_stats", "statistics_to_plot"]


def statistics_to_plot(stats: Mapping[str, Sequence[Mapping[str, float]]]) -> list[str]:
    """setdiff([fieldnames(stats.train) fieldnames(stats.val)], {'num','time'}): sorted, unique."""
    names = set()
    for mode in ("train", "val"):
        for entry in stats.get(mode, []):
            names.update(entry)
    return sorted(names - {"num", "time"})


def plot_training_stats(stats: Mapping[str, Sequence[Mapping[str, float]]], exp_dir: str | os.PathLike,
                        basename: str = "net-train") -> list[Path]:
    """Draw cnn_train's figure of `stats` ({"train": [...], "val": [...]}) to <basename>.png and .pdf."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - deferred on purpose: matplotlib is slow to import, only plots need it


    plots = statistics_to_plot(stats)
    fig = Figure(figsize=(max(4.0 * len(plots), 4.0), 3.6), layout="constrained")
    for k, name in enumerate(plots):
        ax = fig.add_subplot(1, max(len(plots), 1), k + 1)
        for mode in ("train", "val"):
            entries = list(stats.get(mode, []))
            if entries and any(name in e for e in entries):
                values = [float(e.get(name, math.nan)) for e in entries]
                ax.plot(range(1, len(values) + 1), values, "o-", label=mode)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
        ax.grid(True)
    exp_dir = Path(exp_dir)
    written = []
    for ext in ("png", "pdf"):
        written.append(atomic_write(exp_dir / f"{basename}.{ext}", lambda tmp, ext=ext: fig.savefig(tmp, format=ext)))
    return written
