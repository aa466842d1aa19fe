"""The segments the module creates (names, colours and SNOMED-CT terminology from the core's
``covidlesionseg.terminology``, where each code is written once) and matching segments to lobes and lungs.

Entries use Slicer's serialized terminology format (``context~category~type~typeModifier~regionContext~region~
regionModifier``, each code ``scheme^value^meaning``), the string `vtkSlicerTerminologiesModuleLogic`
(de)serializes and `vtkSegment.GetTerminologyEntryTagName()` stores; `.seg.nrrd` keeps it.
"""

from __future__ import annotations

from covidlesionseg import labels
from covidlesionseg.terminology import (  # noqa: F401  (Code: the type of every code, for callers)
    BACKGROUND_SEGMENT,
    LESION_SEGMENT,
    LOBE_SEGMENTS,
    LUNG_MASK_SEGMENT,
    LUNG_SEGMENTS,
    Code,
    type_code_of,
)
from covidlesionseg.terminology import Segment as SegmentSpec

LESION = LESION_SEGMENT
BACKGROUND = BACKGROUND_SEGMENT  # seed of Grow from seeds
LUNG_MASK = LUNG_MASK_SEGMENT
RIGHT_LUNG = LUNG_SEGMENTS[labels.RIGHT_LUNG]
LEFT_LUNG = LUNG_SEGMENTS[labels.LEFT_LUNG]
LOBES: dict[int, SegmentSpec] = LOBE_SEGMENTS
LUNGS: dict[int, SegmentSpec] = LUNG_SEGMENTS


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
