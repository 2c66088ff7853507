"""memvirt: what virtualizing memory costs, and which way to do it, for real programs."""

__version__ = "0.1.0"
