"""Numbers quoted in the docs, computed from the code: generated blocks and their check.

A document (``README.md``, ``docs/*.md``) quotes a measured number only inside a generated
block, delimited by HTML comments (invisible in rendered Markdown)::

    <!-- docs-numbers: calibration -->
    | event | ... |
    <!-- /docs-numbers -->

or inline, inside a sentence::

    a hidden fault costs <!-- docs-numbers: hidden-fault-cycles -->8,000<!-- /docs-numbers -->
    cycles

(the text between the comments is written by the generator, never by hand)

Each block NAME is a function registered here (``@generator("NAME")``) that returns the
block's Markdown, computed by running the code on a short variant of what the docs describe
(a few seconds each: ``memvirt calibrate`` on its micro-workloads, a few workloads of
``memvirt experiment vee11 --quick``, a short synthetic trace).  Text that spans lines (a
table) is written as a block, on lines of its own between the two comments; a single line
without a table is written inline.  Runs are deterministic, so a block either matches the
code exactly or is stale.

    python -m memvirt.docsnumbers --check [NAME ...]   # exit 1 listing stale blocks
    python -m memvirt.docsnumbers --write [NAME ...]   # rewrite them in place (make docs-numbers)
    python -m memvirt.docsnumbers --list               # every block in the docs

``--write`` replaces only the text between the comments and writes each changed file
atomically (a temporary file, then a rename).  ``tests/test_docs_numbers.py`` runs the check
for every block found in the docs.

To quote a new number: write its generator here (keep it to seconds: the test runs every
one), put an empty block ``<!-- docs-numbers: NAME --><!-- /docs-numbers -->`` where the
number goes, and run ``make docs-numbers``.

Numbers that only long runs or timings give (benchmarks, captures, the full-length
experiments: minutes, or machine-dependent) cannot be generated; each such table or passage
has a line of its own right above it, ``Measured snapshot (DATE, MACHINE), not checked by a
test; reproduce with: `COMMAND```, and the test checks that those lines are well formed.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import MemvirtError

START = re.compile(r"<!-- docs-numbers: ([A-Za-z0-9_.-]+) -->")
END = "<!-- /docs-numbers -->"
PROFILE = "nehalem-2010"
TEST_TOLERANCE = 0.25  # tests/test_calibrate.py: a published unit cost is matched within 25%


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Generator:
    name: str
    func: Callable[[], str]
    doc: str


GENERATORS: dict[str, Generator] = {}


def generator(name: str):
    """Register the decorated function as the generator of blocks called ``name``."""

    def deco(func: Callable[[], str]) -> Callable[[], str]:
        if name in GENERATORS:
            raise MemvirtError(f"docs-numbers: generator '{name}' registered twice")
        doc = (func.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        GENERATORS[name] = Generator(name, func, " ".join(doc.split()))
        return func

    return deco


@cache
def expected(name: str) -> str:
    """The text a block ``name`` must hold (without the comments), computed once."""
    if name not in GENERATORS:
        raise MemvirtError(f"docs-numbers: no generator for a block named '{name}'; known: "
                           f"{', '.join(sorted(GENERATORS))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (e.g. dsp's note on short windows)
        text = GENERATORS[name].func().strip("\n")
    return text


def is_block(text: str) -> bool:
    """Written on lines of its own (a table, several lines) rather than inline."""
    return "\n" in text or text.lstrip().startswith("|")


def framed(name: str, text: str) -> str:
    """The block as it appears in a document, comments included."""
    head = f"<!-- docs-numbers: {name} -->"
    return f"{head}\n{text}\n{END}" if is_block(text) else f"{head}{text}{END}"


# ----------------------------------------------------------------------------- documents
@dataclass
class Block:
    path: Path
    name: str
    line: int  # 1-based line of the opening comment
    start: int  # offset of the opening comment
    end: int  # offset just after the closing comment
    text: str  # what the document holds between the comments

    def content(self) -> str:
        """The block's text as ``expected`` gives it (the newlines framing a block removed)."""
        t = self.text
        if t.startswith("\n") and t.endswith("\n"):
            t = t[1:-1]
        return t


