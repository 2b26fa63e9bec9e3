"""A plain folder of fox pictures made from ../shared/data, for the --images tests (data_prep.images).

`fox_folder(shared, dest, n)` copies the first n fox images (detanimalpart/n02118333_obj/img/img/NNNNN.jpg)
as plain files, the first half into ``dest/images/`` and the rest into ``dest/images/more/`` (a nested
folder), and writes beside them:

- ``boxes.csv``: ``image,xmin,ymin,xmax,ymax``, each image's box from data.mat (readAnnotation.m's);
- ``landmarks.csv``: ``image,part,row,col``, the fox's part landmarks (truth_part01.mat: head,
  truth_part02.mat: frontal legs) converted from the truth files' frame to the original image's
  pixels. The truth files hold ``pHW_center`` = [h; w] in the 224 x 224 crop of the object's box
  (1-based, pixel centres), so the image point is

      row = ymin - 0.5 + (h - 0.5) * (ymax - ymin + 1) / 224,   col likewise with xmin, xmax and w,

  the inverse of data_prep.images.crop_landmark.

Returns a `FoxFolder` with the paths, the ILSVRC objset of those images and their original truth
entries, so that tests can compare what the port rebuilds with the original.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.ilsvrc import ilsvrc_conf, read_annotation_ilsvrc
from data_prep.readers import PartTruth, read_part_truth_file

FOX = "n02118333"
CROP = 224                       # the truth files' crop size


@dataclass
class FoxFolder:
    images: Path
    boxes: Path
    landmarks: Path
    names: list[str]             # relative to `images`, in the order of the fox images
    boxes_by_name: dict
    truth: dict[int, list[PartTruth]]   # part -> the original truth entries of these images


def image_point(h: float, w: float, box) -> tuple[float, float]:
    """A truth file's crop point [h, w] as (row, col) in the original image (module docstring)."""
    row = box.ymin - 0.5 + (h - 0.5) * (box.ymax - box.ymin + 1) / CROP
    col = box.xmin - 0.5 + (w - 0.5) * (box.xmax - box.xmin + 1) / CROP
    return row, col


def fox_folder(shared: Path, dest: Path, n: int = 40) -> FoxFolder:
    conf = ilsvrc_conf(shared)
    objs = read_annotation_ilsvrc(FOX, conf)[:n]
    truth = {p: read_part_truth_file(conf.truth_file(FOX, p))[:n] for p in (1, 2)}
    images = dest / "images"
    names, boxes = [], {}
    for k, obj in enumerate(objs):
        name = obj.filename if k < n // 2 else f"more/{obj.filename}"
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj.image_path(conf.imgdir), images / name)
        names.append(name)
        boxes[name] = obj.bndbox
    boxes_csv, landmarks_csv = dest / "boxes.csv", dest / "landmarks.csv"
    with open(boxes_csv, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "xmin", "ymin", "xmax", "ymax"])
        for name in names:
            b = boxes[name]
            out.writerow([name, b.xmin, b.ymin, b.xmax, b.ymax])
    with open(landmarks_csv, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "part", "row", "col"])
        for part, entries in truth.items():
            for name, entry in zip(names, entries):
                for h, w in entry.centres:
                    row, col = image_point(h, w, boxes[name])
                    out.writerow([name, part, repr(float(row)), repr(float(col))])
    return FoxFolder(images, boxes_csv, landmarks_csv, names, boxes, truth)


def copy_negatives(shared: Path, dest: Path, n: int) -> Path:
    """The first n shared negatives copied into `dest` (own negatives, --negatives DIR)."""
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        shutil.copyfile(shared / "neg" / f"{i:05d}.JPEG", dest / f"neg{i:03d}.jpg")
    return dest


def centres_equal(a: PartTruth, b: PartTruth) -> bool:
    """The same part centres (both empty, or the same [h, w] up to float rounding)."""
    if a.is_empty() or b.is_empty():
        return a.is_empty() and b.is_empty()
    return a.centres.shape == b.centres.shape and bool(np.allclose(a.centres, b.centres, rtol=0, atol=1e-9))


def disc_part_masks(folder: FoxFolder, dest: Path, radius: float = 25.0) -> Path:
    """Label maps for --part-masks: part k a disc of `radius` pixels around each landmark of part k
    (landmarks.csv), 0 elsewhere; dest/<image path>.png, the image's size."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    with open(folder.landmarks, newline="") as fh:
        for row in csv.DictReader(fh):
            points.setdefault(row["image"], []).append((int(row["part"]), float(row["row"]), float(row["col"])))
    for name in folder.names:
        with Image.open(folder.images / name) as im:
            w, h = im.size
        rows, cols = np.mgrid[1:h + 1, 1:w + 1]
        labels = np.zeros((h, w), np.uint8)
        for part, r, c in points.get(name, []):
            labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = part
        path = dest / Path(name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(path)
    return dest
