"""memvirt import / info, and one-line errors (exit 2, no traceback) for bad input."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memvirt.cli import main
from memvirt.trace.base import load_trace
from memvirt.trace.parquet import write_trace
from memvirt.trace.records import Kind, Trace

ROOT = Path(__file__).resolve().parents[1]
TRANS = ROOT / "tests" / "data" / "cachelab" / "trans.trace"


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def reference_pages(text: str) -> set[int]:
    pages = set()
    for line in text.splitlines():
        _, rest = line.split(None, 1)
        addr, size = rest.split(",")
        a, s = int(addr, 16), int(size)
        pages.update(range(a >> 12, ((a + max(s, 1) - 1) >> 12) + 1))
    return pages


def test_import_and_info_trans(tmp_path, capsys):
    out = tmp_path / "trans.parquet"
    assert main(["import", str(TRANS), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    t = load_trace(out)
    assert len(t) == 596
    assert t.meta["source"] == "lackey" and t.meta["imported_from"] == "trans.trace"
    d = run_json(capsys, ["info", str(out), "--json"])
    assert d["records"] == 596 and d["instructions"] == 378 and d["processes"] == 1
    assert {k: v for k, v in d["counts"].items() if v} == {
        "IFETCH": 378, "LOAD": 156, "STORE": 42, "MODIFY": 20}
    pages = reference_pages(TRANS.read_text())
    assert d["footprint_pages"] == len(pages) == d["footprint_pages_per_process"]["1"]
    assert d["footprint_bytes"] == len(pages) * 4096
    # info reads the Lackey text directly too, with the same answer
    d2 = run_json(capsys, ["info", str(TRANS), "--json"])
    assert d2["footprint_pages"] == d["footprint_pages"] and d2["counts"] == d["counts"]


def test_import_with_format_and_pid(tmp_path, capsys):
    src = tmp_path / "log.txt"
    src.write_text("I  00001000,4\n L 00002000,8\n")
    out = tmp_path / "o.parquet"
    assert main(["import", str(src), "--format", "lackey", "--pid", "33", "-o", str(out)]) == 0
    assert "2 records" in capsys.readouterr().err
    t = load_trace(out)
    assert t.pid.tolist() == [33, 33] and t.addr.tolist() == [0x1000, 0x2000]


def test_import_champsim(tmp_path, capsys):
    rec = struct.pack("<QBB2B4B2Q4Q", 0x400000, 0, 0, 0, 0, 0, 0, 0, 0, 0x9000, 0,
                      0x8000, 0, 0, 0)
    src = tmp_path / "x.champsim.gz"
    src.write_bytes(gzip.compress(rec * 3))
    out = tmp_path / "x.parquet"
    assert main(["import", str(src), "-o", str(out), "--quiet"]) == 0
    t = load_trace(out)
    assert [Kind(k).name for k in t.kind] == ["IFETCH", "LOAD", "STORE"] * 3
    assert t.meta["source"] == "champsim"


def test_info_per_process_footprint(tmp_path, capsys):
    recs = [
        (Kind.IFETCH, 0x1000, 4, 1, 1), (Kind.LOAD, 0x2ffc, 8, 1, 0),  # spans 2 pages
        (Kind.FORK, 2, 0, 1, 0), (Kind.SWITCH, 0, 0, 2, 0),
        (Kind.IFETCH, 0x1000, 4, 2, 1), (Kind.STORE, 0x10000, 3 * 4096, 2, 0),  # 3 pages
        (Kind.EXIT, 0, 0, 2, 0), (Kind.MMAP, 0x50000, 8192, 1, 0),
    ]
    path = write_trace(Trace.from_records(recs), tmp_path / "mp.parquet")
    d = run_json(capsys, ["info", str(path), "--json"])
    assert d["processes"] == 2 and d["pids"] == [1, 2]
    assert d["footprint_pages_per_process"] == {"1": 3, "2": 4}
    assert d["footprint_pages"] == 7 and d["footprint_pages_any_process"] == 6
    assert d["counts"]["FORK"] == 1 and d["counts"]["MMAP"] == 1
    # the text output
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "records" in text and "IFETCH" in text


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("memvirt: error: ")
    assert "Traceback" not in cap.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("cmd", ["import", "info"])
def test_malformed_lackey_cli(tmp_path, capsys, cmd):
    bad = tmp_path / "bad.trace"
    bad.write_text("I  00001000,4\n L 00002000,8\n S 0000zz00,8\n")
    argv = [cmd, str(bad), "--format", "lackey"] + (["-o", str(tmp_path / "o.parquet")]
                                                     if cmd == "import" else [])
    _one_line_error(capsys, argv, "bad.trace:3", "malformed Lackey line")
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("cmd", ["import", "info"])
def test_truncated_champsim_cli(tmp_path, capsys, cmd):
    bad = tmp_path / "cut.champsim"
    bad.write_bytes(b"\x01" * 64 * 2 + b"\x02" * 10)
    argv = [cmd, str(bad)] + (["-o", str(tmp_path / "o.parquet")] if cmd == "import" else [])
    _one_line_error(capsys, argv, "cut.champsim", "byte offset 128")


@pytest.mark.parametrize("cmd", ["import", "info"])
def test_wrong_parquet_schema_cli(tmp_path, capsys, cmd):
    bad = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"kind": pa.array(np.zeros(3, np.uint8)),
                             "addr": pa.array(np.zeros(3, np.float64))}), bad)
    argv = [cmd, str(bad)] + (["-o", str(tmp_path / "o.parquet")] if cmd == "import" else [])
    _one_line_error(capsys, argv, "wrong.parquet", "column 'addr'", "double")


def test_missing_and_undetectable_files(tmp_path, capsys):
    _one_line_error(capsys, ["info", str(tmp_path / "nope.parquet")], "no such trace file")
    junk = tmp_path / "junk.bin"
    junk.write_text("hello\n")
    _one_line_error(capsys, ["info", str(junk)], "cannot tell the trace format")
    _one_line_error(capsys, ["import", str(TRANS), "--format", "bogus", "-o",
                             str(tmp_path / "o.parquet")], "unknown trace format 'bogus'")
    _one_line_error(capsys, ["capture", "-o", str(tmp_path / "o.parquet")],
                    "capture needs a command")
