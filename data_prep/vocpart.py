"""Pascal VOC Part: the six animal categories, their boxes, part landmarks and part masks.

Layout (setup_vocpart.m):

    <imgdir>   = VOC_part/VOCdevkit/VOC2010/JPEGImages/      the images
    <catedir>  = VOC_part/                                   (Pascal-Part; readPartTruth reads truth_<cat>.mat here)
    <readcode> = data_input/data_input_VOC/                  truth_<cat>.mat (readAnnotation),
                                                             <cat>/truth_partNN.mat (evaluation)

`truth_<cat>.mat` holds `truth(i).obj` (folder, filename, name, bndbox with
Wmin/Wmax/Hmin/Hmax) and `truth(i).partbox(p)` (Wmin/Wmax/Hmin/Hmax, empty
where the part is not annotated).

Ports data_input/data_input_VOC/readAnnotation.m, readPartTruth.m, getPart.m
(part masks from the Pascal-Part annotation files) and the conf of
setup_vocpart.m.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from legacy_compat import MatStruct, loadmat
from legacy_compat.numerics import mlinspace, mround

from .facts import MIN_AREA, VOC_CATEGORIES
from .readers import (
    BndBox,
    DataConf,
    DatasetError,
    ObjRecord,
    PartTruth,
    default_readcode,
    is_area_valid,
    is_empty,
    load_variable,
    mat_number,
    mat_text,
    struct_elements,
)

__all__ = ["VOC_CATEGORIES", "VOC_PART_MERGE", "VOC_CLASS_INDEX", "vocpart_conf",
           "read_truth_voc", "read_annotation_voc", "read_part_truth_voc", "voc_part_index_map",
           "voc_maps_from_annotation", "voc_part_mask", "voc_part_masks_and_positions"]

# getPart.m getPart_cate: Pascal-Part part indices merged into each part.
VOC_PART_MERGE: dict[str, tuple[tuple[int, ...], ...]] = {
    "bird": ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13,)),
    "cat": ((1, 2, 3, 4, 5, 6), (7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17,)),
    "cow": ((1, 2, 3, 4, 5, 6, 7, 8), (9, 10), (11, 12, 13, 14), (15, 16, 17, 18)),
    "dog": ((1, 2, 3, 4, 5, 6, 20), (7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17,)),
    "horse": ((1, 2, 3, 4, 5, 6), (9, 10), (11, 12, 13, 14, 30, 31), (15, 16, 17, 18, 32, 33)),
    "sheep": ((1, 2, 3, 4, 5, 6, 7, 8), (9, 10), (11, 12, 13, 14), (15, 16, 17, 18)),
}
# getPart.m getPart_one: batch2classID (PASCAL VOC class indices).
VOC_CLASS_INDEX: dict[str, int] = {"bird": 3, "cat": 8, "cow": 10, "dog": 12, "horse": 13, "sheep": 17}


def vocpart_conf(data_root: os.PathLike | str, *, catedir: os.PathLike | str | None = None,
                 imgdir: os.PathLike | str | None = None, neg_dir: os.PathLike | str | None = None,
                 readcode: os.PathLike | str | None = None, min_area: float = MIN_AREA) -> DataConf:
    """conf.data of setup_vocpart.m rooted at `data_root`.

    Defaults: catedir <data_root>/VOC_part, imgdir
    <catedir>/VOCdevkit/VOC2010/JPEGImages, negatives <data_root>/neg,
    readcode <data_root>/data_input/data_input_VOC (or original/..., see
    `default_readcode`).
    """
    root = Path(data_root)
    cate = Path(catedir) if catedir is not None else root / "VOC_part"
    return DataConf(dataset="vocpart", catedir=cate,
                    imgdir=Path(imgdir) if imgdir is not None else cate / "VOCdevkit" / "VOC2010" / "JPEGImages",
                    neg_dir=Path(neg_dir) if neg_dir is not None else root / "neg",
                    readcode=Path(readcode) if readcode is not None else default_readcode(root, "data_input_VOC"),
                    min_area=min_area)


def _truth_path(name: str, folder: Path | None, what: str) -> Path:
    if folder is None:
        raise DatasetError(f"VOC conf has no {what} folder for truth_{name}.mat")
    path = folder / f"truth_{name}.mat"
    if not path.exists():
        have = sorted(p.name[6:-4] for p in folder.glob("truth_*.mat")) if folder.is_dir() else []
        raise DatasetError(f"VOC category {name!r}: {path} not found. Categories with a truth file there: "
                           f"{', '.join(have) or 'none'}; the VOC Part categories are: {', '.join(VOC_CATEGORIES)}")
    return path


def read_truth_voc(path: os.PathLike | str) -> list[MatStruct]:
    """The `truth` struct array of a truth_<cat>.mat file, as a list of its elements."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"VOC truth file not found: {path}")
    elems = struct_elements(load_variable(path, "truth"), f"{path}: truth")
    for i, e in enumerate(elems, start=1):
        if e is None or not isinstance(e.get("obj"), MatStruct):
            raise DatasetError(f"{path}: truth({i}) has no obj (an annotation that names no object)")
    return elems


