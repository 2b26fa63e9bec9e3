"""Benchmark: build the fox imdb (n02118333, 286 objects x 2 mirrors repeated to 3000 + 1000
negatives) at 224 x 224 into a temporary cache, as learn_icnn.m's first run does.

    python -m reproduce.bench.imdb [--data-root ../shared/data] [--size 224] [--tracemalloc]

Prints the build time, the finished imdb's size, and the peak memory the build added:
resident memory (VmHWM after minus VmRSS before, with the high-water mark reset first
where Linux allows; ru_maxrss is reported too, it cannot be reset) and, with
--tracemalloc (slower), the peak of Python/numpy allocations. Data goes to data.npy by
positioned writes and is never mapped while building, so neither figure counts the
file pages the OS caches. `run() -> dict` returns the same figures for a benchmark suite.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from data_prep.ilsvrc import ilsvrc_conf
from data_prep.imdb import get_imdb, load_or_build_imdb
from legacy_compat.cli import add_data_root, add_debug, positive_int, run_cli

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"   # <project>/../shared/data
CATEGORY = "n02118333"


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run(data_root: str | Path = DEFAULT_DATA_ROOT, size: int = 224, use_tracemalloc: bool = False,
        workers: int | None = None, cache_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Build the fox imdb at size x size into a temporary cache (or cache_dir); return the figures.

    Keys: seconds, reload_seconds, images, imdb_bytes, peak_rss_growth_bytes (None without
    /proc), peak_rss_ratio, ru_maxrss_bytes, tracemalloc_peak_bytes / tracemalloc_ratio
    (with use_tracemalloc), image_size, category.
    """
    conf = ilsvrc_conf(data_root)
    with tempfile.TemporaryDirectory(prefix="bench_imdb_") as tmp:
        cache = Path(cache_dir) if cache_dir is not None else Path(tmp) / "imdb"
        reset = _reset_peak_rss()
        base = _status_bytes("VmRSS")
        if use_tracemalloc:
            tracemalloc.start()
        t0 = time.perf_counter()
        imdb = load_or_build_imdb(
            cache, lambda out: get_imdb(CATEGORY, conf, (size, size), out=out, workers=workers, progress=progress),
            {"bench": CATEGORY, "size": size}, rebuild=True)
        seconds = time.perf_counter() - t0
        tm_peak = tracemalloc.get_traced_memory()[1] if use_tracemalloc else None
        if use_tracemalloc:
            tracemalloc.stop()
        hwm = _status_bytes("VmHWM")
        nbytes = int(imdb.data.nbytes)
        images = imdb.num_images
        del imdb
        t1 = time.perf_counter()
        again = load_or_build_imdb(cache, lambda out: (_ for _ in ()).throw(RuntimeError("rebuilt")),
                                   {"bench": CATEGORY, "size": size})
        reload_seconds = time.perf_counter() - t1
        del again
    growth = (hwm - base) if (reset and hwm is not None and base is not None) else None
    return {
        "category": CATEGORY, "image_size": size, "images": images, "imdb_bytes": nbytes,
        "seconds": seconds, "reload_seconds": reload_seconds,
        "peak_rss_growth_bytes": growth, "peak_rss_ratio": None if growth is None else growth / nbytes,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tracemalloc_peak_bytes": tm_peak, "tracemalloc_ratio": None if tm_peak is None else tm_peak / nbytes,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.bench.imdb", description=__doc__.split("\n\n")[0])
    add_data_root(p, str(DEFAULT_DATA_ROOT), "the fox data (default ../shared/data)")
    p.add_argument("--size", type=positive_int, default=224)
    p.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    p.add_argument("--workers", type=positive_int, default=None)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_debug(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.bench.imdb", lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    r = run(args.data_root, args.size, args.tracemalloc, args.workers, progress=not args.json)
    if args.json:
        print(json.dumps(r))
        return 0
    mb = 2 ** 20
    print(f"fox imdb {r['images']} images x 3 x {r['image_size']} x {r['image_size']} float32: "
          f"{r['imdb_bytes'] / mb:.0f} MB")
    print(f"build time {r['seconds']:.1f} s   (reload from the cache {r['reload_seconds'] * 1000:.1f} ms)")
    if r["peak_rss_growth_bytes"] is not None:
        print(f"peak resident memory added by the build {r['peak_rss_growth_bytes'] / mb:.0f} MB "
              f"= {r['peak_rss_ratio']:.2f} x the imdb")
    print(f"ru_maxrss of the process {r['ru_maxrss_bytes'] / mb:.0f} MB (includes the interpreter and imports)")
    if r["tracemalloc_peak_bytes"] is not None:
        print(f"tracemalloc peak {r['tracemalloc_peak_bytes'] / mb:.0f} MB = {r['tracemalloc_ratio']:.2f} x the imdb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
