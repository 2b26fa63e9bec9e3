"""Your own images: an interpretable CNN for any folder of pictures (the dataset 'images').

Not in the original MATLAB code. The method needs no part annotations to learn, so a folder of
pictures of one category is enough: `demo.py --images DIR` and `python -m reproduce.paper --images
DIR` run the paper's protocol on it (getImdb's crops and mirrors, the 1000 shared negatives,
our_cnn_train, the binary error, step_drawRF's pictures) with this module as the category's
readAnnotation.m. What the run reads (`ImageFolder`):

    --images DIR         positives: every JPEG / PNG under DIR (.jpg .jpeg .png, any case, nested folders;
                         hidden files and folders, and the --part-masks / --negatives folders when they
                         lie inside DIR, are left out), in sorted order of their paths relative to DIR
    --boxes FILE|DIR     the objects: a CSV with the header ``image,xmin,ymin,xmax,ymax`` (image: its path
                         relative to DIR, e.g. ``a.jpg`` or ``sub/b.png``; the box 1-based and inclusive in
                         pixels, as the original's bndbox: columns xmin..xmax, rows ymin..ymax), or a folder
                         of Pascal VOC XML files (``<filename>`` relative to DIR, every ``<object>``'s
                         ``<bndbox>``, whatever its ``<name>``). Several boxes of one image are several
                         objects (each its own crop, as in the original's objset); an image without a box
                         is left out (said). Without --boxes each image is one object, the whole image.
    --landmarks FILE     part positions for location stability: a CSV ``image,part,row,col``; part a whole
                         number >= 1 (showResults' partList is the parts the file names); row and col in
                         pixels of the ORIGINAL image, 1-based (the centre of the top-left pixel is row 1,
                         col 1; fractions allowed). A landmark belongs to the objects whose box holds it.
    --part-masks DIR     part regions for part interpretability: one PNG label map per image, at the
                         image's relative path with the extension .png (``sub/b.jpg`` -> ``DIR/sub/b.png``),
                         of the image's size, one channel (mode L, P or I): 0 background, 1..254 part k,
                         255 ignored (Pascal VOC's 'void'). An image without a map has no part there.
    --negatives DIR      your own negatives (every JPEG / PNG under DIR, the whole image each) instead of
                         the 1000 shared ones (data root's neg/, which set-up fetches as for every category)

Landmarks are stored as the original's truth files: each object's part centre converted into its
box crop resized to the network input (S x S, S = 224 for the paper's nets), as the original's
``pHW_center`` (1-based [h; w] in that crop):

    h = (row - ymin + 0.5) * S / (ymax - ymin + 1) + 0.5,   w = (col - xmin + 0.5) * S / (xmax - xmin + 1) + 0.5

(pixel centres map to pixel centres under imresize). An object with one landmark of a part gets a
2 x 1 ``pHW_center``; with K > 1 landmarks of that part a 2 x K one, which getDistSqrtVar.m skips as
it skips the original's multi-object entries (computeStability.m still counts the image as one with
the part); with none, an empty entry. The files go to ``<truth_dir>/images/truth_partNN.mat``
(demo.py: under its output folder), rewritten on every run from the CSV.

Bad input is listed whole before anything is written or trained (`ImageFolderError`, one line per
problem, naming the file and, for a CSV, its line): an image that cannot be decoded, a box outside its
image or with xmin > xmax, a CSV line naming no image under DIR or holding no number where one
belongs, a landmark outside its image, a label map of another size or with colour channels, a label
map naming no image, an empty folder. A box under minArea (50^2 pixels, as every setup_*.m) leaves an
empty objset element, as the ILSVRC reader does (said when it happens).
"""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from .facts import IMAGES_CATEGORY, MIN_AREA
from .get_i import ImageReadError, read_image
from .readers import BndBox, DatasetError, ObjRecord, PartTruth, is_area_valid, save_part_truth

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "ImageFolderError", "ScannedFolder", "list_images", "scan_image_folder",
           "prepare_image_folder", "read_annotation_images", "image_part_truth", "read_part_mask",
           "crop_landmark", "MASK_IGNORE", "no_landmarks_note", "mask_path",
           "own_negatives_count"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_IGNORE = 255                 # a label map's 'void' value (Pascal VOC's), not a part
