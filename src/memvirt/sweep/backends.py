"""Where sweep runs execute: in this process, a local process pool, or a Dask cluster.

Every backend runs the same function, ``run_task(task, payload)``, so results are the
same bit for bit whatever the backend.  A task is a plain dict::

    {"key": run key, "mode": ..., "policy": ..., "config": full config dict,
     "trace": {"kind": "path", "path": ..., "format": ..., "content_id": ..., ...}
           or {"kind": "synth", "generator": ..., "params": {...}, "content_id": ...}}

Trace delivery: synthetic traces are generated on the worker (cached per worker process
by content id); trace files are read by path when the worker sees the same file (same
size and mtime, or same SHA-256), otherwise the driver ships the file bytes once per
worker (``client.scatter(..., broadcast=True)``) and each worker keeps one local copy
per content id (in ``$TMPDIR/memvirt-sweep-traces``).

``run_task`` returns an outcome dict (``status`` done with ``result``, or failed with
``error`` for a ``MemvirtError``: bad trace, bad config); any other exception is
raised as ``RunCrashed`` so that the backend retries the run (Dask ``retries=2``, the
same for the local pool), as it does when a worker process dies.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as cf_wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .. import __version__
from ..errors import MemvirtError
from .store import file_content_id, whoami

RETRIES = 2  # extra attempts of a run whose worker died or that crashed unexpectedly


class RunCrashed(Exception):
    """An unexpected (non-user) error in a run, with the worker's traceback."""


class WorkerLost(Exception):
    """The worker process running a run died."""


# ---------------------------------------------------------------------- worker side

_SYNTH_CACHE: OrderedDict[str, object] = OrderedDict()
_SYNTH_KEEP = 2
_CACHE_LOCK = threading.Lock()


def _synth_trace(info: dict):
    cid = info["content_id"]
    with _CACHE_LOCK:
        tr = _SYNTH_CACHE.get(cid)
        if tr is not None:
            _SYNTH_CACHE.move_to_end(cid)
            return tr
    from ..trace.synth import synthesize

    tr = synthesize(info["generator"], **info["params"])
    with _CACHE_LOCK:
        _SYNTH_CACHE[cid] = tr
        while len(_SYNTH_CACHE) > _SYNTH_KEEP:
            _SYNTH_CACHE.popitem(last=False)
    return tr


def trace_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "memvirt-sweep-traces"


def materialize(content_id: str, suffix: str, data: bytes) -> Path:
    """Keep a local copy of shipped trace bytes (once per content id per machine)."""
    d = trace_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    p = d / (content_id.replace(":", "-") + suffix)
    try:
        if p.stat().st_size == len(data):
            return p
    except FileNotFoundError:
        pass
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


def _open(info: dict, payload):
    from ..trace.base import open_trace

    if info["kind"] == "synth":
        return open_trace(_synth_trace(info))
    path = info["path"]
    if payload is not None:
        path = materialize(info["content_id"], info.get("suffix", ""), payload)
    return open_trace(path, info.get("format"))


