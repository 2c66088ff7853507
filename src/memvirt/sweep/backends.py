"""Where sweep runs execute: in this process, a local process pool, or a Dask cluster.

Every backend runs the same function, ``run_task(task, payload)``, so results are the
same bit for bit whatever the backend.  A task is a plain dict::

    {"key": run key, "mode": ..., "policy": ..., "config": full config dict,
     "trace": {"kind": "path", "path": ..., "format": ..., "content_id": ..., ...}
           or {"kind": "synth", "generator": ..., "params": {...}, "content_id": ...}}

Trace delivery: synthetic traces are generated on the worker (cached per worker process
by content id); trace files are read by path when the worker sees the same file (same
size and mtime, or same SHA-256), otherwise the driver ships the file bytes once per
worker (``client.scatter(..., broadcast=True)``) and each worker keeps one local copy,
named by the SHA-256 of the bytes, in a private per-user folder
(``$TMPDIR/memvirt-sweep-traces-<uid>``, mode 0700; a folder with other permissions or
another owner is refused) and checks the content hash of a copy before it trusts it.

``run_task`` returns an outcome dict (``status`` done with ``result``, or failed with
``error`` for a ``MemvirtError``: bad trace, bad config); any other exception is
raised as ``RunCrashed`` so that the backend retries the run (Dask ``retries=2``, the
same for the local pool), as it does when a worker process dies.

The local pool runs several runs in one pool: when one of them kills its worker process,
the pool breaks and every run in it is lost.  Those runs are not charged an attempt:
each is run again alone in a process of its own (``PoolBroken``), so only a run whose
own process dies is charged (``WorkerLost``), and its retries run alone too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
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


class PoolBroken(Exception):
    """The shared process pool broke while the run was in it: some run in the pool killed
    its worker, maybe not this one.  The run is not charged; it runs again alone."""


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
    """This user's folder of shipped traces (not created here)."""
    return Path(tempfile.gettempdir()) / f"memvirt-sweep-traces-{os.getuid()}"


def private_dir(d: Path) -> Path:
    """Create ``d`` with mode 0700 if needed; refuse it unless it is a real folder (not a
    symlink) owned by this user that nobody else can write or read."""
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise MemvirtError(f"{d}: cannot create the trace cache folder: {e.strerror or e}") from None
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise MemvirtError(f"{d}: the trace cache must be a folder, not a symlink or a file; "
                           "remove it")
    if st.st_uid != os.getuid():
        raise MemvirtError(f"{d}: the trace cache folder belongs to user {st.st_uid}, not to "
                           f"you ({os.getuid()}); refusing to use it (remove it, or set TMPDIR)")
    if st.st_mode & 0o077:
        raise MemvirtError(f"{d}: the trace cache folder has mode {st.st_mode & 0o777:o}; "
                           "it must be private (0700); refusing to use it (remove it)")
    return d


_DIGESTS: OrderedDict[int, tuple[bytes, str]] = OrderedDict()  # id(data) -> (data, sha256)
_VERIFIED: dict[str, tuple] = {}  # path -> (ino, size, mtime_ns) whose content was checked


def _digest(data: bytes) -> str:
    with _CACHE_LOCK:
        hit = _DIGESTS.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
    h = hashlib.sha256(data).hexdigest()
    with _CACHE_LOCK:
        _DIGESTS[id(data)] = (data, h)
        while len(_DIGESTS) > _SYNTH_KEEP:
            _DIGESTS.popitem(last=False)
    return h


