"""User-facing errors: the CLI prints them as one clear line and exits non-zero."""


class MemvirtError(Exception):
    """Bad input or configuration; the message names the file, line, record or key."""


class TraceError(MemvirtError):
    """A trace that cannot be read or simulated (names the file/record and what was expected)."""


class ConfigError(MemvirtError):
    """An unknown configuration key or a bad value (names the key)."""
