"""Per-dataset set-up: what each dataset needs, where it goes, what is missing.

Ports ``setup_ilsvrcanimalpart.m``, ``setup_vocpart.m``, ``setup_cub200.m``
and the model downloads of ``setup_matconvnet.m``. The original kept its data
in ``../data`` beside the code and its models in ``../nets``; here both live
under folders you choose:

Data root (``root`` argument; default `default_data_root()`:
``$ICNN_DATA_ROOT`` if set, else ``./output/data``), laid out as the original's
``../data`` plus the part truth files the original shipped inside its code::

    <root>/detanimalpart/<wnid>_obj/img/data.mat, img/00001.jpg ...   ILSVRC animal part
    <root>/neg/00001.JPEG ... 01000.JPEG                              shared negatives
    <root>/VOC_part/VOCdevkit/VOC2010/JPEGImages/*.jpg                VOC2010
    <root>/VOC_part/Annotations_Part/*.mat                            Pascal-Part (optional)
    <root>/CUB_200_2011/images/..., images.txt, parts/part_locs.txt   CUB-200-2011
    <root>/data_input/data_input_DET-2015-subset-ILSVRC2013train/<wnid>/truth_partNN.mat
    <root>/data_input/data_input_VOC/truth_<animal>.mat, <animal>/truth_partNN.mat
    <root>/data_input/data_input_CUB-200-2011/sampling.mat, cub200/truth_partNN.mat
    <root>/helen/, <root>/celeba/, <root>/voc2010_crop/               manual downloads (data_prep.helen,
                                                                      data_prep.celeba, data_prep.voc2010_crop)
    <root>/toy/...                                                    the generated toy dataset
    <root>/downloads/                                                 archives while they download

Models root (``root`` of `ensure_model`; default `default_models_root()`:
``$ICNN_MODELS_ROOT`` if set, else ``./output/nets``): the four MatConvNet
ImageNet models, ``imagenet-vgg-verydeep-16.mat`` etc.

`ensure_dataset` / `ensure_model` download what is missing (progress bars,
resume, checksums, safe unpacking: `data_prep.download`) and return where
things are; offline, or when a download fails, they raise `MissingDataError`
whose message lists exactly which files are missing, the URL that has them
and where to put them (`describe_missing` gives the same text without
raising).

Checksums: the four models have MatConvNet's published MD5s, VOC2010 and
CUB-200-2011 the MD5s their distributors publish (as used by torchvision and
many dataset loaders). The GitHub archives (zqs1022/interpretableCNN,
zqs1022/detanimalpart) and the Pascal-Part tarball have no published checksum:
they are verified by their layout after unpacking (every file the pipeline
reads must be there, and each ILSVRC category must hold its known number of
images: the counts of the detanimalpart repository).
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from legacy_compat.cli import UserError
from legacy_compat.mattypes import MatStruct

from . import download as dl
from . import toy
from .celeba import celeba_missing_message, find_celeba_files
from .facts import (
    CUB_TRUTH,
    HELEN_CATEGORY,
    ILSVRC_IMAGE_COUNTS,
    ILSVRC_TRUTH,
    IMAGES_TRUTH,
    MIN_AREA,
    MODEL_FILES,
    NUM_NEGATIVES,
    VOC_ANNO,
    VOC_JPEG,
    VOC_TRUTH,
    DatasetFacts,
    all_categories,
    dataset_facts,
    parts_for,
)
from .helen import HELEN_PARTS, helen_missing_message, write_helen_truth
from .images import ImageFolder, prepare_image_folder
from .readers import DataConf, DatasetError, conf_from_paths
from .voc2010_crop_lists import missing_voc2010_crop, voc2010_crop_missing_message

__all__ = [
    "DatasetPaths", "MissingDataError", "Source", "Requirement", "Missing",
    "ensure_dataset", "ArchiveOptions", "OwnImages", "ensure_model", "describe_missing", "find_missing",
    "dataset_paths",
    "check_disk_space", "default_data_root", "default_models_root",
    "MODEL_SOURCES", "SOURCES",
]

check_disk_space = dl.check_disk_space

# ----------------------------------------------------------------------------------------------
# Constants of the download layout (the datasets' own facts are in data_prep.facts)

VOC2010_TRAINVAL_IMAGES = 10103
CUB_IMAGES = 11788

ENV_DATA_ROOT = "ICNN_DATA_ROOT"
ENV_MODELS_ROOT = "ICNN_MODELS_ROOT"


def default_data_root(output_dir: os.PathLike | str = "output") -> Path:
    """``$ICNN_DATA_ROOT`` when set, else ``<output_dir>/data`` (the original's ``../data``)."""
    env = os.environ.get(ENV_DATA_ROOT)
    return Path(env) if env else Path(output_dir) / "data"


def default_models_root(output_dir: os.PathLike | str = "output") -> Path:
    """``$ICNN_MODELS_ROOT`` when set, else ``<output_dir>/nets`` (the original's ``../nets``)."""
    env = os.environ.get(ENV_MODELS_ROOT)
    return Path(env) if env else Path(output_dir) / "nets"


# ----------------------------------------------------------------------------------------------
# Where things come from

@dataclass(frozen=True)
class Source:
    """One file to download: a dataset archive or a model.

    ``installs`` maps a path inside the unpacked archive ('' = all of it;
    ``**/NAME``: the folder NAME at the top or one level down) to a path
    under the data root; files already there are never overwritten.
    An empty ``installs`` means the file itself is the result (a model).
    """
    key: str
    urls: tuple[str, ...]              # tried in order; the first is the one the messages name
    filename: str
    what: str
    md5: str | None = None
    approx_bytes: int | None = None    # download size (for the disk check and the messages)
    installs: tuple[tuple[str, str], ...] = ()
    unpacked_factor: float = 1.0       # unpacked size / archive size, for the disk check

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def verification(self) -> str:
        if self.md5:
            return f"MD5 {self.md5}"
        return "no published checksum: checked by its layout after unpacking"


_GITHUB = "https://github.com/zqs1022/{repo}/archive/refs/heads/master.zip"
_MATCONVNET = "https://www.vlfeat.org/matconvnet/models/{name}"

SOURCES: dict[str, Source] = {s.key: s for s in (
    Source("interpretableCNN", (_GITHUB.format(repo="interpretableCNN"),), "interpretableCNN-master.zip",
           "GitHub archive of zqs1022/interpretableCNN (the original code, its data/neg negatives and "
           "code/data_input part truth files)", approx_bytes=500_000_000, unpacked_factor=1.2,
           installs=(("interpretableCNN-master/data/neg", "neg"),
                     ("interpretableCNN-master/code/data_input", "data_input"))),
    Source("detanimalpart", (_GITHUB.format(repo="detanimalpart"),), "detanimalpart-master.zip",
           "GitHub archive of zqs1022/detanimalpart (ILSVRC animal-part images and data.mat boxes)",
           approx_bytes=650_000_000, unpacked_factor=1.05,
           installs=(("detanimalpart-master", "detanimalpart"),)),
    Source("voc2010", ("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",),
           "VOCtrainval_03-May-2010.tar", "PASCAL VOC2010 trainval images",
           md5="da459979d0c395079b5c75ee67908abb", approx_bytes=1_400_000_000,
           installs=(("", "VOC_part"),)),
    Source("pascalpart", ("http://roozbehm.info/pascal-parts/trainval.tar.gz",
                          "http://www.stat.ucla.edu/~xianjie.chen/pascal_part_dataset/trainval.tar.gz"),
           "pascal-part-trainval.tar.gz", "Pascal-Part annotations (Annotations_Part/*.mat)",
           approx_bytes=80_000_000, unpacked_factor=6.0, installs=(("**/Annotations_Part", VOC_ANNO),)),
    Source("cub200", ("https://data.caltech.edu/records/65de6-vjr79/files/CUB_200_2011.tgz",
                      "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz"),
           "CUB_200_2011.tgz", "CUB-200-2011 images and annotations",
           md5="97eceeb196236b17998738112f37df78", approx_bytes=1_150_000_000, unpacked_factor=1.05,
           installs=(("CUB_200_2011", "CUB_200_2011"),)),
)}

#: The four MatConvNet models network_init.m loads (tool/nets/*.m), keyed by demo.m's model names.
MODEL_SOURCES: dict[str, Source] = {
    m.model: Source(m.model, (_MATCONVNET.format(name=m.filename),), m.filename,
                    f"MatConvNet ImageNet model {m.filename}", md5=m.md5, approx_bytes=m.approx_bytes)
    for m in MODEL_FILES.values()}


# ----------------------------------------------------------------------------------------------
# What each dataset needs

@dataclass(frozen=True)
class Requirement:
    """A file, or a folder that must hold given files, under the data root."""
    path: str                          # POSIX, relative to the data root
    source: str                        # key in SOURCES
    names: tuple[str, ...] = ()        # for a folder: the file names it must hold
    min_files: int = 0                 # for a folder whose names are not listed: at least this many files
    optional: bool = False
    why: str = ""

    @property
    def is_folder(self) -> bool:
        return bool(self.names) or self.min_files > 0


@dataclass(frozen=True)
class Missing:
    """What is missing of one requirement: the whole file, or some files of a folder."""
    requirement: Requirement
    path: Path                          # absolute
    names: tuple[str, ...] = ()         # missing names in a folder (empty for a missing file)
    found: int = 0                      # for min_files folders: how many files are there


def _numbered(prefix: str, count: int, ext: str, width: int = 5) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:0{width}d}{ext}" for i in range(1, count + 1))


