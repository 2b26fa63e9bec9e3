"""What every dataset reader shares: the object record, the part truth, the conf.

The original code describes every object it crops as one element of a MATLAB
struct array `objset` (data_input/*/readAnnotation.m, getNegObjSet.m):

    objset(i).folder, .filename    image = [imgdir, folder, '/', filename]
    objset(i).name                 category (ILSVRC: the file name, a quirk)
    objset(i).bndbox.xmin/ymin/xmax/ymax   1-based, inclusive, int2str strings
    objset(i).ID

`ObjRecord` is one such element (the box as ints, `BndBox`; `to_matlab()`
gives the int2str strings back). A reader returns a `list[ObjRecord | None]`:
`None` is an EMPTY element, which the ILSVRC reader keeps where the original
skips a box under `minArea` without compacting the array.

`PartTruth` is one element of a `truth_partNN.mat` file (`pHW_center`,
`pHW_scale` in 224 x 224 crop coordinates, [h; w], and `obj`); an element
may describe several objects (2 x K centres, K objects): see PartTruth.

`DataConf` is the `conf.data` struct that setup_ilsvrcanimalpart.m,
setup_vocpart.m and setup_cub200.m save (imgdir, catedir, readCode, minArea),
plus the folder of the 1000 shared negatives (the original reads them from
'../data/neg' relative to the code folder). `data_prep.annotations.read_annotation(name, conf)`
dispatches on `conf.dataset` to the dataset's reader (each reader imports this module).

Ports: the shared pieces of data_input/*/readAnnotation.m (IsAreaValid,
int2str boxes) and the `conf.data` part of setup_*.m.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from legacy_compat import MatStruct, StructArray, loadmat
from legacy_compat.cli import UserError
from legacy_compat.matio import savemat
from legacy_compat.mattypes import is_cell

from .facts import MIN_AREA, NUM_NEGATIVES, READER_DATASETS

__all__ = [
    "DatasetError", "BndBox", "ObjRecord", "PartTruth", "DataConf",
    "int2str", "is_area_valid", "read_part_truth_file",
    "objset_to_matlab", "truth_to_matlab", "count_objects", "conf_from_paths", "default_readcode",
]



class DatasetError(UserError, ValueError):
    """Bad dataset input: the message names the file, entry or category at fault."""


# ----------------------------------------------------------------- records
def int2str(x: Any) -> str:
    """MATLAB `int2str(x)` for a scalar: rounded half away from zero, as text ('NaN' for NaN)."""
    v = float(np.asarray(x, dtype=np.float64).reshape(-1)[0])
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    r = np.trunc(v)
    if abs(v - r) >= 0.5:
        r += np.sign(v)
    return str(int(r))


@dataclass(frozen=True)
class BndBox:
    """An object box, 1-based and inclusive: rows ymin..ymax, columns xmin..xmax.

    The original keeps the four values as int2str strings; here they are the
    same integers. `area()` is IsAreaValid's (xmax-xmin+1)*(ymax-ymin+1).
    """

    xmin: int
    ymin: int
    xmax: int
    ymax: int

    @classmethod
    def from_values(cls, xmin: Any, ymin: Any, xmax: Any, ymax: Any, *, where: str = "") -> "BndBox":
        """From numbers or numeric strings, rounded as int2str rounds them; `where` (the file and
        the struct path) starts the error a value that is not a finite number raises."""
        vals = []
        for name, v in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
            s = int2str(float(v)) if isinstance(v, str) else int2str(v)
            if s in ("NaN", "Inf", "-Inf"):
                raise DatasetError(f"{where + ': ' if where else ''}bounding box {name} {v!r} is not a finite number")
            vals.append(int(s))
        return cls(*vals)

    def area(self) -> int:
        """IsAreaValid's area: (xmax - xmin + 1) * (ymax - ymin + 1)."""
        return (self.xmax - self.xmin + 1) * (self.ymax - self.ymin + 1)

    def to_matlab(self) -> MatStruct:
        """The bndbox struct as readAnnotation builds it: int2str strings, fields xmin, xmax, ymin, ymax."""
        return MatStruct(xmin=str(self.xmin), xmax=str(self.xmax), ymin=str(self.ymin), ymax=str(self.ymax))


def is_area_valid(bndbox: BndBox, min_area: float) -> bool:
    """IsAreaValid (data_input/*/readAnnotation.m): the box area is at least minArea."""
    return bndbox.area() >= min_area


