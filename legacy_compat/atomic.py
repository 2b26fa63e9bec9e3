"""Atomic file writes: the one helper every writer of the port goes through.

A file is written under a temporary name in its own folder, flushed to disk,
then renamed onto its final name with `os.replace`, so a reader (or a run
resumed after Ctrl-C) sees either the old file or the whole new one, never a
half-written one. Not a port of an original file: MATLAB's save writes in place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text"]

TMP_PREFIX = ".tmp-"   # every temporary starts with it (reproduce.checkpoints.remove_stale_temporaries looks for it)


def atomic_write(path: os.PathLike | str, write: Callable[[Path], None], *, make_parents: bool = True,
                 overwrite: bool = True) -> Path:
    """Run `write(tmp)` on a new empty file beside `path`, fsync it, then os.replace it onto `path`.

    The temporary is named ``.tmp-<stem>-<random><suffix>``: it keeps the final
    extension (writers such as PIL and savemat look at it). It gets the mode a
    plain open() would give (mkstemp makes 0600). `make_parents` creates the
    folder first. On any failure, Ctrl-C included, the temporary is removed,
    `path` is left as it was, and the exception propagates. With `overwrite=False` an existing
    `path` raises FileExistsError before anything is written (or before the rename, when it
    appeared while writing).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.stem}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path}: appeared while writing; refusing to overwrite it")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: os.PathLike | str, payload: bytes, *, make_parents: bool = True) -> Path:
    """`payload` to `path`, atomically (`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload), make_parents=make_parents)


def atomic_write_text(path: os.PathLike | str, text: str, *, make_parents: bool = True) -> Path:
    """`text` to `path` as UTF-8, newlines as given, atomically (`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)


def _file_mode() -> int:
    """0o666 minus the process umask (what open(path, 'w') would create)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
