"""A session that survives: parameter node links, scene save/load round trip with live scores, terminology,
read-only anatomy, the editor set up for lesion correction, one-click grow with undo, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidlesionseg import labels


def _save_and_reload(scene, tmp_path):
    """Save the scene as a Slicer data bundle folder, clear it, load it back (what Save / Load Scene do)."""
    import slicer

    app_logic = slicer.app.applicationLogic()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrml_file = next(bundle.glob("*.mrml"))
    scene.Clear(0)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    scene.SetURL(str(mrml_file))
    assert scene.Import()


def test_scene_round_trip_restores_links_and_live_scores(case, tmp_path):
    import slicer

    from COVIDLesionSegLib.live import ManualScheduler
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic
    from COVIDLesionSegLib.parameters import Parameters

    case.logic.parameters.set("engine", "classical")
    case.logic.parameters.set("lobeSource", "none")
    before = case.live.severity
    case.logic.stop_live()
    _save_and_reload(case.volume.GetScene(), tmp_path)

    params = Parameters(slicer.mrmlScene)
    assert params.get("engine") == "classical" and params.get("lobeSource") == "none"
    logic = COVIDLesionSegLogic()
    volume = params.node_for("inputVolume")
    nodes = logic.nodes_for(volume)
    assert nodes is not None and volume.GetName() == "CT"
    assert nodes.anatomy.GetSegmentation().GetNumberOfSegments() == 5
    assert nodes.original is not None and nodes.chart is not None
    assert json.loads(nodes.table.GetAttribute("COVIDLesionSeg.severity"))["PO"] == pytest.approx(before["PO"])
    scheduler = ManualScheduler()
    live = logic.start_live(scheduler)
    assert live.message == ""
    for key in ("PO", "PHO", "LSS", "CTSS", "CT_category"):
        assert live.severity[key] == pytest.approx(before[key]), key
    # and it follows edits after the reload
    seg = nodes.lesions
    lesion_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros(case.phantom.ct.shape, np.uint8), seg, lesion_id,
                                                     volume)
    scheduler.flush()
    assert live.severity["PO"] == 0.0 and nodes.table.GetTable().GetColumnByName("Lesion %").GetValue(7) == 0.0
    logic.stop_live()


def test_parameter_node_is_one_per_scene_and_checks_values(scene):
    from COVIDLesionSegLib.parameters import Parameters

    a, b = Parameters(scene), Parameters(scene)
    assert a.node is b.node and scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1
    with pytest.raises(ValueError, match="device must be one of"):
        a.set("device", "gpu")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="must be a vtkMRMLSegmentationNode"):
        a.set_node("lesions", volume)


def test_segments_carry_names_colours_and_snomed_terminology(case):
    import slicer

    from COVIDLesionSegLib import anatomy, terminology

    lesion_segments = {name: entry for _id, name, entry in anatomy.segments_of(case.nodes.lesions)}
    assert set(lesion_segments) == {"Lesion", "Background", "Lung mask"}
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(lesion_segments["Lesion"], entry)
    assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
    assert entry.GetTypeObject().GetCodeValue() == "52988006"
    lobe_codes = {terminology.type_code_of(e) for _i, _n, e in anatomy.segments_of(case.nodes.anatomy)}
    assert lobe_codes == {spec.type_code for spec in terminology.LOBES.values()}
    color = case.nodes.lesions.GetSegmentation().GetSegment(
        case.nodes.lesions.GetSegmentation().GetSegmentIdBySegmentName("Lesion")).GetColor()
    assert color == pytest.approx(terminology.LESION.color)


def test_anatomy_is_read_only_and_the_editor_is_set_for_lesions(case):
    import slicer

    from COVIDLesionSegLib import editor, terminology

    assert editor.is_read_only(case.nodes.anatomy) and not case.nodes.anatomy.GetSelectable()
    assert case.nodes.anatomy not in editor.editable_segmentations()
    assert case.nodes.lesions in editor.editable_segmentations()
    node = case.editor_node
    assert node.GetSegmentationNode() is case.nodes.lesions and node.GetSourceVolumeNode() is case.volume
    assert node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment
    assert node.GetMaskSegmentID() == editor.segment_id(case.nodes.lesions, terminology.LUNG_MASK)
    assert node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteNone
    lung_mask = editor.segment_id(case.nodes.lesions, terminology.LUNG_MASK)
    assert not case.nodes.lesions.GetDisplayNode().GetSegmentVisibility(lung_mask)  # Grow from seeds ignores it
    editor.configure_lobe_editing(node, case.nodes.anatomy, case.volume)
    assert node.GetSegmentationNode() is case.nodes.anatomy
    assert node.GetOverwriteMode() == slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments


def test_one_click_grow_adds_a_bounded_region_inside_the_lungs_with_undo(case):
    from COVIDLesionSegLib import editor, mrml, terminology

    seg, ct = case.nodes.lesions, case.phantom.ct
    lesion_id = editor.segment_id(seg, terminology.LESION)
    lesion = mrml.segment_mask(seg, lesion_id, case.volume)
    k, j, i = np.argwhere(case.phantom.lesions == labels.LESION_LOW)[0]
    removed = lesion.copy()
    removed[max(k - 4, 0):k + 5, max(j - 8, 0):j + 9, max(i - 8, 0):i + 9] = False
    import slicer

    slicer.util.updateSegmentBinaryLabelmapFromArray(removed.astype(np.uint8), seg, lesion_id, case.volume)
    case.scheduler.flush()
    po_removed = case.live.severity["PO"]
    result = editor.grow_at(case.volume, seg, (i, j, k), window="any opacity", radius_mm=12.0)
    assert result.voxels > 1
    assert editor.grow_already_masked(case.editor_node, seg)  # the editor may skip re-masking the volume
    case.editor_node.SetSourceVolumeIntensityMask(True)
    assert not editor.grow_already_masked(case.editor_node, seg)
    case.editor_node.SetSourceVolumeIntensityMask(False)
    editor.apply_grow(case.editor_logic, seg, result, case.volume)
    case.scheduler.flush()
    grown = mrml.segment_mask(seg, lesion_id, case.volume)
    added = grown & ~removed
    assert added.sum() == result.voxels and added[k, j, i]
    lung_mask = mrml.segment_mask(seg, editor.segment_id(seg, terminology.LUNG_MASK), case.volume)
    assert not (added & ~lung_mask).any()
    box = np.zeros_like(added)
    box[result.box] = True
    assert not (added & ~box).any()
    half = np.ceil(12.0 / np.asarray(ct.spacing_zyx)) + 1
    assert all(s.stop - s.start <= 2 * h + 1 for s, h in zip(result.box, half))
    assert case.live.severity["PO"] > po_removed
    case.editor_logic.Undo()
    case.scheduler.flush()
    assert np.array_equal(mrml.segment_mask(seg, lesion_id, case.volume), removed)
    assert case.live.severity["PO"] == pytest.approx(po_removed)


def test_grow_refuses_clicks_outside_the_window_or_the_lungs(case):
    from covidlesionseg.io import InputError
    from COVIDLesionSegLib import editor

    with pytest.raises(InputError, match="outside the lung mask"):
        editor.grow_at(case.volume, case.nodes.lesions, (0, 0, 0), window="any opacity", radius_mm=10.0)
    k, j, i = np.argwhere((case.phantom.lungs > 0) & (case.phantom.ct.array < -850))[0]
    with pytest.raises(InputError, match="outside the window"):
        editor.grow_at(case.volume, case.nodes.lesions, (i, j, k), window="ground glass", radius_mm=10.0)


def test_export_writes_the_corrected_case_beside_the_original(case, tmp_path):
    import SimpleITK as sitk

    from COVIDLesionSegLib import editor, mrml, terminology

    seg = case.nodes.lesions
    lesion_id = editor.segment_id(seg, terminology.LESION)
    k, j, i = np.argwhere(case.phantom.lobes == labels.RLL).mean(axis=0).astype(int)
    import slicer

    corrected = mrml.segment_mask(seg, lesion_id, case.volume)
    corrected[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] &= case.phantom.lungs[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] > 0
    corrected[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] |= case.phantom.lungs[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] > 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(corrected.astype(np.uint8), seg, lesion_id, case.volume)
    result = case.logic.export(tmp_path / "export", annotator="reader 1")
    assert result.version == 1 and result.case_id
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(result.paths["label"])))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(result.paths["original"])))
    assert np.array_equal(label == 2, corrected)
    assert np.array_equal(original == 2, case.phantom.lesions > 0)  # the engine's lesions, kept beside
    assert not np.array_equal(label == 2, original == 2)


def test_running_again_keeps_corrections_unless_replacing(case):
    ph = case.phantom
    assert not case.logic.has_corrections(case.volume)
    import slicer

    from COVIDLesionSegLib import editor, terminology

    seg = case.nodes.lesions
    lesion_id = editor.segment_id(seg, terminology.LESION)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros(ph.ct.shape, np.uint8), seg, lesion_id, case.volume)
    assert case.logic.has_corrections(case.volume)
    severity = dict(case.nodes.severity)
    kept = case.logic.show_results(case.volume, ph.lesions, ph.lungs, ph.lobes, severity)
    assert kept.lesions is not seg  # script: new nodes
    replaced = case.logic.show_results(case.volume, ph.lesions, ph.lungs, ph.lobes, severity, replace=True)
    assert replaced.lesions is kept.lesions and replaced.table is kept.table


def test_case_nodes_sit_under_the_ct_study_in_the_subject_hierarchy(scene, small_phantom):
    import slicer

    from covidlesionseg.severity import compute_severity
    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ph = small_phantom
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Chest CT study")
    volume = mrml.node_from_volume(ph.ct, "CT")
    sh.CreateItem(study, volume)
    severity = compute_severity(ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")
    nodes = COVIDLesionSegLogic().show_results(volume, ph.lesions, ph.lungs, ph.lobes, severity)
    for node in (nodes.lesions, nodes.anatomy, nodes.original, nodes.table, nodes.chart):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study, node.GetName()


def test_scene_close_leaves_no_live_scores_or_stale_links(case):
    import slicer

    case.volume.GetScene().Clear(0)
    assert case.logic.nodes_for(None) is None
    assert case.logic.start_live(case.scheduler) is None and case.logic.live is None
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1  # a fresh parameter node
    assert case.logic.parameters.get("engine") == "classical"
