"""Segment names, colours and SNOMED-CT terminology of every segment the module creates, and lobe matching.

Entries use Slicer's serialized terminology format (``context~category~type~typeModifier~regionContext~region~
regionModifier``, each code ``scheme^value^meaning``), the string `vtkSlicerTerminologiesModuleLogic`
(de)serializes and `vtkSegment.GetTerminologyEntryTagName()` stores; `.seg.nrrd` keeps it.  Codes are SNOMED-CT
(as in DICOM PS3.16 CID 7151/7150 and Slicer's "General Anatomy" list).
"""

from __future__ import annotations

from dataclasses import dataclass

from covidlesionseg import labels

CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
TISSUE = ("SCT", "85756007", "Tissue")
LUNG = ("SCT", "39607008", "Lung")
EMPTY = ("", "", "")

Code = tuple[str, str, str]


@dataclass(frozen=True)
class SegmentSpec:
    """A segment the module creates: name, RGB colour (0..1), SNOMED-CT category/type (and region)."""

    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    region: Code = EMPTY

    @property
    def type_code(self) -> str:
        return self.type[1]

    def entry(self) -> str:
        """The serialized terminology entry stored on the segment."""
        def code(c: Code) -> str:
            return "^".join(c)

        return "~".join([CATEGORY_CONTEXT, code(self.category), code(self.type), code(EMPTY), REGION_CONTEXT,
                         code(self.region), code(EMPTY)])


LESION = SegmentSpec("Lesion", (0.90, 0.20, 0.15), ALTERED_STRUCTURE, ("SCT", "52988006", "Lesion"), LUNG)
BACKGROUND = SegmentSpec("Background", (0.35, 0.35, 0.80), TISSUE, TISSUE)  # seed of Grow from seeds
LUNG_MASK = SegmentSpec("Lung mask", (0.55, 0.75, 0.95), ANATOMICAL_STRUCTURE, LUNG)
RIGHT_LUNG = SegmentSpec("Right lung", (0.50, 0.70, 0.90), ANATOMICAL_STRUCTURE, ("SCT", "3341006", "Right lung"))
LEFT_LUNG = SegmentSpec("Left lung", (0.55, 0.85, 0.60), ANATOMICAL_STRUCTURE, ("SCT", "44029006", "Left lung"))
LOBES: dict[int, SegmentSpec] = {
    labels.RUL: SegmentSpec("Right upper lobe", (0.69, 0.48, 0.39), ANATOMICAL_STRUCTURE,
                            ("SCT", "45653009", "Upper lobe of right lung")),
    labels.RML: SegmentSpec("Right middle lobe", (0.44, 0.72, 0.39), ANATOMICAL_STRUCTURE,
                            ("SCT", "72481006", "Middle lobe of right lung")),
    labels.RLL: SegmentSpec("Right lower lobe", (0.89, 0.66, 0.24), ANATOMICAL_STRUCTURE,
                            ("SCT", "266005", "Lower lobe of right lung")),
    labels.LUL: SegmentSpec("Left upper lobe", (0.31, 0.54, 0.74), ANATOMICAL_STRUCTURE,
                            ("SCT", "44714003", "Upper lobe of left lung")),
    labels.LLL: SegmentSpec("Left lower lobe", (0.75, 0.45, 0.74), ANATOMICAL_STRUCTURE,
                            ("SCT", "90572001", "Lower lobe of left lung")),
}
LUNGS: dict[int, SegmentSpec] = {labels.RIGHT_LUNG: RIGHT_LUNG, labels.LEFT_LUNG: LEFT_LUNG}


def type_code_of(entry: str | None) -> str:
    """The SNOMED-CT type code of a serialized entry ('' when the entry is empty or malformed)."""
    parts = (entry or "").split("~")
    if len(parts) < 3:
        return ""
    fields = parts[2].split("^")
    return fields[1] if len(fields) == 3 else ""


def match_segments(segments: list[tuple[str, str, str | None]], specs: dict[int, SegmentSpec]) -> dict[int, str]:
    """Label value -> segment id for ``segments`` given as (id, name, terminology entry).

    Matched by terminology type code first, then by name (case-insensitive), never by order; a value that
    matches no segment is left out, and two segments claiming one value raise ValueError.
    """
    found: dict[int, str] = {}
    by_code = {spec.type_code: value for value, spec in specs.items()}
    by_name = {spec.name.lower(): value for value, spec in specs.items()}
    for matcher in (lambda s: by_code.get(type_code_of(s[2])), lambda s: by_name.get(s[1].strip().lower())):
        for segment in segments:
            value = matcher(segment)
            if value is None or segment[0] in found.values():
                continue
            if value in found:
                raise ValueError(f"two segments are {specs[value].name}: '{segment[1]}' and another one")
            found[value] = segment[0]
    return found
