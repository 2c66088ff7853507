"""Capture the real-program suite once, reuse it by content.

Cache layout (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``memvirt/workloads/``)::

    inputs/NAME[-quick]-IKEY.json      manifest: the input's content hash, files, bytes
    inputs/NAME[-quick]-IKEY/          the generated input (removed after the capture
                                       when larger than LARGE_INPUT_BYTES)
    traces/NAME[-quick]-KEY.parquet    the capture
    traces/NAME[-quick]-KEY.json       capture facts and the native simulation's rates
    work/NAME[-quick]-KEY/             the program's scratch folder while it runs
    locks/NAME[-quick].lock            one capture of a workload at a time

``IKEY`` hashes what makes the input (generator, its parameters, the source of the
generators and scripts, the code base's archive); ``KEY`` (``capture_key``) hashes what
makes the trace: the command line and environment templates with the variant's
parameters, the input's *content* hash, the versions of the programs (Debian and PyPI
packages, the interpreter), the capture tool's version (``mvtool.TOOL_VERSION``), the
trace format version and the capture options (backend, collapse, sync, slice).  A file
named by a key is only ever written whole (the trace writer and ``atomic_write_text``
write a temporary file and rename it), so a file that exists is complete and reusable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from ..errors import MemvirtError
from ..fileio import atomic_write_text
from . import inputs
from .suite import BASE_ENV, SUITE, Workload

LARGE_INPUT_BYTES = 16 << 20  # inputs above this are deleted once their capture exists
STATS_PROFILE = "nehalem-2010"
# Guest page-table levels of the native simulation behind the list's rates.  Real captures
# are x86-64 processes, so the suite simulates a 4-level guest (the schema default), as
# 64-bit experiments on it do; native TLB misses and guest faults do not depend on the
# number of levels (only walk lengths do), so the rates hold for a 2-level guest too.
STATS_LEVELS = 4
STATS_VERSION = 1
CAPTURE_OPTIONS = {"backend": "mvtrace", "collapse": "page"}  # + sync and slice (defaults)


class WorkloadError(MemvirtError):
    """An unknown workload, a missing program, or a failed capture."""


class WorkloadUnavailable(WorkloadError):
    """Something the workload needs is not installed (``reasons`` lists what)."""

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons


# ----------------------------------------------------------------------------- the suite
def suite() -> dict[str, Workload]:
    """The workload definitions by name, in suite order."""
    return {w.name: w for w in SUITE}


def get(name: str) -> Workload:
    """The workload called ``name``; an unknown name is a ``WorkloadError`` (one line)
    naming the known ones."""
    s = suite()
    try:
        return s[name]
    except KeyError:
        raise WorkloadError(f"unknown workload '{name}'; known workloads: "
                            f"{', '.join(s)}") from None


def _which(program: str) -> str | None:
    if "/" in program:
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program, path=BASE_ENV["PATH"])


def missing(w: Workload) -> list[str]:
    """What the workload needs and this machine lacks (empty when it can run)."""
    out = []
    for prog in w.programs:
        if _which(prog) is None:
            out.append(f"program {prog}")
    for mod in w.modules:
        if importlib.util.find_spec(mod) is None:
            out.append(f"Python module {mod} (in {sys.prefix})")
    if w.code_base == "brotli" and inputs.brotli_sdist() is None:
        out.append(f"source archive {inputs.BROTLI_SDIST} (in {inputs.code_base_dir()})")
    return out


def check_available(w: Workload) -> None:
    reasons = missing(w)
    if reasons:
        pkgs = ", ".join([*(f"Debian {p}" for p in w.debian), *(f"PyPI {p}" for p in w.pypi)])
        raise WorkloadUnavailable(
            f"workload '{w.name}' cannot run here: missing {'; '.join(reasons)} (install "
            f"with: make workloads-deps; it needs {pkgs or 'nothing else'})", reasons)


# ----------------------------------------------------------------------------- keys
def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memvirt" / "workloads"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def _fingerprint() -> str:
    return inputs.generator_fingerprint()


@lru_cache(maxsize=4)
def _sdist_hash(path: str, size: int, mtime: float) -> str:
    return inputs.file_sha256(Path(path))


def input_key(w: Workload, quick: bool = False) -> str:
    """Hash of what makes the input: generator, parameters, generator sources and the
    code base's archive."""
    v = w.variant(quick)
    payload = {"generator": w.generator,
               "params": {k: v.params[k] for k in w.input_params},
               "generators": _fingerprint()}
    if w.code_base == "brotli":
        sd = inputs.brotli_sdist()
        if sd is not None:
            st = sd.stat()
            payload["code_base"] = _sdist_hash(str(sd), st.st_size, st.st_mtime)
        else:
            payload["code_base"] = None
    return _sha(payload)


