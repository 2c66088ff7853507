"""The durable result store of a sweep: one SQLite file (WAL) in the output folder.

``<out>/sweep.sqlite`` holds one row per run, keyed by a hash of everything that
determines the result (``run_key``): the trace content id, the mode, the policy, the
full config dict and the memvirt version.  The trace content id is a SHA-256 of the
file bytes (``sha256:...``), of generator + parameters + memvirt version for synthetic
traces (``synth:...``) or of the columns of an in-memory trace (``arrays:...``).

Table ``runs`` (one row per run):

===================  =========================================================
key                  run key (hex SHA-256), the primary key
seq                  position of the run in the spec's expansion
trace, trace_id      trace name and content id
mode, policy         mode; policy for selective runs (else NULL)
params               JSON: the swept parameters of the run (dotted key -> value)
config               JSON: the full config
memvirt_version      the version that computed the row
status               pending | running | done | failed
error                for failed runs: the error text
attempts             how many times the run was started
driver, worker       who ran it (host:pid)
started, finished    UNIX times;  elapsed_s: wall time of the simulation
cycles ... records   flat metrics of the result (see ``METRICS``)
result               JSON: the full ``Result.to_dict()``
===================  =========================================================

Only the sweep driver writes, and it commits each run as soon as it finishes
(``synchronous=FULL``), so a crash loses no finished run.  A failed read or write (a full
disk) is a ``StoreError`` naming the store file; the transaction is rolled back, so the
store stays as it was and the same command resumes once the problem is fixed.  A driver holds an exclusive
lock on ``<out>/sweep.lock`` while it runs; rows left ``running`` by a driver that died
are reset to ``pending`` by the next one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from .. import ENGINE_ID, __version__
from ..errors import MemvirtError
from ..fileio import atomic_path, dumps_json, reason
from .spec import canonical_json, sha256_hex

STORE_FILE = "sweep.sqlite"
LOCK_FILE = "sweep.lock"
SCHEMA_VERSION = "1"
STATUSES = ("done", "running", "failed", "pending")
# flat metric columns: name -> how to read it from Result.to_dict()
METRICS = {
    "cycles": lambda d: d["cycles"],
    "time_s": lambda d: d["time_s"],
    "tlb_misses_per_ki": lambda d: d["rates"]["tlb_misses_per_ki"],
    "guest_faults_per_ki": lambda d: d["rates"]["guest_faults_per_ki"],
    "vm_exits_total": lambda d: d["vm_exits"]["total"],
    "walks": lambda d: d["walks"],
    "walk_refs": lambda d: d["walk_refs"],
    "instructions": lambda d: d["instructions"],
    "records": lambda d: d["records"],
}
_METRIC_TYPES = {"cycles": "REAL", "time_s": "REAL", "tlb_misses_per_ki": "REAL",
                 "guest_faults_per_ki": "REAL", "vm_exits_total": "INTEGER", "walks": "INTEGER",
                 "walk_refs": "INTEGER", "instructions": "INTEGER", "records": "INTEGER"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    trace TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    policy TEXT,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    memvirt_version TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    driver TEXT,
    worker TEXT,
    started REAL,
    finished REAL,
    elapsed_s REAL,
    {", ".join(f"{k} {t}" for k, t in _METRIC_TYPES.items())},
    result TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS trace_ids (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_id TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""


class StoreLocked(MemvirtError):
    """Another sweep driver is running in the same output folder."""


class StoreError(MemvirtError):
    """The store file cannot be read or written (a full disk, a damaged file...)."""


def run_key(trace_id: str, mode: str, policy: str | None, config: dict,
            version: str = __version__) -> str:
    """The identity of a run: everything that determines its result (including the engine
    source, so results of an edited engine are never mistaken for old ones)."""
    return sha256_hex(canonical_json({"trace": trace_id, "mode": mode, "policy": policy,
                                      "config": config, "memvirt": version,
                                      "engine": ENGINE_ID}))


def file_content_id(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def flat_metrics(result: dict) -> dict:
    out = {}
    for k, get in METRICS.items():
        try:
            out[k] = get(result)
        except (KeyError, TypeError):
            out[k] = None
    return out


def whoami() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Store:
    """The SQLite store of one output folder (created on first use)."""

    def __init__(self, out_dir: str | Path, *, create: bool = True):
        self.dir = Path(out_dir)
        self.path = self.dir / STORE_FILE
        self.readonly = not create  # a reader (--status, --export): never writes
        if create:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{self.dir}: cannot create the sweep folder: "
                                 f"{reason(e)}") from None
        elif not self.path.exists():
            raise MemvirtError(f"{self.path}: no sweep store here")
        self._lock_fd: int | None = None
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 60000")
            if create:
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            if create:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', ?)",
                                (SCHEMA_VERSION,))
                self.db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('created', ?)",
                                (time.strftime("%Y-%m-%dT%H:%M:%S%z"),))
        except sqlite3.Error as e:
            raise self._error("open the sweep store", e) from None

    # ------------------------------------------------------------------ plumbing
    def _error(self, what: str, e: sqlite3.Error) -> StoreError:
        text = str(e)
        hint = ""
        if "full" in text:
            hint = ("; the disk is full: free some space and run the same command again "
                    "(the store is unchanged, finished runs are kept)")
        elif "readonly" in text or "read-only" in text:
            hint = "; the store file or its folder is not writable"
        return StoreError(f"{self.path}: cannot {what}: {text}{hint}")

    @contextlib.contextmanager
    def _guard(self, what: str):
        try:
            yield
        except sqlite3.Error as e:
            raise self._error(what, e) from None

    def _execute(self, sql: str, args=()) -> list:
        """Run a query and fetch all its rows."""
        with self._guard("read the store"):
            return self.db.execute(sql, args).fetchall()

    def _tx(self, fn, what: str = "update the store"):
        """Run ``fn(db)`` in one committed transaction (rolled back on any error)."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; cannot {what}")
        with self._guard(what):
            self.db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(self.db)
            self.db.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self._error(what, e) from None
            raise
        return out

    def close(self) -> None:
        self.unlock()
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ driver lock
    def lock(self) -> None:
        """Take the driver lock of the folder (``StoreLocked`` if another driver holds it)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks (Windows)
            return
        path = self.dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"{path}: cannot create the driver lock: {reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise StoreLocked(f"another sweep ({holder}) is running in {self.dir}; wait for it "
                              "or use another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, whoami().encode(), 0)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"{path}: cannot write the driver lock: {reason(e)}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)  # releases the flock
            finally:
                self._lock_fd = None

    def driver_alive(self) -> bool:
        """Whether some driver holds the folder's lock right now."""
        if self._lock_fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return False
        path = self.dir / LOCK_FILE
        if not path.exists():
            return False
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def set_meta(self, key: str, value: str) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                                       (key, value)))

    def get_meta(self, key: str) -> str | None:
        rows = self._execute("SELECT v FROM meta WHERE k=?", (key,))
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ trace ids
    def content_id(self, path: str | Path) -> str:
        """The content id of a trace file, cached by (path, size, mtime)."""
        p = str(Path(path).absolute())
        st = os.stat(p)
        rows = self._execute("SELECT content_id FROM trace_ids WHERE path=? AND size=? AND "
                             "mtime_ns=?", (p, st.st_size, st.st_mtime_ns))
        if rows:
            return rows[0][0]
        cid = file_content_id(p)
        if self.readonly:
            return cid
        self._tx(lambda db: db.execute(
            "INSERT OR REPLACE INTO trace_ids (path, size, mtime_ns, content_id) "
            "VALUES (?, ?, ?, ?)", (p, st.st_size, st.st_mtime_ns, cid)))
        return cid

    # ------------------------------------------------------------------ runs
    def register(self, runs: Iterable[dict]) -> None:
        """Insert runs as pending (existing rows keep their status; labels are refreshed).
        Each dict has key, seq, trace, trace_id, mode, policy, params, config."""
        rows = [(r["key"], r["seq"], r["trace"], r["trace_id"], r["mode"], r["policy"],
                 canonical_json(r["params"]), canonical_json(r["config"]), __version__)
                for r in runs]
        self._tx(lambda db: db.executemany(
            "INSERT INTO runs (key, seq, trace, trace_id, mode, policy, params, config, "
            "memvirt_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET seq=excluded.seq, trace=excluded.trace, "
            "params=excluded.params", rows))

    def reset_running(self) -> int:
        """Rows left 'running' by a dead driver go back to 'pending' (call with the lock)."""
        return self._tx(lambda db: db.execute(
            "UPDATE runs SET status='pending', driver=NULL WHERE status='running'").rowcount)

    def reset_failed(self, keys: Iterable[str]) -> int:
        ks = list(keys)
        return self._tx(lambda db: sum(db.execute(
            "UPDATE runs SET status='pending', error=NULL WHERE key=? AND status='failed'",
            (k,)).rowcount for k in ks))

    def mark_running(self, keys: Iterable[str], driver: str) -> None:
        now = time.time()
        ks = list(keys)
        self._tx(lambda db: db.executemany(
            "UPDATE runs SET status='running', attempts=attempts+1, driver=?, started=? "
            "WHERE key=? AND status!='done'", [(driver, now, k) for k in ks]))

    def mark_pending(self, keys: Iterable[str]) -> None:
        ks = list(keys)
        self._tx(lambda db: db.executemany(
            "UPDATE runs SET status='pending', driver=NULL WHERE key=? AND status='running'",
            [(k,) for k in ks]))

    def finish(self, key: str, outcome: dict) -> bool:
        """Record a finished run and commit.  ``outcome``: status ('done'/'failed'),
        result (dict) or error (str), worker, elapsed_s.  A run already done is kept."""
        status = outcome["status"]
        result = outcome.get("result")
        metrics = flat_metrics(result) if result is not None else dict.fromkeys(METRICS)
        cols = ", ".join(f"{k}=?" for k in METRICS)
        args = (status, outcome.get("error"), outcome.get("worker"), time.time(),
                outcome.get("elapsed_s"), *metrics.values(),
                dumps_json(result) if result is not None else None, key)
        return bool(self._tx(lambda db: db.execute(
            f"UPDATE runs SET status=?, error=?, worker=?, finished=?, elapsed_s=?, {cols}, "
            "result=? WHERE key=? AND status!='done'", args).rowcount,
            what=f"record the result of run {key[:12]}"))

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        rows = self._execute("SELECT key, status FROM runs")
        if keys is None:
            return dict(rows)
        want = set(keys)
        return {k: s for k, s in rows if k in want}

    def counts(self, keys: list[str] | None = None) -> dict[str, int]:
        """Runs per status; with ``keys``, runs not in the store count as pending."""
        st = self.statuses(keys)
        out = dict.fromkeys(STATUSES, 0)
        for s in st.values():
            out[s] += 1
        if keys is not None:
            out["pending"] += len(set(keys)) - len(st)
        return out

    def rows(self, keys: list[str] | None = None, status: str | None = None,
             with_result: bool = True) -> list[dict]:
        """Rows as dicts (params/config decoded; result decoded when asked), by seq."""
        sql = "SELECT * FROM runs"
        args: tuple = ()
        if status is not None:
            sql += " WHERE status=?"
            args = (status,)
        with self._guard("read the store"):
            cur = self.db.execute(sql + " ORDER BY seq, key", args)
            names = [c[0] for c in cur.description]
            fetched = cur.fetchall()
        want = set(keys) if keys is not None else None
        out = []
        for row in fetched:
            d = dict(zip(names, row))
            if want is not None and d["key"] not in want:
                continue
            d["params"] = json.loads(d["params"])
            d["config"] = json.loads(d["config"])
            if with_result:
                d["result"] = json.loads(d["result"]) if d["result"] else None
            else:
                d.pop("result")
            out.append(d)
        return out

    # ------------------------------------------------------------------ export
    def table(self, keys: list[str] | None = None, swept: list[str] | None = None
              ) -> tuple[list[str], list[list]]:
        """Flat export rows: (column names, rows).  ``swept`` orders the parameter columns.
        The metric columns are those of ``memvirt compare``'s rows (``report.compare``)."""
        rows = self.rows(keys, with_result=False)
        raw = dict(self._raw_results(keys))
        pcols: list[str] = list(swept or [])
        for r in rows:
            for k in r["params"]:
                if k not in pcols:
                    pcols.append(k)
        mcols = export_metric_columns()
        cols = (["seq", "key", "trace", "trace_id", "mode", "policy"] + pcols
                + ["status", "error"] + mcols
                + ["attempts", "worker", "elapsed_s", "finished", "memvirt_version", "result"])
        out = []
        for r in rows:
            text = raw.get(r["key"])
            metrics = export_metrics(r["trace"], json.loads(text)) if text else {}
            vals = ([r["seq"], r["key"], r["trace"], r["trace_id"], r["mode"], r["policy"]]
                    + [r["params"].get(k) for k in pcols] + [r["status"], r["error"]]
                    + [metrics.get(k) for k in mcols]
                    + [r["attempts"], r["worker"], r["elapsed_s"], r["finished"],
                       r["memvirt_version"], text])
            out.append(vals)
        return cols, out

    def _raw_results(self, keys):
        cur = self._execute("SELECT key, result FROM runs")
        want = set(keys) if keys is not None else None
        for k, res in cur:
            if want is None or k in want:
                yield k, res

    def export_csv(self, path: str | Path, keys: list[str] | None = None,
                   swept: list[str] | None = None) -> Path:
        cols, rows = self.table(keys, swept)
        path = Path(path)
        with atomic_path(path, "results file") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rows:
                w.writerow(["" if v is None else (dumps_json(v) if isinstance(v, dict | list)
                                                  else v) for v in r])
        return path

    def export_parquet(self, path: str | Path, keys: list[str] | None = None,
                       swept: list[str] | None = None) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols, rows = self.table(keys, swept)
        arrays = []
        for i, _name in enumerate(cols):
            vals = [r[i] for r in rows]
            try:
                arrays.append(pa.array(vals))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                arrays.append(pa.array([None if v is None else
                                        (v if isinstance(v, str) else canonical_json(v))
                                        for v in vals], type=pa.string()))
        table = pa.Table.from_arrays(arrays, names=cols)
        path = Path(path)
        with atomic_path(path, "results file") as tmp:
            pq.write_table(table, str(tmp), compression="zstd")
        return path