def find_blocks(text: str, path: Path | str = "<text>") -> list[Block]:
    """Every generated block of a document, in order.  An opening comment without its
    closing one, or one inside another block, is an error naming the file and line."""
    path = Path(path)
    out = []
    pos = 0
    while True:
        m = START.search(text, pos)
        if m is None:
            stray = text.find(END, pos)
            if stray >= 0:
                raise MemvirtError(f"{path}:{text.count(chr(10), 0, stray) + 1}: "
                                   f"'{END}' without an opening docs-numbers comment")
            return out
        line = text.count("\n", 0, m.start()) + 1
        close = text.find(END, m.end())
        if close < 0:
            raise MemvirtError(f"{path}:{line}: docs-numbers block '{m.group(1)}' is not "
                               f"closed by '{END}'")
        inner = START.search(text, m.end(), close)
        if inner is not None:
            raise MemvirtError(f"{path}:{line}: docs-numbers block '{m.group(1)}' is not "
                               f"closed before block '{inner.group(1)}' opens")
        stray = text.find(END, pos, m.start())
        if stray >= 0:
            raise MemvirtError(f"{path}:{text.count(chr(10), 0, stray) + 1}: "
                               f"'{END}' without an opening docs-numbers comment")
        out.append(Block(path, m.group(1), line, m.start(), close + len(END),
                         text[m.end():close]))
        pos = close + len(END)


def doc_files(root: Path) -> list[Path]:
    """README.md and docs/*.md under ``root`` (those that exist)."""
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    return [f for f in files if f.is_file()]


def default_root() -> Path:
    """The repository: the current folder if it has docs/, else the one holding src/memvirt."""
    cwd = Path.cwd()
    if (cwd / "docs").is_dir():
        return cwd
    return Path(__file__).resolve().parents[2]


def all_blocks(root: Path) -> list[Block]:
    out = []
    for f in doc_files(root):
        out += find_blocks(f.read_text(encoding="utf-8"), f)
    return out


@dataclass
class Mismatch:
    block: Block
    want: str

    def describe(self, root: Path | None = None, context: int = 2) -> str:
        b = self.block
        where = b.path
        if root is not None:
            try:
                where = b.path.relative_to(root)
            except ValueError:
                pass
        diff = list(difflib.unified_diff(b.content().splitlines(), self.want.splitlines(),
                                         "in the document", "computed by the code",
                                         n=context, lineterm=""))
        body = "\n".join("    " + d for d in diff[:40])
        more = f"\n    ... ({len(diff) - 40} more diff lines)" if len(diff) > 40 else ""
        return f"{where}:{b.line}: block '{b.name}' differs from the code\n{body}{more}"


def check_block(b: Block) -> Mismatch | None:
    want = expected(b.name)
    return None if b.content() == want else Mismatch(b, want)


def selected(blocks: list[Block], names) -> list[Block]:
    if not names:
        return blocks
    unknown = set(names) - set(GENERATORS)
    if unknown:
        raise MemvirtError(f"docs-numbers: unknown block name(s) {', '.join(sorted(unknown))};"
                           f" known: {', '.join(sorted(GENERATORS))}")
    return [b for b in blocks if b.name in names]


def check(root: Path, names=None) -> list[Mismatch]:
    """The blocks (all, or those called ``names``) whose text differs from the code's."""
    out = []
    for b in selected(all_blocks(root), names):
        mm = check_block(b)
        if mm is not None:
            out.append(mm)
    return out


def rewrite(text: str, path: Path | str = "<text>", names=None) -> str:
    """``text`` with every selected block replaced by what the code computes."""
    parts = []
    pos = 0
    for b in selected(find_blocks(text, path), names):
        parts += [text[pos:b.start], framed(b.name, expected(b.name))]
        pos = b.end
    parts.append(text[pos:])
    return "".join(parts)


def write(root: Path, names=None) -> list[Path]:
    """Rewrite the stale blocks in place; returns the files changed."""
    from .fileio import atomic_write_text

    changed = []
    for f in doc_files(root):
        old = f.read_text(encoding="utf-8")
        new = rewrite(old, f, names)
        if new != old:
            atomic_write_text(f, new, "document")
            changed.append(f)
    return changed


# ----------------------------------------------------------------------------- formatting
def _num(x: float, small: int = 1) -> str:
    """Cycles as the docs print them: thousands separators, decimals only below 100."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.{small}f}"


def _sci(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` significant digits as the docs write powers of ten: 1.6x10^6."""
    mant, exp = f"{x:.{digits - 1}e}".split("e")
    e = int(exp)
    return mant if e == 0 else f"{mant}x10^{e}"


def _time(cycles: float, ghz: float) -> str:
    ns = cycles / ghz
    if abs(ns) >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if abs(ns) >= 1000:
        return f"{ns / 1000:,.2f} us"
    return f"{ns:,.1f} ns"


