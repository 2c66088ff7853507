"""compare / report under bad input and faults: full and read-only disks, output paths
checked before the work, folders of other commands, stale outputs, non-finite numbers,
damaged results files, empty traces."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

from memvirt.cli import main
from memvirt.config import Config
from memvirt.errors import MemvirtError
from memvirt.fileio import MARKER, atomic_write_bytes, check_output_path, dumps_json
from memvirt.report.compare import Comparison, compare
from memvirt.trace.parquet import write_trace
from memvirt.trace.records import Kind, Trace

CHASE = "synth:chase:records=20000,footprint_mib=2,span_mib=16,seed=3"
HOT = "synth:hot:records=5000"


@pytest.fixture(scope="module")
def comp() -> Comparison:
    cfg = Config().with_overrides({"selective.period_instructions": 5000})
    return compare([CHASE, HOT], policy="dsp", config=cfg, workers=1, progress=False)


def _mount(where: Path, opts: str) -> Path:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    return where


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system, filled up but for ~8 KiB."""
    mnt = _mount(tmp_path / "disk", "size=1m")
    try:
        st = os.statvfs(mnt)
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 8192))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def readonly_disk(tmp_path):
    mnt = _mount(tmp_path / "ro", "ro,size=64k")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _no_sim(monkeypatch):
    """Make any simulation fail the test: the checks must come first."""
    def boom(*a, **kw):
        raise AssertionError("simulated before checking the output path")

    monkeypatch.setattr("memvirt.report.compare.compare", boom)
    monkeypatch.setattr("memvirt.cli.run._simulate_with_progress", boom)


# ---------------------------------------------------------------------- 3: atomic writes


def test_results_on_a_full_disk_leave_the_previous_files_intact(comp, small_disk):
    out = small_disk / "out"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}')
    with pytest.raises(MemvirtError, match="no space left") as ei:
        comp.write(out)
    assert "results.json" in str(ei.value)
    assert (out / "results.json").read_text() == '{"previous": true}'  # not truncated
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temporary files


