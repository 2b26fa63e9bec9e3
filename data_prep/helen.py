"""Helen: faces with 194 landmarks; the landmarks give the face box and the part positions.

Not in the original MATLAB code; the other PyTorch port (ada-shen/ICNN, tools/get_helenimdb.py,
datasets/helen/helen_info.txt) trains a face / not-face ICNN on it (2000 training and 330
validation faces, animal crops as negatives) and never reads the landmarks. Here Helen is read in
its own distribution's layout, and the landmarks become the object box (the face) and part truth
for location stability, as the ILSVRC / VOC / CUB part annotations are.

Set-up (manual: the Helen page, www.ifp.illinois.edu/~vuongle2/helen/, serves the zips from a
browser page). Put under ``<data root>/helen/``::

    helen_1/ ... helen_5/*.jpg        the five image zips, unpacked (any folders below helen/ are searched)
    annotation/1.txt ... 2330.txt     annotation.zip: line 1 the image name, then 194 lines 'x , y'
    trainnames.txt, testnames.txt     optional: the official split (image names, one a line)

Object box (a package choice, the annotation has none): the landmarks' bounding box grown by
`HELEN_MARGIN` (20 %) of its size on each side (the 194 points stop at the eyebrows, so the top
gets twice that), clipped to the image; 1-based inclusive like every box here.
Parts (`HELEN_PARTS`): the centre (mean) of a group of the 194 points, in the usual grouping of
Helen's annotation order: jaw 0-40, nose 41-57, outer lip 58-85, inner lip 86-113, the two eyes
114-133 and 134-153, the two eyebrows 154-173 and 174-193 (0-based). Part 1 and 2 are the eyes in
that order, 3 the nose, 4 the mouth (outer lip). Landmark coordinates are taken as 0-based pixel
positions (x right, y down) and made 1-based.
Truth (`helen_part_truth`) is in the box crop resized to the network input, as the original's
truth files: h = (y - ymin + 0.5) * input / (ymax - ymin + 1) + 0.5, likewise w.
Negatives: the package's 1000 shared negatives (getNegObjSet.m), as for the other datasets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .facts import HELEN_CATEGORY, HELEN_PART_LIST
from .readers import BndBox, DatasetError, ObjRecord, PartTruth, save_part_truth

__all__ = ["HelenFace", "read_helen", "helen_missing_message", "face_box", "helen_objset", "helen_part_truth",
           "write_helen_truth", "read_annotation_helen", "HELEN_PARTS", "HELEN_MARGIN", "HELEN_POINTS", "HELEN_CATEGORY"]

HELEN_POINTS = 194
HELEN_MARGIN = 0.2
HELEN_PARTS: dict[int, tuple[str, range]] = {
    1: ("eye (points 114-133)", range(114, 134)),
    2: ("eye (points 134-153)", range(134, 154)),
    3: ("nose", range(41, 58)),
    4: ("mouth", range(58, 86)),
}
assert tuple(HELEN_PARTS) == HELEN_PART_LIST        # data_prep.facts states the part list


@dataclass(frozen=True)
class HelenFace:
    """One annotated face: image name, its file (relative to the helen folder), landmarks (194, 2)
    as 1-based (x, y), split 'train' / 'test' / '' (unknown), and the annotation file."""

    name: str
    image: str
    landmarks: np.ndarray
    split: str
    source: str


def _read_points(path: Path) -> tuple[str, np.ndarray]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != HELEN_POINTS + 1:
        raise DatasetError(f"{path}: expected an image name and {HELEN_POINTS} 'x , y' lines, got {len(lines)} lines")
    points = []
    for i, line in enumerate(lines[1:], start=2):
        parts = [p.strip() for p in line.split(",")]
        try:
            points.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            raise DatasetError(f"{path}, line {i}: expected 'x , y', got {line!r}") from None
    return lines[0], np.asarray(points, dtype=np.float64) + 1.0


def _names(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {Path(ln.strip()).stem for ln in path.read_text().splitlines() if ln.strip()}


def helen_missing_message(root: os.PathLike | str) -> str:
    """What to download by hand, and where to put it."""
    return (f"dataset 'helen' is not under {root}: download annotation.zip and helen_1.zip .. helen_5.zip by hand "
            f"from the Helen page (www.ifp.illinois.edu/~vuongle2/helen/; its links need a browser) and unpack "
            f"them into {root}/ (annotation/1.txt ... and the .jpg images in any folders below it; trainnames.txt "
            f"and testnames.txt optional)")


def read_helen(root: os.PathLike | str) -> list[HelenFace]:
    """Every annotation of the Helen folder `root`, in annotation-file number order."""
    root = Path(root)
    anno = root / "annotation"
    files = sorted(anno.glob("*.txt"), key=lambda p: (int(p.stem) if p.stem.isdigit() else 10**9, p.stem))
    if not files:
        raise DatasetError(helen_missing_message(root))
    images = {p.stem: p for p in root.rglob("*.jpg")}
    train, test = _names(root / "trainnames.txt"), _names(root / "testnames.txt")
    faces = []
    for f in files:
        name, points = _read_points(f)
        if name not in images:
            raise DatasetError(f"{f}: its image {name}.jpg is not under {root}")
        split = "train" if name in train else "test" if name in test else ""
        faces.append(HelenFace(name, images[name].relative_to(root).as_posix(), points, split, str(f)))
    return faces


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as exc:
        raise DatasetError(f"Helen image {path}: cannot be read ({exc})") from exc


def face_box(landmarks: np.ndarray, image_hw: Sequence[int], margin: float = HELEN_MARGIN) -> BndBox:
    """The landmarks' box grown by `margin` (top: 2 x margin), clipped to the image (module docstring)."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    w, h = x1 - x0, y1 - y0
    box = (x0 - margin * w, y0 - 2 * margin * h, x1 + margin * w, y1 + margin * h)
    xmin, ymin = max(1, int(np.floor(box[0]))), max(1, int(np.floor(box[1])))
    xmax, ymax = min(int(image_hw[1]), int(np.ceil(box[2]))), min(int(image_hw[0]), int(np.ceil(box[3])))
    if xmax <= xmin or ymax <= ymin:
        raise DatasetError(f"Helen: the landmarks {box} lie outside the {image_hw[0]} x {image_hw[1]} image")
    return BndBox(xmin, ymin, xmax, ymax)