def _table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; ``align`` has one letter per column: l(eft) or r(ight)."""
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- calibration
@cache
def _config(profile: str | None):
    from .config import Config

    return Config.load(None, profile=profile) if profile else Config()


@cache
def _measure(profile: str | None, event: str, levels: int):
    from .experiments import calibrate as cal

    return cal.measure(event, _config(profile), levels)


@cache
def _sweep(levels: int) -> tuple[tuple[float, float], ...]:
    from .experiments import calibrate as cal

    return tuple(cal.footprint_sweep(_config(PROFILE), levels))


EVENT_LABELS = {"tlb_miss": "TLB miss (32 MiB)", "tlb_miss_large": "TLB miss (800 MiB)",
                "tlb_miss_mcf": "TLB miss (mcf-like)",
                "guest_fault": "guest fault", "context_switch": "context switch",
                "fork": "fork + COW faults + exit"}
CAL_ROWS = [(2, e) for e in ("tlb_miss", "tlb_miss_large", "tlb_miss_mcf", "guest_fault",
                             "context_switch", "fork")]
CAL_ROWS += [(4, e) for e in ("tlb_miss", "guest_fault", "context_switch", "fork")]


@generator("calibration")
def calibration_table() -> str:
    """`memvirt calibrate --levels 2 4` on nehalem-2010: cycles per event in each mode, the
    premium, and the published figure (the 800 MiB TLB miss on the 2-level guest only)."""
    ghz = _config(PROFILE).cost.clock_ghz
    rows = []
    for lv, ev in CAL_ROWS:
        m = _measure(PROFILE, ev, lv)
        pub = "-" if m.published_cycles is None else (
            f"~{m.published_cycles:,.0f} ({_time(m.published_ns, 1.0)})")
        dev = "-" if m.error is None else f"{100 * m.error:+.0f}%"
        rows.append([EVENT_LABELS[ev], str(lv), _num(m.per_event["shadow"]),
                     _num(m.per_event["nested"]), f"**{_num(m.marginal_cycles)}**",
                     _time(m.marginal_cycles, ghz), pub, dev])
    return _table(["event", "guest levels", "shadow (SP)", "nested (HAP)", "premium",
                   f"time at {ghz:g} GHz", "published", "deviation"], "lrrrrrrr", rows)


@cache
def _measure_order(order: str, event: str, levels: int = 2):
    from .experiments import calibrate as cal

    if order == _config(PROFILE).guest.frame_order:
        return _measure(PROFILE, event, levels)
    return cal.measure(event, _config(PROFILE).with_overrides({"guest.frame_order": order}),
                       levels)


FRAME_ORDER_EVENTS = ("tlb_miss", "tlb_miss_large", "tlb_miss_mcf", "guest_fault")


@generator("frame-order-premiums")
def frame_order_premiums() -> str:
    """The premiums of `memvirt calibrate --events tlb_miss,tlb_miss_large,tlb_miss_mcf,
    guest_fault --set guest.frame_order=...` on nehalem-2010, 2-level guest."""
    default = _config(PROFILE).guest.frame_order
    rows = []
    for order in ("buddy", "scattered", "sequential"):
        name = f"`{order}`" + (" (default)" if order == default else "")
        rows.append([name, *(_num(_measure_order(order, e, 2).marginal_cycles)
                             for e in FRAME_ORDER_EVENTS)])
    rows.append(["published (VEE 2011, mcf / gcc)", "~12", "~12", "~12", "~27,000"])
    return _table(["`guest.frame_order`", "TLB miss, 32 MiB", "TLB miss, 800 MiB",
                   "TLB miss, mcf-like", "guest fault"], "lrrrr", rows)


def _and(items: list[str]) -> str:
    """``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


ORDERS = ("scattered", "buddy", "sequential")
TLB_EVENTS = {"tlb_miss": "at 32 MiB", "tlb_miss_mcf": "for mcf-like",
              "tlb_miss_large": "at 800 MiB"}


@generator("frame-order-shadow")
def frame_order_shadow() -> str:
    """Shadow paging's cycles per STLB miss at 32 MiB, 800 MiB and mcf-like (2-level guest,
    nehalem-2010): one list when every frame order gives the same, else one per order."""
    events = ("tlb_miss", "tlb_miss_large", "tlb_miss_mcf")
    lists = {o: _and([_num(_measure_order(o, e, 2).per_event["shadow"]) for e in events])
             for o in ORDERS}
    if len(set(lists.values())) == 1:
        return lists["buddy"]
    return "; ".join(f"{lists[o]} ({o})" for o in ORDERS)


