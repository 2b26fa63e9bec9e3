"""Datasets of the ICNN port: readers, getI, the imdb (and, in data_prep.setup /
data_prep.download / data_prep.toy, getting the data and the toy dataset).

| original                                   | here                                  |
|--------------------------------------------|---------------------------------------|
| setup_*.m (conf.data)                      | `ilsvrc_conf`, `vocpart_conf`, `cub200_conf`, `DataConf`, `conf_from_paths` |
| setup_*.m Name_batch, partList, minArea     | `data_prep.facts` (every dataset fact, stated once) |
| data_input/*/readAnnotation.m              | `read_annotation` (`data_prep.annotations`: `.ilsvrc`, `.vocpart`, `.cub200`) |
| data_input/*/readPartTruth.m, truth files  | `read_part_truth_file`, `read_part_truth_voc`, `read_part_truth_cub` |
| data_input/CUB/readAnnotation_sampling.m   | `data_prep.cub200.read_annotation_sampling_cub` |
| data_input/*/getPart.m                     | `data_prep.vocpart.voc_part_masks_and_positions`, `data_prep.cub200.cub_part_positions` |
| data_input/*/getNegObjSet.m                | `get_neg_objset`                      |
| data_input/*/getI.m                        | `get_i`, `gather_patches`             |
| tool/main/getImdb.m, getImdb_cub200.m      | `get_imdb`, `get_imdb_cub200`, `assemble_imdb`, `assemble_imdb_cub200` |
| produceIMDB (learn_icnn_multiclass.m)      | `produce_imdb`                        |
| reuse of imdb.mat                          | `load_or_build_imdb`, `save_imdb_mat` |
| (not in the original) checking a dataset    | `python -m data_prep.check` (`data_prep.check`) |
| (not in the original) your own images       | `data_prep.images` (`--images DIR`: the dataset 'images') |
"""
from importlib import import_module
from typing import Any

# Names are imported on first use (deferred on purpose): `import data_prep.facts` or
# `data_prep.download` does not pull in numpy/scipy through the readers and the imdb code.
_EXPORTS = {
    "readers": ["BndBox", "DataConf", "DatasetError", "ObjRecord", "PartTruth", "conf_from_paths", "count_objects",
                "read_part_truth_file"],
    "facts": ["DATASETS", "ILSVRC_CATEGORIES", "VOC_CATEGORIES", "CUB_CATEGORIES", "TOY_CATEGORIES", "GOLDFISH",
              "MIN_AREA", "NUM_NEGATIVES", "parts_for", "all_categories"],
    "annotations": ["read_annotation"],
    "ilsvrc": ["ilsvrc_conf", "read_annotation_ilsvrc", "read_part_truth_ilsvrc"],
    "vocpart": ["vocpart_conf", "read_annotation_voc", "read_part_truth_voc"],
    "cub200": ["cub200_conf", "read_annotation_cub", "read_annotation_sampling_cub", "read_part_truth_cub"],
    "negatives": ["get_neg_objset"],
    "get_i": ["BoxError", "ImageReadError", "gather_patches", "get_i", "read_image"],
    "imdb": ["Imdb", "assemble_imdb", "assemble_imdb_cub200", "get_category_imdb", "get_imdb", "get_imdb_cub200",
             "legacy_randperm", "load_cached_imdb", "load_or_build_imdb", "produce_imdb", "save_imdb_mat"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