def _obj_box(obj: MatStruct, where: str) -> tuple[BndBox, dict[str, float]]:
    try:
        raw = {k: mat_number(obj["bndbox"][k], f"{where}.bndbox.{k}") for k in ("Wmin", "Wmax", "Hmin", "Hmax")}
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{where}.bndbox is malformed ({exc})") from None
    return BndBox.from_values(raw["Wmin"], raw["Hmin"], raw["Wmax"], raw["Hmax"], where=f"{where}.bndbox"), raw


def _obj_record(obj: MatStruct, box: BndBox, ident: int, where: str) -> ObjRecord:
    filename = mat_text(obj.get("filename", ""), f"{where}.filename")
    if not filename:
        raise DatasetError(f"{where} names no image file")
    return ObjRecord(folder=mat_text(obj.get("folder", ""), f"{where}.folder"), filename=filename,
                     name=mat_text(obj.get("name", ""), f"{where}.name"), bndbox=box, ID=ident)


def read_annotation_voc(name: str, conf: DataConf, *, truth_file: os.PathLike | str | None = None) -> list[ObjRecord]:
    """readAnnotation.m (VOC): the objects of <readcode>/truth_<name>.mat whose box passes minArea.

    Boxes under minArea are removed (the list compacts; ID = position).
    """
    path = Path(truth_file) if truth_file is not None else _truth_path(name, conf.readcode, "readcode")
    objset: list[ObjRecord] = []
    for i, t in enumerate(read_truth_voc(path), start=1):
        where = f"{path}: truth({i}).obj"
        box, _ = _obj_box(t["obj"], where)
        if not is_area_valid(box, conf.min_area):
            continue
        objset.append(_obj_record(t["obj"], box, len(objset) + 1, where))
    return objset


def read_part_truth_voc(name: str, part_id: int, conf: DataConf, *,
                        truth_file: os.PathLike | str | None = None) -> list[PartTruth]:
    """readPartTruth.m (VOC): the centre and size of part `part_id` in 224 x 224 crop units.

    One element per object that passes minArea (aligned with
    read_annotation_voc); empty where the part is not annotated. With the
    object box (Wmin, Wmax, Hmin, Hmax) and the part box (pW/pH ...):
    pHW_center = [((pHmax+pHmin)/2 - Hmin)/(Hmax-Hmin)*224; ((pWmax+pWmin)/2 - Wmin)/(Wmax-Wmin)*224],
    pHW_scale  = [(pHmax-pHmin)/(Hmax-Hmin)*224; (pWmax-pWmin)/(Wmax-Wmin)*224].
    obj.ID is the index in truth_<name>.mat. The original reads
    <catedir>/truth_<name>.mat; when that is absent the readcode copy is used.
    (It saves the list as <output>/<name>/truth_partNN.mat: `save_part_truth`.)
    """
    if truth_file is not None:
        path = Path(truth_file)
    elif conf.catedir is not None and (conf.catedir / f"truth_{name}.mat").exists():
        path = conf.catedir / f"truth_{name}.mat"
    else:
        path = _truth_path(name, conf.readcode, "readcode")
    out: list[PartTruth] = []
    for i, t in enumerate(read_truth_voc(path), start=1):
        where = f"{path}: truth({i})"
        box, ob = _obj_box(t["obj"], where + ".obj")
        if not is_area_valid(box, conf.min_area):
            continue
        parts = struct_elements(t.get("partbox"), f"{where}.partbox") if not is_empty(t.get("partbox")) else []
        if part_id > len(parts):
            raise DatasetError(f"{where}.partbox has {len(parts)} parts; part {part_id} does not exist")
        pb = parts[part_id - 1]
        if pb is None or is_empty(pb.get("Wmin")):
            out.append(PartTruth())
            continue
        p = {k: mat_number(pb[k], f"{where}.partbox({part_id}).{k}") for k in ("Wmin", "Wmax", "Hmin", "Hmax")}
        width, height = p["Wmax"] - p["Wmin"], p["Hmax"] - p["Hmin"]
        x = (p["Wmax"] + p["Wmin"]) / 2 - ob["Wmin"]
        y = (p["Hmax"] + p["Hmin"]) / 2 - ob["Hmin"]
        oh, ow = ob["Hmax"] - ob["Hmin"], ob["Wmax"] - ob["Wmin"]
        with np.errstate(divide="ignore", invalid="ignore"):
            center = np.array([[y / oh * 224], [x / ow * 224]], dtype=np.float64)
            scale = np.array([[height / oh * 224], [width / ow * 224]], dtype=np.float64)
        out.append(PartTruth(pHW_center=center, pHW_scale=scale, obj=_obj_record(t["obj"], box, i, where + ".obj")))
    return out


