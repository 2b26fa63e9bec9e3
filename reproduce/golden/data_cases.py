"""Golden-case adapters of data_prep (see ../shared/golden/README.md).

Each adapter takes a case's `inputs` (MATLAB layout, as legacy_compat.loadmat
reads them) and returns its `outputs` in MATLAB layout, running the port:

- getI: data_prep.get_i.get_i on the real images (files relative to
  ctx.data_root / image_root);
- getImdb, getImdb_cub200: data_prep.imdb.assemble_imdb(_cub200) from the
  recorded getI patches, replaying the recorded randperm draws (`perms`);
- produceIMDB: data_prep.imdb.produce_imdb from the per-category imdbs.

The cases were recorded under GNU Octave, so the imdb adapters hand data_prep.imdb
Octave's numerics, which only they need: Octave's linspace for the train/val split
(`octave_split`; it differs from MATLAB's only where a value of round(linspace(...))
lands exactly on .5) and Octave's single-precision running sum for the training mean
(`octave_single_mean`; the library's float64 mean differs from it by float32 rounding,
2e-5 of the data's range on produceIMDB.mat).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from data_prep.get_i import get_i
from data_prep.imdb import TRAIN_RATE, Imdb, assemble_imdb, assemble_imdb_cub200, get_imdb_layout, produce_imdb
from data_prep.readers import BndBox, ObjRecord
from legacy_compat import MatStruct, cell
from legacy_compat.mattypes import cell_items, is_cell, scalar
from legacy_compat.numerics import mlinspace, mround
from legacy_compat.parity import CaseContext, register


def octave_split(n: int) -> np.ndarray:
    """data_prep.imdb.linspace_split under GNU Octave 7's linspace (the cases' recorder)."""
    return mround(mlinspace(1, n, int(mround(np.float64(n * TRAIN_RATE))), flavor="octave")).astype(np.int64)


def octave_single_mean(chunks: Iterable[np.ndarray], count: int) -> np.ndarray:
    """Octave's `mean(single_array, 4)`: a single-precision running sum, row by row, divided in single."""
    acc = None
    for rows in chunks:
        start = np.zeros(rows.shape[1:], dtype=np.float32) if acc is None else acc
        acc = np.add.reduce(np.concatenate([start[None], rows]), axis=0, dtype=np.float32)
    return (acc / np.float32(count)).astype(np.float32)


def _patches(x: Any) -> np.ndarray:
    """S x S x 3 x n (MATLAB) -> n x 3 x S x S float32."""
    a = np.asarray(x, dtype=np.float32)
    a = a.reshape(a.shape + (1,) * (4 - a.ndim))
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1))


def _name(inputs: MatStruct, default: str) -> str:
    for key in ("Name_batch", "name", "category"):
        if key in inputs and isinstance(inputs[key], str):
            return inputs[key]
    return default


def _perms(inputs: MatStruct) -> list[np.ndarray] | None:
    p = inputs.get("perms")
    if p is None:
        return None
    return [np.asarray(v).reshape(-1) for v in cell_items(p)] if is_cell(p) else [np.asarray(p).reshape(-1)]


def _is_train(inputs: MatStruct) -> bool:
    return bool(scalar(inputs["IsTrain"])) if "IsTrain" in inputs else True


@register("getI")
def golden_get_i(inputs: MatStruct, ctx: CaseContext) -> dict:
    """getI.m on each listed file/box/flip/size."""
    files = [str(f) for f in cell_items(inputs["files"])]
    boxes = np.asarray(inputs["bndbox"], dtype=np.float64).reshape(len(files), 4)
    flips = np.asarray(inputs["IsFlip"]).reshape(-1)
    sizes = np.asarray(inputs["tarSize"], dtype=np.float64).reshape(len(files), 2)
    root = ctx.data_root / str(inputs.get("image_root", ""))
    patches, images = [], []
    for k, f in enumerate(files):
        obj = ObjRecord(folder="", filename=f, name="", bndbox=BndBox.from_values(*boxes[k]), ID=k + 1)
        patch, image = get_i(obj, root, (int(sizes[k, 0]), int(sizes[k, 1])), bool(flips[k]))
        patches.append(patch)
        images.append(image)
    return {"I_patch": cell(patches), "I": cell(images)}


@register("getImdb")
def golden_get_imdb(inputs: MatStruct, ctx: CaseContext) -> dict:
    """getImdb.m from the recorded patches and randperm draws."""
    pos, neg = _patches(inputs["pos"]), _patches(inputs["neg"])
    imdb = assemble_imdb(pos, neg, [_name(inputs, "cate")], is_train=_is_train(inputs), perms=_perms(inputs),
                         layout=get_imdb_layout(len(pos), len(neg), split=octave_split), mean=octave_single_mean)
    return {"imdb": imdb.to_matlab()}


@register("getImdb_cub200")
def golden_get_imdb_cub200(inputs: MatStruct, ctx: CaseContext) -> dict:
    """getImdb_cub200.m from the recorded patches, trainList and randperm draws."""
    imdb = assemble_imdb_cub200(_patches(inputs["pos"]), _patches(inputs["neg"]),
                                np.asarray(inputs["trainList"]).reshape(-1).astype(np.int64),
                                [_name(inputs, "cub200")], is_train=_is_train(inputs), perms=_perms(inputs),
                                mean=octave_single_mean)
    return {"imdb": imdb.to_matlab()}


@register("produceIMDB")
def golden_produce_imdb(inputs: MatStruct, ctx: CaseContext) -> dict:
    """produceIMDB (learn_icnn_multiclass.m) from the per-category imdbs."""
    imdbs = [Imdb.from_matlab(v) for v in cell_items(inputs["category_imdbs"])]
    names = [str(n) for n in cell_items(inputs["names"])]
    npos = [int(v) for v in np.asarray(inputs["npos"]).reshape(-1)]
    imdb = produce_imdb(imdbs, names, npos, split=octave_split, mean=octave_single_mean)
    return {"imdb": imdb.to_matlab()}
