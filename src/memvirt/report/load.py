"""The results of a comparison as data: the row schema, verdicts, and the results files.

Everything that reads or writes ``results.json`` / ``results.csv`` / ``results.parquet``
lives here, below the modules that draw from them: ``load`` <- ``tables`` / ``plots`` <-
``html`` <- ``compare`` (which runs the simulations).  ``load_results`` checks a results
file's structure, so a damaged or edited file is a clear error naming the file and the
key, never a traceback from inside a plot.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import counters as K
from ..errors import MemvirtError
from ..fileio import atomic_path, write_json

ALL_MODES = ("native", "shadow", "nested", "selective")  # what compare runs by default
KNOWN_MODES = (*ALL_MODES, "agile")  # what a results file may hold
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
    # The columns above are steady state (after the warm-up); these are the whole run.
    ("warmup_instructions", "int"),
    ("whole_instructions", "int"),
    ("whole_cycles", "float"),
    ("whole_normalized_to_best_static", "float"),
    ("whole_tlb_misses_per_ki", "float"),
    ("whole_guest_faults_per_ki", "float"),
]
# Columns results files of earlier versions lack (read as null).
OPTIONAL_COLUMNS = {"warmup_instructions", "whole_instructions", "whole_cycles",
                    "whole_normalized_to_best_static", "whole_tlb_misses_per_ki",
                    "whole_guest_faults_per_ki"}
COLUMN_NAMES = [c for c, _ in ROW_COLUMNS]
COLUMN_TYPES = dict(ROW_COLUMNS)

# Overhead groups used by verdicts, tables and plots: group -> breakdown keys.
GROUPS: dict[str, tuple[str, ...]] = {
    "base": ("base", "memory"),  # the program's own work: compute and data stalls
    "translation": ("tlb", "walk"),
    "guest": ("guest_fault", "guest_os"),
    "vmm": (*(f"vmm_{r}" for r in EXIT_REASONS), "vmm_shadow_mgmt", "vmm_agile"),
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
        row[f"cyc_{k}"] = float(bd.get(k, 0.0))  # (older results lack the newer categories)
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
    whole = d.get("whole_run") or {}
    row["warmup_instructions"] = int((d.get("warmup") or {}).get("instructions", 0))
    row["whole_instructions"] = int(whole.get("instructions", d["instructions"]))
    row["whole_cycles"] = float(whole.get("cycles", d["cycles"]))
    row["whole_normalized_to_best_static"] = None
    rates = whole.get("rates", d["rates"])
    row["whole_tlb_misses_per_ki"] = float(rates["tlb_misses_per_ki"])
    row["whole_guest_faults_per_ki"] = float(rates["guest_faults_per_ki"])
    return row


def normalize_rows(rows: list[dict]) -> None:
    """Fill ``normalized_to_native`` and ``normalized_to_best_static`` (steady state) and
    ``whole_normalized_to_best_static`` (whole run) in place."""
    by_trace: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace"], {})[r["mode"]] = r
    for modes in by_trace.values():
        native = modes.get("native")
        statics = [modes[m]["cycles"] for m in STATIC_MODES if m in modes]
        best = min(statics) if statics else None
        wstatics = [modes[m].get("whole_cycles") for m in STATIC_MODES if m in modes]
        wbest = min(wstatics) if wstatics and None not in wstatics else None
        for r in modes.values():
            if native is not None and native["cycles"] > 0:
                r["normalized_to_native"] = r["cycles"] / native["cycles"]
            if best:
                r["normalized_to_best_static"] = r["cycles"] / best
            if wbest and r.get("whole_cycles") is not None:
                r["whole_normalized_to_best_static"] = r["whole_cycles"] / wbest


def group_cycles(row: dict) -> dict[str, float]:
    """Cycles of a row by overhead group (``GROUPS``)."""
    return {g: sum(float(row[f"cyc_{k}"]) for k in keys) for g, keys in GROUPS.items()}


# ----------------------------------------------------------------------------- verdicts

_REASON_REGIME = {
    "pf_true": "page-fault bound",
    "pf_hidden": "page-fault bound",
    "pte_write": "page-table-update bound",
    "unsync": "page-table-update bound",
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
    "pf_true": ("pf_true",), "pf_hidden": ("pf_hidden",), "pte_write": ("pte_write", "unsync"),
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


def _jsonable(x):
    """Plain JSON types (numpy scalars -> Python); non-finite floats are kept so that the
    JSON writer refuses them (they would be silently wrong numbers)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def write_results_json(data: dict, path) -> Path:
    """results.json: standard JSON (no NaN), written atomically."""
    return write_json(path, _jsonable(data), what="results file", indent=1)


