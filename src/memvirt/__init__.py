"""memvirt: what virtualizing memory costs, and which way to do it, for real programs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def _engine_id() -> str:
    """A hash of the simulation kernels' source: results and compiled code depend on it."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha1(__version__.encode())
    for sub in ("hw", "guest", "vmm"):
        for f in sorted((here / sub).glob("*.py")):
            h.update(f.read_bytes())
    for name in ("engine.py", "state.py", "counters.py", "api.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


ENGINE_ID = _engine_id()


def _numba_cache_dir() -> None:
    """Key numba's on-disk cache on the kernels' source.

    numba invalidates a cached function only when *its own* file changes, not when an
    inlined callee in another file does; a directory per source hash avoids stale code.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        d = base / "memvirt" / "numba" / ENGINE_ID
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: numba falls back to __pycache__
    import numba

    numba.config.CACHE_DIR = str(d)


_numba_cache_dir()


def __getattr__(name):  # lazy public API: importing memvirt stays cheap
    if name == "simulate":
        from .api import simulate

        return simulate
    if name == "Config":
        from .config import Config

        return Config
    if name == "load_trace":
        from .trace.base import load_trace

        return load_trace
    if name == "compare":
        from .report.compare import compare

        return compare
    if name == "synthesize":
        from .trace.synth import synthesize

        return synthesize
    raise AttributeError(f"module 'memvirt' has no attribute {name!r}")


__all__ = ["simulate", "Config", "load_trace", "compare", "synthesize", "__version__",
           "ENGINE_ID"]
