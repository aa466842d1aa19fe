"""A real MRML scene with the logics `slicer.util` expects, for the module's logic outside the Slicer application
(slicer-core: tests, benchmarks, batch scripts).  Inside Slicer the application provides all of this.

Follows the project's notes on slicer-core: the Colors logic must be registered before the Volumes logic;
only the application object is a minimal stand-in (no Qt).
"""

from __future__ import annotations

import types


def bootstrap_scene():
    """Create a scene, register the logics and expose them the way `slicer.util` looks them up."""
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
    plots = register(slicer.vtkSlicerPlotsLogic(), "Plots")
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        plots=types.SimpleNamespace(logic=lambda: plots),
    )
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic, mrmlScene=lambda: scene)
    return scene
