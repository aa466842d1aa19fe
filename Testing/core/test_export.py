"""Export of corrected cases: nnU-Net v2 raw layout, MONAI datalist, versions, provenance, .seg.nrrd, crash safety.

Generated CT (small grids); the crash and concurrency tests run real ``covidlesionseg export`` subprocesses
and kill them with SIGKILL at named points of the export.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidlesionseg import export_store as store
from covidlesionseg import io, labels
from covidlesionseg.cli import main
from covidlesionseg.export import export_case, export_files, export_folder
from covidlesionseg.phantom import generate_phantom

SHAPE = (24, 64, 64)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def phantoms():
    return {seed: generate_phantom(seed, "CT2", shape=SHAPE) for seed in (3, 5)}


def corrected(phantom, seed: int = 0) -> np.ndarray:
    """A reader's correction: lesions removed in the patient's right half of the grid, a block added elsewhere."""
    final = (phantom.lesions > 0).astype(np.uint8)
    final[:, :, : SHAPE[2] // 3] = 0
    rng = np.random.default_rng(seed)
    k, j = int(rng.integers(8, 16)), int(rng.integers(24, 36))
    block = np.zeros(SHAPE, bool)
    block[k: k + 3, j: j + 6, 40:46] = True
    final[block & (phantom.lungs > 0)] = 1
    return final


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted((root / store.VERSIONS_DIR).rglob("*")) if p.is_file()}


def write_case(folder: Path, phantom, final: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    io.write_ct(folder / labels.CT_FILE, phantom.ct)
    io.write_label(folder / labels.LESIONS_FILE, phantom.ct, phantom.lesions)
    io.write_label(folder / labels.LUNGS_FILE, phantom.ct, phantom.lungs)
    io.write_label(folder / labels.LOBES_FILE, phantom.ct, phantom.lobes)
    io.write_label(folder / "lesions_final.nii.gz", phantom.ct, final)
    io.write_json(folder / labels.SEVERITY_FILE, {"engine": "classical", "model": {"id": "classical", "sha256": None}})
    return folder


def test_export_writes_nnunet_raw_layout_and_monai_datalist(phantoms, tmp_path):
    from monai.data import load_decathlon_datalist

    p = phantoms[3]
    final = corrected(p)
    result = export_case(tmp_path / "exp", p.ct, p.lesions, final, lungs=p.lungs, lobes=p.lobes,
                         engine={"id": "classical"}, annotator="reader A")
    root = tmp_path / "exp"
    cid = result.case_id
    assert result.version == 1 and cid.startswith("case_")
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "lung": 1, "lesion": 2} and dataset["numTraining"] == 1
    image = root / "imagesTr" / f"{cid}_0000.nii.gz"
    label_path = root / "labelsTr" / f"{cid}.nii.gz"
    ct = io.read_ct(image)
    assert ct.same_geometry(p.ct) and np.array_equal(ct.array, p.ct.array.astype(np.int16))
    label = io.read_label(label_path, ct).array
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert np.array_equal(label == 2, final > 0)  # lesion wins over lung
    assert np.all(label[p.lungs > 0] > 0)  # every lung voxel is lung or lesion
    original = io.read_label(root / "labelsOriginal" / f"{cid}.nii.gz", ct).array
    assert np.array_equal(original == 2, p.lesions > 0)
    entries = load_decathlon_datalist(str(root / "datalist.json"), is_segmentation=True, data_list_key="training")
    assert [Path(e["image"]).resolve() for e in entries] == [image.resolve()]
    assert Path(entries[0]["label"]).resolve() == label_path.resolve() and entries[0]["fold"] in range(5)
    splits = json.loads((root / "splits_final.json").read_text())
    assert len(splits) == 5 and sum(len(s["val"]) for s in splits) == 1
    assert store.check_export(root) == []


def test_reexport_makes_a_new_version_and_the_views_hold_the_latest(phantoms, tmp_path):
    p = phantoms[3]
    root = tmp_path / "exp"
    first = export_case(root, p.ct, p.lesions, corrected(p, 1), lungs=p.lungs, lobes=p.lobes)
    v1 = version_hashes(root)
    second = export_case(root, p.ct, p.lesions, corrected(p, 2), lungs=p.lungs, lobes=p.lobes)
    assert (first.case_id, first.version) == (second.case_id, 1) and second.version == 2
    assert all(version_hashes(root)[name] == digest for name, digest in v1.items())  # version 1 untouched
    label_view = root / "labelsTr" / f"{second.case_id}.nii.gz"
    assert os.path.samefile(label_view, second.paths["label"])
    assert not os.path.samefile(label_view, first.paths["label"])
    assert os.path.samefile(first.paths["image"], second.paths["image"])  # the same CT is stored once
    datalist = json.loads((root / "datalist.json").read_text())
    assert [(e["case_id"], e["version"]) for e in datalist["training"]] == [(second.case_id, 2)]
    assert len(list((root / "labelsTr").iterdir())) == 1
    assert all(path.stat().st_mode & 0o222 == 0 for path in first.paths["version"].iterdir())  # read-only
    orphan = root / "labelsTr" / f".{second.case_id}.nii.gz.99999-abc123"  # a killed export's link temporary
    orphan.write_bytes(b"")
    store.recover(root)
    assert not orphan.exists() and store.check_export(root) == []


def test_provenance_records_engine_edits_and_severity(phantoms, tmp_path):
    p = phantoms[5]
    original = p.lesions > 0
    final = corrected(p, 3) > 0
    result = export_case(tmp_path / "exp", p.ct, p.lesions, final, lungs=p.lungs, lobes=p.lobes,
                         engine={"id": "classical", "version": "1"}, annotator="reader B")
    prov = json.loads(result.paths["provenance"].read_text())
    assert prov["software"]["name"] == "COVIDLesionSeg" and prov["annotator"] == "reader B"
    assert prov["engine"]["id"] == "classical" and prov["engine"]["sha256"] is None
    edits = prov["edits"]
    expected_dice = 2 * np.count_nonzero(original & final) / (np.count_nonzero(original) + np.count_nonzero(final))
    assert edits["dice_original_final"] == pytest.approx(expected_dice, abs=1e-6)
    hu, voxel_ml = p.ct.array, p.ct.voxel_ml
    for key, mask in (("added_ml", final & ~original), ("removed_ml", original & ~final)):
        assert edits[key]["1"] == pytest.approx(np.count_nonzero(mask & (hu < -200)) * voxel_ml, abs=1e-3)
        assert edits[key]["2"] == pytest.approx(np.count_nonzero(mask & (hu >= -200)) * voxel_ml, abs=1e-3)
    assert edits["added_ml"]["1"] + edits["added_ml"]["2"] > 0 and edits["removed_ml"]["1"] > 0
    lung_voxels = np.count_nonzero(p.lungs > 0)
    assert prov["severity"]["before"]["PO"] == pytest.approx(100 * np.count_nonzero(original) / lung_voxels, abs=0.01)
    assert prov["severity"]["after"]["PO"] == pytest.approx(100 * np.count_nonzero(final) / lung_voxels, abs=0.01)
    assert prov["severity"]["after"]["LSS"] is not None
    for name, digest in prov["files"].items():
        assert sha256(result.paths["version"] / name) == digest


def test_no_patient_identifiers_unless_asked(phantoms, tmp_path):
    p = phantoms[3]
    ct = p.ct.like(p.ct.array)
    ct.meta.update({"patient_name": "DOE^JANE", "patient_id": "PID-778899", "study_uid": "1.2.3.4.5.6789",
                    "source": str(tmp_path / "DOE_JANE" / "ct.nii.gz")})
    root = tmp_path / "exp"
    export_case(root, ct, p.lesions, corrected(p), lungs=p.lungs, lobes=p.lobes)
    secrets = (b"DOE", b"PID-778899", b"1.2.3.4.5.6789")
    for path in root.rglob("*"):
        assert not any(s.decode() in path.name for s in secrets)
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                import gzip

                data = gzip.decompress(data)
            assert not any(s in data for s in secrets), path
    ident = tmp_path / "ident"
    result = export_case(ident, ct, p.lesions, corrected(p), lungs=p.lungs, lobes=p.lobes, include_identifiers=True)
    prov = json.loads(result.paths["provenance"].read_text())
    assert prov["identifiers"]["patient_id"] == "PID-778899"
    assert not any("DOE" in path.name for path in ident.rglob("*"))


def test_patient_key_is_hashed_and_keeps_a_patient_in_one_fold(phantoms, tmp_path):
    root = tmp_path / "exp"
    results = [export_case(root, phantoms[seed].ct, None, corrected(phantoms[seed]), lungs=phantoms[seed].lungs,
                           patient_key="MRN-4711") for seed in (3, 5)]
    entries = json.loads((root / "datalist.json").read_text())["training"]
    assert len(entries) == 2 and len({e["fold"] for e in entries}) == 1
    assert len({e["patient_key"] for e in entries}) == 1 and "4711" not in entries[0]["patient_key"]
    assert results[0].case_id != results[1].case_id
    assert "original" not in results[0].paths and not (root / "labelsOriginal").exists()


def test_seg_nrrd_has_slicer_segment_fields_and_the_labels(phantoms, tmp_path):
    p = phantoms[3]
    final = corrected(p)
    result = export_case(tmp_path / "exp", p.ct, p.lesions, final, lungs=p.lungs, lobes=p.lobes)
    image = sitk.ReadImage(str(result.paths["seg_nrrd"]))  # ITK's own NRRD reader
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    names = [meta[f"Segment{n}_Name"] for n in range(3)]
    assert names == ["Right lung", "Left lung", "Lesion"]
    assert "SCT^52988006^Lesion" in meta["Segment2_Tags"] and "SCT^3341006^Right lung" in meta["Segment0_Tags"]
    assert meta["Segment2_Tags"].startswith("Segmentation.Status:completed|TerminologyEntry:")
    assert (meta["Segment0_Layer"], meta["Segment1_Layer"], meta["Segment2_Layer"]) == ("0", "0", "1")
    assert image.GetNumberOfComponentsPerPixel() == 2
    assert np.allclose(image.GetSpacing(), p.ct.spacing, atol=1e-4)
    assert np.allclose(image.GetOrigin(), p.ct.origin, atol=1e-4)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), p.ct.direction, atol=1e-6)
    layers = sitk.GetArrayFromImage(image)  # (k, j, i, layer)
    label = io.read_label(result.paths["label"], p.ct).array
    lungs = io.read_label(result.paths["lobes"], p.ct).array > 0
    assert np.array_equal(layers[..., 1] == 1, final > 0)
    assert np.array_equal(layers[..., 0] > 0, label > 0) and np.array_equal(layers[..., 0] > 0, lungs)
    extent = [int(v) for v in meta["Segment2_Extent"].split()]
    k, j, i = np.nonzero(final)
    assert extent == [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]


@pytest.mark.parametrize("bad, message", [
    ({"final": np.zeros((3, 3, 3), np.uint8)}, "shape"),
    ({"final": -np.ones(SHAPE, np.int16)}, "negative"),
    ({"lungs": np.full(SHAPE, 3, np.uint8)}, "allowed"),
    ({"case_id": "Doe, Jane"}, "case id"),
    ({"dicom_seg": True}, "DICOM"),
])
def test_bad_input_is_refused_and_writes_no_case(phantoms, tmp_path, bad, message):
    p = phantoms[3]
    kwargs = {"final": corrected(p), "lungs": p.lungs, **bad}
    final = kwargs.pop("final")
    with pytest.raises(io.InputError, match=message):
        export_case(tmp_path / "exp", p.ct, p.lesions, final, **kwargs)
    assert not (tmp_path / "exp" / "versions").exists() or not any((tmp_path / "exp" / "versions").iterdir())


def test_cli_exports_twice_and_a_batch_folder(phantoms, tmp_path, capsys):
    p = phantoms[3]
    case = write_case(tmp_path / "cases" / "Doe Jane", p, corrected(p))
    args = ["export", "--ct", str(case / "ct.nii.gz"), "--original", str(case / "lesions.nii.gz"), "--final",
            str(case / "lesions_final.nii.gz"), "--lungs", str(case / "lungs.nii.gz"), "--lobes",
            str(case / "lobes.nii.gz"), "--out", str(tmp_path / "exp"), "--annotator", "reader C"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("version 1") and out[2].endswith("version 2") and out[0].split()[0] == out[2].split()[0]
    prov = json.loads((tmp_path / "exp" / "provenance" / f"{out[0].split()[0]}.json").read_text())
    assert prov["engine"]["id"] == "classical" and prov["version"] == 2
    write_case(tmp_path / "cases" / "second", phantoms[5], corrected(phantoms[5]))
    (tmp_path / "cases" / "not corrected").mkdir()
    assert main(["export", "--batch", str(tmp_path / "cases"), "--out", str(tmp_path / "exp"), "-q"]) == 0
    dataset = json.loads((tmp_path / "exp" / "dataset.json").read_text())
    assert dataset["numTraining"] == 2
    assert not any("Doe" in q.name for q in (tmp_path / "exp").rglob("*"))
    assert main(["export", "--ct", str(case / "ct.nii.gz"), "--out", str(tmp_path / "exp")]) == 2
    assert "--final" in capsys.readouterr().err


def test_batch_reports_a_broken_case_and_exports_the_others(phantoms, tmp_path):
    write_case(tmp_path / "cases" / "good", phantoms[3], corrected(phantoms[3]))
    bad = write_case(tmp_path / "cases" / "bad", phantoms[5], corrected(phantoms[5]))
    io.write_label(bad / "lesions_final.nii.gz", phantoms[3].ct, corrected(phantoms[3]))  # another CT's grid
    results, errors = export_folder(tmp_path / "cases", tmp_path / "exp")
    assert len(results) == 1 and len(errors) == 1 and errors[0].startswith("bad: ") and "grid" in errors[0]
    assert store.check_export(tmp_path / "exp") == [] and len(store.latest_versions(tmp_path / "exp")) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.InputError, match="no corrected cases"):
        export_folder(tmp_path / "empty", tmp_path / "exp2")
    assert not (tmp_path / "exp2").exists()


# --- crash safety and concurrency with real processes ------------------------------------------------
def export_command(case: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "covidlesionseg", "export", "--ct", str(case / "ct.nii.gz"), "--original",
            str(case / "lesions.nii.gz"), "--final", str(case / "lesions_final.nii.gz"), "--lungs",
            str(case / "lungs.nii.gz"), "--lobes", str(case / "lobes.nii.gz"), "--out", str(out)]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "COVIDLesionSeg"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def crash_cases(phantoms, tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    return {seed: write_case(base / f"c{seed}", p, corrected(p, seed)) for seed, p in phantoms.items()}


@pytest.mark.parametrize("point", ["staged", "locked", "committed", "view"])
def test_kill_9_during_an_export_leaves_the_folder_valid_and_earlier_versions_intact(
        phantoms, crash_cases, tmp_path, point):
    p, root = phantoms[3], tmp_path / "exp"
    first = export_case(root, p.ct, p.lesions, corrected(p), lungs=p.lungs, lobes=p.lobes)
    export_case(root, phantoms[5].ct, None, corrected(phantoms[5]), lungs=phantoms[5].lungs)
    before = version_hashes(root)
    proc = subprocess.Popen(export_command(crash_cases[3], root), stdout=subprocess.PIPE, text=True,
                            env=environment(**{store.PAUSE_ENV: point}))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"PAUSED {point}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    after = version_hashes(root)
    assert all(after[name] == digest for name, digest in before.items())  # committed versions intact
    for name in ("dataset.json", "datalist.json"):
        json.loads((root / name).read_text())  # never half-written
    store.recover(root)  # what the next export or reader does first, under the lock
    assert store.check_export(root) == []
    versions = [v.version for v in store.case_versions(root, first.case_id)]
    assert versions == ([1, 2] if point in ("committed", "view") else [1])
    assert not any((root / store.STAGING_DIR).iterdir())  # the dead export's staging is gone
    assert not [p for p in root.rglob(".*") if p.is_file() and p.name not in (store.LOCK_FILE, store.SALT_FILE)]
    case = crash_cases[3]
    again = export_files(root, case / "ct.nii.gz", case / "lesions.nii.gz", case / "lesions_final.nii.gz",
                         lungs_path=case / "lungs.nii.gz", lobes_path=case / "lobes.nii.gz")
    assert again.version == versions[-1] + 1 and store.check_export(root) == []


def test_concurrent_exports_into_one_folder_lose_nothing(phantoms, crash_cases, tmp_path):
    root = tmp_path / "exp"
    commands = [export_command(crash_cases[3], root), export_command(crash_cases[3], root),
                export_command(crash_cases[5], root)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
             for c in commands]
    outputs = [proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in outputs]
    case_ids = [out.split()[0] for out, _ in outputs]
    assert case_ids[0] == case_ids[1] != case_ids[2]  # the same CT twice: one case, two versions
    assert sorted(out.split()[2] for out, _ in outputs[:2]) == ["1", "2"]
    assert [v.version for v in store.case_versions(root, case_ids[0])] == [1, 2]
    assert len(store.latest_versions(root)) == 2
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
    assert store.check_export(root) == []
