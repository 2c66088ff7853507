"""One self-contained HTML report from a results directory.

``write_report(results_dir, out_html)`` reads ``results.json`` only: the plots are drawn
again from it and inlined as base64 PNGs, the CSS is inline, and nothing refers to the
network, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from ..fileio import atomic_write_text, ensure_dir
from .load import load_results, results_path
from .plots import plot_breakdown, plot_normalized, plot_timeline, safe_name
from .tables import MODE_STYLE, TABLE_COLUMNS, fmt_int, fmt_rate, measured_text, table_cells

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 1em 2em 3em; background: #fff; }
h1 { border-bottom: 3px solid #2ca02c; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; white-space: normal; }
tr.native td:first-child { border-left: 5px solid #7f7f7f; }
tr.shadow td:first-child { border-left: 5px solid #1f77b4; }
tr.nested td:first-child { border-left: 5px solid #ff7f0e; }
tr.selective td:first-child { border-left: 5px solid #2ca02c; }
.verdict { background: #f3f9f1; border-left: 4px solid #2ca02c; padding: .4em .8em; }
img { max-width: 100%; border: 1px solid #eee; }
code, pre { background: #f4f4f4; padding: 1px 4px; font-size: 12px; }
pre { padding: .6em; overflow-x: auto; }
.meta td { text-align: left; }
details { margin: .5em 0; }
summary { cursor: pointer; font-weight: bold; }
.small { font-size: 12px; color: #555; }
.cfg { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
.cfg h4 { margin: .6em 0 0; }
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _kv_table(items, cls="meta") -> str:
    rows = "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>"
                   for k, v in items)
    return f"<table class='{cls}'>{rows}</table>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _mode_table(rows: list[dict]) -> str:
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{_e(c)}</th>"
                   for i, c in enumerate(TABLE_COLUMNS))
    body = []
    for r in rows:
        cells = table_cells(r)
        tds = "".join(f"<td{' class=l' if i == 0 else ''}>{_e(c)}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr class='{_e(r['mode'])}'>{tds}</tr>")
    what = measured_text(rows).lstrip(": ")
    note = f"<p class='note'>Figures: {_e(what)}.</p>" if what else ""
    return f"{note}<table><tr>{head}</tr>{''.join(body)}</table>"


def _detail_table(rows: list[dict]) -> str:
    """Raw numbers: cycles by category and exits by reason, one column per mode."""
    modes = [r["mode"] for r in rows]
    keys = [k for k in rows[0] if k.startswith("cyc_")]
    exits = [k for k in rows[0] if k.startswith("exits_")]
    lines = [("cycles", [f"{r['cycles']:,.0f}" for r in rows]),
             ("instructions", [fmt_int(r["instructions"]) for r in rows])]
    lines += [(k, [f"{r[k]:,.0f}" for r in rows]) for k in keys]
    lines += [("TLB misses", [fmt_int(r["tlb_misses"]) for r in rows]),
              ("walks", [fmt_int(r["walks"]) for r in rows]),
              ("walk references", [fmt_int(r["walk_refs"]) for r in rows]),
              ("  of which EPT", [fmt_int(r["walk_refs_nested"]) for r in rows]),
              ("guest page faults", [fmt_int(r["guest_faults"]) for r in rows]),
              ("VM exits", [fmt_int(r["vm_exits_total"]) for r in rows])]
    lines += [(f"  {k}", [fmt_int(r[k]) for r in rows]) for k in exits]
    lines += [("shadow fills", [fmt_int(r["shadow_fills"]) for r in rows])]
    head = "<tr><th class='l'></th>" + "".join(f"<th>{_e(m)}</th>" for m in modes) + "</tr>"
    body = "".join("<tr><td class='l'>" + _e(name) + "</td>"
                   + "".join(f"<td>{_e(v)}</td>" for v in vals) + "</tr>" for name, vals in lines)
    return f"<table>{head}{body}</table>"


def _decisions(result: dict, limit: int = 300) -> str:
    sel = result.get("selective") or {}
    dec = sel.get("decisions") or []
    samples = {s["index"]: s for s in result.get("samples", [])}
    if not dec:
        return ""
    rows = []
    for d in dec[:limit]:
        s = samples.get(d["period"], {})
        changed = d["from"] != d["to"]
        rows.append(
            f"<tr><td>{_e(d['period'])}</td><td class='l'>{_e(d['from'])}</td>"
            f"<td class='l'>{'<b>' if changed else ''}{_e(d['to'])}{'</b>' if changed else ''}"
            f"</td><td>{_e(fmt_rate(s.get('tlb_misses_per_ki')))}</td>"
            f"<td>{_e(fmt_rate(s.get('guest_faults_per_ki')))}</td>"
            f"<td class='l'>{_e(d.get('reason'))}</td></tr>")
    more = (f"<p class='small'>{len(dec) - limit} more periods in results.json</p>"
            if len(dec) > limit else "")
    frac = sel.get("time_fraction_in_mode") or {}
    fr = ", ".join(f"{k} {100 * v:.0f}%" for k, v in frac.items())
    return (f"<details><summary>selective decisions ({len(dec)} periods, "
            f"{sel.get('switches', 0)} switches; time: {_e(fr)})</summary><table>"
            "<tr><th>period</th><th class='l'>from</th><th class='l'>to</th>"
            "<th>TLB miss/Ki</th><th>faults/Ki</th><th class='l'>reason</th></tr>"
            + "".join(rows) + f"</table>{more}</details>")


def _provenance(data: dict) -> str:
    parts = []
    for t in data.get("traces", []):
        prov = dict(t.get("provenance") or {})
        items = [("description", t.get("description")), ("spec", t.get("spec")),
                 ("records", fmt_int(t.get("records"))),
                 ("instructions", fmt_int(t.get("instructions")))]
        for k in ("source", "generator", "params", "path", "command", "capture_date",
                  "tool_versions", "content_id"):
            if k in prov and prov[k] not in (None, "", {}):
                v = prov[k]
                if isinstance(v, dict):
                    v = ", ".join(f"{a}={b}" for a, b in v.items())
                elif isinstance(v, list):
                    v = " ".join(map(str, v))
                items.append((k, v))
        items = [(k, v) for k, v in items if v not in (None, "")]
        parts.append(f"<h3>{_e(t['name'])}</h3>{_kv_table(items)}")
    return "".join(parts)


GLOSSARY = [
    ("time", "simulated run time = cycles / cost.clock_ghz"),
    ("x native", "cycles relative to the native (unvirtualized) run of the same trace"),
    ("x best static", "cycles relative to the faster of shadow and nested paging"),
    ("base / TLB+walk / guest OS / VMM / switch %",
     "share of the run's cycles: base CPI; L2-TLB hits and page walks; guest kernel "
     "(faults, syscalls, PTE updates, context switches); hypervisor (VM exits by reason, "
     "shadow management); mode switches"),
    ("TLB miss/Ki", "last-level TLB misses (walks started) per 1,000 instructions"),
    ("refs/walk", "memory references per page walk (4 native at most, 24 for a 2D walk)"),
    ("faults/Ki", "guest page faults per 1,000 instructions"),
    ("exits/Ki", "VM exits per 1,000 instructions"),
]


def render_html(source, plots_dir: Path, reuse: bool = False) -> str:
    """The report as a string.  Plots are drawn into ``plots_dir`` from the results, or,
    with ``reuse``, taken from there when ``plot_all`` already drew them."""
    data = load_results(source)
    by: dict[str, list[dict]] = {}
    for r in data["rows"]:
        by.setdefault(r["trace"], []).append(r)
    runs = {(r["trace"], r["mode"]): r for r in data["runs"]}
    modes = list(dict.fromkeys(r["mode"] for r in data["rows"]))

    def png(name: str, draw, *args) -> Path:
        p = plots_dir / name
        if reuse and p.exists():
            return p
        return draw(data, *args, p)

    img_norm = _img(png("normalized.png", plot_normalized), "normalized run time")
    img_bd = _img(png("breakdown.png", plot_breakdown), "overhead breakdown")

    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           "<title>memvirt report</title>", f"<style>{CSS}</style></head><body><main>",
           "<h1>memvirt: native, shadow, nested and selective paging compared</h1>"]
    env = data.get("environment") or {}
    out.append(_kv_table([
        ("created", data.get("created")),
        ("command", data.get("command") or "(Python API)"),
        ("workloads", ", ".join(by)),
        ("modes", ", ".join(modes)),
        ("selective policy", data.get("policy") or "-"),
        ("memvirt", env.get("memvirt")),
    ]))
    out.append("<h2>Summary</h2><table><tr><th class='l'>workload</th><th>instructions</th>"
               "<th class='l'>verdict</th></tr>")
    info = {t["name"]: t for t in data.get("traces", [])}
    for t in by:
        out.append(f"<tr><td class='l'><a href='#w-{_e(safe_name(t))}'>{_e(t)}</a></td>"
                   f"<td>{_e(fmt_int(info.get(t, {}).get('instructions')))}</td>"
                   f"<td class='l'>{_e(data['verdicts'].get(t))}</td></tr>")
    out.append("</table>")
    out.append(f"<h2>Run time</h2>{img_norm}<h2>Overhead breakdown</h2>{img_bd}")

    out.append("<h2>Workloads</h2>")
    for t, rows in by.items():
        out.append(f"<h3 id='w-{_e(safe_name(t))}'>{_e(t)}</h3>")
        out.append(f"<p class='verdict'>{_e(data['verdicts'].get(t))}</p>")
        out.append(_mode_table(rows))
        out.append(f"<details><summary>raw counts</summary>{_detail_table(rows)}</details>")
        sel = runs.get((t, "selective"))
        if sel is not None:
            tl = png(f"timeline_{safe_name(t)}.png", plot_timeline, t)
            out.append(_img(tl, f"selective timeline of {t}"))
            out.append(_decisions(sel["result"]))
    out.append("<h2>Columns</h2>" + _kv_table(GLOSSARY))
    out.append("<h2>Trace provenance</h2>" + _provenance(data))
    cfg = data.get("config") or {}
    sections = "".join(f"<div><h4>{_e(sec)}</h4>{_kv_table(_flatten(val))}</div>"
                       if isinstance(val, dict) else _kv_table([(sec, val)])
                       for sec, val in cfg.items())
    out.append("<h2>Configuration</h2><details open><summary>every parameter "
               f"({len(_flatten(cfg))})</summary><div class='cfg'>{sections}</div></details>")
    out.append("<h2>Versions</h2>" + _kv_table(sorted(env.items())))
    legend = " ".join(f"<span style='color:{c}'>&#9632;</span> {_e(m)}"
                      for m, c in (("native", "#7f7f7f"), ("shadow", "#1f77b4"),
                                   ("nested", "#ff7f0e"), ("selective", "#2ca02c"),
                                   ("agile", "#9467bd"))
                      if m in MODE_STYLE)
    out.append(f"<p class='small'>Modes: {legend}. Generated by memvirt from results.json; "
               "redraw with <code>memvirt report DIR</code>.</p>")
    out.append("</main></body></html>")
    return "\n".join(out)


def write_report(results_dir, out_html=None, plots_dir=None) -> Path:
    """Write the self-contained HTML report of ``results_dir`` (default
    ``results_dir/report.html``); returns its path.  The plots are drawn afresh from
    results.json, unless ``plots_dir`` names a directory where ``plots.plot_all`` has
    just drawn them from the same results (then they are reused)."""
    src = results_path(results_dir)
    out = Path(out_html) if out_html is not None else src.parent / "report.html"
    if plots_dir is not None:
        text = render_html(src, Path(plots_dir), reuse=True)
    else:
        with tempfile.TemporaryDirectory(prefix="memvirt-plots-") as tmp:
            text = render_html(src, Path(tmp))
    ensure_dir(out.parent, "report folder")
    atomic_write_text(out, text, "HTML report")
    return out


__all__ = ["render_html", "write_report"]
