"""MRML suite: a real slicer-core scene per test, the module folder importable, the test-only base classes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Case:
    """A loaded case with lobes, an editor logic on the lesion node and live scores on a manual scheduler."""

    phantom: Any
    volume: Any
    logic: Any
    nodes: Any
    editor_node: Any
    editor_logic: Any
    scheduler: Any
    live: Any


@pytest.fixture
def case(scene, small_phantom):
    import slicer

    from covidlesionseg.severity import compute_severity
    from COVIDLesionSegLib import editor, mrml
    from COVIDLesionSegLib.live import ManualScheduler
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    volume = mrml.node_from_volume(ph.ct, "CT")
    logic = COVIDLesionSegLogic()
    severity = compute_severity(ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")
    nodes = logic.show_results(volume, ph.lesions, ph.lungs, ph.lobes, {"engine": "truth", **severity})
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_logic = slicer.vtkSlicerSegmentEditorLogic()
    editor_logic.SetMRMLScene(scene)
    editor_logic.SetSegmentEditorNode(editor_node)
    editor.configure_lesion_editing(editor_node, nodes.lesions, volume)
    editor_logic.SetSegmentationNode(nodes.lesions)
    editor_logic.SetSourceVolumeNode(volume)
    editor_logic.SetMaximumNumberOfUndoStates(10)
    scheduler = ManualScheduler()
    live = logic.start_live(scheduler)
    yield Case(ph, volume, logic, nodes, editor_node, editor_logic, scheduler, live)
    logic.stop_live()
