"""reproduce.paper's tables: the measured figures beside the paper's published ones (CVPR 2018 Tables
3-5 and 7, reproduce.experiments.published_numbers), and one line per run. Not a port of an original file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from data_prep.facts import DATASETS
from reproduce.experiments.grid import CNN_KINDS
from reproduce.experiments.published_numbers import paper_rows, paper_source

__all__ = ["PAPER_REFERENCE_MODEL", "ComparisonRow", "comparison_rows", "format_comparison", "format_runs", "duration"]


#: Our small nets, compared with the published rows of the paper's net they are shaped after. The
#: table marks such rows (`*`): they are not the paper's network (smaller, random trunk).
PAPER_REFERENCE_MODEL = {"alexnet-narrow": "alexnet"}


@dataclass
class ComparisonRow:
    """One line of the table: a published row (or none) and what was measured for it."""

    table: str
    dataset: str
    scope: str
    model: str
    config: str
    what: str                  # the category, or 'mean of k/N categories'
    metric: str                # 'location_instability' | 'accuracy_percent' | 'binary_error'
    measured: dict             # cnn kind -> value (NaN when not measured)
    paper: dict                # cnn kind -> value (None when the paper has none)


def _mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def comparison_rows(records: Sequence[dict]) -> list[ComparisonRow]:
    """The measured figures beside the paper's: per (dataset, scope, model, config), each published
    row that applies (the category's own row; a dataset-average row, compared with the mean over
    the categories measured; CUB's one row), then, for what the paper has no figure for (the toy
    data, our small nets, multi-class), the measured values alone."""

    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for r in records:
        key = (r["dataset"], r["scope"], r["model"], r["config"])
        groups.setdefault(key, {}).setdefault(r["name"], {})[r["cnn"]] = r
    out: list[ComparisonRow] = []
    for (dataset, scope, model, config), by_cat in groups.items():
        ref = PAPER_REFERENCE_MODEL.get(model, model)
        published = [p for p in paper_rows() if p.dataset == dataset and p.model == ref and p.scope == scope]
        n_all = len(DATASETS[dataset].categories) if dataset in DATASETS and DATASETS[dataset].categories else None
        for p in published:
            if p.category == "average":
                cats = list(by_cat)
                what = f"mean of {len(cats)}/{n_all} categories" if n_all else f"mean of {len(cats)} categories"
            elif p.category in by_cat:
                cats, what = [p.category], p.category
            else:
                continue
            measured = {k: _mean(by_cat[c][k].get(p.metric) for c in cats if k in by_cat[c]) for k in CNN_KINDS}
            table = p.table if ref == model else f"{p.table} *{ref}"
            out.append(ComparisonRow(table, dataset, scope, model, config, what, p.metric, measured,
                                     {"ordinary": p.ordinary, "interpretable": p.interpretable}))
            if p.metric == "location_instability":
                start = {k: _mean(by_cat[c][k].get("location_instability_at_start") for c in cats if k in by_cat[c])
                         for k in CNN_KINDS}
                if any(math.isfinite(v) for v in start.values()):
                    out.append(ComparisonRow("  control: before training", dataset, scope, model, config, what,
                                             "location_instability_at_start", start,
                                             {"ordinary": None, "interpretable": None}))
        if not published:
            cats = list(by_cat)
            what = cats[0] if len(cats) == 1 else f"mean of {len(cats)} runs"
            for metric in ("location_instability", "location_instability_at_start", "binary_error"):
                measured = {k: _mean(by_cat[c][k].get(metric) for c in cats if k in by_cat[c]) for k in CNN_KINDS}
                if not any(math.isfinite(v) for v in measured.values()):
                    continue
                label = "  control: before training" if metric.endswith("_at_start") else "not in the paper"
                out.append(ComparisonRow(label, dataset, scope, model, config, what, metric, measured,
                                         {"ordinary": None, "interpretable": None}))
    return out


_METRIC_LABEL = {"location_instability": "location instability", "accuracy_percent": "accuracy %",
                 "binary_error": "binary error", "location_instability_at_start": "location instability"}


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.2f}" if metric == "accuracy_percent" else f"{v:.3f}"


def _maybe(v: Any, spec: str) -> str:
    return "-" if v is None else format(float(v), spec)


def format_comparison(rows: Sequence[ComparisonRow]) -> str:
    """The table: each metric measured (ours) beside the paper's, ordinary -> interpretable CNN."""
    if not rows:
        return "No finished runs to compare."
    head = ("published row", "dataset", "model", "config", "measured on", "metric", "ordinary ours",
            "paper", "interpretable ours", "paper")
    lines = [head]
    for r in rows:
        lines.append((r.table, r.dataset + ("" if r.scope == "single-class" else " (multi)"), r.model, r.config,
                      r.what, _METRIC_LABEL[r.metric], _fmt(r.measured["ordinary"], r.metric),
                      _fmt(r.paper["ordinary"], r.metric), _fmt(r.measured["interpretable"], r.metric),
                      _fmt(r.paper["interpretable"], r.metric)))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    notes = sorted({(r.model, PAPER_REFERENCE_MODEL[r.model]) for r in rows if "*" in r.table})
    text += [f"*{ref}: the paper's {ref} row beside our {model}, which is NOT the paper's network (a smaller "
             f"net, trained from scratch): compare the direction, not the values" for model, ref in notes]
    return (f"Measured (ours) and published ({paper_source()}); location instability: lower is better; "
            f"accuracy = 100 (1 - binary error):\n" + "\n".join(text))


def format_runs(records: Sequence[dict]) -> str:
    """One line per run: binary error, location instability, accuracy, epochs, time."""
    if not records:
        return "No runs."
    head = ("run", "binary error", "location instability", "(before training)", "accuracy %", "epochs", "time", "")
    lines = [head] + [(r["id"], f"{r['binary_error']:.4f}",
                       "not measured" if r.get("location_instability_note") else f"{r['location_instability']:.4f}",
                       _maybe(r.get("location_instability_at_start"), ".4f"),
                       f"{r['accuracy_percent']:.2f}", str(r.get("epochs")),
                       duration(r.get("seconds", {}).get("total")), "; ".join(r.get("warnings", [])))
                      for r in records]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(float(seconds)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
