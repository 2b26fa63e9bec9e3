"""demo.m's two steps as functions: learn an ICNN (learn_icnn.m / learn_icnn_multiclass.m),
then show results (showResults.m).

One `Experiment` says what to run (dataset, categories, model, dropout rate, loss,
interpretable or ordinary CNN) and where (`out`, the folder that plays the role of
the original's `code/` folder):

    out/mat/<name>/imdb/            the imdb cache (the original's mat/<name>/imdb.mat)
    out/mat/<name>/net-epoch-N.pt   checkpoints (+ net-epoch-N.mat on request), net-train.png/.pdf
    out/mat/<name>-ordinary/        the same for the ordinary-CNN baseline (it reuses the imdb)
    out/draw_RF/                    step_drawRF.m's pictures and the contact sheet

`<name>` is the category, or for several categories the original's
learn_icnn_multiclass.m name ('_bird_cat_cow...', or the ids' last two characters
each when there are more than 10).
"""
from __future__ import annotations

import errno
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_prep.annotations import read_annotation
from data_prep.celeba import build_celeba_imdb, celeba_evaluation_set
from data_prep.download import check_disk_space
from data_prep.facts import IMAGES_TRUTH, NUM_NEGATIVES, DatasetFacts, dataset_facts
from data_prep.get_i import get_i
from data_prep.images import no_landmarks_note, own_negatives_count
from data_prep.imdb import cache_complete, get_category_imdb, load_or_build_imdb, produce_imdb
from data_prep.readers import count_objects
from data_prep.setup import OwnImages, default_data_root, ensure_dataset
from data_prep.toy import TOY_POSITIVES, read_manifest
from data_prep.voc2010_crop import build_voc2010_crop_imdb
from legacy_compat.cli import UserError
from reproduce.evaluation.location_instability import CategorySource, ForwardPass
from reproduce.evaluation.net_evaluation import (
    EvaluationSettings,
    evaluate_net,
    final_val_error,
    format_result_line,
    layer_id_for_model,
)
from reproduce.evaluation.net_features import read_mean_data
from reproduce.evaluation.receptive_fields import DrawingImages, draw_rf, drawing_objset, scaled_rf_settings
from reproduce.models.builder import network_init
from reproduce.models.pretrained_files import ensure_model
from reproduce.models.registry import MODELS
from reproduce.runtime.distributed import file_lock, is_main, launched_by_torchrun, rank_zero_first
from reproduce.training import checkpoints as ckpt
from reproduce.training.cnn_train import SLICE_MAG_FILL_COLUMN1, SLICE_MAG_FILL_OWN_COLUMN, train

__all__ = ["Experiment", "RunResult", "experiment_name", "prepare_dataset", "build_net", "build_imdb",
           "learn", "show_results", "run_experiment", "run_options", "check_resume_early",
           "imdb_build_bytes", "checkpoint_bytes", "space_needed", "check_space", "check_data_root", "write_test",
           "slice_mag_fill", "dataset_option_error", "save_mat_error"]


@dataclass
class Experiment:
    """What demo.m's settings choose, plus where the files go and how to run."""

    dataset: str
    categories: Sequence[str]
    model: str = "vgg-vd-16"
    dropout: float = 0.8
    loss: str = "ourloss_logistic"
    interpretable: bool = True
    out: Path = Path("output")
    data_root: Path | None = None
    models_root: Path | None = None
    pretrained: str = "auto"            # 'auto': the model's ImageNet file (downloaded); 'none'; or a path
    offline: bool = False
    device: str = "cpu"
    seed: int = 0
    epochs: int | None = None           # None: trainOpts.numEpochs (50 single-class, 80 multi-class)
    batch_size: int | None = None
    learning_rate_scale: float = 1.0
    save_mat: bool = False
    fix_slicemag_quirk: bool = False
    draw: bool = True                   # step_drawRF.m (single-class ICNNs, as showResults.m)
    toy_options: dict = field(default_factory=dict)
    progress: bool = True
    image_size: int | None = None       # the network's input size; None: the model's (MODELS[model].image_size)
    resume_anyway: bool = False         # resume from checkpoints written with other options (said)
    max_images: int | None = None       # CelebA: at most this many images of each partition (None: all)
    image_folder: Any = None            # dataset 'images': the data_prep.images.ImageFolder (--images DIR ...)

    def __post_init__(self) -> None:
        self.categories = [self.categories] if isinstance(self.categories, str) else list(self.categories)
        self.out = Path(self.out)

    @property
    def facts(self) -> DatasetFacts:
        """The dataset's row of data_prep.facts.DATASETS: what it has (parts, its own split, ...)."""
        return dataset_facts(self.dataset)

    @property
    def multiclass(self) -> bool:
        return len(self.categories) > 1

    @property
    def name(self) -> str:
        return experiment_name(self.categories)

    @property
    def imdb_dir(self) -> Path:
        return self.out / "mat" / self.name / "imdb"

    @property
    def exp_dir(self) -> Path:
        suffix = "" if self.interpretable else "-ordinary"
        return self.out / "mat" / f"{self.name}{suffix}"

    @property
    def draw_dir(self) -> Path:
        return self.out / "draw_RF"


