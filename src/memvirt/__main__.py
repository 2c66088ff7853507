"""``python -m memvirt``: the command line.

``python -m`` puts the current directory first on ``sys.path``; memvirt imports code by
name (``--policy module:Class``), so a file in whatever directory the command runs from
could shadow a module.  That entry is dropped before anything else is imported (use
``PYTHONPATH`` to make a directory's modules importable on purpose).
"""

import os
import sys


def _drop_cwd_from_path() -> None:
    if not sys.path:
        return
    first = sys.path[0]
    try:
        cwd = os.getcwd()
    except OSError:  # the current directory was removed
        cwd = None
    if first == "" or (cwd is not None and os.path.abspath(first) == cwd):
        del sys.path[0]


_drop_cwd_from_path()

from memvirt.cli import main  # noqa: E402 - after the path is fixed

sys.exit(main())