def run_task(task: dict, payload: bytes | None = None) -> dict:
    """Run one simulation (on a worker).  Returns the outcome dict."""
    t0 = time.perf_counter()
    base = {"key": task["key"], "worker": whoami()}
    try:
        from ..api import simulate
        from ..config import Config

        src = _open(task["trace"], payload)
        res = simulate(src, Config.from_dict(task["config"]), task["mode"], task["policy"])
        return {**base, "status": "done", "result": res.to_dict(),
                "elapsed_s": time.perf_counter() - t0}
    except MemvirtError as e:
        return {**base, "status": "failed", "error": f"{type(e).__name__}: {e}",
                "elapsed_s": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - retried by the backend, then recorded
        raise RunCrashed(f"{type(e).__name__}: {e} (on {base['worker']})\n"
                         f"{traceback.format_exc(limit=8)}") from None


def worker_info() -> dict:
    import sys

    return {"memvirt": __version__, "python": sys.version.split()[0], "host": whoami()}


def probe_path(path: str, size: int, mtime_ns: int, content_id: str) -> bool:
    """Whether this worker sees the driver's trace file at ``path`` (same bytes)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != size:
        return False
    if st.st_mtime_ns == mtime_ns:
        return True
    try:
        return file_content_id(path) == content_id
    except OSError:
        return False


def _pool_worker_init() -> None:
    # Ctrl-C goes to the driver, which stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A driver killed with SIGKILL cannot stop its pool: the workers notice that their
    # parent is gone and exit (instead of waiting for work forever).
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="memvirt-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------- backends


class Backend:
    """The driver's view of an executor."""

    name = "backend"
    retries_builtin = False  # True when the executor retries lost runs itself (Dask)

    def start(self) -> None: ...

    def capacity(self) -> int:
        return 1

    def prepare(self, traces: dict[str, dict]) -> list[str]:
        """Make the traces (content id -> trace info) reachable; returns notes for the log."""
        return []

    def submit(self, task: dict):
        raise NotImplementedError

    def wait(self, futures: list, timeout: float) -> list:
        raise NotImplementedError

    def outcome(self, fut) -> dict:
        return fut.result()

    def release(self, fut) -> None: ...

    def abort(self) -> None:
        self.close()

    def close(self) -> None: ...

    def describe(self) -> str:
        return self.name


class SerialBackend(Backend):
    """Runs in the driver process, one run at a time (debugging, tiny sweeps)."""

    name = "serial"

    def submit(self, task: dict) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(run_task(task))
        except Exception as e:  # noqa: BLE001 - delivered through the future
            fut.set_exception(e)
        return fut

    def wait(self, futures: list, timeout: float) -> list:
        return [f for f in futures if f.done()]

    def describe(self) -> str:
        return "serial (in this process)"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class PoolBackend(Backend):
    """A local process pool (spawned processes), one run per process at a time."""

    name = "pool"

    def __init__(self, workers: int | None = None):
        self.workers = int(workers) if workers else default_workers()
        if self.workers < 1:
            raise MemvirtError(f"--workers must be at least 1, got {workers}")
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> None:
        import multiprocessing as mp

        self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                         mp_context=mp.get_context("spawn"),
                                         initializer=_pool_worker_init)

    def start(self) -> None:
        self._new_pool()

    def capacity(self) -> int:
        return self.workers

    def submit(self, task: dict) -> Future:
        assert self._pool is not None
        try:
            return self._pool.submit(run_task, task)
        except BrokenProcessPool:
            self._kill()
            self._new_pool()
            return self._pool.submit(run_task, task)

    def wait(self, futures: list, timeout: float) -> list:
        done, _ = cf_wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, fut: Future) -> dict:
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise WorkerLost(f"a worker process died ({e})") from None

    def _kill(self) -> None:
        pool = self._pool
        if pool is None:
            return
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                p.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def abort(self) -> None:
        self._kill()
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return f"local process pool ({self.workers} workers)"


