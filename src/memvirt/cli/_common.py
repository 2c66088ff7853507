"""Shared CLI helpers: config options, trace arguments, signals."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ..config import Config
from ..errors import MemvirtError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="configuration file (TOML)")
    p.add_argument("--profile", metavar="NAME", help="machine profile (e.g. nehalem-2010, modern)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, e.g. --set hw.stlb.entries=1024 (repeatable)")
    p.add_argument("--warmup-instructions", type=int, metavar="N", default=None,
                   help="simulate N instructions before measuring (= --set "
                   "run.warmup_instructions=N): results show steady-state figures and the "
                   "whole run beside them")
    p.add_argument("--memory-budget", type=float, metavar="FRACTION", default=None,
                   help="refuse a run whose estimated peak memory is above this share of the "
                   "memory available (= --set run.memory_budget_fraction=FRACTION; default "
                   "0.8, 0 turns the check off)")


def config_from_args(args) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "warmup_instructions", None) is not None:
        overrides.append(f"run.warmup_instructions={args.warmup_instructions}")
    if getattr(args, "memory_budget", None) is not None:
        overrides.append(f"run.memory_budget_fraction={args.memory_budget!r}")
    return Config.load(args.config, overrides=overrides, profile=args.profile)


def resolve_trace(spec: str, memory_budget_fraction: float | None = None):
    """A trace file path, or ``synth:NAME[:k=v,k=v]`` for a built-in generator (refused
    when building it in memory would take more than ``memory_budget_fraction`` of the
    memory: ``trace.synth.synthesize``)."""
    if spec.startswith("synth:"):
        from ..config import parse_value
        from ..trace.synth import synthesize

        parts = spec.split(":", 2)
        params = {}
        if len(parts) == 3 and parts[2]:
            for kv in parts[2].split(","):
                if "=" not in kv:
                    raise MemvirtError(f"synthetic trace '{spec}': expected k=v, got '{kv}'")
                k, v = kv.split("=", 1)
                params[k.strip()] = parse_value(v.strip())
        tr = synthesize(parts[1], memory_budget_fraction=memory_budget_fraction, **params)
        tr.meta.setdefault("name", parts[1])
        return tr
    return spec


def check_workers(n: int | None, option: str = "--workers") -> None:
    """``--workers N`` must be at least 1 (leave it out for every core)."""
    if n is not None and n < 1:
        raise MemvirtError(f"{option} must be at least 1, got {n} (leave it out to use every "
                           "core)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM stops the command like Ctrl-C (KeyboardInterrupt), so
    that worker processes are stopped and the exit status is non-zero (130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Termination:
    """Whether SIGTERM arrived (see ``sigterm_aborts``)."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if SIGTERM arrived while compiled code ran."""
        if self.requested:
            raise KeyboardInterrupt


def _in_compiled_call(frame) -> bool:
    """True when the interrupted Python code runs inside a call into numba (its dispatcher
    calls back into Python): an exception raised there surfaces as a SystemError."""
    dirs = tuple(os.path.dirname(m.__file__) + os.sep
                 for m in (sys.modules.get("numba"), sys.modules.get("llvmlite"))
                 if m is not None and getattr(m, "__file__", None))
    while frame is not None and dirs:
        if frame.f_code.co_filename.startswith(dirs):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def sigterm_aborts() -> Iterator[Termination]:
    """While the block runs, SIGTERM aborts the command like Ctrl-C: KeyboardInterrupt (the
    trace writer drops its temporary file; the CLI exits 130), raised at once, or, if the
    signal arrives inside a call into compiled code, at the next ``Termination.check()``
    (the caller checks between chunks)."""
    term = Termination()
    if threading.current_thread() is not threading.main_thread():
        yield term
        return

    def handler(signum, frame):
        term.requested = True
        if not _in_compiled_call(frame):
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield term
    finally:
        signal.signal(signal.SIGTERM, old)