@dataclass
class RunResult:
    """One experiment's figures: what showResults.m prints, and where things went."""

    experiment: Experiment
    binary_error: float
    stability: float
    stats: dict
    evaluation: Any = None
    drawing: Any = None
    seconds: dict = field(default_factory=dict)
    note: str | None = None             # why the location stability was not measured (its value is then NaN)

    def line(self) -> str:
        if self.note is not None:
            return format_result_line(self.binary_error, 0.0).split("     ")[0] + \
                f"     location stability not measured: {self.note}"
        return format_result_line(self.binary_error, self.stability)


def save_mat_error(model: str, save_mat: bool) -> str | None:
    """--save-mat with a net that has no net-epoch-N.mat form (the torchvision family), said before any work."""
    if save_mat and MODELS[model].family == "torchvision":
        return (f"--save-mat cannot write model {model!r} as MATLAB net-epoch-N.mat: "
                f"{ckpt.mat_checkpoint_problem(['torchvision'])}; drop --save-mat")
    return None


def dataset_option_error(dataset: str, multiclass: bool, loss: str = "ourloss_logistic") -> str | None:
    """What makes no sense for the dataset (said before any work), or None: voc2010_crop's lists are per
    category (one net per category, as the other port); CelebA's labels are 40 yes / no attributes of
    each face (multi-label), which a softmax over the labels cannot learn."""
    facts = dataset_facts(dataset)
    if facts.one_net_per_category and multiclass:
        return (f"{dataset} trains one net per category (the other port's lists are per category, each with its "
                "own negatives): drop --multiclass")
    if facts.attribute_labels and loss in ("ourloss_softmaxlog", "softmaxlog"):
        return (f"{dataset}'s labels are {len(facts.categories)} yes/no attributes of each face (multi-label), "
                "not one class per image: use the logistic loss")
    return None


def experiment_name(categories: Sequence[str]) -> str:
    """The category, or learn_icnn_multiclass.m's `str` for several categories."""
    categories = list(categories)
    if len(categories) == 1:
        return categories[0]
    if len(categories) > 10:
        return "".join(f"_{c[-2:]}" for c in categories)
    return "".join(f"_{c}" for c in categories)


# ------------------------------------------------------------------ data and net
def _one_builder(exp: Experiment, what: str, fn: Any) -> Any:
    """`fn()` (which builds or reads a cache) once per cache: with several data-parallel ranks,
    rank 0 first and the others after it (reproduce.distributed.rank_zero_first); under torchrun,
    one process at a time (a file lock in exp.out), for reproduce.paper's ranks that each run
    their own experiments. One process: just `fn()`."""

    def guarded() -> Any:
        if not launched_by_torchrun():
            return fn()
        with file_lock(Path(exp.out) / ".cache.lock"):
            return fn()
    return rank_zero_first(guarded, what)


def prepare_dataset(exp: Experiment, input_size: int | None = None) -> Any:
    """setup_<dataset>.m: the dataset's paths, downloading (or generating, for 'toy') what is missing."""
    toy_options = dict(exp.toy_options)
    if exp.facts.generated and input_size is not None:
        toy_options.setdefault("input_size", int(input_size))
    if exp.facts.generated:
        toy_options.setdefault("progress", exp.progress)      # the generator's bar follows the run's
    images = OwnImages(exp.image_folder, exp.out / IMAGES_TRUTH, input_size) if exp.facts.own_folder else None
    return _one_builder(exp, f"setting up the {exp.dataset} dataset", lambda: ensure_dataset(
        exp.dataset, root=exp.data_root, offline=exp.offline, categories=exp.categories, progress=exp.progress,
        toy_options=toy_options or None, images=images))


