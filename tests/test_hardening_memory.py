"""Hardening: the simulator's memory, and errors that name the file and the position.

- ``memvirt.budget``'s bytes per distinct page per mode bound a fresh measurement, and its
  fixed part matches an empty machine;
- a trace whose footprint is known (memvirt Parquet metadata) is refused before its first
  record when the estimate is above ``run.memory_budget_fraction`` of the memory available
  (physical, cgroup, address-space rlimit), with a message naming the trace, the estimate,
  the limit and the override; the same for a 3x10^7-page trace under a real 4 GiB rlimit;
- memory that runs out while the state grows is a clean error (no traceback) naming the
  pages mapped and the bytes needed (a real rlimit, in a subprocess);
- an in-memory synthetic trace too large to build (``synth:uniform:records=1e9``) is refused;
- records the engine rejects are reported at their file position (Lackey line, ChampSim byte
  offset, Parquet row).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from memvirt import budget
from memvirt import state as X
from memvirt.api import simulate
from memvirt.budget import BYTES_PER_PAGE, MemoryBudgetError, SimulatorMemoryError
from memvirt.cli import main
from memvirt.config import Config
from memvirt.engine import Machine
from memvirt.errors import TraceError
from memvirt.trace.parquet import META_KEY, ParquetTraceSource, write_trace
from memvirt.trace.records import Kind, Trace
from memvirt.trace.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def pages_trace(n: int, base: int = 1 << 32) -> Trace:
    """One load on each of ``n`` consecutive pages."""
    addr = np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(4096)
    return Trace(kind=np.ones(n, np.uint8), addr=addr, size=np.full(n, 8, np.uint64),
                 pid=np.ones(n, np.int64), icount=np.full(n, 3, np.uint32))


@pytest.fixture
def small_memory(monkeypatch):
    """Pretend the machine has ``limit`` bytes (set the returned dict's value)."""
    box = {"limit": 256 << 20}
    monkeypatch.setattr(budget, "memory_limit", lambda: (box["limit"], "the test's limit"))
    return box


# --------------------------------------------------------------------------------------------
# the constants


@pytest.mark.parametrize("mode", ["native", "shadow"])
@pytest.mark.parametrize("layout", ["dense", "scattered"])
def test_bytes_per_page_bound_a_fresh_measurement(mode, layout):
    from memvirt.cli.bench import _measure_mode

    _, pts = _measure_mode(mode, layout, 1 << 18, 1 << 14)
    worst = max(b / p for p, b in pts if p >= 1 << 17)
    assert worst <= BYTES_PER_PAGE[mode]  # the constant is the top of the sawtooth
    assert worst >= 0.4 * BYTES_PER_PAGE[mode]  # ... and not a vacuous bound
    assert BYTES_PER_PAGE["shadow"] > BYTES_PER_PAGE["native"]  # shadow tables on top


@pytest.mark.parametrize("over", [
    {},
    {"guest": {"memory_mib": 16384}},
    {"host": {"populate": "demand"}},
    {"host": {"page_size": 2097152}, "guest": {"levels": 5}},
    {"hw": {"l3": {"entries": 1 << 20, "ways": 16}}},
])
def test_fixed_estimate_matches_an_empty_machine(over):
    cfg = Config.from_dict(over)
    real = Machine(cfg, X.MODE_NESTED).state_bytes()
    est = budget.estimate_bytes(cfg, "nested", 0)["fixed state"]
    assert abs(est - real) <= 0.05 * real, (est, real)


def test_memory_limit_is_the_smallest_of_ram_cgroup_and_rlimit():
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, what = budget.memory_limit()
    assert 0 < limit <= ram
    if limit < ram:
        assert "cgroup" in what or "address-space" in what
    # under an address-space rlimit: what is left of it (a subprocess: rlimits are sticky)
    code = ("import resource; from memvirt import budget; "
            "resource.setrlimit(resource.RLIMIT_AS, (budget._mapped_bytes() + (1 << 30),) * 2); "
            "print(*budget.memory_limit(), sep='|')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    n, what = out.split("|", 1)
    assert "address-space limit" in what
    assert (1 << 30) <= int(n) <= (1 << 30) + budget.PROCESS_BASE_BYTES


# --------------------------------------------------------------------------------------------
# refusing before the run


def test_parquet_footprint_is_used_and_a_run_over_budget_refused(tmp_path, small_memory):
    f = write_trace(pages_trace(5000), tmp_path / "t.parquet")
    src = ParquetTraceSource(f)
    assert budget.footprint_pages(src) == 5000
    cfg = Config()
    est = budget.estimate_bytes(cfg, "shadow", 5000, 5000)  # (chunks: the 5000 records)
    assert est["per-page state"] == 5000 * BYTES_PER_PAGE["shadow"]
    small_memory["limit"] = int(est["total"] / 0.8) - 1  # just too little for shadow
    with pytest.raises(MemoryBudgetError) as e:
        simulate(f, cfg, "shadow")
    msg = str(e.value)
    assert msg.startswith(f"{f}: ")
    assert "5,000 distinct pages" in msg and f"{BYTES_PER_PAGE['shadow']} bytes" in msg
    assert "the test's limit" in msg and "0.8 of" in msg
    assert "run.memory_budget_fraction" in msg and "--memory-budget" in msg
    # native needs less: it fits; a larger fraction or 0 (no check) lets shadow run
    assert simulate(f, cfg, "native").records == 5000
    assert simulate(f, {"run": {"memory_budget_fraction": 0.9}}, "shadow").records == 5000
    assert simulate(f, {"run": {"memory_budget_fraction": 0}}, "shadow").records == 5000
    # an in-memory trace has no known footprint: never refused before the run
    small_memory["limit"] = 1
    assert simulate(pages_trace(100), cfg, "shadow").records == 100


def test_cli_refuses_with_a_clear_message(tmp_path, small_memory, capsys):
    f = write_trace(pages_trace(5000), tmp_path / "t.parquet")
    small_memory["limit"] = 1 << 20
    assert main(["run", str(f), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memvirt: error: {f}: simulating this trace in native mode needs")
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["run", str(f), "--quiet", "--memory-budget", "0"]) == 0
    assert main(["run", str(f), "--quiet", "--set", "run.memory_budget_fraction=0"]) == 0
    assert main(["run", str(f), "--quiet", "--memory-budget", "-1"]) == 2
    assert "run.memory_budget_fraction" in capsys.readouterr().err


_CHILD_BUDGET = r"""
import resource, sys
from memvirt import budget
from memvirt.cli import main
resource.setrlimit(resource.RLIMIT_AS, (budget._mapped_bytes() + (4 << 30),) * 2)
sys.exit(main(["run", sys.argv[1], "--quiet", "--set", "guest.memory_mib=131072"]))
"""


def test_a_huge_footprint_under_a_real_4gib_limit_is_refused(tmp_path):
    # the case: 3x10^7 pages under a 4 GB limit ended in an ArrayMemoryError
    f = write_trace(pages_trace(1000), tmp_path / "big.parquet")
    md = dict(pq.read_metadata(f).metadata)
    meta = json.loads(md[META_KEY.encode()])
    meta["footprint_pages"] = 30_000_000  # as a trace touching 3x10^7 pages records it
    md[META_KEY.encode()] = json.dumps(meta).encode()
    pq.write_table(pq.read_table(f).replace_schema_metadata(md), f)
    assert ParquetTraceSource(f).meta["footprint_pages"] == 30_000_000
    p = subprocess.run([sys.executable, "-c", _CHILD_BUDGET, str(f)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert f"{f}: simulating this trace in native mode" in p.stderr
    assert "30,000,000 distinct pages" in p.stderr and "address-space limit" in p.stderr


# --------------------------------------------------------------------------------------------
# memory that runs out during the run


_CHILD_GROW = r"""
import resource, sys
import numpy as np
from memvirt import budget
from memvirt.api import simulate
from memvirt.cli import main, run, _common  # noqa: F401 (imported before the limit)
from memvirt.policy import oracle  # noqa: F401
import rich.console, rich.table  # noqa: F401
from memvirt.trace.records import Trace
n = 4096
simulate(Trace(kind=np.ones(n, np.uint8), addr=np.arange(n, dtype=np.uint64) << np.uint64(12),
               size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
               icount=np.ones(n, np.uint32)), None, "native")  # kernels loaded
resource.setrlimit(resource.RLIMIT_AS, (budget._mapped_bytes() + (500 << 20),) * 2)
sys.exit(main(["run", "synth:uniform:records=2e6,footprint_mib=8192", "--quiet",
               "--set", "guest.memory_mib=12288", "--memory-budget", "0"]))
"""


def test_memory_running_out_while_the_state_grows_is_a_clean_error():
    # ~1.3 M distinct pages: some 500 MB of state, with 500 MB of address space left for the
    # trace (generated under the limit: ~200 MB), the machine and its state
    p = subprocess.run([sys.executable, "-c", _CHILD_GROW], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    err = p.stderr
    assert "Traceback" not in err and err.count("\n") == 1, err
    # where it ran out depends on the address space the child had mapped: the tables' growth
    # (most of the time) or the buffers of the next chunk
    assert err.startswith("memvirt: error: uniform: the simulator ran out of memory "), err
    assert ("distinct pages its state takes" in err and "more (the state grows" in err
            or "distinct pages mapped, state" in err), err


def test_growth_failure_names_pages_and_bytes(monkeypatch):
    from memvirt.guest import pagetable as pt

    real = pt.grow
    calls = {"n": 0}

    def grow(t, need):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise MemoryError("Unable to allocate 1.00 TiB")  # as numpy's ArrayMemoryError
        return real(t, need)

    monkeypatch.setattr(pt, "grow", grow)
    with pytest.raises(SimulatorMemoryError) as e:
        simulate(pages_trace(200_000), None, "native")
    msg = str(e.value)
    assert msg.startswith("trace: the simulator ran out of memory at record ")
    assert e.value.pages > 0 and f"{e.value.pages:,} distinct pages" in msg
    assert "MiB more" in msg or "KiB more" in msg


# --------------------------------------------------------------------------------------------
# synthetic traces built in memory


def test_synth_too_large_to_build_is_refused(small_memory, capsys):
    small_memory["limit"] = 16 * GIB
    with pytest.raises(MemoryBudgetError) as e:
        synthesize("uniform", records=10**9)
    msg = str(e.value)
    assert "synth generator 'uniform': records=1,000,000,000 builds the whole trace" in msg
    assert "'spec'" in msg and "--memory-budget" in msg and "the test's limit" in msg
    assert main(["run", "synth:uniform:records=1e9", "--quiet"]) == 2
    assert "builds the whole trace in memory" in capsys.readouterr().err
    assert main(["synth", "uniform", "--param", "records=1e9", "-o", "/nonexistent/x"]) == 2
    assert "builds the whole trace in memory" in capsys.readouterr().err
    # the check is off with fraction 0 (not run here: 10^9 records), a small trace passes
    budget.check_synth("uniform", 10**9, 0)
    assert len(synthesize("uniform", records=1000)) == 1000
    # the streaming generator is never refused: its trace is made chunk by chunk
    src = synthesize("spec", instructions=10**12)
    assert hasattr(src, "chunks")


# --------------------------------------------------------------------------------------------
# engine errors at their file position


def lackey_lines(n_good: int, bad: str, at: int) -> str:
    lines = ["==123== Lackey, an example Valgrind tool", "==123== Command: ./prog"]
    for i in range(n_good):
        lines.append(f"I  {0x400000 + 4 * i:08x},4" if i % 2 == 0 else f" L {0x601000 + 8 * i:08x},8")
    lines.insert(at - 1, bad)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_engine_error_names_the_lackey_file_and_line(tmp_path, chunk):
    f = tmp_path / "bad.lackey"
    f.write_text(lackey_lines(12, " L 1000000000000,8", 9))  # a 49-bit address on line 9
    with pytest.raises(TraceError) as e:
        simulate(f, None, "native", chunk_records=chunk)
    msg = str(e.value)
    assert msg.startswith(f"{f}:9: address range 0x1000000000000+8 is beyond the 48-bit")
    assert msg.endswith("(memvirt record 6)")


def test_engine_error_far_into_a_lackey_file(tmp_path, capsys):
    f = tmp_path / "far.lackey"
    f.write_text(lackey_lines(5000, " S 04000000,2000000", 4321))  # a 2 MB "access"
    with pytest.raises(TraceError, match=rf"^{f}:4321: access size 2000000 is not a plausible"):
        simulate(f, None, "shadow", chunk_records=1000)
    assert main(["run", str(f), "--quiet"]) == 2
    assert f"{f}:4321: access size" in capsys.readouterr().err


def test_engine_error_names_the_champsim_byte_offset(tmp_path):
    def rec(ip, loads=()):
        return struct.pack("<QBB2B4B2Q4Q", ip, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                           *(list(loads) + [0] * (4 - len(loads))))

    f = tmp_path / "bad.champsim"
    f.write_bytes(rec(0x400000, [0x601000]) + rec(0x400004, [0x601008, 0x602000])
                  + rec(0x400008, [1 << 50]) + rec(0x40000C))
    with pytest.raises(TraceError) as e:
        simulate(f, None, "nested")
    msg = str(e.value)
    # record 2 starts at byte 128; its load is memvirt record 6 (after 2 + 3 records and its IFETCH)
    assert msg.startswith(f"{f}: byte 128 (record 2): address range 0x4000000000000+8")
    assert msg.endswith("(memvirt record 6)")


def test_engine_error_names_the_parquet_row(tmp_path):
    t = Trace.from_records([(int(Kind.LOAD), 4096 * (i + 1), 8, 1, 1) for i in range(10)]
                           + [(int(Kind.FORK), 1, 0, 1, 0)])
    f = write_trace(t, tmp_path / "bad.parquet")
    with pytest.raises(TraceError, match=rf"^{f}: row 10: fork creates child pid 1, which is "
                                         r"already alive \(memvirt record 10\)$"):
        simulate(f, None, "native")


def test_in_memory_errors_keep_the_record_index():
    t = Trace.from_records([(int(Kind.LOAD), 4096, 8, 1, 1), (int(Kind.LOAD), 1 << 48, 8, 1, 1)])
    with pytest.raises(TraceError, match=r"^record 1: address range 0x1000000000000\+8"):
        simulate(t, None, "native")


def test_info_out_of_memory_is_a_clean_error(tmp_path, monkeypatch, capsys):
    # memvirt info counts pages in a hash set (no re-sorting); memory that runs out is named
    from memvirt.trace import parquet as pqmod

    f = tmp_path / "t.lackey"
    f.write_text(lackey_lines(20, " L 04000000,8", 5))

    def add(self, trace):
        raise MemoryError

    monkeypatch.setattr(pqmod.TraceStats, "add", add)
    assert main(["info", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memvirt: error: {f}: out of memory counting the distinct pages")
    assert "Traceback" not in err
