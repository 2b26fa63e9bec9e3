"""CUB-200-2011: its text files, the evaluation sampling and the part landmarks.

Layout (setup_cub200.m: ../data/CUB_200_2011/ = conf.data.catedir):

    images.txt              <image_id> <class folder>/<file>.jpg
    image_class_labels.txt  <image_id> <class_id>
    train_test_split.txt    <image_id> <1 train | 0 test>
    classes.txt             <class_id> <class folder name>
    bounding_boxes.txt      <image_id> <x> <y> <width> <height>
    parts/part_locs.txt     <image_id> <part_id> <x> <y> <visible>
    images/...              conf.data.imgdir

and `sampling.mat` (validObj: the test objects the evaluation uses), shipped
in data_input/data_input_CUB-200-2011/.

Ports data_input/data_input_CUB-200-2011/readAnnotation.m,
readAnnotation_sampling.m, readPartTruth.m and getPart.m, and the conf of
setup_cub200.m. Text files are read as textscan reads them ('%d' fields:
numbers truncated to integers).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from legacy_compat import loadmat

from .facts import MIN_AREA
from .readers import (
    BndBox,
    DataConf,
    DatasetError,
    ObjRecord,
    PartTruth,
    default_readcode,
    is_area_valid,
    matlab_intersect_index,
    parse_id_name_table,
    parse_int_table,
)

__all__ = ["CUB_NAME", "CUB_PART_MERGE", "cub200_conf", "read_annotation_cub",
           "read_annotation_sampling_cub", "read_part_truth_cub", "cub_part_positions",
           "read_sampling", "CubTables", "read_cub_tables"]

CUB_NAME = "cub200"                  # setup_cub200.m: Name_batch
# getPart.m: the parts merged into each of its 15 parts. The 11th lists part 1
# again (not 11): as the assignments run in order, part 1's landmarks end up in
# merged part 11 and merged part 1 is left without any. Kept as written.
CUB_PART_MERGE: tuple[tuple[int, ...], ...] = (
    (1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10,), (1,), (12,), (13,), (14,), (15,))
_READCODE_NAME = "data_input_CUB-200-2011"


def cub200_conf(data_root: os.PathLike | str, *, catedir: os.PathLike | str | None = None,
                imgdir: os.PathLike | str | None = None, neg_dir: os.PathLike | str | None = None,
                readcode: os.PathLike | str | None = None, min_area: float = MIN_AREA) -> DataConf:
    """conf.data of setup_cub200.m rooted at `data_root`.

    Defaults: catedir <data_root>/CUB_200_2011, imgdir <catedir>/images,
    negatives <data_root>/neg, readcode (sampling.mat, truth files)
    <data_root>/data_input/data_input_CUB-200-2011 (or original/..., see
    `default_readcode`).
    """
    root = Path(data_root)
    cate = Path(catedir) if catedir is not None else root / "CUB_200_2011"
    return DataConf(dataset="cub200", catedir=cate,
                    imgdir=Path(imgdir) if imgdir is not None else cate / "images",
                    neg_dir=Path(neg_dir) if neg_dir is not None else root / "neg",
                    readcode=Path(readcode) if readcode is not None else default_readcode(root, _READCODE_NAME),
                    min_area=min_area)


class CubTables:
    """The CUB text files, parsed once (columns as textscan returns them)."""

    def __init__(self, catedir: Path):
        self.catedir = catedir
        lab = parse_int_table(catedir / "image_class_labels.txt", 2, "CUB image_class_labels.txt")
        self.label_ids, self.label_classes = lab[:, 0], lab[:, 1]
        split = parse_int_table(catedir / "train_test_split.txt", 2, "CUB train_test_split.txt")
        self.split_ids, self.split_is_train = split[:, 0], split[:, 1]
        self.class_ids, self.class_names = parse_id_name_table(catedir / "classes.txt", "CUB classes.txt")
        self.image_ids, self.image_names = parse_id_name_table(catedir / "images.txt", "CUB images.txt")
        bb = parse_int_table(catedir / "bounding_boxes.txt", 5, "CUB bounding_boxes.txt")
        self.box_ids, self.boxes = bb[:, 0], bb[:, 1:5]   # x, y, width, height
        self._part_locs: np.ndarray | None = None

    @property
    def part_locs(self) -> np.ndarray:
        """parts/part_locs.txt as int rows [image_id, part_id, x, y, visible] ('%d' fields)."""
        if self._part_locs is None:
            self._part_locs = parse_int_table(self.catedir / "parts" / "part_locs.txt", 5, "CUB parts/part_locs.txt")
        return self._part_locs

    def class_name(self, filename: str, where: str) -> str:
        """classname of readAnnotation.m: the class whose id is the number before the first '.' of the file."""
        head = filename.split(".")[0]
        try:
            class_id = int(head)
        except ValueError:
            raise DatasetError(f"{where}: image {filename!r} does not start with a class number") from None
        hit = np.flatnonzero(self.class_ids == class_id)
        if hit.size == 0:
            raise DatasetError(f"{where}: class {class_id} of image {filename!r} is not in classes.txt")
        return self.class_names[int(hit[0])]

    def names_and_boxes(self, img_ids: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """imgnames, boxes (x, y, w, h) and their image ids for `img_ids`, sorted by id (two intersects)."""
        idx_n = matlab_intersect_index(self.image_ids, img_ids)
        idx_b = matlab_intersect_index(self.box_ids, img_ids)
        if idx_n.size != idx_b.size:
            missing = sorted(set(self.image_ids[idx_n].tolist()) ^ set(self.box_ids[idx_b].tolist()))
            raise DatasetError(f"{self.catedir}: images.txt and bounding_boxes.txt disagree on image ids "
                               f"{missing[:10]} (an annotation that names no file, or a file without a box)")
        return [self.image_names[i] for i in idx_n], self.boxes[idx_b], self.image_ids[idx_n]


def read_cub_tables(conf: DataConf) -> CubTables:
    if conf.catedir is None:
        raise DatasetError("CUB conf has no catedir (the CUB_200_2011 folder)")
    return CubTables(conf.catedir)


def _class_filter_ids(name: str, tables: CubTables, any_class_id: bool) -> np.ndarray:
    """imgIds of readAnnotation.m: one class for a single digit '1'..'9', else every image."""
    if len(name) == 1 and "1" <= name <= "9":
        return tables.label_ids[tables.label_classes == int(name)]
    if any_class_id and name.isdigit():
        cid = int(name)
        if cid not in set(tables.class_ids.tolist()):
            raise DatasetError(f"CUB class {cid} not in {tables.catedir / 'classes.txt'}; valid ids: "
                               f"{int(tables.class_ids.min())}..{int(tables.class_ids.max())}")
        return tables.label_ids[tables.label_classes == cid]
    if name != CUB_NAME:
        raise DatasetError(
            f"unknown CUB category {name!r}: valid are {CUB_NAME!r} (all 200 classes) and the single digits "
            f"'1'..'9' (one class, as readAnnotation.m selects); pass any_class_id=True for '10'..'200'")
    return tables.label_ids


def _box(x: int, y: int, w: int, h: int) -> BndBox:
    # readAnnotation.m: xmax = x + width, ymax = y + height (one past the box; getI clips it)
    return BndBox(int(x), int(y), int(x + w), int(y + h))


def read_annotation_cub(name: str, conf: DataConf, *, any_class_id: bool = False,
                        tables: CubTables | None = None) -> tuple[list[ObjRecord], np.ndarray]:
    """readAnnotation.m (CUB): (objset, trainList).

    objset: every image of the selection whose box passes minArea (skipped
    boxes are removed, not left empty), folder '.', name the class folder,
    ID its position. trainList: the 1-based ROWS of train_test_split.txt marked
    1 (getImdb_cub200.m uses them as positions in objset, which matches only
    when no box was skipped and all classes are read; see imdb.get_imdb_cub200).
    """
    tables = tables or read_cub_tables(conf)
    img_ids = _class_filter_ids(name, tables, any_class_id)
    train_list = np.flatnonzero(tables.split_is_train == 1).astype(np.int64) + 1
    names, boxes, ids = tables.names_and_boxes(img_ids)
    objset: list[ObjRecord] = []
    for filename, (x, y, w, h), image_id in zip(names, boxes, ids):
        box = _box(x, y, w, h)
        if not is_area_valid(box, conf.min_area):
            continue
        objset.append(ObjRecord(folder=".", filename=filename,
                                name=tables.class_name(filename, str(tables.catedir / "images.txt")),
                                bndbox=box, ID=len(objset) + 1, image_id=int(image_id)))
    return objset, train_list


def read_sampling(path: os.PathLike | str) -> np.ndarray:
    """validObj of sampling.mat: 1-based object indices (int64)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"sampling file not found: {path}")
    v = np.asarray(loadmat(path, variable_names=["validObj"])["validObj"]).reshape(-1)
    if v.dtype == bool:
        return np.flatnonzero(v).astype(np.int64) + 1   # logical indexing
    return v.astype(np.int64)


