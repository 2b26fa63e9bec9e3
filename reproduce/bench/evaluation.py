"""Benchmark of the evaluation: location stability and the occlusion pass, time per image.

- Location stability (computeStability.m, batched): a vgg-vd-16-sized ICNN
  (network_init('vgg-vd-16'), random trunk: the time does not depend on the
  weights) measured at its conv_mask layer (layerID 14) over the fox images
  (n02118333, the images with a part: getI, forward to the layer, peaks,
  distances). Reported: seconds per image end to end, and for the forward +
  peak search alone (patches loaded beforehand).
- Occlusion pass (step_drawRF.m computeRF): one image's 484 occluded copies
  (33 x 33 squares, stride 9, 224 x 224) through the same net up to the
  layer, in batches. Reported: seconds per image (all its copies) and per copy.

`run() -> dict` returns the numbers; `python -m reproduce.bench.evaluation` prints
them. CPU by default (the issue asks for CPU timings); `--device cuda` too.
On a small CPU, `--max-images` and `--occlusions` time a part and scale up
(per-image numbers stay per image).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.ilsvrc import ilsvrc_conf
from legacy_compat.cli import add_data_root, positive_int, run_cli
from reproduce.evaluation import location_instability as li
from reproduce.evaluation import net_evaluation as ne
from reproduce.evaluation import net_features as nf
from reproduce.evaluation import receptive_fields as rf
from reproduce.experiments.options import add_common, start_device
from reproduce.layers.geometry import get_conv_net_para
from reproduce.models.builder import network_init
from reproduce.runtime.device import resolve_device

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"   # <project>/../shared/data
CATEGORY = "n02118333"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vgg16_icnn(device: torch.device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # no pretrained trunk: random weights are fine for timing
        net, _, _ = network_init(1, "vgg-vd-16", 0.5, seed=0)
    return net.to(device).eval()


def run(device: str = "cpu", data_root: str | Path = DEFAULT_DATA_ROOT, max_images: int | None = None,
        batch_size: int = 32, occlusions: int | None = None, occlusion_batch_size: int = 64,
        threads: int | None = None) -> dict[str, Any]:
    """Time location stability and one occlusion pass; returns a dict of the numbers and settings."""

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    net = _vgg16_icnn(dev)
    layer_id = ne.layer_id_for_model("vgg-vd-16")
    source = li.CategorySource.from_conf(CATEGORY, ilsvrc_conf(data_root), (1, 2))
    if max_images is not None:
        source.objects = list(source.objects)[:int(max_images)]
    mean = np.full((224, 224, 3), 115.0, dtype=np.float32)
    res, total = _time_stability(net, source, layer_id, mean, dev, batch_size)
    n_img = int(res.valid_images.sum())
    idx = [int(i) for i in np.flatnonzero(res.valid_images)]
    patches = {i: source.load_patch(source.objects[i], (224, 224)) for i in idx}
    forward = _time_forward_and_peaks(net, patches, idx, len(source.objects), layer_id, mean, dev, batch_size)
    image = torch.from_numpy(np.ascontiguousarray((patches[idx[0]] - mean).transpose(2, 0, 1))).to(dev)
    per_copy, n_timed, n_all = _time_occlusion(net, image, layer_id, dev, occlusions, occlusion_batch_size)
    return {
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "net": "vgg-vd-16 ICNN (random trunk), layerID 14 (conv_mask, 14 x 14 x 512)",
        "images": n_img, "batch_size": batch_size,
        "stability_s_per_image": total / n_img,
        "stability_forward_s_per_image": forward / n_img,
        "stability": res.stability,
        "occlusions_timed": n_timed, "occlusions_per_image": n_all,
        "occlusion_batch_size": occlusion_batch_size,
        "occlusion_s_per_copy": per_copy,
        "occlusion_s_per_image": per_copy * n_all,
    }


def _time_stability(net, source, layer_id: int, mean: np.ndarray, dev: torch.device,
                    batch_size: int) -> tuple[Any, float]:
    """Location stability end to end: (its StabilityResult, seconds)."""
    _sync(dev)
    t0 = time.perf_counter()
    res = li.compute_stability(net, source, li.MeasuredLayer(layer_id, image_size=(224, 224)), mean,
                               li.StabilitySettings(part_list=(1, 2)), li.ForwardPass(dev, batch_size))
    _sync(dev)
    return res, time.perf_counter() - t0


def _time_forward_and_peaks(net, patches: dict, idx: list[int], num_images: int, layer_id: int, mean: np.ndarray,
                            dev: torch.device, batch_size: int) -> float:
    """Seconds of the forward passes and the peak search alone, the patches loaded beforehand."""
    target = nf.target_layer_index(get_conv_net_para(net), layer_id)
    batches = list(nf.iterate_patch_batches(lambda i: patches[i], idx, mean, batch_size))
    _sync(dev)
    t0 = time.perf_counter()
    li.extract_layer_peaks(net, batches, target, num_images, None, dev)
    _sync(dev)
    return time.perf_counter() - t0


def _time_occlusion(net, image: torch.Tensor, layer_id: int, dev: torch.device, occlusions: int | None,
                    occlusion_batch_size: int) -> tuple[float, int, int]:
    """One image's occlusion pass (all 484 copies, or the first `occlusions`): (seconds per copy,
    copies timed, copies per image)."""
    st = rf.drawing_setup(net, layer_id, (224, 224))
    corners = rf.occlusion_list(224, 224)
    n_all = len(corners)
    if occlusions is not None:
        corners = corners[:int(occlusions)]
    _sync(dev)
    t0 = time.perf_counter()
    rf.occlusion_values(net, st, image, corners, rf.OCCLUDE_SIZE, 1, occlusion_batch_size, dev)
    _sync(dev)
    return (time.perf_counter() - t0) / len(corners), len(corners), n_all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.bench.evaluation", description=__doc__.split("\n\n")[0])
    add_common(p, tf32=False)
    add_data_root(p, str(DEFAULT_DATA_ROOT), "the fox data (default ../shared/data)")
    p.add_argument("--max-images", type=positive_int, default=None, help="time only the first N fox images")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--occlusions", type=positive_int, default=None, help="time only N of the 484 occluded copies")
    p.add_argument("--occlusion-batch-size", type=positive_int, default=64)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run_cli("reproduce.bench.evaluation", lambda: _run(a), debug=a.debug)


def _run(a: argparse.Namespace) -> int:
    out = run(start_device(a), a.data_root, a.max_images, a.batch_size, a.occlusions, a.occlusion_batch_size,
              a.threads)
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
