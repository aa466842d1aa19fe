"""Exporting reader-corrected cases for retraining: nnU-Net v2 raw layout, MONAI datalist, .seg.nrrd, provenance.

:func:`export_case` appends one case (the CT, the engine's original lesion map, the corrected final one)
to an export folder as a new version; :func:`export_folder` does it for every corrected case of a folder.
The folder layout, versioning, locking and recovery are in :mod:`covidlesionseg.export_store`.

Training labels (labelsTr, labelsOriginal): 0 background, 1 lung, 2 lesion; lesion wins over lung and
the lungs always contain the lesions (contracts.md).  Case ids and patient keys are pseudonymous
(salted hashes, or ids the caller gives); no patient name, ID or birth date goes into file names or
metadata unless ``include_identifiers`` is set.  The optional DICOM SEG carries the source's patient
and study identifiers by design and is written, on request only, under ``identifiable/``.

Edit statistics compare the original with the final lesion map: Dice, and the millilitres added and
removed per lesion class, the class derived from HU (1: < -200 HU, 2: >= -200 HU; Chaganti et al.'s
high opacity); severity before and after is computed as ``score`` does (pipeline.finish_labels).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidlesionseg import SOFTWARE_NAME, __version__, io, labels
from covidlesionseg import export_store as store
from covidlesionseg.lungs import segment_lungs
from covidlesionseg.pipeline import finish_labels
from covidlesionseg.seg_nrrd import write_seg_nrrd
from covidlesionseg.severity import SeverityConfig, split_opacity

TRAINING_LUNG = store.TRAINING_LABELS["lung"]
TRAINING_LESION = store.TRAINING_LABELS["lesion"]
LESION_CLASSES = {labels.LESION_LOW: "opacity < -200 HU", labels.LESION_HIGH: "high opacity >= -200 HU"}
# A case folder for export_folder: the CT, segment's outputs, and the reader's corrected lesion map.
FINAL_NAMES = ("lesions_final.nii.gz", "lesions_corrected.nii.gz")
CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "dicom")


@dataclass
class ExportResult:
    """What one export wrote: the pseudonymous case id, its version (1, 2, ...) and the files of that version."""

    case_id: str
    version: int
    paths: dict[str, Path] = field(default_factory=dict)


def _label_array(name: str, array: np.ndarray | None, ct: io.Volume, allowed: set[int] | None = None) -> np.ndarray:
    data = np.asarray(array)
    if data.shape != ct.shape:
        raise io.InputError(f"{name} map shape {data.shape} differs from the CT {ct.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        if not np.all(np.mod(data, 1) == 0):
            raise io.InputError(f"{name} map has non-integer values")
    if data.size and data.min() < 0:
        raise io.InputError(f"{name} map has negative values")
    if allowed is not None:
        extra = sorted(set(np.unique(data).tolist()) - allowed)
        if extra:
            raise io.InputError(f"{name} map holds values {extra[:5]}; allowed: {sorted(allowed)}")
    return data


def ct_digest(ct: io.Volume) -> str:
    """SHA-256 of the CT's voxels (float32 HU) and geometry: the same CT gives the same case id in one folder."""
    voxels = np.ascontiguousarray(ct.array, dtype=np.float32) + np.float32(0.0)  # -0.0 and 0.0 are one HU
    h = hashlib.sha256(voxels.tobytes())
    geometry = [list(ct.shape), np.round(ct.spacing, 4).tolist(), np.round(ct.origin, 4).tolist(),
                np.round(ct.direction, 6).ravel().tolist()]
    h.update(json.dumps(geometry).encode())
    return h.hexdigest()


