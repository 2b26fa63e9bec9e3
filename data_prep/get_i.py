"""getI: read an image, crop an object's box, resize it to the network input.

Ports data_input/*/getI.m (the three copies are identical but for how they
join folder and file name, which `ObjRecord.image_path` covers):

    I = imread([imgdir, folder, '/', filename])     % error naming the file if unreadable
    if d == 1: I = repmat(I, [1 1 3])                % grayscale -> RGB
    xmin = max(xmin, 1); xmax = min(xmax, w)         % clip the 1-based inclusive box
    ymin = max(ymin, 1); ymax = min(ymax, h)
    I_patch = imresize(single(I(ymin:ymax, xmin:xmax, :)), tarSize, 'bilinear')
    if IsFlip: I_patch = I_patch(:, end:-1:1, :); I = I(:, end:-1:1, :)

Arrays here are in image layout: H x W x 3 (uint8 for I, float32 0-255 for
the patch). `gather_patches` decodes, crops and resizes many objects on a
thread pool and yields them as N x 3 x H x W float32 blocks for the imdb.

Beyond the original (which would crash later or silently misread):
- CMYK, palette, grayscale+alpha and RGBA images are converted to RGB
  (MATLAB's imread returns 4 CMYK channels, which getImdb cannot store);
- a missing, unreadable or truncated image raises `ImageReadError` naming
  the file (PIL's truncated-image tolerance is never switched on);
- a box that lies wholly outside its image raises `BoxError` (MATLAB would
  hand an empty crop to imresize and fail there).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from legacy_compat.cli import UserError
from legacy_compat.imresize import imresize

from .readers import BndBox, DatasetError, ObjRecord

__all__ = ["ImageReadError", "BoxError", "read_image", "crop_box", "resize_patch", "get_i",
           "get_patch", "gather_patches", "default_workers"]

_RGB_CONVERTIBLE = {"CMYK", "P", "PA", "RGBA", "RGBX", "LA", "YCbCr", "La", "RGBa", "1"}


class ImageReadError(UserError, OSError):
    """An image could not be read; the message names the file and the reason."""

    #: Where to find every other bad image in one pass (said after the file and the reason).
    HINT = "`python -m data_prep.check --decode` lists every unreadable image of the chosen categories in one pass"

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot read the image {self.path}: {self.reason} ({self.HINT})"


class BoxError(DatasetError):
    """An object's box does not overlap its image."""


def read_image(path: os.PathLike | str) -> np.ndarray:
    """imread + getI's grayscale -> RGB: an H x W x 3 uint8 array.

    EXIF orientation is ignored, as MATLAB's imread ignores it. Other colour
    modes (CMYK, palette, with alpha) are converted to RGB by PIL.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a file")
    try:
        with Image.open(path) as im:
            im.load()   # decodes now: a truncated file raises here
            mode = im.mode
            if mode == "L":
                arr = np.asarray(im, dtype=np.uint8)
                return np.repeat(arr[:, :, None], 3, axis=2)
            if mode != "RGB":
                if mode not in _RGB_CONVERTIBLE:
                    raise ImageReadError(path, f"unsupported colour mode {mode!r} (8-bit images only)")
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ...
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(path, f"decoded to shape {arr.shape}, expected H x W x 3")
    return arr


def crop_box(image: np.ndarray, box: BndBox, where: str = "") -> np.ndarray:
    """I(ymin:ymax, xmin:xmax, :) with the box clipped to the image as getI clips it (a view)."""
    h, w = image.shape[:2]
    xmin, xmax = max(box.xmin, 1), min(box.xmax, w)
    ymin, ymax = max(box.ymin, 1), min(box.ymax, h)
    if xmin > xmax or ymin > ymax:
        raise BoxError(f"{where or 'box'}: box [xmin {box.xmin}, ymin {box.ymin}, xmax {box.xmax}, "
                       f"ymax {box.ymax}] does not overlap the {w} x {h} image")
    return image[ymin - 1:ymax, xmin - 1:xmax, :]


def _size2(tar_size: int | Sequence[int]) -> tuple[int, int]:
    if np.isscalar(tar_size):
        return int(tar_size), int(tar_size)   # type: ignore[arg-type]
    t = [int(v) for v in np.asarray(tar_size).reshape(-1)[:2]]
    if len(t) != 2 or t[0] < 1 or t[1] < 1:
        raise ValueError(f"tar_size must be [height, width] of positive ints, got {tar_size!r}")
    return t[0], t[1]


def resize_patch(patch: np.ndarray, tar_size: int | Sequence[int]) -> np.ndarray:
    """imresize(single(patch), tarSize, 'bilinear'): MATLAB's antialiased bilinear, float32 0-255."""
    return imresize(np.asarray(patch, dtype=np.float32), _size2(tar_size), "bilinear")


def get_i(obj: ObjRecord, imgdir: os.PathLike | str, tar_size: int | Sequence[int],
          is_flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """getI(obj, theConf, tarSize, IsFlip) -> (I_patch, I).

    I_patch: tar_h x tar_w x 3 float32 in 0-255; I: the decoded image (uint8
    H x W x 3). Both mirrored left-right when is_flip.
    """
    path = obj.image_path(imgdir)
    image = read_image(path)
    patch = resize_patch(crop_box(image, obj.bndbox, str(path)), tar_size)
    if is_flip:
        return patch[:, ::-1, :].copy(), image[:, ::-1, :].copy()
    return patch, image


def get_patch(obj: ObjRecord, imgdir: os.PathLike | str, tar_size: int | Sequence[int]) -> np.ndarray:
    """getI's I_patch, unflipped, as a 3 x H x W float32 array (the imdb's layout)."""
    path = obj.image_path(imgdir)
    patch = resize_patch(crop_box(read_image(path), obj.bndbox, str(path)), tar_size)
    return np.ascontiguousarray(patch.transpose(2, 0, 1))


def default_workers() -> int:
    """Threads for decoding: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def gather_patches(objs: Sequence[ObjRecord], imgdir: os.PathLike | str, tar_size: int | Sequence[int], *,
                   batch_size: int = 64, workers: int | None = None,
                   progress: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """getI over many objects: yields (start, block), block = the unflipped patches of
    objs[start:start + len(block)] as len x 3 x H x W float32, in order.

    Decoding and resizing run on `workers` threads (PIL's decoder and the
    sparse resize release the GIL); at most about two batches are in memory.
    `progress` is a tqdm description (None: no bar).
    """
    th, tw = _size2(tar_size)
    n = len(objs)
    workers = workers or default_workers()
    bar = None
    if progress is not None:
        bar = tqdm(total=n, desc=progress, unit="img", leave=False)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, n, batch_size):
                chunk = objs[start:start + batch_size]
                block = np.empty((len(chunk), 3, th, tw), dtype=np.float32)
                for k, patch in enumerate(pool.map(lambda o: get_patch(o, imgdir, (th, tw)), chunk)):
                    block[k] = patch
                if bar is not None:
                    bar.update(len(chunk))
                yield start, block
    finally:
        if bar is not None:
            bar.close()
