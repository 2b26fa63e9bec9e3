"""voc2010_crop's lists: reading <category>_info.txt, what is missing, the objset (data_prep.voc2010_crop
says where the lists and crops come from). Apart from the imdb builder so that data_prep.annotations
can read them without importing data_prep.imdb."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from .readers import BndBox, DatasetError, ObjRecord

__all__ = ["CropEntry", "read_voc2010_crop", "voc2010_crop_missing_message", "missing_voc2010_crop",
           "read_annotation_voc2010_crop", "whole_crop"]


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
        raise DatasetError(voc2010_crop_missing_message(root, [category], [str(path)]))
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


def voc2010_crop_missing_message(root: os.PathLike | str, categories: Sequence[str], missing: Sequence[str]) -> str:
    """What to place by hand for voc2010_crop, and where (`missing`: the files not found)."""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"dataset 'voc2010_crop' (categor{'y' if len(categories) == 1 else 'ies'} {', '.join(categories)}) is "
            f"incomplete under {root}: missing {shown}. Nothing downloads it: put the lists <category>_info.txt "
            f"of the other PyTorch port (github.com/ada-shen/ICNN, datasets/voc2010_crop/) in {root}/, and the "
            f"object crops they name (all_crop/<class><n>_<VOC2010 image id>.jpg: VOC2010 trainval objects, "
            f"not in that repository; the port does not say how they were cut, so ask its authors) under "
            f"{root}/all_crop/")


def missing_voc2010_crop(root: os.PathLike | str, categories: Sequence[str]) -> list[str]:
    """The lists of `categories` and the crops they name that are not under `root` ([] when complete)."""
    root = Path(root)
    missing = []
    for c in categories:
        path = root / f"{c}_info.txt"
        if not path.is_file():
            missing.append(str(path))
            continue
        missing += [str(root / e.path) for e in read_voc2010_crop(root, c) if not (root / e.path).is_file()]
    return list(dict.fromkeys(missing))


def read_annotation_voc2010_crop(name: str, conf) -> list[ObjRecord]:
    """readAnnotation for voc2010_crop (conf.imgdir = the voc2010_crop folder): the category's positive
    crops, whole (training then validation, the lists' order)."""
    root = Path(conf.imgdir)
    entries = [e for t in (True, False) for e in read_voc2010_crop(root, name) if e.positive and e.train == t]
    return [whole_crop(root, e, k + 1) for k, e in enumerate(entries)]


def whole_crop(root: Path, entry: CropEntry, ident: int) -> ObjRecord:
    try:
        with Image.open(root / entry.path) as im:
            w, h = im.size
    except OSError as exc:
        raise DatasetError(f"voc2010_crop image {root / entry.path}: cannot be read ({exc})") from exc
    return ObjRecord("", entry.path, "", BndBox(1, 1, w, h), ident)
