"""Atomic file writes: the one helper every writer of the port goes through.

A file is written under a temporary name in its own folder, flushed to disk,
then renamed onto its final name with `os.replace`, so a reader (or a run
resumed after Ctrl-C) sees either the old file or the whole new one, never a
half-written one. Not a port of an original file: MATLAB's save writes in place.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .cli import is_disk_full

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text", "writer_tag", "writer_pid",
           "pid_alive", "remove_orphans"]

TMP_PREFIX = ".tmp-"   # every temporary starts with it (reproduce.checkpoints.remove_stale_temporaries looks for it)
_WRITER_RE = re.compile(r"\.pid(\d+)-")


def writer_tag() -> str:
    """``.pid<N>-``: put in a temporary's name, it says which process writes it, so that a clean-up
    removes only the temporaries of writers that are gone (`remove_orphans`)."""
    return f".pid{os.getpid()}-"


def writer_pid(name: str) -> int | None:
    """The process id a temporary's name carries (`writer_tag`), None when it carries none."""
    found = _WRITER_RE.findall(name)
    return int(found[-1]) if found else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # another user's live process
        return True
    return True


def remove_orphans(folder: os.PathLike | str, prefixes: Iterable[str] = (TMP_PREFIX,)) -> list[Path]:
    """Remove the temporaries (files or folders) in `folder` whose name starts with one of
    `prefixes` and whose writer (`writer_pid`) is gone. A temporary of a live writer, or whose
    name says no writer (written before writers were named), is left alone. Returns the removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    prefixes = tuple(prefixes)
    for entry in folder.iterdir():
        pid = writer_pid(entry.name)
        if not entry.name.startswith(prefixes) or pid is None or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def atomic_write(path: os.PathLike | str, write: Callable[[Path], None], *, make_parents: bool = True,
                 overwrite: bool = True) -> Path:
    """Run `write(tmp)` on a new empty file beside `path`, fsync it, then os.replace it onto `path`.

    The temporary is named ``.tmp-<stem>.pid<N>-<random><suffix>``: it keeps the final
    extension (writers such as PIL and savemat look at it) and names its writer's process
    (`remove_orphans` removes it only once that process is gone). It gets the mode a
    plain open() would give (mkstemp makes 0600). `make_parents` creates the
    folder first. On any failure, Ctrl-C included, the temporary is removed,
    `path` is left as it was, and the exception propagates; a failure because the disk is
    full becomes an OSError ENOSPC naming `path` (torch.save, for one, reports a short write
    as its own RuntimeError "unexpected pos ..."). With `overwrite=False` an existing
    `path` raises FileExistsError before anything is written (or before the rename, when it
    appeared while writing).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.stem}{writer_tag()}",
                                    suffix=path.suffix)
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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, FileExistsError) and not _is_enospc(exc) \
                and is_disk_full(exc, path.parent):
            raise OSError(errno.ENOSPC, f"No space left on device ({type(exc).__name__} while writing)",
                          str(path)) from exc
        if _is_enospc(exc) and getattr(exc, "filename", None) != str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
        raise
    return path


def _is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


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
