"""DICOM SEG export of the real CIP DICOM series, read back with highdicom and pydicom (skipped when data absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidlesionseg import io, labels
from covidlesionseg.export import export_case
from covidlesionseg.lungs import segment_lungs

highdicom = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def exported(shared_data, tmp_path_factory):
    folder = shared_data / "cip_chest64" / "dicom"
    ct = io.read_ct(folder)
    lungs = segment_lungs(ct)
    # A reader's correction standing in for a real one: a block of lesion in each lung.
    final = np.zeros(ct.shape, np.uint8)
    final[30:40, 20:32, 12:22] = 1
    final[30:40, 20:32, 42:52] = 1
    final &= (lungs > 0).astype(np.uint8)
    root = tmp_path_factory.mktemp("dicomseg") / "exp"
    result = export_case(root, ct, np.zeros(ct.shape, np.uint8), final, lungs=lungs, dicom_seg=True)
    return folder, ct, lungs, final, root, result


def test_dicom_seg_segments_codes_and_references(exported):
    folder, ct, _, _, root, result = exported
    seg_path = result.paths["dicom_seg"]
    assert seg_path.parent.parent.parent.name == "identifiable"  # separate, explicitly identifiable
    seg = highdicom.seg.segread(seg_path)
    source = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.PatientID == source.PatientID and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["Right lung", "Left lung", "Lesion"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["3341006", "44029006", "52988006"]
    assert seg.SegmentSequence[2].AnatomicRegionSequence[0].CodeValue == "39607008"
    prov = json.loads(result.paths["provenance"].read_text())
    assert prov["dicom_seg"] == str(seg_path.relative_to(root)) and "identifiers" not in prov
    assert source.PatientID not in (root / "datalist.json").read_text()


def test_dicom_seg_geometry_and_voxels_match_the_ct(exported):
    folder, ct, lungs, final, _, result = exported
    seg = highdicom.seg.segread(result.paths["dicom_seg"])
    sources = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = ds
    # Source instances in the CT's slice order, matched by position along the slice normal.
    order = sorted(sources.values(), key=lambda ds: float(ds.ImagePositionPatient[2]))
    slice_z = ct.lps_points(np.array([[k, 0, 0] for k in range(ct.shape[0])]))[:, 2]
    if slice_z[0] > slice_z[-1]:
        order = order[::-1]
    uids = [ds.SOPInstanceUID for ds in order]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3],
                                               combine_segments=False)
    assert pixels.shape == (ct.shape[0], ct.shape[1], ct.shape[2], 3)
    assert np.array_equal(pixels[..., 0] > 0, lungs == labels.RIGHT_LUNG)
    assert np.array_equal(pixels[..., 1] > 0, lungs == labels.LEFT_LUNG)
    assert np.array_equal(pixels[..., 2] > 0, final > 0)
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert np.allclose(spacing, [ct.spacing[1], ct.spacing[0]], atol=1e-4)
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert np.allclose(orientation, list(ct.direction[:, 0]) + list(ct.direction[:, 1]), atol=1e-6)
    positions = {tuple(np.round([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient], 3))
                 for f in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(np.round([float(v) for v in ds.ImagePositionPatient], 3)) for ds in order}
    volume = seg.get_volume(combine_segments=False)  # highdicom's own geometry: same voxels at the same places
    corner = volume.affine @ np.array([0, 0, 0, 1.0])
    end_slices = ct.lps_points(np.array([[0, 0, 0], [ct.shape[0] - 1, 0, 0]]))  # highdicom may stack either way
    assert any(np.allclose(corner[:3], point, atol=1e-3) for point in end_slices)
    assert int(volume.array[..., 2].sum()) == int(np.count_nonzero(final))


def test_dicom_seg_from_a_file_list_as_slicer_gives_it(exported, tmp_path):
    folder, ct, lungs, final, _, _ = exported
    from_node = ct.like(ct.array)
    from_node.meta = {"source": "CT node"}  # a CT from a Slicer node knows nothing of its files
    with pytest.raises(io.InputError, match="DICOM source"):
        export_case(tmp_path / "a", from_node, None, final, lungs=lungs, dicom_seg=True)
    files = sorted(str(p) for p in folder.iterdir())[::-1]  # any order: frames are matched by position
    result = export_case(tmp_path / "b", from_node, None, final, lungs=lungs, dicom_seg=True, source_dicom=files)
    seg = highdicom.seg.segread(result.paths["dicom_seg"])
    assert int(seg.get_volume(combine_segments=False).array[..., 2].sum()) == int(np.count_nonzero(final))
