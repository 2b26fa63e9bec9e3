"""Running reproduce.paper's grid: each run that is not in the results file yet (learn, show results,
the at-start control), one after the other or spread over torchrun's ranks. Not a port of an original
file: each run is demo.m's protocol (reproduce.experiments.pipeline).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch.distributed as dist

from data_prep.facts import has_parts
from reproduce.experiments.ablation import part_interpretability_of_run
from reproduce.experiments.comparison_tables import duration
from reproduce.experiments.grid import GridExperiment, resolve_paths
from reproduce.experiments.pipeline import (
    build_imdb,
    build_net,
    check_resume_early,
    image_size_of,
    run_experiment,
    show_results,
)
from reproduce.experiments.results_store import ResultsStore, error_name, run_record
from reproduce.runtime import distributed as dd

__all__ = ["say", "join_ranks", "run_order", "after_all_ranks", "instability_at_start", "run_grid"]


def _remove_checkpoints(folder: Path) -> int:
    """--force: the epoch checkpoints and plots of a run (nothing else) go, so it trains again."""
    n = 0
    if folder.is_dir():
        for p in list(folder.glob("net-epoch-*.pt")) + list(folder.glob("net-epoch-*.mat")) + \
                list(folder.glob("net-train.*")):
            p.unlink()
            n += 1
    return n


def say(text: str) -> None:
    print(text, flush=True)


def join_ranks(args: argparse.Namespace) -> tuple[int, int]:
    """Under torchrun: (rank, world size), each rank on its own GPU (cuda -> cuda:LOCAL_RANK); the
    grid's runs are dealt out one at a time (`run_order`). Otherwise (0, 1)."""
    if not dd.launched_by_torchrun():
        return 0, 1
    rank, world, local = dd.init_scheduler()
    args.device = dd.rank_device(args.device, local)
    return rank, world


def run_order(world: int, n: int) -> Iterable[int] | None:
    """The runs this rank takes: the next free one from the group's shared counter each time it is
    free (reproduce.distributed.claimed_runs), so K GPUs each run one at a time until the grid is done."""
    if world <= 1:
        return None
    return dd.claimed_runs(n, dd.store_counter("reproduce.paper/next-run"))


def after_all_ranks(runs: Sequence[GridExperiment], store: ResultsStore, failed: list[str],
                     rank: int) -> tuple[list[dict], list[str]]:
    """Wait for the other ranks' runs (as long as they take), then every run's record from the results file."""

    dist.monitored_barrier(timeout=timedelta(days=30), wait_all_ranks=True)
    every_failed: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every_failed, failed)
    done = store.finished()
    return [done[e.run_id] for e in runs if e.run_id in done], [f for part in every_failed for f in part]

def instability_at_start(exp: GridExperiment, paths: Any) -> float:
    """The control figure: the location instability of the net as network_init builds it (same
    seed: the weights training starts from), measured as showResults.m measures the trained one.

    With a random trunk the conv_mask layer's test-time mask (centred on each map's centroid)
    already makes its peaks far more stable than a plain conv's, before any training; a trained
    ICNN's figure means something only beside this one."""

    net, _, meta = build_net(exp)
    imdb = build_imdb(exp, paths, image_size_of(meta))          # the cached imdb: only its mean is read
    quiet = replace(exp, draw=False, progress=False)
    stats = {"val": [{error_name(exp): float("nan")}]}
    return float(show_results(quiet, net.to(exp.device), stats, imdb, paths).stability)


def _paths_for(exp: GridExperiment, args: argparse.Namespace, cache: dict) -> Any:
    key = (exp.dataset, tuple(exp.categories), exp.model if exp.facts.made_for_input_size else "")
    if key not in cache:
        cache[key] = resolve_paths(exp, args.truth_dir, args.neg_dir, args.image_dir)
    return cache[key]


def run_grid(args: argparse.Namespace, runs: Sequence[GridExperiment], store: ResultsStore,
             command: str, order: Iterable[int] | None = None) -> tuple[list[dict], list[str]]:
    """Run what is not in the results file yet (everything with --force); returns (the grid's
    records, old and new, in grid order; the ids that failed). A finished run recorded without
    the at-start control figure gets it added (an evaluation only), unless --no-start-control.
    `order`: the 0-based runs this process takes (several GPUs: `reproduce.distributed.claimed_runs`);
    default all, one after the other."""
    done = store.finished()
    paths_cache: dict[tuple, Any] = {}
    records: dict[str, dict] = {}
    failed: list[str] = []
    for index in (range(len(runs)) if order is None else order):
        exp = runs[index]
        tag = f"[{index + 1}/{len(runs)}] {exp.run_id}"
        control = not args.no_start_control and (has_parts(exp.dataset) or exp.image_folder is not None
                                                  and exp.image_folder.landmarks is not None)  # voc2010_crop: none
        try:
            if exp.run_id in done and not args.force:
                record = done[exp.run_id]
                say(f"{tag}: in the results file already (finished {record.get('finished')}); --force runs it again")
                if getattr(args, "part_interpretability", False) and record.get("part_interpretability") is None:
                    record = dict(record, **part_interpretability_of_run(exp, _paths_for(exp, args, paths_cache)))
                    store.add(record)
                    say(f"{tag}: added the part interpretability, {record['part_interpretability']:.4f}")
                if control and record.get("location_instability_at_start") is None:
                    record = dict(record, location_instability_at_start=instability_at_start(
                        exp, _paths_for(exp, args, paths_cache)))
                    store.add(record)
                    say(f"{tag}: added the location instability at the start of training, "
                        f"{record['location_instability_at_start']:.4f}")
                records[exp.run_id] = record
                continue
            if exp.run_id in done:
                removed = _remove_checkpoints(exp.exp_dir)
                say(f"{tag}: --force: {removed} checkpoint files removed, training again")
            say(f"{tag}: training the {exp.cnn} CNN on {exp.device} (checkpoints in {exp.exp_dir})")
            check_resume_early(exp)
            paths = _paths_for(exp, args, paths_cache)
            t0 = time.perf_counter()
            result = run_experiment(exp, paths)
            record = run_record(exp, result, command, time.perf_counter() - t0)
            if control:
                record["location_instability_at_start"] = instability_at_start(exp, paths)
            if getattr(args, "part_interpretability", False):
                record.update(part_interpretability_of_run(exp, paths))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, and with --keep-going the grid goes on
            if not args.keep_going:
                raise
            failed.append(exp.run_id)
            say(f"{tag}: FAILED: {type(exc).__name__}: {exc}")
            continue
        store.add(record)
        records[exp.run_id] = record
        start = record.get("location_instability_at_start")
        say(f"{tag}: {result.line()}" + (f"  (at the start of training {start:.6f})" if start is not None else "")
            + f"  ({duration(record['seconds']['total'])}; written to {store.path})")
    return [records[e.run_id] for e in runs if e.run_id in records], failed