def training_label(lungs: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """0 background, 1 lung, 2 lesion (lesion wins)."""
    out = np.where(np.asarray(lungs) > 0, TRAINING_LUNG, 0).astype(np.uint8)
    out[np.asarray(lesions) > 0] = TRAINING_LESION
    return out


def edit_statistics(ct: io.Volume, original: np.ndarray, final: np.ndarray,
                    config: SeverityConfig = SeverityConfig()) -> dict[str, Any]:
    """Dice of original vs final lesions, and mL added and removed per HU-derived lesion class."""
    from covidlesionseg.metrics import dice

    original, final = np.asarray(original) > 0, np.asarray(final) > 0

    def per_class(mask: np.ndarray) -> dict[str, float]:
        classes = split_opacity(mask, ct.array, config)
        return {str(c): round(int(np.count_nonzero(classes == c)) * ct.voxel_ml, 3) for c in LESION_CLASSES}

    return {
        "dice_original_final": round(dice(original, final), 6),
        "original_ml": round(int(np.count_nonzero(original)) * ct.voxel_ml, 3),
        "final_ml": round(int(np.count_nonzero(final)) * ct.voxel_ml, 3),
        "added_ml": per_class(final & ~original),
        "removed_ml": per_class(original & ~final),
        "classes": {str(c): name for c, name in LESION_CLASSES.items()},
        "high_opacity_hu": config.high_opacity_hu,
    }


def _engine_record(engine: dict | None) -> dict[str, Any]:
    record = {"id": None, "sha256": None}
    record.update({k: v for k, v in (engine or {}).items() if k in ("id", "sha256", "version", "architecture")})
    if record["id"] and not record["sha256"]:
        from covidlesionseg import models

        try:
            record["sha256"] = models.get_model(str(record["id"])).get("sha256")
        except (io.InputError, KeyError, ValueError, OSError):
            pass
    return record


DicomSource = str | os.PathLike | Sequence[str | os.PathLike]


def _dicom_source(ct: io.Volume, source_dicom: DicomSource | None) -> DicomSource:
    """The series folder or file list a DICOM SEG refers to: as given, else the folder the CT was read from."""
    if source_dicom is not None:
        if not isinstance(source_dicom, (str, os.PathLike)) and not list(source_dicom):
            raise io.InputError("DICOM SEG: the list of source DICOM files is empty")
        return source_dicom
    source = ct.meta.get("source")
    if ct.meta.get("format") == "dicom" and source and Path(source).is_dir():
        return Path(source)
    raise io.InputError("DICOM SEG needs a DICOM source series; this CT was not read from a DICOM folder")


@dataclass
class CaseLabels:
    """Everything derived from one corrected case before it is written."""

    lesions: np.ndarray  # final lesion labels 1/2 (split from HU)
    lungs: np.ndarray  # final lungs, containing every final lesion
    lobes: np.ndarray | None
    label: np.ndarray  # training label of the final map
    original_label: np.ndarray | None
    severity_before: dict[str, Any] | None
    severity_after: dict[str, Any]
    edits: dict[str, Any] | None


def case_labels(ct: io.Volume, original: np.ndarray | None, final: np.ndarray, lungs: np.ndarray | None,
                lobes: np.ndarray | None, config: SeverityConfig = SeverityConfig()) -> CaseLabels:
    """Lungs (computed when absent), lobes, training labels, severity before/after and edit statistics.

    Lobes are resolved once (from ``lobes``, else as ``segment --lobes auto``) and used for both scores.
    """
    if lungs is None:
        lungs = segment_lungs(ct)
    lobe_spec: Any = lobes if lobes is not None else "auto"
    lesions, final_lungs, final_lobes, after = finish_labels(ct, final > 0, lungs, lobe_spec,
                                                             lobe_source="segmentation", config=config)
    before = edits = original_label = None
    if original is not None:
        before_lobes: Any = final_lobes if final_lobes is not None else "none"
        _, original_lungs, _, before = finish_labels(ct, original > 0, lungs, before_lobes,
                                                     lobe_source=after["lobe_source"], config=config)
        edits = edit_statistics(ct, original, final, config)
        original_label = training_label(original_lungs, original)
    return CaseLabels(lesions, final_lungs, final_lobes, training_label(final_lungs, lesions), original_label,
                      before, after, edits)


def _write_staged(staging: Path, ct: io.Volume, case: CaseLabels, *, write_image: bool) -> None:
    if write_image:
        io.write_ct(staging / store.IMAGE, ct)
    io.write_label(staging / store.LABEL, ct, case.label)
    if case.original_label is not None:
        io.write_label(staging / store.ORIGINAL, ct, case.original_label)
    if case.lobes is not None:
        io.write_label(staging / store.LOBES, ct, case.lobes)
    write_seg_nrrd(staging / store.SEGMENTATION, ct, {"lungs": case.lungs, "lesions": case.lesions})


def _same_ct_image(root: Path, case_id: str, digest: str) -> Path | None:
    """The image file of an earlier version of this case with the same CT, if any."""
    same = [v for v in store.case_versions(root, case_id) if v.provenance["source"]["ct_sha256"] == digest]
    return same[-1].folder / store.IMAGE if same and (same[-1].folder / store.IMAGE).is_file() else None


def _patient_key(root: Path, ct: io.Volume, case_id: str, patient_key: str | None) -> str:
    """Pseudonymous patient key: of the given key, else of the DICOM PatientID, else of the case."""
    if patient_key:
        return store.pseudonym(root, "pt_", "patient", str(patient_key))
    if ct.meta.get("patient_id"):
        return store.pseudonym(root, "pt_", "patient", str(ct.meta["patient_id"]))
    return store.pseudonym(root, "pt_", "case", case_id)


def export_case(export_dir: str | os.PathLike, ct: io.Volume, original: np.ndarray | None, final: np.ndarray, *,
                lungs: np.ndarray | None = None, lobes: np.ndarray | None = None, case_id: str | None = None,
                patient_key: str | None = None, annotator: str | None = None, engine: dict | None = None,
                source_dicom: DicomSource | None = None, include_identifiers: bool = False,
                dicom_seg: bool = False, config: SeverityConfig = SeverityConfig()) -> ExportResult:
    """Append one corrected case to ``export_dir`` as a new version; nothing earlier is changed.

    ``original``/``final`` are lesion label maps (0 background, > 0 lesion) on the CT's grid; ``lungs``
    (0/1 right/2 left) is computed when not given; ``lobes`` (0..5) gives lobe-wise severity.  Without a
    ``case_id`` the id is a salted hash of the CT, so exporting the same CT again makes its next version.
    ``dicom_seg`` writes a DICOM SEG referring to ``source_dicom`` (the series folder or its files; default:
    the folder the CT was read from).  Bad input raises ``io.InputError`` before anything is written.
    """
    root = Path(export_dir)
    final = _label_array("final lesion", final, ct)
    original = None if original is None else _label_array("original lesion", original, ct)
    if lungs is not None:
        lungs = _label_array("lung", lungs, ct, {0, labels.RIGHT_LUNG, labels.LEFT_LUNG}).astype(np.uint8)
    if lobes is not None:
        lobes = _label_array("lobe", lobes, ct, {0, *labels.LOBE_NAMES}).astype(np.uint8)
    if case_id is not None:
        store.check_case_id(case_id)
    dicom_folder = None
    if dicom_seg:
        from covidlesionseg.dicom_seg import require_highdicom, write_dicom_seg

        dicom_folder = _dicom_source(ct, source_dicom)
        require_highdicom()

    store.recover(root)
    digest = ct_digest(ct)
    case_id = case_id or store.pseudonym(root, "case_", "ct", digest)
    patient = _patient_key(root, ct, case_id, patient_key)
    case = case_labels(ct, original, final, lungs, lobes, config)

    stage = store.Staging(root)
    ident_stage = store.Staging(root) if dicom_folder is not None else None
    try:
        _write_staged(stage.path, ct, case, write_image=_same_ct_image(root, case_id, digest) is None)
        if ident_stage is not None:
            write_dicom_seg(ident_stage.path / store.DICOM_SEG, ct, dicom_folder,
                            {"lungs": case.lungs, "lesions": case.lesions})
        store.checkpoint("staged")
        with store.locked(root):
            store.checkpoint("locked")
            version = store.next_version(root, case_id)
            if not (stage.path / store.IMAGE).exists():
                shared = _same_ct_image(root, case_id, digest)
                if shared is not None:
                    os.link(shared, stage.path / store.IMAGE)  # same CT: one file on disk for all its versions
                else:
                    io.write_ct(stage.path / store.IMAGE, ct)
            dicom_rel = None
            if ident_stage is not None:
                target = root / store.IDENTIFIABLE_DIR / case_id / store.version_name(version)
                if target.exists():  # left by an export killed before its commit
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(ident_stage.path, target)
                dicom_rel = str((target / store.DICOM_SEG).relative_to(root))
            provenance = {
                "software": {"name": SOFTWARE_NAME, "version": __version__},
                "case_id": case_id, "version": version, "patient_key": patient,
                "fold": store.fold_for(root, patient),
                "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "annotator": annotator or None,
                "engine": _engine_record(engine),
                "source": {"format": ct.meta.get("format") or None, "shape": list(ct.shape),
                           "spacing": [round(s, 6) for s in ct.spacing], "ct_sha256": digest},
                "labels": store.TRAINING_LABELS,
                "edits": case.edits,
                "severity": {"before": case.severity_before, "after": case.severity_after},
                "dicom_seg": dicom_rel,
                "files": {p.name: store.sha256_file(p) for p in sorted(stage.path.iterdir()) if p.is_file()},
            }
            if include_identifiers:
                provenance["identifiers"] = {key: ct.meta.get(key) for key in
                                             ("patient_name", "patient_id", "study_uid", "series_uid", "source")}
            io.write_json(stage.path / store.PROVENANCE, provenance)
            folder = store.commit(root, stage.path, case_id, version)
            store.checkpoint("committed")
            store.rebuild_views(root)
    finally:
        for owned in (stage, ident_stage):
            if owned is not None:
                owned.close()
    # The files of this version (never changed); imagesTr/labelsTr show them only while it is the latest.
    names = {"image": store.IMAGE, "label": store.LABEL, "original": store.ORIGINAL, "lobes": store.LOBES,
             "seg_nrrd": store.SEGMENTATION, "provenance": store.PROVENANCE}
    paths = {"version": folder, **{key: folder / name for key, name in names.items() if (folder / name).is_file()}}
    if dicom_rel:
        paths["dicom_seg"] = root / dicom_rel
    return ExportResult(case_id, version, paths)


# --- files and folders -----------------------------------------------------------------------------
def engine_from_severity(path: Path) -> dict | None:
    """The engine (id, sha256) recorded in a severity.json written by ``segment``, if there is one."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return None
    model = doc.get("model") or {}
    return {"id": model.get("id") or doc.get("engine"), "sha256": model.get("sha256")}


def export_files(export_dir: str | os.PathLike, ct_path: str | os.PathLike, original_path: str | os.PathLike | None,
                 final_path: str | os.PathLike, *, lungs_path: str | os.PathLike | None = None,
                 lobes_path: str | os.PathLike | None = None, engine: dict | None = None,
                 **kwargs: Any) -> ExportResult:
    """:func:`export_case` from files; the engine defaults to the one in severity.json beside the original."""
    ct = io.read_ct(ct_path)
    original = io.read_label(original_path, ct).array if original_path else None
    final = io.read_label(final_path, ct).array
    lungs = io.read_label(lungs_path, ct).array if lungs_path else None
    lobes = io.read_label(lobes_path, ct).array if lobes_path else None
    if engine is None and original_path:
        engine = engine_from_severity(Path(original_path).parent / labels.SEVERITY_FILE)
    return export_case(export_dir, ct, original, final, lungs=lungs, lobes=lobes, engine=engine, **kwargs)


def corrected_cases(folder: str | os.PathLike) -> list[dict[str, Path | None]]:
    """Case folders holding a corrected lesion map (``lesions_final.nii.gz``): the folder itself or its subfolders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise io.InputError(f"not a folder: {folder}")
    cases = []
    for case_dir in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        final = next((case_dir / n for n in FINAL_NAMES if (case_dir / n).is_file()), None)
        if final is None:
            continue
        ct = next((case_dir / n for n in CT_NAMES if (case_dir / n).exists()), None)
        if ct is None:
            raise io.InputError(f"{case_dir.name}: corrected lesions but no CT ({', '.join(CT_NAMES)})")

        def optional(name: str, where: Path = case_dir) -> Path | None:
            return where / name if (where / name).is_file() else None

        cases.append({"folder": case_dir, "ct": ct, "final": final, "original": optional(labels.LESIONS_FILE),
                      "lungs": optional(labels.LUNGS_FILE), "lobes": optional(labels.LOBES_FILE)})
    return cases


def export_folder(folder: str | os.PathLike, export_dir: str | os.PathLike, *,
                  progress: Callable[[float, str], None] | None = None,
                  **kwargs: Any) -> tuple[list[ExportResult], list[str]]:
    """Export every corrected case of ``folder`` (see :func:`corrected_cases`); returns (results, errors).

    A case that fails is reported in ``errors`` (one line each) and the others are still exported.
    Case folder names are never used as case ids (they may be patient names).
    """
    cases = corrected_cases(folder)
    if not cases:
        raise io.InputError(f"no corrected cases in {folder} (a case folder holds {FINAL_NAMES[0]} and a CT)")
    results, errors = [], []
    for n, case in enumerate(cases):
        if progress:
            progress(n / len(cases), f"case {n + 1} of {len(cases)}")
        try:
            results.append(export_files(export_dir, case["ct"], case["original"], case["final"],
                                        lungs_path=case["lungs"], lobes_path=case["lobes"], **kwargs))
        except io.InputError as exc:
            errors.append(f"{case['folder'].name}: {exc}")
    if progress:
        progress(1.0, "done")
    return results, errors
