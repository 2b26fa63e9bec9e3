"""Benchmark: conv_mask forward+backward against a plain Conv2d of the same shape.

At the VGG-16 conv6 size (batch 32, 512 -> 512 channels, 14 x 14 maps, 3 x 3 filters, pad 1),
in one run: a ConvMask layer in training mode with the filter loss (FilterLossContext,
single-class and 6-class with sliceMag set) against nn.Conv2d, both with the input requiring a
gradient, forward + backward. Prints the median time of each over `repeats` interleaved
rounds (after a warm-up) and the ratios (issue 3's target: at most 1.15x).

    python -m reproduce.bench.conv_mask [--repeats 5] [--threads N] [--device cpu] [--batch 32]
    python -m reproduce.bench.conv_mask --profile single --device cuda     # where the time goes
    python -m reproduce.bench.conv_mask --profile                          # operations per step

--profile prints the number of top-level ATen operations of one forward+backward on the CPU
(8 x 64 x 14 x 14: Conv2d, conv_mask with 1 class, 6 classes with sliceMag; "top-level": an
operation the profiler records with no ATen operation above it, the autograd engine's
gradient accumulation included), and on CUDA the kernels and host synchronisations of one step
at the benchmark's size, then torch.profiler's table of the step named.

`run(device="cpu", repeats=...) -> dict` is what the benchmark suite calls.

On a shared machine, OpenMP worker threads that spin after each parallel region take the core
the main thread needs for conv_mask's many small element-wise steps, which inflates its time
but not a plain convolution's; run with `OMP_WAIT_POLICY=PASSIVE` (set before Python starts),
or `--threads 1`, to measure the layer rather than the neighbours.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from legacy_compat.cli import positive_int, run_cli
from reproduce.experiments.options import add_common, start_device
from reproduce.layers.conv_mask import ConvMask, FilterLossContext, raise_deferred_errors
from reproduce.models.builder import network_init
from reproduce.models.registry import MODELS, train_opts
from reproduce.runtime.device import resolve_device
from reproduce.training import cnn_train as tr

__all__ = ["run", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps(dev: torch.device, batch: int, channels: int, size: int, seed: int) -> dict[str, Callable[[], None]]:
    """The three timed steps (forward + backward): plain Conv2d, conv_mask 1 class, 6 classes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(batch, channels, size, size, generator=gen)).to(dev).requires_grad_(True)
    gout = torch.randn(batch, channels, size, size, generator=gen).to(dev)

    conv = nn.Conv2d(channels, channels, 3, padding=1).to(dev)
    mask = ConvMask(channels, channels, 3, size, pad=1, generator=gen).to(dev).train()
    mask6 = ConvMask(channels, channels, 3, size, pad=1, generator=gen).to(dev).train()

    def plain_step() -> None:
        x.grad = None
        conv.zero_grad(set_to_none=True)
        conv(x).backward(gout)

    labels1 = (torch.arange(batch) % 3 == 0).float().mul(2).sub(1)[:, None].to(dev)
    ctx1 = FilterLossContext(labels1, epoch=3)
    n_cls = 6
    labels6 = -torch.ones(batch, n_cls)
    labels6[torch.arange(batch), torch.arange(batch) % n_cls] = 1
    ctx6 = FilterLossContext(labels6.to(dev), epoch=3, density=torch.full((n_cls,), 1.0 / n_cls))
    slice_mag = torch.rand(channels, n_cls, generator=gen)

    mask6.set_slice_mag(slice_mag)

    def mask_step(layer: ConvMask, ctx: FilterLossContext) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x, ctx).backward(gout)
        return step

    return {"plain": plain_step, "single": mask_step(mask, ctx1), "multi": mask_step(mask6, ctx6)}


