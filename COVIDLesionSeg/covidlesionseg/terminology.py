"""Segments of an exported case and their coded terminology (SNOMED CT), for .seg.nrrd and DICOM SEG.

One place for the segment names, colours and codes that the export writes.  Codes are SNOMED CT
concepts as DICOM lists them in CID 7150 (segmented property categories) and CID 7151 (types);
the category codes are the ones 3D Slicer's "General Anatomy" terminology uses,
so a segment written here is recognised by Slicer's terminology selector and by the COVIDLesionSeg
module, which matches segments by terminology type and laterality, then by name.

Slicer serialises a segment's terminology as one ``TerminologyEntry`` tag (vtkSegment.cxx)::

    context~category~type~type modifier~anatomic context~anatomic region~region modifier

where each coded item is ``scheme^value^meaning`` and an absent one is ``^^``.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class SegmentSpec:
    """One exported segment: which label map ("lungs" or "lesions") and which of its values it is."""

    segment_id: str
    name: str
    source: str  # "lungs" | "lesions"
    value: int  # label value in the source map (lesions: every value > 0)
    color: tuple[float, float, float]
    category: Code
    type: Code
    type_modifier: Code = NO_CODE
    anatomic_region: Code = NO_CODE

    def terminology_entry(self) -> str:
        """The segment's terminology serialised as Slicer's ``TerminologyEntry`` tag value."""
        return "~".join([SLICER_CATEGORY_CONTEXT, self.category.slicer(), self.type.slicer(),
                         self.type_modifier.slicer(), SLICER_ANATOMY_CONTEXT, self.anatomic_region.slicer(),
                         NO_CODE.slicer()])


# Names, colours and codes as the Slicer module gives its segments; lungs include lesions.
EXPORT_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec("right_lung", "Right lung", "lungs", labels.RIGHT_LUNG, (0.50, 0.70, 0.90),
                ANATOMICAL_STRUCTURE, RIGHT_LUNG),
    SegmentSpec("left_lung", "Left lung", "lungs", labels.LEFT_LUNG, (0.55, 0.85, 0.60),
                ANATOMICAL_STRUCTURE, LEFT_LUNG),
    SegmentSpec("lesion", "Lesion", "lesions", 1, (0.90, 0.20, 0.15),
                MORPHOLOGICALLY_ALTERED_STRUCTURE, LESION, anatomic_region=LUNG),
)
