"""The benchmark suite (`python -m reproduce.bench`): every benchmark the issues define, one command, one table, one JSON file.

    python -m reproduce.bench                          # all of them (~3 min on a 2-core CPU)
    python -m reproduce.bench --only conv_mask train_step
    python -m reproduce.bench --out output/bench.json --device cpu

Benchmarks (each figure a ratio or a per-item figure, measured in one run):

  conv_mask   conv_mask forward+backward (1 class; 6 classes with sliceMag) / nn.Conv2d of the same
              shape, VGG-16 conv6 size (batch 32, 512 -> 512, 14 x 14): reproduce.bench.conv_mask.run.
              Target <= 1.15.
  train_step  one training step of the vgg-vd-16 ICNN / the same net with plain conv layers
              (network_init('vgg-vd-16', pretrained=None), interpretable=False; same weights, same
              batch of --train-batch 224 x 224 images): forward, backward of the summed loss,
              MatConvNet SGD update and, for the ICNN, the sliceMag update, through
              reproduce.train's own step (one training phase of one batch; default 4 images,
              5 interleaved rounds after a warm-up, medians). Target <= 1.05. With --device cuda
              also at the paper's batch size, 32 (target <= 1.1; skipped on the CPU).
  imdb        build the fox imdb (n02118333: 3000 positives + 1000 negatives, 224 x 224) from
              ../shared/data into a temporary folder: seconds per image and the peak resident
              memory the build adds / the imdb's size: reproduce.bench.imdb.run.
  eval        location stability (getI, forward to the conv_mask layer, peaks, distances) and one
              occlusion pass (step_drawRF.m: 484 occluded copies) of a vgg-vd-16 ICNN, seconds per
              image, on the first --eval-images fox images and --occlusions copies (per-image
              figures scaled from those): reproduce.bench.evaluation.run.
  demo        `python demo.py --quick --out <temporary folder>` wall time (a subprocess).

No targets are asserted: the figures are printed beside the issues' targets and written to the
JSON file (--out), with the machine and the settings. CPU by default (the issues' targets are CPU
figures); --device cuda times conv_mask, train_step and eval on the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from legacy_compat.atomic import atomic_write_text
from legacy_compat.cli import add_data_root, add_out, nonnegative_int, positive_int, run_cli
from reproduce.bench import conv_mask as bench_conv_mask
from reproduce.bench import evaluation as bench_evaluation
from reproduce.bench import imdb as bench_imdb
from reproduce.experiments.machine_info import machine_info
from reproduce.experiments.options import add_common, start_device
from reproduce.models.builder import network_init
from reproduce.models.registry import MODELS, train_opts
from reproduce.runtime.device import resolve_device
from reproduce.training import cnn_train as tr

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = PROJECT_ROOT.parent / "shared" / "data"
BENCHMARKS = ("conv_mask", "train_step", "imdb", "eval", "demo")

__all__ = ["BENCHMARKS", "Figure", "BenchResult", "bench_train_step", "run_suite", "format_table",
           "build_parser", "main"]


@dataclass
class Figure:
    """One line of the table: what is measured, its value, its unit and the issue's target (if any)."""

    name: str
    value: float | None
    unit: str                       # 'x' for a ratio, 's', 'ms', ...
    target: float | None = None     # the value must be <= target

    @property
    def meets_target(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.value <= self.target


@dataclass
class BenchResult:
    """A benchmark's figures, its raw numbers (the run() dict), its wall time, or why it was skipped."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "skipped": self.skipped, "error": self.error,
                "figures": [{"name": f.name, "value": f.value, "unit": f.unit, "target": f.target,
                             "meets_target": f.meets_target} for f in self.figures],
                "raw": self.raw}


# ================================================================== the training step
def _median_interleaved(steps: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]) -> dict:
    """Warm each step up once, then `repeats` rounds of each in turn; the median seconds per step."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(int(repeats)):
        for k, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_train_step(device: str = "cpu", batch: int = 2, repeats: int = 3, model: str = "vgg-vd-16",
                     seed: int = 0, threads: int | None = None) -> dict:
    """One SGD step of the ICNN and of the same net with plain convs, on the same batch.

    Both nets come from network_init(1, model, 0.5, pretrained=None, seed) (the same random
    weights; the ordinary one with interpretable=False) and train through reproduce.train's
    step (`process_phase` on one batch: forward with the filter-loss context, backward of the
    summed loss, MatConvNetSGD update, sliceMag update), rounds interleaved. Dropout 0.5
    (the same masks for both: each step reseeds torch with `seed`).
    """

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    size = MODELS[model].image_size
    gen = torch.Generator().manual_seed(seed)
    data = (torch.rand(batch, 3, size, size, generator=gen) * 255 - 128).numpy()
    labels = np.where(np.arange(batch) % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None]
    imdb = {"data": data, "labels": labels, "set": np.ones(batch, dtype=np.uint8)}
    tdata = tr.TrainData.from_imdb(imdb)
    lr = train_opts(1, model).learning_rate[0]
    steps, nets = {}, {}
    for kind in ("plain", "icnn"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")             # no pretrained trunk: timing only
            net, _, _ = network_init(1, model, 0.5, pretrained=None, seed=seed, interpretable=kind == "icnn")
        net = net.to(dev)
        sgd = tr.MatConvNetSGD(net.matconvnet_params())
        setup = tr.EpochSetup(net, tdata, 1, lr, sgd, None, dev, "binerr", tr.SLICE_MAG_FILL_COLUMN1, False, None)
        batches = [np.arange(batch)]

        def step(setup=setup, batches=batches) -> None:
            torch.manual_seed(seed)
            tr.process_phase(setup, "train", batches)
        steps[kind], nets[kind] = step, net

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    med = _median_interleaved(steps, repeats, sync)
    n_params = {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()}
    return {"device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads(), "model": model, "batch": batch, "image_size": size,
            "repeats": repeats, "plain_step_s": med["plain"], "icnn_step_s": med["icnn"],
            "ratio": med["icnn"] / med["plain"], "params_plain": n_params["plain"], "params_icnn": n_params["icnn"]}


# ================================================================== the suite
def _machine() -> dict:
    """Where the benchmarks ran (reproduce.paper's machine record) and the load when they started."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    info = machine_info("cuda" if torch.cuda.is_available() else "cpu")
    info["load_1min_at_start"] = load
    return info


def _conv_mask(a: argparse.Namespace) -> BenchResult:
    r = bench_conv_mask.run(a.device, repeats=a.repeats, threads=a.threads)
    return BenchResult("conv_mask", [
        Figure("conv_mask / Conv2d fwd+bwd, 1 class (32x512x14x14)", r["ratio_single"], "x", 1.15),
        Figure("conv_mask / Conv2d fwd+bwd, 6 classes + sliceMag", r["ratio_multi6"], "x", 1.15),
        Figure("Conv2d fwd+bwd", r["conv2d_s"] * 1e3, "ms/step")], r)


PAPER_BATCH = 32     # the paper's batch size for vgg-vd-16 (train_opts)


def _train_step(a: argparse.Namespace) -> BenchResult:
    r = bench_train_step(a.device, a.train_batch, a.repeats_train, threads=a.threads)
    figures = [
        Figure(f"ICNN / plain CNN training step (vgg-vd-16, batch {r['batch']})", r["ratio"], "x", 1.05),
        Figure("plain CNN training step, per image", r["plain_step_s"] / r["batch"], "s/image"),
        Figure("ICNN training step, per image", r["icnn_step_s"] / r["batch"], "s/image")]
    if a.device.startswith("cuda") and a.train_batch != PAPER_BATCH:     # the paper's batch: a GPU figure
        r32 = bench_train_step(a.device, PAPER_BATCH, a.repeats_train, threads=a.threads)
        r["paper_batch"] = r32
        figures.append(Figure(f"ICNN / plain CNN training step (vgg-vd-16, batch {PAPER_BATCH})", r32["ratio"],
                              "x", 1.1))
    elif not a.device.startswith("cuda"):
        print(f"bench: train_step at the paper's batch ({PAPER_BATCH}) is measured on CUDA only "
              f"(--device cuda); skipped on {a.device}", file=sys.stderr)
    return BenchResult("train_step", figures, r)


def _imdb(a: argparse.Namespace) -> BenchResult:
    if not (Path(a.data_root) / "detanimalpart" / "n02118333_obj").is_dir():
        return BenchResult("imdb", skipped=f"no fox data under {a.data_root}")
    r = bench_imdb.run(a.data_root, size=a.imdb_size)
    return BenchResult("imdb", [
        Figure(f"fox imdb build ({r['images']} images, {r['image_size']} px), per image",
               r["seconds"] / r["images"] * 1e3, "ms/image"),
        Figure("peak resident memory added by the build / imdb size", r["peak_rss_ratio"], "x"),
        Figure("imdb size", r["imdb_bytes"] / 2 ** 20, "MiB")], r)


def _eval(a: argparse.Namespace) -> BenchResult:
    if not (Path(a.data_root) / "detanimalpart" / "n02118333_obj").is_dir():
        return BenchResult("eval", skipped=f"no fox data under {a.data_root}")
    r = bench_evaluation.run(a.device, a.data_root, max_images=a.eval_images, occlusions=a.occlusions, threads=a.threads)
    return BenchResult("eval", [
        Figure(f"location stability, vgg-vd-16 ({r['images']} images), per image", r["stability_s_per_image"],
               "s/image"),
        Figure("  of which forward to conv_mask + peaks", r["stability_forward_s_per_image"], "s/image"),
        Figure(f"occlusion pass ({r['occlusions_per_image']} copies; {r['occlusions_timed']} timed), per image",
               r["occlusion_s_per_image"], "s/image")], r)


def _demo(a: argparse.Namespace) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        cmd = [sys.executable, str(PROJECT_ROOT / "demo.py"), "--quick", "--out", tmp]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=a.demo_timeout)
        wall = time.perf_counter() - t0
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("binary error")]
    raw = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": wall,
           "result_line": last[-1] if last else None}
    if proc.returncode != 0:
        return BenchResult("demo", raw=raw, error=f"demo.py --quick exited {proc.returncode}: "
                                                  f"{proc.stderr.strip()[-500:]}")
    return BenchResult("demo", [Figure("python demo.py --quick, wall time", wall, "s")], raw)


RUNNERS: dict[str, Callable[[argparse.Namespace], BenchResult]] = {
    "conv_mask": _conv_mask, "train_step": _train_step, "imdb": _imdb, "eval": _eval, "demo": _demo}


def run_suite(args: argparse.Namespace, names: Sequence[str]) -> list[BenchResult]:
    """Run the named benchmarks in order; a benchmark that fails is reported, the others still run."""
    results = []
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            res = RUNNERS[name](args)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            res = BenchResult(name, error=f"{type(exc).__name__}: {exc}")
        res.seconds = time.perf_counter() - t0
        results.append(res)
    return results


def _value(f: Figure) -> str:
    if f.value is None:
        return "n/a"
    return f"{f.value:.3f}" if f.unit == "x" else f"{f.value:.4g}"


def format_table(results: Sequence[BenchResult]) -> str:
    """benchmark | figure | value | unit | target | ok, one line per figure (or the skip / error)."""
    rows = [("benchmark", "figure", "value", "unit", "target", "meets")]
    for r in results:
        if r.skipped or r.error:
            rows.append((r.name, ("skipped: " + r.skipped) if r.skipped else ("ERROR: " + r.error[:200]),
                         "", "", "", ""))
            continue
        for f in r.figures:
            ok = {True: "yes", False: "NO", None: ""}[f.meets_target]
            rows.append((r.name, f.name, _value(f), f.unit, f"<= {f.target:g}" if f.target else "", ok))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=str) + "\n")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="python -m reproduce.bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="\n\n".join(doc))
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None, metavar="NAME",
                   help=f"run only these ({', '.join(BENCHMARKS)}); default all")
    p.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=(), metavar="NAME", help="leave these out")
    add_out(p, "output/bench.json", "JSON file of the results (default output/bench.json)")
    add_common(p)
    add_data_root(p, str(DEFAULT_DATA_ROOT), "the fox data (default ../shared/data)")
    p.add_argument("--repeats", type=positive_int, default=10, help="conv_mask: timed rounds (default 10)")
    p.add_argument("--repeats-train", type=positive_int, default=5, help="train_step: timed rounds (default 5)")
    p.add_argument("--train-batch", type=positive_int, default=4, help="train_step: images per batch (default 4)")
    p.add_argument("--imdb-size", type=positive_int, default=224, help="imdb: image size (default 224)")
    p.add_argument("--eval-images", type=nonnegative_int, default=48,
                   help="eval: fox images timed (default 48; all: 0)")
    p.add_argument("--occlusions", type=nonnegative_int, default=128,
                   help="eval: occluded copies timed of the 484 (default 128; all: 0)")
    p.add_argument("--demo-timeout", type=positive_int, default=1800,
                   help="demo: seconds before giving up (default 1800)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.bench", lambda: _run(args, argv), debug=args.debug)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    args.device = start_device(args)
    args.eval_images = args.eval_images or None
    args.occlusions = args.occlusions or None
    names = [n for n in (args.only or BENCHMARKS) if n not in set(args.skip)]
    started = time.time()
    machine = _machine()
    results = run_suite(args, names)
    payload = {"format": "icnn-bench", "version": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                                                time.localtime(started)),
               "seconds": time.time() - started, "machine": machine,
               "command": "python -m reproduce.bench " + " ".join(sys.argv[1:] if argv is None else argv),
               "settings": {k: v for k, v in vars(args).items()},
               "benchmarks": [r.as_dict() for r in results]}
    out = Path(args.out)
    _write_json(out, payload)
    print(f"machine: {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads, 1-min load at start {machine['load_1min_at_start']})")
    print(format_table(results))
    print(f"total {time.time() - started:.0f} s; written to {out}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
