"""Parameter sweeps: spec validation, the durable store, resuming, backends agreeing bit for
bit (serial vs a 2-worker Dask LocalCluster), a driver killed with SIGKILL mid-way, and a
failing point recorded while the rest finish."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memvirt.api import simulate
from memvirt.cli import main
from memvirt.config import Config
from memvirt.sweep.backends import trace_cache_dir
from memvirt.sweep.runner import run_sweep, sweep_status
from memvirt.sweep.spec import SpecError, load_spec, spec_from_dict
from memvirt.sweep.store import Store, StoreLocked
from memvirt.trace.parquet import write_trace
from memvirt.trace.records import Kind, Trace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def warm_engine():
    """Compile (or load from the on-disk cache) the engine once, so worker processes
    started below find a warm cache."""
    simulate(_hand_trace(200, seed=0), mode="shadow")
    simulate(_hand_trace(200, seed=0), mode="nested")


def _hand_trace(n: int, seed: int, pages: int = 2048) -> Trace:
    rng = np.random.default_rng(seed)
    addr = (0x1000_0000 + rng.integers(0, pages, n) * 4096 + rng.integers(0, 512, n) * 8)
    kind = np.where(rng.random(n) < 0.1, int(Kind.STORE), int(Kind.LOAD))
    return Trace(kind=kind.astype(np.uint8), addr=addr.astype(np.uint64),
                 size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                 icount=np.full(n, 3, np.uint32), meta={"source": "test"})


def _write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _db_rows(out: Path) -> dict[str, dict]:
    db = sqlite3.connect(str(out / "sweep.sqlite"))
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM runs")}
    finally:
        db.close()


# ---------------------------------------------------------------------- (d) spec validation


def _spec_error(tmp_path: Path, text: str) -> str:
    p = _write_spec(tmp_path / "bad.toml", text)
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    return str(ei.value)


GOOD_TRACE = '[[trace]]\nsynth = "hot"\nparams = { records = 1000 }\n'


@pytest.mark.parametrize("text, needles", [
    ('modes = ["shadow"]\ngird = {}\n' + GOOD_TRACE, ["unknown key 'gird'"]),
    ('modes = ["shadow", "paravirt"]\n' + GOOD_TRACE, ["modes", "paravirt"]),
    ('modes = ["shadow"]\n[grid]\n"hw.stlb.entriez" = [512]\n' + GOOD_TRACE,
     ["hw.stlb.entriez"]),
    ('modes = ["shadow"]\n[grid]\n"hw.stlb.entries" = [512, 1000]\n' + GOOD_TRACE,
     ["hw.stlb.entries", "1000"]),
    ('modes = ["shadow"]\n[grid]\n"hw.stlb.entries" = 512\n' + GOOD_TRACE,
     ["hw.stlb.entries", "list"]),
    ('modes = ["shadow"]\n[grid]\n"hw.stlb.entries" = [512, 512]\n' + GOOD_TRACE,
     ["hw.stlb.entries", "twice"]),
    ('modes = ["shadow"]\n[[zip]]\n"hw.dtlb.entries" = [64, 128]\n"hw.dtlb.ways" = [4]\n'
     + GOOD_TRACE, ["hw.dtlb.entries", "hw.dtlb.ways", "same length"]),
    ('modes = ["shadow"]\n[grid]\n"hw.dtlb.ways" = [4]\n[[zip]]\n"hw.dtlb.ways" = [4]\n'
     + GOOD_TRACE, ["hw.dtlb.ways", "already swept"]),
    ('modes = ["shadow"]\n[set]\n"cost.vm_exit" = -5\n' + GOOD_TRACE, ["cost.vm_exit"]),
    ('modes = ["shadow"]\npolicies = ["dsp"]\n' + GOOD_TRACE, ["policies", "selective"]),
    ('modes = ["shadow"]\n[[trace]]\nsynth = "hot"\nparams = { recordz = 5 }\n',
     ["recordz"]),
    ('modes = ["shadow"]\n[[trace]]\nsynth = "hot"\npath = "x.parquet"\n',
     ["[[trace]] #1", "exactly one"]),
    ('modes = ["shadow"]\n[[trace]]\npath = "x.parquet"\nformatt = "lackey"\n',
     ["formatt"]),
    ('modes = ["shadow"]\n', ["no traces"]),
    ('modes = ["shadow"]\n' + GOOD_TRACE + GOOD_TRACE, ["two traces", "hot"]),
])
def test_spec_errors_name_the_key(tmp_path, text, needles):
    msg = _spec_error(tmp_path, text)
    assert str(tmp_path / "bad.toml") in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_spec_expansion_is_deterministic(tmp_path):
    text = """