def _neg_requirement() -> Requirement:
    return Requirement("neg", "interpretableCNN", names=_numbered("", NUM_NEGATIVES, ".JPEG"),
                       why="the 1000 shared negative images (getNegObjSet.m)")


def _ilsvrc_requirements(categories: Sequence[str]) -> list[Requirement]:
    reqs = []
    for c in categories:
        reqs.append(Requirement(f"detanimalpart/{c}_obj/img/data.mat", "detanimalpart",
                                why="object boxes (readAnnotation.m)"))
        reqs.append(Requirement(f"detanimalpart/{c}_obj/img/img", "detanimalpart",
                                names=_numbered("", ILSVRC_IMAGE_COUNTS[c], ".jpg"), why="images"))
        for p in parts_for("ilsvrcanimalpart", c):
            reqs.append(Requirement(f"{ILSVRC_TRUTH}/{c}/truth_part{p:02d}.mat", "interpretableCNN",
                                    why="part landmarks (getDistSqrtVar.m)"))
    reqs.append(_neg_requirement())
    return reqs


def _voc_requirements(categories: Sequence[str]) -> list[Requirement]:
    reqs = [Requirement(VOC_JPEG, "voc2010", min_files=VOC2010_TRAINVAL_IMAGES, why="VOC2010 images")]
    for c in categories:
        reqs.append(Requirement(f"{VOC_TRUTH}/truth_{c}.mat", "interpretableCNN",
                                why="object list (readAnnotation.m)"))
        for p in parts_for("vocpart", c):
            reqs.append(Requirement(f"{VOC_TRUTH}/{c}/truth_part{p:02d}.mat", "interpretableCNN",
                                    why="part landmarks (getDistSqrtVar.m)"))
    reqs.append(_neg_requirement())
    reqs.append(Requirement(VOC_ANNO, "pascalpart", min_files=VOC2010_TRAINVAL_IMAGES, optional=True,
                            why="part segmentations, read only by getPart.m (not by training or evaluation)"))
    return reqs


