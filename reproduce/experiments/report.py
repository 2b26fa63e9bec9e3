"""An HTML report of a trained run: every filter of the measured layer, what it fires on, and how well.

    python -m reproduce.report RUN_DIR                 # writes RUN_DIR/report/index.html
    python -m reproduce.report RUN_DIR --compare OTHER # side by side with another run's net
    python demo.py --quick --baseline --report         # the same at the end of a demo run

Not in the original code (showResults.m prints two numbers and step_drawRF.m writes loose JPEGs);
in the manner of Network Dissection's per-unit pages. The page set opens from the file system,
with no server and no network (no CDN: its CSS and JavaScript are inline):

- a summary of each net: dataset, category, model, epochs, binary error (the last epoch's, as
  showResults.m reads it), location instability with the conv_mask masks on and off
  (`reproduce.ablation.masks_off`: beta = 0), part interpretability where the dataset has part
  regions (the toy set, Pascal-Part), the training curves (net-train.png), the command that
  produced the run (the run lock's record, `legacy_compat.runlock.lock_holder`);
- one section per filter of the measured layer (showResults.m's layerID: the first conv_mask
  layer, or the plain conv at its place in the ordinary CNN), ``id="filter-N"``, N from 1 in
  MATLAB's filter order: its top images with the filter's receptive field drawn as step_drawRF.m
  draws it (computeRF's occlusion template, getRFMask, getRegion, drawEdge: `reproduce.draw_rf`),
  its location instability (getDistSqrtVar.m's per-filter spread / norm([ih iw]),
  `reproduce.evaluate`), its part interpretability and the part it is assigned to, and for a
  multi-class net the category it is assigned to (step_computeStability_multiClass.m's argmax
  of the mean peak score);
- sorting and filtering by instability, part or category, and a side-by-side mode for two nets
  (the ordinary CNN and the ICNN of one run, found beside each other, or ``--compare``).

Top images and receptive fields: the report's choices, beside step_drawRF.m's rule. The images
shown are each filter's `top` (10) images with the highest peak of its masked map (generateAMT-
OriginalImages' dep_max), so that the page shows what the filter fires on most. The receptive
field drawn on them is drawRF's: getRegion of the image's masked map with tau (the value exceeded
by 0.3 % of the filter's activations) and the filter's RFMask (getRFMask: the smoothed occlusion
template of computeRF, shifted onto each map cell), edged by drawEdge. step_drawRF.m computes the
template from the showNum (10) images it shows, drawn at random among those whose peak reaches tau;
the report computes it from showNum such qualifying images too, but chosen so that filters share
them (`choose_images`), because each image costs computeRF's occlusion passes (484 forward passes
at 224 x 224), and one pass of an occluded copy gives every filter's value: on the quick demo's
toy run, 15 images instead of 308 distinct ones. The net sees the image rounded to uint8, as
step_drawRF.m's images read back from their JPEGs (without the JPEG loss here).
"""
from __future__ import annotations

import argparse
import html
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_prep.facts import has_parts
from data_prep.setup import default_data_root
from legacy_compat.atomic import TMP_PREFIX, writer_tag
from legacy_compat.cli import UserError, add_data_root, positive_int, run_cli
from legacy_compat.numerics import mmax_reduce, mround, sort_descend_stable
from legacy_compat.runlock import LOCK_NAME, lock_holder
from reproduce.evaluation.location_instability import (
    BATCH_SIZE,
    GOLDFISH,
    CategorySource,
    ForwardPass,
    StabilitySettings,
    compute_stability,
)
from reproduce.evaluation.net_evaluation import (
    EvaluationSettings,
    evaluate_net,
    final_val_error,
    load_net_for_evaluation,
    measured_layer_id,
)
from reproduce.evaluation.net_features import (
    EvaluationError,
    iterate_patch_batches,
    layer_output,
    read_mean_data,
    target_layer_index,
)
from reproduce.evaluation.part_interpretability import (
    HeldOutImages,
    InterpretabilityError,
    compute_part_interpretability,
    compute_part_interpretability_multiclass,
    held_out_indices,
    part_regions_for,
)
from reproduce.evaluation.receptive_fields import (
    INTEGRATE_ENERGY,
    SAMPLING_TIMES,
    DrawingSetup,
    RFSettings,
    add_image_template,
    draw_edge,
    drawing_setup,
    get_region,
    get_rf_mask,
    mask_x,
    occlusion_list,
    occlusion_values_all,
    scaled_rf_settings,
    tau_from_masked,
)
from reproduce.experiments.ablation import cached_source, masks_off
from reproduce.experiments.grid import resolve_paths
from reproduce.experiments.options import add_common, add_no_progress, start_device
from reproduce.experiments.pipeline import Experiment
from reproduce.layers.geometry import get_conv_net_para
from reproduce.runtime.device import resolve_device
from reproduce.training import checkpoints as ckpt

__all__ = ["TOP_IMAGES", "THUMBNAIL_SIZE", "ReportError", "RunFolder", "FilterFacts", "RunFacts",
           "locate_runs", "experiment_of", "measure_run", "filter_drawings", "MeasuredImages",
           "render_html", "build_report", "report_run_dir", "report_experiments", "main"]

TOP_IMAGES = 10            # step_drawRF.m's showNum: images per filter
THUMBNAIL_SIZE = 128       # the longer side of a thumbnail, in pixels (smaller pictures are kept as they are)
TEMPLATE_BYTES = 256 * 2**20   # occlusion templates held at once (filters are drawn in groups under this)
PATCH_CACHE_BYTES = 2 * 2**30  # getI's patches are kept in memory when they take no more than this


