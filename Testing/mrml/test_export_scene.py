"""export_scene: every corrected case of a slicer-core scene into one export folder, each through the single-case
export; uncorrected cases skipped, re-runs make new versions, a broken case reported while the others export."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def two_phantoms():
    from covidlesionseg.phantom import generate_phantom

    return generate_phantom(11, "CT2", shape=(40, 64, 64)), generate_phantom(12, "CT1", shape=(40, 64, 64))


@pytest.fixture
def scene_cases(scene, two_phantoms):
    """Two segmented CTs in one scene, one logic; the second is the parameter node's (current) case."""
    from covidlesionseg.severity import compute_severity
    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    logic = COVIDLesionSegLogic()
    cases = []
    for name, ph in zip(("CT A", "CT B"), two_phantoms, strict=True):
        volume = mrml.node_from_volume(ph.ct, name)
        severity = compute_severity(ph.ct, ph.lesions, ph.lungs, ph.lobes, lobe_source="truth")
        nodes = logic.show_results(volume, ph.lesions, ph.lungs, ph.lobes, {"engine": "truth", **severity})
        cases.append((ph, volume, nodes))
    yield logic, cases
    logic.stop_live()


def correct(ph, volume, nodes) -> np.ndarray:
    """A reader's correction: a block of lung voxels added to the lesion segment; returns the corrected mask."""
    import slicer

    from COVIDLesionSegLib import editor, mrml, terminology

    lesion_id = editor.segment_id(nodes.lesions, terminology.LESION)
    mask = mrml.segment_mask(nodes.lesions, lesion_id, volume)
    free = np.argwhere((ph.lungs > 0) & (ph.lesions == 0))  # lung voxels the engine left unmarked
    k, j, i = free[len(free) // 2]
    block = np.zeros_like(mask)
    block[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] = True
    corrected = mask | (block & (ph.lungs > 0) & (ph.lesions == 0))
    assert corrected.sum() > mask.sum()
    slicer.util.updateSegmentBinaryLabelmapFromArray(corrected.astype(np.uint8), nodes.lesions, lesion_id, volume)
    return corrected


def by_volume(outcomes):
    return {o.volume: o for o in outcomes}


def test_only_corrected_cases_are_exported_and_reruns_make_new_versions(scene_cases, tmp_path):
    import SimpleITK as sitk

    from covidlesionseg import export_store as store

    logic, [(ph_a, vol_a, nodes_a), (_ph_b, vol_b, _nodes_b)] = scene_cases
    assert logic.nodes_for(vol_a) is None  # A is not the parameter node's case: found through its references
    corrected = correct(ph_a, vol_a, nodes_a)
    root = tmp_path / "export"

    first = by_volume(logic.export_scene(root, annotator="reader 1"))
    assert set(first) == {"CT A", "CT B"}
    assert first["CT A"].exported and first["CT A"].version == 1 and first["CT A"].case_id.startswith("case_")
    assert first["CT B"].skipped == "no corrections" and not first["CT B"].exported and first["CT B"].error is None
    assert store.check_export(root) == []
    dataset = json.loads((root / "dataset.json").read_text())
    datalist = json.loads((root / "datalist.json").read_text())
    assert dataset["numTraining"] == 1 and len(datalist["training"]) == 1
    case_a = first["CT A"].case_id
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"{case_a}.nii.gz")))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(first["CT A"].result.paths["original"])))
    assert np.array_equal(label == 2, corrected)
    assert np.array_equal(original == 2, ph_a.lesions > 0)  # the engine's lesions of this CT, not the current's
    provenance = json.loads(first["CT A"].result.paths["provenance"].read_text())
    assert provenance["annotator"] == "reader 1" and "CT A" not in json.dumps(provenance)

    second = by_volume(logic.export_scene(root))
    assert second["CT A"].case_id == case_a and second["CT A"].version == 2
    assert second["CT B"].skipped == "no corrections"
    assert sorted(p.name for p in (root / "versions" / case_a).iterdir()) == ["v0001", "v0002"]
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 1
    assert store.check_export(root) == []

    everything = by_volume(logic.export_scene(root, only_corrected=False))
    assert everything["CT A"].version == 3 and everything["CT B"].version == 1
    assert everything["CT B"].case_id != case_a
    dataset = json.loads((root / "dataset.json").read_text())
    datalist = json.loads((root / "datalist.json").read_text())
    assert dataset["numTraining"] == 2 and len(datalist["training"]) == 2
    assert {p.name for p in (root / "labelsTr").iterdir()} == {f"{case_a}.nii.gz",
                                                                f"{everything['CT B'].case_id}.nii.gz"}
    assert store.check_export(root) == []