def _cub_requirements(categories: Sequence[str]) -> list[Requirement]:
    cub = "CUB_200_2011"
    reqs = [Requirement(f"{cub}/{name}", "cub200", why="annotation (readAnnotation.m)")
            for name in ("images.txt", "bounding_boxes.txt", "image_class_labels.txt",
                         "train_test_split.txt", "classes.txt", "parts/part_locs.txt")]
    reqs.append(Requirement(f"{cub}/images", "cub200", min_files=CUB_IMAGES, why="images (200 class folders)"))
    reqs.append(Requirement(f"{CUB_TRUTH}/sampling.mat", "interpretableCNN",
                            why="the evaluated test images (readAnnotation_sampling.m)"))
    for c in categories:
        for p in parts_for("cub200", c):
            reqs.append(Requirement(f"{CUB_TRUTH}/{c}/truth_part{p:02d}.mat", "interpretableCNN",
                                    why="part landmarks (getDistSqrtVar.m)"))
    reqs.append(_neg_requirement())
    return reqs


def _helen_requirements(categories: Sequence[str]) -> list[Requirement]:
    """Helen itself is a manual download (checked by `ensure_dataset`); the shared negatives are not."""
    return [_neg_requirement()]


def _no_requirements(categories: Sequence[str]) -> list[Requirement]:
    """CelebA and voc2010_crop: manual downloads only (checked by `_check_manual`), no shared negatives."""
    return []


_REQUIREMENTS = {"ilsvrcanimalpart": _ilsvrc_requirements, "vocpart": _voc_requirements,
                 "cub200": _cub_requirements, "helen": _helen_requirements,
                 "celeba": _no_requirements, "voc2010_crop": _no_requirements,
                 "images": _helen_requirements}      # a folder of your own images: the shared negatives