# ----------------------------------------------------------------- getPart.m: part masks
def voc_part_index_map() -> list[dict[str, int]]:
    """part2ind of getPart.m: for each of the 20 VOC classes (index 0 = class 1), part name -> part index."""
    pimap: list[dict[str, int]] = [dict() for _ in range(20)]
    pimap[0].update(body=1, stern=2, lwing=3, rwing=4, tail=5)
    pimap[0].update({f"engine_{i}": 10 + i for i in range(1, 11)})
    pimap[0].update({f"wheel_{i}": 20 + i for i in range(1, 11)})
    pimap[1].update(fwheel=1, bwheel=2, saddle=3, handlebar=4, chainwheel=5)
    pimap[1].update({f"headlight_{i}": 10 + i for i in range(1, 11)})
    pimap[2].update(head=1, leye=2, reye=3, beak=4, torso=5, neck=6, lwing=7, rwing=8, lleg=9, lfoot=10,
                    rleg=11, rfoot=12, tail=13)
    pimap[4].update(cap=1, body=2)
    pimap[5].update(frontside=1, leftside=2, rightside=3, backside=4, roofside=5, leftmirror=6,
                    rightmirror=7, fliplate=8, bliplate=9)
    pimap[5].update({f"door_{i}": 10 + i for i in range(1, 11)})
    pimap[5].update({f"wheel_{i}": 20 + i for i in range(1, 11)})
    pimap[5].update({f"headlight_{i}": 30 + i for i in range(1, 11)})
    pimap[5].update({f"window_{i}": 40 + i for i in range(1, 21)})
    pimap[6] = dict(pimap[5])                         # car: as bus
    pimap[7].update(head=1, leye=2, reye=3, lear=4, rear=5, nose=6, torso=7, neck=8, lfleg=9, lfpa=10,
                    rfleg=11, rfpa=12, lbleg=13, lbpa=14, rbleg=15, rbpa=16, tail=17)
    pimap[9].update(head=1, leye=2, reye=3, lear=4, rear=5, muzzle=6, lhorn=7, rhorn=8, torso=9, neck=10,
                    lfuleg=11, lflleg=12, rfuleg=13, rflleg=14, lbuleg=15, lblleg=16, rbuleg=17, rblleg=18,
                    tail=19)
    pimap[11] = dict(pimap[7], muzzle=20)             # dog: as cat, plus muzzle
    pimap[12] = {k: v for k, v in pimap[9].items() if k not in ("lhorn", "rhorn")}   # horse: cow with hooves
    pimap[12].update(lfho=30, rfho=31, lbho=32, rbho=33)
    pimap[13].update(fwheel=1, bwheel=2, handlebar=3, saddle=4)
    pimap[13].update({f"headlight_{i}": 10 + i for i in range(1, 11)})
    pimap[14].update(head=1, leye=2, reye=3, lear=4, rear=5, lebrow=6, rebrow=7, nose=8, mouth=9, hair=10,
                     torso=11, neck=12, llarm=13, luarm=14, lhand=15, rlarm=16, ruarm=17, rhand=18,
                     llleg=19, luleg=20, lfoot=21, rlleg=22, ruleg=23, rfoot=24)
    pimap[15].update(pot=1, plant=2)
    pimap[16] = dict(pimap[9])                        # sheep: as cow
    pimap[18].update(head=1, hfrontside=2, hleftside=3, hrightside=4, hbackside=5, hroofside=6)
    for base, key in ((10, "headlight_%d"), (20, "coach_%d"), (30, "cfrontside_%d"), (40, "cleftside_%d"),
                      (50, "crightside_%d"), (60, "cbackside_%d"), (70, "croofside_%d")):
        pimap[18].update({key % i: base + i for i in range(1, 11)})
    pimap[19].update(screen=1)
    return pimap


