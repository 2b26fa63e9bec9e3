"""Several GPUs or machines: our_cnn_train.m's `opts.gpus` on torch.distributed.

Ports the multi-GPU branch of `tool/main/our_cnn_train.m` (``spmd`` over ``numlabs``
workers, processEpoch, accumulateGradients, accumulateStats; MatConvNet's
ParameterServer) onto torch.distributed, one process per GPU, started by ``torchrun``:

- rank r (MATLAB's ``labindex - 1``) of K takes the interleaved share
  ``batch[r::K]`` of every batch (``subset(t+labindex-1 : numlabs : batchEnd)``);
- each rank runs forward and backward on its share, the conv_mask filter loss included
  (logZ, strength, the beta derivative computed from the share alone);
- the derivatives are summed over the ranks (the ParameterServer's sum; so beta's
  derivative, which is not a sum over images, counts K times) and the SGD step divides
  by the WHOLE batch size, as accumulateGradients does;
- each rank updates its own sliceMag from its own share (they drift apart); rank 0's
  is the one saved, as worker 1 alone saves ``net-epoch-N.mat``;
- the epoch statistics are accumulated over the ranks (accumulateStats).

Two named corrections (`DataParallel` fields, the command lines' options):

- ``sync_slice_mag`` (``--sync-slicemag``): the sliceMag update reads the per-class sums
  and counts of all ranks (one all-reduce per step: every conv_mask layer's values in one
  flat tensor, `train.update_slice_mags`), so every rank keeps the sliceMag one process
  would compute from the whole batch;
- ``whole_batch_filter_loss`` (``--whole-batch-filter-loss``): each conv_mask layer's
  filter loss is computed over the whole batch: the layer input x, its mask and the
  per-image statistics (strength, sqrtvar, mean, labels) of every rank are gathered
  (an all-gather of ``2 x N x D x H x W`` floats per conv_mask layer and batch), the
  original computation runs on them, each rank keeps its own images' rows, and beta's
  derivative is counted once (rank 0's).

With both, K ranks give the numbers of one process on the whole batch (to float
rounding: the sums are added in another order). Dropout draws its masks per rank (rank 0
from the epoch's seed as one process does, rank r > 0 from a seed of its own), so
equality with one process holds for nets without dropout or with dropout 0.

Files: rank 0 alone writes checkpoints (atomically, `reproduce.training.checkpoints`) and the
plots; on resume rank 0 reads the last checkpoint and sends its state to the other ranks
(a shared file system is not needed). Data caches (the dataset set-up, the imdb cache)
are built by rank 0 first while the others wait (`rank_zero_first`), then read by the
others (on a second machine without a shared file system, its local rank 0 builds its
own copy first).

Failures. The process group is created with a timeout (``--dist-timeout``, default
600 s): a collective that a rank does not join in that time raises on the others, which
stop with a `DistributedError` naming the rank and the step; a rank that dies closes its
connections, which the others notice at their next collective (gloo) or by the timeout
(NCCL's watchdog). torchrun then stops the other workers (SIGTERM, treated like Ctrl-C:
checkpoints are written atomically, so only complete ones remain). Waiting for rank 0's
caches is bounded by ``ICNN_DIST_WAIT_S`` (default 7200 s).
"""
from __future__ import annotations

import argparse
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from reproduce.runtime.device import resolve_device
from reproduce.runtime.interrupt import sigterm_as_interrupt

