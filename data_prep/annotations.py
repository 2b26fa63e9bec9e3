"""readAnnotation.m of every dataset behind one call.

Each dataset keeps its own readAnnotation.m (data_input/<dataset>/): the
readers `data_prep.ilsvrc`, `data_prep.vocpart` and `data_prep.cub200`, all
built on `data_prep.readers`. `read_annotation(name, conf)` picks the one of
`conf.dataset`, as the original picked the one on its path.
"""
from __future__ import annotations

from .cub200 import read_annotation_cub
from .helen import read_annotation_helen
from .ilsvrc import read_annotation_ilsvrc
from .images import read_annotation_images
from .readers import DataConf, DatasetError, ObjRecord
from .voc2010_crop_lists import read_annotation_voc2010_crop
from .vocpart import read_annotation_voc

__all__ = ["read_annotation"]


def read_annotation(name: str, conf: DataConf) -> list[ObjRecord | None]:
    """readAnnotation(Name_batch, theConf) of the dataset `conf.dataset` (CUB: the objset only).

    The toy dataset is written in the ILSVRC layout and read by the ILSVRC reader.
    """
    if conf.dataset in ("ilsvrcanimalpart", "toy"):
        return read_annotation_ilsvrc(name, conf)
    if conf.dataset == "vocpart":
        return read_annotation_voc(name, conf)
    if conf.dataset == "helen":
        return list(read_annotation_helen(name, conf))
    if conf.dataset == "images":
        return read_annotation_images(name, conf)
    if conf.dataset == "voc2010_crop":
        return list(read_annotation_voc2010_crop(name, conf))
    if conf.dataset == "celeba":
        raise DatasetError("CelebA has no per-category objset: its images are whole faces with 40 attributes "
                           "(data_prep.celeba.build_celeba_imdb, celeba_evaluation_set)")
    return read_annotation_cub(name, conf)[0]
