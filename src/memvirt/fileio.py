"""Writing results files safely.

- ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_path``: write into a temporary
  file in the target's folder, flush it to disk, then ``os.replace`` it over the target,
  so a full disk or a crash never leaves a truncated or empty results file (an earlier
  file of the same name stays as it was).  ``OSError`` becomes ``OutputError`` naming
  the file and the reason.
- ``dumps_json``: standard JSON only (``allow_nan=False``); a non-finite number is an
  error naming where it is, never ``NaN`` in a file.
- ``check_output_path``: checks an output file or folder *before* any work starts (the
  folder exists and is writable, the target is not a folder...).
- ``check_folder_kind`` / ``mark_folder``: an output folder records which command wrote
  it (``.memvirt-output.json``), so ``memvirt sweep`` and ``memvirt compare`` never
  write into each other's folders.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import MemvirtError

MARKER = ".memvirt-output.json"
# files that identify a folder written by an older memvirt (before the marker existed)
_SIGNS = {"sweep.sqlite": "sweep", "results.json": "compare"}
_COMMANDS = {"sweep": "memvirt sweep", "compare": "memvirt compare (or demo)"}


class OutputError(MemvirtError):
    """An output file or folder that cannot be written (names it and says why)."""


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _umask()


def reason(e: OSError) -> str:
    """A short human reason for an ``OSError``."""
    known = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
             errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
             errno.EPERM: "operation not permitted", errno.EISDIR: "it is a folder",
             errno.ENOENT: "no such file or folder", errno.ENOTDIR: "a parent is not a folder",
             errno.EIO: "input/output error"}
    return known.get(e.errno) or e.strerror or str(e)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that takes a file name (pyarrow,
    matplotlib...); when the block ends without an error it replaces ``path``, otherwise
    it is removed and ``path`` is left untouched.  ``OSError`` -> ``OutputError``."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                        dir=path.parent if str(path.parent) else ".")
    except OSError as e:
        if not path.parent.is_dir():
            raise OutputError(f"{path}: cannot write the {what}: the folder {path.parent} "
                              "does not exist") from None
        raise OutputError(f"{path}: cannot write the {what}: {reason(e)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            keep = " (the previous file is unchanged)" if path.exists() else ""
            raise OutputError(f"{path}: cannot write the {what}: {reason(e)}; nothing was "
                              f"written{keep}") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path, what) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file",
                      encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    return atomic_write_bytes(path, text.encode(encoding), what)


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``mkdir -p`` with an ``OutputError`` naming the folder instead of an ``OSError``."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{p}: cannot create the {what}: {reason(e)}") from None
    return p


# ---------------------------------------------------------------------- JSON


def find_nonfinite(obj: Any, where: str = "") -> str | None:
    """The dotted path of the first non-finite float in ``obj`` (None if there is none)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "(top level)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = find_nonfinite(v, f"{where}.{k}" if where else str(k))
            if p is not None:
                return p
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            p = find_nonfinite(v, f"{where}[{i}]")
            if p is not None:
                return p
    return None


