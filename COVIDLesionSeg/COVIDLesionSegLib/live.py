"""Live lobe scores: severity that follows the reader's edits, through observers, a coalescing scheduler and
`severity.SeverityCounter` updated from the changed region only.

Observed: `vtkSegmentation.SourceRepresentationModified`, `SegmentModified` (the editor's undo),
`SegmentAdded`, `SegmentRemoved` and `ModifiedEvent` on the lesion and anatomy segmentations, and the nodes'
`ModifiedEvent`.  Every event only
marks what is dirty and asks the scheduler for one update: bursts of events during a brush stroke become one
recomputation (the widget injects a single-shot QTimer, tests and the benchmark a `ManualScheduler`).

`vtkSegmentation` events name the segment, not the edited box, so `LayerTracker` keeps a copy of the lesion
segment's internal labelmap layer and finds the changed slabs by comparing it with the live (uncopied) layer;
only those slabs reach `SeverityCounter.update`.  A layer that did not change (same VTK modification time)
costs nothing.  Lung mask or anatomy edits rebuild the counter (rare, explicit steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import slicer
import vtk

from covidlesionseg.io import InputError, Volume
from covidlesionseg.lobes import complete_lobes
from covidlesionseg.severity import SeverityConfig, SeverityCounter
from COVIDLesionSegLib import anatomy as anatomy_mod
from COVIDLesionSegLib import mrml, terminology

SLAB = 8  # slices compared at a time when looking for the edited region

Box = tuple[slice, slice, slice]


class ManualScheduler:
    """Coalesces requests until `flush()` (tests, scripts, the benchmark)."""

    def __init__(self) -> None:
        self._pending: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def schedule(self, callback: Callable[[], None]) -> None:
        self._pending = callback

    def flush(self) -> None:
        callback, self._pending = self._pending, None
        if callback is not None:
            callback()


class QTimerScheduler:
    """A single-shot QTimer: the first request starts it, later ones within ``msec`` join the same update."""

    def __init__(self, msec: int = 40) -> None:
        import qt

        self.timer = qt.QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(msec)
        self.timer.timeout.connect(self._fire)
        self._callback: Callable[[], None] | None = None

    def schedule(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        if not self.timer.isActive():
            self.timer.start()

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def stop(self) -> None:
        self.timer.stop()
        self._callback = None


def _union(a: Box, b: Box) -> Box:
    out = []
    for x, y in zip(a, b):
        if x.stop <= x.start:
            out.append(y)
        elif y.stop <= y.start:
            out.append(x)
        else:
            out.append(slice(min(x.start, y.start), max(x.stop, y.stop)))
    return tuple(out)  # type: ignore[return-value]


class LayerTracker:
    """The changes of one segment since the last call, as (box, old mask, new mask) on the CT grid."""

    def __init__(self, segmentation_node, segment_id: str, reference_node) -> None:
        self.node, self.segment_id, self.reference = segmentation_node, segment_id, reference_node
        dims = reference_node.GetImageData().GetDimensions()
        self.shape = tuple(reversed(dims))
        internal = mrml.internal_labelmap(segmentation_node, segment_id, reference_node)
        if internal is None:
            raise ValueError(f"segment '{self.name}' does not lie on the CT grid")
        view, self.label, self.box = internal
        self.cache = np.zeros(self.shape, view.dtype)
        self.cache[self.box] = view
        self.image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        self.mtime = self.image.GetMTime()

    @property
    def name(self) -> str:
        segment = self.node.GetSegmentation().GetSegment(self.segment_id)
        return segment.GetName() if segment else self.segment_id

    def mask(self) -> np.ndarray:
        return self.cache == self.label

    def changes(self) -> list[tuple[Box, np.ndarray, np.ndarray]]:
        segmentation = self.node.GetSegmentation()
        if segmentation.GetSegment(self.segment_id) is None:
            raise ValueError(f"segment '{self.segment_id}' was deleted; scores stop until it is back")
        image = self.node.GetBinaryLabelmapInternalRepresentation(self.segment_id)
        if image is self.image and image.GetMTime() == self.mtime:
            return []
        internal = mrml.internal_labelmap(self.node, self.segment_id, self.reference)
        if internal is None:
            raise ValueError(f"segment '{self.name}' no longer lies on the CT grid")
        view, label, box = internal
        self.mtime = image.GetMTime()
        if image is not self.image or label != self.label or view.dtype != self.cache.dtype:
            # Another layer (undo, layer merge): compare masks over both extents.
            region = _union(self.box, box)
            old = self.cache[region] == self.label
            new = np.zeros(old.shape, bool)
            new[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))] = view == label
            self.image, self.label, self.box = image, label, box
            self.cache = np.zeros(self.shape, view.dtype)
            self.cache[box] = view
            return [(region, old, new)] if (old != new).any() else []
        region = _union(self.box, box)
        if region == box:
            current = view
        else:
            current = np.zeros(tuple(r.stop - r.start for r in region), view.dtype)
            current[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))] = view
        self.box = box
        cached = self.cache[region]
        out = []
        depth = current.shape[0]
        start = 0
        while start < depth:
            stop = min(start + SLAB, depth)
            if np.array_equal(cached[start:stop], current[start:stop]):
                start = stop
                continue
            while stop < depth and not np.array_equal(cached[stop:stop + SLAB], current[stop:stop + SLAB]):
                stop = min(stop + SLAB, depth)
            diff = cached[start:stop] != current[start:stop]
            jj = np.flatnonzero(diff.any(axis=(0, 2)))
            ii = np.flatnonzero(diff.any(axis=(0, 1)))
            kk = np.flatnonzero(diff.any(axis=(1, 2)))
            local = (slice(start + kk[0], start + kk[-1] + 1), slice(jj[0], jj[-1] + 1), slice(ii[0], ii[-1] + 1))
            old_values, new_values = cached[local], current[local]
            box_global = tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(region, local))
            out.append((box_global, old_values == self.label, new_values == self.label))
            self.cache[box_global] = new_values
            start = stop
        return out


class LiveScorer:
    """Severity of the lesion node's "Lesion" segment within its "Lung mask", per lobe of the anatomy node.

    ``severity`` holds the latest scores (None with ``message`` saying why when they cannot be computed: no
    stale or wrong number is kept); ``on_update(scorer)`` is called after every update; the table node (and
    the chart that reads it) are refreshed.
    """

    def __init__(self, volume_node, lesion_node, anatomy_node, table_node, scheduler, *,
                 config: SeverityConfig | None = None, lobe_source: str = "segmentation",
                 on_update: Callable[[LiveScorer], None] | None = None) -> None:
        self.volume_node, self.lesion_node, self.anatomy_node = volume_node, lesion_node, anatomy_node
        self.table_node, self.scheduler = table_node, scheduler
        self.config = config or SeverityConfig()
        self.lobe_source = lobe_source
        self.on_update = on_update
        self.severity: dict[str, Any] | None = None
        self.message = ""
        self.paused = ""  # non-empty while a segmentation runs: edits are not scored
        self.counter: SeverityCounter | None = None
        self.lesion: LayerTracker | None = None
        self.lung_mask: LayerTracker | None = None
        self._ct: Volume | None = None
        self._anatomy_stamp: tuple = ()
        self._rebuild = True
        self._observations: list[tuple[Any, int]] = []
        self.updates = 0

    # --- observers ---------------------------------------------------------------------------------
    def attach(self) -> None:
        """Observe the nodes and compute the scores now."""
        self.detach()
        # Undo replaces the segments' labelmaps: the editor logic's history fires SegmentModified, other
        # restores only ModifiedEvent; both are observed.
        segmentation_events = (slicer.vtkSegmentation.SourceRepresentationModified,
                               slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.SegmentAdded,
                               slicer.vtkSegmentation.SegmentRemoved, vtk.vtkCommand.ModifiedEvent)
        for node in (self.lesion_node, self.anatomy_node):
            segmentation = node.GetSegmentation()
            for event in segmentation_events:
                self._observations.append((segmentation, segmentation.AddObserver(event, self._on_event)))
            self._observations.append((node, node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_event)))
        self._rebuild = True
        self.update()

    def detach(self) -> None:
        for obj, tag in self._observations:
            obj.RemoveObserver(tag)
        self._observations = []

    def _on_event(self, caller, event) -> None:
        # Only mark and schedule: what changed is found at update time (cheap when nothing did).
        self.scheduler.schedule(self.update)

    # --- computation -------------------------------------------------------------------------------
    def _anatomy_fingerprint(self) -> tuple:
        stamps = []
        for segment_id, _name, entry in anatomy_mod.segments_of(self.anatomy_node):
            image = self.anatomy_node.GetBinaryLabelmapInternalRepresentation(segment_id)
            stamps.append((segment_id, entry, image.GetMTime() if image else 0))
        return tuple(stamps)

    def _segment_id(self, spec: terminology.SegmentSpec) -> str:
        found = terminology.match_segments(anatomy_mod.segments_of(self.lesion_node), {1: spec})
        if 1 not in found:
            raise ValueError(f"segment '{spec.name}' is missing from '{self.lesion_node.GetName()}'; "
                             f"scores stop until it is back (Undo restores it)")
        return found[1]

    def _segments_known(self) -> bool:
        segmentation = self.lesion_node.GetSegmentation()
        return all(tracker is not None and segmentation.GetSegment(tracker.segment_id) is not None
                   for tracker in (self.lesion, self.lung_mask))

    def rebuild(self) -> None:
        """Read everything again (start, lung mask or anatomy changes, segments added or removed)."""
        self.counter = None
        if self._ct is None:
            self._ct = mrml.volume_from_node(self.volume_node)
        ct = self._ct
        anatomy_mod.check_same_grid(self.lesion_node, self.volume_node)
        self.lesion = LayerTracker(self.lesion_node, self._segment_id(terminology.LESION), self.volume_node)
        self.lung_mask = LayerTracker(self.lesion_node, self._segment_id(terminology.LUNG_MASK), self.volume_node)
        anatomy = anatomy_mod.read_anatomy(self.anatomy_node, self.volume_node, self.lobe_source)
        self._anatomy_stamp = self._anatomy_fingerprint()
        lungs = anatomy_mod.sided_lung_mask(self.lung_mask.mask(), anatomy.lungs, ct)
        lobes = None if anatomy.lobes is None else complete_lobes(anatomy.lobes, lungs, ct)
        self.counter = SeverityCounter(ct, self.lesion.mask(), lungs, lobes, config=self.config,
                                       lobe_source=anatomy.source if lobes is not None else "none")
        self._rebuild = False

    def update(self) -> None:
        """Bring the scores up to date (called by the scheduler)."""
        self.updates += 1
        try:
            if self.paused:
                raise ValueError(self.paused)
            anatomy_mod.check_same_grid(self.lesion_node, self.volume_node)
            if not self._rebuild and self._anatomy_fingerprint() != self._anatomy_stamp:
                self._rebuild = True
            if not self._rebuild and self.lung_mask is not None and self.lung_mask.changes():
                self._rebuild = True
            if not self._rebuild and self.lesion is not None and not self._segments_known():
                self._rebuild = True
            if self._rebuild or self.counter is None or self.lesion is None:
                self.rebuild()
            else:
                for box, old, new in self.lesion.changes():
                    self.counter.update(box, old, new)
            assert self.counter is not None
            self.severity = self.counter.severity()
            self.message = ""
            mrml.update_severity_table(self.severity, self.table_node)
            self.table_node.SetAttribute("COVIDLesionSeg.message", "")
        except (ValueError, InputError) as exc:
            self._rebuild = True
            self.severity = None
            self.message = str(exc)
            mrml.clear_severity_table(self.table_node, self.message)
        if self.on_update is not None:
            self.on_update(self)