def _sampling_path(conf: DataConf, sampling: os.PathLike | str | None) -> Path:
    if sampling is not None:
        return Path(sampling)
    if conf.readcode is None:
        raise DatasetError("CUB conf has no readcode folder (sampling.mat)")
    return conf.readcode / "sampling.mat"


def _apply_sampling(items: list, valid: np.ndarray, where: Path) -> list:
    if valid.size and (valid.min() < 1 or valid.max() > len(items)):
        raise DatasetError(f"{where}: validObj indexes up to {int(valid.max())} but only {len(items)} objects exist")
    return [items[int(i) - 1] for i in valid]


def _test_ids(img_ids: np.ndarray, tables: CubTables) -> np.ndarray:
    test_ids = tables.split_ids[tables.split_is_train == 0]
    return img_ids[matlab_intersect_index(img_ids, test_ids)]


def read_annotation_sampling_cub(name: str, conf: DataConf, *, sampling: os.PathLike | str | None = None,
                                 any_class_id: bool = False, tables: CubTables | None = None) -> list[ObjRecord]:
    """readAnnotation_sampling.m: the test objects picked by sampling.mat's validObj (no minArea filter), ID renumbered."""
    tables = tables or read_cub_tables(conf)
    img_ids = _test_ids(_class_filter_ids(name, tables, any_class_id), tables)
    names, boxes, ids = tables.names_and_boxes(img_ids)
    objset = [ObjRecord(folder=".", filename=f, name=tables.class_name(f, str(tables.catedir / "images.txt")),
                        bndbox=_box(*b), ID=j, image_id=int(i))
              for j, (f, b, i) in enumerate(zip(names, boxes, ids), start=1)]
    path = _sampling_path(conf, sampling)
    picked = _apply_sampling(objset, read_sampling(path), path)
    return [ObjRecord(o.folder, o.filename, o.name, o.bndbox, k, o.image_id) for k, o in enumerate(picked, start=1)]