__all__ = ["DataParallel", "DistributedError", "FilterLossBatch", "WholeBatch", "init_data_parallel",
           "launched_by_torchrun", "active", "is_main", "shutdown", "rank_zero_first", "share_indices",
           "gather_over_ranks", "claimed_runs", "store_counter", "init_scheduler", "add_arguments",
           "start_from_args", "rank_device", "file_lock", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 600.0          # a collective not joined by every rank in this time fails
WAIT_ENV = "ICNN_DIST_WAIT_S"      # how long ranks wait for rank 0's caches (seconds)
DEFAULT_WAIT_S = 7200.0

_STATE: dict[str, Any] = {"dp": None}


class DistributedError(RuntimeError):
    """Another rank stopped, failed or did not answer in time."""


def share_indices(idx: np.ndarray | Sequence[int], rank: int, world: int) -> Any:
    """processEpoch: worker ``labindex`` takes ``subset(t+labindex-1 : numlabs : batchEnd)``: batch[rank::world]."""
    return idx[rank::world]


def share_sizes(n: int, world: int) -> list[int]:
    """How many images of an n-image batch each rank gets."""
    return [len(range(r, n, world)) for r in range(world)]


@dataclass
class DataParallel:
    """One process's place in a data-parallel run, and the corrections chosen (module docstring)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    sync_slice_mag: bool = False
    whole_batch_filter_loss: bool = False
    side: Any = None                   # a gloo group for CPU objects (the default group when gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, idx: np.ndarray) -> np.ndarray:
        return share_indices(idx, self.rank, self.world)

    # ------------------------------------------------------------ collectives
    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective into a DistributedError that says what to do."""
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError, gloo's connection errors, timeouts
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed: another rank stopped or did not answer within "
                f"{self.timeout_s:g} s ({str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}). "
                f"Only complete checkpoints are on disk; run the same command again to resume") from exc

    def all_reduce_(self, tensor: torch.Tensor, what: str = "summing over ranks") -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        with self.collective(what):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """The ParameterServer's sum of every derivative over the workers (one flat buffer).

        A parameter without a gradient (a rank whose share was empty) contributes zeros."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce_(flat, "summing the gradients (accumulateGradients)")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p)   # flat is this step's own buffer
            offset += n

    def gather_rows(self, local: torch.Tensor, n: int, what: str) -> torch.Tensor:
        """The whole batch's rows from every rank's share (rank r holds rows r, r+K, ...)."""
        sizes = share_sizes(n, self.world)
        if local.shape[0] != sizes[self.rank]:
            raise DistributedError(f"rank {self.rank}: {what}: {local.shape[0]} rows, expected {sizes[self.rank]}")
        padded = local.new_zeros((sizes[0],) + tuple(local.shape[1:]))
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with self.collective(what):
            dist.all_gather(parts, padded.contiguous())
        whole = local.new_empty((n,) + tuple(local.shape[1:]))
        for r, part in enumerate(parts):
            whole[r::self.world] = part[:sizes[r]]
        return whole

    def broadcast_object(self, obj: Any, what: str) -> Any:
        """Rank 0's `obj` on every rank (pickled over the CPU side group)."""
        box = [obj if self.is_main else None]
        with self.collective(what):
            dist.broadcast_object_list(box, src=0, group=self.side)
        return box[0]

    def all_gather_object(self, obj: Any, what: str) -> list[Any]:
        out: list[Any] = [None] * self.world
        with self.collective(what):
            dist.all_gather_object(out, obj, group=self.side)
        return out

    def barrier(self, what: str, timeout_s: float | None = None) -> None:
        """Wait for every rank (bounded: `timeout_s`, default the group's timeout)."""
        timeout = timedelta(seconds=float(timeout_s if timeout_s is not None else self.timeout_s))
        with self.collective(what):
            if dist.get_backend(self.side) == "gloo":
                dist.monitored_barrier(group=self.side, timeout=timeout, wait_all_ranks=True)
            else:
                dist.barrier(group=self.side)


# ------------------------------------------------------------------ set-up
def launched_by_torchrun() -> bool:
    """True in a worker started by torchrun (or anything setting RANK, WORLD_SIZE, MASTER_ADDR)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _sigterm_as_interrupt() -> None:
    """torchrun stops the other workers with SIGTERM when one fails: from joining the group until
    `shutdown`, SIGTERM acts as Ctrl-C (reproduce.interrupt), also while caches are built."""
    if "restore_sigterm" not in _STATE:
        _STATE["restore_sigterm"] = sigterm_as_interrupt()


def init_data_parallel(device: str | torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                       sync_slice_mag: bool = False, whole_batch_filter_loss: bool = False,
                       init_method: str | None = None, rank: int | None = None, world_size: int | None = None,
                       local_rank: int | None = None) -> DataParallel:
    """Join the process group and make `train` data-parallel (see the module docstring).

    `device` "cuda" means this rank's GPU, cuda:LOCAL_RANK (NCCL); "cpu" uses gloo. Without
    `init_method`, torchrun's environment (env://) is read. Returns the `DataParallel` that
    `active()` returns from now on."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    local = int(os.environ.get("LOCAL_RANK", str(rank))) if local_rank is None else int(local_rank)
    dev = torch.device(rank_device(str(device), local))
    if dev.type == "cuda":
        dev = resolve_device(dev)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timedelta(seconds=float(timeout_s))
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout, "rank": rank, "world_size": world,
                                  "init_method": init_method or "env://"}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    side = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    dp = DataParallel(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, device=dev,
                      backend=backend, timeout_s=float(timeout_s), sync_slice_mag=bool(sync_slice_mag),
                      whole_batch_filter_loss=bool(whole_batch_filter_loss), side=side)
    _STATE["dp"] = dp
    _sigterm_as_interrupt()
    return dp


