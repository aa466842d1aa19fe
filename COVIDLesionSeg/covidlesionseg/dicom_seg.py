"""DICOM Segmentation (SEG) of an exported case, referencing the source CT series (highdicom).

A DICOM SEG carries the source's patient and study identifiers by design (it belongs to that study),
so the export writes it only on request and into a separate, explicitly identifiable folder.
Segments and their codes come from :mod:`covidlesionseg.terminology`.  Frames are matched to the
source slices by their ImagePositionPatient, never by file order.

Requires the optional dependency group ``dicom`` (``pip install covidlesionseg[dicom]``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from covidlesionseg import SOFTWARE_NAME, __version__
from covidlesionseg.io import GEOMETRY_TOL_MM, InputError, Volume
from covidlesionseg.terminology import EXPORT_SEGMENTS, Code, SegmentSpec

MANUFACTURER = SOFTWARE_NAME
SERIES_DESCRIPTION = "COVIDLesionSeg corrected lesions"
# An engine's result corrected by a reader: semi-automatic, the correction being manual processing (DCM).
MANUAL_PROCESSING = Code("DCM", "123109", "Manual Processing")


def require_highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise InputError("DICOM SEG export needs highdicom: pip install 'covidlesionseg[dicom]'") from None
    return highdicom, pydicom


def read_source_series(source: str | os.PathLike | Sequence[str | os.PathLike], ct: Volume) -> list:
    """The source CT's DICOM datasets (pixel data skipped), one per slice of ``ct`` in its k order.

    ``source`` is the series folder, or the list of its files (as Slicer's DICOM database gives them).
    """
    _, pydicom = require_highdicom()
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"DICOM SEG needs the source DICOM folder; {folder} is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    else:
        files = [Path(p) for p in source]
        folder = files[0].parent if files else Path(".")
    series_uid = ct.meta.get("series_uid")
    by_position: list = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and (not series_uid or ds.get("SeriesInstanceUID") == series_uid):
            by_position.append(ds)
    slice_positions = ct.lps_points(np.array([[k, 0, 0] for k in range(ct.shape[0])]))
    tolerance_mm = max(GEOMETRY_TOL_MM, 0.25 * ct.spacing[2])  # scanners' slice positions wobble by micrometres
    ordered = []
    for k, position in enumerate(slice_positions):
        matches = [ds for ds in by_position
                   if np.allclose(np.asarray(ds.ImagePositionPatient, float), position, atol=tolerance_mm)]
        if len(matches) != 1:
            raise InputError(f"DICOM SEG: {len(matches)} source slices of {folder.name} lie at slice {k} of the CT")
        ordered.append(matches[0])
    return ordered


def _concept(code: Code):
    highdicom, _ = require_highdicom()
    return highdicom.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(number: int, spec: SegmentSpec):
    highdicom, _ = require_highdicom()
    kwargs = {}
    if spec.anatomic_region.value:
        kwargs["anatomic_regions"] = [_concept(spec.anatomic_region)]
    description = highdicom.seg.SegmentDescription(
        segment_number=number, segment_label=spec.name, segmented_property_category=_concept(spec.category),
        segmented_property_type=_concept(spec.type),
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=highdicom.AlgorithmIdentificationSequence(
            name=SOFTWARE_NAME, version=__version__, family=_concept(MANUAL_PROCESSING)),
        tracking_id=spec.segment_id, tracking_uid=highdicom.UID(), **kwargs)
    if spec.type_modifier.value:  # laterality of the lung, as Segmented Property Type Modifier
        import pydicom.dataset

        modifier = pydicom.dataset.Dataset()
        modifier.CodeValue, modifier.CodingSchemeDesignator = spec.type_modifier.value, spec.type_modifier.scheme
        modifier.CodeMeaning = spec.type_modifier.meaning
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def write_dicom_seg(path: str | os.PathLike, ct: Volume, source_dicom: str | os.PathLike | Sequence[str | os.PathLike],
                    maps: Mapping[str, np.ndarray], segments: Sequence[SegmentSpec] = EXPORT_SEGMENTS) -> Path:
    """Write a binary DICOM SEG of ``maps`` (label maps on the CT grid) referencing the source series."""
    highdicom, _ = require_highdicom()
    sources = read_source_series(source_dicom, ct)
    pixel = np.zeros((ct.shape[0], ct.shape[1], ct.shape[2], len(segments)), dtype=bool)
    for n, spec in enumerate(segments):
        source = np.asarray(maps[spec.source])
        pixel[..., n] = source > 0 if spec.source == "lesions" else source == spec.value
    with warnings.catch_warnings():  # the source's patient name is copied as it is, one component or not
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(highdicom, sources, pixel, segments)
    out = Path(path)
    seg.save_as(out)
    return out


def _segmentation(highdicom, sources: list, pixel: np.ndarray, segments: Sequence[SegmentSpec]):
    return highdicom.seg.Segmentation(
        source_images=sources, pixel_array=pixel, segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(n + 1, spec) for n, spec in enumerate(segments)],
        series_instance_uid=highdicom.UID(), series_number=900, sop_instance_uid=highdicom.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=SOFTWARE_NAME, software_versions=__version__,
        device_serial_number="0", series_description=SERIES_DESCRIPTION, content_label="LESIONS",
        content_description="Lungs and lesions corrected by a reader", omit_empty_frames=False)
