"""MRML glue: volume nodes <-> core ``Volume`` with geometry, label maps <-> segmentation nodes, severity table.

Imports slicer (runs in the Slicer application and headless on slicer-core); the maths stays in the
``covidlesionseg`` core.  MRML uses RAS coordinates, the core LPS: the two differ by diag(-1, -1, 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from covidlesionseg import labels
from covidlesionseg.io import Volume

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])

# Segment specifications: (label value, segment name, RGB colour 0..1)
LESION_SEGMENTS = [(1, "Lesion", (0.90, 0.20, 0.15))]
LUNG_SEGMENTS = [
    (labels.RIGHT_LUNG, "Right lung", (0.50, 0.70, 0.90)),
    (labels.LEFT_LUNG, "Left lung", (0.55, 0.85, 0.60)),
]
LOBE_COLORS = {
    labels.RUL: (0.69, 0.48, 0.39),
    labels.RML: (0.44, 0.72, 0.39),
    labels.RLL: (0.89, 0.66, 0.24),
    labels.LUL: (0.31, 0.54, 0.74),
    labels.LLL: (0.75, 0.45, 0.74),
}
LOBE_SEGMENTS = [(value, labels.LOBE_LONG_NAMES[value].capitalize(), LOBE_COLORS[value]) for value in labels.LOBE_NAMES]


def volume_from_node(node) -> Volume:
    """A core ``Volume`` (LPS geometry, numpy order) from a scalar volume node; the array is a copy."""
    array = np.array(slicer.util.arrayFromVolume(node))
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    m = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.array(node.GetSpacing(), dtype=float)
    direction_lps = RAS_FROM_LPS @ m[:3, :3] / spacing
    origin_lps = RAS_FROM_LPS @ m[:3, 3]
    return Volume(array, tuple(spacing), tuple(origin_lps), direction_lps, {"source": node.GetName()})


def _ijk_to_ras(volume: Volume) -> vtk.vtkMatrix4x4:
    m = np.eye(4)
    m[:3, :3] = RAS_FROM_LPS @ volume.direction * np.asarray(volume.spacing)
    m[:3, 3] = RAS_FROM_LPS @ np.asarray(volume.origin)
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def node_from_volume(volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node holding ``volume`` with its geometry (LPS -> RAS)."""
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, name)
    node.SetIJKToRASMatrix(_ijk_to_ras(volume))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    return node


def segmentation_from_labelmap(
    label_map: np.ndarray,
    reference_node,
    segments: Sequence[tuple[int, str, tuple[float, float, float]]],
    name: str,
    segmentation_node=None,
    *,
    values: dict[int, Iterable[int]] | None = None,
):
    """Put each label value of ``label_map`` (on the reference grid) into its own named segment.

    ``values`` maps a segment's label to several label-map values (e.g. lesion <- {1, 2}).
    Existing segments of the same name are replaced in place, so observers keep their segment ids.
    """
    node = segmentation_node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    for value, segment_name, color in segments:
        segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
        if not segment_id:
            segment_id = segmentation.AddEmptySegment(segment_name, segment_name, list(color))
        wanted = list(values.get(value, [value])) if values else [value]
        mask = np.isin(label_map, wanted).astype(np.uint8)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, reference_node)
    return node


def labelmap_from_segments(segmentation_node, segment_names: Sequence[str], reference_node) -> np.ndarray:
    """Label map on the reference grid: the i-th named segment gets value i+1 (later names win overlaps)."""
    out = None
    segmentation = segmentation_node.GetSegmentation()
    for i, segment_name in enumerate(segment_names, start=1):
        segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
        if not segment_id:
            raise ValueError(f"segmentation '{segmentation_node.GetName()}' has no segment named '{segment_name}'")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_node)
        if out is None:
            out = np.zeros(mask.shape, np.uint8)
        out[mask > 0] = i
    if out is None:
        raise ValueError("no segment names given")
    return out


TABLE_COLUMNS = [
    ("Region", "string"), ("Volume mL", "double"), ("Lesion mL", "double"), ("Lesion %", "double"),
    ("High opacity %", "double"), ("LSS", "int"), ("LHOS", "int"), ("CTSS", "int"),
]


def severity_rows(severity: dict[str, Any]) -> list[list[Any]]:
    """Rows of the severity table: the five lobes (when known), both lungs, then all lungs."""
    rows: list[list[Any]] = []
    for lobe_name in labels.LOBE_NAMES.values():
        lobe = severity.get("lobes", {}).get(lobe_name)
        if lobe:
            rows.append([lobe_name, lobe["volume_ml"], lobe["lesion_ml"], lobe["percent"],
                         lobe["high_opacity_percent"], lobe["lss"], lobe["lhos"], lobe["ctss"]])
    for side in ("right", "left"):
        lung = severity.get("lungs", {}).get(side)
        if lung:
            rows.append([f"{side} lung", lung["volume_ml"], lung["lesion_ml"], lung["percent"], None, None, None, None])
    rows.append(["both lungs", severity["lung_ml"], severity["lesion_ml"], severity["PO"], severity["PHO"],
                 severity["LSS"], severity["LHOS"], severity["CTSS"]])
    return rows


def update_severity_table(severity: dict[str, Any], table_node=None):
    """Fill (or create) a table node with typed columns; missing scores show as -1 in integer columns."""
    table_node = table_node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "COVID severity")
    table = vtk.vtkTable()
    makers = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}
    arrays = []
    for column_name, kind in TABLE_COLUMNS:
        arr = makers[kind]()
        arr.SetName(column_name)
        table.AddColumn(arr)
        arrays.append((arr, kind))
    for row in severity_rows(severity):
        for (arr, kind), value in zip(arrays, row):
            if kind == "string":
                arr.InsertNextValue(str(value))
            elif kind == "int":
                arr.InsertNextValue(-1 if value is None else int(value))
            else:
                arr.InsertNextValue(float("nan") if value is None else float(value))
    table_node.SetAndObserveTable(table)
    for column_name, _kind in TABLE_COLUMNS:
        table_node.SetColumnProperty(column_name, "nullValue", "-1")
    table_node.SetAttribute("COVIDLesionSeg.severity", "1")
    return table_node
