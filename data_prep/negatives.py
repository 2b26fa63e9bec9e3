"""The 1000 negative images every category shares (data/neg/00001.JPEG ... 01000.JPEG).

Ports data_input/*/getNegObjSet.m: one record per negative, the box the
whole image, ID 1000000000 + i, name '<category>_neg'.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .get_i import ImageReadError
from .readers import BndBox, DataConf, ObjRecord

__all__ = ["NUM_NEGATIVES", "get_neg_objset", "neg_filename"]

NUM_NEGATIVES = 1000   # getNegObjSet.m: MaxObjNum


def neg_filename(i: int) -> str:
    """The i-th negative's file name (1-based): '%05d.JPEG'."""
    return f"{int(i):05d}.JPEG"


def _image_size(path: Path) -> tuple[int, int]:
    if not path.exists():
        raise ImageReadError(path, "no such file")
    try:
        with Image.open(path) as im:
            return im.size   # (width, height); the header is enough
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise ImageReadError(path, f"cannot read the image header ({type(exc).__name__}: {exc})") from exc


def get_neg_objset(conf: DataConf | os.PathLike | str, name: str,
                   count: int | None = None) -> list[ObjRecord]:
    """getNegObjSet(theConf, Name_batch): the negatives as object records.

    `conf` is a DataConf (its neg_dir) or the negatives folder itself. The
    original reads each image to learn its size; here only the header is
    read. Its box is [1, 1, w, h] (the original stores these as numbers, so
    getI's str2double gives NaN and MATLAB's NaN-ignoring max/min clip the
    crop to the whole image: the same crop). The record's folder is the
    negatives folder (absolute), where the original has '../neg' relative to
    imgdir. `count` defaults to conf.num_neg (1000, MaxObjNum). A DataConf with
    `neg_files` (own negatives, not in the original) reads those files instead
    of 00001.JPEG ..., in their order.
    """
    if count is None:
        count = conf.num_neg if isinstance(conf, DataConf) else NUM_NEGATIVES
    neg_dir = Path(conf.neg_dir if isinstance(conf, DataConf) else conf).resolve()
    names = getattr(conf, "neg_files", None)           # own negatives (--negatives DIR; not in the original)
    out = []
    for i in range(1, int(count) + 1):
        filename = names[i - 1] if names is not None else neg_filename(i)
        w, h = _image_size(neg_dir / filename)
        out.append(ObjRecord(folder=str(neg_dir), filename=filename, name=f"{name}_neg",
                             bndbox=BndBox(1, 1, w, h), ID=1000000000 + i))
    return out
