"""The real-program suite: open-source programs captured at real lengths (~10^9 instructions).

```python
import memvirt.workloads as wl
wl.suite()                      # {name: Workload}: programs, input, command, environment
path = wl.ensure("sort")        # capture (or reuse) -> Path of the Parquet trace
wl.stats("sort")                # instructions, footprint, processes, TLB misses/KI, ...
wl.ensure("sort", quick=True)   # the short variant (10^7 - 10^8 instructions), for tests
```

Definitions are in ``suite.py``, inputs in ``inputs.py`` (and ``scripts.py``), the cache
and captures in ``core.py``; ``memvirt workloads`` is the command line
(docs/workloads-real.md).
"""

from .core import (
    STATS_LEVELS,
    STATS_PROFILE,
    WorkloadError,
    WorkloadUnavailable,
    cache_root,
    capture_key,
    command_line,
    ensure,
    ensure_input,
    get,
    input_manifest,
    missing,
    stats,
    status,
    suite,
    trace_path,
)
from .suite import BASE_ENV, CATEGORIES, Variant, Workload

__all__ = ["BASE_ENV", "CATEGORIES", "STATS_LEVELS", "STATS_PROFILE", "Variant", "Workload",
           "WorkloadError", "WorkloadUnavailable", "cache_root", "capture_key",
           "command_line", "ensure", "ensure_input", "get", "input_manifest", "missing",
           "stats", "status", "suite", "trace_path"]