def active() -> DataParallel | None:
    """The data-parallel run this process is part of, or None."""
    return _STATE["dp"]


def is_main() -> bool:
    """Rank 0, or a process outside any data-parallel run: the one that writes and prints."""
    dp = active()
    return dp is None or dp.is_main


def shutdown() -> None:
    """Leave the process group (the end of a command line's run)."""
    _STATE["dp"] = None
    restore = _STATE.pop("restore_sigterm", None)
    if restore is not None:
        restore()
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, local_rank: int) -> str:
    """This rank's device: cuda -> cuda:LOCAL_RANK (one GPU per process); cpu stays cpu."""
    if device.startswith("cuda") and ":" not in device:
        return f"cuda:{local_rank}"
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command lines' options for runs started by torchrun (several GPUs or machines)."""
    group = parser.add_argument_group(
        "several GPUs / machines (start the command with torchrun --nproc_per_node K ...; README)")
    group.add_argument("--sync-slicemag", action="store_true",
                       help="keep sliceMag equal on every rank (the update reads the whole batch, all-reduced) "
                            "instead of the original's per-worker sliceMag")
    group.add_argument("--whole-batch-filter-loss", action="store_true",
                       help="compute the conv_mask filter loss over the whole batch (the per-image statistics "
                            "gathered from every rank) instead of the original's per-worker share; with "
                            "--sync-slicemag, K ranks give the numbers of one process")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"seconds a rank waits for the others in a collective before it stops with an error "
                            f"(default {DEFAULT_TIMEOUT_S:g})")


def start_from_args(args: argparse.Namespace, device: str) -> tuple[DataParallel | None, str]:
    """Under torchrun: join the group with the options of `add_arguments`; returns (the
    DataParallel or None, this rank's device). Outside torchrun the options must be unset."""
    if not launched_by_torchrun():
        if args.sync_slicemag or args.whole_batch_filter_loss:
            raise DistributedError("--sync-slicemag and --whole-batch-filter-loss are for runs on several ranks: "
                                   "start the command with torchrun --nproc_per_node K ...")
        return None, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = rank_device(device, local)
    dp = init_data_parallel(dev, timeout_s=args.dist_timeout, sync_slice_mag=args.sync_slicemag,
                            whole_batch_filter_loss=args.whole_batch_filter_loss)
    return dp, str(dp.device)