def _csv_cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            raise MemvirtError(f"results.csv: a non-finite number ({v!r}) in the rows")
        return repr(v)
    return v


def write_csv(rows: list[dict], path) -> None:
    """The flat rows as CSV (floats at full precision), written atomically."""
    cells = [[_csv_cell(r.get(c)) for c in COLUMN_NAMES] for r in rows]
    with atomic_path(path, "results file") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMN_NAMES)
        w.writerows(cells)


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
    """The flat rows as Parquet, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMN_NAMES} for r in rows],
                                 schema=schema)
    with atomic_path(path, "results file") as tmp:
        pq.write_table(table, str(tmp))


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
    if not p.is_file():
        raise MemvirtError(f"{p}: not a results file (a folder or a special file)")
    return p


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON number {name}")


class _Bad(Exception):
    pass


def _need(ok: bool, where: str, expected: str) -> None:
    if not ok:
        raise _Bad(f"'{where}' should be {expected}")


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_NULLABLE = {"policy", "normalized_to_native", "normalized_to_best_static",
             *OPTIONAL_COLUMNS}


def _check_row(r, where: str) -> None:
    _need(isinstance(r, dict), where, "a table (a row of the results)")
    for c, t in ROW_COLUMNS:
        w = f"{where}.{c}"
        if c in OPTIONAL_COLUMNS and c not in r:
            continue
        _need(c in r, w, "present")
        v = r[c]
        if v is None and c in _NULLABLE:
            continue
        if t == "str":
            _need(isinstance(v, str), w, "a string")
        elif t == "int":
            _need(isinstance(v, int) and not isinstance(v, bool), w, "an integer")
        else:
            _need(_is_num(v), w, "a finite number")
    _need(r["mode"] in KNOWN_MODES, f"{where}.mode", f"one of {', '.join(KNOWN_MODES)}")


_SAMPLE_NUMBERS = ("start_instruction", "instructions", "cycles", "tlb_misses_per_ki",
                   "guest_faults_per_ki")


def _check_run(run, where: str) -> None:
    _need(isinstance(run, dict), where, "a table with trace, mode and result")
    _need(isinstance(run.get("trace"), str), f"{where}.trace", "a string")
    _need(run.get("mode") in KNOWN_MODES, f"{where}.mode", f"one of {', '.join(KNOWN_MODES)}")
    res = run.get("result")
    _need(isinstance(res, dict), f"{where}.result", "a table (Result.to_dict())")
    samples = res.get("samples")
    _need(isinstance(samples, list), f"{where}.result.samples", "a list of samples")
    for i, s in enumerate(samples):
        w = f"{where}.result.samples[{i}]"
        _need(isinstance(s, dict), w, "a table")
        for k in _SAMPLE_NUMBERS:
            _need(_is_num(s.get(k)), f"{w}.{k}", "a finite number")
        _need(isinstance(s.get("index"), int), f"{w}.index", "an integer")
        _need(s.get("mode") in ("native", "shadow", "nested", "agile"), f"{w}.mode", "a mode")
    sel = res.get("selective")
    if run["mode"] == "selective":
        _need(isinstance(sel, dict), f"{where}.result.selective", "a table")
        dec = sel.get("decisions", [])
        _need(isinstance(dec, list), f"{where}.result.selective.decisions", "a list")
        for i, d in enumerate(dec):
            w = f"{where}.result.selective.decisions[{i}]"
            _need(isinstance(d, dict) and all(k in d for k in ("period", "from", "to")),
                  w, "a table with period, from, to and reason")
        frac = sel.get("time_fraction_in_mode", {})
        _need(isinstance(frac, dict) and all(_is_num(v) for v in frac.values()),
              f"{where}.result.selective.time_fraction_in_mode", "a table of numbers")


def check_results(data) -> None:
    """Check the structure of loaded results (raises ``ValueError`` naming the key)."""
    try:
        _need(isinstance(data, dict), "(top level)", "a table")
        _need(data.get("format") == FORMAT, "format", f'"{FORMAT}"')
        runs = data.get("runs")
        _need(isinstance(runs, list), "runs", "a list")
        for i, run in enumerate(runs):
            _check_run(run, f"runs[{i}]")
        if "rows" in data:
            _need(isinstance(data["rows"], list), "rows", "a list")
            for i, r in enumerate(data["rows"]):
                _check_row(r, f"rows[{i}]")
        if "verdicts" in data:
            _need(isinstance(data["verdicts"], dict)
                  and all(isinstance(v, str) for v in data["verdicts"].values()),
                  "verdicts", "a table of strings")
        traces = data.get("traces", [])
        _need(isinstance(traces, list), "traces", "a list")
        for i, t in enumerate(traces):
            _need(isinstance(t, dict) and isinstance(t.get("name"), str), f"traces[{i}]",
                  "a table with a name")
            _need(isinstance(t.get("provenance") or {}, dict), f"traces[{i}].provenance",
                  "a table")
        for key in ("config", "environment"):
            _need(isinstance(data.get(key) or {}, dict), key, "a table")
    except _Bad as e:
        raise ValueError(str(e)) from None


def load_results(source) -> dict:
    """results.json as a dict, from a results directory, the file, a ``Comparison`` or an
    already-loaded dict.  A file is checked: a damaged or edited one is a ``MemvirtError``
    naming the file and the key."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "to_json_dict"):  # a Comparison
        return source.to_json_dict()
    p = results_path(source)
    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise MemvirtError(f"{p}: not a memvirt results file (not UTF-8 text at byte "
                           f"{e.start})") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise MemvirtError(f"{p}: not valid JSON: {e}") from None
    except OSError as e:
        raise MemvirtError(f"{p}: cannot read the results file: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "runs" not in data:
        raise MemvirtError(f"{p}: not a memvirt results file")
    try:
        check_results(data)
    except ValueError as e:
        raise MemvirtError(f"{p}: damaged or edited results file: {e}") from None
    if "rows" not in data:
        rows = []
        for i, r in enumerate(data["runs"]):
            try:
                rows.append(row_from_result(r["trace"], r["result"]))
            except (KeyError, TypeError, ValueError) as e:
                raise MemvirtError(f"{p}: damaged or edited results file: runs[{i}].result "
                                   f"lacks or has a bad {e}") from None
        normalize_rows(rows)
        data["rows"] = rows
    if "verdicts" not in data:
        data["verdicts"] = {}
    for t in dict.fromkeys(r["trace"] for r in data["rows"]):
        data["verdicts"].setdefault(t, verdict_for_rows(r for r in data["rows"]
                                                        if r["trace"] == t))
    return data


__all__ = ["ALL_MODES", "KNOWN_MODES", "COLUMN_NAMES", "COLUMN_TYPES", "FORMAT", "FORMAT_VERSION", "GROUPS",
           "RESULTS_CSV", "RESULTS_JSON", "RESULTS_PARQUET", "ROW_COLUMNS", "STATIC_MODES",
           "check_results", "group_cycles", "load_results", "normalize_rows", "read_csv",
           "read_parquet", "results_path", "row_from_result", "verdict_for_rows",
           "write_csv", "write_parquet", "write_results_json"]