@generator("frame-order-nested")
def frame_order_nested() -> str:
    """Nested paging's cycles per STLB miss going from scattered to buddy frames (2-level
    guest, nehalem-2010): 32 MiB, 800 MiB, mcf-like."""
    parts = [f"{_num(_measure_order('scattered', e, 2).per_event['nested'])} → "
             f"{_num(_measure_order('buddy', e, 2).per_event['nested'])} {TLB_EVENTS[e]}"
             for e in ("tlb_miss", "tlb_miss_large", "tlb_miss_mcf")]
    return f"{parts[0]}, {parts[1]}, and {parts[2]}"


@generator("frame-order-4level")
def frame_order_4level() -> str:
    """The 32 MiB TLB-miss premium with a 4-level guest under each frame order."""
    return _and([f"{_num(_measure_order(o, 'tlb_miss', 4).marginal_cycles)} {o}"
                 for o in ORDERS])


@generator("frame-order-fault-spread")
def frame_order_fault_spread() -> str:
    """How far the guest-fault premium (2-level guest) moves across the three frame orders:
    (largest - smallest) / smallest, rounded up to 0.01%."""
    import math

    v = [_measure_order(o, "guest_fault", 2).marginal_cycles for o in ORDERS]
    return f"{math.ceil(10_000 * (max(v) - min(v)) / min(v)) / 100:.2f}%"


@generator("tlb-premium-vs-published")
def tlb_premium_vs_published() -> str:
    """The TLB-miss premium (2-level guest, nehalem-2010, default frames) as a multiple of the
    published ~12 cycles: 32 MiB, mcf-like, 800 MiB."""
    out = []
    for e, where in TLB_EVENTS.items():
        m = _measure(PROFILE, e, 2)
        out.append(f"{m.marginal_cycles / m.published_cycles:.1f} times {where}")
    return _and(out)


BUDDY_RUNS = (8, 32, 512)


@cache
def _measure_buddy_run(run: int, event: str):
    """``_measure`` with ``engine.BUDDY_RUN`` (the length of buddy's runs, a constant of the
    model) set to ``run`` for the one measurement."""
    from . import engine
    from .experiments import calibrate as cal

    if run == engine.BUDDY_RUN and _config(PROFILE).guest.frame_order == "buddy":
        return _measure(PROFILE, event, 2)
    old = engine.BUDDY_RUN
    engine.BUDDY_RUN = run
    engine._initial_free_frames.cache_clear()
    try:
        return cal.measure(event, _config(PROFILE).with_overrides(
            {"guest.frame_order": "buddy"}), 2)
    finally:
        engine.BUDDY_RUN = old
        engine._initial_free_frames.cache_clear()


@generator("buddy-run-premiums")
def buddy_run_premiums() -> str:
    """The 32 MiB and 800 MiB TLB-miss premiums with buddy frames in runs of 8, 32 and 512
    (`engine.BUDDY_RUN` set for the run; 2-level guest, nehalem-2010)."""
    lists = [_and([_num(_measure_buddy_run(r, e).marginal_cycles) for r in BUDDY_RUNS])
             for e in ("tlb_miss", "tlb_miss_large")]
    return (f"runs of {_and([str(r) for r in BUDDY_RUNS])} frames give a 32 MiB premium of "
            f"{lists[0]} cycles, and an 800 MiB premium of {lists[1]} cycles")


BREAKDOWN_LABELS = {"base": "instructions (base CPI)", "memory": "data beyond the L1D",
                    "tlb": "STLB hits", "walk": "page walks", "guest_fault": "guest fault handler",
                    "guest_os": "guest OS (syscalls, PTE updates, flushes)",
                    "mode_switch": "mode switch"}


@generator("calibration-breakdown")
def calibration_breakdown() -> str:
    """Where the TLB-miss and guest-fault premiums come from: cycles per event by cost
    category (`counters.breakdown`), 2-level guest, nehalem-2010."""
    ms = [_measure(PROFILE, "tlb_miss", 2), _measure(PROFILE, "guest_fault", 2)]
    keys = []
    for m in ms:
        for mode in ("shadow", "nested"):
            keys += [k for k in m.breakdown[mode] if k not in keys]
    from . import counters as K

    keys.sort(key=list(K.BREAKDOWN_KEYS).index)
    rows = []
    for k in keys:
        label = BREAKDOWN_LABELS.get(k, k.replace("vmm_", "VMM: ").replace("_", " "))
        cells = [label]
        for m in ms:
            for mode in ("shadow", "nested"):
                v = m.breakdown[mode].get(k, 0.0)
                cells.append("-" if abs(v) < 0.05 else _num(v))
        rows.append(cells)
    rows.append(["**total**"] + [f"**{_num(m.per_event[mode])}**" for m in ms
                                 for mode in ("shadow", "nested")])
    return _table(["cycles per event", "TLB miss: SP", "TLB miss: HAP", "guest fault: SP",
                   "guest fault: HAP"], "lrrrr", rows)


