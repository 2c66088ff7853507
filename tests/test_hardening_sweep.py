"""Sweeps under bad input and faults: a plug-in that kills its worker, a poisoned trace
cache, huge grids, a full store, folders of other commands, bad options, read-only
commands that must not run user code."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from memvirt.api import simulate
from memvirt.cli import main
from memvirt.errors import MemvirtError
from memvirt.sweep import backends
from memvirt.sweep.runner import run_sweep
from memvirt.sweep.spec import SpecError, load_spec, spec_from_dict
from memvirt.sweep.store import Store
from memvirt.trace.records import Kind, Trace

HOT = '[[trace]]\nname = "hot"\nsynth = "hot"\nparams = { records = 3000 }\n'


@pytest.fixture(scope="module", autouse=True)
def warm_engine():
    simulate(_trace(200), mode="shadow")


def _trace(n: int, seed: int = 1) -> Trace:
    rng = np.random.default_rng(seed)
    addr = 0x1000_0000 + rng.integers(0, 256, n) * 4096
    return Trace(kind=np.full(n, int(Kind.LOAD), np.uint8), addr=addr.astype(np.uint64),
                 size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                 icount=np.full(n, 3, np.uint32))


def _rows(out: Path) -> list[dict]:
    db = sqlite3.connect(str(out / "sweep.sqlite"))
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY seq")]
    finally:
        db.close()


@contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------- 1: a run kills its worker

KILLER = '''
import os
import time
from memvirt.policy import Policy


class Killer(Policy):
    """Kills its own process at the first decision, for one STLB size only; the other
    runs take a second over their first decision, so they are in flight when it dies."""

    name = "killer"

    def decide(self, samples, current):
        if self.config.hw.stlb.entries == 1024:
            os._exit(3)
        if len(samples) == 1:
            time.sleep(1.0)
        return current, "stay"
'''


def test_a_run_that_kills_its_worker_is_the_only_one_charged(tmp_path, monkeypatch):
    mod = f"killer_{os.getpid()}"
    (tmp_path / f"{mod}.py").write_text(KILLER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned pool workers inherit sys.path
    spec = tmp_path / "k.toml"
    spec.write_text(f'modes = ["selective"]\npolicies = ["{mod}:Killer"]\n'
                    '[set]\n"selective.period_instructions" = 1000\n'
                    '[grid]\n"hw.stlb.entries" = [256, 1024, 2048]\n' + HOT)
    out = tmp_path / "out"
    rep = run_sweep(spec, out, workers=2, export=False)
    rows = {json.loads(r["params"])["hw.stlb.entries"]: r for r in _rows(out)}
    bad = rows.pop(1024)
    assert bad["status"] == "failed" and bad["attempts"] == 3
    assert "WorkerLost" in bad["error"] and "after 3 attempts" in bad["error"]
    for r in rows.values():  # the innocent runs: done, never charged
        assert r["status"] == "done", r["error"]
        assert r["attempts"] == 1
    assert rep.counts == {"done": 2, "running": 0, "failed": 1, "pending": 0}


# ---------------------------------------------------------------------- 4: the trace cache


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(d))
    return d


def test_a_planted_trace_file_of_the_same_size_is_not_trusted(private_tmp):
    data = b"the real trace bytes " * 100
    cid = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = backends.trace_cache_dir()
    cache.mkdir(mode=0o700)
    planted = cache / (cid.replace(":", "-") + ".parquet")
    planted.write_bytes(b"X" * len(data))  # same size, other content
    p = backends.materialize(cid, ".parquet", data)
    assert p.read_bytes() == data
    assert p.parent == cache and str(os.getuid()) in cache.name  # per-user folder
    assert os.stat(cache).st_mode & 0o777 == 0o700


def test_shipped_bytes_must_match_their_content_id(private_tmp):
    with pytest.raises(MemvirtError, match="do not match"):
        backends.materialize("sha256:" + "0" * 64, ".parquet", b"some bytes")


def test_a_shared_or_foreign_trace_cache_folder_is_refused(private_tmp):
    cache = backends.trace_cache_dir()
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o777)  # anybody could plant files
    with pytest.raises(MemvirtError, match="private"):
        backends.materialize("x", ".bin", b"data")
    os.chmod(cache, 0o700)
    if os.getuid() == 0:  # only root can give the folder away
        os.chown(cache, 65534, 65534)
        with pytest.raises(MemvirtError, match="belongs to user"):
            backends.materialize("x", ".bin", b"data")
    os.rmdir(cache)
    os.symlink(private_tmp, cache)
    with pytest.raises(MemvirtError, match="symlink"):
        backends.materialize("x", ".bin", b"data")


# ---------------------------------------------------------------------- 7: huge grids


def test_a_huge_grid_is_refused_at_once(tmp_path, capsys):
    spec = tmp_path / "huge.toml"
    spec.write_text('modes = ["shadow"]\n' + HOT + '[grid]\n'
                    f'"cost.vm_exit" = {list(range(1000, 2000))}\n'
                    f'"cost.hv_cr3" = {list(range(1000))}\n')
    with time_limit(30):
        with pytest.raises(SpecError, match=r"1,000,000 runs.*limit of 100,000"):
            load_spec(spec)
        assert main(["sweep", str(spec), "--status"]) == 2
    assert "max_runs" in capsys.readouterr().err


def test_the_limit_is_configurable(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('modes = ["shadow"]\nmax_runs = 50\n' + HOT
                    + f'[grid]\n"cost.vm_exit" = {list(range(1000, 1060))}\n')
    with pytest.raises(SpecError, match="60 runs"):
        load_spec(spec)
    assert load_spec(spec, max_runs=60).count_runs() == 60
    with pytest.raises(SpecError, match="max_runs"):
        spec_from_dict({"modes": ["shadow"], "max_runs": 0}, traces={"t": _trace(10)})


def test_the_duplicate_check_is_linear(tmp_path):
    values = list(range(60_000)) + [7]
    spec = tmp_path / "dup.toml"
    spec.write_text('modes = ["shadow"]\n' + HOT + f'[grid]\n"cost.vm_exit" = {values}\n')
    with time_limit(10), pytest.raises(SpecError, match="lists 7 twice"):
        load_spec(spec)


# ---------------------------------------------------------------------- 11: a full store


def test_a_full_store_is_a_clear_error_and_stays_consistent(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('modes = ["shadow", "nested"]\n' + HOT)
    out = tmp_path / "out"
    original = Store.__init__

    def full_after_create(self, *a, **kw):
        original(self, *a, **kw)
        # SQLite's own size cap: the next page it needs fails with SQLITE_FULL, exactly
        # as on a full disk
        n = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {n}")

    monkeypatch.setattr(Store, "__init__", full_after_create)
    assert main(["sweep", str(spec), "--out", str(out), "--serial", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sweep.sqlite" in err and "full" in err and "Traceback" not in err
    monkeypatch.undo()
    db = sqlite3.connect(str(out / "sweep.sqlite"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    rep = run_sweep(spec, out, serial=True, export=False)  # space again: it resumes
    assert rep.counts["done"] == 2


def test_store_write_errors_name_the_store(tmp_path):
    st = Store(tmp_path)
    st.register([{"key": "k1", "seq": 0, "trace": "t", "trace_id": "x", "mode": "shadow",
                  "policy": None, "params": {}, "config": {}}])
    st.mark_running(["k1"], "me")
    n = st.db.execute("PRAGMA page_count").fetchone()[0]
    st.db.execute(f"PRAGMA max_page_count = {n}")
    big = {"cycles": 1.0, "blob": "x" * 200_000}
    with pytest.raises(MemvirtError, match=r"sweep\.sqlite.*full"):
        st.finish("k1", {"status": "done", "result": big, "worker": "w"})
    assert st.statuses() == {"k1": "running"}  # rolled back: nothing half-written
    st.close()


# ---------------------------------------------------------------------- 13: other folders


def test_sweep_refuses_a_compare_folder(tmp_path, capsys):
    d = tmp_path / "cmp"
    d.mkdir()
    (d / "results.json").write_text('{"format": "memvirt-results", "runs": []}')
    (d / "results.csv").write_text("compare's rows\n")
    spec = tmp_path / "s.toml"
    spec.write_text('modes = ["shadow"]\n' + HOT)
    assert main(["sweep", str(spec), "--out", str(d), "--serial", "--quiet"]) == 2
    assert "memvirt compare" in capsys.readouterr().err
    assert (d / "results.csv").read_text() == "compare's rows\n"
    assert not (d / "sweep.sqlite").exists()
    assert main(["sweep", str(spec), "--out", str(d), "--export"]) == 2


# ---------------------------------------------------------------------- 18: read-only status

PLANTED = '''
import pathlib
pathlib.Path(__file__).with_suffix(".imported").write_text("I ran")
from memvirt.policy import Policy


class P(Policy):
    def decide(self, samples, current):
        return current, "stay"
'''


def test_status_does_not_import_policy_modules(tmp_path, monkeypatch, capsys):
    mod = f"planted_{os.getpid()}"
    (tmp_path / f"{mod}.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "s.toml"
    spec.write_text(f'modes = ["selective"]\npolicies = ["{mod}:P"]\n' + HOT)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--status"]) == 0
    assert "pending" in capsys.readouterr().out
    assert not (tmp_path / f"{mod}.imported").exists()
    assert not (tmp_path / "out").exists()  # a read-only command creates nothing


# ---------------------------------------------------------------------- 19: options, params


def test_workers_zero_is_refused_before_anything_is_created(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('modes = ["shadow"]\n' + HOT)
    for argv in (["--workers", "0"], ["--dask-local", "0"], ["--scheduler", "tcp://host:nan"]):
        out = tmp_path / "out"
        assert main(["sweep", str(spec), "--out", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert argv[0] in err and "Traceback" not in err
        assert not out.exists(), argv  # no store created for a command that cannot run
    with pytest.raises(MemvirtError, match="at least 1"):
        run_sweep(spec, tmp_path / "api", workers=0)
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("params, needle", [
    ("records = -5", "records"),
    ("records = 1000, pages = 0", "pages"),
    ("records = 1000, store_frac = 2.0", "store_frac"),
])
def test_generator_parameters_are_range_checked_with_the_spec(tmp_path, params, needle):
    spec = tmp_path / "g.toml"
    spec.write_text(f'modes = ["shadow"]\n[[trace]]\nsynth = "hot"\nparams = {{ {params} }}\n')
    with pytest.raises(SpecError, match=needle) as ei:
        load_spec(spec)
    assert "[[trace]] #1" in str(ei.value)


def test_spec_files_that_are_not_text_or_not_files(tmp_path):
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b'modes = ["shadow"]\n# \xff\xfe\n')
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(bad)
    with pytest.raises(SpecError, match="folder"):
        load_spec(tmp_path)


def test_empty_traces_are_refused(tmp_path):
    with pytest.raises(SpecError, match="no records"):
        spec_from_dict({"modes": ["shadow"]}, traces={"e": Trace.empty()})
    from memvirt.trace.parquet import write_trace

    write_trace(Trace.empty(), tmp_path / "empty.parquet")
    spec = spec_from_dict({"modes": ["shadow"], "traces": ["empty.parquet"]},
                          base_dir=tmp_path,
                          traces={"mmap-only": Trace.from_records(
                              [(int(Kind.MMAP), 0x1000_0000, 1 << 16, 1, 0)])})
    rep = run_sweep(spec, tmp_path / "out", serial=True, export=False)
    assert rep.counts["failed"] == 2 and rep.counts["done"] == 0
    errors = {r["trace"]: r["error"] for r in _rows(tmp_path / "out")}
    assert "empty.parquet: the trace has no records" in errors["empty"]
    assert "the trace has no instructions" in errors["mmap-only"]


def test_spec_expansion_matches_the_config_schema(tmp_path):
    """The fast per-point validation gives the configs Config.with_overrides gives."""
    from memvirt.config import Config

    spec = spec_from_dict({"modes": ["shadow"],
                           "grid": {"cost.vm_exit": [1600, 2000.5],
                                    "selective.policy_params.horizon": [2, 3]},
                           "zip": [{"hw.dtlb.entries": [64, 128], "hw.dtlb.ways": [4, 8]}]},
                          traces={"t": _trace(10)})
    pts = spec.points()
    assert len(pts) == 8
    for p in pts:
        assert p.config == Config().with_overrides(p.params).to_dict()
    with pytest.raises(SpecError, match="hw.dtlb"):
        spec_from_dict({"modes": ["shadow"], "grid": {"hw.dtlb.entries": [64, 100]}},
                       traces={"t": _trace(10)})
    t0 = time.perf_counter()
    big = spec_from_dict({"modes": ["shadow", "nested"],
                          "grid": {"cost.vm_exit": list(range(2000)),
                                   "hw.stlb.entries": [256, 512, 1024, 2048, 4096]}},
                         traces={"t": _trace(10)})
    assert len(big.points()) == 20_000
    assert time.perf_counter() - t0 < 20


def test_dask_log_lines_are_silenced_by_quiet(tmp_path, monkeypatch, capfd):
    import dask
    import distributed  # noqa: F401 - its config defaults, before dask.config.set below

    mod = f"die_{os.getpid()}"
    (tmp_path / f"{mod}.py").write_text(
        "import os\nfrom memvirt.policy import Policy\n\n\nclass Die(Policy):\n"
        "    def decide(self, samples, current):\n        os._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the Dask worker processes
    spec = tmp_path / "k.toml"
    spec.write_text(f'modes = ["selective"]\npolicies = ["{mod}:Die"]\n'
                    '[set]\n"selective.period_instructions" = 1000\n' + HOT)
    capfd.readouterr()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        rep = run_sweep(spec, tmp_path / "out", dask_local=1, quiet=True, export=False)
    assert rep.counts["failed"] == 1
    err = capfd.readouterr().err
    assert "distributed" not in err, err  # e.g. "distributed.scheduler - ERROR - ..."
