"""The paper's published figures, shipped as data (reproduce/experiments/data/paper_cvpr2018.json).

Location instability (lower is better) and classification accuracy of the
ordinary CNN and the interpretable CNN, with the table each value comes from,
so that demo.py and the experiment runner can print measured and published
figures side by side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PAPER_FILE = Path(__file__).resolve().parent / "data" / "paper_cvpr2018.json"
METRICS = ("location_instability", "accuracy_percent")


@dataclass(frozen=True)
class PaperRow:
    metric: str          # 'location_instability' or 'accuracy_percent'
    dataset: str
    category: str        # a category id, 'average', or the dataset name (cub200)
    scope: str           # 'single-class' or 'multi-class'
    table: str
    model: str
    ordinary: float
    interpretable: float


@lru_cache(maxsize=1)
def paper_rows() -> tuple[PaperRow, ...]:
    """Every published row in the shipped table."""
    raw = json.loads(PAPER_FILE.read_text())
    rows = []
    for metric in METRICS:
        for r in raw[metric]:
            rows.append(PaperRow(metric=metric, **r))
    return tuple(rows)


def paper_source() -> str:
    return json.loads(PAPER_FILE.read_text())["source"]


def rows_for(dataset: str, model: str, category: str | None = None,
             scope: str = "single-class") -> list[PaperRow]:
    """The published rows for one run: the category's own row where the paper
    reports it, and the dataset-wide average rows (marked category 'average')."""
    out = []
    for row in paper_rows():
        if row.dataset != dataset or row.model != model or row.scope != scope:
            continue
        if row.category in ("average", dataset) or (category is not None and row.category == category):
            out.append(row)
    return out


def format_rows(rows: list[PaperRow]) -> str:
    """A few lines that show the published figures (used after demo.py's result line)."""
    if not rows:
        return "The paper reports no figures for this dataset/model."
    lines = [f"Published ({paper_source()}):"]
    for r in rows:
        what = "location instability" if r.metric == "location_instability" else "accuracy %"
        lines.append(f"  {r.table:<38s} {r.model:<10s} {r.category:<10s} {what:<21s} "
                     f"ordinary CNN {r.ordinary:g}  ->  interpretable CNN {r.interpretable:g}")
    return "\n".join(lines)
