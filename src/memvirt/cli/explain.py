"""memvirt explain: one page walk, reference by reference, in native, shadow and nested mode
(and agile, with --modes)."""

from __future__ import annotations

from ..errors import MemvirtError
from ._common import add_config_args, config_from_args

NAME = "explain"
HELP = "show step by step the references of a native, a shadow and a nested page walk"


def add_arguments(p) -> None:
    p.add_argument("address", metavar="ADDRESS",
                   help="guest virtual address (0x... hex, or decimal)")
    p.add_argument("--trace", metavar="TRACE",
                   help="replay this trace first (file or synth:NAME[:k=v,...]); default: a "
                   "tiny built-in example that touches ADDRESS")
    p.add_argument("--pid", type=int, help="process whose address space to walk (default: "
                   "the last one to access ADDRESS's page)")
    p.add_argument("--modes", default="native,shadow,nested",
                   help="comma-separated modes to explain (native, shadow, nested, agile; "
                   "default native,shadow,nested)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def parse_address(text: str) -> int:
    t = text.strip().replace("_", "")
    try:
        v = int(t, 0)
    except ValueError:
        try:
            v = int(t, 16)
        except ValueError:
            raise MemvirtError(f"bad address '{text}': expected hex (0x7f001000) or "
                               "decimal") from None
    if v < 0:
        raise MemvirtError(f"bad address '{text}': negative")
    return v


def run(args) -> int:
    from rich.console import Console

    from ..report.compare import resolve_traces
    from ..report.explain import explain, print_explanation

    address = parse_address(args.address)
    modes = tuple(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    bad = [m for m in modes if m not in ("native", "shadow", "nested", "agile")]
    if bad or not modes:
        raise MemvirtError(f"--modes: unknown mode '{bad[0] if bad else ''}'; expected some of "
                           "native, shadow, nested, agile")
    cfg = config_from_args(args)
    trace = None
    if args.trace:
        trace = resolve_traces([args.trace])[0].materialize()
    err = Console(stderr=True)
    status = None
    if not args.quiet and err.is_terminal:
        status = err.status("replaying")
        status.start()

    def progress(msg: str) -> None:
        if status is not None:
            status.update(msg)

    try:
        ex = explain(address, trace=trace, config=cfg, pid=args.pid, modes=modes,
                     progress=progress)
    finally:
        if status is not None:
            status.stop()
    print_explanation(ex, Console())
    return 0
