"""The paper's regime on the real images: pretrain on 20 ILSVRC animal-part categories, fine-tune on held-out ones.

    python -m reproduce.realimages --data-root DATA --out /big/disk/realimages
    python -m reproduce.realimages --data-root DATA --out OUT --categories n02118333 --seeds 0   # one category
    python -m reproduce.realimages --table          # the table of what docs/results/realimages holds

Not in the original (whose trunks come pretrained on ImageNet); its steps are reproduce.pretrain's:

1. Pretrain: the ordinary CNN (`--model`, a random trunk) as a 20-way classifier (logistic loss, one
   output per category) on the object crops of the 20 pretraining categories (produceIMDB's rows,
   built from the objects directly), until the 20-way validation top-1 error has not improved for
   `--patience` epochs, at most `--pretrain-max-epochs`; the best epoch's trunk is written as a
   MatConvNet model file, ``<results>/trunk-<model>-seed<S>.mat`` (a few hundred KB for
   alexnet-narrow, meant to be committed), with ``<results>/pretrain.json``. When both exist, the
   trunk is reused: pretraining runs once.
2. Fine-tune: for each held-out category (never in pretraining) and each seed, the three nets of
   reproduce.ablation (ordinary CNN, ICNN without the filter loss, ICNN), each built by
   network_init from the same trunk file and trained `--epochs` epochs on the category's getImdb
   imdb; binary error and location instability (masks on and off: beta = 0) before and after
   fine-tuning. Part interpretability is not measured: these categories have part landmarks only.

Resumable: each finished run writes its small record, ``<results>/runs/<category>-<variant>-seed<S>.json``
(atomically), and a run whose record exists is skipped, so the records committed under docs/results
let a new machine continue; an interrupted run resumes from its epoch checkpoints in ``--out``. After
each run the summary is rewritten: ``<results>/realimages.json`` (settings, every run, the summary per
category), ``realimages.csv`` and ``realimages.png`` (location instability per held-out category, the
three variants side by side, masks on and off). The imdb caches (memory-mapped; 2.4 GB a held-out
category at 224 x 224, 4.8 GB the pretraining one) and checkpoints go to ``--out``. The process's own
memory (RssAnon) is sampled throughout and recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legacy_compat.atomic import atomic_write, atomic_write_bytes
from legacy_compat.cli import add_data_root, dropout_rate, nonnegative_int, positive_int, run_cli
from reproduce.evaluation.net_features import EvaluationError
from reproduce.experiments.ablation import (
    ROWS,
    VARIANTS,
    format_table,
    run_ablation,
    summarise,
    summary_cell,
    summary_csv,
)
from reproduce.experiments.options import add_common, add_no_progress, add_offline, start_device
from reproduce.experiments.pipeline import Experiment, prepare_dataset
from reproduce.experiments.pretrain import PRETRAIN_LR_SCALE, pretrain_and_save

__all__ = ["HELD_OUT", "PRETRAIN_CATEGORIES", "MemoryPeak", "dir_bytes", "main", "run_file", "summary_rows"]

#: The 20 pretraining categories (issue 30's protocol).
PRETRAIN_CATEGORIES = ("n01443537", "n01639765", "n01662784", "n01674464", "n01982650", "n02084071", "n02129165",
                       "n02131653", "n02324045", "n02342885", "n02355227", "n02395003", "n02398521", "n02402425",
                       "n02419796", "n02437136", "n02444819", "n02454379", "n02484322", "n02509815")
#: The held-out categories reported: fox, cat, horse, zebra, elephant.
HELD_OUT = ("n02118333", "n02121808", "n02374451", "n02391049", "n02503517")
DATASET = "ilsvrcanimalpart"
DEFAULT_RESULTS = Path("docs/results/realimages")
#: The protocol (docs/RESULTS.md, "Real images: pretrain, then fine-tune"), fixed before any held-out result.
DEFAULTS = {"model": "alexnet-narrow", "seeds": [0, 1], "epochs": 2, "pretrain_max_epochs": 8, "patience": 2,
            "pretrain_lr_scale": PRETRAIN_LR_SCALE, "dropout": 0.5, "pretrain_seed": 0}


# ================================================================== memory
class MemoryPeak:
    """The largest anonymous resident memory (RssAnon of /proc/self/status: the process's own pages,
    not the page cache of its memory-mapped imdb files) seen by a sampling thread. Not in the original."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        """RssAnon in bytes (0 where /proc is missing)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryPeak:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def dir_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (0 if it is missing)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) if Path(folder).exists() else 0


