"""The sweep driver: expand the spec, skip what the store has done, run the rest.

``run_sweep(spec, out, backend=...)`` is resumable and crash-safe:

- every run has a key (``store.run_key``); the store has one row per key, so a run is
  never recorded twice;
- a run is committed as soon as it finishes, so killing the driver at any moment
  (Ctrl-C, ``kill -9``, a lost machine) loses at most the runs in flight;
- the driver holds ``<out>/sweep.lock``; the next driver resets rows left ``running`` by
  a dead one to ``pending`` and runs them again;
- a run that fails with a user error (bad trace, config that fails at run time) is
  recorded ``failed`` with its error and the sweep goes on; a run whose worker died or
  that crashed is retried twice before it is recorded failed.  ``retry_failed`` runs
  the failed ones again.  Runs lost because *another* run killed the shared process
  pool are not charged: they run again alone (see ``backends.PoolBackend``);
- everything that can be checked is checked before the store is created or anything
  runs: the backend options, the output folder (writable, not a folder of ``memvirt
  compare``), and the spec's ``module:Class`` policies.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MemvirtError
from ..fileio import (
    atomic_path,
    check_folder_kind,
    check_output_path,
    ensure_dir,
    mark_folder,
)
from .backends import RETRIES, Backend, PoolBroken, WorkerLost, make_backend
from .spec import RunPoint, SweepSpec, check_plugin_policies, load_spec, trace_array_id
from .store import STORE_FILE, Store, run_key, whoami

FOLDER_KIND = "sweep"

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"


@dataclass(eq=False)
class PlannedRun:
    point: RunPoint
    key: str
    trace: dict  # trace info for the task (kind, content_id, path/generator ...)
    missing: str | None = None  # error text when the trace cannot be reached at all

    @property
    def task(self) -> dict:
        p = self.point
        return {"key": self.key, "mode": p.mode, "policy": p.policy, "config": p.config,
                "trace": self.trace}


@dataclass
class SweepReport:
    out: Path
    total: int
    counts: dict
    ran: int = 0
    skipped: int = 0
    duplicates: int = 0
    elapsed_s: float = 0.0
    backend: str = ""
    notes: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)


def default_out(spec: SweepSpec) -> Path:
    if spec.out is not None:
        return spec.out
    stem = spec.path.stem if spec.path else (spec.name or "sweep")
    return Path(f"{stem}-sweep")


def _as_spec(spec) -> SweepSpec:
    return spec if isinstance(spec, SweepSpec) else load_spec(spec)


# ---------------------------------------------------------------------- planning


def trace_infos(spec: SweepSpec, store: Store, out: Path) -> dict[str, dict]:
    """Trace name -> trace info (content id, how to reach it); 'missing' set when a file
    cannot be read."""
    infos: dict[str, dict] = {}
    for t in spec.traces:
        if t.kind == "synth":
            infos[t.name] = {"kind": "synth", "generator": t.synth, "params": t.params,
                             "content_id": t.synth_id()}
            continue
        if t.kind == "memory":
            from ..trace.parquet import write_trace

            cid = trace_array_id(t.trace)
            d = out / "traces"
            path = d / (cid.replace(":", "-") + ".parquet")
            if not path.exists():
                if store.readonly:  # --status: nothing is written
                    infos[t.name] = {"kind": "path", "path": str(path), "format": "parquet",
                                     "content_id": cid}
                    continue
                ensure_dir(d, "folder of in-memory traces")
                with atomic_path(path, "trace file") as tmp:
                    write_trace(t.trace, tmp)
            fmt = "parquet"
        else:
            path, fmt = t.path, t.format
        try:
            cid = store.content_id(path) if t.kind == "path" else cid
            st = os.stat(path)
        except FileNotFoundError:
            infos[t.name] = {"kind": "path", "path": str(path), "format": fmt,
                             "content_id": "missing:" + str(path),
                             "missing": f"TraceError: {path}: no such trace file"}
            continue
        except OSError as e:
            infos[t.name] = {"kind": "path", "path": str(path), "format": fmt,
                             "content_id": "missing:" + str(path),
                             "missing": f"TraceError: {path}: cannot read the trace file: {e}"}
            continue
        infos[t.name] = {"kind": "path", "path": str(Path(path).absolute()), "format": fmt,
                         "content_id": cid, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                         "suffix": "".join(Path(path).suffixes[-2:])}
    return infos


def plan(spec: SweepSpec, store: Store, out: Path) -> tuple[list[PlannedRun], int]:
    """The spec's runs with their keys, first occurrence of each key only; and the number
    of duplicate points dropped."""
    infos = trace_infos(spec, store, out)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    dups = 0
    for p in spec.points():
        info = infos[p.trace.name]
        key = run_key(info["content_id"], p.mode, p.policy, p.config)
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        tinfo = {k: v for k, v in info.items() if k != "missing"}
        runs.append(PlannedRun(p, key, tinfo, info.get("missing")))
    return runs, dups


def _register(store: Store, runs: list[PlannedRun]) -> None:
    store.register({"key": r.key, "seq": r.point.index, "trace": r.point.trace.name,
                    "trace_id": r.trace["content_id"], "mode": r.point.mode,
                    "policy": r.point.policy, "params": r.point.params,
                    "config": r.point.config} for r in runs)


# ---------------------------------------------------------------------- running


def check_out(out: Path) -> None:
    """The sweep's output folder can be written and holds no other command's results."""
    check_output_path(out, is_dir=True, what="sweep output folder")
    check_folder_kind(out, FOLDER_KIND)


def run_sweep(spec, out: str | Path | None = None, *, backend: Backend | None = None,
              workers: int | None = None, scheduler: str | None = None,
              dask_local: int | None = None, serial: bool = False, ship: str = "auto",
              retry_failed: bool = False, export: bool = True, quiet: bool = False,
              progress: Callable[[dict], None] | None = None,
              log: Callable[[str], None] | None = None) -> SweepReport:
    """Run (or resume) a sweep into ``out``.  ``progress(counts)`` is called after each
    finished run with total/done/failed/running/pending/ran; ``log(text)`` gets notes;
    ``quiet`` silences the Dask backends' own log lines."""
    t0 = time.monotonic()
    spec = _as_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    say = log or (lambda s: None)
    # everything that can be checked, before the store is created or anything runs
    be = backend or make_backend(workers=workers, scheduler=scheduler, dask_local=dask_local,
                                 serial=serial, ship=ship, quiet=quiet)
    check_out(out)
    check_plugin_policies(spec)
    store = Store(out)
    try:
        store.lock()
        mark_folder(out, FOLDER_KIND)
        runs, dups = plan(spec, store, out)
        _register(store, runs)
        if spec.text:
            store.set_meta("spec", spec.text)
        stale = store.reset_running()
        if stale:
            say(f"{stale} run(s) left running by an interrupted driver will run again")
        keys = [r.key for r in runs]
        if retry_failed:
            store.reset_failed(keys)
        status = store.statuses(keys)
        todo = [r for r in runs if status.get(r.key, "pending") == "pending"]
        report = SweepReport(out=out, total=len(runs), counts={}, duplicates=dups,
                             skipped=len(runs) - len(todo))
        # runs whose trace cannot be reached fail right away
        me = whoami()
        for r in [r for r in todo if r.missing]:
            store.mark_running([r.key], me)
            store.finish(r.key, {"status": "failed", "error": r.missing, "worker": None})
            report.ran += 1
        missing = {r.trace["path"] for r in todo if r.missing}
        for m in sorted(missing):
            say(f"warning: {m}: no such trace file; its runs are recorded as failed")
        todo = [r for r in todo if not r.missing]
        if todo:
            report.backend = be.describe()
            say(f"{len(todo)} of {len(runs)} runs to do on {report.backend}"
                + (f" ({report.skipped} already finished)" if report.skipped else ""))
            be.start()
            try:
                needed = {r.trace["content_id"]: r.trace for r in todo}
                for note in be.prepare(needed):
                    say(note)
                report.ran += _drive(store, be, todo, keys, progress, me)
            except BaseException:
                be.abort()
                raise
            else:
                be.close()
        report.counts = store.counts(keys)
        report.failed = [{"label": _label(r), "error": r["error"]}
                         for r in store.rows(keys, status="failed", with_result=False)]
        if export:
            report.exports = export_results(store, spec, out, keys)
        report.elapsed_s = time.monotonic() - t0
        return report
    finally:
        store.close()