@generator("calibration-sweep")
def calibration_sweep() -> str:
    """`memvirt calibrate --levels 2 4 --sweep`: the TLB-miss premium (nested - shadow,
    cycles) against the footprint of the random reads, nehalem-2010."""
    s2, s4 = _sweep(2), _sweep(4)
    header = ["footprint (MiB)"] + [f"{f:g}" for f, _ in s2]
    rows = [[f"premium, {lv}-level guest"] + [f"{m:.1f}" for _, m in s]
            for lv, s in ((2, s2), (4, s4))]
    return _table(header, "l" + "r" * len(s2), rows)


PARAMS = ["cost.vm_exit", "cost.hv_pf_true", "cost.hv_pf_hidden", "cost.hv_pte_write",
          "cost.hv_unsync", "cost.hv_cr3", "cost.hv_invlpg", "cost.hv_oos_resync",
          "cost.hv_shadow_prefetch", "cost.hv_process", "cost.mode_switch",
          "vmm.shadow_prefetch", "vmm.out_of_sync", "hw.pcid", "hw.vpid", "host.populate",
          "guest.frame_order", "cost.clock_ghz"]


def _get(cfg, key: str):
    v = cfg
    for part in key.split("."):
        v = getattr(v, part, None)
        if v is None:
            return None
    return v


def _val(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.0f}" if v == int(v) and abs(v) >= 100 else f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    return f"`{v}`"


@generator("calibration-params")
def calibration_params() -> str:
    """The VMM's unit costs and the switches that decide the premiums: the schema default
    (`Config()`) and the two profiles, read from the code."""
    cfgs = [_config(None), _config(PROFILE), _config("modern")]
    rows = []
    for key in PARAMS:
        vals = [_get(c, key) for c in cfgs]
        if all(v is None for v in vals):
            continue  # (a key this version of the schema does not have)
        rows.append([f"`{key}`"] + [_val(v) for v in vals])
    return _table(["parameter", "schema default", "nehalem-2010", "modern"], "lrrr", rows)


@generator("schema-fault-premium")
def schema_fault_premium() -> str:
    """The guest-fault premium (2-level guest) with the schema defaults, `Config()`."""
    m = _measure(None, "guest_fault", 2)
    p = _measure(PROFILE, "guest_fault", 2)
    same = "the same as" if m.marginal_cycles == p.marginal_cycles else "against"
    return (f"{_num(m.marginal_cycles)} cycles ({same} {_num(p.marginal_cycles)} with "
            f"nehalem-2010)")


MODERN_EVENTS = ("tlb_miss", "guest_fault", "context_switch", "fork")


@generator("calibration-modern")
def calibration_modern() -> str:
    """`memvirt calibrate --profile modern --events tlb_miss,guest_fault,context_switch,fork`
    (2-level guest)."""
    ghz = _config("modern").cost.clock_ghz
    rows = []
    for ev in MODERN_EVENTS:
        m = _measure("modern", ev, 2)
        rows.append([EVENT_LABELS[ev], _num(m.per_event["shadow"]), _num(m.per_event["nested"]),
                     f"**{_num(m.marginal_cycles)}**", _time(m.marginal_cycles, ghz)])
    return _table(["event", "shadow (SP)", "nested (HAP)", "premium", f"time at {ghz:g} GHz"],
                  "lrrrr", rows)


def _round2(x: float) -> str:
    """Two significant digits, with thousands separators: 5,500."""
    return f"{float(f'{x:.2g}'):,.0f}" if abs(x) >= 10 else f"{x:.2g}"


@generator("break-even")
def break_even() -> str:
    """TLB misses per guest fault at which the two premiums cancel: the guest-fault premium
    over the TLB-miss premium at the sweep's largest and smallest footprints (2-level)."""
    fault = _measure(PROFILE, "guest_fault", 2).marginal_cycles
    ms = [m for _, m in _sweep(2)]
    return f"{_round2(fault / max(ms))}-{_round2(fault / min(ms))}"


@generator("calibration-verdict")
def calibration_verdict() -> str:
    """The two published unit costs against memvirt's (2-level guest, nehalem-2010), and
    whether each is within the 25% that tests/test_calibrate.py allows."""
    out = []
    for ev, what in (("tlb_miss", "TLB-miss"), ("guest_fault", "guest-fault")):
        m = _measure(PROFILE, ev, 2)
        where = "within" if abs(m.error) <= TEST_TOLERANCE else "outside"
        out.append(f"{what} premium {_num(m.marginal_cycles)} cycles against "
                   f"~{m.published_cycles:,.0f} ({100 * m.error:+.0f}%, {where} 25%)")
    return "; ".join(out)


