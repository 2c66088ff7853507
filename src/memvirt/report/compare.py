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

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import counters as K
from ..errors import MemvirtError

ALL_MODES = ("native", "shadow", "nested", "selective")
STATIC_MODES = ("shadow", "nested")
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
FORMAT = "memvirt-results"
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------- row schema

EXIT_REASONS = tuple(K.EXIT_REASONS)

# (column, type) in file order; type is one of "str", "int", "float".
ROW_COLUMNS: list[tuple[str, str]] = [
    ("trace", "str"),
    ("mode", "str"),
    ("policy", "str"),
    ("records", "int"),
    ("instructions", "int"),
    ("accesses", "int"),
    ("cycles", "float"),
    ("time_s", "float"),
    ("normalized_to_native", "float"),
    ("normalized_to_best_static", "float"),
    *((f"cyc_{k}", "float") for k in K.BREAKDOWN_KEYS),
    ("tlb_misses", "int"),
    ("tlb_misses_per_ki", "float"),
    ("guest_faults", "int"),
    ("guest_faults_per_ki", "float"),
    ("vm_exits_total", "int"),
    ("vm_exits_per_ki", "float"),
    *((f"exits_{r}", "int") for r in EXIT_REASONS),
    ("walks", "int"),
    ("walk_refs", "int"),
    ("walk_refs_nested", "int"),
    ("refs_per_walk", "float"),
    ("walk_cycles", "float"),
    ("shadow_fills", "int"),
    ("switches", "int"),
    ("time_in_shadow", "float"),
    ("time_in_nested", "float"),
]
COLUMN_NAMES = [c for c, _ in ROW_COLUMNS]
COLUMN_TYPES = dict(ROW_COLUMNS)

# Overhead groups used by verdicts, tables and plots: group -> breakdown keys.
GROUPS: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "translation": ("tlb", "walk"),
    "guest": ("guest_fault", "guest_os"),
    "vmm": (*(f"vmm_{r}" for r in EXIT_REASONS), "vmm_shadow_mgmt"),
    "switch": ("mode_switch",),
}


def row_from_result(trace: str, d: dict) -> dict:
    """The flat row of one run (``d`` is ``Result.to_dict()``); normalizations are filled in
    later by ``normalize_rows`` because they need the other modes of the same trace."""
    bd = d["cycles_breakdown"]
    by_reason = d["vm_exits"]["by_reason"]
    sel = d.get("selective") or {}
    frac = sel.get("time_fraction_in_mode") or {}
    walks = int(d["walks"])
    row: dict[str, Any] = {
        "trace": trace,
        "mode": d["mode"],
        "policy": d.get("policy"),
        "records": int(d["records"]),
        "instructions": int(d["instructions"]),
        "accesses": int(d["accesses"]),
        "cycles": float(d["cycles"]),
        "time_s": float(d["time_s"]),
        "normalized_to_native": None,
        "normalized_to_best_static": None,
    }
    for k in K.BREAKDOWN_KEYS:
        row[f"cyc_{k}"] = float(bd[k])
    row.update({
        "tlb_misses": int(d["tlb_misses"]),
        "tlb_misses_per_ki": float(d["rates"]["tlb_misses_per_ki"]),
        "guest_faults": int(d["guest_page_faults"]["total"]),
        "guest_faults_per_ki": float(d["rates"]["guest_faults_per_ki"]),
        "vm_exits_total": int(d["vm_exits"]["total"]),
        "vm_exits_per_ki": float(d["rates"]["vm_exits_per_ki"]),
    })
    for r in EXIT_REASONS:
        row[f"exits_{r}"] = int(by_reason.get(r, 0))
    row.update({
        "walks": walks,
        "walk_refs": int(d["walk_refs"]),
        "walk_refs_nested": int(d["walk_refs_nested"]),
        "refs_per_walk": (int(d["walk_refs"]) / walks) if walks else 0.0,
        "walk_cycles": float(d["walk_cycles"]),
        "shadow_fills": int(d["shadow_fills"]),
        "switches": int(sel.get("switches", 0)),
    })
    if d["mode"] == "selective":
        row["time_in_shadow"] = float(frac.get("shadow", 0.0))
        row["time_in_nested"] = float(frac.get("nested", 0.0))
    else:
        row["time_in_shadow"] = 1.0 if d["mode"] == "shadow" else 0.0
        row["time_in_nested"] = 1.0 if d["mode"] == "nested" else 0.0
    return row