# ================================================================== the two steps
def run_file(results: Path, category: str, variant: str, seed: int) -> Path:
    """Where one fine-tuning run's record goes (its existence means: done)."""
    return Path(results) / "runs" / f"{category}-{variant}-seed{int(seed)}.json"


def _common(args: argparse.Namespace) -> dict:
    return {"dataset": DATASET, "model": args.model, "dropout": args.dropout, "data_root": args.data_root,
            "offline": True, "device": args.device, "draw": False, "progress": not args.no_progress}


def ensure_trunk(args: argparse.Namespace, paths: Any, say=print) -> Path:
    """Step 1 (reproduce.pretrain.pretrain_trunk), or the trunk file already in the results folder."""
    results = Path(args.results)
    trunk = results / f"trunk-{args.model}-seed{args.pretrain_seed}.mat"
    record_file = results / "pretrain.json"
    if trunk.is_file() and record_file.is_file():
        say(f"realimages: pretrained trunk {trunk} exists: reused")
        return trunk
    pre = Experiment(categories=list(args.pretrain_categories), pretrained="none", seed=args.pretrain_seed,
                     epochs=args.pretrain_max_epochs, interpretable=False,
                     learning_rate_scale=args.pretrain_lr_scale, out=Path(args.out) / "pretrain", **_common(args))
    with MemoryPeak() as mem:
        record = pretrain_and_save(pre, paths, trunk, args.patience, say=say)
    record.update(model=args.model, lr_scale=args.pretrain_lr_scale, rss_anon_peak_bytes=mem.peak,
                  imdb_bytes=dir_bytes(pre.imdb_dir), trunk=trunk.name, trunk_bytes=trunk.stat().st_size)
    atomic_write_bytes(record_file, json.dumps(record, indent=1).encode())
    say(f"realimages: RssAnon peak {mem.peak / 2**30:.2f} GiB while pretraining")
    return trunk


def finetune_all(args: argparse.Namespace, trunk: Path, paths: Any, settings: dict, say=print) -> None:
    """Step 2: every (held-out category, seed, variant) whose record is missing; each record written as
    it finishes, then the summary files rewritten."""
    results = Path(args.results)

    def done(category: str) -> Any:
        return lambda seed, variant: run_file(results, category, variant, seed).is_file()

    for category in args.categories:
        if all(done(category)(s, v) for s in args.seeds for v in VARIANTS):
            say(f"realimages: {category}: every run is done (records in {results / 'runs'})")
            continue
        if (why := not_measured(results).get(category)) is not None:
            say(f"realimages: {category}: not measured: {why} (delete {not_measured_file(results, category)} "
                f"to try again)")
            continue
        fine = Experiment(categories=[category], pretrained=str(trunk), seed=int(args.seeds[0]), epochs=args.epochs,
                          out=Path(args.out) / "finetune", **_common(args))
        with MemoryPeak() as mem:
            def write(record: dict, category: str = category, mem: MemoryPeak = mem) -> None:
                record = {**record, "category": category, "rss_anon_peak_bytes": max(mem.peak, MemoryPeak.now()),
                          "imdb_bytes": dir_bytes(fine.imdb_dir)}
                file = run_file(results, category, record["variant"], record["seed"])
                atomic_write_bytes(file, json.dumps(record, indent=1, default=str).encode())
                write_summary(results, args.categories, args.seeds, settings)
                say(f"realimages: {category} {record['variant']} seed {record['seed']}: after fine-tuning binary "
                    f"error {record['after']['binary_error']:.4f}, location instability "
                    f"{record['after']['location_instability']:.4f} ({file})")
            try:
                run_ablation(fine, args.seeds, paths, say=say, on_record=write, skip=done(category))
            except EvaluationError as exc:     # the category's truth cannot be measured as the original measures it
                atomic_write_bytes(not_measured_file(results, category), json.dumps({"reason": str(exc)}).encode())
                write_summary(results, args.categories, args.seeds, settings)
                say(f"realimages: {category}: not measured: {exc}")


def not_measured_file(results: Path, category: str) -> Path:
    """Where a category that cannot be measured says why (`python -m data_prep.check` names the problem)."""
    return Path(results) / "runs" / f"{category}-not-measured.json"