def _check_manual(name: str, root: Path, cats: Sequence[str]) -> None:
    """The datasets nothing here downloads (Helen, CelebA, voc2010_crop): `MissingDataError` saying what
    to download by hand and where to put it, when their files are not there."""
    folder = root / dataset_facts(name).image_dir
    message = None
    if name == "helen" and not (folder / "annotation").is_dir():
        message = helen_missing_message(folder)
    elif name == "celeba":
        try:
            if find_celeba_files(folder).landmarks is None:
                message = (celeba_missing_message(folder) + " (list_landmarks_align_celeba.txt is missing: it gives "
                           "the part positions location stability is measured with)")
        except DatasetError:
            message = celeba_missing_message(folder)
    elif name == "voc2010_crop":
        absent = missing_voc2010_crop(folder, cats)
        if absent:
            message = voc2010_crop_missing_message(folder, cats, absent)
    if message is not None:
        raise MissingDataError(message, [], {})


def _spec(name: str) -> DatasetFacts:
    return dataset_facts(name)


def _categories(name: str, categories: str | Iterable[str] | None) -> tuple[str, ...]:
    valid = all_categories(name)
    if categories is None:
        return valid
    cats = (categories,) if isinstance(categories, str) else tuple(categories)
    bad = [c for c in cats if c not in valid]
    if bad:
        raise ValueError(f"unknown {name} categor{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
                         f"valid categories of {name}: {', '.join(valid)}")
    if not cats:
        raise ValueError(f"no categories given for dataset {name!r}")
    return cats


# ----------------------------------------------------------------------------------------------
# Where a dataset is

@dataclass(frozen=True)
class DatasetPaths:
    """Where one dataset's files are: the Python form of setup_*.m's ``conf.data``.

    ``image_dir`` is ``conf.data.imgdir``; ``truth_dir`` holds
    ``<category>/truth_partNN.mat`` (the folder ``conf.data.readCode``
    pointed at; VOC also keeps ``truth_<animal>.mat`` there); ``neg_dir`` is
    the original's hard-coded ``../data/neg``; ``cate_dir`` is
    ``conf.data.catedir`` (VOC, CUB), ``anno_dir`` ``conf.data.annodir``
    (Pascal-Part, getPart.m only). ``part_list`` is showResults.m's partList.
    ``input_size`` is only set for the toy dataset: the crop size its
    ``pHW_center`` landmarks are expressed in (224 for the real datasets).
    """
    name: str
    root: Path
    image_dir: Path
    truth_dir: Path
    neg_dir: Path
    categories: tuple[str, ...]
    part_list: tuple[int, ...]
    min_area: int = MIN_AREA
    cate_dir: Path | None = None
    anno_dir: Path | None = None
    input_size: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def parts_for(self, category: str) -> tuple[int, ...]:
        """The part ids evaluated for one category (ILSVRC GOLDFISH has only part 1)."""
        return parts_for(self.name, category, self.part_list)

    def truth_file(self, category: str, part: int) -> Path:
        """``<truth_dir>/<category>/truth_partNN.mat`` (getDistSqrtVar.m's file name)."""
        return self.truth_dir / category / f"truth_part{int(part):02d}.mat"

    def conf(self):
        """A MATLAB-like ``conf`` (``conf.data.imgdir`` ...; folder strings end with '/').

        ``data.negdir`` is not in the original (it hard-coded ``../data/neg/``).
        """
        def d(p: Path | None) -> str:
            return "" if p is None else p.as_posix().rstrip("/") + "/"
        data = MatStruct(imgdir=d(self.image_dir), readCode=d(self.truth_dir), catedir=d(self.cate_dir),
                         annodir=d(self.anno_dir), negdir=d(self.neg_dir), minArea=float(self.min_area))
        return MatStruct(data=data)

    def data_conf(self) -> DataConf:
        """These paths as the readers' `data_prep.readers.DataConf` (`readers.conf_from_paths`)."""
        return conf_from_paths(self)


