"""voc2010_crop: Pascal VOC 2010 object crops, one positive / negative list per animal category.

Not in the original MATLAB code; the other PyTorch port (ada-shen/ICNN) ships the lists
(datasets/voc2010_crop/<category>_info.txt) and reads them in tools/get_voc2010imdb.py. Put under
``<data root>/voc2010_crop/``::

    <category>_info.txt       one line per image: index,relative/path.jpg,is_negative,is_train
                              (is_negative 0: the category, 1: a negative; is_train 1: training, 0: validation)
    all_crop/*.jpg            the crops the lists name

Where the files come from (what the port says, and what it does not): the lists are in the port's
repository (github.com/ada-shen/ICNN, datasets/voc2010_crop/); the crops are not, and the port has
no script or note saying how they were cut. By their names, ``all_crop/<class><n>_<VOC image
id>.jpg`` (``bird1261_2008_000095.jpg``), each is one annotated object of that VOC2010 trainval
image, of the class its name starts with (n: a running object number); the negatives of a
category are crops of the 14 non-animal VOC classes (person, chair, car, ...). How the box was
cropped (margin, clipping) and which objects were kept (truncated, difficult, small) are not
said, so this package does not rebuild the crops from the VOC2010 annotations: set-up is
manual, with the crops from the port's authors.

Categories: bird, cat, cow, dog, horse, sheep (the port's lists). There are no part annotations,
so location stability and part interpretability cannot be measured on this dataset (binary
error only).

The imdb (`build_voc2010_crop_imdb`), as the port's: each crop whole, resized to the network input
(here MATLAB's imresize through getI on the full-image box; the port: cv2, BGR, no antialiasing),
positives +1 and negatives -1, the lists' own train / validation split (no mirrors, no repetition),
the training mean subtracted.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .facts import VOC_CATEGORIES
from .get_i import gather_patches
from .imdb import Imdb, image_rows, subtract_training_mean
from .voc2010_crop_lists import (
    CropEntry,
    missing_voc2010_crop,
    read_annotation_voc2010_crop,
    read_voc2010_crop,
    voc2010_crop_missing_message,
    whole_crop,
)

__all__ = ["CropEntry", "read_voc2010_crop", "build_voc2010_crop_imdb", "VOC2010_CROP_CATEGORIES",
           "voc2010_crop_missing_message", "missing_voc2010_crop", "read_annotation_voc2010_crop"]

VOC2010_CROP_CATEGORIES = VOC_CATEGORIES   # the six VOC Part animals (data_prep.facts)


def build_voc2010_crop_imdb(root: os.PathLike | str, category: str, image_size: Sequence[int] = (224, 224), *,
                            workers: int | None = None, progress: bool = False, out: os.PathLike | str | None = None):
    """The single-class imdb of `category` (module docstring): train positives, train negatives,
    validation positives, validation negatives, in that order (the port's); `out`: write the images
    to that .npy file (memory-mapped), not into memory."""
    root = Path(root)
    entries = read_voc2010_crop(root, category)
    ordered = [e for t in (True, False) for p in (True, False) for e in entries if e.train == t and e.positive == p]
    size = (int(image_size[0]), int(image_size[1]))
    objs = [whole_crop(root, e, k + 1) for k, e in enumerate(ordered)]
    data = image_rows(out, len(objs), size)
    for start, block in gather_patches(objs, root, size, workers=workers, progress=category if progress else None):
        data[start:start + block.shape[0]] = block
    sets = np.asarray([1 if e.train else 2 for e in ordered], dtype=np.uint8)
    mean = subtract_training_mean(data, sets == 1)
    labels = np.asarray([[1.0 if e.positive else -1.0] for e in ordered], dtype=np.float32)
    return Imdb(data=data, labels=labels, set=sets, data_mean=mean, classes=[category])
