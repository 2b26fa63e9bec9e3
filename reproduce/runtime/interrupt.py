"""SIGTERM handled as Ctrl-C while training.

A batch scheduler (Slurm, PBS, Kubernetes, `timeout`) sends SIGTERM before it
kills a job. Python's default for SIGTERM ends the process at once; training
instead treats it as Ctrl-C: a `Terminated` (a KeyboardInterrupt) is raised in
the main thread, so that only complete checkpoints are left (every writer
goes through legacy_compat.atomic) and the command lines say how to resume.

Not in the original (MATLAB stops where it is).
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

__all__ = ["Terminated", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled as Ctrl-C (KeyboardInterrupt)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum} (SIGTERM)")


def sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise `Terminated` until the returned function is called (it restores the previous handler).

    Does nothing outside the main thread (Python delivers signals there only),
    on platforms without SIGTERM handlers, or where SIGTERM is ignored (SIG_IGN:
    whoever ignored it wants it ignored).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        return lambda: None
    signal.signal(signal.SIGTERM, _raise_terminated)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return restore