def normalize_rows(rows: list[dict]) -> None:
    """Fill ``normalized_to_native`` and ``normalized_to_best_static`` in place."""
    by_trace: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace"], {})[r["mode"]] = r
    for modes in by_trace.values():
        native = modes.get("native")
        statics = [modes[m]["cycles"] for m in STATIC_MODES if m in modes]
        best = min(statics) if statics else None
        for r in modes.values():
            if native is not None and native["cycles"] > 0:
                r["normalized_to_native"] = r["cycles"] / native["cycles"]
            if best:
                r["normalized_to_best_static"] = r["cycles"] / best


def group_cycles(row: dict) -> dict[str, float]:
    """Cycles of a row by overhead group (``GROUPS``)."""
    return {g: sum(float(row[f"cyc_{k}"]) for k in keys) for g, keys in GROUPS.items()}


# ----------------------------------------------------------------------------- verdicts

_REASON_REGIME = {
    "pf_true": "page-fault bound",
    "pf_hidden": "page-fault bound",
    "pte_write": "page-table-update bound",
    "cr3_load": "context-switch bound",
    "invlpg": "TLB-shootdown bound",
    "ept_violation": "memory-population bound",
    "populate": "memory-population bound",
}


def _ratio_text(a: float, b: float) -> str:
    if b <= 0:
        return "vs none"
    r = a / b
    return f"{r:.1f}x more" if r < 100 else f"{r:.0f}x more"


# Backing a guest frame is an EPT violation under nested paging and a populate exit under
# shadow paging: the same event, compared as one.
_EXIT_GAP_GROUPS = {
    "pf_true": ("pf_true",), "pf_hidden": ("pf_hidden",), "pte_write": ("pte_write",),
    "cr3_load": ("cr3_load",), "invlpg": ("invlpg",),
    "ept_violation": ("ept_violation", "populate"),
}


def _top_exit_gap(lose: dict, win: dict) -> str:
    """The exit reason whose VMM cycles differ most between the losing and winning mode."""
    def cyc(row, keys):
        return sum(float(row.get(f"cyc_vmm_{k}", 0.0)) for k in keys)

    gaps = {r: cyc(lose, ks) - cyc(win, ks) for r, ks in _EXIT_GAP_GROUPS.items()}
    top = max(gaps, key=lambda r: gaps[r])
    if top == "ept_violation" and lose.get("mode") == "shadow":
        return "populate"
    return top


def verdict_for_rows(rows: Iterable[dict]) -> str:
    """A one-line verdict for one trace from its rows (any subset of modes).

    Which static mode (shadow or nested) is faster and by how much, the overhead that
    separates them (the group whose cycles differ most between the two) and the ratio
    that explains it; then how the selective run did against the best static mode.
    """
    modes = {r["mode"]: r for r in rows}
    parts: list[str] = []
    sh, ne = modes.get("shadow"), modes.get("nested")
    native = modes.get("native")
    if sh is not None and ne is not None:
        win, lose = (sh, ne) if sh["cycles"] <= ne["cycles"] else (ne, sh)
        margin = lose["cycles"] / win["cycles"] - 1.0 if win["cycles"] else 0.0
        gw, gl = group_cycles(win), group_cycles(lose)
        diff = {g: gl[g] - gw[g] for g in ("translation", "guest", "vmm")}
        dom = max(diff, key=lambda g: diff[g])
        if dom == "translation":
            regime = "TLB-miss bound"
            why = f"{lose['mode']} walks cost {_ratio_text(lose['walk_cycles'], win['walk_cycles'])}"
            if lose["refs_per_walk"] and win["refs_per_walk"]:
                why += (f" ({lose['refs_per_walk']:.1f} vs {win['refs_per_walk']:.1f} "
                        "refs/walk)")
        elif dom == "vmm":
            top = _top_exit_gap(lose, win)
            regime = _REASON_REGIME.get(top, "VM-exit bound")
            why = (f"{lose['mode']} VM exits cost {_ratio_text(gl['vmm'], gw['vmm'])} "
                   f"({lose['vm_exits_per_ki']:.2f} exits/Ki, mostly {top})")
        else:
            regime = "guest-kernel bound"
            why = f"{lose['mode']} guest-kernel work costs {_ratio_text(gl['guest'], gw['guest'])}"
        if margin < 0.005:
            parts.append(f"shadow and nested tie (within {margin * 100:.1f}%): {regime}")
        else:
            pct = margin * 100
            pct_s = f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%"
            parts.append(f"{win['mode']} wins by {pct_s}: {regime}, {why}")
    elif sh is not None or ne is not None:
        only = sh if sh is not None else ne
        if native is not None and native["cycles"]:
            parts.append(f"only {only['mode']} run: {(only['cycles'] / native['cycles'] - 1) * 100:+.1f}%"
                         " over native")
        else:
            parts.append(f"only {only['mode']} run")
    sel = modes.get("selective")
    if sel is not None and sel.get("normalized_to_best_static") is not None:
        d = (sel["normalized_to_best_static"] - 1.0) * 100
        pol = sel.get("policy") or "selective"
        n = int(sel.get("switches") or 0)
        parts.append(f"selective ({pol}) {d:+.1f}% vs best static, {n} switch"
                     f"{'' if n == 1 else 'es'}")
    if not parts:
        if native is not None:
            return "native only: nothing to compare"
        return "no runs"
    return "; ".join(parts)


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

            open_trace(s.path)  # an unreadable file or unknown format fails here, early
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
    from ..api import simulate

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


