"""The real-program suite (memvirt.workloads): definitions, cache keys, deterministic inputs,
quick captures reused from the cache, and the ``memvirt workloads`` command line."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

import memvirt.workloads as wl
from memvirt.cli import main
from memvirt.workloads import core, inputs


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private workloads cache (XDG_CACHE_HOME) for one test."""
    root = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root / "memvirt" / "workloads"


# ----------------------------------------------------------------------------- definitions
def _placeholders(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_suite_covers_the_eight_kinds_with_complete_definitions():
    s = wl.suite()
    assert len(s) >= 8
    assert set(wl.CATEGORIES) <= {w.category for w in s.values()}
    for name, w in s.items():
        assert name == w.name and name.isidentifier()
        assert w.description and w.stresses and w.command
        assert w.generator in inputs.GENERATORS
        assert w.debian or w.pypi, f"{name}: names no package"
        assert w.programs or w.modules, f"{name}: names nothing to check for"
        for quick in (False, True):
            v = w.variant(quick)
            assert set(w.input_params) <= set(v.params)
            known = {*v.params, "input", "work", "python"}
            for text in (*w.command, *w.env.values(), *wl.BASE_ENV.values()):
                assert _placeholders(text) <= known, (name, text)
            lo, hi = v.instructions
            assert 0 < lo < hi
        # the full variant is a real length, the quick one a test-sized one
        assert w.full.instructions[0] >= 10**8 and w.full.instructions[1] <= 10**10
        assert w.quick.instructions[1] <= 8 * 10**8  # numpy and igraph imports: 2-5 x 10^8
        assert w.quick.instructions[1] < w.full.instructions[1]
    env = wl.BASE_ENV
    assert env["LC_ALL"] == "C" and env["TZ"] == "UTC" and env["PYTHONHASHSEED"] == "0"
    assert "--parallel=1" in s["sort"].command
    assert any("--single-thread" in a for a in s["zstd"].command)
    assert s["compile"].command[:2] == ("make", "-j1")


def test_unknown_workload_is_an_error_naming_the_known_ones():
    with pytest.raises(wl.WorkloadError) as e:
        wl.get("nope")
    msg = str(e.value)
    assert "nope" in msg and "\n" not in msg
    for name in wl.suite():
        assert name in msg


def test_command_line_is_filled_and_the_environment_is_exact(tmp_path):
    w = wl.get("sort")
    argv, env = wl.command_line(w, True, tmp_path / "in", tmp_path / "work")
    assert argv[0] == "sort" and str(tmp_path / "in" / "records.csv") in argv
    assert env["HOME"] == str(tmp_path / "work")
    assert set(env) == set(wl.BASE_ENV) | set(w.env)
    wrapped = core.wrapped_command(argv, env, tmp_path)
    assert wrapped[:4] == ["/usr/bin/env", "-i", "-C", str(tmp_path)]


# ----------------------------------------------------------------------------- cache keys
def test_capture_key_changes_with_input_command_environment_and_tool():
    base = dict(command=["sort", "{input}/a"], env={"LC_ALL": "C"}, input_hash="ab" * 32)
    opts = dict(tool_version="1-abc", format_version=2, options={"sync": 8192},
                tools={"deb:coreutils": "9.1"})
    k = wl.capture_key(**base, **opts)
    assert len(k) == 64 and k == wl.capture_key(**base, **opts)
    assert wl.capture_key(**{**base, "input_hash": "cd" * 32}, **opts) != k
    assert wl.capture_key(**{**base, "command": ["sort", "-r", "{input}/a"]}, **opts) != k
    assert wl.capture_key(**{**base, "env": {"LC_ALL": "C", "TZ": "UTC"}}, **opts) != k
    assert wl.capture_key(**base, **{**opts, "tool_version": "1-abd"}) != k
    assert wl.capture_key(**base, **{**opts, "format_version": 3}) != k
    assert wl.capture_key(**base, **{**opts, "options": {"sync": 1}}) != k
    assert wl.capture_key(**base, **{**opts, "tools": {"deb:coreutils": "9.2"}}) != k


def test_workload_key_follows_the_variant_and_the_input(cache):
    w = wl.get("sort")
    assert core.key_for(w, False, "x" * 64) != core.key_for(w, True, "x" * 64)
    assert core.key_for(w, True, "x" * 64) != core.key_for(w, True, "y" * 64)
    assert core.key_for(w, True, "x" * 64) == core.key_for(w, True, "x" * 64)


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", ["shell", "sort", "sqlite", "zstd", "objgraph", "graph",
                                  "stream", "compile"])
def test_inputs_are_deterministic(tmp_path, name):
    w = wl.get(name)
    if w.code_base == "brotli" and inputs.brotli_sdist() is None:
        pytest.skip(f"{inputs.BROTLI_SDIST} is not in {inputs.code_base_dir()} "
                    "(make workloads-deps)")
    params = {k: w.quick.params[k] for k in w.input_params}
    digests = []
    for i in range(2):
        d = tmp_path / f"run{i}"
        inputs.generate(w.generator, d, params)
        digests.append(inputs.content_hash(d))
    assert digests[0] == digests[1]
    assert digests[0][1] >= 1 and digests[0][2] > 0
    for p in sorted((tmp_path / "run0").rglob("*")):
        if p.is_file():
            twin = tmp_path / "run1" / p.relative_to(tmp_path / "run0")
            assert p.read_bytes() == twin.read_bytes(), p


