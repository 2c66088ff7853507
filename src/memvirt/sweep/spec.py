"""The sweep spec: a TOML file naming traces, modes, policies and swept config parameters.

Example (see ``docs/sweeps.md``)::

    name = "stlb-size"
    modes = ["shadow", "nested", "selective"]
    policies = ["dsp", "cost"]          # selective runs once per policy
    profile = "nehalem-2010"            # optional machine profile
    config = "machine.toml"             # optional base config file (relative to the spec)

    [set]                               # fixed overrides for every run
    "cost.vm_exit" = 1600

    [[trace]]
    name = "chase"
    synth = "chase"
    params = { records = 100000 }

    [[trace]]
    path = "traces/gcc.parquet"         # name defaults to the file stem

    [grid]                              # cartesian product
    "hw.stlb.entries" = [512, 1024, 2048]

    [[zip]]                             # advanced together
    "hw.dtlb.entries" = [64, 128]
    "hw.dtlb.ways" = [4, 8]

``load_spec(path)`` validates everything up front (unknown keys, bad values, every
point's config through the ``Config`` schema, generator parameters, policy names) and
raises ``SpecError`` naming the key.  It imports no user code: ``module:Class`` policies
are only checked for their form (``check_plugin_policies`` imports them, before a sweep
runs).  A spec that expands to more than ``max_runs`` runs (default
``DEFAULT_MAX_RUNS``) is refused before it is expanded.  ``SweepSpec.points()`` expands
the spec into a deterministic list of ``RunPoint``: traces x (mode, policy) x grid x zip
groups, in the order the spec lists them.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import __version__
from ..config import Config, _format_validation, _set_dotted
from ..errors import ConfigError, MemvirtError
from ..trace.records import COLUMNS, Trace

MODES = ("native", "shadow", "nested", "selective", "agile")
TOP_KEYS = ("name", "description", "out", "modes", "policies", "config", "profile", "set",
            "grid", "zip", "trace", "traces", "max_runs")
DEFAULT_MAX_RUNS = 100_000  # runs a spec may expand to (spec key max_runs, --max-runs)
SYNTH_TRIAL_RECORDS = 4096  # generator parameters are checked on a trace this long
TRACE_KEYS = ("name", "path", "format", "synth", "params")


class SpecError(MemvirtError):
    """A sweep spec that cannot be run (names the file and the key)."""


def canonical_json(obj: Any) -> str:
    """Sorted, compact, standard JSON (a non-finite float is a ``ValueError``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def trace_array_id(trace: Trace) -> str:
    """Content id of an in-memory trace: a hash of its columns."""
    h = hashlib.sha256(b"memvirt-trace-arrays-v1")
    for name in COLUMNS:
        col = getattr(trace, name)
        h.update(name.encode())
        h.update(str(len(col)).encode())
        h.update(memoryview(col).cast("B"))
    return "arrays:" + h.hexdigest()


@dataclass(frozen=True, eq=False)
class TraceSpec:
    """One trace of a sweep: a file (``path``), a synthetic generator (``synth`` with full
    ``params``) or, from the Python API, an in-memory ``Trace``."""

    name: str
    path: Path | None = None
    format: str | None = None
    synth: str | None = None
    params: dict = field(default_factory=dict)
    trace: Trace | None = None

    @property
    def kind(self) -> str:
        if self.synth is not None:
            return "synth"
        if self.trace is not None:
            return "memory"
        return "path"

    def synth_id(self) -> str:
        """Content id of a synthetic trace: generator + all parameters + memvirt version."""
        return "synth:" + sha256_hex(canonical_json(
            {"generator": self.synth, "params": self.params, "memvirt": __version__}))

    def describe(self) -> str:
        if self.kind == "synth":
            return f"synth {self.synth}({', '.join(f'{k}={v}' for k, v in self.params.items())})"
        if self.kind == "memory":
            return f"in-memory trace ({len(self.trace)} records)"
        return str(self.path)


@dataclass(frozen=True, eq=False)
class RunPoint:
    """One simulation of the sweep."""

    index: int
    trace: TraceSpec
    mode: str
    policy: str | None  # the effective policy for selective runs, None otherwise
    params: dict        # the swept parameters of this point (dotted key -> value)
    config: dict        # the full config (``Config.to_dict()``)

    def label(self) -> str:
        parts = [self.trace.name, self.mode + (f"/{self.policy}" if self.policy else "")]
        parts += [f"{k}={v}" for k, v in self.params.items()]
        return " ".join(parts)


@dataclass(eq=False)
class SweepSpec:
    name: str
    traces: list[TraceSpec]
    modes: list[str]
    policies: list[str] = field(default_factory=list)
    base: Config = field(default_factory=Config)
    fixed: dict = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    zips: list[dict[str, list]] = field(default_factory=list)
    out: Path | None = None
    path: Path | None = None
    description: str = ""
    text: str = ""
    max_runs: int = DEFAULT_MAX_RUNS
    _validated: tuple | None = field(default=None, repr=False)  # (fingerprint, configs)

    @property
    def swept_keys(self) -> list[str]:
        keys = list(self.grid)
        for z in self.zips:
            keys += list(z)
        return keys

    def param_combinations(self) -> list[dict]:
        """Every combination of swept values (grid product x zip groups), in order."""
        gkeys = list(self.grid)
        axes: list[list[dict]] = [[{k: v} for v in self.grid[k]] for k in gkeys]
        for z in self.zips:
            zk = list(z)
            n = len(z[zk[0]])
            axes.append([{k: z[k][i] for k in zk} for i in range(n)])
        combos = []
        for parts in itertools.product(*axes):
            d: dict = {}
            for p in parts:
                d.update(p)
            combos.append({k: d[k] for k in self.swept_keys})
        return combos

    def count_runs(self) -> int:
        """How many runs the spec expands to (computed without expanding it)."""
        n = len(self.traces) * len(self.mode_policies())
        for v in self.grid.values():
            n *= len(v)
        for z in self.zips:
            n *= len(next(iter(z.values())))
        return n

    def check_size(self, limit: int | None = None) -> int:
        """``SpecError`` when the spec expands to more than ``limit`` runs (default: the
        spec's ``max_runs``); returns the count."""
        limit = self.max_runs if limit is None else limit
        n = self.count_runs()
        if n > limit:
            axes = [f"{len(self.traces)} trace(s)", f"{len(self.mode_policies())} mode/policy"]
            axes += [f"{len(v)} {k}" for k, v in self.grid.items()]
            axes += [f"{len(next(iter(z.values())))} zipped" for z in self.zips]
            raise SpecError(f"{self._src()}the spec expands to {n:,} runs "
                            f"({' x '.join(axes)}), more than the limit of {limit:,}; "
                            "sweep fewer values, or raise the limit with max_runs = N in the "
                            "spec or --max-runs N")
        return n

    def mode_policies(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for m in self.modes:
            if m == "selective" and self.policies:
                out += [(m, p) for p in self.policies]
            else:
                out.append((m, None))
        return out

    def point_configs(self, combos: list[dict]) -> list[dict]:
        """The full config dict of every combination, each validated by the ``Config``
        schema (``SpecError`` names the point and the key).  A point's dict shares the
        sections it does not change with the base config's dict: treat it as read-only."""
        self.check_size()
        try:
            fp: tuple | None = (canonical_json([self.grid, self.zips, combos]), id(self.base))
        except ValueError:  # a non-finite value: validation below names it
            fp = None
        if fp is not None and self._validated is not None and self._validated[0] == fp:
            return self._validated[1]
        base = self.base.to_dict()
        configs: list[dict] = []
        errors: list[str] = []
        for combo in combos:
            if not combo:
                configs.append(base)
                continue
            try:
                configs.append(_overridden(base, combo))
            except ConfigError as e:
                where = ", ".join(f"{k}={v!r}" for k, v in combo.items())
                errors.append(f"swept point ({where}): {e}")
                if len(errors) > 5:
                    break
        if errors:
            more = " (and more)" if len(errors) > 5 else ""
            raise SpecError(f"{self._src()}" + "; ".join(errors[:5]) + more)
        self._validated = (fp, configs)
        return configs

    def points(self) -> list[RunPoint]:
        """The run points, validated (``SpecError`` names the point and the key)."""
        self.check_size()
        combos = self.param_combinations()
        configs = self.point_configs(combos)
        pts: list[RunPoint] = []
        for tr in self.traces:
            for mode, pol in self.mode_policies():
                for combo, cfg in zip(combos, configs):
                    eff = None
                    if mode == "selective":
                        eff = pol if pol is not None else cfg["selective"]["policy"]
                    pts.append(RunPoint(len(pts), tr, mode, eff, dict(combo), cfg))
        return pts

    def _src(self) -> str:
        return f"{self.path}: " if self.path else ""


# ---------------------------------------------------------------------- loading


def _overridden(base: dict, combo: dict) -> dict:
    """``base`` with the dotted overrides of ``combo``, validated by the schema; the values
    are normalized as ``Config.to_dict()`` would write them (1600 -> 1600.0 for a float
    key), so run keys do not depend on how a value was spelled.  Only the dicts on the
    overridden paths are copied."""
    d = dict(base)
    for key in combo:  # (the keys were checked against the schema when the spec was read)
        node = d
        for part in key.split(".")[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[key.split(".")[-1]] = copy.deepcopy(combo[key])
    try:
        model = Config.model_validate(d)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, None)) from None
    for key in combo:
        parts = key.split(".")
        v: Any = model
        for part in parts:  # under selective.policy_params the values are plain dicts
            v = v[part] if isinstance(v, dict) else getattr(v, part)
        node = d
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = v.model_dump(mode="json") if hasattr(v, "model_dump") else v
    return d


def load_spec(path: str | Path, max_runs: int | None = None) -> SweepSpec:
    """Read and validate a sweep spec TOML file (``max_runs`` overrides the spec's)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such sweep spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a folder, expected a sweep spec (TOML file)") from None
    except OSError as e:
        raise SpecError(f"{p}: cannot read sweep spec: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not a sweep spec: not UTF-8 text (byte {e.start} is "
                        f"0x{raw[e.start]:02x})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{p}: not valid TOML: {e}") from None
    spec = spec_from_dict(data, base_dir=p.resolve().parent, source=str(p), max_runs=max_runs)
    spec.path = p
    spec.text = text
    if not spec.name:
        spec.name = p.stem
    return spec


def spec_from_dict(data: dict, base_dir: str | Path | None = None, source: str | None = None,
                   traces: dict[str, Trace] | None = None,
                   max_runs: int | None = None) -> SweepSpec:
    """Validate a spec given as a dict (the parsed TOML).  ``traces`` adds in-memory
    traces by name (Python API); ``max_runs`` overrides the spec's limit on its size."""
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    pre = f"{source}: " if source else ""

    def err(msg: str) -> SpecError:
        return SpecError(pre + msg)

    if not isinstance(data, dict):
        raise err("a sweep spec must be a table")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise err(f"unknown key '{unknown[0]}'; a sweep spec has: {', '.join(TOP_KEYS)}")

    name = data.get("name", "")
    if not isinstance(name, str):
        raise err(f"'name' must be a string, got {name!r}")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise err(f"'description' must be a string, got {desc!r}")
    if max_runs is None:
        max_runs = data.get("max_runs", DEFAULT_MAX_RUNS)
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise err(f"'max_runs' must be a positive integer, got {max_runs!r}")
    elif max_runs < 1:
        raise err(f"the limit on runs must be a positive integer, got {max_runs!r}")

    # modes / policies
    modes = data.get("modes")
    if modes is None:
        raise err("'modes' is missing (a list of: " + ", ".join(MODES) + ")")
    if isinstance(modes, str):
        modes = [modes]
    if not isinstance(modes, list) or not modes:
        raise err(f"'modes' must be a non-empty list of: {', '.join(MODES)}; got {modes!r}")
    for m in modes:
        if m not in MODES:
            raise err(f"'modes': unknown mode {m!r}; expected one of {', '.join(MODES)}")
    _no_dups(modes, "modes", err)
    policies = data.get("policies", [])
    if isinstance(policies, str):
        policies = [policies]
    if not isinstance(policies, list) or not all(isinstance(x, str) and x for x in policies):
        raise err(f"'policies' must be a list of policy names, got {policies!r}")
    _no_dups(policies, "policies", err)
    if policies and "selective" not in modes:
        raise err("'policies' is set but 'modes' has no \"selective\" (policies only apply "
                  "to selective paging)")

    # base config
    cfg_path = data.get("config")
    if cfg_path is not None and not isinstance(cfg_path, str):
        raise err(f"'config' must be the path of a config TOML file, got {cfg_path!r}")
    profile = data.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise err(f"'profile' must be a profile name, got {profile!r}")
    fixed_raw = data.get("set", {})
    if not isinstance(fixed_raw, dict):
        raise err("'set' must be a table of config keys and values")
    fixed = _flatten(fixed_raw)
    for k in fixed:
        _check_key(k, "[set]", err)
    try:
        base = Config.load(_resolve(base_dir, cfg_path) if cfg_path else None,
                           overrides=fixed or None, profile=profile)
    except ConfigError as e:
        raise err(f"[set]/config/profile: {e}") from None

    # swept parameters
    grid_raw = data.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise err("'grid' must be a table of config keys and lists of values")
    grid = _flatten(grid_raw)
    for k, v in grid.items():
        _check_key(k, "[grid]", err)
        _check_values(k, v, "[grid]", err)
    zips_raw = data.get("zip", [])
    if isinstance(zips_raw, dict):
        zips_raw = [zips_raw]
    if not isinstance(zips_raw, list):
        raise err("'zip' must be one or more [[zip]] tables of config keys and lists")
    zips: list[dict[str, list]] = []
    seen: dict[str, str] = {k: "[grid]" for k in grid}
    for i, z in enumerate(zips_raw):
        where = f"[[zip]] #{i + 1}"
        if not isinstance(z, dict) or not z:
            raise err(f"{where} must be a non-empty table of config keys and lists")
        flat = _flatten(z)
        lengths = {}
        for k, v in flat.items():
            _check_key(k, where, err)
            _check_values(k, v, where, err, allow_dups=True)
            lengths[k] = len(v)
        if len(set(lengths.values())) > 1:
            desc_l = ", ".join(f"'{k}' has {n}" for k, n in lengths.items())
            raise err(f"{where}: lists must have the same length ({desc_l})")
        for k in flat:
            if k in seen:
                raise err(f"{where}: key '{k}' is already swept in {seen[k]}")
            seen[k] = where
        zips.append(flat)
    for k in seen:
        if k in fixed:
            raise err(f"key '{k}' is both fixed in [set] and swept in {seen[k]}")
    if "selective.policy" in seen and policies:
        raise err(f"'selective.policy' is swept in {seen['selective.policy']} and 'policies' is "
                  "also set; use one of them")

    # traces
    entries = []
    if "trace" in data:
        t = data["trace"]
        entries += [(f"[[trace]] #{i + 1}", e) for i, e in enumerate(t if isinstance(t, list)
                                                                    else [t])]
    if "traces" in data:
        t = data["traces"]
        if isinstance(t, dict):  # [traces] name = "path" | {synth=..., params=...}
            for nm, e in t.items():
                e2 = {"path": e} if isinstance(e, str) else (dict(e) if isinstance(e, dict) else e)
                if isinstance(e2, dict):
                    e2.setdefault("name", nm)
                entries.append((f"traces.{nm}", e2))
        elif isinstance(t, list):
            for i, e in enumerate(t):
                entries.append((f"traces[{i}]", {"path": e} if isinstance(e, str) else e))
        else:
            raise err("'traces' must be a list of paths or a table name = path/{synth=...}")
    tspecs = [_trace_spec(where, e, base_dir, err) for where, e in entries]
    for nm, tr in (traces or {}).items():
        if not isinstance(tr, Trace):
            raise err(f"trace '{nm}': expected a Trace, got {type(tr).__name__}")
        if len(tr) == 0:
            raise err(f"trace '{nm}': the trace has no records")
        tspecs.append(TraceSpec(name=nm, trace=tr))
    if not tspecs:
        raise err("no traces: add [[trace]] tables (path = \"...\" or synth = \"...\")")
    names: dict[str, int] = {}
    for t in tspecs:
        if t.name in names:
            raise err(f"two traces are named '{t.name}'; give them distinct 'name's")
        names[t.name] = 1

    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise err(f"'out' must be a directory path, got {out!r}")
    spec = SweepSpec(name=name, traces=tspecs, modes=list(modes), policies=list(policies),
                     base=base, fixed=fixed, grid=grid, zips=zips,
                     out=_resolve(base_dir, out) if out else None, description=desc,
                     max_runs=max_runs)
    if source:
        spec.path = Path(source)
    spec.check_size()  # before anything is expanded
    combos = spec.param_combinations()
    spec.point_configs(combos)  # validates every point's config
    _check_policies(spec, combos, err)
    return spec


def _resolve(base_dir: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir / q)


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"hw": {"stlb": {"entries": [..]}}} and {"hw.stlb.entries": [..]} -> dotted keys.
    ``selective.policy_params`` stays a value when given as a whole table."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "selective.policy_params":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_key(key: str, where: str, err) -> None:
    try:
        _set_dotted({}, key, None)
    except ConfigError as e:
        raise err(f"{where}: {e}") from None