def _drive(store: Store, be: Backend, todo: list[PlannedRun], keys: list[str],
           progress, me: str) -> int:
    queue = deque(todo)
    inflight: dict = {}
    submitting: list[PlannedRun] = []
    attempts: dict[str, int] = {}
    alone: set[str] = set()  # runs that killed their worker: they run in their own process
    counts = store.counts(keys)
    counts["running"] = 0
    ran = 0

    def tick():
        if progress is not None:
            c = dict(counts)
            c["total"] = len(keys)
            c["ran"] = ran
            progress(c)

    tick()
    try:
        while queue or inflight:
            window = max(1, 2 * be.capacity()) if be.name != "serial" else 1
            submitting = []
            while queue and len(inflight) + len(submitting) < window:
                submitting.append(queue.popleft())
            if submitting:
                store.mark_running([r.key for r in submitting], me)
                counts["pending"] -= len(submitting)
                counts["running"] += len(submitting)
                for r in submitting:
                    inflight[be.submit(r.task, isolated=r.key in alone)] = r
                submitting = []
                tick()
            for fut in be.wait(list(inflight), timeout=0.25):
                r = inflight.pop(fut)
                try:
                    oc = be.outcome(fut)
                except PoolBroken:
                    # Some run killed the shared pool, maybe not this one: not charged; it
                    # runs again alone, where a death would be its own.
                    inflight[be.submit(r.task, isolated=True)] = r
                    continue
                except Exception as e:  # noqa: BLE001 - lost worker or unexpected crash
                    if isinstance(e, WorkerLost) and be.can_isolate:
                        alone.add(r.key)
                    n = attempts[r.key] = attempts.get(r.key, 0) + 1
                    if not be.retries_builtin and n <= RETRIES:
                        queue.appendleft(r)
                        counts["running"] -= 1
                        counts["pending"] += 1
                        continue
                    tries = n if not be.retries_builtin else RETRIES + 1
                    oc = {"status": "failed", "worker": None,
                          "error": f"{type(e).__name__}: {e} (after {tries} attempts)"}
                finally:
                    be.release(fut)
                if oc.get("key") not in (None, r.key):  # pragma: no cover - defensive
                    raise MemvirtError(f"backend returned run {oc.get('key')} for {r.key}")
                store.finish(r.key, oc)
                counts["running"] -= 1
                counts[oc["status"]] += 1
                ran += 1
                tick()
    except BaseException:
        # stop here; the runs in flight go back to pending (a dead driver's are reset
        # by the next one)
        try:
            store.mark_pending([r.key for r in list(inflight.values()) + submitting])
        except Exception:  # noqa: BLE001 - the store itself may be the problem
            pass
        raise
    return ran


