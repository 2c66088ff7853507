"""The numbers quoted in the docs are the code's: every generated block matches.

README.md and docs/*.md quote measured numbers only inside generated blocks (HTML comments
``docs-numbers: NAME`` around them); ``memvirt.docsnumbers`` recomputes each block from the
code on short runs.  A block whose text no longer matches fails here, naming the file, the
line and the block; ``make docs-numbers`` rewrites them.  Each generator runs once per
session (they are cached), so the whole file takes well under a minute once the kernels are
compiled.

Numbers from long runs or timings (benchmarks, captures, full-length experiments) are not
generated: a line ``Measured snapshot (DATE, MACHINE), not checked by a test...; reproduce
with: `COMMAND``` stands right above each; ``test_snapshots_say_when_where_and_how`` checks
their form.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from memvirt import docsnumbers as dn
from memvirt.errors import MemvirtError

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = dn.all_blocks(ROOT)


def _where(b: dn.Block) -> str:
    return f"{b.path.relative_to(ROOT)}:{b.line}:{b.name}"


def test_the_docs_hold_the_key_blocks():
    found = {(b.path.relative_to(ROOT).as_posix(), b.name) for b in BLOCKS}
    for want in [("docs/experiments.md", "calibration"), ("docs/experiments.md", "vee11-quick"),
                 ("docs/experiments.md", "refill-mcf"), ("docs/policies.md", "phases-periods"),
                 ("docs/policies.md", "refill-16mib")]:
        assert want in found, f"{want[0]} has no generated block '{want[1]}'"


def test_every_generator_is_quoted_somewhere():
    unused = set(dn.GENERATORS) - {b.name for b in BLOCKS}
    assert not unused, f"generators no document uses: {sorted(unused)}"


@pytest.mark.parametrize("block", BLOCKS, ids=_where)
def test_block_matches_the_code(block):
    mm = dn.check_block(block)
    if mm is not None:
        pytest.fail(mm.describe(ROOT) + "\nthe code computes other numbers now: run "
                    "`make docs-numbers` (python -m memvirt.docsnumbers --write) and read "
                    "the prose around the block again", pytrace=False)


SNAPSHOT = re.compile(r"^Measured snapshot \((\d{4}-\d{2}-\d{2}), ([^)]*machine[^)]*)\), "
                      r"not checked by a test\b.*; reproduce with: .*`[^`]*memvirt [^`]+`")


def test_snapshots_say_when_where_and_how():
    """Every measured snapshot line names its date, its machine and a memvirt command, and
    the pasted tables and claims of long runs carry one."""
    lines = {}
    for f in dn.doc_files(ROOT):
        for no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("Measured snapshot"):
                where = f"{f.relative_to(ROOT).as_posix()}:{no}"
                assert SNAPSHOT.match(line), f"{where}: malformed snapshot line: {line}"
                lines.setdefault(f.relative_to(ROOT).as_posix(), []).append(no)
    counts = {k: len(v) for k, v in lines.items()}
    assert counts.get("README.md", 0) >= 3  # simulator, capture and memory benchmarks
    assert counts.get("docs/workloads-real.md", 0) >= 3  # captures, real programs, stand-ins
    assert counts.get("docs/experiments.md", 0) >= 2 and counts.get("docs/policies.md", 0) >= 1


# ----------------------------------------------------------------------------- the check fails
def _bump_a_digit(text: str, after: str) -> str:
    """``text`` with the first digit after ``after`` changed."""
    start = text.index(after)
    m = re.compile(r"\d").search(text, start)
    d = m.group()
    return text[:m.start()] + str((int(d) + 1) % 10) + text[m.end():]


def test_a_changed_number_is_caught_and_rewritten(tmp_path, capsys):
    doc = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    (block,) = [b for b in dn.find_blocks(doc) if b.name == "calibration"]
    # the fork premium (the issue that started this: a stale 573,037 in the docs)
    pos = doc.index("fork + COW faults + exit", block.start)
    bad = doc[:pos] + _bump_a_digit(doc[pos:block.end], "**") + doc[block.end:]
    assert bad != doc
    (tmp_path / "docs").mkdir()
    copy = tmp_path / "docs" / "experiments.md"
    copy.write_text(bad, encoding="utf-8")

    stale = dn.check(tmp_path, ["calibration"])
    assert [(m.block.path.name, m.block.name, m.block.line) for m in stale] == [
        ("experiments.md", "calibration", block.line)]
    assert dn.main(["--check", "--root", str(tmp_path), "calibration"]) == 1
    out = capsys.readouterr()
    assert f"docs/experiments.md:{block.line}: block 'calibration' differs" in out.out
    assert "make docs-numbers" in out.err

    assert dn.main(["--write", "--root", str(tmp_path), "calibration"]) == 0
    # only that block is rewritten (to the code's numbers: the document's, unless stale)
    assert copy.read_text(encoding="utf-8") == dn.rewrite(doc, names=["calibration"])
    assert dn.main(["--check", "--root", str(tmp_path), "calibration"]) == 0


def test_write_replaces_only_the_blocks_atomically(tmp_path, capsys):
    """Stale blocks (inline and on lines of their own) are rewritten, the prose around them
    is kept byte for byte, the file is replaced by a rename, and a second write changes
    nothing."""
    (tmp_path / "docs").mkdir()
    f = tmp_path / "docs" / "x.md"
    text = ("# Title\n\nA hidden fault costs <!-- docs-numbers: hidden-fault-cycles -->1<!-- "
            "/docs-numbers --> cycles.\n\n<!-- docs-numbers: calibration-params -->\n| old |\n"
            "<!-- /docs-numbers -->\n\nThe end, with no newline")
    f.write_text(text, encoding="utf-8")
    inode = os.stat(f).st_ino
    assert sorted(m.block.name for m in dn.check(tmp_path)) == ["calibration-params",
                                                                "hidden-fault-cycles"]
    assert dn.write(tmp_path) == [f]
    new = f.read_text(encoding="utf-8")
    assert os.stat(f).st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in f.parent.iterdir()) == ["x.md"]  # no temporary left
    blocks = dn.find_blocks(new, f)
    assert [b.content() for b in blocks] == [dn.expected("hidden-fault-cycles"),
                                            dn.expected("calibration-params")]
    outside = [new[:blocks[0].start], new[blocks[0].end:blocks[1].start], new[blocks[1].end:]]
    assert outside == ["# Title\n\nA hidden fault costs ", " cycles.\n\n",
                       "\n\nThe end, with no newline"]
    assert new.count("\n<!-- /docs-numbers -->") == 1  # the table on lines of its own
    assert dn.write(tmp_path) == []
    assert dn.main(["--write", "--root", str(tmp_path)]) == 0
    assert "every block is up to date" in capsys.readouterr().out


@pytest.mark.parametrize("text, msg", [
    ("a\n<!-- docs-numbers: calibration -->\n| x |\n", "x.md:2: docs-numbers block "
     "'calibration' is not closed"),
    ("<!-- docs-numbers: a -->1\n<!-- docs-numbers: b -->2<!-- /docs-numbers -->",
     "x.md:1: docs-numbers block 'a' is not closed before block 'b'"),
    ("a\n\nb <!-- /docs-numbers -->", "x.md:3: '<!-- /docs-numbers -->' without an opening"),
])
def test_malformed_blocks_name_file_and_line(tmp_path, text, msg):
    with pytest.raises(MemvirtError, match=re.escape(msg)):
        dn.find_blocks(text, tmp_path / "x.md")


def test_unknown_block_is_an_error(tmp_path, capsys):
    (tmp_path / "README.md").write_text("<!-- docs-numbers: no-such-block -->3<!-- "
                                        "/docs-numbers -->\n", encoding="utf-8")
    assert dn.main(["--check", "--root", str(tmp_path)]) == 2
    assert "no generator for a block named 'no-such-block'" in capsys.readouterr().err
    assert dn.main(["--check", "--root", str(tmp_path), "nope"]) == 2
    assert "unknown block name(s) nope" in capsys.readouterr().err
