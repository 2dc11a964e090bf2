"""Where tasks run: a local process pool, or a Dask distributed cluster.

All executors give the same interface: ``submit(key, fn, *args)`` at any time, and
``results()`` yields ``(key, result, error)`` as tasks finish, including tasks
submitted while iterating. The runner decides what to submit when (per-file tasks,
then label tasks for stitched flows) with the same code for every executor, and
merges and writes in file order whatever the completion order, so the dataset is
the same byte for byte either way.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from classifier.batch._preload_env import PRELOAD_MODEL_ENV
from classifier.errors import UsageError


def _context() -> multiprocessing.context.BaseContext:
    """Fork server with the engine and model libraries preloaded (``classifier.batch._preload``).

    Workers are forked from a clean server process, so they inherit no client state
    (as with spawn) but start in milliseconds instead of ~3 s of imports each; and
    they leave with ``os._exit``, skipping the interpreter teardown. Spawn where there
    is no fork server (not on Linux).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["classifier.batch._preload"])
    return ctx


class LocalExecutor:
    """A pool of worker processes on this machine (forked from a clean fork server)."""

    def __init__(self, workers: int | None = None, model_path: str | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.model_path = model_path
        self._pool: ProcessPoolExecutor | None = None
        self.startup_s = 0.0  # until every worker process was running

    @property
    def description(self) -> str:
        return f"local process pool, {self.workers} worker(s)"

    dashboard_link: str | None = None
    shares_disk = True  # workers see the dataset's work area and write their results there

    def start(self) -> None:
        """Spawn the worker processes now, so their start-up overlaps the client's own."""
        if self._pool is None:
            t0 = time.perf_counter()
            # The fork server (started with the first worker) loads this model for all of them,
            # and its OpenMP runtime (the model's predict) starts no more threads than the
            # workers' share of the cores: N workers x all cores would oversubscribe them.
            env = {PRELOAD_MODEL_ENV: self.model_path or "",
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
                   or str(max(1, (os.cpu_count() or 1) // self.workers))}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_context())
                self._pending: dict[Future, Any] = {}
                # Start every process now (the pool starts them lazily) and wait until they run.
                wait([self._pool.submit(int) for _ in range(self.workers)])
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            self.startup_s = time.perf_counter() - t0

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        self.start()
        assert self._pool is not None
        self._pending[self._pool.submit(fn, *args)] = key

    def results(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield ``(key, result, error)`` as tasks finish, until none is pending."""
        while self._pool is not None and self._pending:
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: str(self._pending[f])):
                key = self._pending.pop(fut)
                exc = fut.exception()
                yield key, (None if exc else fut.result()), exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class InlineExecutor:
    """Tasks run one after another in this process (tests, debugging, tiny inputs)."""

    workers = 1
    description = "this process"
    dashboard_link: str | None = None

    def __init__(self) -> None:
        self._done: deque[tuple[Any, Any, BaseException | None]] = deque()

    def start(self) -> None:
        pass

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._done.append((key, fn(*args), None))
        except Exception as exc:
            self._done.append((key, None, exc))

    def results(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        while self._done:
            yield self._done.popleft()

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
        self._keys: dict[str, Any] = {}
        self._ac: Any = None
        n = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        self.workers = max(1, n)

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

    def start(self) -> None:
        pass

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        from distributed import as_completed

        fut = self.client.submit(fn, *args, pure=False, retries=1)
        self._keys[fut.key] = key
        if self._ac is None:
            self._ac = as_completed([fut])
        else:
            self._ac.add(fut)

    def results(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Futures submitted while iterating are picked up (``as_completed.add``)."""
        while self._ac is not None and not self._ac.is_empty():
            fut = next(self._ac)
            key = self._keys.pop(fut.key)
            try:
                yield key, fut.result(), None
            except Exception as exc:
                yield key, None, exc
            finally:
                fut.release()

    def close(self) -> None:
        self.client.close()


def make_executor(scheduler: str | None, workers: int | None,
                  model_path: str | None = None) -> LocalExecutor | InlineExecutor | DaskExecutor:
    """``local`` (process pool), ``inline`` (this process) or a Dask scheduler address."""
    if scheduler in (None, "", "local"):
        return LocalExecutor(workers, model_path)
    if scheduler == "inline":
        return InlineExecutor()
    if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise UsageError(f"--scheduler: expected 'local' or an address like tcp://HOST:8786, got {scheduler!r}")
    return DaskExecutor(scheduler, workers)