def _check_values(key: str, values, where: str, err, allow_dups: bool = False) -> None:
    if not isinstance(values, list):
        raise err(f"{where} '{key}' must be a list of values, got {values!r}")
    if not values:
        raise err(f"{where} '{key}' is an empty list")
    if not allow_dups:
        _no_dups(values, f"{where} '{key}'", err)


def _no_dups(values: list, what: str, err) -> None:
    seen: set[str] = set()
    for v in values:
        try:
            c = canonical_json(v)
        except ValueError:
            raise err(f"{what}: {v!r} is not a finite number") from None
        if c in seen:
            raise err(f"{what} lists {v!r} twice")
        seen.add(c)


def _trace_spec(where: str, e, base_dir: Path, err) -> TraceSpec:
    if not isinstance(e, dict):
        raise err(f"{where}: a trace must be a table with 'path' or 'synth', got {e!r}")
    unknown = [k for k in e if k not in TRACE_KEYS]
    if unknown:
        raise err(f"{where}: unknown key '{unknown[0]}'; a trace has: {', '.join(TRACE_KEYS)}")
    has_path, has_synth = "path" in e, "synth" in e
    if has_path == has_synth:
        raise err(f"{where}: give exactly one of 'path' (a trace file) or 'synth' "
                  "(a generator name)")
    name = e.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise err(f"{where}: 'name' must be a non-empty string, got {name!r}")
    if has_synth:
        gen = e["synth"]
        if not isinstance(gen, str):
            raise err(f"{where}: 'synth' must be a generator name, got {gen!r}")
        if "format" in e:
            raise err(f"{where}: 'format' only applies to 'path' traces")
        params = e.get("params", {})
        if not isinstance(params, dict):
            raise err(f"{where}: 'params' must be a table, got {params!r}")
        try:
            full = check_synth_params(gen, params)
        except MemvirtError as ex:
            raise err(f"{where} ({name or gen}): {ex}") from None
        return TraceSpec(name=name or gen, synth=gen, params=full)
    if "params" in e:
        raise err(f"{where}: 'params' only applies to 'synth' traces")
    path = e["path"]
    if not isinstance(path, str) or not path:
        raise err(f"{where}: 'path' must be a file path, got {path!r}")
    fmt = e.get("format")
    if fmt is not None:
        from ..trace.base import readers

        known = readers()
        if fmt not in known:
            raise err(f"{where}: unknown trace format '{fmt}'; known: {', '.join(sorted(known))}")
    p = _resolve(base_dir, path)
    nm = name or Path(path).name.split(".")[0] or path
    return TraceSpec(name=nm, path=p.absolute(), format=fmt)