class ReportError(UserError):
    """The run folder cannot be reported on: the message names the folder or file and what to do."""


# ================================================================== the runs
@dataclass
class RunFolder:
    """One trained net to report on: its checkpoint folder and its imdb cache (for the data mean)."""

    exp_dir: Path
    imdb: Path | None = None


def _has_checkpoint(folder: Path) -> bool:
    return any("pt" in files for files in ckpt.find_checkpoints(folder).values())


def _candidates(run_dir: Path) -> list[Path]:
    """The checkpoint folders of a run folder: itself, or demo.py's OUT/mat/<name>/ (ICNNs first)."""
    if _has_checkpoint(run_dir):
        return [run_dir]
    mat = run_dir / "mat"
    found = sorted(p for p in mat.iterdir() if p.is_dir() and _has_checkpoint(p)) if mat.is_dir() else []
    return sorted(found, key=lambda p: p.name.endswith("-ordinary"))


def _partner(exp_dir: Path) -> Path | None:
    """The other CNN of the same run: <name>-ordinary beside <name>, or the other way round."""
    name = exp_dir.name
    other = exp_dir.with_name(name[:-len("-ordinary")] if name.endswith("-ordinary") else name + "-ordinary")
    return other if _has_checkpoint(other) else None


def _find_imdb(exp_dir: Path, name: str) -> Path | None:
    """The imdb cache of a run: demo.py's OUT/mat/<name>/imdb, or reproduce.paper's OUT/imdb/*/mat/<name>/imdb."""
    base = exp_dir.name[:-len("-ordinary")] if exp_dir.name.endswith("-ordinary") else exp_dir.name
    for folder in (exp_dir / "imdb", exp_dir.with_name(base) / "imdb", exp_dir.parent / name / "imdb"):
        if folder.is_dir():
            return folder
    for up in exp_dir.parents[:4]:
        hits = sorted((up / "imdb").glob(f"*/mat/{name}/imdb")) if (up / "imdb").is_dir() else []
        if hits:
            return hits[0]
    return None


def locate_runs(run_dir: os.PathLike | str, compare: os.PathLike | str | None = None, name: str | None = None,
                imdb: os.PathLike | str | None = None) -> tuple[RunFolder, RunFolder | None]:
    """(the run reported on, the one beside it or None) for RUN_DIR: demo.py's --out folder, or a
    folder of net-epoch-N.pt (reproduce.paper's runs/.../<model>_<config>). The second is `compare`
    when given, else the other CNN of the same run (<name>-ordinary) when it was trained."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder (give the --out folder of demo.py or a checkpoint folder)")
    found = _candidates(run_dir)
    if name is not None:
        found = [p for p in found if p.name == name]
    if not found:
        raise ReportError(f"{run_dir}: no net-epoch-N.pt here nor in {run_dir / 'mat'}/*/"
                          + (f" named {name!r}" if name else "") + " (train first, or give a checkpoint folder)")
    names = {p.name for p in found if not p.name.endswith("-ordinary")}
    base = [n for n in names if all(o == n or o.startswith(n + "-") for o in names)]   # toy01 beside toy01-seed1
    if len(names) > 1 and not base:
        raise ReportError(f"{run_dir}: several runs ({', '.join(sorted(names))}); choose one with --name")
    main_dir = next(p for p in found if p.name == base[0]) if base else found[0]
    other = Path(compare) if compare is not None else _partner(main_dir)
    if other is not None:
        other = _candidates(other)[0] if other.is_dir() and _candidates(other) else None
        if other is None and compare is not None:
            raise ReportError(f"--compare {compare}: no net-epoch-N.pt there nor in its mat/*/")
    first = RunFolder(main_dir, Path(imdb) if imdb else None)
    return first, (RunFolder(other) if other is not None else None)


def run_command(exp_dir: Path) -> str | None:
    """The command that produced the run: the run lock's record in the output folder (demo.py's
    --out, reproduce.paper's --out: the nearest folder above the checkpoints that holds one)."""
    for folder in [exp_dir, *list(exp_dir.parents)[:4]]:
        if (folder / LOCK_NAME).is_file():
            return lock_holder(folder).get("command")
    return None


# ================================================================== the figures
@dataclass
class FilterFacts:
    """One filter of the measured layer (`index` 1-based, MATLAB's order): its figures and thumbnails."""

    index: int
    instability: float = float("nan")
    instability_off: float = float("nan")
    part_value: float = float("nan")
    part: str | None = None
    category: str | None = None
    thumbnails: list[str] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)


@dataclass
class RunFacts:
    """What the report says of one net."""

    label: str
    exp: Experiment
    exp_dir: Path
    epoch: int
    layer_id: int
    binary_error: float
    instability: float
    instability_off: float
    part_value: float
    filters: list[FilterFacts]
    curves: Path | None = None
    command: str | None = None
    parts: list[str] = field(default_factory=list)


def experiment_of(exp_dir: Path, data_root: Path | None, device: str) -> tuple[Experiment, Path]:
    """The pipeline Experiment a checkpoint folder was trained as (the options its last
    net-epoch-N.pt records) and that checkpoint. The output folder is the one above mat/."""
    epoch = ckpt.last_checkpoint_epoch(exp_dir)
    path = ckpt.find_checkpoints(exp_dir).get(epoch, {}).get("pt")
    if path is None:
        raise ReportError(f"{exp_dir}: its last checkpoint (epoch {epoch}) is not a net-epoch-N.pt of this package")
    run = ckpt.recorded_options(path).get("run")
    if not run:
        raise ReportError(f"{path} records no run options (dataset, categories, model): it was written by an "
                          f"older version or cannot be read; the report needs them")
    out = exp_dir.parent.parent if exp_dir.parent.name == "mat" else exp_dir.parent
    toy = dict(run.get("toy_options") or {})
    exp = Experiment(dataset=run["dataset"], categories=list(run["categories"]), model=run["model"],
                     dropout=float(run["dropout"]), loss=run["loss"], interpretable=bool(run["interpretable"]),
                     out=out, data_root=data_root, pretrained=str(run.get("pretrained", "auto")), offline=True,
                     device=device, image_size=int(run["image_size"]), toy_options=toy,
                     learning_rate_scale=float(run.get("learning_rate_scale", 1.0)), draw=False)
    return exp, path


