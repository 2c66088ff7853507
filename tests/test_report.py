"""compare / results files / tables / plots / HTML report.

The numbers must agree everywhere (JSON, CSV, Parquet, terminal table) and with an
independent ``simulate()`` of the same trace and mode; plots and the report must be
producible from the results files alone; the HTML must be self-contained.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from memvirt import counters as K
from memvirt.api import simulate
from memvirt.cli import main
from memvirt.config import Config
from memvirt.errors import MemvirtError
from memvirt.report.compare import (
    COLUMN_NAMES,
    Comparison,
    compare,
    load_results,
    normalize_rows,
    parse_synth_spec,
    read_csv,
    read_parquet,
    resolve_traces,
    row_from_result,
    verdict_for_rows,
)
from memvirt.report.tables import render_text, table_cells
from memvirt.trace.synth import synthesize

MODES = ("native", "shadow", "nested", "selective")
CHASE = "synth:chase:records=60000,footprint_mib=4,span_mib=64,seed=3"
COMPILE = "synth:compile:records=60000,processes=3,heap_mib=1,seed=4"
PERIOD = 20_000


def _cfg() -> Config:
    return Config().with_overrides({"selective.period_instructions": PERIOD})


@pytest.fixture(scope="module")
def comp() -> Comparison:
    # workers=2: exercises the process pool (and pickling of specs and results)
    return compare([CHASE, COMPILE], modes=MODES, policy="dsp", config=_cfg(), workers=2,
                   progress=False, command="pytest")


@pytest.fixture(scope="module")
def out_dir(comp, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cmp")
    comp.write(d)
    return d


# ----------------------------------------------------------------------------- agreement


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_rows_shape(comp):
    assert comp.traces == ["chase", "compile"]
    assert comp.modes == list(MODES)
    assert len(comp.rows) == 8 and len(comp.results) == 8
    for r in comp.rows:
        assert list(r) == COLUMN_NAMES
        bd = sum(r[f"cyc_{k}"] for k in K.BREAKDOWN_KEYS)
        assert bd == pytest.approx(r["cycles"], rel=1e-12)
        assert r["time_s"] == pytest.approx(r["cycles"] / 2.8e9)
    for t in comp.traces:
        assert comp.row(t, "native")["normalized_to_native"] == 1.0
        best = min(comp.row(t, m)["cycles"] for m in ("shadow", "nested"))
        for m in MODES:
            r = comp.row(t, m)
            assert r["normalized_to_best_static"] == pytest.approx(r["cycles"] / best)
        assert min(comp.row(t, m)["normalized_to_best_static"] for m in ("shadow", "nested")) \
            == 1.0
        sel = comp.row(t, "selective")
        assert sel["policy"] == "dsp"
        assert sel["switches"] == comp.result(t, "selective")["selective"]["switches"]
        assert comp.row(t, "shadow")["policy"] is None


def test_files_agree(comp, out_dir):
    data = load_results(out_dir)
    csv_rows = read_csv(out_dir / "results.csv")
    pq_rows = read_parquet(out_dir / "results.parquet")
    assert len(data["rows"]) == len(csv_rows) == len(pq_rows) == len(comp.rows)
    for mem, js, cs, pq in zip(comp.rows, data["rows"], csv_rows, pq_rows):
        for c in COLUMN_NAMES:
            assert _same(mem[c], js[c]), (c, mem[c], js[c])
            assert _same(mem[c], cs[c]), (c, mem[c], cs[c])
            assert _same(mem[c], pq[c]), (c, mem[c], pq[c])
    # the rows are a pure function of the full results stored next to them
    rebuilt = [row_from_result(r["trace"], r["result"]) for r in data["runs"]]
    normalize_rows(rebuilt)
    assert rebuilt == data["rows"]
    # samples are kept in full
    for r in data["runs"]:
        assert r["result"]["samples"], (r["trace"], r["mode"])
        assert sum(s["instructions"] for s in r["result"]["samples"]) == \
            r["result"]["instructions"]
    assert data["verdicts"] == comp.verdicts()
    assert Comparison.load(out_dir).rows == comp.rows


@pytest.mark.parametrize("spec", [CHASE, COMPILE])
def test_matches_independent_simulate(comp, spec):
    name, params = parse_synth_spec(spec)
    trace = synthesize(name, **params)
    for mode in MODES:
        d = simulate(trace, _cfg(), mode, policy="dsp" if mode == "selective" else None).to_dict()
        got = comp.result(name, mode)
        for key in ("instructions", "records", "cycles", "cycles_breakdown", "counters", "tlb",
                    "vm_exits", "guest_page_faults", "walks", "walk_refs", "rates", "samples",
                    "selective"):
            assert got[key] == d[key], (name, mode, key)
        row = comp.row(name, mode)
        assert row["cycles"] == d["cycles"]
        assert row["tlb_misses_per_ki"] == d["rates"]["tlb_misses_per_ki"]
        assert row["vm_exits_total"] == d["vm_exits"]["total"]
        for reason, n in d["vm_exits"]["by_reason"].items():
            assert row[f"exits_{reason}"] == n


def test_table_numbers(comp, out_dir):
    text = render_text(out_dir, width=200)
    lines = text.splitlines()
    for t in comp.traces:
        start = next(i for i, ln in enumerate(lines) if ln.strip().split(":")[0] == t)
        block = lines[start:start + 12]
        for m in MODES:
            row = comp.row(t, m)
            want = " ".join(table_cells(row)).split()
            assert any(ln.split() == want for ln in block), (t, m, want, block)
        # the numbers shown are the JSON's
        nat = comp.row(t, "nested")
        assert f"{nat['normalized_to_native']:.3f}" in "\n".join(block)
    assert comp.verdict("chase").split(":")[0] in text.replace("\n", " ")


def test_compact_table_fits_80_columns(out_dir):
    text = render_text(out_dir, width=80)
    assert all(len(ln) <= 80 for ln in text.splitlines())
    assert "selective" in text and "chase" in text


# ----------------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_numbers(comp):
    for t in comp.traces:
        v = comp.verdict(t)
        sh, ne = comp.row(t, "shadow")["cycles"], comp.row(t, "nested")["cycles"]
        win, lose = ("shadow", ne / sh) if sh < ne else ("nested", sh / ne)
        if lose - 1 >= 0.005:
            assert v.startswith(f"{win} wins by "), v
        assert "selective (dsp)" in v


def _row(mode, cycles, walk=0.0, vmm=0.0, guest=0.0, refs_per_walk=0.0, exits=None, **kw):
    r = {"trace": "t", "mode": mode, "policy": None, "cycles": cycles,
         "walk_cycles": walk, "refs_per_walk": refs_per_walk, "vm_exits_per_ki": 0.0,
         "switches": 0, "normalized_to_best_static": None}
    for k in K.BREAKDOWN_KEYS:
        r[f"cyc_{k}"] = 0.0
    r["cyc_base"] = cycles - walk - vmm - guest
    r["cyc_walk"] = walk
    r["cyc_vmm_pf_hidden"] = vmm
    r["cyc_guest_fault"] = guest
    for reason in K.EXIT_REASONS:
        r[f"exits_{reason}"] = (exits or {}).get(reason, 0)
    r.update(kw)
    return r


def test_verdict_tlb_bound():
    rows = [_row("shadow", 100.0, walk=10.0, refs_per_walk=2.0),
            _row("nested", 114.0, walk=31.0, refs_per_walk=6.5)]
    assert verdict_for_rows(rows) == ("shadow wins by 14%: TLB-miss bound, nested walks cost "
                                      "3.1x more (6.5 vs 2.0 refs/walk)")


def test_verdict_fault_bound_and_selective():
    rows = [_row("shadow", 150.0, walk=5.0, vmm=60.0, exits={"pf_hidden": 30, "pf_true": 5},
                 vm_exits_per_ki=3.5),
            _row("nested", 100.0, walk=15.0, vmm=2.0),
            _row("selective", 101.0, walk=14.0, vmm=3.0, policy="dsp", switches=2,
                 normalized_to_best_static=1.01)]
    v = verdict_for_rows(rows)
    assert v.startswith("nested wins by 50%: page-fault bound, shadow VM exits cost 30.0x more")
    assert "3.50 exits/Ki, mostly pf_hidden" in v
    assert v.endswith("selective (dsp) +1.0% vs best static, 2 switches")


def test_verdict_tie_and_partial():
    assert verdict_for_rows([_row("shadow", 100.0), _row("nested", 100.2)]).startswith(
        "shadow and nested tie")
    assert verdict_for_rows([_row("native", 80.0), _row("nested", 100.0)]) == \
        "only nested run: +25.0% over native"


# ----------------------------------------------------------------------------- plots & html


def _copy_results_only(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(src / "results.json", dst / "results.json")
    return dst


def test_plots_from_results_file_alone(out_dir, tmp_path):
    d = _copy_results_only(out_dir, tmp_path / "replot")
    code = ("import sys; from memvirt.report.plots import plot_all; "
            "print('\\n'.join(str(p) for p in plot_all(sys.argv[1])))")
    res = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    names = sorted(Path(p).name for p in res.stdout.split())
    assert names == ["breakdown.png", "normalized.png", "timeline_chase.png",
                     "timeline_compile.png"]
    for n in names:
        data = (d / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # the API entry point draws the same set
    assert sorted(p.name for p in Comparison.load(d).plot(tmp_path / "api")) == names


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._cell = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "action") and v is not None:
                self.urls.append(v)
        if tag in ("td", "th"):  # (text inside a cell's link or span stays the cell's)
            self._cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell:
            self.cells.append(data.strip())


def check_report_html(path: Path, traces, modes) -> _Collect:
    """Shared with test_demo: self-contained, parses, names every mode and workload."""
    text = path.read_text(encoding="utf-8")
    p = _Collect()
    p.feed(text)
    p.close()
    assert p.tags.count("html") == 1 and "table" in p.tags
    for u in p.urls:
        assert not u.lower().startswith(("http:", "https:", "//", "ftp:", "file:")), u
        assert u.startswith(("data:image/png;base64,", "#")), u
    assert "<link" not in text and "<script" not in text and "@import" not in text
    assert "url(" not in text
    assert sum(1 for u in p.urls if u.startswith("data:image/png")) >= 2
    cells = set(p.cells)
    for t in traces:
        assert t in cells, t
    for m in modes:
        assert any(c == m or c.startswith(m + " (") for c in cells), m
    return p


def test_html_self_contained(comp, out_dir, tmp_path):
    from memvirt.report.html import write_report

    d = _copy_results_only(out_dir, tmp_path / "rep")
    out = write_report(d, tmp_path / "report.html")
    p = check_report_html(out, comp.traces, MODES)
    body = " ".join(p.text)
    for v in comp.verdicts().values():
        assert v in body
    assert "period_instructions" in body and "pytest" in body  # config and command
    assert "synth" in body and "chase" in body  # provenance
    assert sum(1 for u in p.urls if u.startswith("data:image/png")) == 4
    assert sorted(x.name for x in d.iterdir()) == ["results.json"]  # drew nothing into d


def test_html_renders_in_chromium(comp, out_dir, tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium")
    from memvirt.report.html import write_report

    out = write_report(out_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,2000", f"--screenshot={shot}", out.resolve().as_uri()],
        capture_output=True, text=True, timeout=90)
    assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG", res.stderr[-2000:]


# ----------------------------------------------------------------------------- API edges


def test_to_dataframe(comp, monkeypatch):
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(MemvirtError, match="pandas"):
            comp.to_dataframe()
    else:
        df = comp.to_dataframe()
        assert list(df.columns) == COLUMN_NAMES and len(df) == len(comp.rows)
        monkeypatch.setitem(sys.modules, "pandas", None)
        with pytest.raises(MemvirtError, match="pandas"):
            comp.to_dataframe()


def test_trace_inputs(tmp_path):
    from memvirt.trace.parquet import write_trace

    tr = synthesize("compute", records=4000, footprint_mib=0.5, seed=2)
    path = tmp_path / "small.parquet"
    write_trace(tr, path, {"source": "test", "command": "make it"})
    c = compare([("mem", tr), str(path), path, {"generator": "compute",
                                                   "params": {"records": 4000,
                                                              "footprint_mib": 0.5, "seed": 2}}],
                modes="native,nested", workers=1, progress=False)
    assert c.traces == ["mem", "small", "small#2", "compute"]
    cyc = {t: c.row(t, "nested")["cycles"] for t in c.traces}
    assert len(set(cyc.values())) == 1  # the same trace four ways
    prov = {t["name"]: t for t in c.meta["traces"]}
    assert prov["small"]["provenance"].get("command") == "make it"
    assert prov["compute"]["spec"].startswith("synth:compute")
    assert c.verdict("mem") == "only nested run: " + \
        f"{(cyc['mem'] / c.row('mem', 'native')['cycles'] - 1) * 100:+.1f}% over native"
    assert "selective" not in c.modes


def test_bad_inputs(tmp_path):
    with pytest.raises(MemvirtError, match="no such trace file"):
        resolve_traces([str(tmp_path / "missing.parquet")])
    with pytest.raises(MemvirtError, match="unknown synth generator"):
        resolve_traces(["synth:nope"])
    with pytest.raises(MemvirtError, match="no parameter"):
        resolve_traces(["synth:chase:bogus=1"])
    with pytest.raises(MemvirtError, match="unknown mode"):
        compare(["synth:compute"], modes=("native", "warp"), progress=False)
    with pytest.raises(MemvirtError, match="no such results file"):
        load_results(tmp_path)


# ----------------------------------------------------------------------------- CLI


def test_cli_compare_and_report(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["compare", "synth:compute:records=4000,footprint_mib=0.5", "--modes",
               "native,shadow,nested,selective", "--set",
               "selective.period_instructions=2000", "--workers", "1", "--out", str(out),
               "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "compute:" in printed and "report.html" in printed
    for f in ("results.json", "results.csv", "results.parquet", "report.html",
              "normalized.png", "breakdown.png", "timeline_compute.png"):
        assert (out / f).exists(), f
    data = load_results(out)
    assert data["command"].startswith("memvirt ") or data["command"]
    assert data["config"]["selective"]["period_instructions"] == 2000
    html_out = tmp_path / "again.html"
    assert main(["report", str(out), "-o", str(html_out), "--quiet"]) == 0
    assert html_out.exists()
    assert main(["report", str(out), "--no-png"]) == 0
    assert "compute" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["compare", "synth:compute", "--modes", "native,warp"], "unknown mode"),
    (["compare", "no/such/file.parquet"], "no such trace file"),
    (["compare", "synth:compute:records=abc"], "must be an integer"),
    (["compare", "synth:compute", "--set", "cost.nope=1"], "unknown config key"),
    (["compare", "synth:compute", "--workers", "0"], "at least 1"),
    (["report", "/nonexistent-dir"], "no such results file"),
])
def test_cli_user_errors(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_cli_unreadable_trace_fails_before_simulating(tmp_path, capsys):
    bad = tmp_path / "bad.trace"
    bad.write_text("not a trace\n")
    assert main(["compare", str(bad), "synth:compute:records=2000", "--quiet"]) == 2
    assert "cannot tell the trace format" in capsys.readouterr().err
