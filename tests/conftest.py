import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return Path("../shared") if Path("../shared").exists() else SHARED
