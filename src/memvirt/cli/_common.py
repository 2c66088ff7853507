"""Shared CLI helpers: config options, trace arguments, signals."""

from __future__ import annotations

import argparse
import contextlib
import signal
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


def config_from_args(args) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "warmup_instructions", None) is not None:
        overrides.append(f"run.warmup_instructions={args.warmup_instructions}")
    return Config.load(args.config, overrides=overrides, profile=args.profile)


def resolve_trace(spec: str):
    """A trace file path, or ``synth:NAME[:k=v,k=v]`` for a built-in generator."""
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
        tr = synthesize(parts[1], **params)
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