@dataclass
class _Measured:
    """A net and what its measurement needs: the data, the mean, the layer."""

    net: Any
    stats: dict
    exp: Experiment
    paths: Any
    sources: list[CategorySource]
    mean: np.ndarray
    size: tuple[int, int]
    indices: list[list[int]] = field(default_factory=list)    # per source: its objects measured (not None)
    maps: list[np.ndarray] = field(default_factory=list)      # per source: the measured layer's output

    @property
    def error_name(self) -> str:
        return "top1err" if self.exp.loss == "ourloss_softmaxlog" else "binerr"


def _load(folder: RunFolder, data_root: Path | None, device: str, progress: bool) -> _Measured:
    """Load the net, set up its dataset (offline) and read its data mean; say what is missing first."""
    exp, path = experiment_of(folder.exp_dir, data_root, device)
    if not has_parts(exp.dataset) or exp.facts.attribute_labels:
        raise ReportError(f"{folder.exp_dir}: the report measures filters on annotated parts, which "
                          f"{exp.dataset} {'does not have' if not has_parts(exp.dataset) else 'has as landmarks of whole faces only (not supported yet)'}")
    imdb = folder.imdb or _find_imdb(folder.exp_dir, exp.name)
    if imdb is None:
        raise ReportError(f"{folder.exp_dir}: its imdb cache (for the data mean the net was trained with) is not "
                          f"where demo.py or reproduce.paper put it; give it with --imdb")
    net, stats, _ = load_net_for_evaluation(path, device)
    size = (int(exp.image_size), int(exp.image_size))
    paths = resolve_paths(replace(exp, progress=progress))
    conf = paths.data_conf()
    part_list = sorted(set(paths.parts_for(exp.categories[0])) | {1})
    sources = [CategorySource.from_conf(c, conf, part_list) for c in exp.categories]
    count = sum(len(s.objects) for s in sources)
    if count * 3 * size[0] * size[1] * 4 <= PATCH_CACHE_BYTES:
        sources = [cached_source(s) for s in sources]
    indices = [[i for i, o in enumerate(s.objects) if o is not None] for s in sources]
    return _Measured(net.eval(), stats, exp, paths, sources, read_mean_data(imdb), size, indices)


def _layer_id(m: _Measured, layer_id: int | None) -> int:
    """showResults.m's layerID (`net_evaluation.measured_layer_id`)."""
    try:
        return measured_layer_id(m.net, layer_id, m.exp.model)
    except EvaluationError:
        raise ReportError(f"model {m.exp.model!r} without conv_mask layers: give a run whose ICNN says which "
                          "layer") from None