class DaskBackend(Backend):
    """A Dask cluster: an existing scheduler (``address``) or a ``LocalCluster`` of
    ``n_local`` single-threaded worker processes.  ``ship``: auto (by path when every
    worker sees the file, else ship it), always, or never."""

    name = "dask"
    retries_builtin = True

    def __init__(self, address: str | None = None, n_local: int | None = None,
                 ship: str = "auto", wait_workers: float = 120.0):
        if (address is None) == (n_local is None):
            raise ValueError("give a scheduler address or a LocalCluster size")
        if ship not in ("auto", "always", "never"):
            raise MemvirtError(f"ship must be auto, always or never, got {ship!r}")
        if n_local is not None and n_local < 1:
            raise MemvirtError(f"--dask-local must be at least 1, got {n_local}")
        self.address = address
        self.n_local = n_local
        self.ship = ship
        self.wait_workers = wait_workers
        self.client = None
        self.cluster = None
        self._payloads: dict[str, object] = {}
        self._token = uuid.uuid4().hex[:8]

    def start(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - dask[distributed] is a dependency
            raise MemvirtError("Dask backends need dask[distributed]: "
                               "pip install 'dask[distributed]'") from None
        if self.n_local is not None:
            self.cluster = LocalCluster(n_workers=self.n_local, threads_per_worker=1,
                                        processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.address, timeout=30)
            except (OSError, TimeoutError) as e:
                raise MemvirtError(f"cannot connect to the Dask scheduler at {self.address}: "
                                   f"{e}") from None
        try:
            self.client.wait_for_workers(1, timeout=self.wait_workers)
        except TimeoutError:
            self.close()
            raise MemvirtError(f"no Dask workers joined the scheduler at {self.address} within "
                               f"{self.wait_workers:.0f} s (start some: dask worker "
                               f"{self.address})") from None
        self._check_versions()

    def _check_versions(self) -> None:
        try:
            infos = self.client.run(worker_info, on_error="return")
        except Exception as e:  # noqa: BLE001 - e.g. memvirt not importable there
            raise MemvirtError(f"cannot run memvirt on the Dask workers ({type(e).__name__}: "
                               f"{e}); install memvirt {__version__} on every worker") from None
        bad = []
        for addr, info in infos.items():
            if isinstance(info, BaseException):
                bad.append(f"{addr}: {type(info).__name__}: {info}")
            elif info.get("memvirt") != __version__:
                bad.append(f"{addr}: memvirt {info.get('memvirt')}")
        if bad:
            raise MemvirtError(f"Dask workers must run memvirt {__version__} (as this driver): "
                               + "; ".join(bad))

    def capacity(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - scheduler briefly unreachable
            return 1

    def prepare(self, traces: dict[str, dict]) -> list[str]:
        notes = []
        for cid, info in traces.items():
            if info["kind"] != "path":
                continue
            ship = self.ship == "always"
            if self.ship == "auto":
                seen = self.client.run(probe_path, info["path"], info["size"],
                                       info["mtime_ns"], cid, on_error="return")
                missing = [a for a, ok in seen.items() if ok is not True]
                ship = bool(missing)
                if ship:
                    notes.append(f"{info['path']}: not visible on {len(missing)} of {len(seen)} "
                                 "workers; shipping it to every worker")
            if ship:
                data = Path(info["path"]).read_bytes()
                self._payloads[cid] = self.client.scatter(data, broadcast=True, hash=False)
        return notes

    def submit(self, task: dict):
        cid = task["trace"]["content_id"]
        args = (task,) if cid not in self._payloads else (task, self._payloads[cid])
        return self.client.submit(run_task, *args, key=f"memvirt-run-{task['key'][:16]}-"
                                  f"{self._token}", pure=False, retries=RETRIES)

    def wait(self, futures: list, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        while True:
            done = [f for f in futures if f.done()]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.02)

    def outcome(self, fut) -> dict:
        if fut.status == "cancelled":
            raise WorkerLost("the run was cancelled by the Dask scheduler (lost workers or "
                             "scheduler restart)")
        try:
            return fut.result()
        except RunCrashed:
            raise
        except Exception as e:
            if type(e).__name__ == "KilledWorker":
                raise WorkerLost(f"the Dask workers running it died too often ({e})") from None
            raise

    def release(self, fut) -> None:
        try:
            fut.release()
        except Exception:  # noqa: BLE001 - already released or client closed
            pass

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        for f in self._payloads.values():
            self.release(f)
        self._payloads.clear()
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
            self.client = None
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception:  # noqa: BLE001
                pass
            self.cluster = None

    def describe(self) -> str:
        if self.n_local is not None:
            return f"Dask LocalCluster ({self.n_local} workers x 1 thread)"
        return f"Dask cluster at {self.address}"


def make_backend(*, workers: int | None = None, scheduler: str | None = None,
                 dask_local: int | None = None, serial: bool = False,
                 ship: str = "auto") -> Backend:
    chosen = [n for n, v in (("--scheduler", scheduler), ("--dask-local", dask_local),
                             ("--serial", serial or None)) if v is not None]
    if len(chosen) > 1:
        raise MemvirtError(f"choose one backend, not {' and '.join(chosen)}")
    if serial:
        return SerialBackend()
    if scheduler is not None:
        return DaskBackend(address=scheduler, ship=ship)
    if dask_local is not None:
        return DaskBackend(n_local=dask_local, ship=ship)
    return PoolBackend(workers)


__all__ = ["Backend", "DaskBackend", "PoolBackend", "RETRIES", "RunCrashed", "SerialBackend",
           "WorkerLost", "default_workers", "make_backend", "materialize", "probe_path",
           "run_task"]