_SKIP_COMPARE = ("trace", "mode", "policy", "normalized_to_native", "normalized_to_best_static")


def _compare_row():
    try:
        from ..report.load import COLUMN_NAMES, row_from_result
    except ImportError:  # pragma: no cover - the report package is optional here
        return None, None
    return [c for c in COLUMN_NAMES if c not in _SKIP_COMPARE], row_from_result


def export_metric_columns() -> list[str]:
    cols, _ = _compare_row()
    if cols is None:  # pragma: no cover
        return list(METRICS)
    return cols + [k for k in METRICS if k not in cols]


def export_metrics(trace: str, result: dict) -> dict:
    """The flat metrics of one result: the columns of a ``memvirt compare`` row (without
    the normalizations, which need the other modes) plus ``METRICS``."""
    out = flat_metrics(result)
    cols, fn = _compare_row()
    if fn is not None:
        try:
            row = fn(trace, result)
        except (KeyError, TypeError, ValueError):
            row = {}
        out.update({k: row.get(k) for k in cols})
    return out


def metric_value(row: dict, metric: str):
    """A flat metric: a store column (``METRICS``), a column of the ``memvirt compare`` rows
    (e.g. ``vm_exits_per_ki``, ``cyc_walk``, ``refs_per_walk``) or a dotted path into the
    result JSON (e.g. ``vm_exits.by_reason.cr3_load``, ``counters.WALKS``)."""
    if metric in METRICS:
        return row.get(metric)
    d = row.get("result")
    cols, fn = _compare_row()
    if cols is not None and metric in cols and d is not None:
        return fn(row["trace"], d).get(metric)
    for part in metric.split("."):
        if isinstance(d, dict) and part in d:
            d = d[part]
        else:
            raise MemvirtError(
                f"unknown metric '{metric}'; use one of {', '.join(export_metric_columns())} "
                "or a dotted path into the result JSON (e.g. vm_exits.total, "
                "rates.vm_exits_per_ki, cycles_breakdown.walk)")
    if isinstance(d, dict | list):
        raise MemvirtError(f"metric '{metric}' is not a number (it is a "
                           f"{'table' if isinstance(d, dict) else 'list'})")
    return d


__all__ = ["METRICS", "STATUSES", "STORE_FILE", "Store", "StoreLocked", "export_metric_columns",
           "export_metrics", "file_content_id", "flat_metrics", "metric_value", "run_key",
           "whoami"]
