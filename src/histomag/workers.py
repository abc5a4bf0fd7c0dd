"""Worker processes that never outlive the process that started them.

A pool worker blocked on its task queue, or halfway through a long task, does not notice that its
parent was killed (``kill -9``, the OOM killer, a batch scheduler): it goes on writing, or waits
forever. :func:`watch_parent`, run as the pool's initializer, ends the worker when its parent dies:
at once on Linux (``PR_SET_PDEATHSIG``), and everywhere within ``poll_s`` seconds through a thread
that watches :func:`os.getppid`. :func:`exit_if_orphaned` is the same check between work items.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

#: exit status of a worker that ended because its parent had died
ORPHAN_EXIT_CODE = 75
_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None


def watch_parent(parent_pid: int, *, poll_s: float = 0.5) -> None:
    """End this process as soon as ``parent_pid`` (the process that started it) is gone.

    Args:
        parent_pid: ``os.getpid()`` of the parent, taken in the parent before starting the worker.
        poll_s: how often the fallback thread compares ``os.getppid()`` with ``parent_pid``.
    """
    global _parent_pid
    _parent_pid = parent_pid
    _kill_me_with_parent()
    exit_if_orphaned()  # the parent may have died before the kernel was asked to tell us
    threading.Thread(target=_poll, args=(poll_s,), name="histomag-parent-watch", daemon=True).start()


def exit_if_orphaned() -> None:
    """Exit now (no cleanup: the owner is gone) when this worker's parent has died."""
    if _parent_pid is not None and os.getppid() != _parent_pid:
        os._exit(ORPHAN_EXIT_CODE)


def _poll(poll_s: float) -> None:
    while True:
        exit_if_orphaned()
        time.sleep(poll_s)


def _kill_me_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the thread that forked it ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol; the polling thread remains
        pass
