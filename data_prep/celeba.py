"""CelebA: 40 face attributes per image, the official train / val / test partition, five landmarks.

Not in the original MATLAB code; the other PyTorch port (ada-shen/ICNN, tools/get_celebaimdb.py)
trains one 40-label ICNN on it. Set-up (manual: the authors host CelebA on Google Drive and Baidu
Pan, which need a browser; nothing here downloads it). From the "Align&Cropped Images" folder of
the CelebA page (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) put under ``<data root>/celeba/``::

    Img/img_align_celeba/000001.jpg ...           img_align_celeba.zip, unpacked (178 x 218 aligned faces)
    Anno/list_attr_celeba.txt                     the 40 attributes, 1 / -1
    Anno/list_landmarks_align_celeba.txt          five landmarks of the aligned images (optional)
    Eval/list_eval_partition.txt                  0 train, 1 val, 2 test

(the flat layout ``celeba/img_align_celeba/``, ``celeba/list_attr_celeba.txt`` ... that other
loaders use is found as well).

The imdb (`build_celeba_imdb`): every image of the partitions asked for, whole, resized to the
network input with MATLAB's imresize (getI on the full-image box), labels N x 40 (+1 / -1, the
attribute order of the file's header), set 1 for the official training partition and 2 for the
validation one (the test partition is left out, as the port's imdb does), the training mean
subtracted. Where the port differs: it reads the images with cv2 (BGR, no antialiasing) and takes
the labels by line number after checking names; here each label row is matched by file name.
The landmarks give part positions (`celeba_part_truth`) in the resized image's 1-based [h; w]
coordinates: 1 left eye, 2 right eye, 3 nose, 4 left mouth corner, 5 right mouth corner.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .get_i import gather_patches
from .imdb import Imdb, image_rows, subtract_training_mean
from .readers import BndBox, DatasetError, ObjRecord, PartTruth

__all__ = ["CelebaFiles", "CelebaImage", "find_celeba_files", "read_celeba", "build_celeba_imdb",
           "celeba_part_truth", "celeba_evaluation_set", "celeba_missing_message", "CELEBA_PARTITIONS", "CELEBA_LANDMARKS", "CELEBA_SIZE"]

CELEBA_PARTITIONS = {"train": 0, "val": 1, "test": 2}          # list_eval_partition.txt's codes
CELEBA_LANDMARKS = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
CELEBA_SIZE = (218, 178)                                        # the aligned images, H x W


@dataclass(frozen=True)
class CelebaFiles:
    image_dir: Path
    attributes: Path
    partition: Path
    landmarks: Path | None


@dataclass(frozen=True)
class CelebaImage:
    """One image: file name, partition code (0 / 1 / 2), attributes (40,) +1 / -1, landmarks (5, 2)
    as 1-based (x, y) pixel positions of the aligned image, or None."""

    filename: str
    partition: int
    attributes: np.ndarray
    landmarks: np.ndarray | None


def _first(root: Path, candidates: Sequence[str]) -> Path | None:
    for c in candidates:
        if (root / c).exists():
            return root / c
    return None


def find_celeba_files(root: os.PathLike | str) -> CelebaFiles:
    """The CelebA files under `root` (the 'celeba' folder), in the official or the flat layout;
    a missing one raises DatasetError saying what to put where."""
    root = Path(root)
    found = {
        "image_dir": _first(root, ("Img/img_align_celeba", "img_align_celeba", "images")),
        "attributes": _first(root, ("Anno/list_attr_celeba.txt", "list_attr_celeba.txt")),
        "partition": _first(root, ("Eval/list_eval_partition.txt", "list_eval_partition.txt")),
    }
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise DatasetError(
            f"CelebA is not complete under {root}: no {', '.join(missing)}. Download it by hand from the CelebA "
            f"page (Google Drive / Baidu Pan): img_align_celeba.zip unpacked to {root}/Img/img_align_celeba/, "
            f"list_attr_celeba.txt to {root}/Anno/, list_eval_partition.txt to {root}/Eval/ "
            f"(list_landmarks_align_celeba.txt to {root}/Anno/ for part positions)")
    marks = _first(root, ("Anno/list_landmarks_align_celeba.txt", "list_landmarks_align_celeba.txt"))
    return CelebaFiles(found["image_dir"], found["attributes"], found["partition"], marks)


def _table(path: Path, header_lines: int) -> tuple[list[str], dict[str, list[str]]]:
    """A CelebA list file: `header_lines` lines (2: the count and the column names; 0: none), then
    'name v1 v2 ...' rows."""
    lines = path.read_text().splitlines()
    if len(lines) < header_lines:
        raise DatasetError(f"{path}: expected {header_lines} header line(s)")
    columns = lines[header_lines - 1].split() if header_lines == 2 else []
    rows: dict[str, list[str]] = {}
    for i, line in enumerate(lines[header_lines:], start=header_lines + 1):
        words = line.split()
        if not words:
            continue
        if columns and len(words) != len(columns) + 1:
            raise DatasetError(f"{path}, line {i}: {len(words) - 1} values for {len(columns)} columns")
        rows[words[0]] = words[1:]
    if header_lines == 2 and lines[0].strip().isdigit() and int(lines[0]) != len(rows):
        raise DatasetError(f"{path}: its first line says {int(lines[0])} rows, it has {len(rows)}")
    return columns, rows


def read_celeba(root: os.PathLike | str) -> tuple[list[str], list[CelebaImage]]:
    """(attribute names, the images in partition-file order) of the CelebA folder `root`."""
    files = find_celeba_files(root)
    names, attrs = _table(files.attributes, 2)
    _, parts = _table(files.partition, 0)
    marks = _table(files.landmarks, 2)[1] if files.landmarks is not None else None
    images = []
    for filename, (code, *_rest) in parts.items():
        if filename not in attrs:
            raise DatasetError(f"{files.attributes}: no attributes for {filename} (listed in {files.partition})")
        values = np.asarray([int(v) for v in attrs[filename]], dtype=np.int64)
        if not np.isin(values, (-1, 1)).all():
            raise DatasetError(f"{files.attributes}: {filename} has attribute values other than 1 / -1")
        lm = None
        if marks is not None and filename in marks:
            lm = np.asarray([float(v) for v in marks[filename]], dtype=np.float64).reshape(5, 2) + 1.0
        if code not in ("0", "1", "2"):
            raise DatasetError(f"{files.partition}: partition {code!r} of {filename} is not 0, 1 or 2")
        images.append(CelebaImage(filename, int(code), values, lm))
    return names, images


def _select(images: Sequence[CelebaImage], partitions: Sequence[str], limit: int | None) -> list[CelebaImage]:
    out = []
    for p in partitions:
        if p not in CELEBA_PARTITIONS:
            raise ValueError(f"unknown CelebA partition {p!r} (train, val, test)")
        chosen = [im for im in images if im.partition == CELEBA_PARTITIONS[p]]
        out += chosen[:limit] if limit is not None else chosen
    return out


def _columns(names: Sequence[str], attributes: Sequence[str] | None, where: Path) -> list[int]:
    """The columns of `attributes` (None: all) among the file's attribute names."""
    if attributes is None:
        return list(range(len(names)))
    absent = [a for a in attributes if a not in names]
    if absent:
        raise DatasetError(f"{where}: no attribute {', '.join(absent)} in its header ({' '.join(names)})")
    return [list(names).index(a) for a in attributes]


