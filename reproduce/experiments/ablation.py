"""What does the filter loss do, and what do the masks alone do? An ablation, one command.

    python -m reproduce.ablation                          # toy01, tiny net, 8 epochs, seeds 0 1 2
    python -m reproduce.ablation --seeds 0 1 2 3 4 --out output/ablation
    python -m reproduce.ablation --pretrained output/pretrain/tiny-toy-pretrained.mat

No counterpart in the original code. Three nets are trained the same way (demo.m's protocol
through reproduce.pipeline: the same data, initial weights, seed, schedule):

- ``ordinary``: the ordinary CNN (plain conv layers instead of conv_mask);
- ``icnn-no-filter-loss``: the interpretable CNN with the filter loss switched off: its
  conv_mask layers get no FilterLossContext, so their backward passes carry no filter-loss
  gradient and no beta update (beta stays at its initial 2); the masks are still applied,
  forward and backward ("masks only");
- ``icnn``: the interpretable CNN as published (filter loss, learned beta, sliceMag).

Each ICNN is also measured with its masks switched off at evaluation: every conv_mask's beta set
to 0, so that mask = 1 everywhere (getMask.m: max(1 - beta * distance, -1)). Every net is
measured before training (the weights network_init gives for the seed) and after, with three
figures: binary error (the validation images of the imdb, our_cnn_train.m's error_binary;
after training with the masks on it equals showResults.m's last-epoch figure), location
instability (showResults.m, reproduce.evaluate) and part interpretability
(reproduce.interpretability, CVPR 2018 Sec. 5.2.1: round receptive fields on the post-ReLU/mask
tensor of the held-out objects; the toy's part masks, Pascal-Part's for VOC). Over several seeds
the table gives mean and spread (sample standard deviation).

The runs' checkpoints follow the pipeline's folders (``<out>/mat/<category>``,
``<category>-ordinary``), so `demo.py --quick --baseline` reuses its two trained nets and trains
only the third; other seeds and the masks-only ICNN get their own folders. Results go to
``<out>/ablation.json`` and ``<out>/ablation.csv``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.facts import DATASETS
from legacy_compat.atomic import atomic_write_bytes
from legacy_compat.cli import UserError, dropout_rate, nonnegative_int, positive_int, run_cli
from reproduce.evaluation.location_instability import BATCH_SIZE as STABILITY_BATCH_SIZE
from reproduce.evaluation.location_instability import (
    CategorySource,
    ForwardPass,
    StabilitySettings,
    compute_stability,
)
from reproduce.evaluation.net_evaluation import layer_id_for_model, load_net_for_evaluation
from reproduce.evaluation.net_features import read_mean_data
from reproduce.evaluation.part_interpretability import (
    HeldOutImages,
    compute_part_interpretability,
    compute_part_interpretability_multiclass,
    held_out_indices,
    layer_geometry,
    measured_maps,
    part_interpretability,
    part_regions_for,
    report_radii,
    source_layer_maps,
)
from reproduce.experiments.options import (
    add_common,
    add_toy_run_options,
    run_option_problem,
    start_device,
    toy_size_options,
)
from reproduce.experiments.pipeline import (
    Experiment,
    build_imdb,
    build_net,
    image_size_of,
    input_size,
    ordinary_counterpart,
    prepare_dataset,
    slice_mag_fill,
)
from reproduce.layers.conv_mask import ConvMask
from reproduce.training.checkpoints import checkpoint_path, last_checkpoint_epoch
from reproduce.training.cnn_train import train, validation_error

__all__ = [
    "METRICS",
    "PART_NOT_AVAILABLE",
    "ROWS",
    "VARIANTS",
    "AblationExperiment",
    "cached_source",
    "disable_filter_loss",
    "format_table",
    "has_part_regions",
    "main",
    "masks_off",
    "measure_net",
    "run_ablation",
    "run_variant",
    "summarise",
    "summary_cell",
    "summary_csv",
    "write_results",
]

VARIANTS = ("ordinary", "icnn-no-filter-loss", "icnn")
#: (label, variant, masks off at evaluation)
ROWS = (("ordinary CNN", "ordinary", False),
        ("ICNN, filter loss off (masks only)", "icnn-no-filter-loss", False),
        ("  the same, masks off at eval (beta=0)", "icnn-no-filter-loss", True),
        ("ICNN as published", "icnn", False),
        ("  the same, masks off at eval (beta=0)", "icnn", True))
METRICS = ("binary_error", "location_instability", "part_interpretability")
#: What the ablation says (and its table shows) where the dataset has part landmarks only.
PART_NOT_AVAILABLE = "part interpretability: not available (landmarks only)"
_DIR_SUFFIX = {"ordinary": "-ordinary", "icnn-no-filter-loss": "-no-filter-loss", "icnn": ""}


@dataclass
class AblationExperiment(Experiment):
    """A pipeline Experiment whose checkpoint folder says the variant (and the seed, unless it is
    `base_seed`): the pipeline's own folders for the ordinary CNN and the ICNN at the base seed."""

    variant: str = "icnn"
    base_seed: int = 0

    @property
    def exp_dir(self) -> Path:
        seed = "" if self.seed == self.base_seed else f"-seed{self.seed}"
        return self.out / "mat" / f"{self.name}{_DIR_SUFFIX[self.variant]}{seed}"


