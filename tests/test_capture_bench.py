"""The capture benchmark's Markdown table (what the README's capture-speed table is pasted
from): every run is a row with its own numbers, the speed-up is Lackey's wall time over the
row's."""

from __future__ import annotations

from memvirt.trace.capture_bench import markdown_table


def _row(backend, collapse, wall, cpu, records, speed=None):
    r = {"backend": backend, "collapse": collapse, "instructions": 100_000_000,
         "raw_events": 150_000_000, "records": records, "wall_s": wall, "cpu_s": cpu,
         "raw_events_per_cpu_s": round(150_000_000 / cpu), "tool_bytes_per_instruction": 0.5,
         "parquet_bytes_per_instruction": 0.02}
    if speed is not None:
        r["speedup_wall_vs_lackey"] = speed
    return r


def test_markdown_table_has_a_row_per_run_with_its_numbers():
    out = {"program": "python3 -S -c <loop>", "scale": 1.0,
           "runs": [_row("mvtrace", "page", 4.0, 5.0, 20_000_000, 25.0),
                    _row("mvtrace", "none", 10.0, 12.0, 150_000_000, 10.0),
                    _row("lackey", "none", 100.0, 110.0, 150_000_000)]}
    text = markdown_table(out)
    lines = text.splitlines()
    assert "100,000,000 instructions" in lines[0]
    rows = [ln for ln in lines if ln.startswith("| mvtrace") or ln.startswith("| lackey")]
    assert len(rows) == 3
    assert rows[0].startswith("| mvtrace --collapse page | 20,000,000 | 4.0 | 5.0 | 30.0 M |")
    assert rows[0].endswith("| 25.0x |") and rows[2].endswith("| 1x |")
    assert "| 150,000,000 | 100.0 | 110.0 | 1.4 M |" in rows[2]