def build_celeba_imdb(root: os.PathLike | str, image_size: Sequence[int] = (224, 224), *,
                      partitions: Sequence[str] = ("train", "val"), limit: int | None = None,
                      attributes: Sequence[str] | None = None, workers: int | None = None, progress: bool = False,
                      out: os.PathLike | str | None = None):
    """The 40-attribute imdb (module docstring); `limit`: at most that many images per partition
    (the whole training partition is 162,770 images, 98 GB at 224 x 224 in float32); `attributes`:
    the label columns (default all 40, in the file's order); `out`: write the images to that .npy
    file (memory-mapped; `data_prep.imdb.load_or_build_imdb`'s), not into memory."""
    names, images = read_celeba(root)
    columns = _columns(names, attributes, find_celeba_files(root).attributes)
    names = [names[c] for c in columns]
    chosen = _select(images, partitions, limit)
    if not any(im.partition == 0 for im in chosen):
        raise DatasetError(f"CelebA under {root}: no training image chosen (partitions {list(partitions)})")
    files = find_celeba_files(root)
    size = (int(image_size[0]), int(image_size[1]))
    objs = [_whole_image(files.image_dir, im.filename, k + 1) for k, im in enumerate(chosen)]
    data = image_rows(out, len(objs), size)
    for start, block in gather_patches(objs, files.image_dir, size, workers=workers,
                                       progress="celeba" if progress else None):
        data[start:start + block.shape[0]] = block
    sets = np.asarray([1 if im.partition == 0 else 2 if im.partition == 1 else 3 for im in chosen], dtype=np.uint8)
    mean = subtract_training_mean(data, sets == 1)
    labels = np.stack([im.attributes[columns] for im in chosen]).astype(np.float32)
    return Imdb(data=data, labels=labels, set=sets, data_mean=mean, classes=list(names))


