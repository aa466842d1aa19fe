"""The exported .seg.nrrd read by Slicer's own segmentation storage node (slicer-core): names, terminology, voxels."""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from covidlesionseg import labels
from covidlesionseg.export import export_case

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def reference_node(scene, ct):
    """A scalar volume node on the CT's grid (Slicer is RAS inside, files are LPS)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(ct.array))
    matrix = vtk.vtkMatrix4x4()
    linear = RAS_FROM_LPS @ ct.direction @ np.diag(ct.spacing)
    origin = RAS_FROM_LPS @ np.asarray(ct.origin)
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, linear[r, c])
        matrix.SetElement(r, 3, origin[r])
    node.SetIJKToRASMatrix(matrix)
    return node


def test_slicer_reads_exported_segments_with_names_terminology_and_voxels(scene, small_phantom, tmp_path):
    p = small_phantom
    final = (p.lesions > 0).astype(np.uint8)
    final[:, :, :30] = 0
    result = export_case(tmp_path / "exp", p.ct, p.lesions, final, lungs=p.lungs, lobes=p.lobes)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(result.paths["seg_nrrd"]))
    assert storage.ReadData(segmentation_node) == 1
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    names = [segmentation.GetNthSegment(n).GetName() for n in range(3)]
    assert names == ["Right lung", "Left lung", "Lesion"]
    lesion = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Lesion"))
    entry = vtk.reference("")
    assert lesion.GetTag(lesion.GetTerminologyEntryTagName(), entry)
    assert "SCT^52988006^Lesion" in str(entry) and "SCT^49755003^Morphologically Altered Structure" in str(entry)
    reference = reference_node(scene, p.ct)
    lungs_after = None
    for name, expected in (("Lesion", final > 0), ("Right lung", None), ("Left lung", None)):
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference)
        if expected is not None:
            assert np.array_equal(array > 0, expected)
        else:
            side = labels.RIGHT_LUNG if name == "Right lung" else labels.LEFT_LUNG
            lungs_after = (lungs_after if lungs_after is not None else 0) + (array > 0)
            assert np.count_nonzero((array > 0) & (p.lungs == side)) >= 0.99 * np.count_nonzero(p.lungs == side)
    assert lungs_after is not None and np.all(lungs_after[final > 0])  # lungs contain the lesions