def dataset_paths(name: str, root: os.PathLike | str | None = None, categories: str | Iterable[str] | None = None,
                  *, truth_dir: os.PathLike | str | None = None, neg_dir: os.PathLike | str | None = None,
                  image_dir: os.PathLike | str | None = None) -> DatasetPaths:
    """Where a dataset's files are (or would be) under ``root``, without checking or downloading.

    ``truth_dir``, ``neg_dir`` and ``image_dir`` override the standard
    layout, e.g. for ../shared/data, whose truth files sit under
    ``original/data_input_DET-2015-subset-ILSVRC2013train``.
    """
    spec = _spec(name)
    root = Path(root) if root is not None else default_data_root()
    cats = _categories(name, categories)
    base = root / "toy" if name == "toy" else root
    min_area, input_size, extra = MIN_AREA, None, {}
    if name == "toy":
        manifest = toy.read_manifest(base)
        min_area = toy.toy_min_area(manifest["image_size"] if manifest else None)
        input_size = manifest["input_size"] if manifest else None
        extra = {"manifest": manifest} if manifest else {}
    return DatasetPaths(
        name=name, root=root,
        image_dir=Path(image_dir) if image_dir is not None else root / spec.image_dir,
        truth_dir=Path(truth_dir) if truth_dir is not None else root / spec.truth_dir,
        neg_dir=Path(neg_dir) if neg_dir is not None else base / "neg",
        categories=cats, part_list=spec.part_list, min_area=min_area,
        cate_dir=root / spec.cate_dir if spec.cate_dir else None,
        anno_dir=root / spec.anno_dir if spec.anno_dir else None,
        input_size=input_size, extra=extra)


# ----------------------------------------------------------------------------------------------
# What is missing

def _missing_of(root: Path, req: Requirement) -> Missing | None:
    path = root / req.path
    if not req.is_folder:
        return None if path.is_file() else Missing(req, path)
    if not path.is_dir():
        return Missing(req, path, names=req.names, found=0)
    if req.names:
        present = set(os.listdir(path))
        absent = tuple(n for n in req.names if n not in present)
        return Missing(req, path, names=absent) if absent else None
    found = sum(1 for _ in _iter_files(path))
    return Missing(req, path, found=found) if found < req.min_files else None


def _iter_files(folder: Path):
    for _dirpath, _dirs, files in os.walk(folder):
        yield from files


def _requirements(name: str, categories: Sequence[str]) -> list[Requirement]:
    return _REQUIREMENTS[name](categories)


def find_missing(name: str, root: os.PathLike | str | None = None,
                 categories: str | Iterable[str] | None = None) -> list[Missing]:
    """What ``name`` lacks under ``root`` (optional items included, marked optional); [] when complete."""
    _spec(name)
    root = Path(root) if root is not None else default_data_root()
    cats = _categories(name, categories)
    if name == "toy":
        base = root / "toy"
        manifest = toy.read_manifest(base)
        if manifest is None or not set(cats) <= set(manifest.get("categories", [])):
            req = Requirement("toy/" + toy.MANIFEST_NAME, "toy", why="the generated toy dataset")
            return [Missing(req, base / toy.MANIFEST_NAME)]
        return []
    root = root.absolute()          # messages name absolute paths
    return [m for m in (_missing_of(root, r) for r in _requirements(name, cats)) if m is not None]


_NUMBERED = re.compile(r"^(\d+)(\.[A-Za-z0-9]+)$")


def _compress_names(names: Sequence[str]) -> str:
    """Runs of consecutive numbered names as '00001.jpg ... 00286.jpg (286 files)', others listed."""
    parts: list[str] = []
    run: list[tuple[int, str, str]] = []

    def flush() -> None:
        if not run:
            return
        first, last = run[0][2], run[-1][2]
        parts.append(first if len(run) == 1 else f"{first} ... {last} ({len(run)} files)")
        run.clear()
    for n in names:
        m = _NUMBERED.match(n)
        if m and run and run[-1][0] + 1 == int(m.group(1)) and run[-1][1] == m.group(2) \
                and len(m.group(1)) == len(run[-1][2]) - len(m.group(2)):
            run.append((int(m.group(1)), m.group(2), n))
            continue
        flush()
        if m:
            run.append((int(m.group(1)), m.group(2), n))
        else:
            parts.append(n)
    flush()
    return ", ".join(parts)


def _describe_item(m: Missing) -> str:
    req = m.requirement
    tag = " (optional)" if req.optional else ""
    why = f" - {req.why}" if req.why else ""
    if not req.is_folder:
        return f"    missing file {m.path}{tag}{why}"
    if req.names:
        total = len(req.names)
        return (f"    missing in {m.path}/: {len(m.names)} of {total} files{tag}{why}: "
                f"{_compress_names(m.names)}")
    return (f"    {m.path}/ holds {m.found} files, at least {req.min_files} expected{tag}{why}")