def helen_objset(faces: Sequence[HelenFace], root: os.PathLike | str, margin: float = HELEN_MARGIN) -> list[ObjRecord]:
    """The objset of the faces: image files relative to `root`, face boxes (`face_box`), IDs 1..n."""
    root = Path(root)
    return [ObjRecord("", f.image, HELEN_CATEGORY, face_box(f.landmarks, _image_size(root / f.image), margin), k)
            for k, f in enumerate(faces, start=1)]


def helen_part_truth(faces: Sequence[HelenFace], objs: Sequence[ObjRecord], input_size: int = 224
                     ) -> dict[int, list[PartTruth]]:
    """Part k of each face in its box crop resized to input_size (module docstring), with the object."""
    out: dict[int, list[PartTruth]] = {k: [] for k in HELEN_PARTS}
    for face, obj in zip(faces, objs):
        b = obj.bndbox
        for k, (_, idx) in HELEN_PARTS.items():
            x, y = face.landmarks[list(idx)].mean(axis=0)
            h = (y - b.ymin + 0.5) * input_size / (b.ymax - b.ymin + 1) + 0.5
            w = (x - b.xmin + 0.5) * input_size / (b.xmax - b.xmin + 1) + 0.5
            out[k].append(PartTruth(pHW_center=np.array([[h], [w]]), obj=obj))
    return out


def write_helen_truth(root: os.PathLike | str, truth_dir: os.PathLike | str, input_size: int = 224) -> list[Path]:
    """truth_partNN.mat files (the original's format) of the Helen folder, under truth_dir/face/."""
    faces = read_helen(root)
    objs = helen_objset(faces, root)
    written = []
    for k, truth in helen_part_truth(faces, objs, input_size).items():
        path = Path(truth_dir) / HELEN_CATEGORY / f"truth_part{k:02d}.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_part_truth(path, truth, with_scale=False)
        written.append(path)
    return written


def read_annotation_helen(name: str, conf) -> list[ObjRecord]:
    """readAnnotation for Helen (conf.imgdir = the helen folder): the faces' objset; `name` must be 'face'."""
    if name != HELEN_CATEGORY:
        raise DatasetError(f"Helen has one category, {HELEN_CATEGORY!r}, not {name!r}")
    return helen_objset(read_helen(conf.imgdir), conf.imgdir)
