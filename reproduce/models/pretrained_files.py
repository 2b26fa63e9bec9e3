"""The MatConvNet ImageNet model files: where they sit, getting them (download, MD5 check), reading one.

Ports the model downloads of `setup_matconvnet.m` (the original kept them in ``../nets``) and the
`load(...)` of `tool/nets/*.m`. Which file each network loads (name, MatConvNet's published MD5,
URL) is on its row of `reproduce.models.registry.MODELS` (`ModelDef.pretrained`).

Models root (``root`` of `ensure_model`; default `default_models_root()`: ``$ICNN_MODELS_ROOT`` if
set, else ``./output/nets``): the four MatConvNet ImageNet models, ``imagenet-vgg-verydeep-16.mat``
etc. The download itself (progress bar, resume, checksum) is data_prep.download's; a file that is
missing offline, or that fails to download, raises data_prep.setup's `MissingDataError` whose
message says which file, from which URL, and where to put it.
"""
from __future__ import annotations

import os
from pathlib import Path

from data_prep import download as dl
from data_prep.setup import MissingDataError
from legacy_compat.simplenn import LayerSpec, load_matconvnet_model
from reproduce.models.registry import MODELS, PretrainedFile

__all__ = ["ENV_MODELS_ROOT", "default_models_root", "ensure_model", "describe_missing_model", "pretrained_file",
           "load_pretrained"]

ENV_MODELS_ROOT = "ICNN_MODELS_ROOT"


def default_models_root(output_dir: os.PathLike | str = "output") -> Path:
    """``$ICNN_MODELS_ROOT`` when set, else ``<output_dir>/nets`` (the original's ``../nets``)."""
    env = os.environ.get(ENV_MODELS_ROOT)
    return Path(env) if env else Path(output_dir) / "nets"


def pretrained_file(name: str) -> tuple[str, PretrainedFile]:
    """(model, its MatConvNet file) for a model name ('vgg-vd-16', 'alexnet', 'vgg-m', 'vgg-s': demo.m's)
    or a file name ('imagenet-vgg-verydeep-16.mat', with or without '.mat'); a ValueError naming the
    valid ones otherwise."""
    files = {model: row.pretrained for model, row in MODELS.items() if row.pretrained is not None}
    for model, file in files.items():
        if name in (model, file.filename, file.filename[:-4]):
            return model, file
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(files)} "
                     f"(files {', '.join(f.filename for f in files.values())})")


def describe_missing_model(model: str, dest: Path) -> str:
    """The text `MissingDataError` carries for a missing model file: the URL, the MD5, where to put it."""
    file = MODELS[model].pretrained
    return (f"model {model!r} is missing: {dest}\n"
            f"  from {file.url}\n    (MatConvNet ImageNet model {file.filename}, about "
            f"{dl.human_size(file.approx_bytes)}; MD5 {file.md5})\n"
            f"    put: save it as {dest}\n"
            f"Run the set-up online (not offline) to download it automatically, or place the file by hand.")


def ensure_model(name: str, root: os.PathLike | str | None = None, offline: bool = False, *,
                 mirror: str | None = None, progress: bool = True) -> Path:
    """Make sure MatConvNet model ``name`` is in ``root``; return the .mat file's path.

    Ports the model downloads of setup_matconvnet.m (``../nets/<file>``).
    ``name``: 'vgg-vd-16', 'alexnet', 'vgg-m', 'vgg-s' (demo.m's names) or the
    file name ('imagenet-vgg-verydeep-16.mat' ...). The MD5 is MatConvNet's
    published one; a file already there is kept without re-hashing (delete it
    to force a fresh download). ``mirror``: a URL prefix tried first, by the file's
    name. Offline or on failure: `MissingDataError`.
    """
    model, file = pretrained_file(name)
    root = Path(root) if root is not None else default_models_root()
    dest = root / file.filename
    if dest.is_file():
        return dest
    if offline:
        raise MissingDataError(describe_missing_model(model, dest))
    urls = ([mirror.rstrip("/") + "/" + file.filename] if mirror else []) + [file.url]
    errors: dict[str, Exception] = {}
    try:
        dl.check_disk_space(root, file.approx_bytes or 0)
    except dl.InsufficientDiskSpaceError as exc:
        raise MissingDataError(describe_missing_model(model, dest), errors={model: exc}) from exc
    for url in urls:
        try:
            return dl.download(url, dest, md5=file.md5, progress=progress)
        except dl.DownloadError as exc:
            errors[url] = exc
    raise MissingDataError(describe_missing_model(model, dest), errors=errors)


def load_pretrained(path: str | Path) -> tuple[list[LayerSpec], dict]:
    """A MatConvNet model file (what tool/nets/*.m loads) -> (LayerSpecs, its `net.meta` as MATLAB
    values), through legacy_compat.simplenn.load_matconvnet_model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained model file not found: {path}")
    specs, meta = load_matconvnet_model(path)
    return specs, meta.raw