name = "x"
modes = ["shadow", "nested"]
[[trace]]
name = "h"
synth = "hot"
params = { records = 1000 }
[[trace]]
path = "t.parquet"
[grid]
hw.stlb.entries = [512, 1024, 2048]     # unquoted dotted keys work too
[[zip]]
"hw.dtlb.entries" = [64, 128]
"hw.dtlb.ways" = [4, 8]
"""
    p = _write_spec(tmp_path / "s.toml", text)
    spec = load_spec(p)
    pts = spec.points()
    assert len(pts) == 2 * 2 * 3 * 2
    assert spec.swept_keys == ["hw.stlb.entries", "hw.dtlb.entries", "hw.dtlb.ways"]
    assert [p.index for p in pts] == list(range(len(pts)))
    first = pts[0]
    assert (first.trace.name, first.mode, first.params) == (
        "h", "shadow", {"hw.stlb.entries": 512, "hw.dtlb.entries": 64, "hw.dtlb.ways": 4})
    assert pts[1].params == {"hw.stlb.entries": 512, "hw.dtlb.entries": 128, "hw.dtlb.ways": 8}
    assert pts[-1].trace.name == "t" and pts[-1].trace.path == (tmp_path / "t.parquet")
    assert first.config == Config().with_overrides(first.params).to_dict()
    assert first.trace.params["records"] == 1000 and "seed" in first.trace.params
    again = load_spec(p).points()
    assert [(q.trace.name, q.mode, q.params) for q in again] == \
        [(q.trace.name, q.mode, q.params) for q in pts]


# ---------------------------------------------------------------------- store basics


def test_store_lock_is_exclusive(tmp_path):
    a, b = Store(tmp_path), Store(tmp_path)
    a.lock()
    with pytest.raises(StoreLocked, match="another sweep"):
        b.lock()
    assert b.driver_alive()
    a.close()
    b.lock()  # free again once the first driver is gone
    b.close()


# ---------------------------------------------------------------------- (c) failing points


def test_failing_points_are_recorded_and_the_rest_finish(tmp_path, capsys):
    # uniform puts addresses above 2^40: guest.levels = 2 (32-bit) fails at run time;
    # missing.parquet does not exist.  Everything else must finish.
    spec = _write_spec(tmp_path / "fail.toml", """
modes = ["shadow", "nested"]
[[trace]]
name = "u"
synth = "uniform"
params = { records = 3000, footprint_mib = 4 }
[[trace]]
path = "missing.parquet"
[grid]
"guest.levels" = [4, 2]
""")
    out = tmp_path / "out"
    rep = run_sweep(spec, out, serial=True)
    assert rep.total == 8
    assert rep.counts == {"done": 2, "running": 0, "failed": 6, "pending": 0}
    rows = list(_db_rows(out).values())
    assert len(rows) == 8
    for r in rows:
        params = json.loads(r["params"])
        if r["trace"] == "missing":
            assert r["status"] == "failed"
            assert "no such trace file" in r["error"] and "missing.parquet" in r["error"]
        elif params["guest.levels"] == 2:
            assert r["status"] == "failed"
            assert r["error"].startswith("TraceError") and "32-bit" in r["error"]
        else:
            assert r["status"] == "done" and r["error"] is None and r["cycles"] > 0
            assert json.loads(r["result"])["cycles"] == r["cycles"]

    # --status through the CLI
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    text = capsys.readouterr().out
    assert "done" in text and "failed" in text and "32-bit" in text
    assert [ln.split() for ln in text.splitlines() if ln.strip().startswith(("done", "failed"))
            ][:2] == [["done", "2"], ["failed", "6"]]

    # exports: flat columns plus the full result JSON
    import pyarrow.parquet as pq

    t = pq.read_table(out / "results.parquet").to_pylist()
    assert len(t) == 8
    done = [r for r in t if r["status"] == "done"]
    for col in ("trace", "mode", "policy", "guest.levels", "cycles", "time_s",
                "tlb_misses_per_ki", "guest_faults_per_ki", "vm_exits_total", "walks",
                "walk_refs", "error", "result"):
        assert col in t[0]
    assert json.loads(done[0]["result"])["walks"] == done[0]["walks"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "guest.levels" in header and "result" in header


# ---------------------------------------------------------------------- resume (in process)


def test_resume_skips_done_and_reruns_stale_running(tmp_path):
    write_trace(_hand_trace(3000, seed=5), tmp_path / "t.parquet")
    spec = _write_spec(tmp_path / "r.toml", """