def _describe_source(src: Source, root: Path, items: list[Missing]) -> list[str]:
    size = f", about {dl.human_size(src.approx_bytes)}" if src.approx_bytes else ""
    lines = [f"  from {src.url}", f"    ({src.what}{size}; {src.verification})"]
    for alt in src.urls[1:]:
        lines.append(f"    or the mirror {alt}")
    lines += [_describe_item(m) for m in items]
    for inner, dest in src.installs:
        what = ("its whole content" if inner == "" else
                f"its {inner[3:]}/ folder" if inner.startswith("**/") else f"{inner}/")
        lines.append(f"    put: unpack it and move {what} to {root / dest}/ (merging with what is there)")
    return lines


def describe_missing(name: str, root: os.PathLike | str | None = None,
                     categories: str | Iterable[str] | None = None,
                     missing: Sequence[Missing] | None = None) -> str:
    """The text `MissingDataError` carries for ``name`` under ``root``: which files are
    missing, from which URL to get them and where to put them. '' when nothing is missing."""
    root = Path(root) if root is not None else default_data_root()
    cats = _categories(name, categories)
    if missing is None:
        missing = find_missing(name, root, cats)
    if not missing:
        return ""
    if name == "toy":
        return (f"the toy dataset is not generated under {root / 'toy'}: run "
                f"data_prep.toy.generate_toy_dataset({str(root / 'toy')!r}) or "
                f"data_prep.setup.ensure_dataset('toy', {str(root)!r}) (no download needed)")
    head = (f"dataset {name!r} (categor{'y' if len(cats) == 1 else 'ies'} {', '.join(cats)}) "
            f"is incomplete under the data root {root.absolute()}:")
    lines = [head]
    by_source: dict[str, list[Missing]] = {}
    for m in missing:
        by_source.setdefault(m.requirement.source, []).append(m)
    for key, items in by_source.items():
        lines += _describe_source(SOURCES[key], root.absolute(), items)
    total = sum(SOURCES[k].approx_bytes or 0 for k in by_source)
    lines.append(f"Run the set-up online (not offline) to download and place them automatically "
                 f"(about {dl.human_size(total)} to download), or place the files by hand as above.")
    return "\n".join(lines)


def _describe_missing_model(name: str, dest: Path) -> str:
    src = MODEL_SOURCES[name]
    return (f"model {name!r} is missing: {dest}\n"
            f"  from {src.url}\n    ({src.what}, about {dl.human_size(src.approx_bytes)}; {src.verification})\n"
            f"    put: save it as {dest}\n"
            f"Run the set-up online (not offline) to download it automatically, or place the file by hand.")


class MissingDataError(UserError, FileNotFoundError):
    """Data or a model is missing; the message says which files, from which URL and where to put them.

    ``missing`` lists the `Missing` items (empty for a model); ``errors``
    maps a source key to the download/unpack error that stopped it. A command line exits with
    status 3 (`legacy_compat.cli.EXIT_MISSING_DATA`) on it.
    """

    exit_status = 3

    def __init__(self, message: str, missing: Sequence[Missing] = (), errors: dict | None = None):
        self.missing = list(missing)
        self.errors = dict(errors or {})
        if self.errors:
            message += "\nDownloads that failed:\n" + "\n".join(
                f"  {k}: {type(e).__name__}: {e}" for k, e in self.errors.items())
        super().__init__(message)

    def __str__(self) -> str:  # FileNotFoundError would format errno/filename otherwise
        return self.args[0]


# ----------------------------------------------------------------------------------------------
# Downloading and placing

def _merge_move(src: Path, dest: Path) -> int:
    """Move every file of ``src`` (a file or a folder) to the same place under ``dest``
    unless something is already there; return how many files moved."""
    if src.is_file() or src.is_symlink():
        if dest.exists():
            return 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return 1
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)                    # the common case: one rename
        return sum(1 for _ in _iter_files(dest))
    moved = 0
    for child in sorted(src.iterdir()):
        moved += _merge_move(child, dest / child.name)
    return moved


def _find_piece(staging: Path, inner: str) -> Path | None:
    """The unpacked path an install entry names (see `Source.installs`), or None."""
    if not inner:
        return staging
    if inner.startswith("**/"):
        name = inner[3:]
        hits = [staging / name] + sorted(p / name for p in staging.iterdir() if p.is_dir())
        return next((h for h in hits if h.exists()), None)
    piece = staging / inner
    return piece if piece.exists() else None


def _fetch_archive(src: Source, downloads: Path, mirror: str | None, progress: bool) -> Path:
    urls = ([mirror.rstrip("/") + "/" + src.filename] if mirror else []) + list(src.urls)
    errors = []
    for url in urls:
        try:
            return dl.download(url, downloads / src.filename, md5=src.md5, progress=progress)
        except dl.ChecksumError:
            raise
        except dl.DownloadError as exc:
            errors.append(str(exc))
    raise dl.DownloadError("; ".join(errors))


