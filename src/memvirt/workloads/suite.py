"""The real-program suite, as data.

A ``Workload`` names real programs from Debian packages or PyPI, a deterministic input
(a generator of ``inputs.py`` and its parameters), a command line and an environment.
Every workload has two variants with the same program and input shape: the full one
(about 10^9 instructions: what experiments use) and a quick one (10^7 - 10^8
instructions: for tests).

Command lines are templates: ``{input}`` is the input folder, ``{work}`` an empty
scratch folder (the current directory of the program; removed after the capture),
``{python}`` the interpreter that runs memvirt (the virtualenv holding the PyPI packages)
and ``{name}`` any parameter of the variant.  The environment is exactly ``BASE_ENV``
plus the workload's own variables (nothing is inherited: ``env -i`` starts the program).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# What every program runs with (nothing else is inherited from the caller).
# LD_PRELOAD is set (empty) and first so that Valgrind's preload list is not the last string
# of the environment, where ld.so's parsing of it reads the random AT_RANDOM bytes
# (memvirt.trace.mvtool.client_env says how): captures are then the same run after run.
BASE_ENV: Mapping[str, str] = MappingProxyType({
    "LD_PRELOAD": "",
    "PATH": "/usr/bin:/bin",
    "HOME": "{work}",
    "LC_ALL": "C",
    "LANG": "C",
    "TZ": "UTC",
    "PYTHONHASHSEED": "0",
})

# the workload kinds the suite must cover (one workload or more each)
CATEGORIES = ("compile", "shell", "database", "compression", "sort", "interpreter", "graph",
              "stream")


@dataclass(frozen=True)
class Variant:
    """One size of a workload: parameters (input generator and command) and the expected
    number of instructions (the low and high ends of what a capture should give)."""

    params: Mapping[str, Any]
    instructions: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class Workload:
    name: str
    category: str
    description: str
    stresses: str  # what it exercises in the memory system
    command: tuple[str, ...]  # argv template (see the module docstring)
    generator: str  # input generator (inputs.GENERATORS)
    input_params: tuple[str, ...]  # the variant parameters the generator takes
    full: Variant
    quick: Variant
    env: Mapping[str, str] = field(default_factory=dict)
    debian: tuple[str, ...] = ()  # Debian packages it needs
    pypi: tuple[str, ...] = ()  # PyPI packages (installed in the virtualenv)
    programs: tuple[str, ...] = ()  # executables that must be on BASE_ENV's PATH
    modules: tuple[str, ...] = ()  # Python modules {python} must import
    code_base: str | None = None  # a source archive fetched by `make workloads-deps`

    def __post_init__(self):
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def variant(self, quick: bool = False) -> Variant:
        return self.quick if quick else self.full

    def label(self, quick: bool = False) -> str:
        return f"{self.name}-quick" if quick else self.name


_PY_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# brotli's decoder and the common code, -O2, without the two giant files (dictionary.c, a
# 120 KiB table, and decode.c, one 2,800-line function nest: ~1 and ~5 x 10^9 instructions).
_COMPILE_FILES = ["constants.c", "context.c", "platform.c", "shared_dictionary.c",
                  "bit_reader.c", "prefix.c", "state.c", "static_init.c"]

SUITE: tuple[Workload, ...] = (
    Workload(
        name="compile",
        category="compile",
        description="make -j1 builds a shared and a static library from 8 C files of "
                    "brotli (the PyPI sdist vendors the C library): gcc runs cc1 and as per "
                    "file, then collect2/ld and ar",
        stresses="many short processes (fork, exec, exit), compiler heaps grown by brk and "
                 "mmap, page faults on fresh memory, a large instruction footprint (cc1)",
        command=("make", "-j1", "-f", "{input}/Makefile"),
        generator="compile",
        input_params=("files", "cflags"),
        full=Variant({"files": _COMPILE_FILES, "cflags": "-O2"}, (7 * 10**8, 2 * 10**9)),
        quick=Variant({"files": ["constants.c"], "cflags": "-O0"}, (5 * 10**7, 25 * 10**7)),
        debian=("make", "gcc", "binutils"),
        programs=("make", "gcc", "ar"),
        code_base="brotli",
    ),
    Workload(
        name="shell",
        category="shell",
        description="a bash loop over log parts; each round runs four pipelines of grep, "
                    "cut, sort, uniq, head, gawk, sed, tr, wc and md5sum (15 processes)",
        stresses="fork/exec-heavy: hundreds of short processes, each mapping and faulting in "
                 "its libraries and heap, then exiting; context switches between pipeline "
                 "stages",
        command=("bash", "{input}/pipeline.sh", "{input}", "{work}/out", "{rounds}"),
        generator="shell",
        input_params=("parts", "lines", "seed"),
        full=Variant({"parts": 8, "lines": 2_000, "seed": 11, "rounds": 30},
                     (7 * 10**8, 2 * 10**9)),
        quick=Variant({"parts": 2, "lines": 600, "seed": 11, "rounds": 1},
                      (5 * 10**6, 8 * 10**7)),
        debian=("bash", "coreutils", "grep", "sed", "gawk"),
        programs=("bash", "grep", "cut", "sort", "uniq", "head", "tail", "gawk", "sed", "tr",
                  "wc", "md5sum", "seq", "ls", "cat", "mkdir"),
    ),
    Workload(
        name="sqlite",
        category="database",
        description="the sqlite3 shell looks up random keys in a memory-mapped database "
                    "(a table of 2 M rows, 82 MiB, with a 29 MiB index on a random key): "
                    "a join driven by 100 k probe keys, then 3,000 single-row SELECTs",
        stresses="random B-tree descents (index, then table) over a file mapping far larger "
                 "than the TLB reach: TLB misses and file-backed page faults",
        command=("sqlite3", "-readonly", "-batch", "{input}/db.sqlite",
                 ".read {input}/queries.sql"),
        generator="sqlite",
        input_params=("rows", "probes", "point_queries", "seed"),
        full=Variant({"rows": 2_000_000, "probes": 100_000, "point_queries": 3_000,
                      "seed": 7}, (6 * 10**8, 2 * 10**9)),
        quick=Variant({"rows": 40_000, "probes": 3_000, "point_queries": 200, "seed": 7},
                      (5 * 10**6, 8 * 10**7)),
        debian=("sqlite3",),
        programs=("sqlite3",),
    ),
    Workload(
        name="zstd",
        category="compression",
        description="zstd with a 128 MiB long-distance window (--long=27, one thread) "
                    "compresses a generated 16 MiB text whose blocks repeat megabytes apart, "
                    "decompresses it and compares",
        stresses="a large sliding window and hash tables: streaming writes, random probes "
                 "of the match finder over tens of MiB",
        command=("sh", "-c",
                 "zstd -q -f --single-thread -{level} --long=27 -o {work}/corpus.zst "
                 "{input}/corpus.txt && zstd -q -f -d --long=27 -o {work}/corpus.out "
                 "{work}/corpus.zst && cmp {input}/corpus.txt {work}/corpus.out"),
        generator="corpus",
        input_params=("kib", "seed"),
        full=Variant({"kib": 16 << 10, "seed": 5, "level": 3}, (7 * 10**8, 2 * 10**9)),
        quick=Variant({"kib": 256, "seed": 5, "level": 3}, (5 * 10**6, 1 * 10**8)),
        debian=("zstd", "diffutils", "dash"),
        programs=("sh", "zstd", "cmp"),
    ),
    Workload(
        name="sort",
        category="sort",
        description="GNU sort (one thread, in memory, byte order) sorts a generated CSV "
                    "file of 600 k lines (20 MiB)",
        stresses="a buffer of the whole file plus line pointers, merge sort passes over "
                 "them: large sequential and scattered accesses",
        command=("sort", "--parallel=1", "-S", "512M", "-T", "{work}", "-o",
                 "{work}/sorted.csv", "{input}/records.csv"),
        generator="sort",
        input_params=("lines", "seed"),
        full=Variant({"lines": 600_000, "seed": 3}, (6 * 10**8, 2 * 10**9)),
        quick=Variant({"lines": 12_000, "seed": 3}, (5 * 10**6, 5 * 10**7)),
        debian=("coreutils",),
        programs=("sort",),
    ),
    Workload(
        name="objgraph",
        category="interpreter",
        description="CPython (Debian's python3) builds 45 k node objects with names, edge "
                    "lists and attribute dicts (a generated random graph), walks them (DFS, "
                    "random walks, lookups by name) and runs a full garbage collection",
        stresses="an interpreter's heap of small objects (pymalloc arenas), pointer chasing "
                 "between objects, reference-count writes everywhere",
        command=("/usr/bin/python3", "-S", "{input}/objgraph.py", "{input}/graph.bin",
                 "{walks}"),
        generator="objgraph",
        input_params=("nodes", "degree", "walks", "seed"),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        full=Variant({"nodes": 45_000, "degree": 4, "walks": 10_000, "seed": 1},
                     (7 * 10**8, 2 * 10**9)),
        quick=Variant({"nodes": 2_000, "degree": 4, "walks": 200, "seed": 1},
                      (3 * 10**7, 1 * 10**8)),
        debian=("python3",),
        programs=("/usr/bin/python3",),
    ),
    Workload(
        name="graph",
        category="graph",
        description="python-igraph builds a random directed graph (G(n, m): 160 k vertices, "
                    "640 k edges), then a breadth-first search, k-cores and the 2-hop "
                    "neighbourhoods of 2,000 random vertices",
        stresses="pointer chasing: every edge leads to a random vertex, so the adjacency "
                 "and index vectors are read at random; igraph's edge sorting (radix "
                 "passes over vertex-sized buckets)",
        command=("{python}", "{input}/graph.py", "{vertices}", "{edges}", "{sources}",
                 "{seed}"),
        generator="graph",
        input_params=(),
        env=_PY_ENV,
        full=Variant({"vertices": 160_000, "edges": 640_000, "sources": 2_000, "seed": 1},
                     (7 * 10**8, 2 * 10**9)),
        quick=Variant({"vertices": 5_000, "edges": 20_000, "sources": 50, "seed": 1},
                      (2 * 10**8, 8 * 10**8)),
        pypi=("igraph",),
        modules=("igraph",),
    ),
    Workload(
        name="stream",
        category="stream",
        description="the STREAM kernels (copy, scale, add, triad) in numpy over three "
                    "arrays of 64 MiB (192 MiB), 15 passes",
        stresses="pure streaming: sequential loads and stores over arrays far larger than "
                 "the TLB reach, one TLB miss per page per array",
        command=("{python}", "{input}/stream.py", "{elements}", "{passes}"),
        generator="stream",
        input_params=(),
        env=_PY_ENV,
        full=Variant({"elements": 8 * 2**20, "passes": 15}, (7 * 10**8, 2 * 10**9)),
        quick=Variant({"elements": 2**16, "passes": 2}, (2 * 10**8, 5 * 10**8)),
        pypi=("numpy",),
        modules=("numpy",),
    ),
)
