"""memvirt capture with the mvtrace tool (collapsed and full) and with Lackey: the same run of
a program gives the same simulation, counter for counter, in every mode.

Lackey (Valgrind's own tool, one text line per access) is the independent reference; the
three captures of each program go through the same scheduler (time slices end at sync
points), so the merged timelines, and everything the simulator counts from them, must agree
exactly: single-process, fork + exec + wait, and the Python interpreter (collapsed against
full only: its Lackey comparison is test_mvtrace_tool.py's).  The threaded
program's captures are compared for their accesses only (the same instructions, accesses
and pages): Valgrind interleaves threads by timing (here a clone returns to the parent first
in one run and to the child first in another), so two runs of it differ in the order of a
few accesses, and so in a few TLB counts; the tool's per-thread counts against Lackey are
checked in test_mvtrace_tool.py with identical command lines.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from memvirt import simulate
from memvirt.config import Config
from memvirt.trace.base import open_trace
from memvirt.trace.capture import capture

from .helpers import counter_diff

pytestmark = pytest.mark.valgrind

SLICE = 200_000  # small time slices: the multi-process programs switch often
SYNC = 4096


def _programs(programs):
    python = os.path.realpath(sys.executable)
    return {
        "single": [str(programs / "mv_single")],
        "fork-exec": [str(programs / "mv_multi"), str(programs / "mv_single")],
        "threads": [str(programs / "mv_threads")],
        "python": [python, "-S", "-c", "d = {i: str(i) for i in range(20000)}; print(len(d))"],
    }


@pytest.fixture(scope="module")
def captures(programs, tmp_path_factory):
    out = {}
    os.environ["PYTHONHASHSEED"] = "0"
    for name, cmd in _programs(programs).items():
        d = tmp_path_factory.mktemp(name)
        files = {}
        for label, backend, collapse in (("collapsed", "mvtrace", "page"),
                                         ("full", "mvtrace", "none"),
                                         ("lackey", "lackey", "none")):
            if label == "lackey" and name in NO_LACKEY:
                continue
            path = d / f"{label}.parquet"
            capture(cmd, path, backend=backend, collapse=collapse, sync=SYNC,
                    slice_instructions=SLICE)
            files[label] = path
        out[name] = files
    return out


# CPython under Lackey is the slowest capture of all (~40 M instructions, a text line per
# access); test_mvtrace_tool.py's test_python_exact already holds the tool's per-process
# counts for it to Lackey's, so here its full mvtrace capture is the reference.
NO_LACKEY = ("python",)


def _reference(name: str) -> str:
    return "full" if name == "threads" or name in NO_LACKEY else "lackey"


def _info(path):
    from memvirt.cli.info import summarize

    return summarize(open_trace(path))


@pytest.mark.parametrize("name", ["single", "fork-exec", "threads", "python"])
def test_captures_hold_the_same_accesses(captures, name):
    files = captures[name]
    info = {k: _info(p) for k, p in files.items()}
    ref = info[_reference(name)]
    for label in ("collapsed", "full"):
        d = info[label]
        assert d["instructions"] == ref["instructions"]
        assert d["accesses"] == ref["accesses"]
        assert len(d["pids"]) == len(ref["pids"])
        assert d["footprint_pages"] == ref["footprint_pages"]
    assert info["full"]["records"] == ref["records"]
    assert info["collapsed"]["records"] < 0.6 * info["full"]["records"]
    if name == "fork-exec":
        assert ref["processes"] == 3 and ref["counts"]["FORK"] == 2 \
            and ref["counts"]["EXEC"] == 1


@pytest.mark.parametrize("name", ["single", "fork-exec", "python"])
@pytest.mark.parametrize("mode", ["native", "shadow", "nested", "selective"])
def test_every_mode_simulates_identically(captures, name, mode):
    files = captures[name]
    schedule = ["nested", "shadow"] * 200  # switch at every period: boundaries must agree
    cfg = Config.load(profile="nehalem-2010").with_overrides({
        "selective.period_instructions": 100_000, "selective.policy": "oracle",
        "selective.policy_params": {"schedule": schedule}})
    res = {k: simulate(p, cfg, mode) for k, p in files.items()}
    ref = res[_reference(name)]
    assert ref.counters[0] > 0
    for label in ("collapsed", "full"):
        r = res[label]
        # exact, but for where data and walk lines hit (a collapsed record keeps the set
        # of lines its accesses touched, not their order: tests/helpers.counter_diff)
        diff = counter_diff(ref.counters, r.counters)
        assert not diff, f"{label} differs from {_reference(name)}: {diff}"
        assert [s["start_instruction"] for s in r.samples] == \
            [s["start_instruction"] for s in ref.samples]
    if mode == "selective":
        assert ref.selective["switches"] >= 1


def test_collapsed_capture_is_exact_in_a_plain_lru_sense(captures):
    """The single program's collapsed trace carries every access of the full one: repeat
    counts sum to the full trace's records, page by page and kind by kind."""
    full = open_trace(captures["single"]["full"])
    col = open_trace(captures["single"]["collapsed"])

    def per_page(src):
        out = {}
        for ch in src.chunks(1 << 20):
            acc = ch.kind <= 3
            key = (ch.kind[acc].astype(np.uint64) << np.uint64(60)) | (
                ch.addr[acc] >> np.uint64(12))
            uniq, inv = np.unique(key, return_inverse=True)
            sums = np.bincount(inv, weights=ch.repeat[acc])
            for k, v in zip(uniq.tolist(), sums.tolist()):
                out[k] = out.get(k, 0) + int(v)
        return out

    assert per_page(full) == per_page(col)
