"""`python -m data_prep.check`: read every annotation, truth file and image header of a dataset, and
say what is wrong with what is there.

data_prep.setup says what is missing; this reads what is present, as the
original code would read it, and prints one row per category:

- objects: the annotation's objects (ILSVRC: the images of `<wnid>_obj/img/img`
  that readAnnotation.m numbers; VOC: the entries of truth_<cat>.mat; CUB: the
  images of the selection; Helen: the annotated faces; voc2010_crop: the lines of <category>_info.txt,
  positives and negatives; CelebA, one row for the whole set: the images of its partition file),
  and `kept`, those whose box passes minArea;
- images: the image files of the kept objects, opened with PIL for their
  header only (no pixel is decoded; with --decode every image is decoded whole, as the
  imdb build reads it): missing or unreadable ones are counted and each bad one listed;
- per truth_partNN.mat found (and every part the evaluation reads; Helen's are written by
  data_prep.setup from the landmarks; CelebA's parts are its five landmarks, read from its list;
  voc2010_crop has none): its
  entries, the entries with several objects (`pHW_center` 2 x K, `obj` 1 x K:
  getDistSqrtVar.m leaves them out, computeStability.m still counts the image),
  and the empty entries;
- missing files, unreadable files, and problems: a truth file whose number of
  entries is not the number of objects the evaluation indexes it with
  (computeStability.m reads `truth(img)` for every object), an entry with a
  part on an object skipped for minArea (getI fails on it), an entry whose
  `pHW_center` is not 2 x K or whose objects are not K.

Exit status: 1 when a file that is there cannot be read, or a problem is found
(each is named after the table); 0 otherwise. Missing files are reported in
the table but do not change the exit status: `data_prep.setup` (and demo.py
--offline) say where to get them. With only truth files (e.g. the original
repository's data_input folder), the annotations and images are reported
missing and every truth file is still read and checked; for ILSVRC the number
of entries is then compared with the category's known image count.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from legacy_compat.cli import add_data_root, add_debug, run_cli

from .celeba import CELEBA_LANDMARKS, find_celeba_files, read_celeba
from .cub200 import read_annotation_cub, read_annotation_sampling_cub, read_cub_tables, read_sampling
from .facts import CELEBA_ATTRIBUTES, DATASETS, ILSVRC_IMAGE_COUNTS
from .get_i import ImageReadError, read_image
from .helen import read_annotation_helen
from .ilsvrc import read_annotation_ilsvrc
from .readers import BndBox, DatasetError, ObjRecord, PartTruth, default_readcode, read_part_truth_file
from .setup import dataset_paths, default_data_root
from .voc2010_crop_lists import read_voc2010_crop
from .vocpart import read_annotation_voc, read_truth_voc

__all__ = ["PartReport", "CategoryReport", "check_category", "check_dataset", "find_categories",
           "format_table", "main"]

REAL_DATASETS = tuple(d for d in DATASETS if d not in ("toy", "images"))   # each checked by its own rule (_RULES)
CELEBA_ROW = "(all)"          # CelebA's one row: its images and landmarks do not depend on the attribute
_TRUTH_NAME = re.compile(r"^truth_part(\d+)\.mat$")


@dataclass
class PartReport:
    """One truth_partNN.mat: its entries, those with several objects, the empty ones."""

    part: int
    entries: int
    multi: int
    empty: int


@dataclass
class CategoryReport:
    """What `check_category` found for one category (None: not known, the file is missing or unreadable)."""

    dataset: str
    category: str
    objects: int | None = None
    kept: int | None = None
    images_checked: int = 0             # image files whose header was read
    parts: list[PartReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def multi_total(self) -> int:
        return sum(p.multi for p in self.parts)


# ================================================================ where things are
def _paths(dataset: str, root: Path, categories: Sequence[str] | None, truth_dir: Path | None) -> Any:
    spec = DATASETS[dataset]
    found = truth_dir if truth_dir is not None else (
        default_readcode(root, Path(spec.truth_dir).name) if dataset != "toy" else None)
    return dataset_paths(dataset, root, categories, truth_dir=found)


def find_categories(dataset: str, root: Path, truth_dir: Path | None = None) -> list[str]:
    """The categories of `dataset` with anything on disk: a truth folder, an annotation, images
    (CelebA: `CELEBA_ROW` when its folder is there: it is checked as a whole)."""
    if dataset == "celeba":
        return [CELEBA_ROW] if (root / DATASETS["celeba"].image_dir).is_dir() else []
    paths = _paths(dataset, root, None, truth_dir)
    return [c for c in paths.categories
            if any(p.exists() for p in [paths.truth_dir / c, *_RULES[dataset].on_disk(paths, c)])]


def _truth_files(paths: Any, category: str) -> dict[int, Path]:
    """Every truth_partNN.mat of the category's folder, plus the parts the evaluation reads."""
    files = {int(p): paths.truth_file(category, p) for p in paths.parts_for(category)}
    folder = paths.truth_dir / category
    if folder.is_dir():
        for f in folder.iterdir():
            m = _TRUTH_NAME.match(f.name)
            if m:
                files[int(m.group(1))] = f
    return dict(sorted(files.items()))


