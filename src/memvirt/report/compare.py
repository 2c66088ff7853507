"""Run every trace under every paging mode and compare them.

``compare(traces, modes, policy, config, workers)`` runs each (trace, mode) pair in a
process pool, then gives a ``Comparison``: one flat row per run (``.rows``), the full
``Result.to_dict()`` per run (``.results``), a verdict per trace, and writers for the
results files (``results.json``, ``results.csv``, ``results.parquet``) that the plots,
the HTML report and the terminal tables are built from -- so a report can be redrawn
from the files alone, without simulating again.

Traces can be given as

- a file path (any registered trace format);
- ``"synth:NAME"`` or ``"synth:NAME:k=v,k=v"`` (a synthetic generator and parameters);
- a ``Trace``, or a ``(name, Trace)`` / ``(name, path)`` / ``(name, spec)`` pair;
- a synth spec dict ``{"generator": NAME, "params": {...}}`` (as in
  ``memvirt.trace.synth.suite.default_suite()``), paired with a name;
- a mapping ``{name: any of the above}`` (so ``compare(default_suite(0.1))`` works).
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import MemvirtError, TraceError
from ..fileio import check_folder_kind, ensure_dir, mark_folder, marked_files
from .load import (  # noqa: F401 - re-exported: the public names of memvirt.report.compare
    ALL_MODES,
    COLUMN_NAMES,
    COLUMN_TYPES,
    EXIT_REASONS,
    FORMAT,
    FORMAT_VERSION,
    GROUPS,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_PARQUET,
    ROW_COLUMNS,
    STATIC_MODES,
    group_cycles,
    load_results,
    normalize_rows,
    read_csv,
    read_parquet,
    results_path,
    row_from_result,
    verdict_for_rows,
    write_csv,
    write_parquet,
    write_results_json,
)

FOLDER_KIND = "compare"

# ----------------------------------------------------------------------------- trace specs


@dataclass
class TraceSpec:
    """One trace to compare: where it comes from and the name it gets in the results."""

    name: str
    kind: str  # "path", "synth" or "trace"
    path: str | None = None
    generator: str | None = None
    params: dict = field(default_factory=dict)
    trace: Any = None  # an in-memory Trace (kind "trace")

    @property
    def spec(self) -> str:
        if self.kind == "path":
            return str(self.path)
        if self.kind == "synth":
            if not self.params:
                return f"synth:{self.generator}"
            kv = ",".join(f"{k}={v}" for k, v in self.params.items())
            return f"synth:{self.generator}:{kv}"
        return f"<in-memory trace '{self.name}'>"

    def key(self) -> str:
        return f"{self.kind}|{self.spec}|{id(self.trace) if self.trace is not None else ''}"

    def materialize(self):
        """What ``simulate`` accepts: a path or a ``Trace``."""
        if self.kind == "path":
            return self.path
        if self.kind == "trace":
            return self.trace
        from ..trace.synth import synthesize

        tr = synthesize(self.generator, **self.params)
        tr.meta.setdefault("name", self.name)
        return tr


def parse_synth_spec(text: str) -> tuple[str, dict]:
    """``synth:NAME[:k=v,k=v]`` -> (NAME, {k: v}); values stay strings (the generator
    coerces them to its parameter types)."""
    body = text[len("synth:"):] if text.startswith("synth:") else text
    name, _, rest = body.partition(":")
    name = name.strip()
    if not name:
        raise MemvirtError(f"bad synthetic trace '{text}': expected synth:NAME[:key=value,...]")
    params: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        if "=" not in item:
            raise MemvirtError(f"bad synthetic trace '{text}': '{item}' is not key=value")
        k, v = item.split("=", 1)
        params[k.strip()] = v.strip()
    return name, params


def _spec_from(name: str | None, item, index: int) -> TraceSpec:
    from ..trace.records import Trace

    if isinstance(item, TraceSpec):
        return item
    if isinstance(item, Trace):
        nm = name or str(item.meta.get("name") or item.meta.get("generator") or f"trace{index}")
        return TraceSpec(nm, "trace", trace=item)
    if isinstance(item, Mapping):
        if "generator" not in item:
            raise MemvirtError(f"trace spec {dict(item)!r} has no 'generator'")
        return TraceSpec(name or str(item["generator"]), "synth", generator=str(item["generator"]),
                         params=dict(item.get("params") or {}))
    if isinstance(item, tuple) and len(item) == 2:
        return _spec_from(str(item[0]), item[1], index)
    if isinstance(item, str | os.PathLike):
        s = os.fspath(item)
        if s.startswith("synth:"):
            gen, params = parse_synth_spec(s)
            return TraceSpec(name or gen, "synth", generator=gen, params=params)
        p = Path(s)
        if not p.exists():
            raise MemvirtError(f"{s}: no such trace file (synthetic traces are written "
                               "synth:NAME[:key=value,...])")
        nm = name or (p.name.split(".")[0] if p.is_file() else p.name) or p.name
        return TraceSpec(nm, "path", path=str(p))
    raise MemvirtError(f"cannot use {type(item).__name__} as a trace; give a path, "
                       "'synth:NAME[:k=v,...]', a Trace or a (name, Trace) pair")


def resolve_traces(traces) -> list[TraceSpec]:
    """Normalize the ``traces`` argument of ``compare`` into named ``TraceSpec``s (names made
    unique by appending ``#2``, ``#3``...); synth generators and parameters are checked."""
    from ..trace.records import Trace

    if isinstance(traces, Mapping) and "generator" not in traces:
        items = [(str(k), v) for k, v in traces.items()]
    elif isinstance(traces, str | os.PathLike | Trace | TraceSpec) or (
            isinstance(traces, tuple) and len(traces) == 2 and isinstance(traces[0], str)
            and not isinstance(traces[1], str | os.PathLike)):
        items = [(None, traces)]
    else:
        items = [(None, t) for t in traces]
    specs: list[TraceSpec] = []
    seen: dict[str, int] = {}
    for i, (name, item) in enumerate(items):
        s = _spec_from(name, item, i)
        if s.kind == "synth":
            from ..trace.synth import resolve_params

            resolve_params(s.generator, **s.params)  # unknown names/params fail here, early
        elif s.kind == "path":
            from ..trace.base import open_trace

            src = open_trace(s.path)  # an unreadable file or unknown format fails here, early
            if getattr(src, "num_records", None) == 0:
                raise TraceError(f"{s.path}: the trace has no records")
        elif s.kind == "trace" and len(s.trace) == 0:
            raise TraceError(f"{s.name}: the trace has no records")
        base = s.name
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            s.name = f"{base}#{seen[base]}"
        specs.append(s)
    if not specs:
        raise MemvirtError("no traces to compare")
    return specs


# ----------------------------------------------------------------------------- workers

_CACHE: dict[str, Any] = {}


def _run_job(spec: TraceSpec, mode: str, policy, config: dict) -> dict:
    """Run one (trace, mode) pair; executed in a worker process (or in-process)."""
    from ..policy.oracle import simulate_with_oracle as simulate

    key = spec.key()
    if key not in _CACHE:
        _CACHE.clear()  # keep one trace per worker: jobs are ordered trace by trace
        _CACHE[key] = spec.materialize()
    t0 = time.perf_counter()
    res = simulate(_CACHE[key], config=config, mode=mode,
                   policy=policy if mode == "selective" else None)
    elapsed = time.perf_counter() - t0
    d = res.to_dict()
    d["trace"] = {"name": spec.name, **{k: v for k, v in d["trace"].items() if k != "name"}}
    return {"trace": spec.name, "mode": mode, "elapsed_s": elapsed, "result": d}


def _memvirt_version() -> str:
    # The package is always initialised before its submodules run; reading its version
    # from sys.modules (instead of `from .. import`) keeps the import graph one-way
    # (memvirt/__init__ gives access to compare() lazily).
    pkg = sys.modules.get(__name__.split(".")[0])
    return str(getattr(pkg, "__version__", "unknown"))


def _versions() -> dict:
    out = {"memvirt": _memvirt_version(), "python": platform.python_version(),
           "platform": platform.platform()}
    from importlib import metadata

    for mod in ("numpy", "numba", "pyarrow", "matplotlib", "rich", "pydantic"):
        try:
            out[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:  # a missing optional package is not listed
            pass
    return out


class _Reporter:
    """Progress of a comparison: a rich bar on a terminal, one line per run otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.progress = None
        self.t0 = time.perf_counter()
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(TextColumn("[bold]simulating[/] {task.description}"),
                                     BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=False)
            self.task = self.progress.add_task("", total=total)

    def status(self, message: str):
        """A spinner for a step before the runs start (terminals only)."""
        import contextlib

        if self.progress is None:
            return contextlib.nullcontext()
        return self.console.status(message)

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def finished(self, trace: str, mode: str, elapsed: float) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"{trace}/{mode} done")
        else:
            self.console.print(f"[{self.done}/{self.total}] {trace} / {mode}: {elapsed:.1f} s "
                               f"(total {time.perf_counter() - self.t0:.0f} s)",
                               highlight=False)


def compare(traces, modes: Iterable[str] = ALL_MODES, policy="dsp", config=None,
            workers: int | None = None, progress: bool = True,
            command: str | None = None) -> Comparison:
    """Simulate every trace under every mode and return a ``Comparison``.

    ``workers``: processes to use (default ``os.cpu_count()``; 1 runs in this process).
    ``policy`` is the selective-mode policy (a name such as ``"dsp"``, ``"cost"``,
    ``"oracle"``, or a picklable ``Policy``).  ``config`` is a ``Config``, a dict or a TOML
    path.  ``command`` is recorded as provenance (the CLI passes its command line).
    """
    from ..api import MODE_CHOICES, resolve_config

    if isinstance(modes, str):
        modes = tuple(m.strip() for m in modes.split(",") if m.strip())
    modes = tuple(modes)
    bad = [m for m in modes if m not in MODE_CHOICES]
    if bad or not modes:
        raise MemvirtError(f"unknown mode '{bad[0] if bad else ''}'; expected some of "
                           f"{', '.join(MODE_CHOICES)}")
    modes = tuple(dict.fromkeys(modes))
    cfg = resolve_config(config)
    cfg_dict = cfg.to_dict()
    specs = resolve_traces(traces)
    jobs = [(s, m) for s in specs for m in modes]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), len(jobs)))
    pol = policy if "selective" in modes else None
    if "agile" in modes:  # (agile runs take config agile.policy)
        from ..api import check_agile
        from ..policy.agile import make_agile_policy

        check_agile(cfg)
        make_agile_policy(None, cfg)
    if isinstance(pol, str):
        from ..policy import make_policy
        from ..policy.oracle import needs_oracle_run

        if not needs_oracle_run("selective", pol, cfg):
            make_policy(pol, cfg)  # an unknown policy or bad parameters fail here, early
    out: dict[tuple[str, str], dict] = {}
    rep = _Reporter(len(jobs), progress)
    if workers > 1:
        _run_pool(jobs, workers, pol, cfg_dict, out, rep)
    else:
        with rep:
            for s, m in jobs:
                r = _run_job(s, m, pol, cfg_dict)
                out[(s.name, m)] = r
                rep.finished(s.name, m, r["elapsed_s"])
            _CACHE.clear()
    runs = [out[(s.name, m)] for s, m in jobs]
    for s in specs:
        first = next(r for r in runs if r["trace"] == s.name)["result"]
        if not first["instructions"]:
            raise TraceError(f"{s.spec}: the trace has no instructions ({first['records']} "
                             "records); there is nothing to compare")
    traces_info = []
    for s in specs:
        first = next(r for r in runs if r["trace"] == s.name)["result"]
        traces_info.append({"name": s.name, "spec": s.spec, "kind": s.kind,
                            "records": first["records"], "instructions": first["instructions"],
                            "provenance": first["trace"]})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "modes": list(modes),
        "policy": _policy_name(pol) if pol is not None else None,
        "workers": workers,
        "environment": _versions(),
        "config": cfg_dict,
        "traces": traces_info,
    }
    return Comparison(runs, meta)


def _policy_name(policy) -> str:
    if isinstance(policy, str):
        return policy
    return str(getattr(policy, "name", type(policy).__name__))


def warm_up(cfg_dict: dict) -> None:
    """Compile (or load from numba's cache) the simulator kernels in this process, so that
    forked workers inherit them instead of each compiling its own copy."""
    from .. import state as X
    from ..api import simulate
    from ..config import Config
    from ..engine import Machine
    from ..trace.records import Kind, Trace

    # (no warm-up: the user's would outlast this tiny trace and refuse it)
    cfg = Config.from_dict(cfg_dict).with_overrides({"run.warmup_instructions": 0})
    base = 0x1000_0000
    tr = Trace.from_records([(int(Kind.MMAP), base, 1 << 16, 1, 0)]
                            + [(int(Kind.STORE), base + (i << 12), 8, 1, 1) for i in range(16)])
    for mode in ("native", "shadow", "nested"):
        simulate(tr, cfg, mode)
    Machine(cfg, X.MODE_NESTED).switch(X.MODE_SHADOW)


def _worker_init() -> None:
    """In a pool worker: the parent handles Ctrl-C and SIGTERM and stops the workers
    itself; a worker whose parent died (SIGKILL) exits instead of lingering."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="memvirt-parent-watch", daemon=True).start()


def _stop_pool(ex) -> None:
    """Kill the pool's workers now (runs in flight are abandoned) and drop the pool."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(timeout=5)


def _run_pool(jobs, workers, pol, cfg_dict, out, rep) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    fork = sys.platform.startswith("linux")
    if fork:
        with rep.status("loading the simulator (a first run compiles it: about a minute)"):
            warm_up(cfg_dict)
    # Submit everything before the progress display starts its refresh thread, so the
    # workers are forked from a process without extra threads.  Jobs are submitted trace
    # by trace, so each worker mostly reuses the trace it already holds.
    ctx = mp.get_context("fork") if fork else None
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    try:
        futs = {ex.submit(_run_job, s, m, pol, cfg_dict): (s.name, m) for s, m in jobs}
        with rep:
            _collect(futs, out, rep)
    except BaseException:
        # Ctrl-C, SIGTERM (the CLI turns it into KeyboardInterrupt) or a failed run: stop
        # the workers now instead of waiting for the runs in flight.
        _stop_pool(ex)
        raise
    ex.shutdown(wait=True)


def _collect(futs, out, rep) -> None:
    from concurrent.futures import as_completed

    for f in as_completed(futs):
        exc = f.exception()
        if exc is not None:
            for p in futs:
                p.cancel()
            name, mode = futs[f]
            if isinstance(exc, MemvirtError):
                raise type(exc)(f"{name} / {mode}: {exc}") from None
            raise exc
        r = f.result()
        out[futs[f]] = r
        rep.finished(r["trace"], r["mode"], r["elapsed_s"])


# ----------------------------------------------------------------------------- results


class Comparison:
    """The runs of a comparison: ``rows`` (flat), ``results`` (full dicts), files, verdicts."""

    def __init__(self, runs: list[dict], meta: dict):
        self.runs = runs
        self.meta = meta
        self.rows = [row_from_result(r["trace"], r["result"]) for r in runs]
        normalize_rows(self.rows)

    # -------------------------------------------------------------- access
    @property
    def results(self) -> list[dict]:
        """The full ``Result.to_dict()`` of every run, in row order."""
        return [r["result"] for r in self.runs]

    @property
    def traces(self) -> list[str]:
        return list(dict.fromkeys(r["trace"] for r in self.rows))

    @property
    def modes(self) -> list[str]:
        return list(dict.fromkeys(r["mode"] for r in self.rows))

    def result(self, trace: str, mode: str) -> dict:
        for r in self.runs:
            if r["trace"] == trace and r["mode"] == mode:
                return r["result"]
        raise KeyError((trace, mode))

    def row(self, trace: str, mode: str) -> dict:
        for r in self.rows:
            if r["trace"] == trace and r["mode"] == mode:
                return r
        raise KeyError((trace, mode))

    def verdict(self, trace: str) -> str:
        """One line: which static mode wins, by how much, and why (see ``verdict_for_rows``)."""
        rows = [r for r in self.rows if r["trace"] == trace]
        if not rows:
            raise KeyError(trace)
        return verdict_for_rows(rows)

    def verdicts(self) -> dict[str, str]:
        return {t: self.verdict(t) for t in self.traces}

    def __repr__(self) -> str:
        return f"Comparison({len(self.traces)} traces x {len(self.modes)} modes)"

    # -------------------------------------------------------------- export
    def to_json_dict(self) -> dict:
        return {**self.meta, "runs": self.runs, "rows": self.rows, "verdicts": self.verdicts()}

    def to_dataframe(self):
        """The rows as a pandas DataFrame (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise MemvirtError("to_dataframe() needs pandas, which is not installed "
                               "(pip install pandas); .rows has the same data as dicts") from None
        return pd.DataFrame(self.rows, columns=COLUMN_NAMES)

    def write(self, out_dir) -> dict[str, Path]:
        """Write results.json (everything, samples included), results.csv and
        results.parquet (the flat rows) to ``out_dir``; returns the paths.  Each file is
        written atomically; a folder that holds a sweep's results is refused."""
        out = Path(out_dir)
        check_folder_kind(out, FOLDER_KIND)
        _mkdir(out)
        paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV,
                 "parquet": out / RESULTS_PARQUET}
        write_results_json(self.to_json_dict(), paths["json"])
        write_csv(self.rows, paths["csv"])
        write_parquet(self.rows, paths["parquet"])
        mark_folder(out, FOLDER_KIND, paths.values())
        return paths

    def plot(self, out_dir) -> list[Path]:
        """Draw the PNG plots into ``out_dir`` (see ``memvirt.report.plots``)."""
        from .plots import plot_all

        out = Path(out_dir)
        check_folder_kind(out, FOLDER_KIND)
        _mkdir(out)
        paths = plot_all(self.to_json_dict(), out)
        mark_folder(out, FOLDER_KIND, paths)
        return paths

    def report(self, out_dir, html_name: str = "report.html") -> Path:
        """Write the results files, the plots and a self-contained HTML report.  Files a
        previous comparison wrote into ``out_dir`` and this one does not (plots of traces
        no longer compared) are removed."""
        from .html import write_report

        out = Path(out_dir)
        check_folder_kind(out, FOLDER_KIND)
        before = _previous_outputs(out)
        written = list(self.write(out).values()) + self.plot(out)
        written.append(write_report(out, out / html_name, plots_dir=out))
        names = {p.name for p in written}
        for name in sorted(before - names):
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise MemvirtError(f"{out / name}: cannot remove an output of the previous "
                                   f"comparison: {e.strerror or e}") from None
        mark_folder(out, FOLDER_KIND, names, replace=True)
        return out / html_name

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, source) -> Comparison:
        """A Comparison from a results directory or results.json (no simulation)."""
        data = load_results(source)
        meta = {k: v for k, v in data.items() if k not in ("runs", "rows", "verdicts")}
        return cls(data["runs"], meta)


def _mkdir(out: Path) -> None:
    ensure_dir(out, "results folder")


def _previous_outputs(out: Path) -> set[str]:
    """Files an earlier comparison wrote into ``out`` (from the folder's marker; for a
    folder written before markers existed, the names compare writes)."""
    names = set(marked_files(out))
    if not names and (out / RESULTS_JSON).exists():
        names = {p.name for p in out.glob("timeline_*.png")}
        names |= {RESULTS_JSON, RESULTS_CSV, RESULTS_PARQUET, "normalized.png",
                  "breakdown.png", "report.html"}
    return {n for n in names if (out / n).is_file()}


__all__ = [
    "ALL_MODES",
    "COLUMN_NAMES",
    "Comparison",
    "TraceSpec",
    "compare",
    "load_results",
    "parse_synth_spec",
    "read_csv",
    "read_parquet",
    "verdict_for_rows",
]