def test_a_broken_case_is_reported_and_the_others_are_exported(scene, scene_cases, tmp_path):
    from covidlesionseg import export_store as store

    logic, [(ph_a, vol_a, nodes_a), (ph_b, vol_b, nodes_b)] = scene_cases
    correct(ph_a, vol_a, nodes_a)
    correct(ph_b, vol_b, nodes_b)
    root = tmp_path / "export"
    scene.RemoveNode(nodes_a.anatomy)  # A's lungs/lobes gone: A cannot be exported

    outcomes = by_volume(logic.export_scene(root))
    assert not outcomes["CT A"].exported and "lungs/lobes" in outcomes["CT A"].error
    assert outcomes["CT B"].exported and outcomes["CT B"].version == 1
    assert [p.name for p in (root / "versions").iterdir()] == [outcomes["CT B"].case_id]  # nothing of A written
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 1
    assert store.check_export(root) == []

    scene.RemoveNode(nodes_a.lesions)  # A's lesion node gone: A is no longer a segmented case
    outcomes = by_volume(logic.export_scene(root, only_corrected=False))
    assert outcomes["CT A"].skipped.startswith("not segmented") and outcomes["CT A"].error is None
    assert outcomes["CT B"].version == 2
    assert store.check_export(root) == []

    scene.RemoveNode(vol_b)  # B's CT gone, its lesion node left: reported, nothing exported for it
    outcomes = logic.export_scene(root)
    assert [o.volume for o in outcomes] == ["CT A", None]
    assert "CT is no longer in the scene" in outcomes[1].skipped and not outcomes[1].exported
    assert store.check_export(root) == []


def test_corrections_are_found_after_the_scene_is_saved_and_loaded_again(scene, scene_cases, tmp_path):
    import SimpleITK as sitk
    import slicer
    from test_session import _save_and_reload

    from covidlesionseg import export_store as store
    from COVIDLesionSegLib import editor, mrml, terminology
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    logic, [(ph_a, vol_a, nodes_a), (_ph_b, vol_b, nodes_b)] = scene_cases
    corrected = correct(ph_a, vol_a, nodes_a)
    # B: a stroke that changes nothing (an edit undone) is no correction
    lesion_id = editor.segment_id(nodes_b.lesions, terminology.LESION)
    same = mrml.segment_mask(nodes_b.lesions, lesion_id, vol_b)
    slicer.util.updateSegmentBinaryLabelmapFromArray(same.astype(np.uint8), nodes_b.lesions, lesion_id, vol_b)
    _save_and_reload(scene, tmp_path)

    outcomes = by_volume(COVIDLesionSegLogic().export_scene(tmp_path / "export"))
    assert outcomes["CT B"].skipped == "no corrections"
    assert outcomes["CT A"].version == 1
    label = outcomes["CT A"].result.paths["label"]
    assert "original" in outcomes["CT A"].result.paths  # A's references to its nodes survived the reload
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(label))) == 2, corrected)
    assert store.check_export(tmp_path / "export") == []


def test_a_scene_saved_before_the_case_references_still_exports_its_cases(scene_cases, tmp_path):
    import SimpleITK as sitk

    from COVIDLesionSegLib.logic import CASE_REFERENCES

    logic, [(ph_a, vol_a, nodes_a), _b] = scene_cases
    corrected = correct(ph_a, vol_a, nodes_a)
    for reference in CASE_REFERENCES.values():  # what an older scene's lesion node holds: only its CT
        nodes_a.lesions.RemoveNodeReferenceIDs(reference)
    found = logic.case_nodes(nodes_a.lesions)
    assert found.anatomy is nodes_a.anatomy and found.original is None and found.table is None

    outcomes = by_volume(logic.export_scene(tmp_path / "export"))
    assert outcomes["CT B"].skipped == "no corrections"  # B is the parameter node's case, found through it
    paths = outcomes["CT A"].result.paths
    assert outcomes["CT A"].version == 1 and "original" not in paths  # the engine's lesions are then unknown
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["label"]))) == 2, corrected)