# ================================================================ annotations, one rule per dataset
def _ilsvrc_annotation(category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """ILSVRC (and the toy set, in its layout): <wnid>_obj/img/data.mat and its images."""
    data_mat = conf.imgdir / f"{category}_obj" / "img" / "data.mat"
    if not data_mat.is_file():
        rep.missing.append(str(data_mat))
        return None, None
    folder = conf.imgdir / f"{category}_obj" / "img" / "img"
    if not folder.is_dir():
        rep.missing.append(f"{folder}/ (the images)")
        return None, None
    objset = read_annotation_ilsvrc(category, conf)
    rep.objects = len(objset)
    return objset, objset


def _voc_annotation(category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """VOC Part: truth_<animal>.mat (readAnnotation.m reads it)."""
    path = conf.readcode / f"truth_{category}.mat"
    if not path.is_file():
        rep.missing.append(str(path))
        return None, None
    rep.objects = len(read_truth_voc(path))
    objset = read_annotation_voc(category, conf)
    return objset, objset


def _cub_annotation(category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """CUB-200-2011: its text tables; the evaluation indexes the truth files with sampling.mat's selection."""
    needed = [conf.catedir / n for n in ("images.txt", "bounding_boxes.txt", "image_class_labels.txt",
                                         "train_test_split.txt", "classes.txt")]
    absent = [str(p) for p in needed if not p.is_file()]
    sampling = conf.readcode / "sampling.mat"
    if absent:
        rep.missing.extend(absent)
        _check_sampling(sampling, rep)
        return None, None
    tables = read_cub_tables(conf)
    rep.objects = int(len(tables.image_ids))
    objset = read_annotation_cub(category, conf, tables=tables)[0]
    if not _check_sampling(sampling, rep):
        return objset, None
    return objset, read_annotation_sampling_cub(category, conf)


def _helen_annotation(category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """Helen: annotation/*.txt (194 landmarks a face) and the images they name; the truth files are
    written from those landmarks by data_prep.setup, one entry per face."""
    folder = conf.imgdir / "annotation"
    if not folder.is_dir():
        rep.missing.append(f"{folder}/ (Helen's annotation.zip, a manual download)")
        return None, None
    objset = read_annotation_helen(category, conf)
    rep.objects = len(objset)
    return objset, objset


def _voc2010_crop_annotation(category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """voc2010_crop: <category>_info.txt and the crops it names (positives and negatives); no parts."""
    path = conf.imgdir / f"{category}_info.txt"
    if not path.is_file():
        rep.missing.append(f"{path} (the other port's list, placed by hand)")
        return None, None
    entries = read_voc2010_crop(conf.imgdir, category)
    rep.objects = len(entries)
    return [ObjRecord("", e.path, category, BndBox(1, 1, 1, 1), k) for k, e in enumerate(entries, 1)], None


@dataclass(frozen=True)
class _Rule:
    """How one dataset is checked: where a category shows on disk, and its annotation reader."""

    on_disk: Callable[[Any, str], list[Path]]
    annotation: Callable[[str, Any, CategoryReport], tuple[list | None, list | None]]


_RULES: dict[str, _Rule] = {
    "ilsvrcanimalpart": _Rule(lambda p, c: [p.image_dir / f"{c}_obj"], _ilsvrc_annotation),
    "toy": _Rule(lambda p, c: [p.image_dir / f"{c}_obj"], _ilsvrc_annotation),
    "vocpart": _Rule(lambda p, c: [p.truth_dir / f"truth_{c}.mat"], _voc_annotation),
    "cub200": _Rule(lambda p, c: [p.cate_dir / "images.txt"], _cub_annotation),
    "helen": _Rule(lambda p, c: [p.image_dir / "annotation"], _helen_annotation),
    "voc2010_crop": _Rule(lambda p, c: [p.image_dir / f"{c}_info.txt"], _voc2010_crop_annotation),
}


def _annotation(dataset: str, category: str, conf: Any, rep: CategoryReport) -> tuple[list | None, list | None]:
    """(readAnnotation's objset, the objset the evaluation indexes the truth files with), or None each."""
    try:
        return _RULES[dataset].annotation(category, conf, rep)
    except (DatasetError, OSError, ValueError, KeyError) as exc:
        rep.unreadable.append((f"{dataset} {category} annotation", str(exc)))
        return None, None


def _check_celeba(root: Path, rep: CategoryReport, tick: Callable[[], None]) -> CategoryReport:
    """CelebA as a whole (`CELEBA_ROW`): its list files, the header's attributes, every listed image's
    header, and the five landmarks as parts (entries: images; empty: images without landmarks)."""
    folder = root / DATASETS["celeba"].image_dir
    try:
        files = find_celeba_files(folder)
    except DatasetError as exc:                 # says which list files are not there
        rep.missing.append(str(exc))
        return rep
    try:
        names, images = read_celeba(folder)
    except (DatasetError, OSError, ValueError) as exc:
        rep.unreadable.append((f"celeba under {folder}", str(exc)))
        return rep
    rep.objects = rep.kept = len(images)
    absent = [a for a in CELEBA_ATTRIBUTES if a not in names]
    if absent:
        rep.problems.append(f"{files.attributes}: no column {', '.join(absent)} (of CelebA's 40 attributes)")
    objs = [ObjRecord("", im.filename, "celeba", BndBox(1, 1, 1, 1), k) for k, im in enumerate(images, 1)]
    _check_images(objs, files.image_dir, rep, tick)
    if files.landmarks is None:
        rep.missing.append(f"{folder}/Anno/list_landmarks_align_celeba.txt (the part positions)")
        return rep
    empty = sum(im.landmarks is None for im in images)
    rep.parts = [PartReport(k, len(images), 0, empty) for k in range(1, len(CELEBA_LANDMARKS) + 1)]
    return rep


def _check_sampling(path: Path, rep: CategoryReport) -> bool:
    """CUB's sampling.mat (validObj) reads; missing or unreadable ones are reported."""
    if not path.is_file():
        rep.missing.append(str(path))
        return False
    try:
        read_sampling(path)
    except Exception as exc:  # noqa: BLE001 - reported, named
        rep.unreadable.append((str(path), f"{type(exc).__name__}: {exc}"))
        return False
    return True


def _image_header_ok(path: Path) -> str | None:
    """None when PIL reads the header (size and mode; no pixels decoded), else why not."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return f"image size {w} x {h}"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return str(exc)
    return None


def _image_decodes(path: Path) -> str | None:
    """None when the whole image decodes as the imdb build reads it (data_prep.get_i.read_image: a cut or
    corrupt JPEG fails here, though its header reads), else why not."""
    try:
        read_image(path)
    except ImageReadError as exc:
        return exc.reason
    return None


def _check_images(objset: Sequence[ObjRecord | None], imgdir: Path, rep: CategoryReport,
                  tick: Callable[[], None], decode: bool = False) -> None:
    seen: set[Path] = set()
    missing = 0
    for obj in objset:
        if obj is None:
            continue
        path = obj.image_path(imgdir)
        if path in seen:
            continue
        seen.add(path)
        tick()
        if not path.is_file():
            missing += 1
            continue
        why = _image_decodes(path) if decode else _image_header_ok(path)
        if why is not None:
            rep.unreadable.append((str(path), why))
    rep.images_checked = len(seen) - missing - sum(1 for p, _ in rep.unreadable if Path(p) in seen)
    if missing:
        rep.missing.append(f"{missing} of {len(seen)} images under {imgdir}")


# ================================================================ truth files
def _entry_problem(t: PartTruth) -> str | None:
    c = t.pHW_center
    if c is None or c.size == 0:
        return None
    if c.ndim != 2 or c.shape[0] != 2:
        return f"pHW_center is {' x '.join(map(str, c.shape))}, not 2 x K"
    if len(t.objects) != c.shape[1]:
        return f"{c.shape[1]} centres but {len(t.objects)} objects"
    return None


def _check_truth(path: Path, part: int, evaluated: list | None, expected: int | None,
                 rep: CategoryReport) -> None:
    if not path.is_file():
        rep.missing.append(str(path))
        return
    try:
        truth = read_part_truth_file(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read the file is reported, named
        rep.unreadable.append((str(path), f"{type(exc).__name__}: {exc}"))
        return
    rep.parts.append(PartReport(part, len(truth), sum(t.is_multi_object() for t in truth),
                                sum(t.is_empty() for t in truth)))
    bad = [(i, why) for i, t in enumerate(truth, start=1) if (why := _entry_problem(t)) is not None]
    if bad:
        shown = "; ".join(f"truth({i}): {why}" for i, why in bad[:3])
        rep.problems.append(f"{path}: {len(bad)} malformed entries ({shown})")
    if evaluated is not None:
        if len(truth) != len(evaluated):
            rep.problems.append(f"{path}: {len(truth)} entries, but the evaluation indexes it with "
                                f"{len(evaluated)} objects")
        skipped = [i for i, (t, o) in enumerate(zip(truth, evaluated), start=1) if o is None and not t.is_empty()]
        if skipped:
            rep.problems.append(f"{path}: {len(skipped)} entries with the part on objects skipped for minArea "
                                f"(first: truth({skipped[0]})); the evaluation cannot read their images")
    elif expected is not None and len(truth) != expected:
        rep.problems.append(f"{path}: {len(truth)} entries, but the category has {expected} images")


# ================================================================ one category, one dataset
def check_category(dataset: str, category: str, root: Path, truth_dir: Path | None = None,
                   tick: Callable[[], None] = lambda: None, decode: bool = False) -> CategoryReport:
    """Read one category's annotation, image headers (`decode`: every image whole) and truth files; see
    the module docstring."""
    rep = CategoryReport(dataset, category)
    if dataset == "celeba":
        return _check_celeba(root, rep, tick)
    paths = _paths(dataset, root, [category], truth_dir)
    conf = paths.data_conf()
    objset, evaluated = _annotation(dataset, category, conf, rep)
    if objset is not None:
        rep.kept = sum(o is not None for o in objset)
        _check_images(objset, conf.imgdir, rep, tick, decode)
    expected = ILSVRC_IMAGE_COUNTS.get(category) if dataset == "ilsvrcanimalpart" else None
    for part, path in _truth_files(paths, category).items():
        tick()
        _check_truth(path, part, evaluated, expected, rep)
    return rep


def check_dataset(dataset: str, root: Path, categories: Sequence[str] | None = None,
                  truth_dir: Path | None = None, progress: bool = True, decode: bool = False) -> list[CategoryReport]:
    """check_category for each category (given, or `find_categories`), with a progress bar."""
    cats = list(categories) if categories else find_categories(dataset, root, truth_dir)
    reports = []
    with tqdm(total=None, desc=f"{'decode' if decode else 'check'} {dataset}", unit="file",
              disable=None if progress else True, leave=False) as bar:
        for c in cats:
            bar.set_postfix_str(c)
            reports.append(check_category(dataset, c, root, truth_dir, tick=lambda: bar.update(1), decode=decode))
    return reports


# ================================================================ output
def _per_part(parts: Sequence[PartReport], attr: str) -> str:
    if not parts:
        return "-"
    values = [getattr(p, attr) for p in parts]
    if attr == "entries" and len(set(values)) == 1:
        return str(values[0])
    return "/".join(str(v) for v in values)


def _part_ids(parts: Sequence[PartReport]) -> str:
    ids = [p.part for p in parts]
    if not ids:
        return "-"
    if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 2:
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


HEADER = ("dataset", "category", "objects", "kept", "images", "parts", "entries", "multi-object", "empty",
          "missing", "unreadable", "problems")


def _row(r: CategoryReport) -> tuple[str, ...]:
    def n(v: int | None) -> str:
        return "-" if v is None else str(v)
    multi = _per_part(r.parts, "multi")
    if r.parts and len(r.parts) > 1:
        multi = f"{r.multi_total} ({multi})"
    return (r.dataset, r.category, n(r.objects), n(r.kept), str(r.images_checked) if r.kept is not None else "-",
            _part_ids(r.parts), _per_part(r.parts, "entries"), multi, _per_part(r.parts, "empty"),
            str(len(r.missing)), str(len(r.unreadable)), str(len(r.problems)))


def format_table(reports: Sequence[CategoryReport], markdown: bool = False) -> str:
    """One row per category: the columns of HEADER (per-part values joined with '/', in part order)."""
    rows = [HEADER] + [_row(r) for r in reports]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _details(reports: Sequence[CategoryReport]) -> list[str]:
    out = []
    for r in reports:
        for what in r.missing:
            out.append(f"missing     {r.dataset} {r.category}: {what}")
        for path, why in r.unreadable:
            out.append(f"UNREADABLE  {path}: {why}")
        for p in r.problems:
            out.append(f"PROBLEM     {p}")
    return out


# ================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read every annotation, part truth file (truth_partNN.mat) and image header of the datasets "
                    "under a data root, as the original code reads them, and print one row per category:\n"
                    "  objects     the annotation's objects; kept: those whose box passes minArea (50^2)\n"
                    "  images      image files of the kept objects whose header was read (PIL, no decoding);\n"
                    "              missing and unreadable ones are counted in those columns\n"
                    "  parts       the truth_partNN.mat files read (every one in the category's folder)\n"
                    "  entries     truth entries per part ('/'-separated in part order; one number when equal)\n"
                    "  multi-object  entries describing several objects (pHW_center 2 x K): the total, then "
                    "per part;\n"
                    "              getDistSqrtVar.m leaves them out, computeStability.m still counts the image\n"
                    "  empty       entries without the part, per part\n"
                    "  missing / unreadable / problems   counts; each is named below the table\n\n"
                    "data_prep.setup says what is missing; this says what is wrong with what is there. "
                    "Missing files are listed but do not fail the check. With only truth files present (for "
                    "example the original repository's code/data_input folder as <root>/data_input), the "
                    "annotations and images are reported missing and every truth file is still read; for "
                    "ILSVRC its entries are compared with the category's known image count.",
        epilog="exit status: 0 when every file present reads and agrees with the others; 1 when a file cannot be "
               "read or a problem is found (each named); 2 for bad arguments.\n"
               "examples:\n"
               "  python -m data_prep.check --data-root ../shared/data\n"
               "  python -m data_prep.check --dataset ilsvrcanimalpart --category n02391049 n01443537\n"
               "  python -m data_prep.check --dataset ilsvrcanimalpart --decode    # every image decoded")
    parser.add_argument("--dataset", nargs="+", choices=[*REAL_DATASETS, "toy"], default=None,
                        help="datasets to check (default: every dataset with something under the data root, "
                             "and toy when generated); celeba is checked as a whole (one row)")
    parser.add_argument("--category", nargs="+", default=None, metavar="C",
                        help="categories to check (default: every category of the dataset found on disk)")
    add_data_root(parser, help="datasets folder (default $ICNN_DATA_ROOT or output/data); the truth files are "
                               "looked for in <root>/data_input/ then <root>/original/ (../shared/data's layout)")
    parser.add_argument("--truth-dir", default=None,
                        help="folder of <category>/truth_partNN.mat (override; one dataset only)")
    parser.add_argument("--decode", action="store_true",
                        help="decode every image of the chosen categories whole, as the imdb build reads them "
                             "(slower: a JPEG cut short passes the header check but fails here); every bad "
                             "image is listed, in one pass")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug(parser)
    return parser


def _datasets(args: argparse.Namespace, root: Path, parser: argparse.ArgumentParser) -> list[str]:
    if args.dataset:
        return list(args.dataset)
    found = [d for d in REAL_DATASETS if find_categories(d, root)]
    if (root / "toy").is_dir():
        found.append("toy")
    if not found:
        parser.error(f"nothing of any dataset under {root} (give --data-root, or run data_prep.setup first)")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = Path(args.data_root) if args.data_root else default_data_root()
    if not root.is_dir():
        parser.error(f"--data-root {root} is not a folder")
    datasets = _datasets(args, root, parser)
    truth_dir = Path(args.truth_dir) if args.truth_dir else None
    if truth_dir is not None and len(datasets) != 1:
        parser.error("--truth-dir needs exactly one --dataset")
    if args.category and len(datasets) != 1:
        parser.error("--category needs exactly one --dataset")
    if args.category and datasets == ["celeba"]:
        parser.error("celeba is checked as a whole (its images and landmarks do not depend on the attribute): "
                     "drop --category")
    return run_cli("data_prep.check", lambda: _run(args, parser, root, datasets, truth_dir), debug=args.debug)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, root: Path, datasets: list[str],
         truth_dir: Path | None) -> int:
    reports = []
    for d in datasets:
        try:
            reports += check_dataset(d, root, args.category, truth_dir, progress=not args.no_progress,
                                     decode=args.decode)
        except ValueError as exc:          # an unknown category: setup's message lists the valid ones
            parser.error(str(exc))
    print(format_table(reports, markdown=args.markdown))
    for line in _details(reports):
        print(line)
    bad = sum(len(r.unreadable) + len(r.problems) for r in reports)
    files = sum(len(r.parts) for r in reports)
    print(f"\n{len(reports)} categories, {files} truth files read, "
          f"{sum(len(r.unreadable) for r in reports)} unreadable, {sum(len(r.problems) for r in reports)} problems, "
          f"{sum(len(r.missing) for r in reports)} missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