def capture_key(command, env, input_hash: str, *, tool_version: str | None = None,
                format_version: int | None = None, options: dict | None = None,
                tools: dict | None = None) -> str:
    """sha256 (hex) of everything a capture depends on: the command line, the environment,
    the input's content hash, the capture tool's version, the trace format version, the
    capture options and the programs' versions.  ``tool_version``/``format_version``
    default to the installed ones."""
    if tool_version is None:
        from ..trace.mvtool import TOOL_VERSION as tool_version
    if format_version is None:
        from ..trace.parquet import FORMAT_VERSION as format_version
    return _sha({"command": list(command), "env": dict(env), "input": input_hash,
                 "tool": tool_version, "format": int(format_version),
                 "options": dict(options or {}), "tools": dict(tools or {})})


def capture_options() -> dict:
    from ..trace.capture import DEFAULT_SLICE, DEFAULT_SYNC

    return {**CAPTURE_OPTIONS, "sync": DEFAULT_SYNC, "slice": DEFAULT_SLICE}


@lru_cache(maxsize=64)
def _debian_versions(packages: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if not packages:
        return ()
    found = {}
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                              *packages], capture_output=True, text=True, timeout=60)
        for line in out.stdout.splitlines():
            name, _, ver = line.partition(" ")
            if ver:
                found[name.split(":")[0]] = ver
    except (OSError, subprocess.SubprocessError):
        pass
    return tuple((p, found.get(p, "absent")) for p in packages)


def tool_versions(w: Workload) -> dict:
    """Versions of what runs: Debian packages, PyPI packages, the interpreter."""
    out = {f"deb:{p}": v for p, v in _debian_versions(tuple(w.debian))}
    for p in w.pypi:
        try:
            out[f"pypi:{p}"] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[f"pypi:{p}"] = "absent"
    if any("{python}" in a for a in w.command):
        out["python"] = platform.python_version()
    return out


def key_for(w: Workload, quick: bool, input_hash: str) -> str:
    v = w.variant(quick)
    return capture_key(w.command, {**BASE_ENV, **w.env}, input_hash,
                       options={**capture_options(), "params": dict(v.params)},
                       tools=tool_versions(w))


# ----------------------------------------------------------------------------- paths
def _input_paths(w: Workload, quick: bool) -> tuple[Path, Path]:
    stem = f"{w.label(quick)}-{input_key(w, quick)[:16]}"
    d = cache_root() / "inputs"
    return d / stem, d / f"{stem}.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trace_paths(w: Workload, quick: bool, key: str) -> tuple[Path, Path]:
    stem = f"{w.label(quick)}-{key[:16]}"
    d = cache_root() / "traces"
    return d / f"{stem}.parquet", d / f"{stem}.json"


@contextlib.contextmanager
def _locked(w: Workload, quick: bool) -> Iterator[None]:
    d = cache_root() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{w.label(quick)}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- inputs