@torch.no_grad()
def _forward(m: _Measured, layer_id: int, off: Any, progress: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The measured layer's output (pre-ReLU) for every image of every source (m.indices order): one
    forward pass that location instability, part interpretability and the top images share; and,
    when `off` (the measured layer with beta = 0, `masks_off`) is given, its output on the same
    input (the measured layer is the first conv_mask layer: nothing below it has a mask)."""
    target = target_layer_index(get_conv_net_para(m.net), layer_id)
    device = resolve_device(m.exp.device)
    m.net.to(device)
    if off is not None:
        off.to(device)
    on, without = [], []
    for source, indices in zip(m.sources, m.indices):
        def load(i: int, source: CategorySource = source) -> np.ndarray:
            return source.load_patch(source.objects[i], m.size)
        pairs = []
        for _, x in tqdm(iterate_patch_batches(load, indices, m.mean, BATCH_SIZE), desc=f"forward ({source.name})",
                         total=math.ceil(len(indices) / BATCH_SIZE), unit="batch", disable=not progress):
            below = layer_output(m.net, x.to(device), target - 1) if target > 1 else x.to(device)
            y = m.net.layers[target - 1](below)
            pairs.append((y.float().cpu().numpy(), None if off is None else off(below).float().cpu().numpy()))
        on.append(np.concatenate([p[0] for p in pairs]))
        without.append(np.concatenate([p[1] for p in pairs]) if off is not None else None)
    return on, without


def _stability(m: _Measured, net: Any, layer_id: int, maps: list[np.ndarray] | None,
               progress: bool) -> tuple[float, np.ndarray, list]:
    """Location instability of `net`: (the measure, per filter (P,), per-filter category or Nones).

    Single class: computeStability.m, on `maps` when given (the shared forward pass); per filter
    getDistSqrtVar.m's spread / norm([ih iw]) (the values computeStability.m averages). Several:
    step_computeStability_multiClass.m (evaluate_net); per filter its instability for the category
    it is assigned to (the highest mean peak score)."""
    if not m.exp.multiclass:
        source = m.sources[0]
        row = {i: r for r, i in enumerate(m.indices[0])}
        given = None if maps is None else (lambda chunk: torch.from_numpy(maps[0][[row[i] for i in chunk]]))
        parts = (1,) if source.name == GOLDFISH else m.paths.parts_for(source.name)
        res = compute_stability(net, source, layer_id, m.mean, StabilitySettings(part_list=parts),
                                ForwardPass(m.exp.device, progress=progress), layer_maps=given)
        per = np.asarray(res.dist_sqrt_var, np.float64) / np.linalg.norm(np.asarray(m.size, np.float64))
        return float(res.stability), per, [None] * per.size
    ev = evaluate_net(net, m.stats, m.sources, m.mean,
                      EvaluationSettings(layer_id=layer_id, part_list=m.paths.parts_for(m.exp.categories[0]),
                                         multiclass=True, error_name=m.error_name),
                      ForwardPass(m.exp.device, progress=progress))
    _, best = mmax_reduce(np.asarray(ev.details["score"], np.float64), axis=1)
    best = np.asarray(best).reshape(-1)
    per = np.asarray(ev.details["stability"], np.float64)[np.arange(best.size), best]
    return float(ev.stability), per, [m.exp.categories[int(b)] for b in best]


@dataclass
class PartFacts:
    """Part interpretability per filter: the mean over filters, P_f, and the part each is assigned to."""

    value: float
    per_filter: np.ndarray
    part: list[str | None]


def _part_facts(r: Any, regions: Any) -> PartFacts:
    """A PartInterpretability as the report shows it: the part k of the highest P_{f,k} (none when P_f
    is 0 or undefined)."""
    per_part = np.asarray(r.per_filter_part, np.float64)
    parts: list[str | None] = []
    for f in range(per_part.shape[0]):
        row = np.where(np.isnan(per_part[f]), -1.0, per_part[f])
        k = int(np.argmax(row))
        parts.append(str(regions.names.get(r.parts[k], f"part {r.parts[k]}")) if row[k] > 0 else None)
    return PartFacts(float(r.value), np.asarray(r.per_filter, np.float64), parts)


def _parts(m: _Measured, net: Any, layer_id: int, maps: list[np.ndarray]) -> PartFacts | None:
    """Part interpretability where the dataset has part regions (toy, vocpart), else None, measured as
    the pipeline measures it (issue 25): on each category's held-out objects (`held_out_indices`); a
    multi-class net through `compute_part_interpretability_multiclass`, each filter on the images of
    the category that activates it most (the papers' assignment; the per-filter categories the report
    shows are step_computeStability_multiClass.m's)."""
    held, regions = [], []
    for source, indices in zip(m.sources, m.indices):
        keep = set(indices)
        chosen = [i for i in held_out_indices(source.objects) if i in keep]
        try:
            regions.append(part_regions_for(m.exp.dataset, source.name, [source.objects[i] for i in chosen],
                                            m.paths.data_conf(), m.size, getattr(m.paths, "anno_dir", None)))
        except InterpretabilityError:
            return None
        held.append(chosen)
    if len(m.sources) == 1:
        row = {i: r for r, i in enumerate(m.indices[0])}
        given = None if maps is None else maps[0][[row[i] for i in held[0]]]
        images = HeldOutImages(m.sources[0], regions[0], held[0], given)
        return _part_facts(compute_part_interpretability(net, images, m.mean, layer_id=layer_id), regions[0])
    images = [HeldOutImages(s, r, i) for s, r, i in zip(m.sources, regions, held, strict=True)]
    r = compute_part_interpretability_multiclass(net, images, m.mean, layer_id=layer_id, device=m.exp.device)
    return _part_facts(r, regions[0])


def measure_run(folder: RunFolder, data_root: Path | None, device: str, *, layer_id: int | None = None,
                progress: bool = True) -> tuple[RunFacts, _Measured]:
    """Every figure of the report for one net: binary error, location instability with masks on and
    off (per filter too), part interpretability (per filter, with the assigned part), categories."""
    m = _load(folder, data_root, device, progress)
    layer_id = _layer_id(m, layer_id)
    has_masks = any(t == "conv_mask" for t in m.net.layer_types)
    net_off = masks_off(m.net) if has_masks else None
    target = target_layer_index(get_conv_net_para(m.net), layer_id)
    m.maps, maps_off = _forward(m, layer_id, net_off.layers[target - 1] if has_masks else None, progress)
    value, per, categories = _stability(m, m.net, layer_id, m.maps, progress)
    value_off, per_off, _ = (_stability(m, net_off, layer_id, maps_off, progress) if has_masks
                             else (float("nan"), None, None))
    parts = _parts(m, m.net, layer_id, m.maps)
    filters = [FilterFacts(index=f + 1, instability=float(per[f]),
                           instability_off=float(per_off[f]) if per_off is not None else float("nan"),
                           part_value=float(parts.per_filter[f]) if parts else float("nan"),
                           part=parts.part[f] if parts else None, category=categories[f] if m.exp.multiclass else None)
               for f in range(per.size)]
    curves = folder.exp_dir / "net-train.png"
    label = "interpretable CNN" if m.exp.interpretable else "ordinary CNN"
    facts = RunFacts(label, m.exp, folder.exp_dir, ckpt.last_checkpoint_epoch(folder.exp_dir), layer_id,
                     final_val_error(m.stats, m.error_name), value, value_off,
                     parts.value if parts else float("nan"), filters, curves if curves.is_file() else None,
                     run_command(folder.exp_dir), sorted({p for p in (parts.part if parts else []) if p}))
    return facts, m


# ================================================================== the top images and their receptive fields
@dataclass
class _Pictures:
    """The images drawn: getI's patches (the net's input minus the mean), shown rounded to uint8."""

    items: list[tuple[CategorySource, Any]]
    size: tuple[int, int]
    mean_t: torch.Tensor

    def patch(self, i: int) -> np.ndarray:
        source, obj = self.items[i]
        return np.asarray(source.load_patch(obj, self.size), np.float32)

    def picture(self, i: int) -> np.ndarray:
        return np.clip(mround(self.patch(i)), 0, 255).astype(np.uint8)

    def net_input(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.patch(i).transpose(2, 0, 1))) - self.mean_t


def _masked(st: DrawingSetup, raw: torch.Tensor) -> torch.Tensor:
    """maskX of the measured layer's output: every filter's masked map, (N, D, xh, xw)."""
    beta = None if st.beta is None else st.beta.to(raw.device)
    return mask_x(raw, beta, st.filter_type)[0]


def _peaks(st: DrawingSetup, raw: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """generateAMTOriginalImages' pass on the measured layer's output `raw` (I, D, xh, xw):
    (tau (D,), dep_max (D, I): each image's peak of each filter's masked map)."""
    batches = ((list(range(s, min(len(raw), s + 32))), _masked(st, torch.from_numpy(raw[s:s + 32])))
               for s in range(0, len(raw), 32))
    return tau_from_masked(batches, st.depth, len(raw), torch.Generator().manual_seed(1), INTEGRATE_ENERGY,
                           SAMPLING_TIMES, progress)


def choose_images(dep_max: np.ndarray, tau: np.ndarray, show: int) -> np.ndarray:
    """Each filter's `show` images, as generateAMTOriginalImages chooses them, with the random draw
    replaced by a deterministic one that shares images between filters.

    dep_max: (D, I) each image's peak of each filter's masked map; tau: (D,). An image qualifies for
    a filter when its peak reaches tau (with fewer than `show` qualifying, the `show` highest qualify,
    as `draw_rf.select_top_images`). The original draws `show` of the qualifying images at random;
    here the images are taken greedily, each time the image that the most filters still short of
    `show` images can take (ties: the highest sum of peak / tau over those filters, then the first),
    so that the occlusion passes (one per image, shared by its filters) are few. Returns (D, show)
    image indices, each row by peak, highest first."""
    d_num, n = dep_max.shape
    qual = dep_max >= np.asarray(tau, np.float64)[:, None]
    for d in np.flatnonzero(qual.sum(axis=1) < show):
        qual[d] = False
        qual[d, sort_descend_stable(dep_max[d])[1][:show]] = True
    weight = dep_max / np.maximum(np.abs(np.asarray(tau, np.float64)), 1e-12)[:, None]
    chosen: list[list[int]] = [[] for _ in range(d_num)]
    need = np.full(d_num, show)
    while need.any():
        open_ = qual & (need > 0)[:, None]
        gain = open_.sum(axis=0)
        best = np.flatnonzero(gain == gain.max())
        i = int(best[np.argmax(np.where(open_[:, best], weight[:, best], 0).sum(axis=0))])
        for d in np.flatnonzero(open_[:, i]):
            chosen[d].append(i)
            need[d] -= 1
            qual[d, i] = False
    return np.stack([np.asarray(c)[sort_descend_stable(dep_max[d, c])[1]] for d, c in enumerate(chosen)])


@torch.no_grad()
def _templates(net: Any, st: DrawingSetup, pics: _Pictures, raw: np.ndarray, order: np.ndarray,
               filters: Sequence[int], s: RFSettings, bar: Any) -> dict[int, np.ndarray]:
    """computeRF for `filters` (0-based) on their images `order[d]`: each filter's occlusion
    template summed over its images (getRFMask sums them). One occlusion pass per image serves
    every filter that has the image; the net runs on s.device."""
    device = s.device
    corners = occlusion_list(st.ih, st.iw, s.occlude_size, s.occlude_stride)
    users: dict[int, list[int]] = {}
    for d in filters:
        for i in order[d]:
            users.setdefault(int(i), []).append(d)
    templates = {d: np.zeros((2 * st.ih, 2 * st.iw)) for d in filters}
    for i, deps in users.items():
        map_sum = _masked(st, torch.from_numpy(raw[i:i + 1]))[0].sum(dim=(1, 2)).to(torch.float64).numpy()   # (D,)
        values, peaks = occlusion_values_all(net, st, pics.net_input(i).to(device), corners, s.occlude_size,
                                             s.occlusion_batch_size, device, filters=[d + 1 for d in deps])
        for j, d in enumerate(deps):
            add_image_template(templates[d], corners, values[:, j], peaks[:, j], float(map_sum[d]),
                               s.top_occ_num, s.occlude_size)
        bar.update(1)
    return templates


def _thumbnail(img: np.ndarray, path: Path) -> None:
    pil = Image.fromarray(img)
    if max(pil.size) > THUMBNAIL_SIZE:
        scale = THUMBNAIL_SIZE / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, format="JPEG", quality=85)


def _groups(depth: int, ih: int, iw: int) -> list[list[int]]:
    """The filters in groups whose templates (2ih x 2iw float64 each) fit in TEMPLATE_BYTES."""
    per = max(1, TEMPLATE_BYTES // (4 * ih * iw * 8))
    return [list(range(s, min(depth, s + per))) for s in range(0, depth, per)]


@dataclass
class MeasuredImages:
    """The images a report draws, as they were measured: `items` (source, object) per image, `raw`
    the measured layer's output for them (I, D, xh, xw), `mean` the imdb's dataMean (H x W x 3),
    `size` the net's input (ih, iw)."""

    items: list[tuple[CategorySource, Any]]
    raw: np.ndarray
    mean: np.ndarray
    size: tuple[int, int]


def filter_drawings(net: Any, layer_id: int, images: MeasuredImages, out: Path, prefix: str, *,
                    top: int = TOP_IMAGES, device: Any = "cpu",
                    progress: bool = True) -> tuple[list[list[str]], list[list[float]]]:
    """Every filter's `top` images (the highest peaks of its masked map) with its receptive field
    drawn as step_drawRF.m draws it (computeRF's template from showNum qualifying images,
    `choose_images`; getRFMask, getRegion with tau, drawEdge), written once as thumbnails
    `<out>/<prefix>/fNNNN-KK.jpg`.
    Returns, per filter, the thumbnails' paths relative to `out` and the images' peaks."""
    items, raw, mean, size = images.items, images.raw, images.mean, images.size
    device = resolve_device(device)
    net.to(device)
    st = drawing_setup(net, layer_id, size)
    s = RFSettings(**scaled_rf_settings(size[0]), device=device)
    pics = _Pictures(items, size, torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1))))
    tau, dep_max = _peaks(st, raw, progress)
    k = min(int(top), len(items))
    shown = np.stack([sort_descend_stable(dep_max[d])[1][:k] for d in range(st.depth)])
    used = choose_images(dep_max, tau, min(s.show_num, len(items)))
    names: list[list[str]] = [[] for _ in range(st.depth)]
    groups = _groups(st.depth, st.ih, st.iw)
    passes = sum(len({int(i) for d in g for i in used[d]}) for g in groups)
    xh, xw = raw.shape[2:]
    with tqdm(total=passes, desc=f"receptive fields ({prefix})", unit="img", disable=not progress) as bar:
        for group in groups:
            templates = _templates(net, st, pics, raw, used, group, s, bar)
            for d in group:
                rf = get_rf_mask(templates[d][:, :, None], (st.ih, st.iw), (xh, xw), layer_id, st.convnet,
                                 s.gauss_size, s.gauss_sigma)
                fmaps = _masked(st, torch.from_numpy(raw[shown[d]]))[:, d].to(torch.float64).numpy()
                for j, i in enumerate(shown[d]):
                    region = get_region(st.ih, st.iw, xh, xw, fmaps[j], float(tau[d]), s.draw_threshold, rf)
                    names[d].append(f"{prefix}/f{d + 1:04d}-{j + 1:02d}.jpg")
                    _thumbnail(draw_edge(region, pics.picture(int(i))), out / names[d][-1])
    return names, [[float(v) for v in dep_max[d, shown[d]]] for d in range(st.depth)]