def run(device: str = "cpu", repeats: int = 5, batch: int = 32, channels: int = 512, size: int = 14,
        threads: int | None = None, seed: int = 0) -> dict:
    """Time conv_mask (1 class, 6 classes) and Conv2d forward+backward; returns the medians (s) and ratios."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    # interleaved (plain, single, multi) rounds, so that a change of machine load hits all three
    steps = _steps(dev, batch, channels, size, seed)
    for step in steps.values():          # warm-up
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            _sync(dev)
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    t_plain, t_single, t_multi = (statistics.median(times[k]) for k in ("plain", "single", "multi"))
    m_plain, m_single, m_multi = (min(times[k]) for k in ("plain", "single", "multi"))
    return {"device": str(dev), "threads": torch.get_num_threads(), "repeats": repeats,
            "shape": [batch, channels, size, size], "conv2d_s": t_plain, "conv_mask_single_s": t_single,
            "conv_mask_multi6_s": t_multi, "ratio_single": t_single / t_plain, "ratio_multi6": t_multi / t_plain,
            "min_ratio_single": m_single / m_plain, "min_ratio_multi6": m_multi / m_plain}


def _is_aten(name: str) -> bool:
    return name.startswith("aten::")


def count_ops(device: str = "cpu", batch: int = 8, channels: int = 64, size: int = 14, seed: int = 0) -> dict:
    """Per forward+backward step ('plain', 'single', 'multi'): top-level ATen operations (see the
    module docstring) and, on CUDA, kernels launched and host synchronisations (counted with
    torch.cuda.set_sync_debug_mode('warn'))."""


    dev = resolve_device(device)
    steps = _steps(dev, batch, channels, size, seed)
    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    result: dict = {"device": str(dev), "shape": [batch, channels, size, size]}
    for name, fn in steps.items():
        fn()
        _sync(dev)
        with torch_profile(activities=activities) as prof:
            fn()
            _sync(dev)
        events = list(prof.events())
        top = 0
        for e in events:
            if not _is_aten(e.name) or e.device_type != DeviceType.CPU:
                continue
            p = e.cpu_parent
            while p is not None and not _is_aten(p.name):
                p = p.cpu_parent
            top += p is None
        entry = {"aten_ops": top}
        if cuda:
            entry["kernels"] = sum(1 for e in events if e.device_type == DeviceType.CUDA)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            entry["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
            _sync(dev)
        result[name] = entry
    return result


def sync_check(device: str = "cuda", batch: int = 32, model: str = "vgg-vd-16") -> list[str]:
    """Host synchronisations in a training step, with torch.cuda.set_sync_debug_mode('error'):
    conv_mask forward+backward (1 class, 6 classes with sliceMag) at the benchmark's size, then
    the `model` ICNN's forward, backward, SGD update and sliceMag update (reproduce.train's,
    without its statistics) on a batch already on the GPU, after a warm-up. One line per part:
    'ok' or the error."""



    dev = resolve_device(device)
    if dev.type != "cuda":
        return [f"sync check: needs CUDA, got {dev}"]
    steps = _steps(dev, batch, 512, 14, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, _, _ = network_init(1, model, 0.5, pretrained=None, seed=0)
    net = net.to(dev).train()
    size = MODELS[model].image_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).mul_(255).sub_(128).to(dev)
    labels = torch.as_tensor(np.where(np.arange(batch) % 2 == 0, 1.0, -1.0), dtype=torch.float32)[:, None].to(dev)
    sgd = tr.MatConvNetSGD(net.matconvnet_params())
    lr = train_opts(1, model).learning_rate[0]
    ctx = FilterLossContext(labels, epoch=1)
    state: dict = {}

    def forward() -> None:
        net.zero_grad(set_to_none=True)
        state["res"] = net.run(x, context=ctx)

    parts = [("conv_mask forward+backward, 1 class", steps["single"]),
             ("conv_mask forward+backward, 6 classes + sliceMag", steps["multi"]),
             (f"{model} ICNN forward (batch {batch})", forward),
             (f"{model} ICNN backward", lambda: state["res"][-1].sum().backward()),
             (f"{model} SGD update", lambda: sgd.step(lr, batch_size=batch)),
             (f"{model} sliceMag update", lambda: tr.update_slice_mags(net, state["res"], labels,
                                                                     tr.SLICE_MAG_FILL_COLUMN1))]
    for _, fn in parts:             # warm-up: constants and caches built, allocator primed
        fn()
    _sync(dev)
    forward()
    lines = []
    for name, fn in parts:
        _sync(dev)
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            lines.append(f"sync check: {name}: ok (no host synchronisation)")
        except RuntimeError as err:
            lines.append(f"sync check: {name}: SYNCHRONISES: {str(err).splitlines()[0][:200]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _sync(dev)
    raise_deferred_errors(net)
    return lines


def format_counts(c: dict) -> str:
    lines = [f"operations per forward+backward, {c['device']}, input {c['shape']}"]
    labels = {"plain": "Conv2d", "single": "conv_mask, 1 class", "multi": "conv_mask, 6 classes + sliceMag"}
    for k, label in labels.items():
        e = c[k]
        extra = "".join(f"   {e[f]:4d} {f.replace('_', ' ')}" for f in ("kernels", "host_syncs") if f in e)
        lines.append(f"  {label:32s} {e['aten_ops']:4d} top-level ATen ops{extra}")
    return "\n".join(lines)


def profile(device: str = "cpu", batch: int = 32, channels: int = 512, size: int = 14, step: str = "single",
            rows: int = 25, seed: int = 0) -> str:
    """torch.profiler's table of one warmed-up `step` ('plain', 'single', 'multi'): where the time
    goes, operator by operator (sorted by self time on the device: CUDA kernels, or the CPU)."""

    dev = resolve_device(device)
    fn = _steps(dev, batch, channels, size, seed)[step]
    fn()
    _sync(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        _sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.bench.conv_mask", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=positive_int, default=5)
    add_common(p)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--profile", nargs="?", const="single", choices=["plain", "single", "multi"], default=None,
                   help="instead of timing: operations per step (CPU, 8 x 64 x 14 x 14; on CUDA also kernels and "
                        "host syncs at the benchmark's size) and torch.profiler's table of one step of this kind")
    p.add_argument("--sync-check", action="store_true",
                   help="CUDA: host synchronisations in a training step (set_sync_debug_mode('error'))")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.bench.conv_mask", lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    device = start_device(args)
    if args.sync_check:
        lines = sync_check(device, args.batch)
        print("\n".join(lines))
        return 0 if all(": ok" in line for line in lines) else 1
    if args.profile:
        print(format_counts(count_ops("cpu")))
        if resolve_device(device).type == "cuda":
            print(format_counts(count_ops(device, args.batch, 512, 14)))
        print(profile(device, args.batch, step=args.profile))
        return 0
    r = run(device, args.repeats, args.batch, threads=args.threads)
    print(f"device {r['device']}, {r['threads']} threads, input {r['shape']}, 3x3 conv 512->512, "
          f"median of {r['repeats']} forward+backward runs")
    print(f"  Conv2d                      {r['conv2d_s'] * 1000:9.1f} ms")
    print(f"  conv_mask, 1 class          {r['conv_mask_single_s'] * 1000:9.1f} ms   ratio {r['ratio_single']:.3f}")
    print(f"  conv_mask, 6 classes        {r['conv_mask_multi6_s'] * 1000:9.1f} ms   ratio {r['ratio_multi6']:.3f}")
    print(f"  ratios of the fastest runs: 1 class {r['min_ratio_single']:.3f}, 6 classes {r['min_ratio_multi6']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