def _versions() -> dict:
    from .. import __version__

    out = {"memvirt": __version__, "python": platform.python_version(),
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

    cfg = Config.from_dict(cfg_dict)
    base = 0x1000_0000
    tr = Trace.from_records([(int(Kind.MMAP), base, 1 << 16, 1, 0)]
                            + [(int(Kind.STORE), base + (i << 12), 8, 1, 1) for i in range(16)])
    for mode in ("native", "shadow", "nested"):
        simulate(tr, cfg, mode)
    Machine(cfg, X.MODE_NESTED).switch(X.MODE_SHADOW)


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
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futs = {ex.submit(_run_job, s, m, pol, cfg_dict): (s.name, m) for s, m in jobs}
        with rep:
            _collect(futs, out, rep)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


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
        results.parquet (the flat rows) to ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV,
                 "parquet": out / RESULTS_PARQUET}
        with open(paths["json"], "w") as f:
            json.dump(_jsonable(self.to_json_dict()), f, indent=1)
        write_csv(self.rows, paths["csv"])
        write_parquet(self.rows, paths["parquet"])
        return paths

    def plot(self, out_dir) -> list[Path]:
        """Draw the PNG plots into ``out_dir`` (see ``memvirt.report.plots``)."""
        from .plots import plot_all

        return plot_all(self.to_json_dict(), out_dir)

    def report(self, out_dir, html_name: str = "report.html") -> Path:
        """Write the results files, the plots and a self-contained HTML report."""
        from .html import write_report

        self.write(out_dir)
        self.plot(out_dir)
        return write_report(out_dir, Path(out_dir) / html_name, plots_dir=out_dir)

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, source) -> Comparison:
        """A Comparison from a results directory or results.json (no simulation)."""
        data = load_results(source)
        meta = {k: v for k, v in data.items() if k not in ("runs", "rows", "verdicts")}
        return cls(data["runs"], meta)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMN_NAMES)
        for r in rows:
            w.writerow(["" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float)
                        else r[c] for c in COLUMN_NAMES])


def read_csv(path) -> list[dict]:
    """The rows of a results.csv with their types restored (empty cells -> None)."""
    out = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            row: dict[str, Any] = {}
            for c, v in rec.items():
                t = COLUMN_TYPES.get(c, "str")
                if v == "":
                    row[c] = None
                elif t == "int":
                    row[c] = int(v)
                elif t == "float":
                    row[c] = float(v)
                else:
                    row[c] = v
            out.append(row)
    return out


def _arrow_schema():
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    return pa.schema([pa.field(c, types[t]) for c, t in ROW_COLUMNS])


def write_parquet(rows: list[dict], path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMN_NAMES} for r in rows],
                                 schema=schema)
    pq.write_table(table, path)


def read_parquet(path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def results_path(source) -> Path:
    p = Path(source)
    if p.is_dir():
        p = p / RESULTS_JSON
    if not p.exists():
        raise MemvirtError(f"{p}: no such results file (run `memvirt compare ... --out DIR` "
                           "first)")
    return p


def load_results(source) -> dict:
    """results.json as a dict, from a results directory, the file, or an already-loaded dict."""
    if isinstance(source, dict):
        return source
    if isinstance(source, Comparison):
        return source.to_json_dict()
    p = results_path(source)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MemvirtError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "runs" not in data:
        raise MemvirtError(f"{p}: not a memvirt results file")
    if "rows" not in data:
        rows = [row_from_result(r["trace"], r["result"]) for r in data["runs"]]
        normalize_rows(rows)
        data["rows"] = rows
    if "verdicts" not in data:
        data["verdicts"] = {}
    for t in dict.fromkeys(r["trace"] for r in data["rows"]):
        data["verdicts"].setdefault(t, verdict_for_rows(r for r in data["rows"]
                                                        if r["trace"] == t))
    return data


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
