"""Segment terminology: every code written once, in the core; the Slicer side and the export read it."""

from __future__ import annotations

import ast
from pathlib import Path

from covidlesionseg import labels
from covidlesionseg import terminology as core

SLICER_SIDE = Path(__file__).resolve().parents[2] / "COVIDLesionSeg" / "COVIDLesionSegLib"


def test_the_slicer_side_holds_no_codes_of_its_own():
    schemes = {"SCT", "DCM"}
    found = [f"{path.name}:{node.lineno}" for path in sorted(SLICER_SIDE.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in schemes]
    assert found == []


def test_every_segment_entry_round_trips_its_type_code():
    segments = [core.LESION_SEGMENT, core.BACKGROUND_SEGMENT, core.LUNG_MASK_SEGMENT, *core.LUNG_SEGMENTS.values(),
                *core.LOBE_SEGMENTS.values(), *core.EXPORT_SEGMENTS]
    for segment in segments:
        entry = segment.terminology_entry()
        assert entry.count("~") == 6 and core.type_code_of(entry) == segment.type_code != ""
    assert core.type_code_of("") == "" and core.type_code_of("a~b") == ""
    assert len({s.type_code for s in core.LOBE_SEGMENTS.values()}) == len(labels.LOBE_NAMES)


def test_the_export_writes_the_segments_the_module_creates():
    by_id = {spec.segment_id: spec for spec in core.EXPORT_SEGMENTS}
    for spec, segment in ((by_id["right_lung"], core.LUNG_SEGMENTS[labels.RIGHT_LUNG]),
                          (by_id["left_lung"], core.LUNG_SEGMENTS[labels.LEFT_LUNG]),
                          (by_id["lesion"], core.LESION_SEGMENT)):
        assert (spec.name, spec.color, spec.terminology_entry()) == (segment.name, segment.color,
                                                                     segment.terminology_entry())
    assert (by_id["right_lung"].source, by_id["right_lung"].value) == ("lungs", labels.RIGHT_LUNG)
    assert by_id["lesion"].source == "lesions"