def celeba_missing_message(root: os.PathLike | str) -> str:
    """What to download by hand for CelebA, and where to put it."""
    return (f"dataset 'celeba' is not under {root}: download it by hand from the CelebA page "
            f"(mmlab.ie.cuhk.edu.hk/projects/CelebA.html; Google Drive / Baidu Pan, which need a browser): "
            f"img_align_celeba.zip unpacked to {root}/Img/img_align_celeba/, list_attr_celeba.txt and "
            f"list_landmarks_align_celeba.txt to {root}/Anno/, list_eval_partition.txt to {root}/Eval/")


def celeba_evaluation_set(root: os.PathLike | str, attribute: str, input_size: int, *, partition: str = "val",
                          limit: int | None = None) -> tuple[list[ObjRecord], dict[int, list[PartTruth]]]:
    """The images location stability is measured on for one attribute (a package choice: the original
    measures a category on its own objects): the `partition` images the imdb holds (the first `limit`),
    those with the attribute (+1), whole, with their five landmarks as part truth at the network input
    (`celeba_part_truth`; an image without landmarks has empty truth). The objects' folder is the images'
    folder relative to `root`: read them from `root`."""
    root = Path(root)
    names, images = read_celeba(root)
    files = find_celeba_files(root)
    column = _columns(names, [attribute], files.attributes)[0]
    chosen = [im for im in _select(images, [partition], limit) if im.attributes[column] == 1]
    folder = files.image_dir.relative_to(root).as_posix()
    objs = [replace(_whole_image(files.image_dir, im.filename, k + 1), folder=folder) for k, im in enumerate(chosen)]
    return objs, celeba_part_truth(chosen, input_size)


def _whole_image(image_dir: Path, filename: str, ident: int) -> ObjRecord:
    path = image_dir / filename
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise DatasetError(f"CelebA image {path}: cannot be read ({exc})") from exc
    return ObjRecord("", filename, "celeba", BndBox(1, 1, w, h), ident)


def celeba_part_truth(images: Sequence[CelebaImage], input_size: int, image_hw: Sequence[int] = CELEBA_SIZE
                      ) -> dict[int, list[PartTruth]]:
    """Part k (1..5, CELEBA_LANDMARKS order) of each image at the network input: landmark (x, y) of the
    H x W aligned image -> h = (y - 0.5) * input / H + 0.5, w likewise (imresize's pixel centres)."""
    h_img, w_img = int(image_hw[0]), int(image_hw[1])
    out: dict[int, list[PartTruth]] = {k: [] for k in range(1, 6)}
    for im in images:
        for k in range(1, 6):
            if im.landmarks is None:
                out[k].append(PartTruth())
                continue
            x, y = im.landmarks[k - 1]
            hw = np.array([[(y - 0.5) * input_size / h_img + 0.5], [(x - 0.5) * input_size / w_img + 0.5]])
            out[k].append(PartTruth(pHW_center=hw))
    return out
