"""Where per-file tasks run: a local process pool, or a Dask distributed cluster.

Both give the same interface (submit tasks, receive results as they finish), and the
client merges and writes in file order whatever the completion order, so the dataset
is the same byte for byte either way.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from classifier.errors import UsageError


class LocalExecutor:
    """A pool of worker processes on this machine (spawned: no state inherited by fork)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    @property
    def description(self) -> str:
        return f"local process pool, {self.workers} worker(s)"

    dashboard_link: str | None = None

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Run ``fn(*args)`` for each ``(key, args)``; yield ``(key, result, error)`` as they finish."""
        if not tasks:
            return
        self._pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)),
                                         mp_context=multiprocessing.get_context("spawn"))
        futures = {self._pool.submit(fn, *args): key for key, args in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: str(futures[f])):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class InlineExecutor:
    """Tasks run one after another in this process (tests, debugging, tiny inputs)."""

    workers = 1
    description = "this process"
    dashboard_link: str | None = None

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        for key, args in tasks:
            try:
                res = fn(*args)
            except Exception as exc:
                yield key, None, exc
            else:
                yield key, res, None

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a Dask distributed scheduler (``tcp://HOST:PORT``).

    Input paths are read by the workers, so they must see the same files (shared
    storage); results come back to the client, which alone writes the dataset.
    """

    def __init__(self, address: str, workers: int | None = None, timeout_s: float = 30.0) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise UsageError(f"--scheduler needs dask.distributed: {exc}") from None
        try:
            self.client = Client(address, timeout=timeout_s)
        except OSError as exc:
            raise UsageError(f"cannot reach Dask scheduler {address}: {exc}") from None
        self.address = address
        if workers:
            self.client.wait_for_workers(workers, timeout=timeout_s)

    @property
    def description(self) -> str:
        n = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        return f"Dask cluster {self.address}, {n} worker(s)"

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard URL, or None when it runs without one."""
        try:
            services = self.client.scheduler_info(n_workers=0).get("services", {})
        except Exception:
            return None
        if "dashboard" not in services:
            return None
        return self.client.dashboard_link

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        from distributed import as_completed

        if not tasks:
            return
        futures = {self.client.submit(fn, *args, pure=False, retries=1): key for key, args in tasks}
        for fut in as_completed(list(futures)):
            key = futures[fut]
            try:
                yield key, fut.result(), None
            except Exception as exc:
                yield key, None, exc
            finally:
                fut.release()

    def close(self) -> None:
        self.client.close()


def make_executor(scheduler: str | None, workers: int | None) -> LocalExecutor | InlineExecutor | DaskExecutor:
    """``local`` (process pool), ``inline`` (this process) or a Dask scheduler address."""
    if scheduler in (None, "", "local"):
        return LocalExecutor(workers)
    if scheduler == "inline":
        return InlineExecutor()
    if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise UsageError(f"--scheduler: expected 'local' or an address like tcp://HOST:8786, got {scheduler!r}")
    return DaskExecutor(scheduler, workers)