def check_synth_params(gen: str, params: dict) -> dict:
    """The full parameters of generator ``gen`` (``MemvirtError`` for an unknown name or
    parameter, a wrong type, or a value out of range).  Ranges are checked by the
    generator itself, on a short trial trace (``SYNTH_TRIAL_RECORDS`` records); when only
    the shortened trial fails, the full parameters decide."""
    from ..trace.synth import resolve_params

    gspec, full = resolve_params(gen, **params)
    records = full.get("records")
    if not isinstance(records, int):
        return full
    trial = dict(full, records=min(records, SYNTH_TRIAL_RECORDS))
    try:
        gspec.func(**trial)
    except MemvirtError:
        if trial == full:
            raise
        gspec.func(**full)  # the trial's shortening caused it?  the real parameters decide
    except Exception as e:  # noqa: BLE001 - a registered generator that fails
        raise MemvirtError(f"synth generator '{gen}' fails with these parameters: "
                           f"{type(e).__name__}: {e}") from None
    return full


def _policy_names(spec: SweepSpec, combos: list[dict] | None = None) -> list[str]:
    if "selective" not in spec.modes:
        return []
    if spec.policies:
        return list(spec.policies)
    if combos is None:
        combos = spec.param_combinations()
    return sorted({c.get("selective.policy", spec.base.selective.policy) for c in combos}
                  or {spec.base.selective.policy})