modes = ["shadow", "nested"]
[[trace]]
path = "t.parquet"
[grid]
"hw.stlb.entries" = [256, 512, 1024]
""")
    out = tmp_path / "out"
    first = run_sweep(spec, out, serial=True)
    assert (first.ran, first.counts["done"]) == (6, 6)
    before = _db_rows(out)

    again = run_sweep(spec, out, serial=True)
    assert (again.ran, again.skipped, again.counts["done"]) == (0, 6, 6)
    assert _db_rows(out) == before  # nothing re-run, nothing duplicated

    # a driver that died leaves a row 'running': the next driver runs it again
    victim = sorted(before)[0]
    db = sqlite3.connect(str(out / "sweep.sqlite"))
    db.execute("UPDATE runs SET status='running', result=NULL, cycles=NULL WHERE key=?",
               (victim,))
    db.commit()
    db.close()
    st = sweep_status(spec, out)  # no driver alive: counted as pending
    assert st["counts"] == {"done": 5, "running": 0, "failed": 0, "pending": 1}
    third = run_sweep(spec, out, serial=True)
    assert third.ran == 1 and third.counts["done"] == 6
    after = _db_rows(out)
    assert set(after) == set(before)
    assert after[victim]["result"] == before[victim]["result"]
    assert after[victim]["attempts"] == 2

    # plot one metric against the swept parameter (one line per mode)
    from memvirt.cli.sweep import plot_sweep

    png, table = plot_sweep(spec, out, "walks", "hw.stlb.entries", echo=False)
    assert png.exists() and png.stat().st_size > 1000
    assert sorted(r["mode"] for r in table) == ["nested", "shadow"]
    assert all(isinstance(r["512"], int) for r in table)


# ---------------------------------------------------------------------- (a) Dask == serial


def test_dask_local_cluster_matches_serial(tmp_path):
    from distributed import LocalCluster

    write_trace(_hand_trace(20000, seed=7), tmp_path / "hand.parquet")
    spec = _write_spec(tmp_path / "a.toml", """
modes = ["shadow", "nested"]
[[trace]]
path = "hand.parquet"
[[trace]]
name = "chase"
synth = "chase"
params = { records = 20000, footprint_mib = 2, span_mib = 8, init_icount = 8 }
[grid]
"hw.stlb.entries" = [256, 1024]
""")
    serial = run_sweep(spec, tmp_path / "serial", serial=True)
    assert serial.counts["done"] == 8
    ref = _db_rows(tmp_path / "serial")

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        notes: list[str] = []
        by_path = run_sweep(spec, tmp_path / "dask", scheduler=addr, log=notes.append)
        assert not any("shipping" in n for n in notes)  # same machine: traces go by path
        shipped = run_sweep(spec, tmp_path / "ship", scheduler=addr, ship="always")
    for rep in (by_path, shipped):
        assert rep.counts["done"] == 8 and rep.ran == 8
    workers = set()
    for out in ("dask", "ship"):
        got = _db_rows(tmp_path / out)
        assert set(got) == set(ref)
        for k, r in ref.items():
            g = got[k]
            assert g["status"] == "done"
            assert g["cycles"] == r["cycles"]
            assert g["walks"] == r["walks"] and g["vm_exits_total"] == r["vm_exits_total"]
            assert json.loads(g["result"])["counters"] == json.loads(r["result"])["counters"]
            assert g["result"] == r["result"]  # the whole result JSON, bit for bit
            workers.add(g["worker"])
    assert len(workers) == 2  # both Dask workers took part
    cid = next(r["trace_id"] for r in ref.values() if r["trace"] == "hand")
    assert (trace_cache_dir() / (cid.replace(":", "-") + ".parquet")).exists()

    # and the sweep agrees with the plain API
    one = next(r for r in ref.values() if r["trace"] == "hand" and r["mode"] == "nested")
    res = simulate(tmp_path / "hand.parquet", Config.from_dict(json.loads(one["config"])),
                   "nested")
    assert res.cycles == one["cycles"]
    assert res.to_dict()["counters"] == json.loads(one["result"])["counters"]


# ---------------------------------------------------------------------- (b) kill -9 mid-way


def test_sigkill_mid_sweep_then_resume(tmp_path):
    spec = _write_spec(tmp_path / "k.toml", """