# ================================================================== the switches
def _conv_masks(net: Any) -> list[Any]:
    return [m for m in net.modules() if isinstance(m, ConvMask)]


def disable_filter_loss(net: Any) -> list[Any]:
    """Switch the filter loss off in every conv_mask layer of `net` (masks still applied): the layers
    no longer receive the training context. Returns the hook handles (`.remove()` restores it)."""
    handles = []
    for layer in _conv_masks(net):
        layer.require_context = False
        handles.append(layer.register_forward_pre_hook(lambda module, args: (args[0],)))
    return handles


def masks_off(net: Any) -> Any:
    """A copy of `net` with every conv_mask's beta set to 0: mask = 1 everywhere."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        for layer in _conv_masks(other):
            layer.beta.zero_()
    return other


# ================================================================== the three figures
@dataclass
class _Measuring:
    """What every measurement of one category needs, prepared once."""

    exp: Experiment
    paths: Any
    imdb: Any
    source: Any
    regions: Any
    indices: list[int]
    layer_id: int
    part_list: tuple[int, ...]
    held_out: list[int] = field(default_factory=list)     # part interpretability's images (regions' order)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)   # by `net_fingerprint`


def _prepare(exp: Experiment, paths: Any, imdb: Any, category: str | None = None) -> _Measuring:
    """Location stability on every object of the category (showResults.m); part interpretability on
    the held-out ones (the imdb's validation objects, `interpretability.held_out_indices`)."""
    conf = paths.data_conf()
    category = exp.categories[0] if category is None else category
    part_list = tuple(paths.parts_for(category))
    source = cached_source(CategorySource.from_conf(category, conf, sorted(set(part_list) | {1})))
    indices = [i for i, o in enumerate(source.objects) if o is not None]
    held_out = held_out_indices(source.objects)
    size = (input_size(exp), input_size(exp))
    annodir = getattr(paths, "anno_dir", None)
    regions = (part_regions_for(exp.dataset, category, [source.objects[i] for i in held_out], conf, size, annodir)
               if has_part_regions(exp.dataset, annodir) else None)
    return _Measuring(exp, paths, imdb, source, regions, indices, layer_id_for_model(exp.model), part_list, held_out)


def has_part_regions(dataset: str, part_masks: Any = None) -> bool:
    """Whether part interpretability can be measured on `dataset` (interpretability.part_regions_for:
    the toy's masks, Pascal-Part's, your own images' --part-masks label maps when given); the others
    (ilsvrcanimalpart, cub200, ...) have part landmarks only, so the ablation measures binary error
    and location instability there."""
    source = DATASETS[dataset].part_regions if dataset in DATASETS else None   # own images: with --part-masks
    return source in ("generated-masks", "pascal-part") or (source == "label-maps" and part_masks is not None)


def cached_source(source: Any) -> Any:
    """The same CategorySource with getI's patches kept after the first read (every net is
    measured on the same patches, several times; reproduce.report reads each image several times too)."""
    cache: dict[tuple, np.ndarray] = {}
    load = source.load_patch

    def load_patch(obj: Any, size: tuple[int, int]) -> np.ndarray:
        key = (obj.folder, obj.filename, obj.ID, tuple(size))
        if key not in cache:
            cache[key] = load(obj, size)
        return cache[key]
    return replace(source, load_patch=load_patch)


def net_fingerprint(net: Any) -> str:
    """A digest of the net's layer types and every parameter and buffer (names, shapes, values)."""
    digest = hashlib.sha256(" ".join(type(module).__name__ for module in net.modules()).encode())
    for name, value in net.state_dict().items():
        digest.update(f"{name} {tuple(value.shape)} {value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def measure_net(net: Any, m: _Measuring) -> dict[str, float]:
    """Binary error, location instability and part interpretability of `net` (evaluation mode).

    The measures are deterministic functions of the net, so a net equal to one already measured
    (the untrained ICNN with and without the filter loss start from the same weights) is not
    measured again: the figures are reused (`m.measured`, keyed by `net_fingerprint`)."""
    key = net_fingerprint(net)
    if key not in m.measured:
        m.measured[key] = _measure(net, m)
    return dict(m.measured[key])


def _measure(net: Any, m: _Measuring) -> dict[str, float]:
    """One forward pass over the evaluation images (location stability's batches of 32) feeds both
    location stability (all the category's objects, the raw output) and part interpretability (the
    held-out objects, the post-ReLU/mask tensor made once from the same output): at the default radius,
    and in `part_interpretability_by_region` at each of `interpretability.report_radii` and upsampled.
    Where the dataset has landmarks only (m.regions None), part interpretability is NaN."""
    net = net.to(m.exp.device).eval()
    mean = read_mean_data(m.imdb)
    maps = source_layer_maps(net, m.source, m.layer_id, mean, m.indices, device=m.exp.device,
                             batch_size=STABILITY_BATCH_SIZE)
    row = {i: r for r, i in enumerate(m.indices)}

    def layer_maps(chunk: list[int]) -> torch.Tensor:
        return torch.from_numpy(maps[[row[i] for i in chunk]])
    stability = compute_stability(net, m.source, m.layer_id, mean, StabilitySettings(part_list=m.part_list),
                                  ForwardPass(m.exp.device, STABILITY_BATCH_SIZE), layer_maps=layer_maps)
    record = {"binary_error": validation_error(net, m.imdb, m.exp.device, batch_size=100)["binerr"],
              "location_instability": float(stability.stability), "part_interpretability": float("nan")}
    if m.regions is None:
        return record
    masked = measured_maps(net, m.layer_id, maps[[row[i] for i in m.held_out]])
    geometry = layer_geometry(net, m.layer_id)
    settings = {f"{r:.4g}": {"radius": r} for r in report_radii(geometry.stride)} | {"upsample": {"method": "upsample"}}
    by_region = {k: float(part_interpretability(masked, m.regions, geometry, **kw).value) for k, kw in settings.items()}
    return {**record, "part_interpretability": next(iter(by_region.values())),
            "part_interpretability_by_region": by_region}


# ================================================================== one variant, one seed
def _build(exp: AblationExperiment):
    return build_net(replace(exp, interpretable=exp.variant != "ordinary"))


def run_variant(exp: AblationExperiment, m: _Measuring) -> dict:
    """Build, measure, train (resuming from the variant's checkpoints), measure again."""
    exp = exp if exp.variant != "ordinary" else ordinary_counterpart(exp)
    net, opts, meta = _build(exp)
    record: dict[str, Any] = {"variant": exp.variant, "seed": exp.seed, "exp_dir": str(exp.exp_dir)}
    t0 = time.perf_counter()
    record["before"] = measure_net(net, m)
    if exp.variant != "ordinary":
        record["before_masks_off"] = measure_net(masks_off(net), m)
    if exp.variant == "icnn-no-filter-loss":
        disable_filter_loss(net)
    fill = slice_mag_fill(exp)
    t1 = time.perf_counter()
    net, stats = train(net, m.imdb, opts, exp.exp_dir, device=exp.device, seed=exp.seed, progress=exp.progress,
                       meta=meta, slice_mag_fill=fill)
    t2 = time.perf_counter()
    record["after"] = measure_net(net, m)
    if exp.variant != "ordinary":
        record["after_masks_off"] = measure_net(masks_off(net), m)
    record["last_epoch_val_binerr"] = float(stats["val"][-1].get("binerr", float("nan"))) if stats.get("val") else None
    record["epochs"] = len(stats.get("val", []))
    record["seconds"] = {"train": t2 - t1, "measure": (t1 - t0) + (time.perf_counter() - t2)}
    return record


def run_ablation(exp: Experiment, seeds: Sequence[int], paths: Any = None,
                 variants: Sequence[str] = VARIANTS, say=print, on_record: Any = None,
                 skip: Any = None) -> list[dict]:
    """Every variant for every seed; `exp` gives the dataset, category, model and schedule (its
    seed is the base seed whose folders are the pipeline's own). `on_record(record)` is called as each
    run finishes; `skip(seed, variant)` True leaves that run out (reproduce.realimages: already done)."""
    if exp.multiclass:
        raise ValueError("the ablation runs single-category nets (give one category)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    size = input_size(exp)                  # the size network_init gives the nets
    paths = paths if paths is not None else prepare_dataset(exp, size)
    imdb = build_imdb(exp, paths, (size, size))
    m = _prepare(exp, paths, imdb)
    records = []
    if m.regions is None:
        say(PART_NOT_AVAILABLE)
    for seed in seeds:
        for variant in variants:
            if skip is not None and skip(int(seed), variant):
                continue
            e = AblationExperiment(**{**_fields(exp), "seed": int(seed), "draw": False}, variant=variant,
                                   base_seed=exp.seed)
            say(f"ablation: {variant}, seed {seed} (checkpoints in {e.exp_dir})")
            records.append(run_variant(e, m))
            if on_record is not None:
                on_record(records[-1])
    return records


def _fields(exp: Experiment) -> dict:
    return {f.name: getattr(exp, f.name) for f in fields(Experiment)}


# ================================================================== the table
def summarise(records: Sequence[dict]) -> list[dict]:
    """One entry per row of ROWS: for 'before' and 'after', each metric's mean, std (ddof 1) and n."""
    out = []
    for label, variant, off in ROWS:
        recs = [r for r in records if r["variant"] == variant]
        if not recs:
            continue
        row: dict[str, Any] = {"row": label, "variant": variant, "masks_off_at_eval": off,
                               "seeds": [r["seed"] for r in recs]}
        for when in ("before", "after"):
            key = f"{when}_masks_off" if off else when
            for metric in METRICS:
                values = np.array([r[key][metric] for r in recs], dtype=np.float64)
                row[f"{when}_{metric}_mean"] = float(np.mean(values))
                row[f"{when}_{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
                row[f"{when}_{metric}_values"] = values.tolist()
        out.append(row)
    return out


def summary_cell(row: dict, when: str, metric: str) -> str:
    """A summary row's `metric` before or after training (`when`): 'mean' for one seed, else 'mean±std'."""
    mean, std = row[f"{when}_{metric}_mean"], row[f"{when}_{metric}_std"]
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f}±{std:.3f}"


def format_table(summary: Sequence[dict]) -> str:
    """The ablation table: before -> after training, each metric (mean ± std over the seeds)."""
    head = ("binary error", "location instability", "part interpretability")
    lines = [f"{'':40s} " + "   ".join(f"{h + ' (before -> after)':^33s}" for h in head),
             f"{'':40s} " + "   ".join(f"{d:^33s}" for d in ("lower is better", "lower is better",
                                                               "higher is better"))]
    missing = False
    for row in summary:
        cells = [f"{summary_cell(row, 'before', k):>15s} -> {summary_cell(row, 'after', k):<14s}" for k in METRICS]
        if all(math.isnan(v) for when in ("before", "after") for v in row[f"{when}_part_interpretability_values"]):
            cells[-1], missing = f"{'n/a':^33s}", True
        lines.append(f"  {row['row']:<38s} " + "   ".join(cells))
    if missing:
        lines.append(f"  {PART_NOT_AVAILABLE}")
    n = {len(r["seeds"]) for r in summary}
    lines.append(f"  seeds: {', '.join(str(s) for s in summary[0]['seeds'])}" if summary else "")
    if n and max(n) > 1:
        lines.append("  mean±std: sample standard deviation over the seeds")
    return "\n".join(lines)


def write_results(out: Path, records: Sequence[dict], summary: Sequence[dict], settings: dict) -> tuple[Path, Path]:
    """ablation.json (settings, every run, the summary) and ablation.csv (the summary), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    js = out / "ablation.json"
    atomic_write_bytes(js, json.dumps({"settings": settings, "runs": list(records), "summary": list(summary)},
                                      indent=1, default=str).encode())
    cs = out / "ablation.csv"
    atomic_write_bytes(cs, summary_csv(summary))
    return js, cs


def summary_csv(summary: Sequence[dict], metrics: Sequence[str] = METRICS, leading: Sequence[str] = ()) -> bytes:
    """The summary rows as CSV: `leading` columns (e.g. 'category'), the row, its variant, masks off,
    the seeds, then each metric's mean and std before and after training."""
    buf = io.StringIO()
    cols = [*leading, "row", "variant", "masks_off_at_eval", "seeds"] + [
        f"{w}_{m}_{s}" for w in ("before", "after") for m in metrics for s in ("mean", "std")]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in summary:
        writer.writerow({**row, "seeds": " ".join(str(s) for s in row["seeds"])})
    return buf.getvalue().encode()


# ================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.ablation", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="toy", choices=list(DATASETS),
                   help="toy (default) or vocpart (needs Pascal-Part)")
    p.add_argument("--category", default="toy01", help="one category (default toy01)")
    p.add_argument("--model", default="tiny", help="network (default tiny)")
    p.add_argument("--dropout", type=dropout_rate, default=0.5)
    p.add_argument("--epochs", type=positive_int, default=8, help="epochs (default 8, the quick demo's)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--pretrained", default="none", help="'none' (random trunk), 'auto', or a MatConvNet model file")
    add_toy_run_options(p, "output/ablation")
    add_common(p)
    return p


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    toy = toy_size_options(args.toy_images)
    return Experiment(dataset=args.dataset, categories=[args.category], model=args.model, dropout=args.dropout,
                      out=Path(args.out), data_root=Path(args.data_root) if args.data_root else None,
                      pretrained=args.pretrained, offline=True, device=start_device(args, auto="cpu"),
                      seed=int(args.seeds[0]), epochs=args.epochs, draw=False, toy_options=toy,
                      progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.ablation`; errors are one or two lines (legacy_compat.cli.run_cli)."""
    args = build_parser().parse_args(argv)
    return run_cli("reproduce.ablation", lambda: _run(args, argv), debug=args.debug,
                   interrupted="run the same command again: finished nets resume from their checkpoints.")


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if (problem := run_option_problem(args.dataset, model=args.model, toy_images=args.toy_images)) is not None:
        raise UserError(problem)                # --toy-images for a dataset that is not generated
    exp = experiment_from_args(args)
    t0 = time.perf_counter()
    records = run_ablation(exp, args.seeds, variants=args.variants)
    summary = summarise(records)
    settings = {"command": "python -m reproduce.ablation " + " ".join(sys.argv[1:] if argv is None else argv),
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "seconds": time.perf_counter() - t0}
    js, cs = write_results(Path(args.out), records, summary, settings)
    print()
    print(format_table(summary))
    print(f"\nablation: {len(records)} runs in {time.perf_counter() - t0:.0f} s; {js}, {cs}")
    return 0


def part_interpretability_of_run(exp: Experiment, paths: Any) -> dict[str, Any]:
    """For the paper runner (`--part-interpretability`): the part interpretability of a finished run's
    net (its last epoch checkpoint in exp.exp_dir) and of the net training started from, on each
    category's held-out images; a multi-class net's filters each measured on the category that
    activates them most (`part_interpretability_filters` says, per filter, its P_f, part and category)."""

    start, _, meta = build_net(exp)
    imdb = build_imdb(exp, paths, image_size_of(meta))
    ms = [_prepare(exp, paths, imdb, category) for category in exp.categories]
    last = last_checkpoint_epoch(exp.exp_dir)
    if last == 0:
        raise FileNotFoundError(f"no net-epoch-N.pt checkpoint in {exp.exp_dir}")
    trained, _, _ = load_net_for_evaluation(checkpoint_path(exp.exp_dir, last), exp.device)
    mean = read_mean_data(imdb)

    def measure(net: Any) -> Any:
        net = net.to(exp.device).eval()
        if len(ms) == 1:
            return compute_part_interpretability(net, HeldOutImages(ms[0].source, ms[0].regions, ms[0].held_out), mean,
                                                 layer_id=ms[0].layer_id, device=exp.device)
        return compute_part_interpretability_multiclass(
            net, [HeldOutImages(m.source, m.regions, m.held_out) for m in ms], mean, layer_id=ms[0].layer_id,
            device=exp.device)
    res, res0 = measure(trained), measure(start)
    per_filter = {"P_f": [None if np.isnan(v) else float(v) for v in res.per_filter],
                  "part": [int(k) for k in res.part_of_filter], "radius": res.radius,
                  "images": {c: len(m.held_out) for c, m in zip(exp.categories, ms)}}
    if res.category_of_filter is not None:
        per_filter["category"] = [exp.categories[int(c)] for c in res.category_of_filter]
    return {"part_interpretability": float(res.value), "part_interpretability_at_start": float(res0.value),
            "part_interpretability_filters": per_filter}


if __name__ == "__main__":
    sys.exit(main())