_BOX_COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax")
_LANDMARK_COLUMNS = ("image", "part", "row", "col")
_MAX_LISTED = 50                  # problems listed in full; the rest are counted


@dataclass(frozen=True)
class ImageFolder:
    """What `--images DIR` and its options name (module docstring); paths made absolute."""

    images: Path
    boxes: Path | None = None
    landmarks: Path | None = None
    part_masks: Path | None = None
    negatives: Path | None = None

    def __post_init__(self) -> None:
        for name in ("images", "boxes", "landmarks", "part_masks", "negatives"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser().absolute())

    def options(self) -> dict[str, str | None]:
        """The paths as text: recorded with every checkpoint (resuming compares them) and in the imdb
        cache's fingerprint."""
        return {name: None if getattr(self, name) is None else str(getattr(self, name))
                for name in ("images", "boxes", "landmarks", "part_masks", "negatives")}

    def tag(self) -> str:
        """'_' + 8 hex digits of `options()`: reproduce.paper's run ids and imdb folders of this folder."""
        return "_" + hashlib.sha256(repr(sorted(self.options().items())).encode()).hexdigest()[:8]


class ImageFolderError(DatasetError):
    """Bad input in an image folder or its CSV / XML / PNG files: every problem, one line each."""

    def __init__(self, folder: Path, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        head = (f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} with --images {folder} "
                f"(nothing was written or trained; fix them and run again):")
        super().__init__("\n  ".join([head, *shown] + ([f"... and {more} more"] if more > 0 else [])))


@dataclass
class ScannedFolder:
    """An image folder read and checked: the images (relative paths, sorted) and their sizes (h, w),
    the boxes of each image, the landmarks (image -> part -> [(row, col)]), the label maps found,
    and the negatives' relative paths (own negatives only)."""

    folder: ImageFolder
    names: list[str]
    sizes: dict[str, tuple[int, int]]
    boxes: dict[str, list[BndBox]]
    landmarks: dict[str, dict[int, list[tuple[float, float]]]] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    negatives: list[str] = field(default_factory=list)

    @property
    def parts(self) -> tuple[int, ...]:
        """The parts the landmarks name (showResults' partList for this folder), sorted."""
        return tuple(sorted({p for per in self.landmarks.values() for p in per}))

    def objset(self, min_area: float = MIN_AREA) -> list[ObjRecord | None]:
        """readAnnotation's objset: one element per box (image order, then box order), IDs 1..n; a box
        under min_area leaves None in its place (as the ILSVRC reader)."""
        out: list[ObjRecord | None] = []
        for name in self.names:
            for box in self.boxes.get(name, []):
                ok = is_area_valid(box, min_area)
                out.append(ObjRecord("", name, IMAGES_CATEGORY, box, len(out) + 1) if ok else None)
        return out

    def fingerprint(self) -> str:
        """sha256 of what the imdb is built from: the images (path, size, modification time), the
        boxes and the negatives; a change means the imdb cache is rebuilt."""
        digest = hashlib.sha256()
        for root, names in ((self.folder.images, self.names), (self.folder.negatives, self.negatives)):
            for name in names:
                st = os.stat(Path(root) / name)
                digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for name in self.names:
            digest.update(f"{name}:{[tuple(vars(b).values()) for b in self.boxes.get(name, [])]}\n".encode())
        return digest.hexdigest()