def _pretrained(exp: Experiment) -> Any:
    if exp.pretrained == "none":
        return None
    if exp.pretrained == "auto":
        if not MODELS[exp.model].pretrained_file:
            return None
        return _one_builder(exp, f"getting the {exp.model} model", lambda: ensure_model(
            exp.model, root=exp.models_root, offline=exp.offline, progress=exp.progress))
    path = Path(exp.pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model {path}: no such file")
    return path


def build_net(exp: Experiment) -> tuple[Any, Any, dict]:
    """network_init.m as learn_icnn.m / learn_icnn_multiclass.m call it: (net, trainOpts, meta)."""
    with warnings.catch_warnings():
        if exp.model == "tiny":
            warnings.simplefilter("ignore")
        net, opts, meta = network_init(len(exp.categories), exp.model, exp.dropout, pretrained=_pretrained(exp),
                                       loss_type=exp.loss, seed=exp.seed, multiclass_adjust=exp.multiclass,
                                       interpretable=exp.interpretable, image_size=exp.image_size)
    if exp.epochs is not None:
        opts.num_epochs = int(exp.epochs)
        opts.learning_rate = list(opts.learning_rate[:opts.num_epochs])
    if exp.batch_size is not None:
        opts.batch_size = int(exp.batch_size)
    if exp.learning_rate_scale != 1.0:
        opts.learning_rate = [lr * exp.learning_rate_scale for lr in opts.learning_rate]
    net.meta["classes"] = {"name": list(exp.categories), "description": list(exp.categories)}
    return net, opts, meta


def build_imdb(exp: Experiment, paths: Any, image_size: tuple[int, int]) -> Any:
    """The imdb as learn_icnn.m (getImdb / getImdb_cub200) or learn_icnn_multiclass.m
    (produceIMDB) builds it, cached on disk and reused as the original reuses imdb.mat.
    With several ranks, rank 0 builds the cache and the others wait, then read it (`_one_builder`)."""
    return _one_builder(exp, f"the imdb cache {exp.imdb_dir}", lambda: _build_imdb(exp, paths, image_size))


def _build_imdb(exp: Experiment, paths: Any, image_size: tuple[int, int]) -> Any:
    problem = dataset_option_error(exp.dataset, exp.multiclass, exp.loss)
    if problem is not None:
        raise UserError(problem)
    if exp.facts.whole_images:
        return _whole_image_imdb(exp, paths, image_size)
    conf = paths.data_conf()

    def category_imdb(category: str, cache: Path) -> Any:
        settings = {"dataset": exp.dataset, "category": category, "image_size": list(image_size),
                    "root": str(paths.root), "toy_options": exp.toy_options if exp.facts.generated else None,
                    **(getattr(paths, "extra", None) or {}).get("cache_settings", {})}
        return load_or_build_imdb(cache, lambda tmp: get_category_imdb(category, conf, image_size, out=tmp,
                                                                       progress=exp.progress), settings)

    if not exp.multiclass:
        return category_imdb(exp.categories[0], exp.imdb_dir)
    imdbs = [category_imdb(c, exp.out / "mat" / c / "imdb") for c in exp.categories]
    npos = [count_objects(read_annotation(c, conf)) for c in exp.categories]
    settings = {"dataset": exp.dataset, "categories": list(exp.categories), "image_size": list(image_size),
                "root": str(paths.root), "toy_options": exp.toy_options if exp.facts.generated else None}
    return load_or_build_imdb(exp.imdb_dir, lambda tmp: produce_imdb(imdbs, list(exp.categories), npos, out=tmp),
                              settings)


def _whole_image_imdb(exp: Experiment, paths: Any, image_size: tuple[int, int]) -> Any:
    """CelebA's imdb (one for all the chosen attributes: its label columns, data_prep.celeba) or
    voc2010_crop's (one category, data_prep.voc2010_crop): whole images, no mirrors, their own split."""
    settings = {"dataset": exp.dataset, "categories": list(exp.categories), "image_size": list(image_size),
                "root": str(paths.root), "max_images": exp.max_images}
    if exp.facts.attribute_labels:
        build = lambda tmp: build_celeba_imdb(paths.image_dir, image_size, limit=exp.max_images,  # noqa: E731
                                              attributes=list(exp.categories), progress=exp.progress, out=tmp)
    else:
        build = lambda tmp: build_voc2010_crop_imdb(paths.image_dir, exp.categories[0], image_size,  # noqa: E731
                                                    progress=exp.progress, out=tmp)
    return load_or_build_imdb(exp.imdb_dir, build, settings)


def input_size(exp: Experiment) -> int:
    """The network's input size: exp.image_size, else network_init's default for the model (224, 227 for
    alexnet, 64 for tiny)."""
    return int(exp.image_size or MODELS[exp.model].image_size)


def image_size_of(meta: dict) -> tuple[int, int]:
    size = np.asarray(meta["image_size"]).reshape(-1)
    return int(size[0]), int(size[1])


# ------------------------------------------------------------------ the two steps
def run_options(exp: Experiment) -> dict:
    """What defines a run beside the training options: stored in every checkpoint, compared when
    resuming (`reproduce.checkpoints.resume_differences`). The number of epochs is not among them:
    a longer run resumes a shorter one."""
    toy = {k: v for k, v in dict(exp.toy_options).items() if k != "progress"} if exp.facts.generated else {}
    return {"dataset": exp.dataset, "categories": list(exp.categories), "model": exp.model,
            "dropout": float(exp.dropout), "loss": exp.loss, "interpretable": bool(exp.interpretable),
            "image_size": input_size(exp), "pretrained": str(exp.pretrained),
            "learning_rate_scale": float(exp.learning_rate_scale),
            **({"max_images": exp.max_images} if exp.facts.image_limit else {}),
            **({"images": exp.image_folder.options()} if exp.image_folder is not None else {}),
            "toy_options": {k: list(v) if isinstance(v, tuple) else v for k, v in toy.items()}}


def slice_mag_fill(exp: Experiment) -> str:
    """The sliceMag update rule the experiment asks for (the original's column-1 quirk by default)."""
    return SLICE_MAG_FILL_OWN_COLUMN if exp.fix_slicemag_quirk else SLICE_MAG_FILL_COLUMN1


PLOT_BYTES = 256 * 1024                 # net-train.png + .pdf, rewritten each epoch (about 60 KB measured)


def imdb_build_bytes(exp: Experiment, image_size: int) -> int:
    """The disk an imdb build of `exp` needs at its peak, 0 when its cache is complete.

    getImdb's imdb holds 4 x the negatives (3 x positives with mirrors, then the negatives), float32
    3 x H x W; while it is assembled, the patches (one per object and per negative) sit in a
    temporary .npy beside it. The toy dataset's positives are known; a real category's are bounded
    by getImdb's tarN (3 x the negatives). A multi-class run builds each category's imdb, then
    produceIMDB's (about as large as their sum)."""
    row = 3 * int(image_size) ** 2 * 4
    if exp.facts.whole_images:                         # whole images, written once into the cache's file
        n = exp.facts.whole_images
        if exp.facts.image_limit and exp.max_images is not None:
            n = min(n, 2 * int(exp.max_images))          # the training and validation partitions
        return 0 if cache_complete(exp.imdb_dir) else n * row
    if exp.facts.generated:
        n_pos, n_neg = int(exp.toy_options.get("n_pos", TOY_POSITIVES)), int(exp.toy_options.get("n_neg", NUM_NEGATIVES))
    else:
        n_neg = own_negatives_count(exp.image_folder) or NUM_NEGATIVES    # getNegObjSet.m's MaxObjNum
        n_pos = 3 * n_neg
    one = (4 * n_neg + n_pos + n_neg) * row
    if not exp.multiclass:
        return 0 if cache_complete(exp.imdb_dir) else one
    singles = sum(0 if cache_complete(exp.out / "mat" / c / "imdb") else one for c in exp.categories)
    combined = 0 if cache_complete(exp.imdb_dir) else 4 * n_neg * row * len(exp.categories)
    return singles + combined


def checkpoint_bytes(net: Any) -> int:
    """One net-epoch-N.pt of `net`, slightly over: its parameters and buffers, the SGD momentum of
    each parameter, and the layer specs (their weights reference the parameters; their other fields,
    posTemp among them, and the zip layout add about 4 %: 5.17 MB for the tiny net's 4.98 MB)."""
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return int(1.05 * (2 * params + buffers)) + 128 * 1024


def space_needed(exp: Experiment, net: Any, opts: Any) -> dict[str, int]:
    """What the rest of a run writes into `exp.out`: the imdb build (unless cached) and a checkpoint
    (plus its .mat with save_mat) and the plots for each epoch still to train; resuming at epoch k
    of n needs n - k epochs, not n."""
    num_epochs = opts["num_epochs"] if isinstance(opts, dict) else opts.num_epochs
    remaining = max(0, int(num_epochs) - ckpt.last_checkpoint_epoch(exp.exp_dir))
    per_epoch = checkpoint_bytes(net) * (2 if exp.save_mat else 1) + PLOT_BYTES
    return {"imdb": imdb_build_bytes(exp, input_size(exp)), "checkpoints": remaining * per_epoch,
            "epochs": remaining}


def check_space(exp: Experiment, net: Any, opts: Any) -> None:
    """`InsufficientDiskSpaceError` (said before the imdb is built) unless `space_needed` is free."""
    need = space_needed(exp, net, opts)
    check_disk_space(exp.out, need["imdb"] + need["checkpoints"])


def write_test(folder: Path) -> None:
    """Write and remove a small file in `folder`: an OSError says the folder does not take files."""
    probe = Path(folder) / f".write-test-{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()


def check_data_root(exp: Experiment) -> None:
    """Before any work: the data folder must take the files the run will write there (the toy
    dataset when not generated yet, downloads unless offline); a read-only folder that already
    holds the data is fine with --offline. A `UserError` naming the folder otherwise."""
    root = Path(exp.data_root) if exp.data_root is not None else default_data_root()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent             # the folder that would hold it: nothing is created here
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(existing))
        write_test(existing)
    except OSError as exc:
        generated = exp.facts.generated and read_manifest(root / "toy") is not None
        if (exp.offline and not exp.facts.generated) or generated:
            return
        raise UserError(f"the data folder {root} is not writable ({exc.strerror or exc}); choose another "
                        f"--data-root{'' if exp.facts.generated else ', or --offline if the dataset is all there'}") from None