def test_ensure_input_is_cached_by_content(cache):
    folder, manifest = wl.ensure_input("sort", quick=True)
    assert folder.is_dir() and folder.is_relative_to(cache)
    assert manifest["content_hash"] == inputs.content_hash(folder)[0]
    assert wl.input_manifest("sort", quick=True) == manifest
    stamp = (folder / "records.csv").stat().st_mtime_ns
    again, m2 = wl.ensure_input("sort", quick=True)
    assert again == folder and m2 == manifest
    assert (folder / "records.csv").stat().st_mtime_ns == stamp  # not regenerated


def test_a_workload_with_a_missing_program_says_what_to_install(cache, monkeypatch):
    fake = wl.Workload(
        name="fake", category="sort", description="d", stresses="s",
        command=("no-such-program-memvirt", "{input}"), generator="sort",
        input_params=("lines", "seed"),
        full=wl.Variant({"lines": 10, "seed": 1}, (10**8, 10**9)),
        quick=wl.Variant({"lines": 10, "seed": 1}, (10**6, 10**7)),
        debian=("nosuchpkg",), programs=("no-such-program-memvirt",))
    monkeypatch.setattr(core, "SUITE", (*core.SUITE, fake))
    assert wl.missing(fake) == ["program no-such-program-memvirt"]
    with pytest.raises(wl.WorkloadUnavailable) as e:
        wl.ensure("fake", quick=True)
    assert "no-such-program-memvirt" in str(e.value) and "make workloads-deps" in str(e.value)
    st = wl.status("fake", quick=True)
    assert not st["captured"] and st["missing"]


# ----------------------------------------------------------------------------- command line
def test_cli_unknown_name_is_a_one_line_error_with_status_2(capsys, cache):
    for argv in (["workloads", "info", "nope"], ["workloads", "path", "nope"],
                 ["workloads", "capture", "nope"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "unknown workload 'nope'" in err
        assert "sort" in err and "compile" in err


def test_cli_list_json_before_any_capture(capsys, cache):
    assert main(["workloads", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(wl.suite())
    assert not any(r["captured"] for r in rows)
    assert main(["workloads", "list", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| workload |")
    assert main(["workloads", "info", "sort", "--quick", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "sort" and d["status"]["captured"] is False


# ----------------------------------------------------------------------------- captures
@pytest.mark.valgrind
def test_quick_captures_are_reused_from_the_cache(tool, cache, monkeypatch, capsys):
    calls = []
    real = core._capture

    def counting(*a, **kw):
        calls.append(a[0].name)
        return real(*a, **kw)

    monkeypatch.setattr(core, "_capture", counting)
    events = []
    paths = {}
    # sort needs coreutils only; shell also needs gawk (make workloads-deps)
    names = [n for n in ("shell", "sort") if not wl.missing(wl.get(n))]
    if "sort" not in names:
        pytest.skip(f"sort: missing {wl.missing(wl.get('sort'))}")
    for name in names:
        paths[name] = wl.ensure(name, quick=True, progress=events.append)
        assert paths[name].is_file() and paths[name].is_relative_to(cache / "traces")
    assert calls == names
    phases = {e["phase"] for e in events}
    assert {"input", "capture", "done"} <= phases
    cap = [e for e in events if e["phase"] == "capture"]
    assert all(e["expected"] > 0 and "rate" in e for e in cap)

    stamps = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    for name in paths:  # the second ensure reuses the capture: no new one
        assert wl.ensure(name, quick=True) == paths[name]
        assert paths[name].stat().st_mtime_ns == stamps[name]
        assert wl.trace_path(name, quick=True) == paths[name]
    assert calls == names
    assert not any((cache / "work").iterdir())  # scratch folders are removed

    for name in paths:
        st = wl.stats(name, quick=True)
        lo, hi = wl.get(name).quick.instructions
        assert lo <= st["instructions"] <= hi, (name, st["instructions"])
        assert st["tlb_misses_per_ki"] > 0 and st["guest_faults_per_ki"] > 0
        assert st["footprint_pages"] > 0 and st["capture_seconds"] > 0
    if "shell" in paths:
        assert wl.stats("shell", quick=True)["processes"] >= 12  # fork/exec-heavy
    assert wl.stats("sort", quick=True)["processes"] == 1
    side = json.loads(paths["sort"].with_suffix(".json").read_text())
    assert side["native"]["profile"] == wl.STATS_PROFILE
    assert side["native"]["levels"] == wl.STATS_LEVELS
    assert calls == names  # stats did not capture again

    capsys.readouterr()
    assert main(["workloads", "list", "--quick", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(rows[n]["captured"] for n in names)
    assert rows["sort"]["tlb_misses_per_ki"] == pytest.approx(
        wl.stats("sort", quick=True)["tlb_misses_per_ki"])
    assert not rows["sqlite"]["captured"]
    assert main(["workloads", "path", "sort", "--quick"]) == 0
    assert capsys.readouterr().out.strip() == str(paths["sort"])
    assert main(["workloads", "info", names[0], "--quick", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["status"]["captured"] and d["trace_meta"]["exit_status"] == 0
    assert d["trace_meta"]["cache_key"] == rows[names[0]]["key"]
    assert main(["workloads", "info", "sort", "--quick"]) == 0
    assert "TLB misses" in capsys.readouterr().out
    assert calls == names