def dumps_json(obj: Any, *, what: str = "the result", **kw: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities (standard JSON only)."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError as e:
        if "not JSON compliant" not in str(e) and "Out of range float" not in str(e):
            raise
        where = find_nonfinite(obj) or "?"
        raise MemvirtError(f"{what} holds a non-finite number (inf or NaN) at '{where}'; "
                           "it cannot be written as JSON (check the cost parameters)") from None


def write_json(path: str | os.PathLike, obj: Any, *, what: str = "results file",
               **kw: Any) -> Path:
    """Standard JSON (no NaN/inf), written atomically."""
    text = dumps_json(obj, what=f"{path}: {what}", **kw)
    return atomic_write_text(path, text + "\n", what)


# ---------------------------------------------------------------------- checks up front


def _nearest_existing(p: Path) -> Path:
    q = p.absolute()
    while not q.exists() and q.parent != q:
        q = q.parent
    return q


def _probe_writable(folder: Path, target: Path, what: str) -> None:
    """Create and remove an empty file in ``folder`` (catches permissions, read-only file
    systems, a missing search right... whoever runs it, root included)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".memvirt-probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"{target}: cannot write the {what} into {folder}: "
                          f"{reason(e)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_output_path(path: str | os.PathLike, *, is_dir: bool = False,
                      what: str | None = None) -> Path:
    """Check before any work that ``path`` can be written; raise ``OutputError`` otherwise.

    A file (``is_dir=False``): its folder must exist and be writable, and the path must not
    be a folder or a special file.  A folder (``is_dir=True``): it must be a folder (or not
    exist yet, its nearest existing parent being a writable folder, so it can be created).
    """
    p = Path(path)
    what = what or ("output folder" if is_dir else "output file")
    if not str(path):
        raise OutputError(f"empty path given for the {what}")
    if is_dir:
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{p}: is a file, expected a folder for the {what}")
            _probe_writable(p, p, what)
        else:
            anc = _nearest_existing(p)
            if not anc.is_dir():
                raise OutputError(f"{p}: cannot create the {what}: {anc} is a file, not a "
                                  "folder")
            _probe_writable(anc, p, what)
        return p
    if p.is_dir():
        raise OutputError(f"{p}: is a folder, expected a file name for the {what}")
    if p.exists() and not p.is_file():
        raise OutputError(f"{p}: is not a regular file (results are written to a new file "
                          "and renamed over it)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{p}: cannot write the {what}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{p}: cannot write the {what}: {parent} is not a folder")
    _probe_writable(parent, p, what)
    return p


# ---------------------------------------------------------------------- folder markers


def _read_marker(folder: Path) -> dict | None:
    m = folder / MARKER
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise OutputError(f"{m}: unreadable marker file (delete it if the folder is "
                          "yours)") from None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise OutputError(f"{m}: not a memvirt folder marker (delete it if the folder is "
                          "yours)")
    return data


def folder_kind(folder: str | os.PathLike) -> str | None:
    """Which memvirt command wrote ``folder`` ("sweep", "compare") or None."""
    f = Path(folder)
    if not f.is_dir():
        return None
    data = _read_marker(f)
    if data is not None:
        return data["kind"]
    for name, kind in _SIGNS.items():
        if (f / name).exists():
            return kind
    return None


def check_folder_kind(folder: str | os.PathLike, kind: str) -> None:
    """Refuse to write results of ``kind`` into a folder that holds another command's."""
    other = folder_kind(folder)
    if other is not None and other != kind:
        raise OutputError(
            f"{folder}: this folder holds the results of `{_COMMANDS.get(other, other)}`; "
            f"`{_COMMANDS.get(kind, kind)}` would overwrite or mix with them; choose another "
            "output folder")


def marked_files(folder: str | os.PathLike) -> list[str]:
    """The files the folder's marker says memvirt wrote there."""
    data = _read_marker(Path(folder)) or {}
    files = data.get("files") or []
    return [f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")]


def mark_folder(folder: str | os.PathLike, kind: str, files: Iterable[str] = (),
                *, replace: bool = False) -> None:
    """Record that ``kind`` writes into ``folder`` (and the names of the files it wrote;
    merged with the earlier list unless ``replace``)."""
    f = Path(folder)
    old = [] if replace else marked_files(f)
    names = list(dict.fromkeys([*old, *(Path(x).name for x in files)]))
    atomic_write_text(f / MARKER, json.dumps({"kind": kind, "files": names}, indent=1) + "\n",
                      "folder marker")


__all__ = ["MARKER", "OutputError", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "check_folder_kind", "check_output_path", "dumps_json", "ensure_dir", "find_nonfinite",
           "folder_kind", "mark_folder", "marked_files", "reason", "write_json"]
