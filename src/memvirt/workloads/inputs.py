"""Deterministic inputs of the real-program suite.

Every generator writes into an empty folder and depends only on its parameters (numpy
``PCG64`` or ``random.Random`` with fixed seeds; no clock, no environment), so the same
parameters give the same bytes on every run and machine (``content_hash`` checks it).
Scripts the programs run (``scripts.py``) are written into the same folder and hashed
with the data.

Generators are looked up by name (``GENERATORS``); a workload's definition names its
generator and gives its parameters.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import MemvirtError
from . import scripts

# The C code base of the compile workload: brotli's sources, from the PyPI sdist of the
# Python bindings (it vendors the whole C library), fetched by `make workloads-deps`.
BROTLI_VERSION = "1.2.0"
BROTLI_SDIST = f"brotli-{BROTLI_VERSION}.tar.gz"
SRC_ENV = "MEMVIRT_WORKLOADS_SRC"


def code_base_dir() -> Path:
    """Where `make workloads-deps` puts source archives: ``$MEMVIRT_WORKLOADS_SRC`` or
    ``<virtualenv>/workloads-src``."""
    env = os.environ.get(SRC_ENV)
    return Path(env).expanduser() if env else Path(sys.prefix) / "workloads-src"


def brotli_sdist() -> Path | None:
    p = code_base_dir() / BROTLI_SDIST
    return p if p.is_file() else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(folder: Path) -> tuple[str, int, int]:
    """sha256 over the folder's files (relative path, size and bytes, in path order; not
    mtimes or modes), the number of files and their total size."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = 0
    for p in files:
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        total += size
        h.update(rel.encode() + b"\0" + str(size).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest(), len(files), total


# ----------------------------------------------------------------------------- generators
def gen_compile(dest: Path, *, files: list[str], cflags: str) -> None:
    """brotli's C sources (common, dec, enc, include) from the sdist, and a Makefile that
    compiles ``files`` (names of .c files) with ``cflags`` and links them."""
    sdist = brotli_sdist()
    if sdist is None:
        raise MemvirtError(f"the brotli {BROTLI_VERSION} source archive is not in "
                           f"{code_base_dir()} (run: make workloads-deps)")
    prefix = f"brotli-{BROTLI_VERSION}/c/"
    keep = ("common/", "dec/", "enc/", "include/")
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and m.name.startswith(prefix)
                          and m.name[len(prefix):].startswith(keep)
                          and m.name.endswith((".c", ".h"))), key=lambda m: m.name)
        for m in members:
            rel = m.name[len(prefix):]
            if ".." in Path(rel).parts:
                continue
            out = dest / "c" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            out.write_bytes(src.read() if src is not None else b"")
    have = {p.name for p in (dest / "c").rglob("*.c")}
    missing = [f for f in files if f not in have]
    if missing:
        raise MemvirtError(f"{sdist.name} has no {', '.join(missing)}")
    objects = " ".join(f.removesuffix(".c") + ".o" for f in files)
    (dest / "Makefile").write_text(scripts.MAKEFILE.replace("{cflags}", cflags)
                                   .replace("{objects}", objects))


_HOSTS = [f"host{i:03d}" for i in range(40)]
_SERVICES = [f"svc{i:02d}" for i in range(24)]
_LEVELS = ["INFO"] * 14 + ["WARN"] * 4 + ["DEBUG"] * 3 + ["ERROR"] * 2
_VERBS = ["GET", "GET", "GET", "PUT", "POST", "DELETE"]
_PATHS = ["/api/v1/items", "/api/v1/users", "/static/app.js", "/login", "/api/v2/search",
          "/metrics", "/api/v1/orders", "/healthz"]
_WORDS = ["ok", "slow", "cache", "miss", "hit", "retry", "timeout", "closed", "reset",
          "queued", "done", "partial", "denied", "moved"]


