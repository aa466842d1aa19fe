"""The whole `segment` pipeline on real CT from ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidlesionseg import io, labels
from covidlesionseg.cli import main
from covidlesionseg.metrics import dice


@pytest.fixture(scope="module")
def cip(shared_data):
    return shared_data / "cip_chest64"


@pytest.fixture(scope="module")
def cip_segmented(cip, tmp_path_factory):
    out = tmp_path_factory.mktemp("cip") / "nrrd"
    assert main(["segment", str(cip / "ct-64.nrrd"), "-o", str(out), "--engine", "classical", "--lobes", "none",
                 "-q"]) == 0
    return out


def test_cip_lungs_sides_and_normal_lung_po(cip, cip_segmented):
    ct = io.read_ct(cip / "ct-64.nrrd")
    lm = io.read_label(cip / "lm-64.nrrd", ct).array % 256
    lungs = io.read_label(cip_segmented / labels.LUNGS_FILE, ct).array
    right_truth, left_truth = np.isin(lm, [12, 13, 14]), np.isin(lm, [9, 10, 11])
    assert dice(lungs == labels.RIGHT_LUNG, right_truth) >= 0.93
    assert dice(lungs == labels.LEFT_LUNG, left_truth) >= 0.93
    assert dice(lungs > 0, right_truth | left_truth) >= 0.95
    sev = json.loads((cip_segmented / labels.SEVERITY_FILE).read_text())
    assert sev["PO"] < 1.0, "a normal lung should show (almost) no opacity"
    # A normal chest reads CT0 ("no signs of viral pneumonia", Morozov et al. / Goncharov et al.): the hilar
    # vessels at 4 mm voxels once gave a 1.04 mL false lesion and CT1 (classical min_component_block).
    assert sev["CT_category"] == "CT0" and sev["lesion_ml"] == 0.0
    assert sev["lobe_source"] == "none" and sev["lobes"] == {} and sev["LSS"] is None


def test_cip_dicom_series_gives_the_same_result(cip, cip_segmented, tmp_path):
    out = tmp_path / "dicom"
    assert main(["segment", str(cip / "dicom"), "-o", str(out), "--engine", "classical", "--lobes", "none", "-q"]) == 0
    for name in (labels.LUNGS_FILE, labels.LESIONS_FILE):
        a = io.read_label(out / name).array
        b = io.read_label(cip_segmented / name).array
        assert dice(a > 0, b > 0) > 0.99 if b.any() else not a.any()
    a, b = (json.loads((d / labels.SEVERITY_FILE).read_text()) for d in (out, cip_segmented))
    assert a["PO"] == pytest.approx(b["PO"], abs=0.05) and a["lung_ml"] == pytest.approx(b["lung_ml"], rel=0.01)


def test_abdomen_ct_with_lung_bases_reports_incomplete_coverage(shared_data, tmp_path):
    ct_path = shared_data / "abdomen_lung_bases" / "example_ct.nii.gz"
    out = tmp_path / "abd"
    assert main(["segment", str(ct_path), "-o", str(out), "--engine", "classical", "-q"]) == 0
    sev = json.loads((out / labels.SEVERITY_FILE).read_text())
    assert sev["coverage"]["complete"] is False and sev["CT_category"] is None
    assert sev["lungs"]["right"]["volume_ml"] > 30 and sev["lungs"]["left"]["volume_ml"] > 30


def test_totalsegmentator_lobes_are_accepted(shared_data, tmp_path):
    base = shared_data / "abdomen_lung_bases"
    out = tmp_path / "ts"
    assert main(["segment", str(base / "example_ct_sm.nii.gz"), "-o", str(out), "--engine", "classical",
                 "--lobes", str(base / "example_seg.nii.gz"), "-q"]) == 0
    sev = json.loads((out / labels.SEVERITY_FILE).read_text())
    assert sev["lobe_source"] == "file:totalsegmentator_v2"
    assert sev["coverage"]["complete"] is False  # only lung bases: RUL absent, lungs cut by the field of view
    assert sev["LSS"] is None and sev["PO"] is not None
