"""The imdb: the training images of a category, built once and cached on disk.

Ports tool/main/getImdb.m, tool/main/getImdb_cub200.m and produceIMDB of
learn_icnn_multiclass.m, and the original's reuse of `imdb.mat`.

`Imdb` is the contract training builds on:

    data       N x 3 x H x W float32, the dataset mean already subtracted
               (may be a read-only np.memmap of the cache's data.npy)
    labels     N x L float32, +1 / -1
    set        (N,) uint8, 1 train, 2 val
    data_mean  3 x H x W float32
    classes    list of L category names
    order      (N,) int64, MATLAB's images.order (1-based: image j of the
               unshuffled imdb is data[order[j] - 1]); None when not shuffled

Building is split in two so that the golden cases can replay MATLAB's
random draws: gathering the getI patches (`data_prep.get_i`) and
assembling the imdb from the patches plus the permutation (`assemble_*`).
MATLAB's `randperm` cannot be reproduced in numpy, so every builder takes
`perms` (the recorded draws, 1-based); without them it draws
`legacy_randperm(n, seed)`, documented below.

Memory: the distinct patches (each object once, each negative once) are
gathered into a temporary .npy with positioned writes while the training
mean is summed (float64); then every image of the imdb is written once, in
its final shuffled place, flipped and with the mean subtracted, chunk by
chunk, into the output (an in-memory array, or the cache's data.npy, which
is never mapped while building). Peak memory is a few chunks (32 MB each)
plus, for an in-memory build, the imdb itself; never the 3-4 copies
getImdb.m holds. Disk: the imdb plus the distinct patches.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from legacy_compat import MatStruct, cell
from legacy_compat.atomic import atomic_write_bytes
from legacy_compat.matio import savemat
from legacy_compat.mattypes import cell_items, is_cell
from legacy_compat.numerics import mlinspace, mround

from .annotations import read_annotation
from .cub200 import read_annotation_cub, read_cub_tables
from .get_i import gather_patches
from .negatives import get_neg_objset
from .readers import DataConf, DatasetError, ObjRecord

__all__ = [
    "Imdb", "SETS", "TRAIN_RATE", "POS_RATE", "CUB_NEG_REPEAT", "FORMAT_VERSION",
    "legacy_randperm", "order_from_perm", "get_imdb_layout", "get_imdb_cub200_layout",
    "assemble_imdb", "assemble_imdb_cub200", "produce_imdb", "produce_imdb_from_objects",
    "get_imdb", "get_imdb_cub200", "get_category_imdb",
    "load_or_build_imdb", "load_cached_imdb", "imdb_fingerprint", "save_imdb_mat",
    "ImdbLayout", "image_rows", "subtract_training_mean",
]

SETS = ("train", "val", "test")      # imdb.meta.sets
TRAIN_RATE = 0.9                     # getImdb.m / produceIMDB: trainRate
POS_RATE = 0.75                      # getImdb.m: posRate
CUB_NEG_REPEAT = 4                   # getImdb_cub200.m: each negative four times
FORMAT_VERSION = 1                   # of the on-disk cache
_DATA_FILE = "data.npy"
_META_FILE = "imdb_meta.npz"
_MARKER_FILE = "imdb.complete.json"
_CHUNK_BYTES = 32 * 2 ** 20          # rows moved per step while building / subtracting


# ----------------------------------------------------------------- the contract
@dataclass
class Imdb:
    """An imdb (see the module docstring for the fields)."""

    data: np.ndarray
    labels: np.ndarray
    set: np.ndarray
    data_mean: np.ndarray
    classes: list[str]
    order: np.ndarray | None = None
    cache_dir: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = self.data.shape[0]
        if self.data.ndim != 4 or self.data.shape[1] != 3:
            raise ValueError(f"Imdb.data must be N x 3 x H x W, got {self.data.shape}")
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(n, -1)
        self.set = np.asarray(self.set, dtype=np.uint8).reshape(-1)
        self.data_mean = np.asarray(self.data_mean, dtype=np.float32)
        self.classes = [str(c) for c in self.classes]
        if self.set.shape[0] != n:
            raise ValueError(f"Imdb.set has {self.set.shape[0]} entries for {n} images")
        if self.data_mean.shape != self.data.shape[1:]:
            raise ValueError(f"Imdb.data_mean is {self.data_mean.shape}, images are {self.data.shape[1:]}")
        if self.labels.shape[1] != len(self.classes):
            raise ValueError(f"Imdb.labels has {self.labels.shape[1]} columns for {len(self.classes)} classes")
        if self.order is not None:
            self.order = np.asarray(self.order).reshape(-1).astype(np.int64)
            if self.order.shape[0] != n:
                raise ValueError(f"Imdb.order has {self.order.shape[0]} entries for {n} images")

    @property
    def num_images(self) -> int:
        return int(self.data.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.data.shape[2]), int(self.data.shape[3])

    def train_indices(self) -> np.ndarray:
        """0-based indices of the training images (set == 1)."""
        return np.flatnonzero(self.set == 1)

    def val_indices(self) -> np.ndarray:
        """0-based indices of the validation images (set == 2), as `find(imdb.images.set==2)`."""
        return np.flatnonzero(self.set == 2)

    def to_matlab(self) -> MatStruct:
        """The imdb as MATLAB holds it: images.data H x W x 3 x N (a view of data),
        labels L x N, set 1 x N uint8, order 1 x N (double), meta.classes/sets/dataMean."""
        images = MatStruct(data=np.transpose(self.data, (2, 3, 1, 0)),
                           labels=np.ascontiguousarray(self.labels.T),
                           set=self.set.reshape(1, -1).copy())
        if self.order is not None:
            images["order"] = self.order.astype(np.float64).reshape(1, -1)
        meta = MatStruct(classes=cell(self.classes), sets=cell(SETS),
                         dataMean=np.ascontiguousarray(self.data_mean.transpose(1, 2, 0)))
        return MatStruct(images=images, meta=meta)

    @classmethod
    def from_matlab(cls, value: MatStruct) -> "Imdb":
        """From an imdb struct (images, meta) as loadmat reads imdb.mat or a golden case holds it."""
        try:
            images, meta = value["images"], value["meta"]
            data = np.asarray(images["data"], dtype=np.float32)
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"not an imdb struct (needs images.data and meta): {exc}") from None
        data = data.reshape(data.shape + (1,) * (4 - data.ndim))
        labels = np.asarray(images["labels"], dtype=np.float32)
        labels = labels.reshape(-1, data.shape[3])   # L x N (also 1 x 1 x L x N)
        classes = meta.get("classes", [])
        classes = [str(c) for c in cell_items(classes)] if is_cell(classes) else [str(classes)]
        order = images.get("order")
        mean = np.asarray(meta["dataMean"], dtype=np.float32)
        mean = mean.reshape(mean.shape + (1,) * (3 - mean.ndim))
        return cls(data=np.ascontiguousarray(data.transpose(3, 2, 0, 1)), labels=labels.T,
                   set=np.asarray(images["set"]).reshape(-1), data_mean=mean.transpose(2, 0, 1),
                   classes=classes, order=None if order is None or np.size(order) == 0 else np.asarray(order))


# ----------------------------------------------------------------- permutations
def legacy_randperm(n: int, seed: int = 0) -> np.ndarray:
    """The default shuffle when no recorded draw is given: a 1-based permutation of 1..n.

    `[~, p] = sort(rand(1, n))` after `rng(seed)`: MATLAB's randperm before
    R2011b, with MATLAB's Mersenne Twister stream (rng(0) seeds it with
    5489; numpy's RandomState(5489).random_sample() is the same stream).
    Current MATLAB's randperm draws differently, so this is NOT the
    permutation a current MATLAB would give; pass `perms` to replay one.
    """
    rs = np.random.RandomState(5489 if seed == 0 else seed)
    return np.argsort(rs.random_sample(int(n)), kind="stable").astype(np.int64) + 1


def _one_perm(perms: Any, n: int, what: str) -> np.ndarray | None:
    """The first recorded randperm draw (1-based), checked to permute 1..n."""
    if perms is None:
        return None
    if is_cell(perms) or isinstance(perms, (list, tuple)):
        items = cell_items(perms) if is_cell(perms) else list(perms)
        if not items:
            return None
        perms = items[0]
    p = np.asarray(perms).reshape(-1)
    if p.size != n or not np.array_equal(np.sort(p), np.arange(1, n + 1)):
        raise ValueError(f"{what}: perms must be a permutation of 1..{n} (MATLAB randperm({n})), got {p.size} values")
    return p.astype(np.int64)


def order_from_perm(perm: np.ndarray) -> np.ndarray:
    """`[~, order] = sort(list)`: the inverse permutation, 1-based (int64)."""
    perm = np.asarray(perm, dtype=np.int64).reshape(-1)
    order = np.empty_like(perm)
    order[perm - 1] = np.arange(1, perm.size + 1)
    return order


# ----------------------------------------------------------------- layouts
@dataclass
class ImdbLayout:
    """Where each image of an imdb comes from, in the unshuffled order.

    source[k]: index of the patch image k shows (positives 0..P-1, then
    negatives P..P+Q-1); flip[k]: mirrored; labels (N x L), set (N,).
    """

    source: np.ndarray
    flip: np.ndarray
    labels: np.ndarray
    set: np.ndarray

    @property
    def n(self) -> int:
        return int(self.source.size)


#: How the train/val split picks its images: `split(n)` -> the 1-based training indices of n.
SplitFn = Callable[[int], np.ndarray]
#: How the training mean is taken: `mean(chunks, count)` over the training rows (float32
#: arrays, in the unshuffled order) -> the mean image, float32.
MeanFn = Callable[[Iterable[np.ndarray], int], np.ndarray]


def linspace_split(n: int) -> np.ndarray:
    """getImdb.m / produceIMDB's training picks: round(linspace(1, n, round(trainRate * n))), 1-based."""
    return mround(mlinspace(1, n, int(mround(np.float64(n * TRAIN_RATE))))).astype(np.int64)