def _check_policies(spec: SweepSpec, combos: list[dict], err) -> None:
    """Policy names are checked up front without running user code: registered policies
    are created (their parameters checked), ``module:Class`` ones only checked for their
    form (``check_plugin_policies`` imports them when the sweep is about to run)."""
    from ..policy import check_policy_name, is_plugin, make_policy
    from ..policy.registry import policies as registered

    for n in _policy_names(spec, combos):
        if not isinstance(n, str):
            raise err(f"'policies': policy must be a name or 'module:Class', got {n!r}")
        try:
            check_policy_name(n)
            if is_plugin(n):
                continue
            oracle = n == "oracle" and "schedule" not in spec.base.selective.policy_params
            if not oracle and n in registered():
                make_policy(n, spec.base)
        except MemvirtError as e:
            raise err(f"'policies': {e}") from None


def check_plugin_policies(spec: SweepSpec) -> None:
    """Import and create the spec's ``module:Class`` policies (user code): call it before
    a sweep runs, so that a broken plug-in stops the sweep before anything runs."""
    from ..policy import is_plugin, make_policy

    for n in _policy_names(spec):
        if is_plugin(n):
            try:
                make_policy(n, spec.base)
            except MemvirtError as e:
                raise SpecError(f"{spec._src()}'policies': {e}") from None


__all__ = ["DEFAULT_MAX_RUNS", "RunPoint", "SpecError", "SweepSpec", "TraceSpec",
           "canonical_json", "check_plugin_policies", "check_synth_params", "load_spec",
           "sha256_hex", "spec_from_dict", "trace_array_id"]
