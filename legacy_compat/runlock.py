"""One run per output folder: an advisory lock (fcntl.flock) on ``<folder>/.icnn-run.lock``.

Not a port of an original file: MATLAB's cnn_train lets two runs write into one folder, where the
second one fails after a wasted epoch (or, worse, its clean-up removes the first one's files).
The command lines take this lock on their output folder before any work; a second run on the
same folder is refused at once, naming the folder and the process that holds it. The lock is the
kernel's: it goes when its process ends, however it ends (no stale lock to delete by hand). The
file itself stays (removing a lock file races with the next locker); it holds the holder's PID,
start time and command, for the message.

Under torchrun (RANK set) only rank 0 takes the lock: the other ranks of the same run write no
checkpoint and must not be refused.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .cli import UserError

__all__ = ["LOCK_NAME", "FolderBusyError", "folder_lock", "lock_holder"]

LOCK_NAME = ".icnn-run.lock"


class FolderBusyError(UserError):
    """Another live run holds the folder's lock."""


def lock_holder(folder: os.PathLike | str) -> dict:
    """What the lock file of `folder` says of its holder (pid, started, command); {} if nothing."""
    try:
        return dict(json.loads((Path(folder) / LOCK_NAME).read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


@contextmanager
def folder_lock(folder: os.PathLike | str, command: str | None = None) -> Iterator[Path]:
    """Hold `folder`'s run lock for the `with` block; `FolderBusyError` at once if another process
    holds it (the message names the folder, the other process and the two ways out)."""
    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0":
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(_busy_message(folder)) from None
    try:
        record = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield folder
    finally:
        os.close(fd)          # releases the lock


def _busy_message(folder: Path) -> str:
    holder = {}
    for _ in range(20):       # the holder writes its record just after it locks
        holder = lock_holder(folder)
        if holder.get("pid"):
            break
        time.sleep(0.05)
    who = (f"process {holder['pid']} (started {holder.get('started', '?')}: {holder.get('command', '?')})"
           if holder.get("pid") else "another process")
    return (f"{folder} is in use by another run, {who}. Nothing was done. Wait for that run to finish "
            f"(or stop it), or give this run another output folder (--out)")