def gen_shell(dest: Path, *, parts: int, lines: int, seed: int) -> None:
    """``parts`` log files of ``lines`` lines each (time, host, service, level, user,
    bytes, request, status words) and the pipeline script."""
    rng = np.random.Generator(np.random.PCG64(seed))
    logs = dest / "logs"
    logs.mkdir()
    t0 = 1_700_000_000
    for k in range(parts):
        host = rng.integers(0, len(_HOSTS), lines)
        svc = rng.integers(0, len(_SERVICES), lines)
        lvl = rng.integers(0, len(_LEVELS), lines)
        user = rng.integers(0, 50_000, lines)
        size = rng.integers(64, 1 << 20, lines)
        verb = rng.integers(0, len(_VERBS), lines)
        path = rng.integers(0, len(_PATHS), lines)
        item = rng.integers(0, 100_000, lines)
        ms = rng.integers(1, 3_000, lines)
        word = rng.integers(0, len(_WORDS), lines)
        t = t0 + k * lines + np.arange(lines)
        out = []
        for i in range(lines):
            out.append(f"{int(t[i])} {_HOSTS[host[i]]} {_SERVICES[svc[i]]} {_LEVELS[lvl[i]]} "
                       f"user{int(user[i]):05d} {int(size[i])} {_VERBS[verb[i]]} "
                       f"{_PATHS[path[i]]}/{int(item[i])} took {int(ms[i])}ms "
                       f"{_WORDS[word[i]]}\n")
        (logs / f"part{k}.log").write_text("".join(out))
    (dest / "pipeline.sh").write_text(scripts.PIPELINE_SH)


def gen_sqlite(dest: Path, *, rows: int, probes: int, point_queries: int, seed: int) -> None:
    """``db.sqlite``: a table ``items`` of ``rows`` rows (random 40-bit keys, inserted in
    random order) with an index on the key, and a table of ``probes`` random keys (mostly
    present); ``queries.sql`` with the lookups."""
    rng = np.random.Generator(np.random.PCG64(seed))
    keys = np.unique(rng.integers(1, 1 << 40, int(rows * 1.05) + 16))
    keys = rng.permutation(keys)[:rows]
    qty = rng.integers(0, 10_000, rows)
    name_len = rng.integers(8, 40, rows)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    pool = letters[rng.integers(0, 26, 1 << 16)].tobytes().decode()
    offs = rng.integers(0, (1 << 16) - 40, rows)
    pick = rng.integers(0, rows, probes)
    absent = rng.random(probes) < 0.1
    probe_keys = np.where(absent, keys[pick] + 1, keys[pick])
    path = dest / "db.sqlite"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA page_size = 4096")
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("BEGIN")
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, key INTEGER NOT NULL, "
                    "qty INTEGER NOT NULL, name TEXT NOT NULL)")
        batch = 50_000
        for lo in range(0, rows, batch):
            hi = min(rows, lo + batch)
            con.executemany("INSERT INTO items VALUES (?, ?, ?, ?)",
                            ((i + 1, int(keys[i]), int(qty[i]),
                              pool[offs[i]:offs[i] + name_len[i]]) for i in range(lo, hi)))
        con.execute("CREATE INDEX items_key ON items (key)")
        con.execute("CREATE TABLE probes (n INTEGER PRIMARY KEY, key INTEGER NOT NULL)")
        con.executemany("INSERT INTO probes VALUES (?, ?)",
                        ((i + 1, int(k)) for i, k in enumerate(probe_keys)))
        con.execute("COMMIT")
    finally:
        con.close()
    singles = rng.integers(0, rows, point_queries)
    lines = [f"SELECT qty, name FROM items WHERE key = {int(keys[i])};" for i in singles]
    (dest / "queries.sql").write_text(
        scripts.SQLITE_QUERIES.replace("{point_queries}", "\n".join(lines)))


def _vocabulary(rng: np.random.Generator, n: int) -> list[str]:
    lengths = rng.integers(2, 11, n)
    letters = rng.integers(97, 123, int(lengths.sum())).astype(np.uint8).tobytes().decode()
    out, pos = [], 0
    for ln in lengths.tolist():
        out.append(letters[pos:pos + ln])
        pos += ln
    return out