def test_run_json_on_a_full_disk_is_an_error_and_no_file(small_disk, capsys):
    out = small_disk / "r.json"
    argv = ["run", "synth:hot:records=20000", "--mode", "selective", "--quiet",
            "--set", "selective.period_instructions=1000", "--json", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "r.json" in err and "no space left" in err
    assert not out.exists()  # neither a 0-byte nor a truncated file


def test_atomic_write_with_an_injected_error(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(MemvirtError, match="no space left.*unchanged"):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# ---------------------------------------------------------------------- 10: paths checked first


def test_compare_checks_its_output_folder_first(tmp_path, monkeypatch, capsys):
    _no_sim(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["compare", HOT, "--out", str(afile), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["compare", HOT, "--out", str(afile / "sub"), "--quiet"]) == 2
    assert "afile" in capsys.readouterr().err
    assert main(["demo", "--out", str(afile), "--quiet"]) == 2


def test_compare_on_a_read_only_file_system(readonly_disk, monkeypatch, capsys):
    _no_sim(monkeypatch)
    assert main(["compare", HOT, "--out", str(readonly_disk / "out"), "--quiet"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_run_json_into_a_missing_folder_fails_before_simulating(tmp_path, monkeypatch, capsys):
    _no_sim(monkeypatch)
    assert main(["run", HOT, "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", HOT, "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_report_checks_its_output_before_drawing(comp, tmp_path, monkeypatch, capsys):
    d = tmp_path / "res"
    comp.write(d)

    def boom(*a, **kw):
        raise AssertionError("drew plots before checking the output path")

    monkeypatch.setattr("memvirt.report.plots.plot_all", boom)
    assert main(["report", str(d), "-o", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(d), "-o", str(tmp_path)]) == 2


def test_check_output_path():
    with pytest.raises(MemvirtError, match="not a regular file"):
        check_output_path("/dev/null")
    assert check_output_path(Path("relative-name.json")) == Path("relative-name.json")


# ---------------------------------------------------------------------- 12: non-finite numbers


def test_a_non_finite_number_is_never_written(comp, tmp_path):
    runs = copy.deepcopy(comp.runs)
    runs[0]["result"]["time_s"] = float("inf")
    bad = Comparison(runs, comp.meta)
    with pytest.raises(MemvirtError, match=r"non-finite.*runs\[0\]\.result\.time_s"):
        bad.write(tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()
    with pytest.raises(MemvirtError, match="'a.b\\[1\\]'"):
        dumps_json({"a": {"b": [1.0, float("nan")]}})


# ---------------------------------------------------------------------- 13: folders and stale files


def test_compare_refuses_a_sweep_folder(tmp_path, monkeypatch, capsys):
    _no_sim(monkeypatch)
    d = tmp_path / "sw"
    d.mkdir()
    (d / "sweep.sqlite").write_bytes(b"")
    assert main(["compare", HOT, "--out", str(d), "--quiet"]) == 2
    assert "memvirt sweep" in capsys.readouterr().err


def test_compare_into_a_used_folder_removes_its_stale_outputs(comp, tmp_path):
    d = tmp_path / "out"
    comp.report(d)
    timelines = sorted(p.name for p in d.glob("timeline_*.png"))
    assert timelines == ["timeline_chase.png", "timeline_hot.png"]
    (d / "notes.txt").write_text("mine")  # not memvirt's: kept
    only_hot = Comparison([r for r in comp.runs if r["trace"] == "hot"],
                          {**comp.meta, "traces": [t for t in comp.meta["traces"]
                                                   if t["name"] == "hot"]})
    only_hot.report(d)
    assert sorted(p.name for p in d.glob("timeline_*.png")) == ["timeline_hot.png"]
    assert (d / "notes.txt").read_text() == "mine"
    marker = json.loads((d / MARKER).read_text())
    assert marker["kind"] == "compare" and "timeline_chase.png" not in marker["files"]
    assert "chase" not in (d / "report.html").read_text()


# ---------------------------------------------------------------------- 14: damaged results


def _tamper(d: Path, fn) -> None:
    data = json.loads((d / "results.json").read_text())
    fn(data)
    (d / "results.json").write_text(json.dumps(data))


@pytest.mark.parametrize("name, tamper", [
    ("cycles a string", lambda d: d["rows"][0].update(cycles="many")),
    ("a column missing", lambda d: d["rows"][1].pop("walks")),
    ("no samples", lambda d: [r["result"].pop("samples") for r in d["runs"]]),
    ("bad samples", lambda d: [r["result"].update(samples=[{"x": 1}]) for r in d["runs"]]),
    ("NaN", lambda d: d["rows"][2].update(cycles=float("nan"))),
    ("runs not a list", lambda d: d.update(runs={"a": 1})),
    ("decisions", lambda d: [r["result"]["selective"].update(decisions=[7])
                             for r in d["runs"] if r["mode"] == "selective"]),
    ("unknown mode", lambda d: d["runs"][0].update(mode="paravirt")),
])
def test_report_on_a_damaged_results_file(comp, tmp_path, capsys, name, tamper):
    d = tmp_path / "res"
    comp.write(d)
    _tamper(d, tamper)
    assert main(["report", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "Traceback" not in err


def test_report_on_a_results_file_that_is_not_text(tmp_path, capsys):
    d = tmp_path / "res"
    d.mkdir()
    (d / "results.json").write_bytes(b'{"format": "memvirt-results", \xff\xfe}')
    assert main(["report", str(d), "--quiet"]) == 2
    assert "results.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- 16: empty traces


def test_compare_refuses_empty_traces(tmp_path, capsys):
    p = tmp_path / "empty.parquet"
    write_trace(Trace.empty(), p)
    assert main(["compare", str(p), "--quiet", "--workers", "1"]) == 2
    assert "empty.parquet: the trace has no records" in capsys.readouterr().err
    no_instr = Trace.from_records([(int(Kind.MMAP), 0x1000_0000, 1 << 16, 1, 0)])
    with pytest.raises(MemvirtError, match="no instructions"):
        compare([("mmap-only", no_instr)], workers=1, progress=False)
    with pytest.raises(MemvirtError, match="no records"):
        compare([("none", Trace.empty())], workers=1, progress=False)