@dataclass(frozen=True)
class ObjRecord:
    """One element of the original `objset` struct array.

    `image_path(imgdir)` joins imgdir, folder and filename (the original's
    `[imgdir, folder, '/', filename]`; the VOC reader's folder ends in '/').
    `image_id` is CUB's image id (images.txt), None elsewhere; it is not in
    the original struct.
    """

    folder: str
    filename: str
    name: str
    bndbox: BndBox
    ID: int
    image_id: int | None = None

    def image_path(self, imgdir: os.PathLike | str) -> Path:
        if not self.filename:
            raise DatasetError(f"object record {self.ID} names no image file (folder {self.folder!r})")
        return Path(os.path.join(os.fspath(imgdir), self.folder, self.filename))

    def to_matlab(self) -> MatStruct:
        return MatStruct(folder=self.folder, filename=self.filename, name=self.name,
                         bndbox=self.bndbox.to_matlab(), ID=np.array([[float(self.ID)]]))


@dataclass(init=False)
class PartTruth:
    """One element of a truth_partNN.mat `truth` array (readPartTruth.m's `partset`).

    `pHW_center` / `pHW_scale`: float64 arrays in MATLAB shape, or None
    where the element is empty (the part is not annotated, or the object was
    skipped). An element usually describes one object: [h; w] is (2, 1) and
    `objects` holds its one ObjRecord. Some of the original ILSVRC truth files
    hold elements with K > 1 objects: `pHW_center` and `pHW_scale` are 2 x K
    and `obj` is a 1 x K struct array, read here as `objects` (K records, in
    MATLAB order). The original uses them as follows, and so does the port:
    getDistSqrtVar.m marks such an element invalid for every filter
    (`numel(pHW_center) > 2`: `center` is None), while computeStability.m and
    step_computeStability_multiClass.m count the image as one with a part
    (the element is not empty: `is_empty()` is False).

    `PartTruth(pHW_center, pHW_scale, obj=o)` is the one-object form;
    `objects=(o1, ..., oK)` the general one. `obj` is the single object
    (None when there is none); asking it of an element with several objects
    raises DatasetError: use `objects`.
    """

    pHW_center: np.ndarray | None
    pHW_scale: np.ndarray | None
    objects: tuple[ObjRecord, ...]

    def __init__(self, pHW_center: np.ndarray | None = None, pHW_scale: np.ndarray | None = None,
                 obj: ObjRecord | None = None, objects: Sequence[ObjRecord] = ()) -> None:
        if obj is not None and objects:
            raise ValueError("give obj or objects, not both")
        self.pHW_center = pHW_center
        self.pHW_scale = pHW_scale
        self.objects = (obj,) if obj is not None else tuple(objects)

    @property
    def obj(self) -> ObjRecord | None:
        if len(self.objects) > 1:
            raise DatasetError(f"this truth element describes {len(self.objects)} objects; use .objects")
        return self.objects[0] if self.objects else None

    @property
    def num_objects(self) -> int:
        """K: the columns of pHW_center (0 for an empty element)."""
        c = self.pHW_center
        if c is None or c.size == 0:
            return 0
        return int(c.shape[1]) if c.ndim == 2 else 1

    @property
    def center(self) -> np.ndarray | None:
        """The (2,) [h, w] landmark, or None where getDistSqrtVar.m ignores the element
        (empty, or more than two numbers: several objects)."""
        c = self.pHW_center
        if c is None or c.size == 0 or c.size > 2:
            return None
        return np.asarray(c, dtype=np.float64).reshape(-1)

    @property
    def centres(self) -> np.ndarray:
        """(K, 2) [h, w]: one row per object (K = 0 for an empty element)."""
        c = self.pHW_center
        if c is None or c.size == 0:
            return np.zeros((0, 2))
        return np.asarray(c, dtype=np.float64).reshape(2, -1, order="F").T

    def is_empty(self) -> bool:
        """isempty(truth(i).pHW_center): computeStability.m's test for an image with the part."""
        return self.pHW_center is None or self.pHW_center.size == 0

    def is_multi_object(self) -> bool:
        """numel(pHW_center) > 2: the element describes several objects (getDistSqrtVar.m skips it)."""
        return self.pHW_center is not None and self.pHW_center.size > 2