def not_measured(results: Path) -> dict[str, str]:
    """category -> why it was not measured, for the categories with a not-measured file."""
    return {f.name[:-len("-not-measured.json")]: json.loads(f.read_text())["reason"]
            for f in sorted((Path(results) / "runs").glob("*-not-measured.json"))}


# ================================================================== results
def load_records(results: Path, categories: Sequence[str], seeds: Sequence[int]) -> dict[str, list[dict]]:
    """The finished runs' records, by category (only the given categories and seeds)."""
    out: dict[str, list[dict]] = {}
    for category in categories:
        recs = [json.loads(f.read_text()) for s in seeds for v in VARIANTS
                if (f := run_file(results, category, v, s)).is_file()]
        if recs:
            out[category] = recs
    return out


def summary_rows(by_category: dict[str, list[dict]]) -> list[dict]:
    """reproduce.ablation.summarise per category, each row with its category."""
    return [{"category": c, **row} for c, recs in by_category.items() for row in summarise(recs)]


def write_summary(results: Path, categories: Sequence[str], seeds: Sequence[int], settings: dict) -> list[Path]:
    """realimages.json / .csv / .png from the records found (atomically)."""
    by_category = load_records(results, categories, seeds)
    rows = summary_rows(by_category)
    done = sum(len(r) for r in by_category.values())
    js = atomic_write_bytes(results / "realimages.json", json.dumps(
        {"settings": settings, "finished_runs": done, "planned_runs": len(categories) * len(seeds) * len(VARIANTS),
         "not_measured": {c: r for c, r in not_measured(results).items() if c in categories},
         "runs": by_category, "summary": rows}, indent=1, default=str).encode())
    cs = atomic_write_bytes(results / "realimages.csv", summary_csv(rows, ("binary_error", "location_instability"),
                                                                    leading=("category",)))
    png = plot_instability(rows, results / "realimages.png") if rows else None
    return [p for p in (js, cs, png) if p is not None]


def plot_instability(rows: Sequence[dict], path: Path) -> Path:
    """Location instability per held-out category (before and after fine-tuning, two panels): the
    ordinary CNN, the ICNN without the filter loss and the ICNN side by side, each ICNN with its masks on
    (solid) and off at evaluation (hatched); bars are the mean over the seeds, ticks the seeds' values."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib is slow to import, only the plot needs it

    cats = list(dict.fromkeys(r["category"] for r in rows))
    colors = {"ordinary": "tab:gray", "icnn-no-filter-loss": "tab:blue", "icnn": "tab:red"}
    fig = Figure(figsize=(max(6.0, 2.2 * len(cats)) * 2 + 2.0, 4.2), layout="constrained")
    width = 0.8 / len(ROWS)
    for k, when in enumerate(("before", "after")):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, (_, variant, off) in enumerate(ROWS):
            xs, ys, pts = [], [], []
            for i, c in enumerate(cats):
                row = next((r for r in rows if r["category"] == c and r["variant"] == variant
                            and r["masks_off_at_eval"] == off), None)
                if row is None:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                xs.append(x)
                ys.append(row[f"{when}_location_instability_mean"])
                pts += [(x, v) for v in row[f"{when}_location_instability_values"]]
            name = {"ordinary": "ordinary CNN", "icnn-no-filter-loss": "ICNN, no filter loss",
                    "icnn": "ICNN"}[variant] + (", masks off" if off else (", masks on" if variant != "ordinary" else ""))
            ax.bar(xs, ys, width, color=colors[variant], alpha=0.45 if off else 0.9, hatch="//" if off else None,
                   label=name)
            if pts:
                ax.plot(*zip(*pts), "k_", markersize=6)
        ax.set_xticks(range(len(cats)), cats)
        ax.set_ylabel("location instability (lower is better)")
        ax.set_title(f"{when} fine-tuning")
        ax.grid(True, axis="y", alpha=0.3)
        if k == 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def format_markdown(rows: Sequence[dict]) -> str:
    """The summary as one Markdown table: per category and row of the ablation, binary error and
    location instability before -> after fine-tuning (mean ± sample std over the seeds)."""
    def cell(row: dict, metric: str) -> str:
        return f"{summary_cell(row, 'before', metric)} -> {summary_cell(row, 'after', metric)}"
    lines = ["| category | net | seeds | binary error | location instability |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['category']} | {row['row'].strip()} | {' '.join(str(s) for s in row['seeds'])} | "
                     f"{cell(row, 'binary_error')} | {cell(row, 'location_instability')} |")
    return "\n".join(lines)


def format_results(by_category: dict[str, list[dict]]) -> str:
    """reproduce.ablation's table, one per category."""
    return "\n\n".join(f"{c}:\n{format_table(summarise(recs))}" for c, recs in by_category.items())


