"""MRML suite: a real slicer-core scene per test, the module folder importable, the test-only base classes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1] / "COVIDLesionSeg"
for path in (HERE, MODULE_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e '.[test]')")
slicer.__path__.append(str(HERE / "stubs" / "slicer"))  # ScriptedLoadableModule stand-in only


@pytest.fixture
def scene():
    import slicer_bootstrap

    scene = slicer_bootstrap.bootstrap_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture(scope="session")
def small_phantom():
    from covidlesionseg.phantom import generate_phantom

    return generate_phantom(3, "CT2", shape=(48, 80, 80))
