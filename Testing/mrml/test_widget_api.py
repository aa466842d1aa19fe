"""The part of the widget's API list that slicer-core can check for real: slicer.util, the scene, the editor and
plots logics (the Qt widgets need the Slicer application)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))


def test_listed_slicer_python_and_mrml_apis_exist_in_slicer_core():
    import slicer
    import slicer.util
    from test_extension_layout import SLICER_API

    checked = 0
    for name in SLICER_API:
        owner, _, member = name.rpartition(".")
        target = {"slicer.util": slicer.util, "slicer.mrmlScene": slicer.vtkMRMLScene,
                  "vtkSlicerSegmentEditorLogic": slicer.vtkSlicerSegmentEditorLogic,
                  "slicer.modules.plots.logic()": slicer.vtkSlicerPlotsLogic,
                  "vtkMRMLSegmentEditorNode": slicer.vtkMRMLSegmentEditorNode,
                  "vtkMRMLSegmentationNode": slicer.vtkMRMLSegmentationNode}.get(owner)
        if target is not None:
            assert hasattr(target, member), name
            checked += 1
    assert checked >= 20
