"""The kernels' shared state is addressed by name only (st.guest_leaf), never by position."""

import re
from pathlib import Path

from memvirt import state as X

SRC = Path(__file__).resolve().parents[1] / "src" / "memvirt"
POSITIONAL = re.compile(r"\bst\s*\[\s*-?\d+\s*\]")


def test_no_module_indexes_the_state_by_number():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if POSITIONAL.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{no}: {line.strip()}")
    assert not offenders, "positional state indexing:\n" + "\n".join(offenders)


def test_the_detector_finds_positional_indexing():
    assert POSITIONAL.search("S, C = st[0], st[1]")
    assert not POSITIONAL.search("S, C = st.scalars, st.counters")


def test_machine_state_fields_are_unique_names():
    fields = X.MachineState._fields
    assert len(set(fields)) == len(fields)
    assert "guest_leaf" in fields and "p2m" in fields and "frame_refcount" in fields
