"""The module's logic on real MRML (slicer-core): nodes, geometry, segmentation, rescoring, subprocess path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from covidlesionseg import io, labels
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


def test_segment_builds_nodes_and_rescoring_follows_edits(scene, small_phantom):
    import slicer

    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    node = mrml.node_from_volume(ph.ct, "ct")
    logic = COVIDLesionSegLogic()
    nodes = logic.segment(node, engine="classical", lobes="none")
    seg = nodes.lesions.GetSegmentation()
    lesion_id = seg.GetSegmentIdBySegmentName("Lesion")
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(nodes.lesions, lesion_id, node) > 0
    assert lesion.any()
    assert nodes.severity["lobe_source"] == "none" and nodes.severity["LSS"] is None
    assert nodes.table.GetNumberOfRows() == 3
    assert nodes.anatomy.GetSegmentation().GetNumberOfSegments() == 2
    # Paint a block inside the right lung: rescoring must equal the full computation on the edited mask.
    lungs = mrml.labelmap_from_segments(nodes.anatomy, ["Right lung", "Left lung"], node)
    k, j, i = np.argwhere(lungs == labels.RIGHT_LUNG).mean(axis=0).astype(int)
    edited = lesion.copy()
    edited[k - 3:k + 3, j - 4:j + 4, i - 4:i + 4] |= lungs[k - 3:k + 3, j - 4:j + 4, i - 4:i + 4] > 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), nodes.lesions, lesion_id, node)
    before = nodes.severity["PO"]
    after = logic.rescore(node, nodes)
    expected = compute_severity(ph.ct, edited, lungs, None, lobe_source="none")
    assert after["PO"] == pytest.approx(expected["PO"]) and after["PO"] > before
    table_po = nodes.table.GetTable().GetColumnByName("Lesion %").GetValue(2)
    assert table_po == pytest.approx(after["PO"])


def test_lobes_in_anatomy_node_give_lobe_scores(scene, small_phantom):
    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    node = mrml.node_from_volume(ph.ct, "ct")
    logic = COVIDLesionSegLogic()
    nodes = logic.show_results(node, ph.lesions, ph.lungs, ph.lobes,
                               {"engine": "truth", "model": {"sha256": None}, **compute_severity(
                                   ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")})
    assert nodes.anatomy.GetSegmentation().GetNumberOfSegments() == 5
    rescored = logic.rescore(node, nodes)
    truth = compute_severity(ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")
    for key in ("PO", "PHO", "LSS", "CTSS", "CT_category"):
        assert rescored[key] == pytest.approx(truth[key]), key
    assert rescored["lobe_source"] == "segmentation"
    assert nodes.table.GetNumberOfRows() == 8


def test_subprocess_path_matches_in_process(scene, small_phantom, tmp_path):
    import slicer

    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    node = mrml.node_from_volume(small_phantom.ct, "ct")
    logic = COVIDLesionSegLogic()
    ct_path = logic.write_input(node, str(tmp_path / "ct.nrrd"))
    cmd = logic.segmentation_command(ct_path, str(tmp_path / "out"), engine="classical", lobes="none")
    env = logic.segmentation_environment()
    core_dir = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (core_dir / "covidlesionseg" / "__init__.py").is_file()
    assert (core_dir / "COVIDLesionSeg.py").is_file()  # the module folder, which PythonSlicer lacks on its path
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env})
    fractions = [float(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("PROGRESS ")]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    loaded = logic.load_results(node, str(tmp_path / "out"))
    direct = logic.segment(node, engine="classical", lobes="none")
    a = slicer.util.arrayFromSegmentBinaryLabelmap(
        loaded.lesions, loaded.lesions.GetSegmentation().GetSegmentIdBySegmentName("Lesion"), node)
    b = slicer.util.arrayFromSegmentBinaryLabelmap(
        direct.lesions, direct.lesions.GetSegmentation().GetSegmentIdBySegmentName("Lesion"), node)
    assert np.array_equal(a, b)
    assert loaded.severity["PO"] == pytest.approx(direct.severity["PO"])


def test_module_self_test_runs_headless(scene):
    import COVIDLesionSeg

    result = COVIDLesionSeg.COVIDLesionSegTest("test_segment_generated_ct").run()
    assert result.wasSuccessful(), result.failures + result.errors
