"""Terminal tables (rich): per trace, one row per mode with normalized time, where the
cycles go, event rates and the verdict.  Built from results (a directory, results.json,
a loaded dict or a ``Comparison``) so ``memvirt report`` can print them without simulating.

The number formats (``fmt_*``) are shared with the HTML report.
"""

from __future__ import annotations

from .load import GROUPS, group_cycles, load_results

MODE_STYLE = {"native": "bright_black", "shadow": "blue", "nested": "dark_orange",
              "selective": "green", "agile": "magenta"}
GROUP_LABELS = {"base": "base", "translation": "TLB+walk", "guest": "guest OS",
                "vmm": "VMM", "switch": "switch"}


def fmt_norm(x) -> str:
    """A normalized run time (1.000 = the reference)."""
    return "-" if x is None else f"{x:.3f}"


def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_rate(x) -> str:
    """An event rate per 1K instructions, with enough digits for small rates."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}" if abs(x) >= 1e-4 else f"{x:.1e}"


def fmt_time(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_int(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def shares(row: dict) -> dict[str, float]:
    """Fraction of the row's cycles in each overhead group (``compare.GROUPS``)."""
    g = group_cycles(row)
    tot = row["cycles"] or 1.0
    return {k: v / tot for k, v in g.items()}


def table_cells(row: dict, compact: bool = False) -> list[str]:
    """The cells of one mode row, in ``table_columns(compact)`` order."""
    sh = shares(row)
    sel = row["mode"] == "selective"
    mode = row["mode"]
    if sel and row.get("policy") and not compact:
        mode += f" ({row['policy']})"
    cells = [mode]
    if not compact:
        cells.append(fmt_time(row["time_s"]))
    cells += [fmt_norm(row["normalized_to_native"]), fmt_norm(row["normalized_to_best_static"]),
              fmt_norm(row.get("whole_normalized_to_best_static"))]
    if compact:
        cells += [fmt_pct(sh["translation"]), fmt_pct(sh["guest"]),
                  fmt_pct(sh["vmm"] + sh["switch"])]
    else:
        cells += [fmt_pct(sh[g]) for g in GROUPS]
    cells += [fmt_rate(row["tlb_misses_per_ki"])]
    if not compact:
        cells.append(f"{row['refs_per_walk']:.2f}")
    cells += [fmt_rate(row["guest_faults_per_ki"]), fmt_rate(row["vm_exits_per_ki"]),
              str(row["switches"]) if sel else "-"]
    return cells


TABLE_COLUMNS = ["mode", "time", "x native", "x best static", "x best static, whole run",
                 *(GROUP_LABELS[g] + " %" for g in GROUPS),
                 "TLB miss/Ki", "refs/walk", "faults/Ki", "exits/Ki", "switches"]
COMPACT_COLUMNS = ["mode", "x\nnative", "x best\nstatic", "whole\nx best", "TLB+\nwalk %",
                   "guest\nOS %",
                   "VMM\n%", "TLB\nmiss/Ki", "faults\n/Ki", "exits\n/Ki", "sw"]
FULL_COLUMNS = ["mode", "time", "x\nnative", "x best\nstatic", "x best\nwhole run", "base\n%",
                "TLB+\nwalk %",
                "guest\nOS %", "VMM\n%", "switch\n%", "TLB\nmiss/Ki", "refs\n/walk",
                "faults\n/Ki", "exits\n/Ki", "switches"]
assert len(FULL_COLUMNS) == len(TABLE_COLUMNS)
COMPACT_BELOW = 116  # console width under which the compact table is used


def measured_text(rows: list[dict]) -> str:
    """What the table's figures cover: the steady state after a warm-up, or the whole run."""
    if not rows:
        return ""
    r = rows[0]
    warm = r.get("warmup_instructions") or 0
    if warm:
        return (f": steady state, {fmt_int(r['instructions'])} instructions after a warm-up of "
                f"{fmt_int(warm)} (whole run: {fmt_int(r.get('whole_instructions'))} "
                "instructions, 'whole run' column)")
    return f": whole run, {fmt_int(r['instructions'])} instructions"


def table_columns(compact: bool = False) -> list[str]:
    """Terminal headers (two lines each); the HTML report uses ``TABLE_COLUMNS``."""
    return COMPACT_COLUMNS if compact else FULL_COLUMNS


def trace_table(trace: str, rows: list[dict], verdict: str | None = None,
                compact: bool = False):
    from rich import box
    from rich.table import Table

    t = Table(title=f"[bold]{trace}[/]{measured_text(rows)}", caption=verdict,
              caption_justify="left",
              title_justify="left", header_style="bold",
              box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for i, c in enumerate(table_columns(compact)):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        t.add_row(*table_cells(r, compact), style=MODE_STYLE.get(r["mode"]))
    return t


def summary_table(data: dict):
    from rich.table import Table

    t = Table(title="[bold]Summary[/]", title_justify="left", header_style="bold")
    t.add_column("workload", no_wrap=True)
    t.add_column("instructions", justify="right")
    t.add_column("verdict")
    info = {x["name"]: x for x in data.get("traces", [])}
    for trace, v in data["verdicts"].items():
        n = info.get(trace, {}).get("instructions")
        t.add_row(trace, fmt_int(n), v)
    return t


def print_tables(source, console=None) -> None:
    """Print one table per trace, then a summary of the verdicts."""
    from rich.console import Console

    data = load_results(source)
    console = console or Console()
    by: dict[str, list[dict]] = {}
    for r in data["rows"]:
        by.setdefault(r["trace"], []).append(r)
    compact = console.width < COMPACT_BELOW
    for trace, rows in by.items():
        console.print(trace_table(trace, rows, data["verdicts"].get(trace), compact))
        console.print()
    console.print(summary_table(data))


def render_text(source, width: int = 200) -> str:
    """The tables as plain text (for tests, logs and files)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, force_terminal=False)
    print_tables(source, con)
    return buf.getvalue()


__all__ = ["fmt_norm", "fmt_pct", "fmt_rate", "fmt_time", "print_tables", "render_text",
           "summary_table", "trace_table"]