def init_scheduler(timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int, int]:
    """Under torchrun, a gloo group for coordination only (no data-parallel training): reproduce.paper
    deals its runs out over the ranks. Returns (rank, world size, local rank)."""
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", init_method="env://", timeout=timedelta(seconds=float(timeout_s)))
    _sigterm_as_interrupt()
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def file_lock(path: os.PathLike | str) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on `path`, held for the block: processes that build the
    same cache (the paper's ranks, each running its own experiments) take turns."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait_s() -> float:
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        raise DistributedError(f"${WAIT_ENV} must be a number of seconds, got {os.environ[WAIT_ENV]!r}") from None


def rank_zero_first(fn: Callable[[], Any], what: str) -> Any:
    """Run `fn` (which builds or reads a cache and returns it) on rank 0 first, then on each
    machine's local rank 0, then on the other ranks, which by then find the cache complete
    (its completion marker written) and only read it. Waits are bounded (ICNN_DIST_WAIT_S);
    if rank 0 fails, the others stop with a DistributedError instead of building it too."""
    dp = active()
    if dp is None or dp.world == 1:
        return fn()
    wait = _wait_s()
    result = fn() if dp.is_main else None
    dp.barrier(f"waiting for rank 0 to finish {what}", wait)
    if not dp.is_main and dp.local_rank == 0:
        result = fn()
    dp.barrier(f"waiting for each machine's local rank 0 to finish {what}", wait)
    if not dp.is_main and dp.local_rank != 0:
        result = fn()
    return result


def gather_over_ranks(value: Any, what: str) -> list[Any]:
    """Every rank's `value` (a list, rank order); [value] outside a data-parallel run."""
    dp = active()
    if dp is None or dp.world == 1:
        return [value]
    return dp.all_gather_object(value, what)


# ------------------------------------------------------------------ the whole-batch filter loss
@dataclass
class FilterLossBatch:
    """The per-image inputs of conv_mask's filter loss, one row per image: the maps `x` and their
    masks (N x D x H x W), `strength` and `sqrtvar` (N x D), `x_mean` the maps' means (N x D; None:
    taken from x) and the `labels` (N x L)."""

    x: torch.Tensor
    mask: torch.Tensor
    strength: torch.Tensor
    sqrtvar: torch.Tensor
    x_mean: torch.Tensor | None
    labels: torch.Tensor


class WholeBatch:
    """`FilterLossContext.whole_batch` of one batch: runs conv_mask's filter loss on the gathered
    whole batch and hands back this rank's rows (module docstring, whole_batch_filter_loss)."""

    def __init__(self, dp: DataParallel, n: int):
        self.dp = dp
        self.n = int(n)

    def _gather(self, x: torch.Tensor, mask: torch.Tensor, per_image: torch.Tensor, name: str):
        maps = self.dp.gather_rows(torch.cat([x, mask], dim=1), self.n, f"gathering conv_mask {name!r} maps")
        rows = self.dp.gather_rows(per_image, self.n, f"gathering conv_mask {name!r} statistics")
        return maps, rows

    def gather(self, batch: FilterLossBatch, name: str = "") -> FilterLossBatch:
        """Every rank's rows of `batch`, in the order of one process's batch (`name`: the layer's,
        for the messages of a gather that waits)."""
        x, d = batch.x, batch.x.shape[1]
        lab = batch.labels.to(dtype=x.dtype, device=x.device)
        x_mean = x.mean(dim=(2, 3)) if batch.x_mean is None else batch.x_mean
        per_image = torch.cat([batch.strength, batch.sqrtvar, x_mean.to(x.dtype), lab], dim=1)
        maps, rows = self._gather(x, batch.mask, per_image, name)
        return FilterLossBatch(maps[:, :d], maps[:, d:], rows[:, :d], rows[:, d:2 * d], rows[:, 2 * d:3 * d],
                               rows[:, 3 * d:].to(batch.labels.dtype))

    def my_share(self, coef_pos: torch.Tensor, coef_neg: torch.Tensor,
                 dbeta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's rows of the whole batch's coefficients; beta's derivative on rank 0 only (the
        ranks' beta gradients are summed)."""
        mine = slice(self.dp.rank, None, self.dp.world)
        return coef_pos[mine], coef_neg[mine], dbeta if self.dp.is_main else torch.zeros_like(dbeta)

    def wrap(self, filter_loss: Callable[[FilterLossBatch], tuple]) -> Callable[[FilterLossBatch, str], tuple]:
        """`filter_loss(batch)` -> (coef_pos, coef_neg, dbeta) (conv_mask.filter_loss_by_labels on a
        FilterLossBatch) run over the whole batch, this rank's rows back: `whole(batch, name)`."""
        def whole(batch: FilterLossBatch, name: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.my_share(*filter_loss(self.gather(batch, name)))
        return whole

    def participate(self, net: Any, num_labels: int) -> None:
        """A rank whose share is empty still joins every gather, in backward's order (last layer first)."""
        layers = list(net.conv_mask_layers())
        for _, layer in reversed(layers):
            d = layer.in_channels
            h, w = layer.feature_size
            x = torch.zeros((0, 2 * d, h, w), dtype=torch.float32, device=self.dp.device)
            self.dp.gather_rows(x, self.n, f"gathering conv_mask {layer.name!r} maps")
            stats = torch.zeros((0, 3 * d + num_labels), dtype=torch.float32, device=self.dp.device)
            self.dp.gather_rows(stats, self.n, f"gathering conv_mask {layer.name!r} statistics")


# ------------------------------------------------------------------ the paper's grid over GPUs
def claimed_runs(n: int, claim: Callable[[], int]) -> Iterator[int]:
    """The grid runs (0-based) one worker takes, one at a time: `claim()` returns the next free
    index from a counter shared by all workers (each index is handed out once), so a worker that
    finishes early takes the next run: one run per GPU at a time, all GPUs busy until the end."""
    while True:
        i = int(claim())
        if i >= n:
            return
        yield i


def store_counter(key: str) -> Callable[[], int]:
    """A `claim` for `claimed_runs`: the process group's store's atomic counter `key`."""
    store = dist.distributed_c10d._get_default_store()
    return lambda: int(store.add(key, 1)) - 1