def _install_source(src: Source, root: Path, mirror: str | None, progress: bool, keep_archives: bool) -> None:
    """Download one archive, unpack it safely, and move its pieces into place."""
    downloads = root / "downloads"
    need = int((src.approx_bytes or 0) * (1 + src.unpacked_factor))
    dl.check_disk_space(root, need)
    archive = _fetch_archive(src, downloads, mirror, progress)
    staging = downloads / (src.filename + ".unpacked")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        dl.extract(archive, staging, progress=progress)
        for inner, dest in src.installs:
            piece = _find_piece(staging, inner)
            if piece is None:
                raise dl.ArchiveError(f"{archive} does not hold {inner or 'anything'} (unexpected layout; "
                                      f"expected {[i for i, _ in src.installs]})")
            _merge_move(piece, root / dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        archive.unlink(missing_ok=True)


@dataclass(frozen=True)
class ArchiveOptions:
    """Where the archives come from and what is fetched and kept: `mirror`, a URL prefix
    (``file:///...`` or ``http://...``) tried first for every archive, by its file name
    (`Source.filename`); `keep_archives` (False: an archive is deleted once unpacked);
    `include_optional` (False: the optional items, Pascal-Part, are not downloaded)."""

    mirror: str | None = None
    keep_archives: bool = False
    include_optional: bool = True


@dataclass(frozen=True)
class OwnImages:
    """The 'images' dataset (a folder of your own images, not in the original): the folder
    (`data_prep.images.ImageFolder`), where its landmarks' truth files are written (`truth_dir`,
    None: ``<root>/data_input``), the crop they are expressed in (`input_size`, None: 224)."""

    folder: ImageFolder
    truth_dir: os.PathLike | str | None = None
    input_size: int | None = None


def ensure_dataset(name: str, root: os.PathLike | str | None = None, offline: bool = False,
                   categories: str | Iterable[str] | None = None, *, progress: bool = True,
                   archives: ArchiveOptions = ArchiveOptions(), toy_options: dict | None = None,
                   images: OwnImages | None = None) -> DatasetPaths:
    """Make sure dataset ``name`` is under ``root`` (downloading what is missing); return its paths.

    Ports setup_ilsvrcanimalpart.m / setup_vocpart.m / setup_cub200.m (the
    ``conf`` they saved is `DatasetPaths.conf`). ``name`` is one of
    'ilsvrcanimalpart', 'vocpart', 'cub200', 'toy'; ``categories`` (default:
    all of the dataset's) limits what is checked. 'toy' is generated, not
    downloaded (``toy_options`` go to `data_prep.toy.generate_toy_dataset`).

    ``offline``: download nothing; raise `MissingDataError` when something
    required is missing. Online, each missing archive is downloaded to
    ``<root>/downloads`` (resumable), verified, unpacked safely and moved into
    place (existing files are never overwritten); a download that fails also
    ends in `MissingDataError`, naming the failure. ``archives``: the mirror tried first, whether
    archives are kept and optional items fetched (`ArchiveOptions`). Missing optional items
    (Pascal-Part) only warn.

    'images' (a folder of your own images, not in the original) needs ``images`` (`OwnImages`):
    the folder is checked whole, its landmarks written as truth files under its ``truth_dir``
    (default ``<root>/data_input``) in its ``input_size`` crop (default 224), and the shared
    negatives fetched unless it names its own (`_images_paths`).
    """
    _spec(name)
    root = Path(root) if root is not None else default_data_root()
    cats = _categories(name, categories)
    if name == "toy":
        return _ensure_toy(root, cats, toy_options or {}, offline)
    if name == "images":
        if images is None:
            raise DatasetError("dataset 'images' is a folder of your own pictures: give it with --images DIR")
        truth_dir = root / IMAGES_TRUTH if images.truth_dir is None else Path(images.truth_dir)
        image_fields = _images_paths(images.folder, truth_dir, images.input_size or 224, progress)
        if images.folder.negatives is not None:       # own negatives: nothing to fetch
            return replace(dataset_paths(name, root, cats), **image_fields)
    _check_manual(name, root, cats)
    missing = find_missing(name, root, cats)
    errors: dict[str, Exception] = {}
    if missing and not offline:
        keys = [m.requirement.source for m in missing if archives.include_optional or not m.requirement.optional]
        for key in dict.fromkeys(keys):
            try:
                _install_source(SOURCES[key], root, archives.mirror, progress, archives.keep_archives)
            except (dl.DownloadError, dl.ArchiveError, dl.InsufficientDiskSpaceError) as exc:
                errors[key] = exc
        missing = find_missing(name, root, cats)
    required = [m for m in missing if not m.requirement.optional]
    if required:
        raise MissingDataError(describe_missing(name, root, cats, missing), missing, errors)
    if missing:
        warnings.warn(str(MissingDataError(describe_missing(name, root, cats, missing), missing, errors)),
                      stacklevel=2)
    paths = dataset_paths(name, root, cats)
    if name == "helen" and not all(paths.truth_file(HELEN_CATEGORY, k).is_file() for k in HELEN_PARTS):
        write_helen_truth(paths.image_dir, paths.truth_dir)          # the landmarks' part truth, once
    return replace(paths, **image_fields) if name == "images" else paths


def _images_paths(folder: ImageFolder, truth_dir: Path, input_size: int, progress: bool) -> dict:
    """The 'images' dataset's set-up (data_prep.images.prepare_image_folder: every problem listed before
    anything is written; the landmarks' truth files), as `DatasetPaths` fields: the folder as image_dir,
    the truth files' folder, the landmarks' parts as part_list, the label maps' folder as anno_dir, own
    negatives, and in `extra` what the readers and the imdb cache need."""
    scanned = prepare_image_folder(folder, truth_dir, input_size, progress=progress)
    extra = {"image_folder": folder, "neg_files": tuple(scanned.negatives) if folder.negatives else None,
             "cache_settings": {"images": folder.options(), "images_fingerprint": scanned.fingerprint()}}
    fields = {"image_dir": folder.images, "truth_dir": truth_dir, "part_list": scanned.parts,
              "anno_dir": folder.part_masks, "input_size": int(input_size), "extra": extra}
    if folder.negatives is not None:
        fields["neg_dir"] = folder.negatives
    return fields


def _ensure_toy(root: Path, cats: tuple[str, ...], options: dict, offline: bool) -> DatasetPaths:
    """The toy dataset under root/toy, generated unless one made with `options` (`data_prep.toy.ToyOptions`'
    fields, and 'progress') is there."""
    base = root / "toy"
    wanted = dict(options)
    wanted.setdefault("categories", cats)
    progress = wanted.pop("progress", True)
    wanted = toy.ToyOptions(**wanted)
    if not toy.manifest_matches(base, wanted):
        toy.generate_toy_dataset(base, wanted, overwrite=True, progress=progress)
    return dataset_paths("toy", root, cats)


def ensure_model(name: str, root: os.PathLike | str | None = None, offline: bool = False, *,
                 mirror: str | None = None, progress: bool = True) -> Path:
    """Make sure MatConvNet model ``name`` is in ``root``; return the .mat file's path.

    Ports the model downloads of setup_matconvnet.m (``../nets/<file>``).
    ``name``: 'vgg-vd-16', 'alexnet', 'vgg-m', 'vgg-s' (demo.m's names) or the
    file name ('imagenet-vgg-verydeep-16.mat' ...). The MD5 is MatConvNet's
    published one; a file already there is kept without re-hashing (delete it
    to force a fresh download). Offline or on failure: `MissingDataError`.
    """
    key = _model_key(name)
    src = MODEL_SOURCES[key]
    root = Path(root) if root is not None else default_models_root()
    dest = root / src.filename
    if dest.is_file():
        return dest
    if offline:
        raise MissingDataError(_describe_missing_model(key, dest))
    urls = ([mirror.rstrip("/") + "/" + src.filename] if mirror else []) + list(src.urls)
    errors: dict[str, Exception] = {}
    try:
        dl.check_disk_space(root, src.approx_bytes or 0)
    except dl.InsufficientDiskSpaceError as exc:
        raise MissingDataError(_describe_missing_model(key, dest), errors={key: exc}) from exc
    for url in urls:
        try:
            return dl.download(url, dest, md5=src.md5, progress=progress)
        except dl.DownloadError as exc:
            errors[url] = exc
    raise MissingDataError(_describe_missing_model(key, dest), errors=errors)


def _model_key(name: str) -> str:
    if name in MODEL_SOURCES:
        return name
    for key, src in MODEL_SOURCES.items():
        if name in (src.filename, src.filename[:-4]):
            return key
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_SOURCES)} "
                     f"(files {', '.join(s.filename for s in MODEL_SOURCES.values())})")