def gen_corpus(dest: Path, *, kib: int, seed: int, block_kib: int = 1024,
               repeat_share: float = 0.35, min_distance_mib: int = 4) -> None:
    """``corpus.txt``: ``kib`` KiB of word text (a Zipf-like choice from a random
    vocabulary) in blocks of ``block_kib`` KiB; a share ``repeat_share`` of the blocks
    repeat an earlier block at least ``min_distance_mib`` MiB back (when there is one) with
    a few bytes changed: redundancy only a long-window compressor can find."""
    rng = np.random.Generator(np.random.PCG64(seed))
    vocab = _vocabulary(rng, 30_000)
    weights = 1.0 / (np.arange(len(vocab)) + 8.0)
    weights /= weights.sum()
    block = min(block_kib, kib) << 10
    nblocks = max(1, (kib << 10) // block)
    dist = max(1, (min_distance_mib << 20) // block)
    blocks: list[bytes] = []
    for b in range(nblocks):
        if b >= dist and rng.random() < repeat_share:
            src = bytearray(blocks[int(rng.integers(0, b - dist + 1))])
            for pos in rng.integers(0, block, max(1, block // 1000)).tolist():
                src[pos] = 97 + int(rng.integers(0, 26))
            blocks.append(bytes(src))
            continue
        n = block // 6 + 64
        idx = rng.choice(len(vocab), size=n, p=weights)
        seps = np.where(rng.random(n) < 1 / 12, "\n", " ")
        text = "".join(vocab[i] + s for i, s in zip(idx.tolist(), seps.tolist())).encode()
        while len(text) < block:
            text += text[: block - len(text)]
        blocks.append(text[:block])
    with open(dest / "corpus.txt", "wb") as f:
        for blk in blocks:
            f.write(blk)


def gen_sort(dest: Path, *, lines: int, seed: int) -> None:
    """``records.csv``: ``lines`` lines ``id,category,amount,note`` (random hex ids, one of
    500 categories, a random amount, a word)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = rng.integers(0, 1 << 48, lines)
    cat = rng.integers(0, 500, lines)
    amount = rng.integers(0, 10_000_000, lines)
    note = rng.integers(0, len(_WORDS), lines)
    with open(dest / "records.csv", "w") as f:
        step = 100_000
        for lo in range(0, lines, step):
            hi = min(lines, lo + step)
            f.write("".join(f"{int(ids[i]):012x},cat{int(cat[i]):03d},{int(amount[i])},"
                            f"{_WORDS[note[i]]}\n" for i in range(lo, hi)))


def gen_objgraph(dest: Path, *, nodes: int, degree: int, walks: int, seed: int) -> None:
    """``graph.bin`` (little-endian uint32: nodes, degree, ``nodes * degree`` random edge
    targets, ``walks`` random walk starts) and the script ``objgraph.py``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    words = np.concatenate([np.array([nodes, degree], np.uint32),
                            rng.integers(0, nodes, nodes * degree, dtype=np.uint32),
                            rng.integers(0, nodes, walks, dtype=np.uint32)])
    (dest / "graph.bin").write_bytes(words.astype("<u4").tobytes())
    (dest / "objgraph.py").write_text(scripts.OBJGRAPH_PY)


def _script(name: str, text: str) -> Callable[..., None]:
    def gen(dest: Path) -> None:
        (dest / name).write_text(text)

    gen.__doc__ = f"the script {name} (the program builds its data itself, from a seed)"
    return gen


GENERATORS: dict[str, Callable[..., None]] = {
    "compile": gen_compile,
    "shell": gen_shell,
    "sqlite": gen_sqlite,
    "corpus": gen_corpus,
    "sort": gen_sort,
    "objgraph": gen_objgraph,
    "graph": _script("graph.py", scripts.GRAPH_PY),
    "stream": _script("stream.py", scripts.STREAM_PY),
}


def generator_fingerprint() -> str:
    """sha256 of this module and the scripts: an input is regenerated when they change."""
    h = hashlib.sha256()
    for mod in (__file__, scripts.__file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()


def generate(generator: str, dest: Path, params: dict) -> None:
    """Run ``generator`` into the empty folder ``dest``."""
    try:
        fn = GENERATORS[generator]
    except KeyError:
        raise MemvirtError(f"unknown input generator '{generator}'; expected one of "
                           f"{', '.join(GENERATORS)}") from None
    Path(dest).mkdir(parents=True, exist_ok=True)
    fn(Path(dest), **params)