def read_part_truth_cub(name: str, part_id: int, conf: DataConf, *, sampling: os.PathLike | str | None = None,
                        tables: CubTables | None = None) -> list[PartTruth]:
    """readPartTruth.m (CUB): the landmarks of part `part_id` on the sampled test objects.

    name '0' means every image (`1:length(...)`), another number one class.
    An invisible part leaves an empty element; a box under minArea is
    dropped (the list compacts). pHW_center = [(py - y)/h*224; (px - x)/w*224];
    no pHW_scale. The list is then indexed by sampling.mat's validObj and
    each object's ID renumbered. (The original also saves it as
    <output>/<name>/truth_partNN.mat: see `save_part_truth`.)
    """
    tables = tables or read_cub_tables(conf)
    if name == "0":
        img_ids = np.arange(1, tables.label_ids.size + 1, dtype=np.int64)
    elif name.isdigit():
        img_ids = tables.label_ids[tables.label_classes == int(name)]
    else:
        raise DatasetError(f"readPartTruth (CUB) takes a class number or '0' (all), got {name!r}")
    img_ids = _test_ids(img_ids, tables)
    locs = tables.part_locs
    locs = locs[locs[:, 1] == int(part_id)]
    sel = matlab_intersect_index(locs[:, 0], img_ids)
    locs = locs[sel]
    names, boxes, ids = tables.names_and_boxes(locs[:, 0])
    partset: list[PartTruth] = []
    for k, (filename, (x, y, w, h)) in enumerate(zip(names, boxes)):
        px, py, visible = float(locs[k, 2]), float(locs[k, 3]), int(locs[k, 4])
        if visible != 1:
            partset.append(PartTruth())
            continue
        box = _box(x, y, w, h)
        if not is_area_valid(box, conf.min_area):
            continue
        obj = ObjRecord(".", filename, tables.class_name(filename, str(tables.catedir / "images.txt")),
                        box, len(partset) + 1, int(ids[k]))
        with np.errstate(divide="ignore", invalid="ignore"):
            center = np.array([[(py - y) / h * 224], [(px - x) / w * 224]], dtype=np.float64)
        partset.append(PartTruth(pHW_center=center, obj=obj))
    path = _sampling_path(conf, sampling)
    picked = _apply_sampling(partset, read_sampling(path), path)
    out = []
    for i, t in enumerate(picked, start=1):
        obj = t.obj
        if obj is not None:
            obj = ObjRecord(obj.folder, obj.filename, obj.name, obj.bndbox, i, obj.image_id)
        out.append(PartTruth(pHW_center=t.pHW_center, pHW_scale=t.pHW_scale, obj=obj))
    return out