def check_resume_early(exp: Experiment) -> None:
    """Before the data, the net and the imdb are built: a folder whose last checkpoint records other
    options than `exp` stops the run here (train checks again, the network included); so do options
    that cannot work with the model (`save_mat_error`)."""
    if (problem := save_mat_error(exp.model, exp.save_mat)) is not None:
        raise UserError(problem)
    start = ckpt.last_checkpoint_epoch(exp.exp_dir)
    if start == 0:
        return
    files = ckpt.find_checkpoints(exp.exp_dir)[start]
    source = files.get("pt") or files.get("mat")
    requested = {"run": run_options(exp), "seed": int(exp.seed), "slice_mag_fill": slice_mag_fill(exp)}
    ckpt.check_resume(exp.exp_dir, source, ckpt.recorded_options(source), requested,
                      resume_anyway=exp.resume_anyway)


def learn(exp: Experiment, paths: Any = None) -> tuple[Any, dict, Any, Any]:
    """learn_icnn.m / learn_icnn_multiclass.m: (trained net, stats, imdb, dataset paths)."""
    check_resume_early(exp)
    net, opts, meta = build_net(exp)
    check_space(exp, net, opts)
    paths = paths if paths is not None else prepare_dataset(exp, image_size_of(meta)[0])
    imdb = build_imdb(exp, paths, image_size_of(meta))
    net, stats = train(net, imdb, opts, exp.exp_dir, device=exp.device, seed=exp.seed, save_mat=exp.save_mat,
                       progress=exp.progress, meta=meta, slice_mag_fill=slice_mag_fill(exp),
                       run_options=run_options(exp), resume_anyway=exp.resume_anyway)
    return net, stats, imdb, paths