# ================================================================== listing and reading images
def list_images(folder: os.PathLike | str, exclude: Iterable[os.PathLike | str | None] = ()) -> list[str]:
    """Every JPEG / PNG under `folder` (nested folders too) as paths relative to it, sorted; hidden
    files and folders and the folders in `exclude` are left out."""
    root = Path(folder)
    skip = {Path(p).absolute() for p in exclude if p is not None}
    out = []
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).absolute() not in skip)
        out += [(here / f).relative_to(root).as_posix() for f in files
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception as exc:  # noqa: BLE001 - said as a problem naming the file
        raise ImageReadError(path, f"cannot read the image header ({type(exc).__name__}: {exc})") from exc


def image_sizes(root: Path, names: Sequence[str], problems: list[str], *, decode: bool, progress: str | None
                ) -> dict[str, tuple[int, int]]:
    """(h, w) of each readable image; each unreadable one is a problem. decode: decode every image as
    getI will (a truncated file is found here, not half-way through the imdb); else the header only."""
    sizes = {}
    for name in tqdm(names, desc=progress, unit="img", leave=False, disable=progress is None):
        try:
            sizes[name] = tuple(read_image(root / name).shape[:2]) if decode else _header_size(root / name)
        except ImageReadError as exc:
            problems.append(str(exc))
    return sizes


# ================================================================== boxes
def _number(text: str | None, what: str) -> float:
    try:
        value = float(text if text is not None else "")
    except ValueError:
        raise DatasetError(f"{what} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DatasetError(f"{what} {text!r} is not a finite number")
    return value


def _csv_rows(path: Path, columns: Sequence[str], problems: list[str]) -> Iterable[tuple[str, dict]]:
    """(where, row) for each data line of a CSV whose header names `columns`; `where` is 'FILE, line N'."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
        return
    with fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not set(columns) <= set(header):
            problems.append(f"{path}, line 1: the header must name the columns {','.join(columns)} "
                            f"(found {','.join(header) or 'nothing'})")
            return
        reader.fieldnames = header
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue                     # a blank line
            yield f"{path}, line {reader.line_num}", {k: (row.get(k) or "").strip() for k in columns}


def _checked_box(values: Sequence[Any], size: tuple[int, int] | None, where: str, problems: list[str]
                 ) -> BndBox | None:
    """The box, or None with a problem: not numbers, xmin > xmax / ymin > ymax, or outside the image."""
    try:
        box = BndBox.from_values(*(_number(v, k) for k, v in zip(_BOX_COLUMNS[1:], values)), where=where)
    except DatasetError as exc:
        problems.append(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc))
        return None
    text = f"box [xmin {box.xmin}, ymin {box.ymin}, xmax {box.xmax}, ymax {box.ymax}]"
    if box.xmin > box.xmax or box.ymin > box.ymax:
        problems.append(f"{where}: {text} is empty (xmin > xmax or ymin > ymax)")
        return None
    if size is not None and (box.xmin < 1 or box.ymin < 1 or box.xmax > size[1] or box.ymax > size[0]):
        problems.append(f"{where}: {text} lies outside its image ({size[1]} x {size[0]} pixels; "
                        f"1-based: columns 1..{size[1]}, rows 1..{size[0]})")
        return None
    return box


def _boxes_from_csv(path: Path, sizes: dict, known: set[str], problems: list[str]) -> dict[str, list[BndBox]]:
    boxes: dict[str, list[BndBox]] = {}
    for where, row in _csv_rows(path, _BOX_COLUMNS, problems):
        name = _image_name(row["image"], known, where, problems)
        if name is None:
            continue
        box = _checked_box([row[k] for k in _BOX_COLUMNS[1:]], sizes.get(name), f"{where} ({name})", problems)
        if box is not None:
            boxes.setdefault(name, []).append(box)
    return boxes


def _boxes_from_voc(folder: Path, sizes: dict, known: set[str], problems: list[str]) -> dict[str, list[BndBox]]:
    """Pascal VOC XML files (any folder depth): <filename> (relative to the images folder; else the
    XML's own relative path with the image's extension) and each <object><bndbox>."""
    boxes: dict[str, list[BndBox]] = {}
    files = sorted(p for p in folder.rglob("*.xml") if not p.name.startswith("."))
    if not files:
        problems.append(f"{folder}: no Pascal VOC .xml file in the --boxes folder")
    by_stem: dict[str, list[str]] = {}
    for n in sorted(known):
        by_stem.setdefault(n.rsplit(".", 1)[0], []).append(n)
    for xml in files:
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            problems.append(f"{xml}: not a readable XML file ({exc})")
            continue
        stem = xml.relative_to(folder).with_suffix("").as_posix()
        given = (root.findtext("filename") or "").strip()
        candidates = [given] if given else []
        candidates += by_stem.get(stem, [])
        name = next((c for c in candidates if c in known), None)
        if name is None:
            problems.append(f"{xml}: names no image under the --images folder (<filename> {given!r})")
            continue
        for k, obj in enumerate(root.findall("object"), start=1):
            values = [obj.findtext(f"bndbox/{c}") for c in _BOX_COLUMNS[1:]]
            box = _checked_box(values, sizes.get(name), f"{xml}, object {k} ({name})", problems)
            if box is not None:
                boxes.setdefault(name, []).append(box)
    return boxes


def _image_name(given: str, known: set[str], where: str, problems: list[str]) -> str | None:
    name = Path(given.replace("\\", "/")).as_posix() if given else ""
    if name in known:
        return name
    problems.append(f"{where}: names no image under the --images folder ({given!r}; give its path relative "
                    f"to that folder)" if given else f"{where}: the image column is empty")
    return None


def read_boxes(folder: ImageFolder, names: Sequence[str], sizes: dict, problems: list[str]
               ) -> dict[str, list[BndBox]]:
    """Each image's boxes: --boxes (CSV or VOC XML folder), else the whole image."""
    if folder.boxes is None:
        return {n: [BndBox(1, 1, sizes[n][1], sizes[n][0])] for n in names if n in sizes}
    known = set(names)
    if folder.boxes.is_dir():
        return _boxes_from_voc(folder.boxes, sizes, known, problems)
    if not folder.boxes.is_file():
        problems.append(f"--boxes {folder.boxes}: no such file or folder")
        return {}
    return _boxes_from_csv(folder.boxes, sizes, known, problems)


# ================================================================== landmarks and label maps
def read_landmarks(path: Path, sizes: dict, known: set[str], problems: list[str]
                   ) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """The landmarks CSV: image -> part -> [(row, col)], 1-based pixels of the original image."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    if not path.is_file():
        problems.append(f"--landmarks {path}: no such file")
        return out
    for where, row in _csv_rows(path, _LANDMARK_COLUMNS, problems):
        name = _image_name(row["image"], known, where, problems)
        try:
            part_value = _number(row["part"], "part")
            if part_value != int(part_value) or part_value < 1:
                raise DatasetError(f"part {row['part']!r} is not a whole number >= 1")
            r, c = _number(row["row"], "row"), _number(row["col"], "col")
        except DatasetError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if name is None or name not in sizes:
            continue
        h, w = sizes[name]
        if not (0.5 <= r <= h + 0.5 and 0.5 <= c <= w + 0.5):
            problems.append(f"{where} ({name}): landmark (row {r:g}, col {c:g}) lies outside its image "
                            f"({w} x {h} pixels)")
            continue
        out.setdefault(name, {}).setdefault(int(part_value), []).append((r, c))
    return out


def mask_path(masks: Path, name: str) -> Path:
    """Where image `name`'s label map is: its relative path with the extension .png."""
    return masks / Path(name).with_suffix(".png")


def read_part_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG label map as (H, W) uint8 (DatasetError naming the file: unreadable, colour, over 255, or
    not `size` (h, w))."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DatasetError(f"{path}: a label map must have one channel of part numbers (mode L, P or I), "
                                   f"not mode {mode}")
            labels = np.asarray(im)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - said naming the file
        raise DatasetError(f"{path}: cannot read the label map ({type(exc).__name__}: {exc})") from exc
    if size is not None and labels.shape != tuple(size):
        raise DatasetError(f"{path}: the label map is {labels.shape[1]} x {labels.shape[0]} pixels, its image "
                           f"{size[1]} x {size[0]}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DatasetError(f"{path}: part labels must be 0..255, found {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def check_part_masks(masks: Path, names: Sequence[str], sizes: dict, problems: list[str]) -> dict[str, Path]:
    """The label map of each image that has one (read and checked); a map naming no image is a problem."""
    if not masks.is_dir():
        problems.append(f"--part-masks {masks}: no such folder")
        return {}
    found = {}
    by_path = {mask_path(masks, n).absolute(): n for n in names}
    for path in sorted(masks.rglob("*.png")):
        name = by_path.get(path.absolute())
        if name is None:
            problems.append(f"{path}: this label map names no image under the --images folder (expected "
                            f"<its relative path>.png for an image <its relative path>.jpg/.png)")
            continue
        try:
            read_part_mask(path, sizes.get(name))
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        found[name] = path
    return found


# ================================================================== the whole folder
def _negatives(folder: ImageFolder, problems: list[str], *, decode: bool, progress: bool) -> list[str]:
    """Own negatives (--negatives DIR): every readable JPEG / PNG under it; none given: []."""
    if folder.negatives is None:
        return []
    if not folder.negatives.is_dir():
        problems.append(f"--negatives {folder.negatives}: no such folder")
        return []
    names = list_images(folder.negatives)
    if not names:
        problems.append(f"--negatives {folder.negatives}: no JPEG or PNG image in it (or in its folders)")
    image_sizes(folder.negatives, names, problems, decode=decode, progress="negatives" if progress else None)
    return names


def scan_image_folder(folder: ImageFolder, *, decode: bool = True, progress: bool = False,
                      annotations: bool = True) -> ScannedFolder:
    """Read and check everything `folder` names (module docstring); `ImageFolderError` listing every
    problem, before anything is written. decode: decode each image (else its header only);
    annotations: also the landmarks and the label maps (the reader needs the boxes only)."""
    problems: list[str] = []
    root = folder.images
    if not root.is_dir():
        raise ImageFolderError(root, [f"--images {root}: no such folder"])
    names = list_images(root, exclude=(folder.part_masks, folder.negatives))
    if not names:
        raise ImageFolderError(root, [f"{root}: no JPEG or PNG image in it or in its folders (the folder is "
                                      f"empty, or holds other files only: {', '.join(IMAGE_EXTENSIONS)})"])
    sizes = image_sizes(root, names, problems, decode=decode, progress="checking the images" if progress else None)
    boxes = read_boxes(folder, names, sizes, problems)
    scanned = ScannedFolder(folder, names, sizes, boxes)
    if annotations and folder.landmarks is not None:
        scanned.landmarks = read_landmarks(folder.landmarks, sizes, set(names), problems)
    if annotations and folder.part_masks is not None:
        scanned.masks = check_part_masks(folder.part_masks, names, sizes, problems)
    scanned.negatives = _negatives(folder, problems, decode=decode and annotations, progress=progress)
    if not problems and not any(boxes.values()):
        problems.append(f"{folder.boxes}: no box for any image under {root}")
    if problems:
        raise ImageFolderError(root, problems)
    return scanned


def crop_landmark(row: float, col: float, box: BndBox, size: int) -> tuple[float, float]:
    """(h, w): an image point (1-based pixels) in the box crop resized to size x size, 1-based."""
    h = (row - box.ymin + 0.5) * size / (box.ymax - box.ymin + 1) + 0.5
    w = (col - box.xmin + 0.5) * size / (box.xmax - box.xmin + 1) + 0.5
    return h, w


def _inside(row: float, col: float, box: BndBox) -> bool:
    return box.ymin - 0.5 <= row <= box.ymax + 0.5 and box.xmin - 0.5 <= col <= box.xmax + 0.5


def image_part_truth(scanned: ScannedFolder, objset: Sequence[ObjRecord | None], input_size: int,
                     parts: Sequence[int] | None = None) -> dict[int, list[PartTruth]]:
    """Part k's truth entry of each objset element (module docstring): the landmarks of its image that
    its box holds, in its crop; `parts` default: every part the landmarks name, and part 1 (which
    showResults reads always)."""
    parts = sorted(set(scanned.parts) | {1}) if parts is None else list(parts)
    out: dict[int, list[PartTruth]] = {int(p): [] for p in parts}
    for obj in objset:
        points = scanned.landmarks.get(obj.filename, {}) if obj is not None else {}
        for p in out:
            inside = [crop_landmark(r, c, obj.bndbox, input_size) for r, c in points.get(p, [])
                      if _inside(r, c, obj.bndbox)]
            if not inside:
                out[p].append(PartTruth())
                continue
            centre = np.asarray(inside, dtype=np.float64).T               # 2 x K, [h; w]
            out[p].append(PartTruth(pHW_center=centre, objects=(obj,) * len(inside)))
    return out


def _say_left_out(scanned: ScannedFolder, objset: Sequence[ObjRecord | None]) -> None:
    """Warnings for what the run leaves out: images without a box, boxes under minArea, landmarks in no box."""
    no_box = [n for n in scanned.names if not scanned.boxes.get(n)]
    if no_box:
        warnings.warn(f"{len(no_box)} image(s) under {scanned.folder.images} have no box in {scanned.folder.boxes} "
                      f"and are left out (first: {', '.join(no_box[:5])})", UserWarning, stacklevel=3)
    small = sum(o is None for o in objset)
    if small:
        warnings.warn(f"{small} box(es) under minArea ({MIN_AREA} pixels) are left out, as readAnnotation.m "
                      f"leaves them", UserWarning, stacklevel=3)
    lost = [(n, p) for n, per in scanned.landmarks.items() for p, pts in per.items() for r, c in pts
            if not any(_inside(r, c, b) for b in scanned.boxes.get(n, []))]
    if lost:
        warnings.warn(f"{len(lost)} landmark(s) of {scanned.folder.landmarks} lie in no box of their image and are "
                      f"not used (first: {lost[0][0]}, part {lost[0][1]})", UserWarning, stacklevel=3)


def prepare_image_folder(folder: ImageFolder, truth_dir: os.PathLike | str, input_size: int = 224, *,
                         min_area: float = MIN_AREA, progress: bool = False) -> ScannedFolder:
    """The set-up of the 'images' dataset: check everything (`scan_image_folder`, images decoded), then
    write the landmarks' truth files (`<truth_dir>/images/truth_partNN.mat`, atomically; none without
    --landmarks, and stale ones removed)."""
    scanned = scan_image_folder(folder, decode=True, progress=progress)
    objset = scanned.objset(min_area)
    if not any(o is not None for o in objset):
        raise ImageFolderError(folder.images, [f"{folder.images}: every box is under minArea ({min_area:g} pixels): "
                                               f"no object to learn from"])
    _say_left_out(scanned, objset)
    out = Path(truth_dir) / IMAGES_CATEGORY
    keep = set()
    if scanned.landmarks:
        out.mkdir(parents=True, exist_ok=True)
        for part, truth in image_part_truth(scanned, objset, input_size).items():
            path = out / f"truth_part{part:02d}.mat"
            save_part_truth(path, truth, with_scale=False)
            keep.add(path.name)
    for stale in out.glob("truth_part*.mat") if out.is_dir() else ():
        if stale.name not in keep:
            stale.unlink()
    return scanned


def read_annotation_images(name: str, conf: Any) -> list[ObjRecord | None]:
    """readAnnotation for the 'images' dataset: the objset of conf.image_folder (headers only, checked as
    `scan_image_folder` checks; the set-up decoded every image already)."""
    if name != IMAGES_CATEGORY:
        raise DatasetError(f"the images dataset has one category, {IMAGES_CATEGORY!r}, not {name!r}")
    folder = getattr(conf, "image_folder", None)
    if folder is None:
        raise DatasetError("the images dataset needs its folder (--images DIR): conf.image_folder is not set")
    return scan_image_folder(folder, decode=False, annotations=False).objset(conf.min_area)


def own_negatives_count(folder: ImageFolder | None) -> int | None:
    """How many own negatives --negatives DIR holds (None without it): the disk estimate's count."""
    if folder is None or folder.negatives is None or not folder.negatives.is_dir():
        return None
    return len(list_images(folder.negatives))


def no_landmarks_note() -> str:
    """What a run on a folder without --landmarks says in place of the location stability."""
    return "no landmarks (give --landmarks FILE, a CSV image,part,row,col)"