# ----------------------------------------------------------------------------- vee11 quick
VEE11_ONLY = ("mcf-like", "gcc-like")
VEE11_LEVELS = (2,)


@cache
def _vee11() -> dict:
    from .experiments import vee11

    return vee11.run(None, quick=True, real=False, workers=1, levels=VEE11_LEVELS,
                     workloads=list(VEE11_ONLY))


def _runs(wl: str, lv: int = 2) -> dict:
    return {r["run"]: r for r in _vee11()["rows"] if r["workload"] == wl and r["levels"] == lv}


@generator("vee11-quick")
def vee11_quick() -> str:
    """The 2-level-guest rows of `memvirt experiment vee11 --quick --only mcf-like,gcc-like`
    (steady state; run time normalised to the better static mode; bold: at or below 1)."""
    rows = []
    for wl in VEE11_ONLY:
        for lv in VEE11_LEVELS:
            r = _runs(wl, lv)
            s = r["shadow"]
            cells = [wl, str(lv), f"{s['tlb_misses_per_ki']:.2f}", f"{s['guest_faults_per_ki']:.3f}"]
            for run in ("shadow", "nested", "selective-dsp", "selective-cost"):
                x = r[run]["normalized"]
                cells.append(f"**{x:.3f}**" if x <= 1.0 + 1e-12 else f"{x:.3f}")
            for run in ("selective-dsp", "selective-cost"):
                cells.append(f"{r[run]['switches']}, {100 * r[run]['time_in_shadow']:.0f}%")
            cells.append(f"{r['shadow']['normalized_to_native']:.2f} / "
                         f"{r['nested']['normalized_to_native']:.2f}")
            rows.append(cells)
    return _table(["workload", "guest", "TLB misses/KI", "faults/KI", "shadow", "nested", "dsp",
                   "cost", "dsp: switches, % in SP", "cost: switches, % in SP",
                   "vs native: SP / HAP"], "llrrrrrrrrr", rows)


@generator("vee11-mcf")
def vee11_mcf() -> str:
    """mcf-like in the quick vee11 run: walk cycles per instruction in each mode, the
    premium per miss, shadow paging's VMM cycles per instruction (steady state)."""
    r = _runs("mcf-like")
    s, n = r["shadow"], r["nested"]
    walk_s = s["cycles_breakdown"]["walk"] / s["instructions"]
    walk_n = n["cycles_breakdown"]["walk"] / n["instructions"]
    vmm = sum(v for k, v in s["cycles_breakdown"].items() if k.startswith("vmm_"))
    prem = (n["cycles_breakdown"]["walk"] - s["cycles_breakdown"]["walk"]) / n["tlb_misses"]
    return (f"walks cost {walk_s:.2f} cycles per instruction under shadow paging and "
            f"{walk_n:.2f} under nested paging ({prem:.1f} cycles more per TLB miss); shadow "
            f"paging's VMM work adds {vmm / s['instructions']:.2f} cycles per instruction")


@generator("vee11-checks")
def vee11_checks() -> str:
    """The study's claims as `vee11.checks` evaluates them on the quick mcf-like and gcc-like
    runs (2-level guest); claims on memvirt's own policies are information only (i)."""
    rows = []
    for c in _vee11()["checks"]:
        what = c["claim"] + (f" ({c['policy']})" if c.get("policy") else "")
        held = "yes" if c["holds"] else ("no (i)" if c.get("informational") else "**no**")
        rows.append([what, c["workload"], f"{c['metric']} {c['value']:.3f}", held])
    return _table(["claim", "workload", "value", "holds"], "lllr", rows)


# ----------------------------------------------------------------------------- shadow refill
REFILL_PAGES = 4096
REFILL_ICOUNT = 100


