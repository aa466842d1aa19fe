"""The module's logic on real MRML (slicer-core): nodes, geometry, segmentation, rescoring, subprocess path."""

from __future__ import annotations

import numpy as np
import pytest

from covidlesionseg import io
from covidlesionseg.severity import compute_severity

OBLIQUE = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), OBLIQUE])
def test_volume_node_round_trip_keeps_lps_geometry(scene, direction):
    import slicer
    import vtk

    from COVIDLesionSegLib import mrml

    vol = io.Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0),
                    direction)
    node = mrml.node_from_volume(vol, "ct")
    back = mrml.volume_from_node(node)
    assert back.same_geometry(vol) and np.array_equal(back.array, vol.array)
    # A voxel's RAS position in MRML is its LPS position with x and y negated.
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = m.MultiplyPoint((5, 4, 3, 1))[:3]
    lps = vol.lps_points(np.array([[3, 4, 5]]))[0]
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1


def test_segment_without_lobes_builds_the_case_nodes(scene, small_phantom):
    from COVIDLesionSegLib import anatomy, mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    node = mrml.node_from_volume(ph.ct, "ct")
    logic = COVIDLesionSegLogic()
    nodes = logic.segment(node, engine="classical", lobes="none")
    assert nodes.severity["lobe_source"] == "none" and nodes.severity["LSS"] is None
    assert nodes.table.GetNumberOfRows() == 3
    assert [name for _i, name, _e in anatomy.segments_of(nodes.anatomy)] == ["Right lung", "Left lung"]
    assert [name for _i, name, _e in anatomy.segments_of(nodes.lesions)] == ["Lesion", "Background", "Lung mask"]
    rescored = logic.rescore(node, nodes)
    assert rescored["PO"] == pytest.approx(nodes.severity["PO"])
    assert nodes.original.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()


def test_rescore_with_lobes_equals_the_core(scene, small_phantom):
    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    node = mrml.node_from_volume(ph.ct, "ct")
    logic = COVIDLesionSegLogic()
    truth = compute_severity(ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")
    nodes = logic.show_results(node, ph.lesions, ph.lungs, ph.lobes, {"engine": "truth", **truth})
    assert nodes.anatomy.GetSegmentation().GetNumberOfSegments() == 5
    rescored = logic.rescore(node, nodes)
    for key in ("PO", "PHO", "LSS", "LHOS", "CTSS", "CT_category"):
        assert rescored[key] == pytest.approx(truth[key]), key
    assert nodes.table.GetNumberOfRows() == 8


def test_module_self_test_runs_headless(scene):
    import COVIDLesionSeg

    result = COVIDLesionSeg.COVIDLesionSegTest("test_run_edit_undo_export").run()
    assert result.wasSuccessful(), result.failures + result.errors


def test_lobes_from_a_segmentation_in_the_scene(scene, small_phantom):
    from COVIDLesionSegLib import mrml, terminology
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    node = mrml.node_from_volume(ph.ct, "ct")
    lobes_node = mrml.segmentation_from_labelmap(ph.lobes, node, list(terminology.LOBES.items()), "reader lobes")
    logic = COVIDLesionSegLogic()
    nodes = logic.segment(node, engine="classical", lobes="segmentation", lobe_segmentation=lobes_node)
    assert nodes.severity["lobe_source"].startswith("file")
    assert nodes.table.GetNumberOfRows() == 8 and nodes.severity["LSS"] is not None
    with pytest.raises(ValueError, match="choose the segmentation"):
        logic.segment(node, engine="classical", lobes="segmentation")