@dataclass
class DataConf:
    """`conf.data` of setup_*.m, with the folder of the shared negatives.

    - dataset: 'ilsvrcanimalpart', 'vocpart' or 'cub200'
    - imgdir: images root (detanimalpart/, VOC2010/JPEGImages/, CUB_200_2011/images/)
    - catedir: VOC: the folder of truth_<category>.mat for readPartTruth;
      CUB: the CUB_200_2011 folder with its text files; unused for ILSVRC
    - readcode: the original data_input/<dataset> folder: the shipped
      truth_partNN.mat files (<readcode>/<category>/truth_partNN.mat), VOC's
      truth_<category>.mat that readAnnotation reads, CUB's sampling.mat
    - min_area: minArea, 50^2
    - neg_dir: the 1000 shared negatives neg/00001.JPEG ... (getNegObjSet.m)
    - imgdir_neg: conf.data.imgdir_neg, which getImdb.m uses for the
      negatives when set (the original never sets it)
    - num_neg: how many negatives getNegObjSet reads (its MaxObjNum, 1000;
      the toy dataset has its own count)
    - neg_files: the negatives' file names relative to neg_dir, when they are
      not getNegObjSet's 00001.JPEG ... (own negatives, `--negatives DIR`;
      not in the original); num_neg is then their number
    - image_folder: the 'images' dataset's `data_prep.images.ImageFolder`
      (`--images DIR` and its boxes), which its reader reads; None elsewhere
    """

    dataset: str
    imgdir: Path
    neg_dir: Path
    catedir: Path | None = None
    readcode: Path | None = None
    min_area: float = MIN_AREA
    imgdir_neg: Path | None = None
    num_neg: int = NUM_NEGATIVES
    neg_files: tuple[str, ...] | None = None
    image_folder: Any = None

    def __post_init__(self) -> None:
        if self.dataset not in READER_DATASETS:
            raise DatasetError(f"unknown dataset {self.dataset!r}; valid: {', '.join(READER_DATASETS)}")
        self.imgdir = Path(self.imgdir)
        self.neg_dir = Path(self.neg_dir)
        self.catedir = None if self.catedir is None else Path(self.catedir)
        self.readcode = None if self.readcode is None else Path(self.readcode)
        self.imgdir_neg = None if self.imgdir_neg is None else Path(self.imgdir_neg)
        if self.neg_files is not None:
            self.neg_files = tuple(self.neg_files)
            self.num_neg = len(self.neg_files)

    def with_(self, **changes: Any) -> "DataConf":
        return replace(self, **changes)

    def truth_file(self, name: str, part_id: int) -> Path:
        """<readcode>/<name>/truth_partNN.mat, the file computeStability.m and getDistSqrtVar.m load."""
        if self.readcode is None:
            raise DatasetError(f"conf for {self.dataset} has no readcode folder (the truth_partNN.mat files)")
        return self.readcode / name / f"truth_part{int(part_id):02d}.mat"


def conf_from_paths(paths: Any) -> DataConf:
    """A DataConf from data_prep.setup's `DatasetPaths` (duck-typed: name, image_dir,
    truth_dir, neg_dir, cate_dir, min_area).

    For the toy dataset the number of negatives is the run of consecutive
    files 00001.JPEG, 00002.JPEG ... in its neg folder. The 'images' dataset
    passes its folder and its own negatives' names in `paths.extra`
    ('image_folder', 'neg_files').
    """
    num_neg = NUM_NEGATIVES
    if paths.name == "toy":
        num_neg = 0
        while (Path(paths.neg_dir) / f"{num_neg + 1:05d}.JPEG").exists():
            num_neg += 1
    extra = getattr(paths, "extra", None) or {}
    return DataConf(dataset=paths.name, imgdir=paths.image_dir, neg_dir=paths.neg_dir,
                    catedir=getattr(paths, "cate_dir", None), readcode=paths.truth_dir,
                    min_area=getattr(paths, "min_area", MIN_AREA), num_neg=num_neg,
                    neg_files=extra.get("neg_files"), image_folder=extra.get("image_folder"))


def default_readcode(data_root: os.PathLike | str, folder: str) -> Path:
    """Where the original's data_input/<folder> files are under a data root.

    data_prep.setup puts them in <root>/data_input/<folder>; ../shared/data
    keeps them in <root>/original/<folder>. The first that exists wins
    (setup's layout when neither does).
    """
    root = Path(data_root)
    for cand in (root / "data_input" / folder, root / "original" / folder):
        if cand.is_dir():
            return cand
    return root / "data_input" / folder