def voc_maps_from_annotation(anno: MatStruct, shape: tuple[int, int],
                             pimap: list[dict[str, int]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mat2map of getPart.m: class, instance and part masks (uint8, H x W) of a Pascal-Part `anno`.

    Later objects overwrite earlier ones; every part name must be in the
    class's part map and every part mask inside its object's silhouette.
    """
    pimap = pimap or voc_part_index_map()
    cls_mask = np.zeros(shape, dtype=np.uint8)
    inst_mask = np.zeros(shape, dtype=np.uint8)
    part_mask = np.zeros(shape, dtype=np.uint8)
    for oo, obj in enumerate(struct_elements(anno["objects"], "anno.objects"), start=1):
        class_ind = int(mat_number(obj["class_ind"], "anno.objects.class_ind"))
        silh = np.asarray(obj["mask"]).astype(bool)
        if silh.shape != tuple(shape):
            raise DatasetError(f"anno.objects({oo}).mask is {silh.shape}, the image is {tuple(shape)}")
        inst_mask[silh] = oo
        cls_mask[silh] = class_ind
        parts = [] if is_empty(obj.get("parts")) else struct_elements(obj["parts"], "anno.objects.parts")
        for p in parts:
            pname = mat_text(p["part_name"], "part_name")
            if pname not in pimap[class_ind - 1]:
                raise DatasetError(f"anno.objects({oo}): part {pname!r} has no index for class {class_ind}")
            pm = np.asarray(p["mask"]).astype(bool)
            if not np.all(silh[pm]):
                raise DatasetError(f"anno.objects({oo}): part {pname!r} lies outside the object's silhouette")
            part_mask[pm] = pimap[class_ind - 1][pname]
    return cls_mask, inst_mask, part_mask


def _part_one(cls_mask: np.ndarray, part_mask: np.ndarray, class_id: int, part_id: int, box: BndBox) -> np.ndarray:
    """getPart_one: pixels of class `class_id` and part `part_id` strictly inside the box.

    The original zeroes rows 1..ymin and ymax..end (and the same columns):
    the box's own border rows and columns are dropped too. Kept.
    """
    tmp = (cls_mask == class_id) & (part_mask == part_id)
    tmp[: box.ymin, :] = False
    tmp[box.ymax - 1:, :] = False
    tmp[:, : box.xmin] = False
    tmp[:, box.xmax - 1:] = False
    return np.where(tmp, part_mask, 0).astype(np.uint8)


def voc_part_mask(obj: ObjRecord, anno: MatStruct, image_shape: tuple[int, int], tar_size: Sequence[int] = (224, 224),
                  *, part_merge: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """getPart_cate of getPart.m: the merged-part label map of one object, sampled to tar_size.

    mask(h, w) = i where a Pascal-Part part of merged group i lies; cropped
    to the box and sampled at round(linspace(1, size, tar)) rows and columns.
    Returns uint8 (tar_h, tar_w).
    """
    if obj.name not in VOC_CLASS_INDEX:
        raise DatasetError(f"getPart: object name {obj.name!r} is not one of {', '.join(VOC_CLASS_INDEX)}")
    merge = part_merge if part_merge is not None else VOC_PART_MERGE[obj.name]
    cls_mask, _, part_mask = voc_maps_from_annotation(anno, image_shape)
    box = obj.bndbox
    mask = np.zeros(image_shape, dtype=np.float64)
    for i, ids in enumerate(merge, start=1):
        for pid in ids:
            mask[_part_one(cls_mask, part_mask, VOC_CLASS_INDEX[obj.name], pid, box) > 0] = i
    mask = mask[box.ymin - 1:box.ymax, box.xmin - 1:box.xmax]
    y_l = mround(mlinspace(1, mask.shape[0], int(tar_size[0]))).astype(np.int64) - 1
    x_l = mround(mlinspace(1, mask.shape[1], int(tar_size[1]))).astype(np.int64) - 1
    return mask[np.ix_(y_l, x_l)].astype(np.uint8)


def voc_part_masks_and_positions(objset: Sequence[ObjRecord], annodir: os.PathLike | str, conf: DataConf,
                                 tar_size: Sequence[int] = (224, 224), part_num: int = 5
                                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """getIMDBMask of getPart.m (VOC): every object's part mask and part centres.

    Reads <annodir>/<image name>.mat (Pascal-Part `anno`) and the image's
    size. Returns (mask uint8 tar_h x tar_w x N, partPos: one 2 x part_num
    array per object with the mean [h; w] (1-based) of each part's pixels,
    -1 where absent).
    """
    annodir = Path(annodir)
    masks = np.zeros((int(tar_size[0]), int(tar_size[1]), len(objset)), dtype=np.uint8)
    positions = []
    for n, obj in enumerate(objset):
        anno_path = annodir / f"{obj.filename[:-4]}.mat"
        if not anno_path.exists():
            raise DatasetError(f"Pascal-Part annotation not found: {anno_path}")
        anno = loadmat(anno_path, variable_names=["anno"])["anno"]
        with Image.open(obj.image_path(conf.imgdir)) as im:
            w, h = im.size
        tmp = voc_part_mask(obj, anno, (h, w), tar_size)
        masks[:, :, n] = tmp
        pos = -np.ones((2, part_num), dtype=np.float64)
        for part in range(1, part_num + 1):
            hh, ww = np.nonzero(tmp == part)
            if hh.size:
                pos[0, part - 1], pos[1, part - 1] = hh.mean() + 1, ww.mean() + 1
        positions.append(pos)
    return masks, positions