def _label(row: dict) -> str:
    mp = row["mode"] + (f"/{row['policy']}" if row.get("policy") else "")
    return " ".join([row["trace"], mp] + [f"{k}={v}" for k, v in row["params"].items()])


def export_results(store: Store, spec: SweepSpec, out: Path, keys: list[str] | None = None
                   ) -> list[Path]:
    """Write ``results.parquet`` and ``results.csv`` (the spec's runs) into ``out``."""
    check_out(out)
    if keys is None:
        keys = [r.key for r in plan(spec, store, out)[0]]
    return [store.export_parquet(out / RESULTS_PARQUET, keys, spec.swept_keys),
            store.export_csv(out / RESULTS_CSV, keys, spec.swept_keys)]


def sweep_status(spec, out: str | Path | None = None) -> dict:
    """Counts of the spec's runs per status (read-only; rows 'running' with no live driver
    count as pending), plus the failed runs with their errors."""
    spec = _as_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    if not (out / STORE_FILE).exists():
        n = len(_points_unique(spec))
        return {"out": out, "total": n,
                "counts": {"done": 0, "running": 0, "failed": 0, "pending": n},
                "failed": [], "driver_alive": False}
    check_folder_kind(out, FOLDER_KIND)
    store = Store(out, create=False)
    try:
        runs, _ = plan(spec, store, out)
        keys = [r.key for r in runs]
        counts = store.counts(keys)
        alive = store.driver_alive()
        if not alive and counts["running"]:
            counts["pending"] += counts["running"]
            counts["running"] = 0
        failed = [{"label": _label(r), "error": r["error"]}
                  for r in store.rows(keys, status="failed", with_result=False)]
        return {"out": out, "total": len(keys), "counts": counts, "failed": failed,
                "driver_alive": alive}
    finally:
        store.close()


def _points_unique(spec: SweepSpec) -> list[RunPoint]:
    return spec.points()


def sweep_rows(spec, out: str | Path | None = None, status: str | None = "done") -> list[dict]:
    """The store rows of the spec's runs (result JSON decoded), in spec order."""
    spec = _as_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    if not (out / STORE_FILE).exists():
        raise MemvirtError(f"{out}: no sweep results here (run the sweep first)")
    store = Store(out, create=False)
    try:
        runs, _ = plan(spec, store, out)
        return store.rows([r.key for r in runs], status=status)
    finally:
        store.close()


__all__ = ["PlannedRun", "SweepReport", "default_out", "export_results", "plan", "run_sweep",
           "sweep_rows", "sweep_status"]