@cache
def _refill(dense: bool) -> dict:
    """Switch nested -> shadow after a process touched REFILL_PAGES pages (period 0), then
    read each page once (period 1): the VMM's cycles and hidden faults of period 1 are the
    refill.  Dense: consecutive pages (512 per leaf table); sparse: one page per leaf table
    (2 MiB apart).  Schema defaults (4-level guest)."""
    import numpy as np

    from . import counters as K
    from .api import simulate
    from .policy.replay import OraclePolicy
    from .trace.records import Kind, Trace

    n = REFILL_PAGES
    stride = 4096 if dense else 512 * 4096
    base = 0x1000_0000
    addrs = base + np.arange(n, dtype=np.int64) * stride

    def acc(kind, icount):
        return Trace(kind=np.full(n, int(kind), np.uint8), addr=addrs.astype(np.uint64),
                     size=np.full(n, 8, np.uint64), pid=np.ones(n, np.int64),
                     icount=np.full(n, icount, np.uint32))

    mmap = Trace.from_records([(int(Kind.MMAP), base, n * stride, 1, 0)])
    tr = Trace.concat([mmap, acc(Kind.STORE, REFILL_ICOUNT), acc(Kind.LOAD, 1)])
    cfg = _config(None).with_overrides({"selective.period_instructions": n * REFILL_ICOUNT})
    res = simulate(tr, cfg, "selective", OraclePolicy(cfg, schedule=["nested", "shadow"]))
    s = res.samples[1]
    if s["mode"] != "shadow" or s["start_instruction"] != n * REFILL_ICOUNT:
        raise MemvirtError("docs-numbers: the refill run did not switch where expected")
    c = s["counters"]
    vmm = sum(v for k, v in s["cycles_breakdown"].items() if k.startswith("vmm_"))
    return {"pages": n, "cycles": vmm, "per_page": vmm / n, "hidden": int(c[K.EXIT_PF_HIDDEN]),
            "prefetched": int(c[K.SHADOW_PREFETCHED]), "ghz": cfg.cost.clock_ghz}


@generator("hidden-fault-cycles")
def hidden_fault_cycles() -> str:
    """`vm_exit + hv_pf_hidden` of the schema defaults, in cycles."""
    c = _config(None).cost
    return _num(c.vm_exit + c.hv_pf_hidden)


@generator("shadow-prefetch")
def shadow_prefetch() -> str:
    """`vmm.shadow_prefetch` of the schema defaults (entries filled ahead per hidden fault)."""
    return str(_config(None).vmm.shadow_prefetch)


@generator("refill-16mib")
def refill_16mib() -> str:
    """What refilling a 4,096-page (16 MiB) working set after a switch to shadow paging costs
    the VMM, measured: dense (consecutive pages) and sparse (one page per leaf table)."""
    d, s = _refill(True), _refill(False)
    return (f"{_sci(d['cycles'])} cycles when its pages are consecutive ({d['hidden']:,} "
            f"hidden faults, each prefetching the next entries of its leaf table), "
            f"{_sci(s['cycles'])} when they are scattered one per leaf table ({s['hidden']:,} "
            f"hidden faults, nothing to prefetch)")


@generator("period-saving")
def period_saving() -> str:
    """What 30 TLB misses per 1K instructions over a 10^7-instruction period save in shadow
    paging at the 16 MiB TLB-miss premium (4-level guest, nehalem-2010)."""
    prem = dict(_sweep(4))[16.0]
    saved = 30 * 10_000 * prem
    return (f"{_sci(saved)} cycles ({prem:.1f} cycles per miss at a 16 MiB footprint, "
            f"4-level guest)")


@generator("refill-payback")
def refill_payback() -> str:
    """How many such periods the savings take to repay the measured refill of a 16 MiB
    working set, dense and scattered."""
    prem = dict(_sweep(4))[16.0]
    saved = 30 * 10_000 * prem
    d, s = _refill(True), _refill(False)
    return (f"a dense working set repays its refill in {d['cycles'] / saved:.1f} periods, a "
            f"scattered one in {s['cycles'] / saved:.1f}")


@generator("tlb-premium-range")
def tlb_premium_range() -> str:
    """The range of the TLB-miss premium over the footprint sweep (4-level guest)."""
    ms = [m for _, m in _sweep(4)]
    return f"{min(ms):.0f}-{max(ms):.0f}"


@generator("refill-mcf")
def refill_mcf() -> str:
    """The measured per-page refill cost applied to a working set of mcf's size (~860 MB,
    220,000 pages), as a share of one second at the profile's clock."""
    d, s = _refill(True), _refill(False)
    ghz = d["ghz"]
    pages = 220_000
    dense = d["per_page"] * pages
    sparse = s["per_page"] * pages
    return (f"{_num(d['per_page'])} cycles per page when the pages are dense "
            f"({_sci(dense)} cycles for 220,000 pages, {100 * dense / (ghz * 1e9):.1f}% of a "
            f"second at {ghz:g} GHz) and {_num(s['per_page'])} when they are scattered one per "
            f"leaf table ({100 * sparse / (ghz * 1e9):.0f}% of a second)")


# ----------------------------------------------------------------------------- periods
PHASES_RECORDS = 1_500_000
PERIODS = (10_000, 100_000, 1_000_000)


