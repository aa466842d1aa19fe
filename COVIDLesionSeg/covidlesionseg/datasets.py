"""Training cases from the formats the field uses, with every source label value mapped explicitly.

:func:`load_training_cases` reads

- an export folder written by :mod:`covidlesionseg.export` (recovered under its lock first),
- an nnU-Net v2 raw dataset folder (``dataset.json`` + ``imagesTr/X_0000`` + ``labelsTr/X``; label
  meanings from the names in dataset.json),
- a MONAI / Medical Segmentation Decathlon datalist JSON (``{"training": [{"image", "label"}]}``, read
  with ``monai.data.load_decathlon_datalist``; label meanings from its ``labels`` names if present),
- ``IMAGES_DIR:LABELS_DIR`` (files paired by case id as ``evaluate`` pairs them),

and returns one :class:`TrainingCase` per case whose ``lut`` maps each source label value to a training
class: 0 background, 1 lung, 2 lesion, 255 ignore.  Names are recognised (background, lung/left lung/
right lung, lesion/infection/ground-glass/consolidation/opacity/infiltrate, pleural effusion); a
label map can also be given explicitly, by preset name or as ``{value: class}``:

- ``"medseg"`` - MedSeg COVID-19 CT segmentation (1 ground-glass, 2 consolidation, 3 pleural effusion;
  no lung labels, so class 0 there means "not lesion" and ``lung_labelled`` is False),
- ``"covid19-ct-seg"`` (or ``"covid19ctseg"``) - COVID-19-CT-Seg, Ma J et al., Med Phys 2021;48(3):1197-1210
  (1 left lung, 2 right lung, 3 infection),
- ``"covidlesionseg"`` - this product's training labels (0 background, 1 lung, 2 lesion).

A label value that the map does not cover is refused with a one-line error naming file and values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from covidlesionseg import export_store as store
from covidlesionseg.io import GEOMETRY_TOL_MM, InputError

BACKGROUND, LUNG, LESION, IGNORE = 0, 1, 2, 255
CLASS_NAMES = {"background": BACKGROUND, "lung": LUNG, "lesion": LESION, "ignore": IGNORE}

LABEL_MAPS: dict[str, dict[int, int]] = {
    "covidlesionseg": {0: BACKGROUND, 1: LUNG, 2: LESION},
    "medseg": {0: BACKGROUND, 1: LESION, 2: LESION, 3: BACKGROUND},
    "covid19-ct-seg": {0: BACKGROUND, 1: LUNG, 2: LUNG, 3: LESION},
}
LABEL_MAPS["covid19ctseg"] = LABEL_MAPS["covid19-ct-seg"]

# Label names as datasets spell them -> training class; lesion patterns first ("lung lesion" is a lesion).
_NAME_CLASSES: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"^(background|bg|clear[ _]label|unlabel+ed|none)$"), BACKGROUND),
    (re.compile(r"lesion|infect|infiltrat|opacit|ggo|ground[ _-]?glass|consolidat|covid|pneumonia"), LESION),
    (re.compile(r"effusion"), BACKGROUND),  # pleural effusion lies outside the lung (contracts.md)
    (re.compile(r"^((left|right)[ _-]?)?lungs?([ _-]?(left|right))?$"), LUNG),
    (re.compile(r"^ignore$"), IGNORE),
)


@dataclass(frozen=True)
class TrainingCase:
    """One image with its label map and how the label map's values become training classes.

    ``lung_labelled`` is False when the source marks lesions only (its class 0 is lung and background
    alike); ``fold`` is the validation fold when the source has one (an export's folds keep each patient
    in one fold); ``version`` is an export's case version (a re-exported case keeps its id, so caches of
    derived data should key on id and version).
    """

    case_id: str
    image: Path
    label: Path
    lut: dict[int, int]
    patient_key: str
    lung_labelled: bool = True
    fold: int | None = None
    version: int | None = None


def class_of_name(name: str) -> int:
    """Training class of a label name (case-insensitive); InputError when the name is not known."""
    key = name.strip().lower()
    for pattern, cls in _NAME_CLASSES:
        if pattern.search(key):
            return cls
    raise InputError(f"label name {name!r} has no known meaning; give label_map={{value: class}} explicitly")


def parse_label_map(label_map: str | Mapping[Any, Any]) -> dict[int, int]:
    """A preset name, ``"1:lesion,2:lesion,3:background"`` or ``{value: class or class name}`` -> {value: class}."""
    if isinstance(label_map, str):
        if label_map.lower() in LABEL_MAPS:
            return dict(LABEL_MAPS[label_map.lower()])
        try:
            pairs = dict(item.split(":", 1) for item in label_map.split(",") if item.strip())
        except ValueError:
            raise InputError(f"label map {label_map!r}: use a preset ({', '.join(LABEL_MAPS)}) "
                             "or VALUE:CLASS,VALUE:CLASS") from None
        label_map = pairs
    lut: dict[int, int] = {}
    for value, cls in label_map.items():
        try:
            source = int(value)
        except (TypeError, ValueError):
            raise InputError(f"label map: source value {value!r} is not an integer") from None
        target = CLASS_NAMES.get(str(cls).strip().lower()) if isinstance(cls, str) else cls
        if target not in CLASS_NAMES.values():
            raise InputError(f"label map: class {cls!r} for value {source}; use background, lung, lesion or ignore")
        lut[source] = int(target)
    lut.setdefault(0, BACKGROUND)
    return lut


def lut_from_names(names: Mapping[str, Any]) -> dict[int, int]:
    """{value: class} from a labels dict, either nnU-Net v2 {name: value} or MSD/nnU-Net v1 {"value": name}."""
    lut = {}
    for key, value in names.items():
        if isinstance(value, list):
            raise InputError("region-based labels (a label with several values) are not supported")
        if str(key).lstrip("-").isdigit() and not str(value).lstrip("-").isdigit():
            lut[int(key)] = class_of_name(str(value))  # {"1": "lung"}
        else:
            lut[int(value)] = class_of_name(str(key))  # {"lung": 1}
    return lut


# --- sources ----------------------------------------------------------------------------------------
def _from_export(root: Path) -> list[TrainingCase]:
    try:
        store.recover(root)
    except OSError:  # read-only copy: take it as it is, checked below
        pass
    problems = store.check_export(root, verify_hashes=False)
    if problems:
        raise InputError(f"export folder {root}: {problems[0]}")
    datalist = json.loads((root / store.DATALIST_JSON).read_text())
    lut = dict(LABEL_MAPS["covidlesionseg"])
    return [TrainingCase(e["case_id"], root / e["image"], root / e["label"], dict(lut), e["patient_key"],
                         True, int(e["fold"]), int(e["version"])) for e in datalist["training"]]


def _from_nnunet(root: Path, label_map: Any) -> list[TrainingCase]:
    dataset = json.loads((root / "dataset.json").read_text())
    channels = dataset.get("channel_names") or dataset.get("modality") or {"0": "CT"}
    if len(channels) != 1:
        raise InputError(f"{root.name}: {len(channels)} input channels; only single-channel CT is supported")
    ending = dataset.get("file_ending", ".nii.gz")
    lut = parse_label_map(label_map) if label_map is not None else lut_from_names(dataset.get("labels", {}))
    cases = []
    for label in sorted((root / "labelsTr").glob("*" + ending)):
        cid = label.name[: -len(ending)]
        image = root / "imagesTr" / f"{cid}_0000{ending}"
        if not image.is_file():
            raise InputError(f"{root.name}: label {label.name} has no image imagesTr/{image.name}")
        cases.append(TrainingCase(cid, image, label, dict(lut), cid, LUNG in lut.values()))
    if not cases:
        raise InputError(f"{root.name}: no labels in labelsTr/*{ending}")
    return cases


def _from_datalist(path: Path, label_map: Any) -> list[TrainingCase]:
    from monai.data import load_decathlon_datalist

    from covidlesionseg.evaluate import case_id

    doc = json.loads(path.read_text())
    if label_map is not None:
        lut = parse_label_map(label_map)
    elif doc.get("labels"):
        lut = lut_from_names(doc["labels"])
    else:
        raise InputError(f"{path.name} names no labels; give label_map (e.g. 'medseg' or '1:lesion')")
    try:
        entries = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
    except (KeyError, ValueError) as exc:
        raise InputError(f"{path.name}: not a datalist with a 'training' list ({exc})") from None
    cases = []
    for entry in entries:
        image, label = Path(entry["image"]), Path(entry["label"])
        cid = str(entry.get("case_id") or case_id(image.name, image=True))
        fold = entry.get("fold")
        cases.append(TrainingCase(cid, image, label, dict(lut), str(entry.get("patient_key") or cid),
                                  LUNG in lut.values(), int(fold) if fold is not None else None))
    return cases


def _from_folders(images: Path, labels: Path, label_map: Any) -> list[TrainingCase]:
    from covidlesionseg.evaluate import pair_cases

    if label_map is None:
        raise InputError("image/label folders carry no label names; give label_map (e.g. 'medseg' or '1:lesion')")
    lut = parse_label_map(label_map)
    return [TrainingCase(cid, image, label, dict(lut), cid, LUNG in lut.values())
            for cid, image, label in pair_cases(images, labels)]


# --- checks -----------------------------------------------------------------------------------------
def _check_case(case: TrainingCase) -> None:
    """Image and label exist, share a grid (header only) and every label value is in the map."""
    for path in (case.image, case.label):
        if not path.is_file():
            raise InputError(f"case {case.case_id}: {path} not found")
    info = []
    for path in (case.image, case.label):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"case {case.case_id}: cannot read {path.name}") from None
        info.append((reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()))
    (size_i, spacing_i, origin_i), (size_l, spacing_l, origin_l) = info
    if size_i != size_l or not np.allclose(spacing_i, spacing_l, atol=GEOMETRY_TOL_MM) or not np.allclose(
            origin_i, origin_l, atol=1e-3):
        raise InputError(f"case {case.case_id}: label {case.label.name} is not on the image's grid")
    label_image = sitk.ReadImage(str(case.label))  # keep a reference: the view below borrows its buffer
    values = np.unique(sitk.GetArrayViewFromImage(label_image))
    unknown = sorted(int(v) for v in values if int(v) not in case.lut or v != int(v))
    if unknown:
        raise InputError(f"case {case.case_id}: {case.label.name} holds label values {unknown[:8]} that the label "
                         f"map {dict(sorted(case.lut.items()))} does not cover; give label_map explicitly")


def load_training_cases(spec: str | os.PathLike, label_map: str | Mapping[Any, Any] | None = None, *,
                        check: bool = True) -> list[TrainingCase]:
    """Training cases of an export folder, nnU-Net v2 raw folder, MONAI datalist JSON or ``IMAGES:LABELS``.

    ``label_map`` overrides the source's label names (a preset, ``"V:CLASS,..."`` or ``{value: class}``).
    With ``check`` each case's files, grids and label values are verified (one-line InputError otherwise).
    """
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists() and ":" in text:
        images, labels = (Path(p) for p in text.split(":", 1))
        cases = _from_folders(images, labels, label_map)
    elif path.is_file() and path.suffix == ".json":
        cases = _from_datalist(path, label_map)
    elif path.is_dir() and (path / store.VERSIONS_DIR).is_dir() and (path / store.DATALIST_JSON).is_file():
        if label_map is not None:
            raise InputError("an export folder has fixed labels (0 background, 1 lung, 2 lesion); drop label_map")
        cases = _from_export(path)
    elif path.is_dir() and (path / "dataset.json").is_file():
        cases = _from_nnunet(path, label_map)
    elif path.exists():
        raise InputError(f"{path}: not an export folder, nnU-Net raw folder (dataset.json) or datalist JSON")
    else:
        raise InputError(f"training data not found: {text}")
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"case id {case.case_id} appears twice in {text}")
        seen.add(case.case_id)
        if check:
            _check_case(case)
    return cases