def _generate(w: Workload, quick: bool, folder: Path, manifest_path: Path) -> dict:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    t0 = time.monotonic()
    try:
        v = w.variant(quick)
        inputs.generate(w.generator, tmp, {k: v.params[k] for k in w.input_params})
        digest, files, size = inputs.content_hash(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    old = _read_json(manifest_path)
    manifest = {"workload": w.name, "variant": "quick" if quick else "full",
                "input_key": input_key(w, quick), "generator": w.generator,
                "params": {k: w.variant(quick).params[k] for k in w.input_params},
                "content_hash": digest, "files": files, "bytes": size,
                "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - t0, 2)}
    if old and old.get("content_hash") not in (None, digest):
        manifest["previous_content_hash"] = old["content_hash"]  # not deterministic?!
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n",
                      what="input manifest")
    return manifest


def input_manifest(name: str, quick: bool = False) -> dict | None:
    """The manifest of the workload's input if it was ever generated (None otherwise)."""
    w = get(name)
    return _read_json(_input_paths(w, quick)[1])


def ensure_input(name: str, quick: bool = False) -> tuple[Path, dict]:
    """The input folder (generated now if absent) and its manifest."""
    w = get(name)
    folder, mpath = _input_paths(w, quick)
    manifest = _read_json(mpath)
    if manifest is None or not folder.is_dir():
        manifest = _generate(w, quick, folder, mpath)
    return folder, manifest


# ----------------------------------------------------------------------------- commands
def _fill(template: str, values: dict) -> str:
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as e:
        raise WorkloadError(f"bad placeholder in {template!r}: {e}") from None


def command_line(w: Workload, quick: bool, input_dir: Path, work_dir: Path,
                 python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The program's argv and its whole environment, placeholders filled in."""
    values = {**w.variant(quick).params, "input": str(input_dir), "work": str(work_dir),
              "python": python or sys.executable}
    argv = [_fill(a, values) for a in w.command]
    env = {k: _fill(v, values) for k, v in {**BASE_ENV, **w.env}.items()}
    return argv, env


def wrapped_command(argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """``env -i -C CWD K=V... ARGV``: the program starts with exactly ``env`` in ``cwd``
    (Valgrind adds only its own VALGRIND_LIB and LD_PRELOAD)."""
    return ["/usr/bin/env", "-i", "-C", str(cwd), *(f"{k}={v}" for k, v in env.items()),
            *argv]


# ----------------------------------------------------------------------------- status
def _key_if_known(w: Workload, quick: bool) -> str | None:
    m = _read_json(_input_paths(w, quick)[1])
    return key_for(w, quick, m["content_hash"]) if m else None


def trace_path(name: str, quick: bool = False) -> Path | None:
    """The cached capture of the workload, or None when it has not been captured (with
    the present programs, tool and input)."""
    w = get(name)
    key = _key_if_known(w, quick)
    if key is None:
        return None
    p = _trace_paths(w, quick, key)[0]
    return p if p.is_file() else None


def _trace_facts(path: Path) -> dict:
    from ..cli.info import summarize
    from ..trace.base import open_trace

    d = summarize(open_trace(path))
    return {"instructions": d["instructions"], "records": d["records"],
            "accesses": sum(d["accesses"].values()), "processes": d["processes"],
            "footprint_pages": d["footprint_pages"],
            "footprint_mib": round(d["footprint_bytes"] / 2**20, 1),
            "parquet_bytes": path.stat().st_size}


def status(name: str, quick: bool = False) -> dict:
    """What is known without capturing or simulating: availability, the cached capture's
    statistics (from its metadata) and the cached native-simulation rates."""
    w = get(name)
    v = w.variant(quick)
    out = {"name": w.name, "category": w.category, "variant": "quick" if quick else "full",
           "expected_instructions": list(v.instructions), "missing": missing(w),
           "captured": False, "path": None}
    key = _key_if_known(w, quick)
    if key is None:
        return out
    path, side = _trace_paths(w, quick, key)
    out["key"] = key
    if not path.is_file():
        return out
    out.update(captured=True, path=str(path))
    out.update(_trace_facts(path))
    info = _read_json(side) or {}
    for k in ("capture_seconds", "command", "input_bytes", "input_hash"):
        if k in info:
            out[k] = info[k]
    sim = info.get("native")
    if sim and sim.get("profile") == STATS_PROFILE and sim.get("levels") == STATS_LEVELS:
        out["tlb_misses_per_ki"] = sim["tlb_misses_per_ki"]
        out["guest_faults_per_ki"] = sim["guest_faults_per_ki"]
        out["simulation_seconds"] = sim.get("seconds")
    return out


# ----------------------------------------------------------------------------- capture
def ensure(name: str, quick: bool = False, progress: Callable[[dict], None] | None = None,
           *, force: bool = False) -> Path:
    """The workload's capture (a memvirt Parquet trace): reused from the cache when
    present, captured otherwise.  ``progress`` gets dicts with ``phase`` (``input``,
    ``capture``, ``done``) and, while capturing, ``instructions``, ``rate`` (per
    second), ``expected`` and ``eta`` (seconds, None when past the expectation)."""
    w = get(name)
    with _locked(w, quick):
        key = _key_if_known(w, quick)
        if key is not None and not force:
            path = _trace_paths(w, quick, key)[0]
            if path.is_file():
                return path
        check_available(w)
        if progress:
            progress({"workload": w.name, "phase": "input"})
        folder, manifest = ensure_input(name, quick)
        key = key_for(w, quick, manifest["content_hash"])
        path, side = _trace_paths(w, quick, key)
        if path.is_file() and not force:
            return path
        _capture(w, quick, key, folder, manifest, path, side, progress)
        if manifest["bytes"] > LARGE_INPUT_BYTES:
            shutil.rmtree(folder, ignore_errors=True)  # the manifest stays
        return path


def _capture(w: Workload, quick: bool, key: str, folder: Path, manifest: dict, path: Path,
             side: Path, progress) -> None:
    from ..trace.capture import CaptureFailed, capture

    work = cache_root() / "work" / f"{w.label(quick)}-{key[:16]}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv, env = command_line(w, quick, folder, work)
    lo, hi = w.variant(quick).instructions
    expected = int((lo * hi) ** 0.5)

    def report(d: dict) -> None:
        if progress is None:
            return
        el = d.get("elapsed") or 0.0
        n = d.get("instructions", 0)
        rate = n / el if el > 0 else 0.0
        eta = (expected - n) / rate if rate > 0 and n < expected else None
        progress({"workload": w.name, "phase": "capture", **d, "rate": rate,
                  "expected": expected, "eta": eta})

    meta = {"workload": w.name, "category": w.category,
            "variant": "quick" if quick else "full", "cache_key": key,
            "input_hash": manifest["content_hash"], "workload_command": argv,
            "workload_env": env, "tools_versions": tool_versions(w)}
    t0 = time.monotonic()
    try:
        res = capture(wrapped_command(argv, env, work), path, progress=report,
                      extra_meta=meta)
    except CaptureFailed as e:
        err = WorkloadError(f"workload '{w.name}': {e}")
        err.tail = e.tail
        raise err from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - t0, 1)
    info = {"stats_version": STATS_VERSION, "workload": w.name,
            "variant": "quick" if quick else "full", "key": key, "command": argv, "env": env,
            "input_hash": manifest["content_hash"], "input_bytes": manifest["bytes"],
            "capture_seconds": seconds, "instructions": res.instructions,
            "records": res.records, "processes": res.processes,
            "captured": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    atomic_write_text(side, json.dumps(info, indent=1) + "\n", what="workload statistics")
    if progress:
        progress({"workload": w.name, "phase": "done", "instructions": res.instructions,
                  "elapsed": seconds, "path": str(path)})


# ----------------------------------------------------------------------------- statistics
def simulate_native(path: Path) -> dict:
    """Native simulation of a capture with the suite's configuration: rates per 1,000
    instructions."""
    from ..api import simulate
    from ..config import Config

    cfg = Config.load(profile=STATS_PROFILE, overrides=[f"guest.levels={STATS_LEVELS}"])
    t0 = time.monotonic()
    d = simulate(path, cfg, "native").to_dict(samples=False)
    from .. import ENGINE_ID

    return {"profile": STATS_PROFILE, "levels": STATS_LEVELS, "mode": "native",
            "tlb_misses_per_ki": d["rates"]["tlb_misses_per_ki"],
            "guest_faults_per_ki": d["rates"]["guest_faults_per_ki"],
            "instructions": d["instructions"], "seconds": round(time.monotonic() - t0, 1),
            "engine": ENGINE_ID}


def stats(name: str, quick: bool = False, progress: Callable[[dict], None] | None = None,
          *, capture: bool = True, simulate: bool = True) -> dict:
    """The workload's statistics: the capture's (instructions, accesses, records,
    processes, footprint), the capture time and Parquet size, and TLB misses and guest
    faults per 1,000 instructions from a native simulation (nehalem-2010 profile,
    ``STATS_LEVELS``-level guest), cached in a JSON file beside the capture.  Captures
    first when ``capture`` (else an uncaptured workload gives only what is known)."""
    w = get(name)
    if capture:
        ensure(name, quick, progress)
    st = status(name, quick)
    if not st["captured"] or not simulate or "tlb_misses_per_ki" in st:
        return st
    path, side = _trace_paths(w, quick, st["key"])
    with _locked(w, quick):
        info = _read_json(side) or {"workload": w.name, "key": st["key"]}
        sim = info.get("native")
        if not (sim and sim.get("profile") == STATS_PROFILE
                and sim.get("levels") == STATS_LEVELS):
            if progress:
                progress({"workload": w.name, "phase": "simulate"})
            info["native"] = simulate_native(path)
            atomic_write_text(side, json.dumps(info, indent=1) + "\n",
                              what="workload statistics")
    return status(name, quick)
