"""Reading the anatomy (lungs, lobes) and the reader's lung mask from segmentation nodes, with checks.

Lobes are found by terminology, then by name, never by segment order (`terminology.match_segments`).
Lobes that overlap, lobes partly missing, or a node on another grid give a one-line ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from scipy import ndimage

from covidlesionseg import labels
from covidlesionseg.io import Volume
from COVIDLesionSegLib import mrml, terminology


@dataclass
class Anatomy:
    """Lungs (1 right, 2 left) and lobes (1..5 or None) on the CT grid; ``source`` is severity's lobe_source."""

    lungs: np.ndarray
    lobes: np.ndarray | None
    source: str


def segments_of(node) -> list[tuple[str, str, str]]:
    """(id, name, terminology entry) of every segment of a segmentation node."""
    segmentation = node.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        entry = vtk.reference("")
        segment.GetTag(segment.GetTerminologyEntryTagName(), entry)
        out.append((segmentation.GetNthSegmentID(index), segment.GetName(), str(entry)))
    return out


def check_same_grid(segmentation_node, volume_node) -> None:
    """Refuse a segmentation whose reference geometry is not the CT's grid (it was made on another volume)."""
    geometry = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not geometry:
        return
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image = volume_node.GetImageData()
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijk_to_ras, image.GetExtent())
    if _numbers(geometry) is None or not np.allclose(_numbers(geometry), _numbers(expected), atol=1e-4):
        raise ValueError(f"segmentation '{segmentation_node.GetName()}' lies on another grid than CT "
                         f"'{volume_node.GetName()}'; segment this CT or resample the segmentation onto it")


def _numbers(serialized: str) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in serialized.replace(";", " ").split()])
    except ValueError:
        return None


def read_anatomy(anatomy_node, volume_node, lobe_source: str = "segmentation") -> Anatomy:
    """Lungs and lobes of the anatomy node on the CT grid (lobes when all five are present)."""
    check_same_grid(anatomy_node, volume_node)
    segments = segments_of(anatomy_node)
    lobe_ids = terminology.match_segments(segments, terminology.LOBES)
    if lobe_ids:
        if len(lobe_ids) < len(terminology.LOBES):
            missing = [terminology.LOBES[v].name for v in terminology.LOBES if v not in lobe_ids]
            raise ValueError(f"anatomy '{anatomy_node.GetName()}' lacks the lobe(s) {', '.join(missing)}; "
                             f"add them or choose lobe source 'none'")
        lobes = mrml.labelmap_from_segments(anatomy_node, lobe_ids, volume_node)
        return Anatomy(labels.lungs_from_lobes(lobes), lobes, lobe_source)
    lung_ids = terminology.match_segments(segments, terminology.LUNGS)
    if len(lung_ids) < 2:
        raise ValueError(f"anatomy '{anatomy_node.GetName()}' has neither five lobes nor right and left lungs")
    return Anatomy(mrml.labelmap_from_segments(anatomy_node, lung_ids, volume_node), None, "none")


def sided_lung_mask(mask: np.ndarray, lungs: np.ndarray, ct: Volume) -> np.ndarray:
    """The reader's lung mask with sides: anatomy's side where it has one, else the nearest lung's side.

    Voxels the reader added (consolidation the lung mask missed) take the side of the nearest anatomy lung
    voxel (Euclidean distance in mm, in a box around the added voxels).
    """
    out = np.where(mask, lungs, 0).astype(np.uint8)
    added = mask & (lungs == 0)
    if not added.any():
        return out
    if not (lungs > 0).any():
        raise ValueError("the anatomy has no lung voxel to give the lung mask a side")
    box = ndimage.find_objects(added.astype(np.uint8))[0]
    margin = 8
    while True:
        grown = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, mask.shape))
        if (lungs[grown] > 0).any() or all(g.stop - g.start == n for g, n in zip(grown, mask.shape)):
            break
        margin *= 2
    local = lungs[grown]
    nearest = ndimage.distance_transform_edt(local == 0, sampling=ct.spacing_zyx, return_distances=False,
                                             return_indices=True)
    sides = local[tuple(nearest)]
    region = out[grown]
    region[added[grown]] = sides[added[grown]]
    return out
