"""A real MRML scene with the logics slicer.util expects, for running the module's logic without the Slicer app.

Follows shared/docs/slicer-headless.md: slicer-core provides MRML, the Segmentations/Volumes logics and
slicer.util; only the application object is a minimal stand-in (no Qt here).
"""

from __future__ import annotations

import types


def bootstrap_scene():
    """Create a scene, register the logics and expose them the way slicer.util looks them up."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    register(colors, "Colors")
    volumes = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
    )
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic, mrmlScene=lambda: scene)
    return scene
