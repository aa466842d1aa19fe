"""MRML glue: volume nodes <-> core ``Volume`` with geometry, label maps <-> segmentation nodes, severity table.

Imports slicer (runs in the Slicer application and headless on slicer-core); the maths stays in the
``covidlesionseg`` core.  MRML uses RAS coordinates, the core LPS: the two differ by diag(-1, -1, 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from covidlesionseg import labels
from covidlesionseg.io import Volume
from covidlesionseg.severity import CATEGORY_SCORES
from covidlesionseg.severity import TABLE_COLUMNS as REGION_COLUMNS
from COVIDLesionSegLib.terminology import SegmentSpec

SEVERITY_ATTRIBUTE = "COVIDLesionSeg.severity"
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])

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


def set_segment(node, spec: SegmentSpec, mask: np.ndarray | None, reference_node) -> str:
    """Create or replace the segment named ``spec.name`` (colour, terminology) with ``mask`` (reference grid).

    An existing segment keeps its id, so observers and the editor's selection stay valid.
    """
    segmentation = node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
    if not segment_id:
        segment_id = segmentation.AddEmptySegment(spec.name, spec.name, list(spec.color))
    segment = segmentation.GetSegment(segment_id)
    segment.SetColor(*spec.color)
    segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology_entry())
    if mask is not None:
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.ascontiguousarray(mask, np.uint8), node, segment_id,
                                                         reference_node)
    return segment_id


def segmentation_from_labelmap(
    label_map: np.ndarray,
    reference_node,
    segments: Sequence[tuple[int, SegmentSpec]],
    name: str,
    segmentation_node=None,
    *,
    values: dict[int, Iterable[int]] | None = None,
):
    """Put each label value of ``label_map`` (on the reference grid) into its own segment (name, colour,
    terminology); ``values`` maps a segment's label to several label-map values (e.g. lesion <- {1, 2})."""
    node = segmentation_node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    for value, spec in segments:
        wanted = list(values.get(value, [value])) if values else [value]
        set_segment(node, spec, np.isin(label_map, wanted), reference_node)
    return node


def internal_labelmap(segmentation_node, segment_id: str, reference_node):
    """(view, label value, box) of a segment's internal labelmap when it lies on the reference grid, else None.

    ``view`` is the shared layer's voxels (no copy, cropped to its extent), ``box`` its slices on the grid.
    """
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if image is None:
        return None
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference_node.GetIJKToRASMatrix(ijk_to_ras)
    if any(abs(image_to_world.GetElement(r, c) - ijk_to_ras.GetElement(r, c)) > 1e-6
           for r in range(4) for c in range(4)):
        return None
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    dims = reference_node.GetImageData().GetDimensions()
    if i0 < 0 or j0 < 0 or k0 < 0 or i1 >= dims[0] or j1 >= dims[1] or k1 >= dims[2]:
        return None
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    if i1 < i0 or j1 < j0 or k1 < k0:
        return np.zeros((0, 0, 0), np.uint8), label, (slice(0, 0),) * 3
    view = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    return view, label, (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))


def segment_mask(segmentation_node, segment_id: str, reference_node) -> np.ndarray:
    """The segment as a bool array on the reference grid (a copy; fast when it already lies on that grid)."""
    internal = internal_labelmap(segmentation_node, segment_id, reference_node)
    if internal is None:
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_node) > 0
    view, label, box = internal
    dims = reference_node.GetImageData().GetDimensions()
    out = np.zeros(tuple(reversed(dims)), bool)
    out[box] = view == label
    return out


def labelmap_from_segments(segmentation_node, segment_ids: dict[int, str], reference_node) -> np.ndarray:
    """Label map on the reference grid: each segment id gets its label value; overlaps raise ValueError."""
    out = None
    names = {}
    for value, segment_id in segment_ids.items():
        mask = segment_mask(segmentation_node, segment_id, reference_node)
        if out is None:
            out = np.zeros(mask.shape, np.uint8)
        overlap = mask & (out > 0)
        if overlap.any():
            other = names[int(out[overlap][0])]
            this = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
            raise ValueError(f"segments '{other}' and '{this}' overlap in {int(overlap.sum())} voxels; "
                             f"each voxel must belong to one of them")
        out[mask] = value
        names[value] = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
    if out is None:
        raise ValueError("no segments given")
    return out


TABLE_COLUMNS = [
    ("Region", "string"),
    *((column.title[0].upper() + column.title[1:], "int" if column.integer else "double") for column in REGION_COLUMNS),
    ("CT category", "string"),
]
"""The table's columns: the region, the core's per-region columns (``covidlesionseg.severity.TABLE_COLUMNS``,
generated from its declared scores), and the whole chest's categories."""


def severity_rows(severity: dict[str, Any]) -> list[list[Any]]:
    """Rows of the severity table: the five lobes (when known), both lungs, then all lungs."""
    regions = [(name, severity.get("lobes", {}).get(name)) for name in labels.LOBE_NAMES.values()]
    regions += [(f"{side} lung", severity.get("lungs", {}).get(side)) for side in ("right", "left")]
    rows: list[list[Any]] = [[name, *(region.get(column.region_key) for column in REGION_COLUMNS), ""]
                             for name, region in regions if region]
    # the column is named after the CT category: it comes first, then the CTSS category
    categories = " / ".join(str(severity[s.key]) for s in reversed(CATEGORY_SCORES) if severity.get(s.key))
    rows.append(["both lungs", *(severity[column.whole_key] for column in REGION_COLUMNS), categories])
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
                arr.InsertNextValue("" if value is None else str(value))
            elif kind == "int":
                arr.InsertNextValue(-1 if value is None else int(value))
            else:
                arr.InsertNextValue(float("nan") if value is None else float(value))
    table_node.SetAndObserveTable(table)
    for column_name, _kind in TABLE_COLUMNS:
        table_node.SetColumnProperty(column_name, "nullValue", "-1")
    table_node.SetAttribute(SEVERITY_ATTRIBUTE, json.dumps(severity))  # saved with the scene
    return table_node


def clear_severity_table(table_node, reason: str) -> None:
    """Empty the table (columns kept) so that no stale number stays on screen; ``reason`` says why."""
    table = vtk.vtkTable()
    makers = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}
    for column_name, kind in TABLE_COLUMNS:
        arr = makers[kind]()
        arr.SetName(column_name)
        table.AddColumn(arr)
    table_node.SetAndObserveTable(table)
    table_node.SetAttribute("COVIDLesionSeg.message", reason)


def severity_chart(table_node, chart_node=None):
    """A bar chart of lesion % per region of ``table_node`` (it follows the table as the table changes)."""
    scene = table_node.GetScene()
    series = None
    if chart_node is not None and chart_node.GetNumberOfPlotSeriesNodes():
        series = chart_node.GetNthPlotSeriesNode(0)
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{table_node.GetName()} lesion %")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetLabelColumnName("Region")
    series.SetYColumnName("Lesion %")
    series.SetColor(0.90, 0.20, 0.15)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{table_node.GetName()} chart")
    if not chart_node.HasPlotSeriesNodeID(series.GetID()):
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    chart_node.SetTitle("Lesion % per region")
    chart_node.SetYAxisTitle("% of region")
    return chart_node
