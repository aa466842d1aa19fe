"""The Segment Editor set up for lesion correction, and edits made by the module (one-click grow) with undo.

Lesion editing: the lesion node, Editable area "inside Lung mask", overwrite no other segment (so a lesion
stroke never erases the lung mask or a seed), the Lung mask hidden (masking still applies, and Grow from
seeds only sees visible segments: Lesion and Background).  The anatomy node is never offered to this editor;
lobes are corrected in a separate, explicit step (`configure_lobe_editing`).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support

from covidlesionseg import regiongrow
from COVIDLesionSegLib import anatomy as anatomy_mod
from COVIDLesionSegLib import terminology

EFFECTS = ["Paint", "Erase", "Draw", "Scissors", "Grow from seeds", "Threshold", "Islands", "Smoothing",
           "COVID lesion grow", "Local Threshold"]  # Local Threshold comes with SegmentEditorExtraEffects
READ_ONLY_ATTRIBUTE = "COVIDLesionSeg.readOnly"


def segment_id(node, spec: terminology.SegmentSpec) -> str:
    found = terminology.match_segments(anatomy_mod.segments_of(node), {1: spec})
    if 1 not in found:
        raise ValueError(f"'{node.GetName()}' has no '{spec.name}' segment")
    return found[1]


def configure_lesion_editing(editor_node, lesion_node, volume_node) -> None:
    """Editor node: lesion node and CT, Lesion selected, editable inside Lung mask, overwrite none."""
    lung_mask_id = segment_id(lesion_node, terminology.LUNG_MASK)
    editor_node.SetAndObserveSegmentationNode(lesion_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    editor_node.SetSelectedSegmentID(segment_id(lesion_node, terminology.LESION))
    editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor_node.SetMaskSegmentID(lung_mask_id)
    editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    display = lesion_node.GetDisplayNode()
    if display is not None:
        display.SetSegmentVisibility(lung_mask_id, False)


def configure_lung_mask_editing(editor_node, lesion_node, volume_node) -> None:
    """The explicit step to extend the lung mask where it missed dense consolidation (no masking)."""
    lung_mask_id = segment_id(lesion_node, terminology.LUNG_MASK)
    editor_node.SetAndObserveSegmentationNode(lesion_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    editor_node.SetSelectedSegmentID(lung_mask_id)
    editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    if lesion_node.GetDisplayNode() is not None:
        lesion_node.GetDisplayNode().SetSegmentVisibility(lung_mask_id, True)


def configure_lobe_editing(editor_node, anatomy_node, volume_node) -> None:
    """The explicit lobe correction step: the anatomy node, lobes overwrite each other, nothing else."""
    editor_node.SetAndObserveSegmentationNode(anatomy_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)


def mark_read_only(anatomy_node) -> None:
    """The anatomy node: never offered to the lesion editor, not pickable in views."""
    anatomy_node.SetAttribute(READ_ONLY_ATTRIBUTE, "1")
    anatomy_node.SetSelectable(False)


def is_read_only(node) -> bool:
    return node.GetAttribute(READ_ONLY_ATTRIBUTE) == "1"


def editable_segmentations(scene=None) -> list:
    """Segmentation nodes the lesion editor may show (read-only anatomy left out)."""
    scene = scene or slicer.mrmlScene
    return [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if not is_read_only(n)]


# --- one-click grow ---------------------------------------------------------------------------------------
def grow_at(volume_node, lesion_node, ijk: tuple[int, int, int], *, window: tuple[float, float] | str,
            radius_mm: float) -> regiongrow.GrowResult:
    """The region a click at voxel ``ijk`` (VTK i, j, k) adds, inside the Lung mask (read in the box only)."""
    from COVIDLesionSegLib import mrml

    hu = slicer.util.arrayFromVolume(volume_node)  # a view, no copy
    try:
        lung_mask_id = segment_id(lesion_node, terminology.LUNG_MASK)
    except ValueError:  # another segmentation: the editor's own masking still applies
        lung_mask_id = ""
    internal = mrml.internal_labelmap(lesion_node, lung_mask_id, volume_node) if lung_mask_id else None

    def allowed(box):
        if internal is None:
            return mrml.segment_mask(lesion_node, lung_mask_id, volume_node)[box]
        view, label, extent = internal
        out = np.zeros(tuple(b.stop - b.start for b in box), bool)
        lo = [max(b.start, e.start) for b, e in zip(box, extent)]
        hi = [min(b.stop, e.stop) for b, e in zip(box, extent)]
        if all(a < b for a, b in zip(lo, hi)):
            src = tuple(slice(a - e.start, b - e.start) for a, b, e in zip(lo, hi, extent))
            dst = tuple(slice(a - b0.start, b - b0.start) for a, b, b0 in zip(lo, hi, box))
            out[dst] = view[src] == label
        return out

    spacing = volume_node.GetSpacing()
    kji = (int(ijk[2]), int(ijk[1]), int(ijk[0]))
    return regiongrow.grow_region(hu, kji, (spacing[2], spacing[1], spacing[0]), window=window,
                                  allowed=allowed if lung_mask_id else None, radius_mm=radius_mm)


def modifier_labelmap(result: regiongrow.GrowResult, volume_node):
    """The grown region as a `vtkOrientedImageData` on the CT's geometry, the box as its extent."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*result.extent_ijk())
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image.SetImageToWorldMatrix(ijk_to_ras)
    array = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array[:] = result.mask.astype(np.uint8).ravel()
    return image


def grow_already_masked(editor_node, segmentation_node) -> bool:
    """True when the editor's editable area is exactly what `grow_at` applied (inside this node's Lung mask, no
    intensity range): the editor may then skip its own masking, a pass over the whole volume per click."""
    try:
        lung_mask_id = segment_id(segmentation_node, terminology.LUNG_MASK)
    except ValueError:
        return False
    return (editor_node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment
            and editor_node.GetMaskSegmentID() == lung_mask_id and not editor_node.GetSourceVolumeIntensityMask())


def apply_grow(editor_logic, lesion_node, result: regiongrow.GrowResult, volume_node) -> None:
    """Add the region to the Lesion segment through `vtkSlicerSegmentEditorLogic` (undo state saved first)."""
    editor_logic.SaveStateForUndo()
    modifier = modifier_labelmap(result, volume_node)
    bypass = grow_already_masked(editor_logic.GetSegmentEditorNode(), lesion_node)
    editor_logic.ModifySegmentByLabelmap(lesion_node, segment_id(lesion_node, terminology.LESION), modifier,
                                         slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
                                         list(result.extent_ijk()), False, bypass)
