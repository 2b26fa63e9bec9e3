"""Golden-case adapters for the evaluation and the receptive-field drawing.

Cases (../shared/golden/README.md): getDistSqrtVar, computeStability,
step_computeStability_multiClass, maskX, getRegion, imagewrite. Each
adapter converts the MATLAB-layout inputs, runs reproduce.evaluation.location_instability /
reproduce.evaluation.receptive_fields, and returns the outputs in MATLAB layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.facts import GOLDFISH
from data_prep.ilsvrc import ilsvrc_conf
from legacy_compat.mattypes import MatStruct, cell_items, scalar
from legacy_compat.parity import CaseContext, register
from legacy_compat.simplenn import layers_from_matlab, maps_to_matlab, maps_to_torch
from reproduce.evaluation import location_instability as li
from reproduce.evaluation import receptive_fields as rf
from reproduce.layers.geometry import get_conv_net_para
from reproduce.layers.simplenn import SimpleNN


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(a) for a in np.asarray(v, dtype=np.float64).reshape(-1))


def _texts(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    return [str(a) for a in cell_items(v)]


def _data_file(ctx: CaseContext, rel: str) -> Path:
    return Path(ctx.data_root) / rel


# ------------------------------------------------------------------ getDistSqrtVar
@register("getDistSqrtVar")
def golden_get_dist_sqrt_var(inputs: MatStruct, ctx: CaseContext) -> dict:
    """getDistSqrtVar.m on recorded positions and scores, against the real truth files."""
    pos = np.asarray(inputs["pos"], dtype=np.float64)                    # 2 x P x I
    pos = pos.reshape(pos.shape + (1,) * (3 - pos.ndim)).transpose(2, 1, 0)
    score = np.asarray(inputs["score"], dtype=np.float64).T              # P x I -> I x P
    files = [_data_file(ctx, f) for f in _texts(inputs["truth_files"])]
    truth = li.read_part_centres(files)
    dist = li.get_dist_sqrt_var(pos, score, truth, int(scalar(inputs["patchNumPerPattern"])))
    image_size = np.asarray(inputs.get("image_size", [224, 224]), dtype=np.float64).reshape(-1)
    stability = li.stability_from_distances(dist, dist.size, image_size)
    return {"distSqrtVar": dist.reshape(-1, 1), "stability": np.array([[stability]])}


# ------------------------------------------------------------------ computeStability
def _golden_net(net: MatStruct) -> tuple[Any, tuple[int, int]]:
    model = SimpleNN.from_specs(layers_from_matlab(net["layers"])).eval()
    size = np.asarray(net["meta"]["normalization"]["imageSize"], dtype=np.float64).reshape(-1)
    return model, (int(size[0]), int(size[1]))


def _ilsvrc_source(ctx: CaseContext, name: str, image_root: str, min_area: float, truth_files: list[str],
                   part_list: tuple[int, ...]) -> li.CategorySource:
    conf = ilsvrc_conf(ctx.data_root, imgdir=_data_file(ctx, image_root), min_area=min_area)
    source = li.CategorySource.from_conf(name, conf, part_list)
    source.truth_files = {p: _data_file(ctx, f) for p, f in zip(part_list, truth_files)}
    return source


@register("computeStability")
def golden_compute_stability(inputs: MatStruct, ctx: CaseContext) -> dict:
    """computeStability.m end to end: annotation, getI, forward, peaks, distances."""
    net, size = _golden_net(inputs["net"])
    part_list = _ints(inputs["partList"])
    source = _ilsvrc_source(ctx, str(inputs["category"]), str(inputs["image_root"]),
                            float(scalar(inputs["minArea"])), _texts(inputs["truth_files"]), part_list)
    convnet = get_conv_net_para(net)
    settings = li.StabilitySettings(part_list=part_list, part_rate=float(scalar(inputs["partRate"])),
                                    selected_pattern_ratio=float(scalar(inputs["selectedPatternRatio"])),
                                    patch_num_per_pattern=int(scalar(inputs["patchNumPerPattern"])))
    res = li.compute_stability(
        net, source, li.MeasuredLayer(int(scalar(inputs["layerID"])), convnet, size),
        np.asarray(inputs["meanData"], dtype=np.float32), settings, li.ForwardPass(device=ctx.device))
    out = {"stability": np.array([[res.stability]])}
    out.update(convnet.as_matlab())
    return out


@register("step_computeStability_multiClass")
def golden_compute_stability_multiclass(inputs: MatStruct, ctx: CaseContext) -> dict:
    """step_computeStability_multiClass.m on two real categories."""
    net, size = _golden_net(inputs["net"])
    part_list = _ints(inputs["partList"])
    names = _texts(inputs["categories"])
    truth = np.asarray(inputs["truth_files"], dtype=object)
    image_root = str(inputs["image_root"])
    min_area = float(scalar(inputs["minArea"]))
    sources = []
    for k, name in enumerate(names):
        files = [str(f) for f in truth[k].reshape(-1)]
        parts = (1,) if name == GOLDFISH else part_list
        sources.append(_ilsvrc_source(ctx, name, image_root, min_area, files, parts[:len(files)]))
    value, _ = li.compute_stability_multiclass(
        net, sources, li.MeasuredLayer(int(scalar(inputs["layerID"])), image_size=size),
        np.asarray(inputs["meanData"], dtype=np.float32),
        li.StabilitySettings(part_list=part_list, patch_num_per_pattern=int(scalar(inputs["patchNumPerPattern"]))),
        li.ForwardPass(device=ctx.device))
    return {"stability": np.array([[value]])}


# ------------------------------------------------------------------ step_drawRF pieces
@register("maskX")
def golden_mask_x(inputs: MatStruct, ctx: CaseContext) -> dict:
    """maskX and getMu_max of step_drawRF.m."""
    x = maps_to_torch(inputs["x"]).to(ctx.device)
    beta = torch.as_tensor(np.asarray(inputs["alpha"], dtype=np.float32).reshape(-1), device=ctx.device)
    filt = torch.as_tensor(np.asarray(inputs["filter"]).reshape(-1).astype(np.int64), device=ctx.device)
    masked, mask, mu_x, mu_y = rf.mask_x(x, beta, filt)
    n, d = mu_x.shape
    return {"x_masked": maps_to_matlab(masked), "mask": maps_to_matlab(mask),
            "mu_x_max": mu_x.t().cpu().numpy().reshape(1, 1, d, n),
            "mu_y_max": mu_y.t().cpu().numpy().reshape(1, 1, d, n)}


@register("getRegion")
def golden_get_region(inputs: MatStruct, ctx: CaseContext) -> dict:
    """getRegion of step_drawRF.m (RFMask given as ih x iw x xh*xw)."""
    ih, iw, xh, xw = (int(scalar(inputs[k])) for k in ("ih", "iw", "xh", "xw"))
    rf_mask = np.asarray(inputs["RFMask"], dtype=np.float32).reshape(ih, iw, -1).transpose(2, 0, 1)
    region = rf.get_region(ih, iw, xh, xw, np.asarray(inputs["map"], dtype=np.float32).reshape(xh, xw),
                           float(scalar(inputs["tau"])), float(scalar(inputs["drawThreshold"])), rf_mask)
    return {"region": region}


@register("imagewrite")
def golden_imagewrite(inputs: MatStruct, ctx: CaseContext) -> dict:
    """imagewrite of step_drawRF.m: the uint8 picture (not the JPEG file)."""
    return {"image": rf.image_to_uint8_blocks(np.asarray(inputs["x"], dtype=np.float32))}