@cache
def _phases() -> dict:
    from .api import simulate
    from .policy.dsp import DspPolicy
    from .policy.oracle import oracle_bound
    from .trace.synth import synthesize

    tr = synthesize("phases", records=PHASES_RECORDS)
    base = _config(None)
    out = {"instructions": tr.instructions, "phases": 6, "rows": []}
    static = {m: simulate(tr, base, m).cycles for m in ("shadow", "nested")}
    out["static"] = static
    for period in PERIODS:
        cfg = base.with_overrides({"selective.period_instructions": period})
        row = {"period": period}
        for label, pol in (("dsp", "dsp"), ("dsp-window", DspPolicy(cfg, window=period)),
                           ("cost", "cost")):
            r = simulate(tr, cfg, "selective", pol)
            row[label] = (r.cycles, r.selective["switches"])
        b = oracle_bound(tr, cfg)
        row["oracle"] = (b["cycles"], b["switches"])
        out["rows"].append(row)
    return out


def _exp10(x: int) -> str:
    e = len(str(x)) - 1
    return f"10^{e}" if x == 10 ** e else f"{x:,}"


@generator("phases-periods")
def phases_periods() -> str:
    """`synth:phases:records=1500000` (6 phases) under each policy at three sampling
    periods, schema defaults: cycles in 10^6 (mode switches)."""
    p = _phases()
    rows = []
    for row in p["rows"]:
        cells = [_exp10(row["period"]), f"{p['static']['shadow'] / 1e6:.1f}",
                 f"{p['static']['nested'] / 1e6:.1f}"]
        for k in ("dsp", "dsp-window", "cost", "oracle"):
            cyc, sw = row[k]
            cells.append(f"{cyc / 1e6:.1f} ({sw})")
        rows.append(cells)
    return _table(["period", "shadow", "nested", "dsp", "dsp, window = period", "cost",
                   "oracle bound"], "lrrrrrr", rows)


@generator("phases-summary")
def phases_summary() -> str:
    """Which policies beat both static modes on the short phases trace, at each period."""
    p = _phases()
    best = min(p["static"].values())
    per = p["instructions"] / p["phases"]
    labels = {"dsp": "dsp", "dsp-window": "dsp with window = period", "cost": "cost",
              "oracle": "the oracle bound"}
    out = []
    for row in p["rows"]:
        won = [labels[k] for k in labels if row[k][0] < best]
        who = " and ".join(won) if won else "nothing"
        out.append(f"with a period of {_exp10(row['period'])} (phases of "
                   f"~{_round2(per / row['period'])} periods) {who} "
                   f"{'beat' if len(won) > 1 else 'beats'} both static modes")
    return "; ".join(out)


@generator("phases-length")
def phases_length() -> str:
    """The length of the short phases trace of the period table and of each phase."""
    p = _phases()
    per = p["instructions"] / p["phases"]
    return (f"{p['phases']} phases in {p['instructions'] / 1e6:.2f}x10^6 instructions, so each "
            f"phase is ~{per / 1e6:.1f}x10^6 instructions")


@generator("dsp-window")
def dsp_window() -> str:
    """The dsp policy's automatic window, in instructions (min_events faults at PFL)."""
    from .policy.dsp import DspPolicy

    w = DspPolicy(None).window
    return _exp10(w)


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m memvirt.docsnumbers",
                                description="Check or rewrite the generated numbers in the "
                                "docs (README.md, docs/*.md).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true",
                   help="exit 1 listing the blocks whose text differs from the code's")
    g.add_argument("--write", action="store_true", help="rewrite the blocks in place")
    g.add_argument("--list", action="store_true", help="list the blocks and the generators")
    p.add_argument("--root", default=None, help="repository folder (default: this checkout)")
    p.add_argument("names", nargs="*", metavar="NAME", help="only the blocks called NAME")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else default_root()
    try:
        if args.list:
            blocks = all_blocks(root)
            used = {b.name for b in blocks}
            for b in selected(blocks, args.names):
                print(f"{b.path.relative_to(root)}:{b.line}: {b.name}")
            for name, gen in sorted(GENERATORS.items()):
                if name not in used:
                    print(f"(unused) {name}: {gen.doc}")
            return 0
        if args.write:
            changed = write(root, args.names)
            for f in changed:
                print(f"rewrote {f.relative_to(root)}")
            if not changed:
                print("every block is up to date")
            return 0
        stale = check(root, args.names)
        for mm in stale:
            print(mm.describe(root))
        if stale:
            print(f"{len(stale)} block(s) differ from the code: run `make docs-numbers` "
                  f"(python -m memvirt.docsnumbers --write)", file=sys.stderr)
            return 1
        print("every block matches the code")
        return 0
    except MemvirtError as e:
        print(f"docs-numbers: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
