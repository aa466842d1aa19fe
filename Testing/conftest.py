"""Shared pytest fixtures: where ../shared/data is, and helpers every suite uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``COVIDLESIONSEG_SHARED_DATA`` if set, else ``<repository root>/../shared/data``."""
    env = os.environ.get("COVIDLESIONSEG_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-CT folder; tests that use it are skipped, with the reason shown (-rs), when it is absent."""
    path = shared_data_dir()
    if not (path / "real_ct").is_dir():
        pytest.skip(f"real CT data not found at {path} (set COVIDLESIONSEG_SHARED_DATA)")
    return path / "real_ct"