# ================================================================== the page
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.6em 0 .2em}h2{font-size:1.1em;margin:.2em 0}
table.summary{border-collapse:collapse;margin:.5em 0}
table.summary th,table.summary td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
table.summary td.num{font-variant-numeric:tabular-nums}
code{font-size:.9em;background:#eee;padding:0 .3em;word-break:break-all}
.curves img{max-width:48%;border:1px solid #ccc;margin-right:1%}
#controls{position:sticky;top:0;background:#fafafa;border-bottom:1px solid #ccc;padding:.5em 0;z-index:1}
#controls label{margin-right:1.2em}
section.filter{border:1px solid #ddd;background:#fff;margin:.6em 0;padding:.4em .6em}
section.filter.hidden{display:none}
.runs{display:flex;gap:1em}.run{flex:1;min-width:0}.run-b{display:none}
body.sbs .run-b{display:block;border-left:3px solid #bbb;padding-left:.8em}
.facts{color:#444;margin-bottom:.3em}.facts b{color:#000}
.thumbs{display:flex;flex-wrap:wrap;gap:3px}.thumbs img{width:96px;height:auto;border:1px solid #ccc}
.run-name{font-weight:600;display:none}body.sbs .run-name{display:block}
.note{color:#666;font-size:.9em}
"""

_JS = """
(function(){
var box=document.getElementById('filters');
var secs=Array.prototype.slice.call(box.querySelectorAll('section.filter'));
function num(s,key){var v=parseFloat(s.dataset[key]);return isNaN(v)?null:v;}
var keys={'filter':['index',1],'instability':['instability',1],'instability-desc':['instability',-1],
 'part':['partValue',-1],'peak':['peak',-1]};
function sortBy(name){
 var k=keys[name]||keys['filter'];
 var sorted=secs.slice().sort(function(a,b){
  var x=num(a,k[0]),y=num(b,k[0]);
  if(x===null&&y===null)return num(a,'index')-num(b,'index');
  if(x===null)return 1;if(y===null)return -1;
  return (x-y)*k[1]||num(a,'index')-num(b,'index');});
 sorted.forEach(function(s){box.appendChild(s);});}
function applyFilter(){
 var part=document.getElementById('part').value,cat=document.getElementById('category').value,shown=0;
 secs.forEach(function(s){var ok=(!part||s.dataset.part===part)&&(!cat||s.dataset.category===cat);
  s.classList.toggle('hidden',!ok);if(ok)shown++;});
 document.getElementById('shown').textContent=shown+' of '+secs.length+' filters shown';}
var q=new URLSearchParams(location.search);
var sortSel=document.getElementById('sort'),partSel=document.getElementById('part'),
 catSel=document.getElementById('category'),sbs=document.getElementById('sbs');
if(q.get('sort'))sortSel.value=q.get('sort');
if(q.get('part'))partSel.value=q.get('part');
if(q.get('category'))catSel.value=q.get('category');
if(sbs&&q.get('sbs')==='1')sbs.checked=true;
function all(){sortBy(sortSel.value);applyFilter();
 document.body.classList.toggle('sbs',!!(sbs&&sbs.checked));}
sortSel.onchange=partSel.onchange=catSel.onchange=all;if(sbs)sbs.onchange=all;all();
})();
"""


def _f(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.{digits}f}"


def _num(v: float | None) -> str:
    """A number for a data- attribute: what JavaScript's parseFloat and Python's float read back."""
    return "NaN" if v is None or not math.isfinite(float(v)) else f"{float(v):.6g}"


def _summary(runs: Sequence[RunFacts], out: Path) -> str:
    """The summary table, one column per net, then the training curves."""
    e = html.escape
    rows = [("dataset", lambda r: e(r.exp.dataset)), ("category", lambda r: e(" ".join(r.exp.categories))),
            ("model", lambda r: e(r.exp.model)), ("epochs", lambda r: str(r.epoch)),
            ("binary error (last epoch, validation)", lambda r: _f(r.binary_error)),
            ("location instability, masks on (lower is better)", lambda r: _f(r.instability)),
            ("location instability, masks off (beta = 0)",
             lambda r: _f(r.instability_off) if math.isfinite(r.instability_off) else "n/a (no conv_mask layer)"),
            ("part interpretability (mean over filters)",
             lambda r: _f(r.part_value) if math.isfinite(r.part_value) else "n/a (no part regions in this dataset)"),
            ("measured layer (layerID)", lambda r: f"{r.layer_id} ({len(r.filters)} filters)"),
            ("checkpoints", lambda r: f"<code>{e(str(r.exp_dir))}</code>"),
            ("command", lambda r: f"<code>{e(r.command)}</code>" if r.command else "not recorded")]
    head = "".join(f"<th>{e(r.label)}</th>" for r in runs)
    body = "".join(f"<tr><th>{name}</th>" + "".join(f"<td class='num'>{cell(r)}</td>" for r in runs) + "</tr>"
                   for name, cell in rows)
    curves = "".join(f"<img src='{e(_rel(r.curves, out))}' alt='training curves of the {e(r.label)}' "
                     f"title='{e(r.label)}: net-train.png'>" for r in runs if r.curves)
    return (f"<section id='summary'><table class='summary'><tr><th></th>{head}</tr>{body}</table>"
            f"<div class='curves'>{curves}</div></section>")


def _rel(path: Path | None, out: Path) -> str:
    return "" if path is None else path.as_posix() if not path.is_absolute() else os.path.relpath(path, out)


def _run_cell(r: RunFacts, f: FilterFacts, cls: str) -> str:
    e = html.escape
    facts = [f"location instability <b>{_f(f.instability)}</b>"]
    if math.isfinite(f.instability_off):
        facts.append(f"masks off {_f(f.instability_off)}")
    if math.isfinite(f.part_value):
        facts.append(f"part interpretability <b>{_f(f.part_value, 3)}</b>, part <b>{e(f.part or 'none')}</b>")
    if f.category is not None:
        facts.append(f"category <b>{e(f.category)}</b>")
    thumbs = "".join(f"<img src='{e(t)}' alt='filter {f.index}, image {k + 1}' title='peak {p:.3g}' loading='eager'>"
                     for k, (t, p) in enumerate(zip(f.thumbnails, f.peaks)))
    return (f"<div class='run {cls}'><div class='run-name'>{e(r.label)}</div>"
            f"<div class='facts'>{' &middot; '.join(facts)}</div><div class='thumbs'>{thumbs}</div></div>")


def _section(runs: Sequence[RunFacts], d: int) -> str:
    f = runs[0].filters[d]
    data = {"index": f.index, "instability": _num(f.instability), "part-value": _num(f.part_value),
            "part": f.part or "", "category": f.category or "", "peak": _num(f.peaks[0] if f.peaks else None)}
    attrs = " ".join(f"data-{k}='{html.escape(str(v))}'" for k, v in data.items())
    cells = _run_cell(runs[0], f, "run-a")
    if len(runs) > 1 and d < len(runs[1].filters):
        cells += _run_cell(runs[1], runs[1].filters[d], "run-b")
    return f"<section class='filter' id='filter-{f.index}' {attrs}><h2>filter {f.index}</h2><div class='runs'>{cells}</div></section>"


def _controls(runs: Sequence[RunFacts]) -> str:
    e = html.escape
    parts = "".join(f"<option value='{e(p)}'>{e(p)}</option>" for p in runs[0].parts)
    cats = sorted({f.category for f in runs[0].filters if f.category})
    catopts = "".join(f"<option value='{e(c)}'>{e(c)}</option>" for c in cats)
    sbs = (f"<label><input type='checkbox' id='sbs'> side by side with the {e(runs[1].label)}</label>"
           if len(runs) > 1 else "")
    return ("<div id='controls'><label>sort by <select id='sort'><option value='filter'>filter number</option>"
            "<option value='instability'>location instability, most stable first</option>"
            "<option value='instability-desc'>location instability, least stable first</option>"
            "<option value='part'>part interpretability, highest first</option>"
            "<option value='peak'>top activation, highest first</option></select></label>"
            f"<label>part <select id='part'><option value=''>all</option>{parts}</select></label>"
            f"<label>category <select id='category'><option value=''>all</option>{catopts}</select></label>"
            f"{sbs}<span id='shown' class='note'></span></div>")


def render_html(runs: Sequence[RunFacts], out: Path, seconds: float | None = None) -> str:
    """The page: the summary, the controls, one section per filter of the first net (the second net's
    filter of the same number beside it in side-by-side mode)."""
    r = runs[0]
    title = f"ICNN report: {r.exp.dataset} {' '.join(r.exp.categories)}, {r.exp.model}"
    note = (f"Top {len(r.filters[0].thumbnails) if r.filters else 0} images per filter: those with the highest "
            "peak of the filter's masked map; the region drawn is the filter's receptive field as step_drawRF.m "
            "draws it (occlusion template, getRegion, drawEdge). Location instability per filter: "
            "getDistSqrtVar.m's spread of the peak-to-part distance over the top 100 images / norm([ih iw]).")
    built = time.strftime("%Y-%m-%d %H:%M:%S") + (f" in {seconds:.0f} s" if seconds is not None else "")
    sections = "\n".join(_section(runs, d) for d in range(len(r.filters)))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>Built {built} by reproduce.report. {note}</p>"
            f"{_summary(runs, out)}{_controls(runs)}<main id='filters'>\n{sections}\n</main>"
            f"<script>{_JS}</script></body></html>\n")


# ================================================================== the report
def _publish(tmp: Path, final: Path) -> None:
    """Put the finished folder in place of the old report (renames: never a half-written report)."""
    old = final.with_name(f"{TMP_PREFIX}{final.name}{writer_tag()}old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build_report(first: RunFolder, second: RunFolder | None, out: Path, *, data_root: Path | None = None,
                 device: str = "cpu", top: int = TOP_IMAGES, command: str | None = None,
                 progress: bool = True) -> Path:
    """Measure and draw one net (and the one beside it), write `out`/index.html with its thumbnails
    and curves. Built in a temporary folder beside `out`, then renamed into place. Returns index.html."""
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}{writer_tag()}build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        runs = []
        for tag, folder in (("a", first), ("b", second)):
            if folder is None:
                continue
            layer_id = runs[0].layer_id if runs else None
            facts, m = measure_run(folder, data_root, device, layer_id=layer_id, progress=progress)
            items = [(s, s.objects[i]) for s, idx in zip(m.sources, m.indices) for i in idx]
            images = MeasuredImages(items, np.concatenate(m.maps), m.mean, m.size)
            thumbs, peaks = filter_drawings(m.net, facts.layer_id, images, tmp, f"img-{tag}", top=top, device=device,
                                            progress=progress)
            for f, t, p in zip(facts.filters, thumbs, peaks):
                f.thumbnails, f.peaks = t, p
            if facts.curves is not None:
                shutil.copyfile(facts.curves, tmp / f"curves-{tag}.png")
                facts.curves = Path(f"curves-{tag}.png")
            if tag == "a" and command:
                facts.command = command
            runs.append(facts)
        page = render_html(runs, tmp, time.perf_counter() - t0)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def report_run_dir(run_dir: os.PathLike | str, *, compare: os.PathLike | str | None = None, name: str | None = None,
                   imdb: os.PathLike | str | None = None, data_root: os.PathLike | str | None = None,
                   device: str = "cpu", top: int = TOP_IMAGES, progress: bool = True) -> Path:
    """`python -m reproduce.report RUN_DIR`: RUN_DIR/report/index.html. data_root: where the run's
    dataset is (default $ICNN_DATA_ROOT, else RUN_DIR/data, as demo.py)."""
    run_dir = Path(run_dir)
    first, second = locate_runs(run_dir, compare, name, imdb)
    root = Path(data_root) if data_root else default_data_root(run_dir)
    return build_report(first, second, run_dir / "report", data_root=root, device=device, top=top,
                        progress=progress)


def report_experiments(experiments: Sequence[Experiment], *, progress: bool = True, top: int = TOP_IMAGES,
                       say: Callable[[str], None] = print) -> list[Path]:
    """reproduce.paper --report: one report per interpretable run that has checkpoints, beside it
    (<exp_dir>/report/), with the ordinary CNN of the same grid cell when it was trained."""
    written = []
    by_dir = {Path(e.exp_dir): e for e in experiments}
    for exp in experiments:
        if not exp.interpretable or not _has_checkpoint(Path(exp.exp_dir)):
            continue
        other = _partner(Path(exp.exp_dir))
        second = RunFolder(other, Path(by_dir[other].imdb_dir)) if other in by_dir else None
        try:
            path = build_report(RunFolder(Path(exp.exp_dir), Path(exp.imdb_dir)), second,
                                Path(exp.exp_dir) / "report", data_root=exp.data_root, device=exp.device, top=top,
                                progress=progress)
        except ReportError as exc:        # a dataset without parts: said, the other runs go on
            say(f"report: none for {exp.exp_dir}: {exc}")
            continue
        say(f"report: {path}")
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:3]).rstrip(":") + ".")
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="demo.py's --out folder (its mat/<name>/ checkpoints), or a folder of net-epoch-N.pt "
                             "(reproduce.paper's runs/<dataset>/<name>/<model>_<config>)")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="a second run shown side by side (default: the ordinary CNN of the same run, "
                             "<name>-ordinary, when it was trained)")
    parser.add_argument("--name", default=None, help="which run of RUN_DIR/mat/ when it holds several")
    parser.add_argument("--imdb", default=None, metavar="DIR",
                        help="the imdb cache the net was trained with (its data mean; default: where demo.py or "
                             "reproduce.paper put it)")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT, else RUN_DIR/data, as demo.py)")
    parser.add_argument("--top", type=positive_int, default=TOP_IMAGES,
                        help=f"top images per filter (default {TOP_IMAGES}, step_drawRF.m's showNum)")
    add_no_progress(parser)
    add_common(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reproduce.report RUN_DIR`: writes RUN_DIR/report/index.html and says where."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        device = start_device(args)
        path = report_run_dir(args.run_dir, compare=args.compare, name=args.name, imdb=args.imdb,
                              data_root=args.data_root, device=device, top=args.top, progress=not args.no_progress)
        size = sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file())
        print(f"report: {path} ({size / 1e6:.1f} MB); open it in a browser (file://{path.resolve()})")
        return 0
    return run_cli("reproduce.report", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
