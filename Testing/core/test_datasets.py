"""Training cases from export folders, nnU-Net v2 raw folders, MONAI datalists and image/label folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidlesionseg import io
from covidlesionseg.datasets import (
    IGNORE,
    LABEL_MAPS,
    TrainingCase,
    class_of_name,
    load_training_cases,
    lut_from_names,
    parse_label_map,
)
from covidlesionseg.export import export_case
from covidlesionseg.phantom import generate_phantom

SHAPE = (24, 48, 48)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(5, "CT2", shape=SHAPE)


def medseg_label(phantom) -> np.ndarray:
    """A MedSeg-style mask: 1 ground-glass, 2 consolidation, 3 pleural effusion (outside the lungs)."""
    label = phantom.lesions.astype(np.uint8)  # 1 / 2 by HU, standing in for GGO / consolidation
    label[0, :4, :4] = 3
    return label


def write_pair(images: Path, labels: Path, name: str, phantom, label: np.ndarray, *, nnunet: bool = False) -> None:
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    io.write_ct(images / (f"{name}_0000.nii.gz" if nnunet else f"{name}.nii.gz"), phantom.ct)
    io.write_label(labels / f"{name}.nii.gz", phantom.ct, label)


def test_export_folder_gives_cases_with_folds_and_patient_keys(phantom, tmp_path):
    final = phantom.lesions.copy()
    final[:, :, :10] = 0
    first = export_case(tmp_path / "exp", phantom.ct, phantom.lesions, final, lungs=phantom.lungs, patient_key="P1")
    export_case(tmp_path / "exp", phantom.ct, phantom.lesions, phantom.lesions, lungs=phantom.lungs, patient_key="P1")
    cases = load_training_cases(tmp_path / "exp")
    assert len(cases) == 1  # the latest version only
    case = cases[0]
    assert case.case_id == first.case_id and case.lut == {0: 0, 1: 1, 2: 2} and case.lung_labelled
    assert case.version == 2
    assert case.fold in range(5) and case.patient_key.startswith("pt_") and "P1" not in case.patient_key
    label = io.read_label(case.label).array
    assert np.array_equal(label == 2, phantom.lesions > 0)
    with pytest.raises(io.InputError, match="fixed labels"):
        load_training_cases(tmp_path / "exp", "medseg")


def test_nnunet_raw_folder_label_names_become_classes(phantom, tmp_path):
    root = tmp_path / "Dataset101_Covid"
    label = np.zeros(SHAPE, np.uint8)
    label[phantom.lungs == 2] = 1
    label[phantom.lungs == 1] = 2
    label[phantom.lesions > 0] = 3
    write_pair(root / "imagesTr", root / "labelsTr", "covid_001", phantom, label, nnunet=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "left lung": 1, "right lung": 2, "infection": 3},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    cases = load_training_cases(root)
    assert [c.case_id for c in cases] == ["covid_001"]
    assert cases[0].lut == {0: 0, 1: 1, 2: 1, 3: 2} and cases[0].lung_labelled
    assert cases[0].image.name == "covid_001_0000.nii.gz"
    doc = json.loads((root / "dataset.json").read_text())
    doc["labels"]["pneumothorax"] = 4
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(io.InputError, match="pneumothorax"):
        load_training_cases(root)
    assert load_training_cases(root, "covid19-ct-seg")[0].lut == LABEL_MAPS["covid19-ct-seg"]


def test_medseg_folders_with_explicit_map_and_unknown_values_refused(phantom, tmp_path):
    label = medseg_label(phantom)
    write_pair(tmp_path / "images", tmp_path / "masks", "medseg_1", phantom, label)
    spec = f"{tmp_path / 'images'}:{tmp_path / 'masks'}"
    cases = load_training_cases(spec, "medseg")
    assert cases[0].lut == {0: 0, 1: 2, 2: 2, 3: 0} and not cases[0].lung_labelled
    with pytest.raises(io.InputError, match="label_map"):
        load_training_cases(spec)  # folders name no labels: an explicit map is required
    with pytest.raises(io.InputError, match=r"values \[3\]"):
        load_training_cases(spec, "1:lesion,2:lesion")
    assert load_training_cases(spec, {1: "lesion", 2: "lesion", 3: "ignore"})[0].lut[3] == IGNORE


def test_monai_datalist_is_read_with_monai_and_checked(phantom, tmp_path):
    label = medseg_label(phantom)
    write_pair(tmp_path / "img", tmp_path / "lab", "a", phantom, label)
    doc = {"labels": {"0": "background", "1": "ground-glass opacity", "2": "consolidation", "3": "pleural effusion"},
           "training": [{"image": "img/a.nii.gz", "label": "lab/a.nii.gz", "fold": 2}]}
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    cases = load_training_cases(tmp_path / "datalist.json")
    assert isinstance(cases[0], TrainingCase) and cases[0].fold == 2 and cases[0].case_id == "a"
    assert cases[0].image == (tmp_path / "img" / "a.nii.gz") and cases[0].lut == {0: 0, 1: 2, 2: 2, 3: 0}
    del doc["labels"]
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    with pytest.raises(io.InputError, match="names no labels"):
        load_training_cases(tmp_path / "datalist.json")


def test_label_on_another_grid_is_refused(phantom, tmp_path):
    write_pair(tmp_path / "images", tmp_path / "labels", "x", phantom, medseg_label(phantom))
    other = phantom.ct.like(np.zeros(SHAPE, np.uint8))
    other.spacing = (1.0, 1.0, 1.0)
    io.write_label(tmp_path / "labels" / "x.nii.gz", other, np.zeros(SHAPE, np.uint8))
    with pytest.raises(io.InputError, match="grid"):
        load_training_cases(f"{tmp_path / 'images'}:{tmp_path / 'labels'}", "medseg")


@pytest.mark.parametrize("name, cls", [("Background", 0), ("lung_left", 1), ("Lungs", 1), ("right lung", 1),
                                       ("GGO", 2), ("Ground Glass", 2), ("infection", 2), ("lung lesion", 2),
                                       ("pleural_effusion", 0)])
def test_label_names(name, cls):
    assert class_of_name(name) == cls


def test_label_map_forms_and_errors():
    assert parse_label_map("1:lesion, 2:lung") == {0: 0, 1: 2, 2: 1}
    assert parse_label_map({"3": 2}) == {0: 0, 3: 2}
    assert lut_from_names({"background": 0, "lesion": 1}) == {0: 0, 1: 2}
    with pytest.raises(io.InputError, match="class"):
        parse_label_map("1:tumour")
    with pytest.raises(io.InputError, match="preset"):
        parse_label_map("nonsense")
    with pytest.raises(io.InputError, match="region-based"):
        lut_from_names({"background": 0, "lungs": [1, 2]})


def test_missing_or_unknown_spec(tmp_path):
    with pytest.raises(io.InputError, match="not found"):
        load_training_cases(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.InputError, match="not an export folder"):
        load_training_cases(tmp_path / "empty")
