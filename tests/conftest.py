import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # reference data the tests need, copied in (see its README)

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


# --------------------------------------------------------------------------------------------
# the mvtrace capture tool and small test programs (tests marked ``valgrind``)

PROGRAMS = REPO / "tests" / "programs"


@pytest.fixture(scope="session")
def tool(tmp_path_factory):
    """Build the tool once per session, through tool_dir() with an empty cache."""
    from memvirt.errors import TraceError
    from memvirt.trace import mvtool

    try:
        mvtool.check_toolchain()
    except TraceError as e:
        pytest.skip(str(e))
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "MEMVIRT_MVTRACE_DIR")}
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("MEMVIRT_MVTRACE_DIR", None)
    try:
        folder = mvtool.tool_dir()
        assert folder.parent.parent == Path(os.environ["XDG_CACHE_HOME"]) / "memvirt"
        assert mvtool.tool_dir() == folder  # cached: not rebuilt
        assert (folder / "lib" / "lackey-amd64-linux").exists()
    finally:
        if saved["XDG_CACHE_HOME"] is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved["XDG_CACHE_HOME"]
    os.environ["MEMVIRT_MVTRACE_DIR"] = str(folder)
    yield folder
    if saved["MEMVIRT_MVTRACE_DIR"] is None:
        os.environ.pop("MEMVIRT_MVTRACE_DIR", None)
    else:
        os.environ["MEMVIRT_MVTRACE_DIR"] = saved["MEMVIRT_MVTRACE_DIR"]


@pytest.fixture(scope="session")
def programs(tmp_path_factory, tool):
    out = tmp_path_factory.mktemp("programs")
    for name in ("mv_single", "mv_multi", "mv_threads"):
        subprocess.run(["gcc", "-O1", "-g", "-pthread", "-o", str(out / name),
                        str(PROGRAMS / f"{name}.c")], check=True)
    return out