def cub_part_positions(objset: Sequence[ObjRecord], conf: DataConf, tar_size: Sequence[int] = (224, 224), *,
                       part_merge: Sequence[Sequence[int]] = CUB_PART_MERGE,
                       tables: CubTables | None = None) -> list[np.ndarray]:
    """getIMDBMask of getPart.m (CUB): each object's merged-part centres in tar_size crop pixels.

    For object i (its POSITION i in objset is taken as the image id, as the
    original does), merged part p: the mean [y; x] of the landmarks of part p
    inside the box, mapped to (v - min)/(max - min)*(tar - 1) + 1; -1 where
    none. Returns one 2 x P float64 array per object (the original's partPos).
    part_locs.txt is read with '%f' here (fscanf), so fractions are kept.
    """
    tables = tables or read_cub_tables(conf)
    path = tables.catedir / "parts" / "part_locs.txt"
    if not path.exists():
        raise DatasetError(f"CUB part_locs.txt not found: {path}")
    matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    part_of = np.zeros(matrix.shape[0], dtype=np.int64)
    for i, ids in enumerate(part_merge, start=1):
        for pid in ids:
            part_of[matrix[:, 1] == pid] = i
    keep = part_of > 0
    img_col, part_col, xy = matrix[keep, 0], part_of[keep], matrix[keep][:, [3, 2]]   # [y, x]
    th, tw = int(tar_size[0]), int(tar_size[1])
    out = []
    for i, obj in enumerate(objset, start=1):
        b = obj.bndbox
        pos = -np.ones((2, len(part_merge)), dtype=np.float64)
        valid = []
        for part in range(1, len(part_merge) + 1):
            pts = xy[(img_col == i) & (part_col == part)]
            inside = (pts[:, 0] >= b.ymin) & (pts[:, 0] <= b.ymax) & (pts[:, 1] >= b.xmin) & (pts[:, 1] <= b.xmax)
            pts = pts[inside]
            if pts.shape[0] == 0:
                continue
            pos[:, part - 1] = pts.mean(axis=0)
            valid.append(part - 1)
        if valid:
            with np.errstate(divide="ignore", invalid="ignore"):
                pos[0, valid] = (pos[0, valid] - b.ymin) / (b.ymax - b.ymin) * (th - 1) + 1
                pos[1, valid] = (pos[1, valid] - b.xmin) / (b.xmax - b.xmin) * (tw - 1) + 1
        out.append(pos)
    return out