def get_imdb_layout(num_pos: int, num_neg: int, *, split: SplitFn = linspace_split) -> ImdbLayout:
    """getImdb.m's arithmetic: positives and mirrors repeated to tarN, then the negatives.

    tarN = round(posRate/(1-posRate) * num_neg) (3 x num_neg); the 2*num_pos
    patches (object i, then its mirror) are repeated repN = ceil(tarN /
    (2 num_pos)) times and cut at tarN. Training images: positives
    round(linspace(1, num_pos, round(0.9 num_pos))) with both mirrors in
    every repetition (those <= tarN), negatives round(linspace(1, num_neg,
    round(0.9 num_neg))) (`split`, default `linspace_split`).
    """
    if num_pos < 1:
        raise DatasetError("getImdb: no positive objects (every box was skipped or the category is empty)")
    if num_neg < 1:
        raise DatasetError("getImdb: no negative images")
    tar_n = int(mround(np.float64(POS_RATE / (1 - POS_RATE) * num_neg)))
    rep_n = int(math.ceil(tar_n / (num_pos * 2)))
    lp = split(num_pos)
    lp = np.concatenate([lp * 2 - 1, lp * 2])
    if rep_n > 1:
        lp = np.sort((lp[None, :] + (np.arange(rep_n)[:, None] * (num_pos * 2))).reshape(-1), kind="stable")
    lp = lp[lp <= tar_n]
    ln = split(num_neg)
    total = tar_n + num_neg
    k = np.arange(tar_n) % (2 * num_pos)
    source = np.concatenate([k // 2, num_pos + np.arange(num_neg)]).astype(np.int64)
    flip = np.concatenate([k % 2 == 1, np.zeros(num_neg, dtype=bool)])
    labels = -np.ones((total, 1), dtype=np.float32)
    labels[:tar_n] = 1
    set_ = np.full(total, 2, dtype=np.uint8)
    set_[np.concatenate([lp, ln + tar_n]) - 1] = 1
    return ImdbLayout(source, flip, labels, set_)


def get_imdb_cub200_layout(num_pos: int, num_neg_unique: int, train_list: Sequence[int]) -> ImdbLayout:
    """getImdb_cub200.m's arithmetic: positives (no mirrors), each negative four times in a row.

    Training images: `trainList` (1-based positions, as given) and the first
    round(num_neg / 2) negatives; the rest validation.
    """
    if num_pos < 1:
        raise DatasetError("getImdb_cub200: no positive objects")
    num_neg = CUB_NEG_REPEAT * num_neg_unique
    total = num_pos + num_neg
    train_list = np.asarray(train_list, dtype=np.int64).reshape(-1)
    if train_list.size and (train_list.min() < 1 or train_list.max() > total):
        raise DatasetError(f"getImdb_cub200: trainList holds {int(train_list.max())} but the imdb has {total} images "
                           f"(MATLAB would silently grow images.set past the data)")
    source = np.concatenate([np.arange(num_pos), num_pos + np.repeat(np.arange(num_neg_unique), CUB_NEG_REPEAT)])
    labels = -np.ones((total, 1), dtype=np.float32)
    labels[:num_pos] = 1
    set_ = np.full(total, 2, dtype=np.uint8)
    neg_train = num_pos + np.arange(1, int(mround(np.float64(num_neg * 0.5))) + 1)
    set_[np.concatenate([train_list, neg_train]) - 1] = 1
    return ImdbLayout(source.astype(np.int64), np.zeros(total, dtype=bool), labels, set_)


# ----------------------------------------------------------------- row stores
class _ArrayRows:
    """An in-memory N x 3 x H x W float32 output."""

    def __init__(self, shape: tuple[int, ...]):
        self.array = np.empty(shape, dtype=np.float32)

    def write_range(self, start: int, rows: np.ndarray) -> None:
        self.array[start:start + rows.shape[0]] = rows

    def finish(self) -> np.ndarray:
        return self.array

    def abort(self) -> None:
        self.array = np.empty((0,), dtype=np.float32)


class _NpyFileRows:
    """An N x 3 x H x W float32 .npy file accessed with positioned I/O (never mapped while built),
    so its pages are the OS's file cache, not the process's memory."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.shape[1:])) * 4
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w+b", buffering=0)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": self.shape}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        self.offset = buf.tell()
        self.fh.write(buf.getvalue())
        self.fh.truncate(self.offset + self.row_bytes * self.shape[0])

    def write_range(self, start: int, rows: np.ndarray) -> None:
        mv = memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B")
        done, base = 0, self.offset + start * self.row_bytes
        while done < len(mv):
            done += os.pwrite(self.fh.fileno(), mv[done:], base + done)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start,) + self.shape[1:], dtype=np.float32)
        mv = memoryview(out).cast("B")
        done, base = 0, self.offset + start * self.row_bytes
        while done < len(mv):
            got = os.preadv(self.fh.fileno(), [mv[done:]], base + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at row {start}")
            done += got
        return out

    def finish(self) -> np.ndarray:
        os.fsync(self.fh.fileno())
        self.fh.close()
        return np.load(self.path, mmap_mode="r")

    def close(self) -> None:
        self.fh.close()

    def abort(self) -> None:
        try:
            self.fh.close()
        finally:
            self.path.unlink(missing_ok=True)


def _rows_per_chunk(row_shape: tuple[int, ...], n: int | None = None) -> int:
    """Rows moved per step: at most _CHUNK_BYTES, and at most 1/32 of the imdb."""
    rows = max(1, _CHUNK_BYTES // (int(np.prod(row_shape)) * 4))
    return rows if n is None else max(1, min(rows, -(-int(n) // 32)))


def _new_store(out: os.PathLike | str | None, shape: tuple[int, ...]) -> Any:
    return _NpyFileRows(Path(out), shape) if out is not None else _ArrayRows(shape)


# ----------------------------------------------------------------- the unique patches
PatchInput = Any   # an N x 3 x H x W array, or (count, callable returning an iterator of (start, block))


def _is_lazy(p: PatchInput) -> bool:
    return isinstance(p, tuple) and len(p) == 2 and callable(p[1])


def _count(p: PatchInput) -> int:
    return int(p[0]) if _is_lazy(p) else int(np.shape(p)[0])


class _Sources:
    """The distinct patches an imdb is made of (positives, then negatives), read by index.

    Arrays are used in place; lazy sources (getI over a dataset) are gathered
    once into a temporary .npy beside the output (or in the system temp
    folder) by positioned writes, so that they cost file cache, not memory.
    While gathering, the sums the training mean needs are taken: each patch
    weighted by the number of training images that show it unflipped
    (acc) and flipped (acc_flip), in float64.
    """

    def __init__(self, pos: PatchInput, neg: PatchInput, image_size: tuple[int, int] | None,
                 tmp_dir: Path | None, train_unflipped: np.ndarray, train_flipped: np.ndarray):
        self.n_pos, self.n_neg = _count(pos), _count(neg)
        self.arrays: list[np.ndarray] | None = None
        self.file: _NpyFileRows | None = None
        self._tmp_dir: str | None = None
        if not _is_lazy(pos) and not _is_lazy(neg):
            self.arrays = [np.asarray(pos, dtype=np.float32), np.asarray(neg, dtype=np.float32)]
            for a, what in zip(self.arrays, ("pos", "neg")):
                if a.ndim != 4 or a.shape[1] != 3:
                    raise ValueError(f"{what} patches must be N x 3 x H x W, got {a.shape}")
            if self.arrays[0].shape[1:] != self.arrays[1].shape[1:]:
                raise ValueError(f"pos patches {self.arrays[0].shape[1:]} and neg {self.arrays[1].shape[1:]} differ")
            self.row_shape = self.arrays[0].shape[1:]
            blocks = [(0, pos), (self.n_pos, neg)]
        else:
            if image_size is None:
                raise ValueError("image_size is needed with lazy patch sources")
            self.row_shape = (3,) + tuple(int(v) for v in image_size)
            if tmp_dir is None:
                self._tmp_dir = tempfile.mkdtemp(prefix="imdb_patches_")
                tmp_dir = Path(self._tmp_dir)
            self.file = _NpyFileRows(Path(tmp_dir) / f".patches-{os.getpid()}-{id(self)}.npy",
                                     (self.n_pos + self.n_neg,) + self.row_shape)
            blocks = [(0, pos), (self.n_pos, neg)]
        self.acc = np.zeros(self.row_shape, dtype=np.float64)
        self.acc_flip = np.zeros(self.row_shape, dtype=np.float64)
        try:
            self._gather(blocks, train_unflipped, train_flipped)
        except BaseException:
            self.close()
            raise

    def _gather(self, blocks: list, train_unflipped: np.ndarray, train_flipped: np.ndarray) -> None:
        for base, p in blocks:
            for start, block in self._iter_blocks(p):
                block = np.asarray(block, dtype=np.float32)
                if block.shape[1:] != self.row_shape:
                    raise ValueError(f"patch block of shape {block.shape[1:]}, expected {self.row_shape}")
                lo, hi = base + start, base + start + block.shape[0]
                if self.file is not None:
                    self.file.write_range(lo, block)
                w0, w1 = train_unflipped[lo:hi], train_flipped[lo:hi]
                if w0.any():
                    self.acc += np.tensordot(w0.astype(np.float64), block, axes=1)
                if w1.any():
                    self.acc_flip += np.tensordot(w1.astype(np.float64), block, axes=1)

    def _iter_blocks(self, p: PatchInput) -> Iterator[tuple[int, np.ndarray]]:
        if _is_lazy(p):
            yield from p[1]()
            return
        arr = np.asarray(p, dtype=np.float32)
        step = _rows_per_chunk(arr.shape[1:], arr.shape[0])
        for s in range(0, arr.shape[0], step):
            yield s, arr[s:s + step]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Patches idx (any order, repeats allowed) as a new len(idx) x 3 x H x W array."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((idx.size,) + tuple(self.row_shape), dtype=np.float32)
        if self.arrays is not None:
            is_pos = idx < self.n_pos
            out[is_pos] = self.arrays[0][idx[is_pos]]
            out[~is_pos] = self.arrays[1][idx[~is_pos] - self.n_pos]
            return out
        uniq, inv = np.unique(idx, return_inverse=True)      # read each patch once, in file order
        runs = np.split(np.arange(uniq.size), np.flatnonzero(np.diff(uniq) != 1) + 1)
        got = np.empty((uniq.size,) + tuple(self.row_shape), dtype=np.float32)
        for r in runs:
            if r.size:
                got[r[0]:r[-1] + 1] = self.file.read(int(uniq[r[0]]), int(uniq[r[-1]]) + 1)
        out[:] = got[inv.reshape(-1)]
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.abort()            # a temporary file: close and delete
            self.file = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None


def _slot_rows(sources: _Sources, layout: ImdbLayout, slots: np.ndarray) -> np.ndarray:
    """The images of unshuffled slots `slots`, mirrored where the layout says."""
    rows = sources.rows(layout.source[slots])
    fl = layout.flip[slots]
    if fl.any():
        rows[fl] = rows[fl][..., ::-1]
    return rows


def _training_mean(sources: _Sources, layout: ImdbLayout, mean: MeanFn | None) -> np.ndarray:
    """mean(data(:,:,:,set==1), 4) as float32.

    Default (`mean` None): the weighted float64 sums taken while gathering, divided, rounded
    once (the accurate mean). A `mean` function gets the training rows instead, chunk by chunk
    in the order of the unshuffled imdb (the golden adapters pass Octave's single-precision
    running sum, which differs from this by float32 rounding, ~1e-5 relative).
    """
    train = np.flatnonzero(layout.set == 1)
    if train.size == 0:
        raise DatasetError("the imdb has no training images: the training mean is undefined")
    if mean is None:
        return ((sources.acc + sources.acc_flip[..., ::-1]) / train.size).astype(np.float32)
    step = _rows_per_chunk(tuple(sources.row_shape), train.size)
    chunks = (_slot_rows(sources, layout, train[s:s + step]) for s in range(0, train.size, step))
    return np.asarray(mean(chunks, int(train.size)), dtype=np.float32)


def _assemble(layout: ImdbLayout, pos: PatchInput, neg: PatchInput, perm: np.ndarray | None, classes: Sequence[str],
              image_size: tuple[int, int] | None, out: os.PathLike | str | None, mean_fn: MeanFn | None) -> Imdb:
    """Gather the distinct patches (and the mean), then write every image once, in its final
    (shuffled) order, with the mean subtracted: data(:,:,:,k) = patch(list(k)) - dataMean."""
    n = layout.n
    need = int(layout.source.max()) + 1
    if need > _count(pos) + _count(neg):
        raise ValueError(f"the layout needs {need} patches, got {_count(pos) + _count(neg)}")
    train = layout.set == 1
    n_src = _count(pos) + _count(neg)
    w0 = np.bincount(layout.source[train & ~layout.flip], minlength=n_src)
    w1 = np.bincount(layout.source[train & layout.flip], minlength=n_src)
    sources = _Sources(pos, neg, image_size, Path(out).parent if out is not None else None, w0, w1)
    store = None
    try:
        mean = _training_mean(sources, layout, mean_fn)
        slot_at = perm - 1 if perm is not None else np.arange(n)     # unshuffled slot shown at each place
        store = _new_store(out, (n,) + tuple(sources.row_shape))
        step = _rows_per_chunk(tuple(sources.row_shape), n)
        for start in range(0, n, step):
            rows = _slot_rows(sources, layout, slot_at[start:start + step])
            np.subtract(rows, mean, out=rows)
            store.write_range(start, rows)
        data = store.finish()
    except BaseException:
        if store is not None:
            store.abort()
        raise
    finally:
        sources.close()
    return Imdb(data=data, labels=layout.labels[slot_at], set=layout.set[slot_at], data_mean=mean,
                classes=list(classes), order=None if perm is None else order_from_perm(perm))


def _perm_for(is_train: bool, perms: Any, seed: int, n: int, what: str) -> np.ndarray | None:
    if not is_train:
        return None
    p = _one_perm(perms, n, what)
    return p if p is not None else legacy_randperm(n, seed)


def assemble_imdb(pos: PatchInput, neg: PatchInput, classes: Sequence[str] = ("cate",), *, is_train: bool = True,
                  perms: Any = None, seed: int = 0, image_size: tuple[int, int] | None = None,
                  out: os.PathLike | str | None = None, layout: ImdbLayout | None = None,
                  mean: MeanFn | None = None) -> Imdb:
    """getImdb.m from the getI patches: pos (unflipped object patches) and neg, each
    N x 3 x H x W float32 0-255, or lazy sources `(count, blocks)` where blocks() yields
    (start, block) as `data_prep.get_i.gather_patches` does (then image_size is needed).

    Mirrors, repetition to tarN, the train/val split, the training mean
    subtracted, and (is_train) the shuffle by `perms` (MATLAB's recorded
    randperm(N), 1-based; a list/cell of draws uses the first), or by
    `legacy_randperm(N, seed)`. `out`: write the data to this .npy (the
    returned data is then a read-only memmap of it). `layout`: default `get_imdb_layout` of
    the counts; `mean`: how the training mean is taken (see `_training_mean`).
    """
    layout = layout if layout is not None else get_imdb_layout(_count(pos), _count(neg))
    perm = _perm_for(is_train, perms, seed, layout.n, "getImdb")
    return _assemble(layout, pos, neg, perm, classes, image_size, out, mean)


def assemble_imdb_cub200(pos: PatchInput, neg: PatchInput, train_list: Sequence[int],
                         classes: Sequence[str] = ("cub200",), *, is_train: bool = True, perms: Any = None,
                         seed: int = 0, image_size: tuple[int, int] | None = None,
                         out: os.PathLike | str | None = None, mean: MeanFn | None = None) -> Imdb:
    """getImdb_cub200.m from the getI patches: `neg` holds each negative ONCE (it is used four
    times); `train_list` the 1-based training positions (readAnnotation's trainList)."""
    layout = get_imdb_cub200_layout(_count(pos), _count(neg), train_list)
    perm = _perm_for(is_train, perms, seed, layout.n, "getImdb_cub200")
    return _assemble(layout, pos, neg, perm, classes, image_size, out, mean)


# ----------------------------------------------------------------- produceIMDB
def _produce_rows(im: Imdb, idx: np.ndarray) -> np.ndarray:
    """data(:,:,:,idx) + dataMean of one category imdb, in float32 (reading the source in file order)."""
    uniq, inv = np.unique(idx, return_inverse=True)
    rows = np.asarray(im.data[uniq], dtype=np.float32)[inv.reshape(-1)]
    rows += im.data_mean
    return rows


def _produce_picks(category_imdbs: Sequence[Imdb], names: Sequence[str], npos: Sequence[int]) -> list[np.ndarray]:
    """Per category: the indices of its first 2 * npos positives (unshuffled), repeated to
    minSampleNum and cut at maxSampleNum (produceIMDB's sample counts)."""
    max_n, min_n = (400, 100) if len(names) > 10 else (1000000, 1500)
    picks = []
    for im, name, npo in zip(category_imdbs, names, npos):
        unshuffle = (im.order - 1) if im.order is not None else np.arange(im.num_images)
        pos_list = np.flatnonzero(im.labels[unshuffle, 0] == 1)
        need = int(npo) * 2
        if pos_list.size < need:
            raise DatasetError(f"produceIMDB: category {name!r} has {pos_list.size} positive images, "
                               f"fewer than 2 x {int(npo)} objects")
        lst = pos_list[:need]
        if lst.size < min_n:
            lst = np.tile(lst, int(math.ceil(min_n / lst.size)))[:min_n]
        lst = lst[:min(lst.size, max_n)]
        picks.append(unshuffle[lst])
    return picks


def _float64_mean(chunks: Iterable[np.ndarray], count: int) -> np.ndarray:
    """The accurate training mean: float64 sums, divided, rounded once to float32."""
    acc = None
    for rows in chunks:
        part = rows.sum(axis=0, dtype=np.float64)
        acc = part if acc is None else acc + part
    return (acc / count).astype(np.float32)


def image_rows(out: os.PathLike | str | None, n: int, size: tuple[int, int]) -> np.ndarray:
    """An N x 3 x H x W float32 array for an imdb's images: in memory, or (`out`, the .npy path
    `load_or_build_imdb` hands a builder) a memory-mapped .npy file, which the cache then takes over."""
    shape = (int(n), 3, int(size[0]), int(size[1]))
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return np.lib.format.open_memmap(Path(out), mode="w+", dtype=np.float32, shape=shape)


def subtract_training_mean(data: np.ndarray, train: np.ndarray) -> np.ndarray:
    """imdb.images.data minus mean(data(:,:,:,set==1), 4), in place and chunk by chunk (`data` may be
    a memory-mapped file larger than memory): the float64 sums, divided, rounded once to float32
    (as `assemble_imdb`'s default). Returns the mean (3 x H x W)."""
    idx = np.flatnonzero(np.asarray(train, dtype=bool))
    if idx.size == 0:
        raise DatasetError("the imdb has no training images: the training mean is undefined")
    step = _rows_per_chunk(tuple(data.shape[1:]), data.shape[0])
    mean = _float64_mean((np.asarray(data[idx[s:s + step]]) for s in range(0, idx.size, step)), int(idx.size))
    for s in range(0, data.shape[0], step):
        data[s:s + step] -= mean
    return mean


def produce_imdb(category_imdbs: Sequence[Imdb], names: Sequence[str], npos: Sequence[int], *,
                 out: os.PathLike | str | None = None, split: SplitFn = linspace_split,
                 mean: MeanFn | None = None) -> Imdb:
    """produceIMDB (learn_icnn_multiclass.m): one multi-class imdb from per-category imdbs.

    For category i: undo its shuffle (images.order), take its first
    2 * npos[i] positives (each object and its mirror; npos[i] is the number
    of objects readAnnotation gives, `numel(objset)`), repeat them to at
    least minSampleNum (1500; 100 when more than 10 classes) and cut at
    maxSampleNum (1e6; 400), add its dataMean back; label +1 for class i and
    -1 for the others. Then the linspace train/val split (`split`), the new training
    mean (`mean`, default float64 sums) subtracted, order 1..N (no shuffle). The category
    imdbs are read twice (the mean, then the data), never held whole.
    """
    label_num = len(names)
    if label_num != len(category_imdbs) or label_num != len(npos):
        raise ValueError(f"produce_imdb: {len(category_imdbs)} imdbs, {label_num} names, {len(npos)} npos")
    picks = _produce_picks(category_imdbs, names, npos)
    row_shape = (3,) + category_imdbs[0].image_size
    for im, name in zip(category_imdbs, names):
        if (3,) + im.image_size != row_shape:
            raise DatasetError(f"produceIMDB: category {name!r} has {im.image_size} images, expected {row_shape[1:]}")
    total = sum(p.size for p in picks)
    set_ = np.full(total, 2, dtype=np.uint8)
    set_[split(total) - 1] = 1
    labels = -np.ones((total, label_num), dtype=np.float32)
    cat_of = np.concatenate([np.full(p.size, i) for i, p in enumerate(picks)])   # category of every image
    src_of = np.concatenate(picks)                                                # its index in that category
    labels[np.arange(total), cat_of] = 1
    step = _rows_per_chunk(row_shape, total)

    def chunks(select: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, select.size, step):
            part = select[s:s + step]
            rows = np.empty((part.size,) + row_shape, dtype=np.float32)
            for i in np.unique(cat_of[part]):
                here = cat_of[part] == i
                rows[here] = _produce_rows(category_imdbs[int(i)], src_of[part][here])
            yield part, rows

    train = np.flatnonzero(set_ == 1)
    if train.size == 0:
        raise DatasetError("produceIMDB: no training images")
    data_mean = np.asarray((mean or _float64_mean)((rows for _, rows in chunks(train)), int(train.size)),
                           dtype=np.float32)
    store = _new_store(out, (total,) + row_shape)
    try:
        for part, rows in chunks(np.arange(total)):
            np.subtract(rows, data_mean, out=rows)
            store.write_range(int(part[0]), rows)
        data = store.finish()
    except BaseException:
        store.abort()
        raise
    return Imdb(data=data, labels=labels, set=set_, data_mean=data_mean, classes=list(names),
                order=np.arange(1, total + 1, dtype=np.int64))


def _produce_sample_counts(num_pos: int, num_classes: int) -> np.ndarray:
    """produceIMDB's picks of one category as indices into getImdb's unshuffled positives
    (object j // 2, mirrored when j is odd): its first 2 * num_pos, repeated to minSampleNum and cut
    at maxSampleNum (`_produce_picks`'s counts)."""
    max_n, min_n = (400, 100) if num_classes > 10 else (1000000, 1500)
    lst = np.arange(2 * int(num_pos))
    if lst.size < min_n:
        lst = np.tile(lst, int(math.ceil(min_n / lst.size)))[:min_n]
    return lst[:min(lst.size, max_n)]


def produce_imdb_from_objects(objsets: Sequence[Sequence[ObjRecord | None]], names: Sequence[str], imgdir: Path,
                              image_size: Sequence[int], *, out: os.PathLike | str | None = None,
                              workers: int | None = None, progress: bool = True) -> Imdb:
    """produceIMDB's multi-class imdb (learn_icnn_multiclass.m) built from each category's objects
    directly, without the per-category getImdb imdbs (not in the original: those hold 3,000
    positives and the 1,000 negatives each, 2.4 GB at 224 x 224, of which produceIMDB keeps at most
    400 positives when there are more than 10 classes).

    The rows are the same as `produce_imdb` of the getImdb imdbs: getImdb's unshuffled positives
    are object 1, its mirror, object 2, its mirror, ... repeated, and produceIMDB takes the first
    2 * npos of them (with their dataMean added back: the raw getI patches), repeated to
    minSampleNum and cut at maxSampleNum; label +1 for its class and -1 for the others; the
    linspace train/val split, the training mean (float64 sums) subtracted, order 1..N. Only the
    objects that are picked are decoded (at most 200 a category with more than 10 classes).
    Memory: one category's patches at a time; `out` a .npy path: the data is a memory-mapped file."""
    size = (int(image_size[0]), int(image_size[1]))
    objs = [[o for o in objset if o is not None] for objset in objsets]
    empty = [n for n, o in zip(names, objs) if not o]
    if empty or len(objs) != len(names):
        raise DatasetError(f"produceIMDB: {len(objs)} object sets for {len(names)} names; no objects in "
                           f"{', '.join(map(str, empty)) or '-'}")
    picks = [_produce_sample_counts(len(o), len(names)) for o in objs]
    total = int(sum(p.size for p in picks))
    data = image_rows(out, total, size)
    labels = -np.ones((total, len(names)), dtype=np.float32)
    start = 0
    for i, (name, obj, pick) in enumerate(zip(names, objs, picks)):
        source = (pick % (2 * len(obj))) // 2
        used = obj[:int(source.max()) + 1]
        patches = np.empty((len(used), 3) + size, dtype=np.float32)
        for s, block in gather_patches(used, imgdir, size, workers=workers,
                                       progress=f"{name} ({i + 1}/{len(names)})" if progress else None):
            patches[s:s + block.shape[0]] = block
        step = _rows_per_chunk((3,) + size)
        for s in range(0, pick.size, step):         # a chunk at a time: the repeated rows never sit in memory
            rows = patches[source[s:s + step]]
            flip = pick[s:s + step] % 2 == 1
            rows[flip] = rows[flip][..., ::-1]
            data[start + s:start + s + rows.shape[0]] = rows
        labels[start:start + pick.size, i] = 1
        start += pick.size
    set_ = np.full(total, 2, dtype=np.uint8)
    set_[linspace_split(total) - 1] = 1
    data_mean = subtract_training_mean(data, set_ == 1)
    if isinstance(data, np.memmap):
        data.flush()
    return Imdb(data=data, labels=labels, set=set_, data_mean=data_mean, classes=list(names),
                order=np.arange(1, total + 1, dtype=np.int64))


# ----------------------------------------------------------------- from a dataset
def _lazy_patches(objs: Sequence[ObjRecord], imgdir: Path, image_size: tuple[int, int], workers: int | None,
                  progress: str | None) -> tuple[int, Callable[[], Iterator[tuple[int, np.ndarray]]]]:
    return len(objs), lambda: gather_patches(objs, imgdir, image_size, workers=workers, progress=progress)


def _neg_imgdir(conf: DataConf) -> Path:
    return conf.imgdir_neg if conf.imgdir_neg is not None else conf.imgdir


def get_imdb(name: str, conf: DataConf, image_size: Sequence[int] = (224, 224), *, is_train: bool = True,
             perms: Any = None, seed: int = 0, out: os.PathLike | str | None = None,
             workers: int | None = None, progress: bool = True) -> Imdb:
    """getImdb(Name_batch, theConf, meta, IsTrain): read the category, crop, assemble.

    image_size is meta.normalization.imageSize(1:2) of the network (224 or
    227; any size works). Empty objset elements (boxes under minArea in the
    ILSVRC reader) are skipped: getImdb.m would crash on them (getI of an
    empty struct), so num_pos counts the real objects only.
    """
    size = (int(image_size[0]), int(image_size[1]))
    objs = [o for o in read_annotation(name, conf) if o is not None]
    negs = get_neg_objset(conf, name)
    pos = _lazy_patches(objs, conf.imgdir, size, workers, f"{name} positives" if progress else None)
    neg = _lazy_patches(negs, _neg_imgdir(conf), size, workers, "negatives" if progress else None)
    return assemble_imdb(pos, neg, [name], is_train=is_train, perms=perms, seed=seed, image_size=size,
                         out=out)


def get_imdb_cub200(name: str, conf: DataConf, image_size: Sequence[int] = (224, 224), *, is_train: bool = True,
                    perms: Any = None, seed: int = 0, out: os.PathLike | str | None = None,
                    workers: int | None = None, progress: bool = True,
                    train_list_by_image_id: bool = False) -> Imdb:
    """getImdb_cub200(Name_batch, theConf, meta, IsTrain).

    Faithful default: readAnnotation's trainList (rows of
    train_test_split.txt marked 1) is used as positions in the imdb, which
    is right only when every image is read and none was skipped by minArea.
    `train_list_by_image_id=True` instead marks the objects whose CUB image
    is in the training split (the evident intent).
    """
    size = (int(image_size[0]), int(image_size[1]))
    tables = read_cub_tables(conf)
    objs, train_list = read_annotation_cub(name, conf, tables=tables)
    if train_list_by_image_id:
        train_ids = set(tables.split_ids[tables.split_is_train == 1].tolist())
        train_list = np.asarray([k + 1 for k, o in enumerate(objs) if o.image_id in train_ids], dtype=np.int64)
    negs = get_neg_objset(conf, name)
    pos = _lazy_patches(objs, conf.imgdir, size, workers, f"{name} positives" if progress else None)
    neg = _lazy_patches(negs, _neg_imgdir(conf), size, workers, "negatives" if progress else None)
    return assemble_imdb_cub200(pos, neg, train_list, [name], is_train=is_train, perms=perms, seed=seed,
                                image_size=size, out=out)


def get_category_imdb(name: str, conf: DataConf, image_size: Sequence[int] = (224, 224), **kwargs: Any) -> Imdb:
    """learn_icnn.m's choice: getImdb_cub200 for 'cub200' (dataset cub200), getImdb otherwise."""
    if conf.dataset == "cub200":
        return get_imdb_cub200(name, conf, image_size, **kwargs)
    return get_imdb(name, conf, image_size, **kwargs)


# ----------------------------------------------------------------- the disk cache
def imdb_fingerprint(settings: dict | None) -> str:
    """sha256 of the build settings (JSON, sorted keys; paths as strings) and the format version."""
    text = json.dumps({"format_version": FORMAT_VERSION, "settings": settings or {}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_marker(cache_dir: Path) -> dict | None:
    try:
        with open(cache_dir / _MARKER_FILE, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def cache_complete(cache_dir: os.PathLike | str) -> bool:
    """Whether `cache_dir` holds a finished imdb (its completion marker, written last, is there)."""
    return (Path(cache_dir) / _MARKER_FILE).is_file()


def load_cached_imdb(cache_dir: os.PathLike | str, settings: dict | None = None, *,
                     check_fingerprint: bool = True) -> Imdb | None:
    """The finished imdb in cache_dir (data memory-mapped read-only), or None when there is none
    (no completion marker, another format version or, with check_fingerprint, other settings)."""
    cache_dir = Path(cache_dir)
    marker = _read_marker(cache_dir)
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return None
    if check_fingerprint and marker.get("fingerprint") != imdb_fingerprint(settings):
        return None
    try:
        data = np.load(cache_dir / _DATA_FILE, mmap_mode="r")
        with np.load(cache_dir / _META_FILE, allow_pickle=False) as meta:
            order = meta["order"]
            imdb = Imdb(data=data, labels=meta["labels"], set=meta["set"], data_mean=meta["data_mean"],
                        classes=[str(c) for c in meta["classes"].tolist()],
                        order=order if order.size else None, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"imdb cache {cache_dir} is damaged ({exc}); it will be rebuilt")
        return None
    if list(imdb.data.shape) != marker.get("shape"):
        warnings.warn(f"imdb cache {cache_dir}: data shape {imdb.data.shape} != marker {marker.get('shape')}")
        return None
    return imdb


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_meta(cache_dir: Path, imdb: Imdb) -> None:
    buf = io.BytesIO()
    np.savez(buf, labels=imdb.labels, set=imdb.set, data_mean=imdb.data_mean,
             classes=np.asarray(imdb.classes, dtype=str),
             order=imdb.order if imdb.order is not None else np.zeros(0, dtype=np.int64))
    atomic_write_bytes(cache_dir / _META_FILE, buf.getvalue())


def _store_data(cache_dir: Path, data: np.ndarray, tmp: Path) -> None:
    """Put a build's data at cache_dir/data.npy: rename the file it was written to, or write an
    in-memory array chunk by chunk."""
    src = Path(getattr(data, "filename", "") or "")
    if src and src.resolve() == tmp.resolve():
        os.replace(tmp, cache_dir / _DATA_FILE)
        return
    store = _NpyFileRows(tmp, tuple(data.shape))
    try:
        step = _rows_per_chunk(tuple(data.shape[1:]))
        for s in range(0, data.shape[0], step):
            store.write_range(s, np.asarray(data[s:s + step], dtype=np.float32))
        os.fsync(store.fh.fileno())
        store.fh.close()
    except BaseException:
        store.abort()
        raise
    os.replace(tmp, cache_dir / _DATA_FILE)


def _remove_stale_partials(cache_dir: Path) -> None:
    """Delete temporary files a killed build left in cache_dir (their process is gone)."""
    for p in list(cache_dir.glob(f".{_DATA_FILE}.partial-*")) + list(cache_dir.glob(".patches-*.npy")):
        try:
            pid = int(p.name.split("partial-")[-1] if "partial-" in p.name else p.name.split("-")[1])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except PermissionError:
            pass


def load_or_build_imdb(cache_dir: os.PathLike | str, build_fn: Callable[[Path], Imdb],
                       settings: dict | None = None, *, rebuild: bool = False) -> Imdb:
    """The cached imdb in cache_dir, or build_fn's, stored there first (as the original reuses imdb.mat).

    build_fn(out) builds the imdb and should write its data to the .npy path
    `out` (the builders' `out=` argument); an imdb held in memory is also
    accepted and written chunk by chunk. Layout of cache_dir: data.npy
    (N x 3 x H x W float32), imdb_meta.npz (labels, set, data_mean, classes,
    order), imdb.complete.json (format version, fingerprint of `settings`,
    shape): the marker is removed before a build and written LAST, after the
    data and the metadata are renamed into place and flushed, so a build
    that stopped half-way is never taken for a finished one. A marker from
    other settings (fingerprint) or another format version means rebuild.
    The returned data is a read-only memmap of data.npy. Temporary files of
    a killed build are removed by the next one. One builder per cache_dir
    at a time (two concurrent builders of the same settings end with the
    same files, but may each read the other's half-written data meanwhile).
    """
    cache_dir = Path(cache_dir)
    if not rebuild:
        cached = load_cached_imdb(cache_dir, settings)
        if cached is not None:
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / _MARKER_FILE).unlink(missing_ok=True)
    _remove_stale_partials(cache_dir)
    _fsync_dir(cache_dir)
    tmp = cache_dir / f".{_DATA_FILE}.partial-{os.getpid()}"
    try:
        built = build_fn(tmp)
        data = built.data
        _store_data(cache_dir, data, tmp)
        del data
        built.data = np.empty((0, 3) + built.image_size, dtype=np.float32)   # drop the build's handle
        _write_meta(cache_dir, built)
        _fsync_dir(cache_dir)
    finally:
        tmp.unlink(missing_ok=True)
    marker = {"format_version": FORMAT_VERSION, "fingerprint": imdb_fingerprint(settings),
              "settings": json.loads(json.dumps(settings or {}, default=str)),
              "shape": [built.labels.shape[0], 3, *built.image_size], "created": time.time()}
    atomic_write_bytes(cache_dir / _MARKER_FILE, json.dumps(marker, indent=1).encode())
    _fsync_dir(cache_dir)
    imdb = load_cached_imdb(cache_dir, settings)
    if imdb is None:
        raise DatasetError(f"imdb cache {cache_dir} could not be read back after building")
    return imdb


def save_imdb_mat(imdb: Imdb, path: os.PathLike | str, version: str = "7.3") -> str:
    """Write the imdb as the original's imdb.mat (`save(path, '-struct', 'imdb')`: variables
    `images` and `meta` in MATLAB layout) through legacy_compat's savemat; returns the path.
    MAT v7.3 by default (v5 cannot hold more than 2 GB). Note that savemat holds the
    data in MATLAB layout while writing: a transposed copy of the imdb."""
    value = imdb.to_matlab()
    return savemat(path, {"images": value["images"], "meta": value["meta"]}, version=version)

