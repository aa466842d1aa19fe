"""Live lobe scores on real MRML: paint and undo through vtkSlicerSegmentEditorLogic, the table following each
change and equal to the core scores of the exported label maps; bad states give a message and no numbers."""

from __future__ import annotations

import numpy as np
import pytest

from covidlesionseg import labels
from covidlesionseg.severity import compute_severity


def _paint(case, box, mode="add", bypass_masking=False):
    """A brush-like stroke: a box of voxels through the editor logic (masking inside Lung mask applies)."""
    import slicer
    import vtk
    import vtk.util.numpy_support

    from COVIDLesionSegLib import editor, terminology

    (k0, k1), (j0, j1), (i0, i1) = box
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    matrix = vtk.vtkMatrix4x4()
    case.volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = 1
    case.editor_logic.SaveStateForUndo()
    modes = {"add": slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
             "remove": slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemove}
    lesion_id = editor.segment_id(case.nodes.lesions, terminology.LESION)
    case.editor_logic.ModifySegmentByLabelmap(case.nodes.lesions, lesion_id, image, modes[mode],
                                              [i0, i1 - 1, j0, j1 - 1, k0, k1 - 1], False, bypass_masking)


def _exported_scores(case):
    """Scores of the label maps exported the slow, independent way (Slicer's labelmap export)."""
    import slicer

    from COVIDLesionSegLib import editor, terminology

    seg = case.nodes.lesions
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(seg, editor.segment_id(seg, terminology.LESION), case.volume)
    return compute_severity(case.phantom.ct, lesion > 0, case.phantom.lungs, case.phantom.lobes,
                            lobe_source="truth")


def _table_value(case, region, column):
    table = case.nodes.table.GetTable()
    names = [table.GetColumnByName("Region").GetValue(r) for r in range(table.GetNumberOfRows())]
    return table.GetColumnByName(column).GetValue(names.index(region))


def _lobe_box(case, lobe):
    k, j, i = np.argwhere(case.phantom.lobes == lobe).mean(axis=0).astype(int)
    return (k - 3, k + 3), (j - 5, j + 5), (i - 5, i + 5)


def test_live_scores_start_equal_to_the_core(case):
    truth = compute_severity(case.phantom.ct, case.phantom.lesions, case.phantom.lungs, case.phantom.lobes,
                             lobe_source="truth")
    assert case.live.message == ""
    for key in ("PO", "PHO", "LSS", "LHOS", "CTSS", "CT_category"):
        assert case.live.severity[key] == pytest.approx(truth[key]), key
    assert case.nodes.table.GetNumberOfRows() == 8  # five lobes, two lungs, both lungs
    assert _table_value(case, "both lungs", "Lesion %") == pytest.approx(truth["PO"])


def test_paint_updates_the_table_once_per_burst_and_undo_restores_it(case):
    before = dict(case.live.severity)
    updates = case.live.updates
    rll_before = _table_value(case, "RLL", "Lesion %")
    _paint(case, _lobe_box(case, labels.RLL))
    _paint(case, _lobe_box(case, labels.RLL), "remove")
    _paint(case, _lobe_box(case, labels.RLL))
    assert case.scheduler.pending and case.live.updates == updates  # nothing computed inside the burst
    case.scheduler.flush()
    assert case.live.updates == updates + 1
    after = case.live.severity
    assert after["PO"] > before["PO"]
    assert _table_value(case, "RLL", "Lesion %") > rll_before
    assert _table_value(case, "RUL", "Lesion %") == pytest.approx(before["lobes"]["RUL"]["percent"])
    exported = _exported_scores(case)
    for key in ("PO", "PHO", "LSS", "LHOS", "CTSS", "CT_category"):
        assert after[key] == pytest.approx(exported[key]), key
    assert after["lobes"]["RLL"]["lesion_ml"] == pytest.approx(exported["lobes"]["RLL"]["lesion_ml"])
    case.editor_logic.Undo()
    case.scheduler.flush()
    undone = _exported_scores(case)
    assert case.live.severity["PO"] == pytest.approx(undone["PO"])
    assert case.live.severity["PO"] < after["PO"]


def test_strokes_stay_inside_the_lung_mask(case):
    from COVIDLesionSegLib import editor, mrml, terminology

    k, j, i = np.argwhere(case.phantom.lungs == labels.RIGHT_LUNG).min(axis=0)
    box = ((k, k + 6), (max(j - 6, 0), j + 6), (max(i - 6, 0), i + 6))  # straddles the lung border
    _paint(case, box)
    case.scheduler.flush()
    seg = case.nodes.lesions
    lesion = mrml.segment_mask(seg, editor.segment_id(seg, terminology.LESION), case.volume)
    lung_mask = mrml.segment_mask(seg, editor.segment_id(seg, terminology.LUNG_MASK), case.volume)
    assert not (lesion & ~lung_mask).any()
    assert case.live.message == "" and case.live.severity is not None


