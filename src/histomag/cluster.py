"""Work across machines: one task per slide on a Dask cluster, or one shard of a batch per process.

Two ways to spread a cohort:

* ``--cluster ADDRESS``: a running Dask distributed scheduler (``dask scheduler`` plus ``dask
  worker`` on each machine, or ``dask-jobqueue``). Each slide is one task; results come back to
  the process that submitted them, which writes the manifest / CSV as a one-process run would.
  Workers read the slides and write their outputs themselves, so every path must be visible to
  every worker under the same name (a shared file system); this is checked before any work.
* ``--shard K/N``: for schedulers that start N copies of one command (Slurm arrays, torchrun,
  a shell loop). Copy K takes every N-th item of the batch (items K-1, K-1+N, ... in the batch's
  order, so the N copies must be given the same batch) and writes to its own sub-folder;
  ``histomag merge`` joins them.

Dask is optional (``pip install 'histomag[dask]'``); only :func:`connect` imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from histomag.errors import ConfigError, HistomagError, StorageError

T = TypeVar("T")
#: how long :func:`connect` waits for the scheduler before giving up
CONNECT_TIMEOUT_S = 10.0
#: how long :func:`check_shared` waits for a first worker
WORKER_WAIT_S = 30.0
#: how many times a task whose worker died (or that raised unexpectedly) is submitted again by us,
#: on top of the scheduler's own ``allowed-failures`` retries
RESUBMITS = 1


class ClusterError(HistomagError):
    """A Dask scheduler that cannot be reached, or workers that cannot see the files."""


@dataclass(frozen=True)
class Shard:
    """Copy ``index`` (1-based) of ``count`` copies of one command."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, items: Sequence[T]) -> list[T]:
        """This copy's items: every ``count``-th, starting at position ``index - 1``."""
        return list(items[self.index - 1::self.count])


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard` (1 <= K <= N).

    Raises:
        ConfigError: naming the malformed value and the expected form.
    """
    parts = str(text).strip().split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"shard={text!r} is not of the form K/N (e.g. shard='3/8' for copy 3 of 8)") from None
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"shard={text!r}: K must be between 1 and N (e.g. shard='3/8'; Slurm: "
                          "shard=$((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT)")
    return Shard(k, n)


def connect(address: str, *, timeout: float | None = None) -> Any:
    """A ``distributed.Client`` on the scheduler at ``address``, or one line saying why not.

    ``timeout``: seconds to wait for the scheduler (default :data:`CONNECT_TIMEOUT_S`).

    Raises:
        ConfigError: Dask is not installed.
        ClusterError: the scheduler did not answer within ``timeout`` seconds.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("a Dask cluster needs Dask distributed: pip install 'histomag[dask]'") from None
    import logging

    for name in ("distributed", "distributed.client", "distributed.comm", "distributed.core"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its retries would print tracebacks
    try:
        return Client(address, timeout=timeout or CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({reason[:160]}); start it "
                           "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or fix the cluster address") from None


def check_shared(client: Any, *paths: Path) -> None:
    """Refuse, before any work, a cluster whose workers do not see ``paths`` (files or folders).

    Raises:
        ClusterError: naming the first path some worker cannot see.
    """
    wanted = [str(Path(p).resolve()) for p in paths]
    try:  # a cluster just started (or whose workers are restarting) gets a moment to bring one up
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        raise ClusterError(f"the Dask cluster has no worker after {WORKER_WAIT_S:g} s; start one with "
                           "`dask worker SCHEDULER_ADDRESS`") from None
    seen = client.run(_visible, wanted)
    for worker, flags in seen.items():
        for path, ok in zip(wanted, flags):
            if not ok:
                raise ClusterError(f"Dask worker {worker} cannot see {path}; a Dask cluster needs every slide and the "
                                   "output folder on a file system shared by all workers, under the same path")


def _visible(paths: list[str]) -> list[bool]:
    return [os.path.exists(p) for p in paths]


#: what this (worker) process keeps loaded between tasks: kind -> (key, object)
_held: dict[str, tuple[Any, Any]] = {}


def held_by_worker(kind: str, key: Any, load: Callable[[], T]) -> T:
    """The object of ``kind`` for ``key``, loaded once per worker process (a model, a run's folds).

    One object per kind is kept: a task with another key replaces it, so a long-lived worker does
    not accumulate models.
    """
    held = _held.get(kind)
    if held is None or held[0] != key:
        _held.pop(kind, None)  # let the old one go before the new one loads
        _held[kind] = held = (key, load())
    return held[1]


def map_tasks(client: Any, fn: Callable[..., T], args: Sequence[tuple], *, on_done: Callable[[int, T], None],
              on_lost: Callable[[int, str], None], resubmits: int = RESUBMITS) -> None:
    """Run ``fn(*args[i])`` for every ``i`` on the cluster; call ``on_done(i, result)`` as each finishes.

    A task that fails anyway (its worker died more often than the scheduler allows, or ``fn`` raised
    something it should not have) is submitted again ``resubmits`` times, then reported through
    ``on_lost(i, one_line_reason)``. The others always finish.
    """
    from distributed import as_completed

    futures: dict[Any, tuple[int, int]] = {}
    for i, a in enumerate(args):
        futures[client.submit(fn, *a, pure=False)] = (i, 0)
    queue = as_completed(list(futures), loop=client.loop)
    for fut in queue:
        i, attempt = futures.pop(fut)
        try:
            result = fut.result()
        except StorageError:  # the shared output disk is full or failing: no other task can write either
            client.cancel(list(futures))
            raise
        except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost connection or a bug: one line per item
            if attempt < resubmits:
                again = client.submit(fn, *args[i], pure=False)
                futures[again] = (i, attempt + 1)
                queue.add(again)
                continue
            reason = str(exc).splitlines()[0] if str(exc) else ""
            on_lost(i, f"{type(exc).__name__}: {reason[:200]}" if reason else type(exc).__name__)
            continue
        on_done(i, result)
