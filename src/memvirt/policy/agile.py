"""Agile paging policies: which guest page-table subtrees are shadowed and which nested.

The mechanism is in the compiled VMM (``memvirt.vmm.agile``); a policy is its settings, which
the kernels read, plus an optional hook the driver calls at every periodic scan:

- ``write_threshold``: a shadowed page-table page moves, with its subtree, to nested after
  more than this many writes between two scans (-1: never).
- ``start_nested``: a new address space starts wholly nested and is shadowed once a scan
  finds it clean and older than one interval (short-lived processes stay nested).
- ``move_back``: a scan moves nested subtrees (and wholly nested address spaces) that were
  not written since the last scan, and were nested before it, back to shadow.
- ``scan_instructions``: instructions between scans.

Built in: ``paper`` (Gandhi, Hill, Swift, ISCA 2016: threshold 1, start nested, move back),
``all-shadow`` (nothing ever nested: exactly shadow paging) and ``all-nested`` (everything
nested for good: exactly nested paging).  A plug-in is a subclass named ``module:Class`` in
``agile.policy``; its ``on_scan(delta)`` sees the counters since the last scan (a dict of
``counters.NAMES``) and may return new settings (a dict with any of the keys above but
``scan_instructions``).  The ``[agile]`` config keys override a policy's settings.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..errors import ConfigError
from .base import exception_text, policy_label

SCAN_INSTRUCTIONS = 84_000_000  # Xen's 30 ms credit time slice at 2.8 GHz, ~1 instr/cycle
SETTINGS = ("write_threshold", "start_nested", "move_back", "scan_instructions")


class AgilePolicy:
    """The paper's policy; subclass and change the class attributes (or ``on_scan``)."""

    name = "paper"
    write_threshold = 1  # "a page-table page written more than once moves to nested"
    start_nested = True  # "short-lived processes stay nested"
    move_back = True  # "a periodic scan moves clean ones back"
    scan_instructions = SCAN_INSTRUCTIONS

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTINGS}

    def on_scan(self, delta: dict[str, int]) -> dict[str, Any] | None:
        """Called at every scan with the counters since the last one; may return new
        settings (``write_threshold``, ``start_nested``, ``move_back``)."""
        return None


class AllShadowPolicy(AgilePolicy):
    """Every page-table page stays shadowed: agile paging is then shadow paging exactly."""

    name = "all-shadow"
    write_threshold = -1
    start_nested = False
    move_back = False


class AllNestedPolicy(AgilePolicy):
    """Every address space is nested for good: agile paging is then nested paging exactly."""

    name = "all-nested"
    write_threshold = -1
    start_nested = True
    move_back = False


AGILE_POLICIES: dict[str, type[AgilePolicy]] = {
    p.name: p for p in (AgilePolicy, AllShadowPolicy, AllNestedPolicy)}


def check_settings(s: dict[str, Any], who: str) -> dict[str, Any]:
    """``s`` with every setting checked (a ``ConfigError`` naming ``who`` otherwise)."""
    out = dict(s)
    wt = out.get("write_threshold")
    if isinstance(wt, bool) or not isinstance(wt, int) or not -1 <= wt <= 1 << 30:
        raise ConfigError(f"agile policy '{who}': write_threshold must be an integer from -1 "
                          f"to 2^30, got {wt!r}")
    for k in ("start_nested", "move_back"):
        if not isinstance(out.get(k), bool):
            raise ConfigError(f"agile policy '{who}': {k} must be true or false, got "
                              f"{out.get(k)!r}")
    si = out.get("scan_instructions")
    if isinstance(si, bool) or not isinstance(si, int) or not 1000 <= si <= 1 << 62:
        raise ConfigError(f"agile policy '{who}': scan_instructions must be an integer from "
                          f"1000 to 2^62, got {si!r}")
    return out


def make_agile_policy(spec: Any = None, config: Config | None = None) -> AgilePolicy:
    """A policy instance for ``spec`` (a name, ``module:Class``, a class or an instance;
    default ``config.agile.policy``) with the ``[agile]`` config keys applied."""
    cfg = config if config is not None else Config()
    spec = cfg.agile.policy if spec is None else spec
    if isinstance(spec, AgilePolicy):
        pol = spec
    else:
        if isinstance(spec, str) and ":" not in spec:
            if spec not in AGILE_POLICIES:
                raise ConfigError(f"unknown agile policy '{spec}'; known: "
                                  f"{', '.join(AGILE_POLICIES)} (or 'module:Class')")
            cls: Any = AGILE_POLICIES[spec]
        elif isinstance(spec, str):
            from .registry import import_object

            cls = import_object(spec)
        else:
            cls = spec
        if not (isinstance(cls, type) and issubclass(cls, AgilePolicy)):
            raise ConfigError(f"agile policy '{spec}' is not an AgilePolicy subclass "
                              "(memvirt.policy.agile.AgilePolicy)")
        try:
            pol = cls()
        except Exception as e:  # noqa: BLE001 - user code, contained
            raise ConfigError(f"agile policy '{policy_label(cls)}': its constructor failed: "
                              f"{exception_text(e)}") from None
    over = {k: getattr(cfg.agile, k) for k in SETTINGS if getattr(cfg.agile, k) is not None}
    for k, v in check_settings({**pol.settings(), **over}, policy_label(pol)).items():
        setattr(pol, k, v)
    return pol


def scan_update(pol: AgilePolicy, delta: dict[str, int]) -> dict[str, Any]:
    """Run the policy's scan hook (contained); returns the settings to apply (maybe none)."""
    try:
        new = pol.on_scan(dict(delta))
    except Exception as e:  # noqa: BLE001 - user code, contained
        raise ConfigError(f"agile policy '{policy_label(pol)}': on_scan failed: "
                          f"{exception_text(e)}") from None
    if new is None:
        return {}
    if not isinstance(new, dict) or not set(new) <= set(SETTINGS[:3]):
        raise ConfigError(f"agile policy '{policy_label(pol)}': on_scan must return None or a "
                          f"dict of {', '.join(SETTINGS[:3])}, got {new!r}")
    merged = check_settings({**pol.settings(), **new}, policy_label(pol))
    for k in new:
        setattr(pol, k, merged[k])
    return {k: merged[k] for k in new}


__all__ = ["AGILE_POLICIES", "AgilePolicy", "AllNestedPolicy", "AllShadowPolicy",
           "make_agile_policy", "scan_update"]