# ================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.realimages", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    p.add_argument("--categories", nargs="+", default=list(HELD_OUT), metavar="C",
                   help="the held-out categories fine-tuned on (default fox, cat, horse, zebra, elephant)")
    p.add_argument("--pretrain-categories", nargs="+", default=list(PRETRAIN_CATEGORIES), metavar="C",
                   help="the pretraining categories (default the 20 of issue 30)")
    p.add_argument("--model", default=d["model"], help=f"network (default {d['model']})")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=d["seeds"],
                   help="fine-tuning seeds (the new head and the batch order; default 0 1)")
    p.add_argument("--epochs", type=positive_int, default=d["epochs"], help=f"fine-tuning epochs (default {d['epochs']})")
    p.add_argument("--pretrain-max-epochs", type=positive_int, default=d["pretrain_max_epochs"],
                   help=f"at most this many pretraining epochs (default {d['pretrain_max_epochs']})")
    p.add_argument("--patience", type=positive_int, default=d["patience"],
                   help="stop pretraining when the 20-way validation top-1 error has not improved for this many "
                        f"epochs (default {d['patience']})")
    p.add_argument("--pretrain-lr-scale", type=float, default=d["pretrain_lr_scale"],
                   help=f"the pretraining's learning rates x this (default {d['pretrain_lr_scale']})")
    p.add_argument("--pretrain-seed", type=nonnegative_int, default=d["pretrain_seed"])
    p.add_argument("--dropout", type=dropout_rate, default=d["dropout"])
    p.add_argument("--out", default="output/realimages",
                   help="imdb caches and checkpoints (large: about 17 GB; default output/realimages)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS),
                   help=f"the small result files, the trunk and the plot (default {DEFAULT_RESULTS}, committed)")
    add_data_root(p, help="datasets folder with detanimalpart/ (default $ICNN_DATA_ROOT, else output/data)")
    add_offline(p, help="accepted for symmetry: this command never downloads")
    p.add_argument("--table", action="store_true", help="print the tables of the records in --results and stop")
    p.add_argument("--markdown", action="store_true", help="with --table: one Markdown table")
    add_no_progress(p)
    add_common(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.realimages`; errors are one or two lines (legacy_compat.cli.run_cli)."""
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.realimages", lambda: _run(args, argv), debug=args.debug,
                   interrupted="run the same command again: finished runs are kept, the one in progress resumes.")


def _check(args: argparse.Namespace) -> None:
    both = sorted(set(args.categories) & set(args.pretrain_categories))
    if both:
        raise ValueError(f"--categories {' '.join(both)}: held-out categories must not be among --pretrain-categories")
    if len(args.pretrain_categories) < 2:
        raise ValueError("--pretrain-categories: give at least two (a multi-way classifier)")


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    args.results = Path(args.results)
    if args.table:
        by_category = load_records(args.results, args.categories, args.seeds)
        print((format_markdown(summary_rows(by_category)) if args.markdown else format_results(by_category))
              if by_category else "no finished runs")
        return 0
    _check(args)
    args.device = start_device(args, auto="cpu")            # --threads too
    args.data_root = Path(args.data_root) if args.data_root else None
    t0 = time.perf_counter()
    settings = {"command": "python -m reproduce.realimages " + " ".join(sys.argv[1:] if argv is None else argv),
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with MemoryPeak() as mem:
        paths = prepare_dataset(Experiment(categories=[*args.pretrain_categories, *args.categories],
                                           **_common(args)))
        trunk = ensure_trunk(args, paths)
        finetune_all(args, trunk, paths, settings)
    write_summary(args.results, args.categories, args.seeds, settings)
    by_category = load_records(args.results, args.categories, args.seeds)
    print("\n" + format_results(by_category))
    for category, why in not_measured(args.results).items():
        if category in args.categories:
            print(f"\n{category}: not measured: {why}")
    print(f"\nrealimages: done in {time.perf_counter() - t0:.0f} s (this sitting); RssAnon peak "
          f"{mem.peak / 2**30:.2f} GiB; results in {args.results}; caches {dir_bytes(Path(args.out)) / 2**30:.1f} GiB "
          f"in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