def count_objects(objset: Sequence[ObjRecord | None]) -> int:
    """The objects a reader found, not counting the empty elements."""
    return sum(o is not None for o in objset)


# ----------------------------------------------------------------- MAT values
def is_empty(v: Any) -> bool:
    return v is None or (isinstance(v, np.ndarray) and v.size == 0) or (isinstance(v, str) and v == "")


def mat_text(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":
        return "".join(np.asarray(v).reshape(-1, order="F").tolist())
    if is_empty(v):
        return ""
    raise DatasetError(f"{where}: expected text, got {type(v).__name__}")


def mat_number(v: Any, where: str) -> float:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise DatasetError(f"{where}: {v!r} is not a number") from None
    a = np.asarray(v)
    if a.size != 1:
        raise DatasetError(f"{where}: expected one number, got {a.size}")
    return float(a.reshape(-1)[0])


def struct_elements(value: Any, where: str) -> list[MatStruct | None]:
    """The elements of a struct array (or a cell of structs) in MATLAB linear order."""
    if isinstance(value, MatStruct):
        return [value]
    if isinstance(value, StructArray):
        return list(value.elements())
    if is_cell(value):
        return [v if isinstance(v, MatStruct) else None for v in np.asarray(value).reshape(-1, order="F")]
    raise DatasetError(f"{where}: expected a struct array, got {type(value).__name__}")


def obj_from_matlab(s: Any, where: str) -> ObjRecord | None:
    """An `obj` struct (folder, filename, name, bndbox, ID) as an ObjRecord; None when empty."""
    if not isinstance(s, MatStruct):
        if is_empty(s):
            return None
        raise DatasetError(f"{where}: expected an obj struct, got {type(s).__name__}")
    try:
        bb = s["bndbox"]
        box = BndBox.from_values(*(mat_number(bb[k], f"{where}.bndbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")),
                                 where=f"{where}.bndbox")
        ident = s.get("ID")
        return ObjRecord(folder=mat_text(s.get("folder", ""), f"{where}.folder"),
                         filename=mat_text(s.get("filename", ""), f"{where}.filename"),
                         name=mat_text(s.get("name", ""), f"{where}.name"),
                         bndbox=box, ID=0 if is_empty(ident) else int(mat_number(ident, f"{where}.ID")))
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{where}: malformed obj struct ({exc})") from None


def _column(v: Any) -> np.ndarray | None:
    if is_empty(v):
        return None
    return np.asarray(v, dtype=np.float64)


@lru_cache(maxsize=32)
def _load_variable_cached(path: str, name: str, mtime_ns: int, size: int) -> Any:
    return loadmat(path, variable_names=[name])[name]


def load_variable(path: os.PathLike | str, name: str) -> Any:
    """One variable of a MAT file, cached while the file is unchanged (same mtime and size).

    The truth files are read again for every part and every evaluation; a
    v7.3 file with hundreds of structs takes seconds to parse. Treat the
    result as read-only.
    """
    st = os.stat(path)
    return _load_variable_cached(os.path.abspath(os.fspath(path)), name, st.st_mtime_ns, st.st_size)


def read_part_truth_file(path: os.PathLike | str) -> list[PartTruth]:
    """A truth_partNN.mat file (`truth` struct array) as a list of PartTruth, in MATLAB order.

    The files shipped with the original (ILSVRC, VOC, CUB) and those that
    readPartTruth writes all hold `truth(i).pHW_center`, `.obj` and (not CUB)
    `.pHW_scale`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"part truth file not found: {path}")
    truth = load_variable(path, "truth")
    out = []
    for i, e in enumerate(struct_elements(truth, f"{path}: truth"), start=1):
        if e is None:
            out.append(PartTruth())
            continue
        out.append(PartTruth(pHW_center=_column(e.get("pHW_center")),
                             pHW_scale=_column(e.get("pHW_scale")),
                             objects=objects_from_matlab(e.get("obj"), f"{path}: truth({i}).obj")))
    return out


def objects_from_matlab(value: Any, where: str) -> tuple[ObjRecord, ...]:
    """truth(i).obj: [] (no object), one obj struct, or a 1 x K struct array (K objects) -> ObjRecords."""
    if isinstance(value, MatStruct) or is_empty(value):
        o = obj_from_matlab(value, where)
        return () if o is None else (o,)
    if isinstance(value, StructArray):
        objs = [obj_from_matlab(e, f"{where}({k})") for k, e in enumerate(value.elements(), start=1)]
        return tuple(o for o in objs if o is not None)
    raise DatasetError(f"{where}: expected an obj struct or struct array, got {type(value).__name__}")


def _empty_double() -> np.ndarray:
    return np.zeros((0, 0))


def objset_to_matlab(objset: Sequence[ObjRecord | None]) -> StructArray:
    """objset as the 1 x N struct array the original builds (empty elements have [] fields)."""
    names = ["folder", "filename", "name", "bndbox", "ID"]
    structs = []
    for o in objset:
        structs.append(o.to_matlab() if o is not None else MatStruct((k, _empty_double()) for k in names))
    out = StructArray((1, len(structs)), names)
    for i, s in enumerate(structs):
        out[0, i] = s
    return out


def truth_to_matlab(truth: Sequence[PartTruth], with_scale: bool = True) -> StructArray:
    """A `truth` list as the 1 x N struct array readPartTruth.m saves."""
    names = ["pHW_center", "pHW_scale", "obj"] if with_scale else ["pHW_center", "obj"]
    out = StructArray((1, len(truth)), names)
    for i, t in enumerate(truth):
        s = MatStruct(pHW_center=_empty_double() if t.pHW_center is None else t.pHW_center)
        if with_scale:
            s["pHW_scale"] = _empty_double() if t.pHW_scale is None else t.pHW_scale
        s["obj"] = _objects_to_matlab(t.objects)
        out[0, i] = s
    return out


def _objects_to_matlab(objects: Sequence[ObjRecord]) -> Any:
    """truth(i).obj as the original files hold it: [] for none, a struct for one, 1 x K struct array for K."""
    if not objects:
        return _empty_double()
    if len(objects) == 1:
        return objects[0].to_matlab()
    return StructArray.from_structs([o.to_matlab() for o in objects], (1, len(objects)))


def save_part_truth(path: os.PathLike | str, truth: Sequence[PartTruth], with_scale: bool = True,
                    version: str = "7.3") -> str:
    """Write a truth list as readPartTruth.m saves it (`save(..., 'truth')`), through
    legacy_compat's savemat; `with_scale=False` for CUB's (no pHW_scale field)."""
    return savemat(path, {"truth": truth_to_matlab(truth, with_scale)}, version=version)


def parse_int_table(path: Path, ncols: int, what: str) -> np.ndarray:
    """A whitespace-separated numeric text table read as textscan(fid, '%d %d ...') reads it.

    Numbers with a fraction are truncated toward zero (CUB's boxes and part
    locations are written as '60.0'). Returns int64 (rows, ncols).
    """
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    rows = []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != ncols:
                raise DatasetError(f"{path}:{lineno}: expected {ncols} numbers, got {len(parts)}: {line.strip()!r}")
            try:
                rows.append([int(np.trunc(float(p))) for p in parts])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: not a number in {line.strip()!r}") from None
    return np.asarray(rows, dtype=np.int64).reshape(-1, ncols)


def parse_id_name_table(path: Path, what: str) -> tuple[np.ndarray, list[str]]:
    """A '<id> <text>' file read as textscan(fid, '%d %s'): ids and the first word after each."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    ids, names = [], []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DatasetError(f"{path}:{lineno}: expected '<id> <name>', got {line.strip()!r}")
            try:
                ids.append(int(np.trunc(float(parts[0]))))
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: {parts[0]!r} is not an id") from None
            names.append(parts[1])
    return np.asarray(ids, dtype=np.int64), names


def matlab_intersect_index(a: Iterable[int], b: Iterable[int]) -> np.ndarray:
    """`[~, ia] = intersect(a, b)`: 0-based indices into a of the common values, sorted by value.

    For a value repeated in a, the first occurrence (MATLAB's current
    behaviour).
    """
    a = np.asarray(list(a) if not isinstance(a, np.ndarray) else a).reshape(-1)
    b = np.asarray(list(b) if not isinstance(b, np.ndarray) else b).reshape(-1)
    common = np.intersect1d(a, b)
    first = {}
    for i, v in enumerate(a.tolist()):
        first.setdefault(v, i)
    return np.asarray([first[v] for v in common.tolist()], dtype=np.int64)


__all__ += ["load_variable", "save_part_truth", "struct_elements", "obj_from_matlab", "objects_from_matlab",
            "parse_int_table", "parse_id_name_table", "matlab_intersect_index", "is_empty", "mat_text", "mat_number"]