modes = ["shadow", "nested"]
[[trace]]
name = "hot"
synth = "uniform"
params = { records = 150000, footprint_mib = 16 }
[grid]
"hw.stlb.entries" = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
""")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "memvirt", "sweep", str(spec), "--out", str(out),
           "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db_path = out / "sweep.sqlite"
    deadline = time.monotonic() + 240
    snapshot: dict[str, dict] = {}
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"sweep ended before it could be killed: {proc.communicate()}")
            if db_path.exists():
                try:
                    snapshot = _db_rows(out)
                except sqlite3.OperationalError:  # tables not created yet
                    snapshot = {}
                if any(r["status"] == "done" for r in snapshot.values()):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("no run finished within 240 s")
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = _db_rows(out)
    done_before = {k: r for k, r in killed.items() if r["status"] == "done"}
    assert 1 <= len(done_before) < 16, "the sweep was not killed mid-way"
    running_before = {k for k, r in killed.items() if r["status"] == "running"}
    assert running_before  # runs were in flight when the driver died

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    final = _db_rows(out)
    assert len(final) == 16  # every run exactly once (one row per key)
    assert all(r["status"] == "done" for r in final.values())
    for k, r in done_before.items():  # finished runs survived and were not re-run
        assert final[k]["finished"] == r["finished"] and final[k]["result"] == r["result"]
        assert final[k]["attempts"] == 1
    for k in running_before:  # the dead driver's runs ran again
        assert final[k]["attempts"] >= 2
    st = sweep_status(spec, out)
    assert st["counts"] == {"done": 16, "running": 0, "failed": 0, "pending": 0}


def test_python_api_in_memory_trace(tmp_path):
    tr = _hand_trace(2000, seed=9)
    spec = spec_from_dict({"modes": ["native", "shadow"],
                           "grid": {"hw": {"stlb": {"entries": [256, 512]}}}},
                          traces={"mem": tr})
    rep = run_sweep(spec, tmp_path / "out", serial=True, export=False)
    assert rep.counts["done"] == 4
    rows = _db_rows(tmp_path / "out")
    assert {r["trace_id"] for r in rows.values()} == {next(iter(rows.values()))["trace_id"]}
    r = next(r for r in rows.values() if r["mode"] == "shadow"
             and json.loads(r["params"]) == {"hw.stlb.entries": 512})
    assert r["cycles"] == simulate(tr, Config().with_overrides({"hw.stlb.entries": 512}),
                                   "shadow").cycles


def test_unexpected_crash_is_retried_then_recorded(tmp_path, monkeypatch):
    import memvirt.api

    calls = []

    def boom(trace, config=None, mode="native", policy=None, **kw):
        calls.append(mode)
        if mode == "nested":
            raise RuntimeError("simulated crash")
        return simulate(trace, config, mode, policy, **kw)

    monkeypatch.setattr(memvirt.api, "simulate", boom)
    spec = spec_from_dict({"modes": ["shadow", "nested"]}, traces={"m": _hand_trace(500, 3)})
    rep = run_sweep(spec, tmp_path / "out", serial=True, export=False)
    assert rep.counts == {"done": 1, "running": 0, "failed": 1, "pending": 0}
    assert calls.count("nested") == 3  # first try + 2 retries
    (bad,) = [r for r in _db_rows(tmp_path / "out").values() if r["status"] == "failed"]
    assert "RunCrashed" in bad["error"] and "simulated crash" in bad["error"]
    assert "after 3 attempts" in bad["error"] and bad["attempts"] == 3