def _file_ok(p: Path, digest: str) -> bool:
    """Whether ``p`` is a regular file of ours holding exactly the bytes of ``digest``."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        return False
    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(str(p)) == sig:
        return True
    with open(p, "rb") as f:
        ok = hashlib.file_digest(f, "sha256").hexdigest() == digest
    if ok:
        _VERIFIED[str(p)] = sig
    return ok


def materialize(content_id: str, suffix: str, data: bytes) -> Path:
    """Keep a local copy of shipped trace bytes (once per content per machine), in this
    user's private cache folder, named by the SHA-256 of the bytes; a copy is used only
    if its content hash matches."""
    digest = _digest(data)
    if content_id.startswith("sha256:") and content_id[7:] != digest:
        raise MemvirtError(f"shipped trace bytes do not match their content id {content_id} "
                           f"(got sha256:{digest})")
    d = private_dir(trace_cache_dir())
    p = d / (f"sha256-{digest}" + suffix)
    if _file_ok(p, digest):
        return p
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, p)
    st = os.lstat(p)
    _VERIFIED[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns)
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
        from ..config import Config
        from ..errors import TraceError
        from ..fileio import dumps_json
        from ..policy.oracle import simulate_with_oracle

        cfg = Config.from_dict(task["config"])
        info = task["trace"]
        src = _open(info, payload)  # (a source can be read again: the oracle reads it 3x)
        res = simulate_with_oracle(src, cfg, task["mode"], task["policy"])
        d = res.to_dict()
        if not d["instructions"]:
            name = info.get("path") or info.get("generator") or "trace"
            raise TraceError(f"{name}: the trace has no instructions ({d['records']} records)")
        dumps_json(d, what="the result")  # standard JSON only: refuse NaN/inf here
        return {**base, "status": "done", "result": d,
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
    can_isolate = False  # True when submit(task, isolated=True) runs it in its own process

    def start(self) -> None: ...

    def capacity(self) -> int:
        return 1

    def prepare(self, traces: dict[str, dict]) -> list[str]:
        """Make the traces (content id -> trace info) reachable; returns notes for the log."""
        return []

    def submit(self, task: dict, isolated: bool = False):
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

    def submit(self, task: dict, isolated: bool = False) -> Future:
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
    """A local process pool (spawned processes), one run per process at a time.

    When a run kills its worker, the pool breaks and every run in it fails with
    ``BrokenProcessPool``; ``outcome`` reports those as ``PoolBroken`` (not charged), and
    the driver submits them again with ``isolated=True``: each then runs alone in a
    process of its own (at most ``workers`` such processes at once), where a death is
    that run's own (``WorkerLost``)."""

    name = "pool"
    can_isolate = True

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
            raise MemvirtError(f"--workers must be at least 1, got {workers} (leave it out "
                               "to use every core)")
        self.workers = int(workers) if workers is not None else default_workers()
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._iso_wait: deque = deque()  # (outer future, task) waiting for a slot
        self._iso_live: dict[Future, ProcessPoolExecutor] = {}  # outer -> its own executor
        self._iso_done: list[ProcessPoolExecutor] = []  # finished, to shut down

    def _executor(self, n: int) -> ProcessPoolExecutor:
        import multiprocessing as mp

        return ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                                   initializer=_pool_worker_init)

    def _new_pool(self) -> None:
        self._pool = self._executor(self.workers)

    def start(self) -> None:
        self._new_pool()

    def capacity(self) -> int:
        return self.workers

    def submit(self, task: dict, isolated: bool = False) -> Future:
        if isolated:
            outer: Future = Future()
            with self._lock:
                self._iso_wait.append((outer, task))
            self._pump()
            return outer
        assert self._pool is not None
        try:
            return self._pool.submit(run_task, task)
        except BrokenProcessPool:
            self._kill(self._pool)
            self._new_pool()
            return self._pool.submit(run_task, task)

    # ---------------------------------------------------------------- isolated runs
    def _pump(self) -> None:
        """Start waiting isolated runs while fewer than ``workers`` run (driver thread)."""
        with self._lock:
            done, self._iso_done = self._iso_done, []
        for ex in done:
            ex.shutdown(wait=True)
        while True:
            with self._lock:
                if not self._iso_wait or len(self._iso_live) >= self.workers:
                    return
                outer, task = self._iso_wait.popleft()
            ex = self._executor(1)
            inner = ex.submit(run_task, task)
            with self._lock:
                self._iso_live[outer] = ex
            inner.add_done_callback(lambda f, o=outer: self._iso_finished(o, f))

    def _iso_finished(self, outer: Future, inner: Future) -> None:
        # runs in the executor's thread: hand the outcome over, nothing else
        try:
            outer.set_result(inner.result())
        except BrokenProcessPool as e:
            outer.set_exception(WorkerLost(f"its worker process died ({e})"))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            outer.set_exception(e)
        with self._lock:
            ex = self._iso_live.pop(outer, None)
            if ex is not None:
                self._iso_done.append(ex)

    def wait(self, futures: list, timeout: float) -> list:
        self._pump()
        done, _ = cf_wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, fut: Future) -> dict:
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise PoolBroken(f"the process pool broke ({e})") from None

    def _kill(self, pool: ProcessPoolExecutor | None) -> None:
        if pool is None:
            return
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                p.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def abort(self) -> None:
        self._kill(self._pool)
        self._pool = None
        with self._lock:
            pools = list(self._iso_live.values()) + self._iso_done
            self._iso_live.clear()
            self._iso_done = []
            self._iso_wait.clear()
        for ex in pools:
            self._kill(ex)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            pools = list(self._iso_live.values()) + self._iso_done
            self._iso_live.clear()
            self._iso_done = []
        for ex in pools:
            ex.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"local process pool ({self.workers} workers)"


SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def check_scheduler_address(address: str) -> str:
    """``MemvirtError`` unless ``address`` looks like a Dask scheduler address
    (``[scheme://]host:port``); nothing is contacted."""
    text = str(address).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in SCHEDULER_SCHEMES:
        raise MemvirtError(f"--scheduler {address!r}: unknown scheme '{scheme}'; expected "
                           f"{', '.join(SCHEDULER_SCHEMES)} (e.g. tcp://host:8786)")
    if scheme == "inproc":
        return text
    host, colon, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address: [::1]:8786
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets
    ok = (bool(colon and host and port.isdigit()) and 1 <= int(port) <= 65535
          and not any(c.isspace() or c in "/[]@" for c in host))
    if not ok:
        raise MemvirtError(f"--scheduler {address!r}: not a scheduler address; expected "
                           "[tcp://]HOST:PORT with a port from 1 to 65535, e.g. "
                           "tcp://host:8786")
    return text


class DaskBackend(Backend):
    """A Dask cluster: an existing scheduler (``address``) or a ``LocalCluster`` of
    ``n_local`` single-threaded worker processes.  ``ship``: auto (by path when every
    worker sees the file, else ship it), always, or never."""

    name = "dask"
    retries_builtin = True

    def __init__(self, address: str | None = None, n_local: int | None = None,
                 ship: str = "auto", wait_workers: float = 120.0, quiet: bool = False):
        if (address is None) == (n_local is None):
            raise ValueError("give a scheduler address or a LocalCluster size")
        if ship not in ("auto", "always", "never"):
            raise MemvirtError(f"ship must be auto, always or never, got {ship!r}")
        if n_local is not None and n_local < 1:
            raise MemvirtError(f"--dask-local must be at least 1, got {n_local}")
        if address is not None:
            check_scheduler_address(address)
        self.quiet = quiet
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
        if self.quiet:  # Dask logs its own errors and warnings on stderr; --quiet: none
            for name in ("distributed", "dask", "bokeh", "tornado"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.n_local is not None:
            self.cluster = LocalCluster(n_workers=self.n_local, threads_per_worker=1,
                                        processes=True, dashboard_address=None,
                                        silence_logs=logging.CRITICAL if self.quiet
                                        else logging.WARNING)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.address, timeout=30)
            except (OSError, TimeoutError, ValueError) as e:
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

    def submit(self, task: dict, isolated: bool = False):
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
                 ship: str = "auto", quiet: bool = False) -> Backend:
    """The backend for these options (checked; nothing is started or contacted)."""
    chosen = [n for n, v in (("--workers", workers), ("--scheduler", scheduler),
                             ("--dask-local", dask_local), ("--serial", serial or None))
              if v is not None]
    if len(chosen) > 1:
        raise MemvirtError(f"choose one backend, not {' and '.join(chosen)}")
    if serial:
        return SerialBackend()
    if scheduler is not None:
        return DaskBackend(address=scheduler, ship=ship, quiet=quiet)
    if dask_local is not None:
        return DaskBackend(n_local=dask_local, ship=ship, quiet=quiet)
    return PoolBackend(workers)


__all__ = ["Backend", "DaskBackend", "PoolBackend", "PoolBroken", "RETRIES", "RunCrashed",
           "SerialBackend", "WorkerLost", "check_scheduler_address", "default_workers",
           "make_backend", "materialize", "private_dir", "probe_path", "run_task",
           "trace_cache_dir"]
