"""``static``: never switches (a baseline that runs the selective machinery in one mode)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import MODES, Policy


class StaticPolicy(Policy):
    """Stay in one mode.

    Parameter ``mode``: "" (default) keeps whatever mode the VM runs in (the
    ``selective.start_mode``); "shadow" or "nested" pins that mode, so if the start
    mode differs the VM switches once, at the end of the first period, and never again.
    """

    name = "static"
    defaults = {"mode": ""}

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        mode = self.params["mode"]
        if mode and mode not in MODES:
            raise ConfigError(f"policy 'static' parameter 'mode' must be shadow or nested, "
                              f"got '{mode}'")

    def decide(self, samples, current):
        want = self.params["mode"] or current
        if want == current:
            return current, f"static: stay in {current}"
        return want, f"static: pinned to {want}"

