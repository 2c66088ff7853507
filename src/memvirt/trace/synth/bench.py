"""Generation speed of the synthetic generators (used by ``memvirt bench --formats``).

    python -m memvirt.trace.synth.bench        # JSON: records/s per generator
"""

from __future__ import annotations

import time


def run_synth_bench(records: int = 5_000_000, repeats: int = 3) -> dict:
    """Best-of-``repeats`` generation speed of every registered generator with its default
    parameters and ``records`` records: {name: {records, seconds, records_per_s}}."""
    from . import generators, synthesize

    out = {}
    for name in generators():
        synthesize(name, records=records // 10)  # first-use costs (imports, page faults)
        best = float("inf")
        n = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = len(synthesize(name, records=records))
            best = min(best, time.perf_counter() - t0)
        out[name] = {"records": n, "seconds": best, "records_per_s": n / best}
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run_synth_bench(), indent=2))