def test_explicit_lung_mask_extension_is_scored(case):
    """The reader extends the Lung mask where it missed consolidation; the lesion there then counts."""
    import slicer

    from COVIDLesionSegLib import editor, mrml, terminology

    seg = case.nodes.lesions
    mask_id = editor.segment_id(seg, terminology.LUNG_MASK)
    lung_ml = case.live.severity["lung_ml"]
    mask = mrml.segment_mask(seg, mask_id, case.volume)
    k, j, i = np.argwhere(case.phantom.lungs == labels.LEFT_LUNG).mean(axis=0).astype(int)
    outside = np.argwhere(~mask[k])
    jj, ii = outside[np.argmin(np.abs(outside - [j, i]).sum(axis=1))]  # a voxel just outside the lungs
    added = np.zeros_like(mask)
    added[k - 1:k + 2, jj - 1:jj + 2, ii - 1:ii + 2] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray((mask | added).astype(np.uint8), seg, mask_id, case.volume)
    case.scheduler.flush()
    assert case.live.severity["lung_ml"] > lung_ml
    assert case.live.severity["coverage"]["complete"]


def test_lesion_outside_the_lung_mask_gives_a_message_not_numbers(case):
    k, j, i = np.argwhere(case.phantom.lungs == labels.RIGHT_LUNG).min(axis=0)
    _paint(case, ((k, k + 4), (0, 4), (0, 4)), bypass_masking=True)  # corner of the grid, outside the lungs
    case.scheduler.flush()
    assert case.live.severity is None
    assert "outside the lung mask" in case.live.message
    assert case.nodes.table.GetNumberOfRows() == 0
    assert "outside the lung mask" in case.nodes.table.GetAttribute("COVIDLesionSeg.message")


def test_deleted_segment_stops_scores_until_it_is_back(case):
    from COVIDLesionSegLib import editor, terminology

    segmentation = case.nodes.lesions.GetSegmentation()
    case.editor_logic.SaveStateForUndo()
    segmentation.RemoveSegment(editor.segment_id(case.nodes.lesions, terminology.LESION))
    case.scheduler.flush()
    assert case.live.severity is None and "Lesion" in case.live.message
    assert case.nodes.table.GetNumberOfRows() == 0
    case.editor_logic.Undo()
    case.scheduler.flush()
    assert case.live.severity is not None and case.live.message == ""
    assert case.live.severity["PO"] == pytest.approx(_exported_scores(case)["PO"])


def test_overlapping_or_missing_lobes_give_a_message(case):
    import slicer

    from COVIDLesionSegLib import terminology

    anatomy = case.nodes.anatomy
    segmentation = anatomy.GetSegmentation()
    rul = segmentation.GetSegmentIdBySegmentName(terminology.LOBES[labels.RUL].name)
    rml = segmentation.GetSegmentIdBySegmentName(terminology.LOBES[labels.RML].name)
    rul_mask = slicer.util.arrayFromSegmentBinaryLabelmap(anatomy, rul, case.volume)
    rml_mask = slicer.util.arrayFromSegmentBinaryLabelmap(anatomy, rml, case.volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.maximum(rul_mask, rml_mask), anatomy, rul, case.volume)
    case.scheduler.flush()
    assert case.live.severity is None and "overlap" in case.live.message
    segmentation.RemoveSegment(rul)
    case.scheduler.flush()
    assert case.live.severity is None and "Right upper lobe" in case.live.message


def test_lobes_are_matched_by_terminology_not_order_or_name(case):
    """Renamed and reordered lobe segments still score as their lobes."""
    from COVIDLesionSegLib import terminology

    segmentation = case.nodes.anatomy.GetSegmentation()
    before = case.live.severity
    for index, spec in enumerate(terminology.LOBES.values()):
        segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
        segmentation.GetSegment(segment_id).SetName(f"lobe {index}")
    last = segmentation.GetNthSegmentID(segmentation.GetNumberOfSegments() - 1)
    segmentation.SetSegmentIndex(last, 0)
    case.live.rebuild()
    case.live.update()
    for lobe in labels.LOBE_NAMES.values():
        assert case.live.severity["lobes"][lobe]["lesion_ml"] == pytest.approx(before["lobes"][lobe]["lesion_ml"])


def test_segmentation_on_another_grid_is_refused(case):
    from covidlesionseg.io import Volume
    from COVIDLesionSegLib import mrml

    ct = case.phantom.ct
    half = Volume(ct.array[:, ::2, ::2].copy(), (ct.spacing[0] * 2, ct.spacing[1] * 2, ct.spacing[2]), ct.origin,
                  ct.direction)
    other = mrml.node_from_volume(half, "half")
    case.nodes.lesions.SetReferenceImageGeometryParameterFromVolumeNode(other)
    case.live.update()
    assert case.live.severity is None and "another grid" in case.live.message
