"""voc2010_crop: Pascal VOC 2010 object crops, one positive / negative list per animal category.

Not in the original MATLAB code; the other PyTorch port (ada-shen/ICNN) ships the lists
(datasets/voc2010_crop/<category>_info.txt) and reads them in tools/get_voc2010imdb.py. Its images
(object crops of VOC2010, `all_crop/bird1261_2008_000095.jpg` ..., and the negatives `animal/...`)
are hosted nowhere public: set-up is manual. Put under ``<data root>/voc2010_crop/``::

    <category>_info.txt       one line per image: index,relative/path.jpg,is_negative,is_train
                              (is_negative 0: the category, 1: a negative; is_train 1: training, 0: validation)
    all_crop/*.jpg, animal/*.jpg ...   the crops the lists name

Categories: bird, cat, cow, dog, horse, sheep (the port's lists). There are no part annotations,
so location stability cannot be measured on this dataset (binary error only).

The imdb (`build_voc2010_crop_imdb`), as the port's: each crop whole, resized to the network input
(here MATLAB's imresize through getI on the full-image box; the port: cv2, BGR, no antialiasing),
positives +1 and negatives -1, the lists' own train / validation split (no mirrors, no repetition),
the training mean subtracted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .facts import VOC_CATEGORIES
from .get_i import gather_patches
from .imdb import Imdb
from .readers import BndBox, DatasetError, ObjRecord

__all__ = ["CropEntry", "read_voc2010_crop", "build_voc2010_crop_imdb", "VOC2010_CROP_CATEGORIES"]

VOC2010_CROP_CATEGORIES = VOC_CATEGORIES   # the six VOC Part animals (data_prep.facts)


@dataclass(frozen=True)
class CropEntry:
    """One line of <category>_info.txt: the crop's path (relative to the voc2010_crop folder),
    positive (not a negative) and training (not validation)."""

    index: int
    path: str
    positive: bool
    train: bool


def read_voc2010_crop(root: os.PathLike | str, category: str) -> list[CropEntry]:
    """The list of `category` (root: the voc2010_crop folder); bad lines name the file and line."""
    path = Path(root) / f"{category}_info.txt"
    if not path.exists():
        raise DatasetError(f"voc2010_crop: {path} not found; the lists and crops have no public host: place the "
                           f"folder by hand (see data_prep.voc2010_crop)")
    entries = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        words = [w.strip() for w in line.split(",")]
        if len(words) != 4 or words[2] not in ("0", "1") or words[3] not in ("0", "1") or not words[0].isdigit():
            raise DatasetError(f"{path}, line {i}: expected 'index,path,is_negative(0/1),is_train(0/1)', got {line!r}")
        entries.append(CropEntry(int(words[0]), words[1], words[2] == "0", words[3] == "1"))
    if not any(e.positive and e.train for e in entries):
        raise DatasetError(f"{path}: no positive training image")
    return entries


def _whole(root: Path, entry: CropEntry, ident: int) -> ObjRecord:
    try:
        with Image.open(root / entry.path) as im:
            w, h = im.size
    except OSError as exc:
        raise DatasetError(f"voc2010_crop image {root / entry.path}: cannot be read ({exc})") from exc
    return ObjRecord("", entry.path, "", BndBox(1, 1, w, h), ident)


def build_voc2010_crop_imdb(root: os.PathLike | str, category: str, image_size: Sequence[int] = (224, 224), *,
                            workers: int | None = None, progress: bool = False):
    """The single-class imdb of `category` (module docstring): train positives, train negatives,
    validation positives, validation negatives, in that order (the port's)."""
    root = Path(root)
    entries = read_voc2010_crop(root, category)
    ordered = [e for t in (True, False) for p in (True, False) for e in entries if e.train == t and e.positive == p]
    size = (int(image_size[0]), int(image_size[1]))
    objs = [_whole(root, e, k + 1) for k, e in enumerate(ordered)]
    data = np.empty((len(objs), 3) + size, dtype=np.float32)
    for start, block in gather_patches(objs, root, size, workers=workers, progress=category if progress else None):
        data[start:start + block.shape[0]] = block
    sets = np.asarray([1 if e.train else 2 for e in ordered], dtype=np.uint8)
    mean = data[sets == 1].mean(axis=0, dtype=np.float64).astype(np.float32)
    data -= mean
    labels = np.asarray([[1.0 if e.positive else -1.0] for e in ordered], dtype=np.float32)
    return Imdb(data=data, labels=labels, set=sets, data_mean=mean, classes=[category])
