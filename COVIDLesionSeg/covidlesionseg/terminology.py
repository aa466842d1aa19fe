"""Segments and their coded terminology (SNOMED CT): the one place for the names, colours and codes of every
segment the Slicer module creates (COVIDLesionSegLib.terminology imports them) and the export writes (.seg.nrrd,
DICOM SEG).

Codes are SNOMED CT concepts as DICOM lists them in CID 7150 (segmented property categories) and CID 7151
(types); the category codes are the ones 3D Slicer's "General Anatomy" terminology uses, so a segment written
here is recognised by Slicer's terminology selector and by the COVIDLesionSeg module, which matches segments by
terminology type and laterality, then by name.

Slicer serialises a segment's terminology as one ``TerminologyEntry`` tag (vtkSegment.cxx)::

    context~category~type~type modifier~anatomic context~anatomic region~region modifier

where each coded item is ``scheme^value^meaning`` and an absent one is ``^^``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from covidlesionseg import labels

SLICER_CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A coded concept (scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = Code("", "", "")
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
LUNG = Code("SCT", "39607008", "Lung")
RIGHT_LUNG = Code("SCT", "3341006", "Right lung")
LEFT_LUNG = Code("SCT", "44029006", "Left lung")
LESION = Code("SCT", "52988006", "Lesion")
TISSUE = Code("SCT", "85756007", "Tissue")
LOBE_CODES: dict[int, Code] = {
    labels.RUL: Code("SCT", "45653009", "Upper lobe of right lung"),
    labels.RML: Code("SCT", "72481006", "Middle lobe of right lung"),
    labels.RLL: Code("SCT", "266005", "Lower lobe of right lung"),
    labels.LUL: Code("SCT", "44714003", "Upper lobe of left lung"),
    labels.LLL: Code("SCT", "90572001", "Lower lobe of left lung"),
}


@dataclass(frozen=True)
class Segment:
    """A segment as the Slicer module creates it: name, RGB colour (0..1) and SNOMED CT category, type, type
    modifier and anatomic region."""

    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    anatomic_region: Code = NO_CODE
    type_modifier: Code = NO_CODE

    @property
    def type_code(self) -> str:
        """The SNOMED CT code of the segment's type, by which segments are matched."""
        return self.type.value

    def terminology_entry(self) -> str:
        """The segment's terminology serialised as Slicer's ``TerminologyEntry`` tag value."""
        return "~".join([SLICER_CATEGORY_CONTEXT, self.category.slicer(), self.type.slicer(),
                         self.type_modifier.slicer(), SLICER_ANATOMY_CONTEXT, self.anatomic_region.slicer(),
                         NO_CODE.slicer()])


def type_code_of(entry: str | None) -> str:
    """The type code of a serialised ``TerminologyEntry`` ('' when the entry is empty or malformed)."""
    parts = (entry or "").split("~")
    if len(parts) < 3:
        return ""
    found = parts[2].split("^")
    return found[1] if len(found) == 3 else ""


LESION_SEGMENT = Segment("Lesion", (0.90, 0.20, 0.15), MORPHOLOGICALLY_ALTERED_STRUCTURE, LESION, LUNG)
BACKGROUND_SEGMENT = Segment("Background", (0.35, 0.35, 0.80), TISSUE, TISSUE)  # the seed of Grow from seeds
LUNG_MASK_SEGMENT = Segment("Lung mask", (0.55, 0.75, 0.95), ANATOMICAL_STRUCTURE, LUNG)
LUNG_SEGMENTS: dict[int, Segment] = {
    labels.RIGHT_LUNG: Segment("Right lung", (0.50, 0.70, 0.90), ANATOMICAL_STRUCTURE, RIGHT_LUNG),
    labels.LEFT_LUNG: Segment("Left lung", (0.55, 0.85, 0.60), ANATOMICAL_STRUCTURE, LEFT_LUNG),
}
_LOBE_COLORS = {labels.RUL: (0.69, 0.48, 0.39), labels.RML: (0.44, 0.72, 0.39), labels.RLL: (0.89, 0.66, 0.24),
                labels.LUL: (0.31, 0.54, 0.74), labels.LLL: (0.75, 0.45, 0.74)}
LOBE_SEGMENTS: dict[int, Segment] = {
    value: Segment(labels.LOBE_LONG_NAMES[value].capitalize(), _LOBE_COLORS[value], ANATOMICAL_STRUCTURE, code)
    for value, code in LOBE_CODES.items()
}


@dataclass(frozen=True, kw_only=True)
class SegmentSpec(Segment):
    """One exported segment: a ``Segment`` and where its voxels come from, the label map ("lungs" or
    "lesions") and its value there (lesions: every value > 0)."""

    segment_id: str
    source: str  # "lungs" | "lesions"
    value: int

    @classmethod
    def of(cls, segment: Segment, segment_id: str, source: str, value: int) -> SegmentSpec:
        return cls(**{f.name: getattr(segment, f.name) for f in fields(Segment)},
                   segment_id=segment_id, source=source, value=value)


# The segments as the Slicer module gives them; lungs include lesions.
EXPORT_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec.of(LUNG_SEGMENTS[labels.RIGHT_LUNG], "right_lung", "lungs", labels.RIGHT_LUNG),
    SegmentSpec.of(LUNG_SEGMENTS[labels.LEFT_LUNG], "left_lung", "lungs", labels.LEFT_LUNG),
    SegmentSpec.of(LESION_SEGMENT, "lesion", "lesions", 1),
)
