"""ILSVRC animal-part dataset (zqs1022/detanimalpart) and its shipped part truth.

Layout (what setup_ilsvrcanimalpart.m clones into ../data/detanimalpart/):

    <imgdir>/<wnid>_obj/img/data.mat        samples(i).obj.bndbox.{xmin,ymin,xmax,ymax}
    <imgdir>/<wnid>_obj/img/img/00001.jpg   the i-th image, i = 1 .. (entries in the folder)

and the part landmarks shipped with the code:

    <readcode>/<wnid>/truth_partNN.mat      truth(i).pHW_center / pHW_scale / obj

Ports data_input/data_input_DET-2015-subset-ILSVRC2013train/readAnnotation.m,
the conf of setup_ilsvrcanimalpart.m and the category list of demo.m.
"""
from __future__ import annotations

import os
from pathlib import Path

from legacy_compat import MatStruct, loadmat

from .facts import ILSVRC_CATEGORIES, MIN_AREA
from .readers import (
    BndBox,
    DataConf,
    DatasetError,
    ObjRecord,
    PartTruth,
    default_readcode,
    is_area_valid,
    mat_number,
    read_part_truth_file,
    struct_elements,
)

__all__ = ["ILSVRC_CATEGORIES", "ilsvrc_conf", "read_annotation_ilsvrc",
           "read_part_truth_ilsvrc", "ilsvrc_categories_on_disk"]

_READCODE_NAME = "data_input_DET-2015-subset-ILSVRC2013train"


def ilsvrc_conf(data_root: os.PathLike | str, *, imgdir: os.PathLike | str | None = None,
                neg_dir: os.PathLike | str | None = None, readcode: os.PathLike | str | None = None,
                min_area: float = MIN_AREA) -> DataConf:
    """conf.data of setup_ilsvrcanimalpart.m, rooted at `data_root`.

    Defaults: imgdir <data_root>/detanimalpart, negatives <data_root>/neg,
    truth files <data_root>/data_input/data_input_DET-2015-subset-ILSVRC2013train
    (data_prep.setup's layout) or <data_root>/original/... (../shared/data's),
    see `default_readcode`. minArea 50^2.
    """
    root = Path(data_root)
    return DataConf(dataset="ilsvrcanimalpart",
                    imgdir=Path(imgdir) if imgdir is not None else root / "detanimalpart",
                    neg_dir=Path(neg_dir) if neg_dir is not None else root / "neg",
                    readcode=Path(readcode) if readcode is not None else default_readcode(root, _READCODE_NAME),
                    min_area=min_area)


def ilsvrc_categories_on_disk(conf: DataConf) -> list[str]:
    """The categories whose `<wnid>_obj/img/data.mat` exists under conf.imgdir."""
    if not conf.imgdir.is_dir():
        return []
    return sorted(p.name[:-4] for p in conf.imgdir.iterdir()
                  if p.name.endswith("_obj") and (p / "img" / "data.mat").exists())


def _category_dir(name: str, conf: DataConf) -> Path:
    cat_dir = conf.imgdir / f"{name}_obj"
    if not (cat_dir / "img" / "data.mat").exists():
        present = ilsvrc_categories_on_disk(conf)
        raise DatasetError(
            f"category {name!r} not found: no {cat_dir / 'img' / 'data.mat'}. "
            f"Categories present under {conf.imgdir}: {', '.join(present) or 'none'}. "
            f"The ILSVRC animal-part categories are: {', '.join(ILSVRC_CATEGORIES)}")
    return cat_dir


def _sample_box(sample: MatStruct | None, where: str) -> BndBox:
    if sample is None or "obj" not in sample:
        raise DatasetError(f"{where} has no obj (an annotation that names no object)")
    obj = struct_elements(sample["obj"], f"{where}.obj")
    if len(obj) != 1 or obj[0] is None:
        raise DatasetError(f"{where}.obj holds {len(obj)} objects; readAnnotation.m expects exactly one")
    try:
        bb = obj[0]["bndbox"]
        return BndBox.from_values(*(mat_number(bb[k], f"{where}.obj.bndbox.{k}")
                                    for k in ("xmin", "ymin", "xmax", "ymax")), where=f"{where}.obj.bndbox")
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{where}.obj.bndbox is malformed ({exc})") from None


def read_annotation_ilsvrc(name: str, conf: DataConf) -> list[ObjRecord | None]:
    """readAnnotation.m (DET-2015-subset-ILSVRC2013train): the objset of one category.

    Faithful to the original:
    - the number of images is the number of entries in `<name>_obj/img/img/`
      (`length(dir(root)) - 2`: every entry counts, whatever its name), and
      image i is `%05d.jpg`, described by samples(i);
    - a box under minArea leaves an EMPTY element (None) in place: the list
      keeps one element per image. (getImdb.m would crash on it; the port's
      builders skip None, see data_prep.imdb.)
    - `name` is the image file name (objset(i).name = filename), ID = i.
    """
    cat_dir = _category_dir(name, conf)
    data_mat = cat_dir / "img" / "data.mat"
    root = cat_dir / "img" / "img"
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    n = len(os.listdir(root))
    samples = struct_elements(loadmat(data_mat, variable_names=["samples"])["samples"], f"{data_mat}: samples")
    if n > len(samples):
        raise DatasetError(
            f"{root} holds {n} entries but {data_mat} describes only {len(samples)} samples "
            f"(readAnnotation.m numbers the images 1..{n} after the folder's entry count)")
    folder = f"{name}_obj/img/img/"
    objset: list[ObjRecord | None] = []
    for i in range(1, n + 1):
        box = _sample_box(samples[i - 1], f"{data_mat}: samples({i})")
        if not is_area_valid(box, conf.min_area):
            objset.append(None)
            continue
        filename = f"{i:05d}.jpg"
        objset.append(ObjRecord(folder=folder, filename=filename, name=filename, bndbox=box, ID=i))
    return objset


def read_part_truth_ilsvrc(name: str, part_id: int, conf: DataConf) -> list[PartTruth]:
    """The shipped `<readcode>/<name>/truth_partNN.mat` (the original has no readPartTruth for ILSVRC)."""
    path = conf.truth_file(name, part_id)
    if not path.exists():
        have = sorted(p.name for p in path.parent.glob("truth_part*.mat")) if path.parent.is_dir() else []
        raise DatasetError(f"part truth file not found: {path} (present for {name!r}: {', '.join(have) or 'none'})")
    return read_part_truth_file(path)