def show_results(exp: Experiment, net: Any, stats: dict, mean_data: Any, paths: Any) -> RunResult:
    """showResults.m: the last epoch's validation error, the location stability of the first
    conv_mask layer (the conv layer at the same place for the ordinary CNN), and, for a
    single-class ICNN, step_drawRF.m's pictures (occluder and smoothing scaled to the input
    size when it is smaller than the original's 224: `draw_rf.scaled_rf_settings`). mean_data: the imdb
    the net was trained on, or its dataMean in any form `evaluate.read_mean_data` takes.
    A dataset without parts (voc2010_crop; a folder of your own images without --landmarks) gives the
    binary error only, and says why (`RunResult.note`; your own images are still drawn);
    CelebA is measured on its five landmarks (`_celeba_sources`)."""
    conf = paths.data_conf()
    error_name = "top1err" if exp.loss == "ourloss_softmaxlog" else "binerr"
    mean = read_mean_data(mean_data)
    net = net.eval()
    if not (paths.part_list if exp.facts.own_folder else exp.facts.part_list):   # own images: --landmarks
        note = no_landmarks_note() if exp.facts.own_folder else \
            f"{exp.dataset} has no part annotations (binary error only)"
        result = RunResult(exp, final_val_error(stats, error_name), float("nan"), stats, note=note)
        if exp.facts.own_folder:
            source = CategorySource.from_conf(exp.categories[0], conf, [])
            result.drawing = _draw(exp, net, conf, source, mean, layer_id_for_model(exp.model))
        return result
    if exp.facts.attribute_labels:
        sources, note = _celeba_sources(exp, paths, mean.shape[0])
        if not sources:
            return RunResult(exp, final_val_error(stats, error_name), float("nan"), stats, note=note)
    else:
        sources = [CategorySource.from_conf(c, conf, sorted(set(paths.parts_for(c)) | {1})) for c in exp.categories]
    settings = EvaluationSettings(model=exp.model, part_list=paths.parts_for(exp.categories[0]),
                                  multiclass=exp.multiclass, error_name=error_name)
    evaluation = evaluate_net(net, stats, sources, mean, settings, ForwardPass(exp.device, progress=exp.progress))
    result = RunResult(exp, evaluation.binary_error, evaluation.stability, stats, evaluation)
    if not exp.facts.attribute_labels:         # whole faces per attribute: nothing step_drawRF.m draws
        result.drawing = _draw(exp, net, conf, sources[0], mean, evaluation.layer_id)
    return result


