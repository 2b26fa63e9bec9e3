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

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Experiment", "RunResult", "experiment_name", "prepare_dataset", "build_net", "build_imdb",
           "learn", "show_results", "run_experiment"]


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

    def __post_init__(self) -> None:
        self.categories = [self.categories] if isinstance(self.categories, str) else list(self.categories)
        self.out = Path(self.out)

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

    def line(self) -> str:
        from .evaluate import format_result_line
        return format_result_line(self.binary_error, self.stability)


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
    from .distributed import file_lock, launched_by_torchrun, rank_zero_first

    def guarded() -> Any:
        if not launched_by_torchrun():
            return fn()
        with file_lock(Path(exp.out) / ".cache.lock"):
            return fn()
    return rank_zero_first(guarded, what)


def prepare_dataset(exp: Experiment, input_size: int | None = None) -> Any:
    """setup_<dataset>.m: the dataset's paths, downloading (or generating, for 'toy') what is missing."""
    from data_prep.setup import ensure_dataset
    toy_options = dict(exp.toy_options)
    if exp.dataset == "toy" and input_size is not None:
        toy_options.setdefault("input_size", int(input_size))
    return _one_builder(exp, f"setting up the {exp.dataset} dataset", lambda: ensure_dataset(
        exp.dataset, root=exp.data_root, offline=exp.offline, categories=exp.categories, progress=exp.progress,
        toy_options=toy_options or None))


def _pretrained(exp: Experiment) -> Any:
    from .models import MODELS
    if exp.pretrained == "none":
        return None
    if exp.pretrained == "auto":
        if not MODELS[exp.model].pretrained_file:
            return None
        from data_prep.setup import ensure_model
        return _one_builder(exp, f"getting the {exp.model} model", lambda: ensure_model(
            exp.model, root=exp.models_root, offline=exp.offline, progress=exp.progress))
    path = Path(exp.pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model {path}: no such file")
    return path


def build_net(exp: Experiment) -> tuple[Any, Any, dict]:
    """network_init.m as learn_icnn.m / learn_icnn_multiclass.m call it: (net, trainOpts, meta)."""
    from .models import network_init
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
    from data_prep.annotations import read_annotation
    from data_prep.imdb import get_category_imdb, load_or_build_imdb, produce_imdb
    from data_prep.readers import count_objects
    conf = paths.data_conf()

    def category_imdb(category: str, cache: Path) -> Any:
        settings = {"dataset": exp.dataset, "category": category, "image_size": list(image_size),
                    "root": str(paths.root), "toy_options": exp.toy_options if exp.dataset == "toy" else None}
        return load_or_build_imdb(cache, lambda tmp: get_category_imdb(category, conf, image_size, out=tmp,
                                                                       progress=exp.progress), settings)

    if not exp.multiclass:
        return category_imdb(exp.categories[0], exp.imdb_dir)
    imdbs = [category_imdb(c, exp.out / "mat" / c / "imdb") for c in exp.categories]
    npos = [count_objects(read_annotation(c, conf)) for c in exp.categories]
    settings = {"dataset": exp.dataset, "categories": list(exp.categories), "image_size": list(image_size),
                "root": str(paths.root), "toy_options": exp.toy_options if exp.dataset == "toy" else None}
    return load_or_build_imdb(exp.imdb_dir, lambda tmp: produce_imdb(imdbs, list(exp.categories), npos, out=tmp),
                              settings)


def input_size(exp: Experiment) -> int:
    """The network's input size: exp.image_size, else network_init's default for the model (224, 227 for
    alexnet, 64 for tiny)."""
    from .models import MODELS
    return int(exp.image_size or MODELS[exp.model].image_size)


def image_size_of(meta: dict) -> tuple[int, int]:
    size = np.asarray(meta["image_size"]).reshape(-1)
    return int(size[0]), int(size[1])


# ------------------------------------------------------------------ the two steps
def learn(exp: Experiment, paths: Any = None) -> tuple[Any, dict, Any, Any]:
    """learn_icnn.m / learn_icnn_multiclass.m: (trained net, stats, imdb, dataset paths)."""
    from .train import SLICE_MAG_FILL_COLUMN1, SLICE_MAG_FILL_OWN_COLUMN, train
    net, opts, meta = build_net(exp)
    paths = paths if paths is not None else prepare_dataset(exp, image_size_of(meta)[0])
    imdb = build_imdb(exp, paths, image_size_of(meta))
    fill = SLICE_MAG_FILL_OWN_COLUMN if exp.fix_slicemag_quirk else SLICE_MAG_FILL_COLUMN1
    net, stats = train(net, imdb, opts, exp.exp_dir, device=exp.device, seed=exp.seed, save_mat=exp.save_mat,
                       progress=exp.progress, meta=meta, slice_mag_fill=fill)
    return net, stats, imdb, paths


def show_results(exp: Experiment, net: Any, stats: dict, mean_data: Any, paths: Any) -> RunResult:
    """showResults.m: the last epoch's validation error, the location stability of the first
    conv_mask layer (the conv layer at the same place for the ordinary CNN), and, for a
    single-class ICNN, step_drawRF.m's pictures (occluder and smoothing scaled to the input
    size when it is smaller than the original's 224: `draw_rf.scaled_rf_settings`). mean_data: the imdb
    the net was trained on, or its dataMean in any form `evaluate.read_mean_data` takes."""
    from .evaluate import CategorySource, evaluate_net, read_mean_data
    conf = paths.data_conf()
    error_name = "top1err" if exp.loss == "ourloss_softmaxlog" else "binerr"
    sources = [CategorySource.from_conf(c, conf, sorted(set(paths.parts_for(c)) | {1})) for c in exp.categories]
    mean = read_mean_data(mean_data)
    net = net.eval()
    evaluation = evaluate_net(net, stats, sources, mean, model=exp.model, part_list=paths.parts_for(exp.categories[0]),
                              multiclass=exp.multiclass, error_name=error_name, device=exp.device,
                              progress=exp.progress)
    result = RunResult(exp, evaluation.binary_error, evaluation.stability, stats, evaluation)
    from .distributed import is_main
    if exp.draw and exp.interpretable and not exp.multiclass and is_main():
        from .draw_rf import draw_rf, drawing_objset, scaled_rf_settings
        source = sources[0]
        objects = drawing_objset(source.name, conf)     # readAnnotation's objset (CUB: not the sampling one)
        result.drawing = draw_rf(net, source.name, objects, source.load_patch, mean, evaluation.layer_id,
                                 exp.draw_dir, device=exp.device, progress=exp.progress,
                                 **scaled_rf_settings(mean.shape[0]))
    return result


def run_experiment(exp: Experiment, paths: Any = None) -> RunResult:
    """demo.m after the settings: learn, then show results."""
    import time
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
