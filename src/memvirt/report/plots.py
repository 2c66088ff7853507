"""PNG plots drawn from the results files alone (no simulation, no pyplot state).

Every function takes the results (a results directory, its ``results.json``, or the
loaded dict) so a report can be redrawn at any time::

    from memvirt.report.plots import plot_all
    plot_all("demo-out")              # rewrites demo-out/*.png from demo-out/results.json

Plots: ``normalized.png`` (run time per trace and mode, grouped bars),
``breakdown.png`` (overhead by category per mode, stacked bars, one panel per trace) and
``timeline_<trace>.png`` for every selective run (the mode of each sampling period over
the TLB-miss and guest-fault rates per 1K instructions, and the cycles per instruction of
each period next to those of the static runs).

Matplotlib is used through its object API with the Agg canvas, so importing this module
never changes the backend of an interactive session.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .. import counters as K
from ..fileio import atomic_path, ensure_dir
from .load import RESULTS_JSON, load_results, results_path

MODE_COLORS = {"native": "#7f7f7f", "shadow": "#1f77b4", "nested": "#ff7f0e",
               "selective": "#2ca02c", "agile": "#9467bd"}
MODE_ORDER = ("native", "shadow", "nested", "selective", "agile")
PROGRAM_KEYS = ("base", "memory")  # the program's own cycles: compute and data stalls

# Overhead categories as plotted: label -> breakdown keys ("base" and "memory", the program's
# own work and data stalls, are not overhead).
PLOT_GROUPS: list[tuple[str, tuple[str, ...], str]] = [
    ("L2 TLB hits", ("tlb",), "#c7e9c0"),
    ("page walks", ("walk",), "#1f77b4"),
    ("guest page faults", ("guest_fault",), "#9467bd"),
    ("guest kernel (syscalls, PTE updates, switches)", ("guest_os",), "#c5b0d5"),
    ("VMM: page faults (true + hidden)", ("vmm_pf_true", "vmm_pf_hidden"), "#d62728"),
    ("VMM: PTE writes (emulated, unsync)", ("vmm_pte_write", "vmm_unsync"), "#ff9896"),
    ("VMM: CR3 loads / INVLPG", ("vmm_cr3_load", "vmm_invlpg"), "#8c564b"),
    ("VMM: EPT violations / populate", ("vmm_ept_violation", "vmm_populate"), "#e377c2"),
    ("VMM: shadow management", ("vmm_shadow_mgmt",), "#bcbd22"),
    ("mode switches", ("mode_switch",), "#17becf"),
    ("VMM: agile moves and scans", ("vmm_agile",), "#7f7f7f"),
]
assert sorted(k for _, keys, _ in PLOT_GROUPS for k in keys) == sorted(
    k for k in K.BREAKDOWN_KEYS if k not in PROGRAM_KEYS), "every overhead category must be plotted"


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: Path) -> Path:
    """Write the PNG atomically (a temporary file renamed over ``path``)."""
    ensure_dir(path.parent, "plots folder")
    with atomic_path(path, "plot") as tmp:
        fig.savefig(tmp, format="png")
    return path


def safe_name(trace: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", trace).strip("_") or "trace"


def _by_trace(data: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in data["rows"]:
        out.setdefault(r["trace"], {})[r["mode"]] = r
    return out


def _reference(modes: dict[str, dict]) -> tuple[float, str]:
    """Cycles every bar of a trace is divided by, and its name."""
    if "native" in modes and modes["native"]["cycles"] > 0:
        return modes["native"]["cycles"], "native"
    statics = [modes[m]["cycles"] for m in ("shadow", "nested") if m in modes]
    if statics and min(statics) > 0:
        return min(statics), "best static mode"
    return max(1.0, max(r["cycles"] for r in modes.values())), "slowest mode"


def _modes_in(data: dict) -> list[str]:
    present = {r["mode"] for r in data["rows"]}
    return [m for m in MODE_ORDER if m in present]


# ----------------------------------------------------------------------------- plots


def plot_normalized(source, path) -> Path:
    """Run time of each trace under each mode, relative to native, as grouped bars."""
    data = load_results(source)
    bt = _by_trace(data)
    traces = list(bt)
    modes = _modes_in(data)
    fig, axes = _figure(max(6.0, 1.3 * len(traces) * max(1, len(modes)) / 2 + 2), 4.2)
    ax = axes[0][0]
    width = 0.8 / max(1, len(modes))
    refs = set()
    top = 1.0
    for j, m in enumerate(modes):
        xs, ys = [], []
        for i, t in enumerate(traces):
            if m in bt[t]:
                ref, name = _reference(bt[t])
                refs.add(name)
                xs.append(i + (j - (len(modes) - 1) / 2) * width)
                ys.append(bt[t][m]["cycles"] / ref)
        bars = ax.bar(xs, ys, width * 0.95, label=m, color=MODE_COLORS.get(m))
        for b, y in zip(bars, ys):
            ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
        top = max([top, *ys])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(traces)), traces)
    ax.set_ylim(0, top * 1.12)
    ref = refs.pop() if len(refs) == 1 else "native (or best static mode)"
    ax.set_ylabel(f"run time / {ref}")
    ax.set_title("Normalized run time per workload and paging mode (lower is better)")
    ax.legend(ncols=len(modes), loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_breakdown(source, path) -> Path:
    """Overhead cycles (everything but the base CPI) by category, one stacked bar per mode,
    one panel per trace, as a fraction of the native run time."""
    data = load_results(source)
    bt = _by_trace(data)
    traces = list(bt)
    ncols = min(3, len(traces))
    nrows = math.ceil(len(traces) / ncols)
    fig, axes = _figure(4.2 * ncols + 2.8, 3.3 * nrows + 0.4, nrows, ncols)
    used: set[str] = set()
    for idx, t in enumerate(traces):
        ax = axes[idx // ncols][idx % ncols]
        modes = [m for m in MODE_ORDER if m in bt[t]]
        ref, refname = _reference(bt[t])
        bottoms = [0.0] * len(modes)
        for label, keys, color in PLOT_GROUPS:
            vals = [sum(bt[t][m][f"cyc_{k}"] for k in keys) / ref for m in modes]
            if not any(v > 0 for v in vals):
                continue
            used.add(label)
            ax.bar(range(len(modes)), vals, 0.65, bottom=bottoms, color=color, label=label)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        for i, b in enumerate(bottoms):
            ax.annotate(f"{b:.2f}", (i, b), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(range(len(modes)), modes, fontsize=8)
        ax.set_title(t, fontsize=10)
        ax.set_ylabel(f"overhead / {refname} time", fontsize=8)
        ax.set_ylim(0, max([0.01, *bottoms]) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    for idx in range(len(traces), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    handles = [_patch(c) for label, _, c in PLOT_GROUPS if label in used]
    labels = [label for label, _, _ in PLOT_GROUPS if label in used]
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle("Where the extra cycles go (overhead above the base CPI)")
    return _save(fig, Path(path))


def _patch(color):
    from matplotlib.patches import Patch

    return Patch(color=color)


def _run(data: dict, trace: str, mode: str) -> dict | None:
    for r in data["runs"]:
        if r["trace"] == trace and r["mode"] == mode:
            return r["result"]
    return None


def plot_timeline(source, trace: str, path) -> Path:
    """The selective run of ``trace`` period by period: mode bands over the TLB-miss and
    guest-fault rates, and cycles per instruction against the static runs."""
    data = load_results(source)
    sel = _run(data, trace, "selective")
    if sel is None:
        raise ValueError(f"no selective run for trace '{trace}'")
    samples = sel["samples"]
    fig, axes = _figure(10, 7, 3, 1, sharex=True)
    ax_tlb, ax_pf, ax_cpi = axes[0][0], axes[1][0], axes[2][0]
    scale = 1e6
    x0 = [s["start_instruction"] / scale for s in samples]
    x1 = [(s["start_instruction"] + s["instructions"]) / scale for s in samples]
    mid = [(a + b) / 2 for a, b in zip(x0, x1)]
    for ax in (ax_tlb, ax_pf, ax_cpi):
        for a, b, s in zip(x0, x1, samples):
            ax.axvspan(a, b, color=MODE_COLORS.get(s["mode"], "#dddddd"), alpha=0.15, lw=0)
        ax.grid(alpha=0.3)
    ax_tlb.step(mid, [s["tlb_misses_per_ki"] for s in samples], where="mid", color="black")
    ax_tlb.set_ylabel("TLB misses / 1K instr")
    ax_pf.step(mid, [s["guest_faults_per_ki"] for s in samples], where="mid", color="#9467bd")
    ax_pf.set_ylabel("guest faults / 1K instr")
    for mode in ("shadow", "nested"):
        r = _run(data, trace, mode)
        if r is None:
            continue
        ss = r["samples"]
        ax_cpi.step([(s["start_instruction"] + s["instructions"] / 2) / scale for s in ss],
                    [s["cycles"] / s["instructions"] if s["instructions"] else 0 for s in ss],
                    where="mid", color=MODE_COLORS[mode], lw=1, ls="--", label=f"{mode} (static)")
    ax_cpi.step(mid, [s["cycles"] / s["instructions"] if s["instructions"] else 0
                      for s in samples], where="mid", color=MODE_COLORS["selective"], lw=1.8,
                label=f"selective ({sel.get('policy') or ''})")
    ax_cpi.set_ylabel("cycles / instruction")
    ax_cpi.set_xlabel("instructions (millions)")
    ax_cpi.legend(fontsize=8, loc="upper right")
    handles = [_patch(MODE_COLORS[m]) for m in ("shadow", "nested")]
    ax_tlb.legend(handles, ["period run in shadow", "period run in nested"], fontsize=8,
                  loc="upper right")
    switches = (sel.get("selective") or {}).get("switches", 0)
    fig.suptitle(f"{trace}: selective paging ({sel.get('policy') or 'policy'}), "
                 f"{len(samples)} periods, {switches} switch{'' if switches == 1 else 'es'}")
    return _save(fig, Path(path))


def plot_all(source, out_dir=None) -> list[Path]:
    """Draw every plot from the results into ``out_dir`` (default: the results directory).
    Returns the PNG paths."""
    if out_dir is None:
        if isinstance(source, dict):
            raise ValueError("out_dir is required when the results are given as a dict")
        out_dir = results_path(source).parent
    data = load_results(source)
    out = Path(out_dir)
    paths = [plot_normalized(data, out / "normalized.png"),
             plot_breakdown(data, out / "breakdown.png")]
    for t in dict.fromkeys(r["trace"] for r in data["rows"]):
        if _run(data, t, "selective") is not None:
            paths.append(plot_timeline(data, t, out / f"timeline_{safe_name(t)}.png"))
    return paths


__all__ = ["RESULTS_JSON", "plot_all", "plot_breakdown", "plot_normalized", "plot_timeline"]