def _draw(exp: Experiment, net: Any, conf: Any, source: CategorySource, mean: np.ndarray, layer_id: int) -> Any:
    """step_drawRF.m's pictures of a single-class ICNN (None otherwise, and on ranks other than 0)."""
    if not (exp.draw and exp.interpretable and not exp.multiclass and is_main()):
        return None
    objects = drawing_objset(source.name, conf)     # readAnnotation's objset (CUB: not the sampling one)
    return draw_rf(net, DrawingImages(source.name, objects, source.load_patch), mean, layer_id, exp.draw_dir,
                   device=exp.device, progress=exp.progress, **scaled_rf_settings(mean.shape[0]))


def _celeba_sources(exp: Experiment, paths: Any, size: int) -> tuple[list[CategorySource], str | None]:
    """One source per attribute: its validation images (the imdb's, `max_images`) with the attribute,
    whole, the five landmarks as parts (data_prep.celeba.celeba_evaluation_set). An attribute no such
    image has is left out (the original measures a category on its own objects); (sources, what was
    left out or None)."""
    root = Path(paths.image_dir)

    def load(obj: Any, hw: tuple[int, int]) -> np.ndarray:
        return get_i(obj, root, hw, False)[0]

    sources, absent = [], []
    for c in exp.categories:
        objects, truth = celeba_evaluation_set(root, c, size, limit=exp.max_images)
        if objects:
            sources.append(CategorySource(c, objects, load, truth))
        else:
            absent.append(c)
    if not absent:
        return sources, None
    note = (f"no validation image has the attribute{'s' if len(absent) > 1 else ''} {', '.join(absent)}"
            + ("" if sources else ": nothing to measure on"))
    if sources:
        warnings.warn(f"celeba: location stability over {len(sources)} of {len(exp.categories)} attributes ({note})",
                      RuntimeWarning, stacklevel=2)
    return sources, note


def run_experiment(exp: Experiment, paths: Any = None) -> RunResult:
    """demo.m after the settings: learn, then show results."""
    t0 = time.perf_counter()
    net, stats, imdb, paths = learn(exp, paths)
    t1 = time.perf_counter()
    result = show_results(exp, net, stats, imdb, paths)
    t2 = time.perf_counter()
    result.seconds = {"learn": t1 - t0, "show_results": t2 - t1}
    return result


def ordinary_counterpart(exp: Experiment) -> Experiment:
    """The same experiment with the ordinary CNN (plain conv layers instead of conv_mask)."""
    return replace(exp, interpretable=False, draw=False)
