"""COVIDLesionSegLogic: everything the module does, usable from the Slicer Python console and headless.

- ``segment(volumeNode)`` runs in this process and blocks (scripts, the console, tests);
- ``start_run(...)`` runs the core's ``segment`` command in a background process group (a runner object:
  QProcess in the widget, subprocess in scripts), ``cancel_run()`` ends the whole group, and the results
  are loaded onto the volume that was segmented, never the one a selector shows when the run ends;
- ``start_live(scheduler)`` keeps the severity table and chart following the reader's edits;
- ``export(folder)`` writes the corrected case, with the engine's original lesions beside it, for retraining;
  ``export_scene(folder)`` does so for every corrected case of the scene.
The nodes of the current case are linked through the parameter node, and every case's lesion node refers to its
CT, anatomy, original lesions and table, so a saved and reloaded scene restores them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from covidlesionseg import io, labels
from covidlesionseg.severity import SeverityConfig
from COVIDLesionSegLib import anatomy as anatomy_mod
from COVIDLesionSegLib import editor, mrml, process, terminology
from COVIDLesionSegLib.live import LiveScorer
from COVIDLesionSegLib.parameters import Parameters

SEVERITY_ATTRIBUTE = mrml.SEVERITY_ATTRIBUTE
VOLUME_REFERENCE = "COVIDLesionSeg.volume"
# Node references from a case's lesion node to the rest of its case (every case of a scene, not only the current).
CASE_REFERENCES = {"anatomy": "COVIDLesionSeg.anatomy", "original": "COVIDLesionSeg.original",
                   "table": "COVIDLesionSeg.table"}
LOADED_STAMP = "COVIDLesionSeg.loadedMTime"
LOBE_SOURCES = ("builtin", "segmentation", "file", "none")


@dataclass
class SegmentationNodes:
    """The nodes of one case: lesions (the reader edits), anatomy (lungs/lobes, read-only), table, chart,
    the engine's original lesions (for export), and the severity of the last full computation."""

    lesions: Any
    anatomy: Any
    table: Any
    original: Any = None
    chart: Any = None
    severity: dict[str, Any] = field(default_factory=dict)


@dataclass
class SceneExportCase:
    """One case of :meth:`COVIDLesionSegLogic.export_scene`: exported (case id, version), skipped or failed (why).

    ``volume`` is the CT node's name, shown to the user in the session only; it is never written to the export.
    """

    volume: str | None
    volume_id: str | None
    case_id: str | None = None
    version: int | None = None
    skipped: str | None = None
    error: str | None = None
    result: Any = None

    @property
    def exported(self) -> bool:
        return self.result is not None


@dataclass
class ActiveRun:
    """A background run: which volume it segments, where its files are, its runner."""

    volume_id: str
    workdir: str
    output_dir: str
    runner: Any
    replace: bool
    edits_at_start: int


class COVIDLesionSegLogic:
    """Segmentation, live severity, export and the session's nodes for a CT volume node."""

    def __init__(self, config: SeverityConfig | None = None, runner_factory: Callable[[], Any] | None = None):
        self.config = config or SeverityConfig()
        self.runner_factory = runner_factory or process.runner_for_environment
        self.run: ActiveRun | None = None
        self.live: LiveScorer | None = None

    @property
    def parameters(self) -> Parameters:
        return Parameters(slicer.mrmlScene)

    # --- checks ------------------------------------------------------------------------------------
    @staticmethod
    def check_volume(volume_node) -> None:
        """A clear one-line refusal for anything that is not a CT in Hounsfield units."""
        if volume_node is None:
            raise ValueError("select a CT volume first")
        if volume_node.IsA("vtkMRMLLabelMapVolumeNode") or volume_node.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(f"'{volume_node.GetName()}' is a label map, not a CT")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.GetImageData() is None:
            raise ValueError(f"'{volume_node.GetName()}' is not a scalar volume with voxels")
        if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ValueError(f"'{volume_node.GetName()}' has several components (colour?); a CT has one")
        low, high = volume_node.GetImageData().GetScalarRange()
        if low > -500 or high < 0:
            raise ValueError(f"'{volume_node.GetName()}' ranges {low:.0f}..{high:.0f}, not a CT in Hounsfield units "
                             f"(air near -1000 HU)")

    @staticmethod
    def available_devices() -> list[str]:
        """auto and cpu always; cuda only when torch sees a GPU."""
        devices = ["auto", "cpu"]
        try:
            import torch

            if torch.cuda.is_available():
                devices.append("cuda")
        except ImportError:
            pass
        return devices

    def check_device(self, device: str) -> None:
        if device not in self.available_devices():
            raise ValueError(f"device '{device}' is not available here (available: "
                             f"{', '.join(self.available_devices())})")

    def volume_from_node(self, volume_node) -> io.Volume:
        """The CT of a volume node as a checked core Volume (float32 HU)."""
        self.check_volume(volume_node)
        volume = mrml.volume_from_node(volume_node)
        image = io.check_ct(volume.to_sitk(volume.array.astype(np.float32)), {}, volume_node.GetName())
        return io.Volume.from_sitk(image, {"source": volume_node.GetName()})

    def nodes_for(self, volume_node) -> SegmentationNodes | None:
        """The case nodes of ``volume_node`` recorded in the parameter node, if they belong to it."""
        p = self.parameters
        lesions, anatomy, table = p.node_for("lesions"), p.node_for("anatomy"), p.node_for("table")
        if lesions is None or anatomy is None or table is None:
            return None
        if volume_node is not None and lesions.GetNodeReferenceID(VOLUME_REFERENCE) != volume_node.GetID():
            return None
        chart = table.GetNodeReference("COVIDLesionSeg.chart")
        severity = json.loads(table.GetAttribute(SEVERITY_ATTRIBUTE) or "{}")
        return SegmentationNodes(lesions, anatomy, table, p.node_for("original"), chart, severity)

    def has_corrections(self, volume_node) -> bool:
        """True when this CT's lesion node was edited since the run loaded it (the GUI asks before replacing)."""
        nodes = self.nodes_for(volume_node)
        return nodes is not None and self._edited(nodes.lesions)

    def _edited(self, lesion_node) -> bool:
        return lesion_node.GetAttribute(LOADED_STAMP) != str(self._edit_stamp(lesion_node))

    def is_corrected(self, volume_node, nodes: SegmentationNodes) -> bool:
        """True when the case's lesions differ from the engine's original lesions (voxel by voxel, so it holds
        after a scene is saved and loaded again, and an edit undone is no correction); without the original,
        when the lesion node was edited since the run loaded it."""
        if nodes.original is None:
            return self._edited(nodes.lesions)
        final = mrml.segment_mask(nodes.lesions, editor.segment_id(nodes.lesions, terminology.LESION), volume_node)
        original = slicer.util.arrayFromVolume(nodes.original)
        return original.shape != final.shape or bool(np.any((original > 0) != final))

    def case_nodes(self, lesion_node) -> SegmentationNodes:
        """Every node of the case a lesion node belongs to, from its references (any case, not only the current).

        Scenes saved before the lesion node carried these references: the anatomy is the read-only segmentation
        that refers to the same CT, and the engine's original lesions are then unknown (exported without them).
        """
        volume_node = lesion_node.GetNodeReference(VOLUME_REFERENCE)
        current = self.nodes_for(volume_node) if volume_node is not None else None
        if current is not None and current.lesions is lesion_node:
            return current
        anatomy, original, table = (lesion_node.GetNodeReference(ref) for ref in CASE_REFERENCES.values())
        if anatomy is None and volume_node is not None:
            anatomy = next((n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
                            if n is not lesion_node and n.GetAttribute(LOADED_STAMP) is None
                            and n.GetNodeReferenceID(VOLUME_REFERENCE) == volume_node.GetID()), None)
        chart = table.GetNodeReference("COVIDLesionSeg.chart") if table is not None else None
        severity = json.loads((table.GetAttribute(SEVERITY_ATTRIBUTE) if table is not None else None) or "{}")
        return SegmentationNodes(lesion_node, anatomy, table, original, chart, severity)

    def scene_cases(self) -> list[tuple[Any, SegmentationNodes | None]]:
        """(CT node, its case nodes or None when not segmented) for every CT of the scene, in scene order.

        A CT segmented more than once without replacing has several lesion nodes: its case is the parameter
        node's when that is this CT's, otherwise the newest lesion node.  A lesion node whose CT was removed
        is listed with a None CT.
        """
        lesion_nodes: dict[str | None, list] = {}
        for node in slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode"):
            if node.GetAttribute(LOADED_STAMP) is not None:  # a lesion node (the anatomy carries no stamp)
                volume = node.GetNodeReference(VOLUME_REFERENCE)
                lesion_nodes.setdefault(volume.GetID() if volume is not None else None, []).append(node)
        cases: list[tuple[Any, SegmentationNodes | None]] = []
        for volume in slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode"):
            if volume.IsA("vtkMRMLLabelMapVolumeNode") or volume.GetAttribute("COVIDLesionSeg.role"):
                continue
            current = self.nodes_for(volume)
            found = lesion_nodes.get(volume.GetID())
            cases.append((volume, current or (self.case_nodes(found[-1]) if found else None)))
        cases += [(None, self.case_nodes(node)) for node in lesion_nodes.get(None, [])]
        return cases

    @staticmethod
    def _edit_stamp(lesion_node) -> int:
        image = lesion_node.GetBinaryLabelmapInternalRepresentation(editor.segment_id(lesion_node, terminology.LESION))
        return image.GetMTime() if image is not None else 0

    # --- in-process (blocking) ---------------------------------------------------------------------
    def segment(self, volume_node, engine: str | None = None, lobes: str = "none", device: str = "auto",
                lobe_file: str | None = None, lobe_segmentation=None, replace: bool = False,
                progress=None, cancel=None) -> SegmentationNodes:
        """Segment lungs, lesions and lobes of ``volume_node`` (blocking) and show them as nodes.

        ``lobes``: "builtin" | "segmentation" (``lobe_segmentation``) | "file" (``lobe_file``) | "none".
        Without ``replace`` a CT that already has nodes gets new ones (scripts never lose corrections).
        """
        from covidlesionseg.engines.factory import make_engine
        from covidlesionseg.pipeline import run_segmentation

        self.check_device(device)
        ct = self.volume_from_node(volume_node)
        with tempfile.TemporaryDirectory(prefix="COVIDLesionSeg-") as work:
            spec, convention = self._lobe_spec(volume_node, lobes, lobe_file, lobe_segmentation, work, ct)
            result = run_segmentation(ct, make_engine(engine, device=device), lobes=spec,
                                      lobe_convention=convention, config=self.config, progress=progress,
                                      cancel=cancel)
        return self.show_results(volume_node, result.lesions, result.lungs, result.lobes, result.severity,
                                 replace=replace)

    def _lobe_spec(self, volume_node, lobes: str, lobe_file: str | None, lobe_segmentation, work: str,
                   ct: io.Volume) -> tuple[str, str | None]:
        """The ``--lobes`` value (and convention) of a lobe source choice."""
        if lobes not in LOBE_SOURCES:
            raise ValueError(f"lobe source must be one of {', '.join(LOBE_SOURCES)}, not '{lobes}'")
        if lobes == "builtin":
            return "builtin", None
        if lobes == "none":
            return "none", None
        if lobes == "file":
            if not lobe_file or not Path(lobe_file).is_file():
                raise ValueError(f"lobe file not found: {lobe_file or '(none chosen)'}")
            return str(lobe_file), None
        if lobe_segmentation is None:
            raise ValueError("choose the segmentation that holds the lobes")
        found = anatomy_mod.read_anatomy(lobe_segmentation, volume_node)
        if found.lobes is None:
            raise ValueError(f"'{lobe_segmentation.GetName()}' holds no five lobes (matched by terminology or name)")
        path = os.path.join(work, "lobes.nii.gz")
        io.write_label(path, ct, found.lobes)
        return path, "covidlesionseg"

    # --- background (QProcess in the widget, subprocess in scripts and tests) ----------------------
    def start_run(self, volume_node, engine: str | None = None, lobes: str = "none", device: str = "auto",
                  lobe_file: str | None = None, lobe_segmentation=None, replace: bool = False,
                  on_line: Callable[[str], None] | None = None,
                  on_finished: Callable[[int], None] | None = None) -> ActiveRun:
        """Start ``covidlesionseg segment`` on the CT in a background process group."""
        if self.run is not None:
            raise ValueError("a segmentation is already running; cancel it first")
        self.check_device(device)
        ct = self.volume_from_node(volume_node)
        workdir = tempfile.mkdtemp(prefix="COVIDLesionSeg-")
        try:
            spec, convention = self._lobe_spec(volume_node, lobes, lobe_file, lobe_segmentation, workdir, ct)
            input_path = os.path.join(workdir, "ct.nrrd")
            io.write_volume(input_path, ct)
            output_dir = os.path.join(workdir, "out")
            args = ["segment", input_path, "-o", output_dir, "--device", device, "--lobes", spec,
                    "--high-opacity-hu", str(self.config.high_opacity_hu), "--floor-ml", str(self.config.floor_ml)]
            if convention:
                args += ["--lobe-convention", convention]
            if engine:
                args += ["--engine", engine]
            command = process.leader_command(self.python_executable(), "covidlesionseg", args)
            runner = self.runner_factory()
            nodes = self.nodes_for(volume_node)
            stamp = self._edit_stamp(nodes.lesions) if nodes else 0
            self.run = ActiveRun(volume_node.GetID(), workdir, output_dir, runner, replace, stamp)
            if self.live is not None:
                self.live.paused = "a segmentation is running; edits made now are not scored"
            runner.start(command, self.segmentation_environment(), on_line, on_finished)
        except Exception:
            self.run = None
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return self.run

    def cancel_run(self) -> None:
        """End the run's whole process tree; nothing is loaded and its temporary folder is removed."""
        if self.run is None:
            return
        self.run.runner.cancel()
        self._end_run()

    def finish_run(self) -> SegmentationNodes | None:
        """After the runner finished: load the results onto the volume that was segmented (None if it failed).

        Raises ValueError with the worker's error line when the run failed.
        """
        run = self.run
        if run is None:
            return None
        state = run.runner.state
        try:
            if state.status != "succeeded":
                if state.status == "cancelled":
                    return None
                raise ValueError(state.errors[-1] if state.errors else "segmentation failed")
            volume_node = slicer.mrmlScene.GetNodeByID(run.volume_id)
            if volume_node is None:
                raise ValueError("the segmented volume was removed from the scene; results not loaded")
            nodes = self.nodes_for(volume_node)
            edited = nodes is not None and self._edit_stamp(nodes.lesions) != run.edits_at_start
            return self.load_results(volume_node, run.output_dir, replace=run.replace and not edited)
        finally:
            self._end_run()

    def _end_run(self) -> None:
        if self.run is not None:
            shutil.rmtree(self.run.workdir, ignore_errors=True)
        self.run = None
        if self.live is not None:
            self.live.paused = ""
            self.live.scheduler.schedule(self.live.update)

    @staticmethod
    def python_executable() -> str:
        """PythonSlicer inside Slicer, else this interpreter."""
        exe = Path(sys.executable)
        candidate = exe.with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        return str(candidate if candidate.exists() else exe)

    @staticmethod
    def segmentation_environment() -> dict[str, str]:
        """The core package on PYTHONPATH (PythonSlicer lacks the module folder), progress as lines."""
        import covidlesionseg

        core_parent = str(Path(covidlesionseg.__file__).resolve().parents[1])
        existing = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": core_parent + (os.pathsep + existing if existing else ""),
            "COVIDLESIONSEG_PROGRESS": "lines",
            "PYTHONUNBUFFERED": "1",
        }

    def load_results(self, volume_node, output_dir: str, replace: bool = False) -> SegmentationNodes:
        """Load a ``segment`` output folder onto ``volume_node``'s grid as nodes."""
        out = Path(output_dir)
        reference = self.volume_from_node(volume_node)
        lesions = io.read_label(out / labels.LESIONS_FILE, reference).array
        lungs = io.read_label(out / labels.LUNGS_FILE, reference).array
        lobes_path = out / labels.LOBES_FILE
        lobes = io.read_label(lobes_path, reference).array if lobes_path.exists() else None
        severity = json.loads((out / labels.SEVERITY_FILE).read_text())
        return self.show_results(volume_node, lesions, lungs, lobes, severity, replace=replace)

    # --- nodes ---------------------------------------------------------------------------------------
    def show_results(self, volume_node, lesions, lungs, lobes, severity, replace: bool = False) -> SegmentationNodes:
        """Nodes for a run's label maps: lesion node (Lesion, Background, Lung mask), read-only anatomy,
        the engine's original lesions, table and chart; recorded in the parameter node.

        With ``replace`` the CT's existing nodes are refilled in place (ids kept); otherwise new nodes are made.
        """
        self.stop_live()
        name = volume_node.GetName()
        existing = self.nodes_for(volume_node) if replace else None
        lesion_mask = np.asarray(lesions) > 0
        lung_mask = (np.asarray(lungs) > 0) | lesion_mask
        lesion_node = mrml.segmentation_from_labelmap(
            lesion_mask.astype(np.uint8), volume_node, [(1, terminology.LESION)], f"{name} lesions",
            existing.lesions if existing else None)
        mrml.set_segment(lesion_node, terminology.BACKGROUND, None, volume_node)
        mrml.set_segment(lesion_node, terminology.LUNG_MASK, lung_mask, volume_node)
        lesion_node.SetNodeReferenceID(VOLUME_REFERENCE, volume_node.GetID())
        if lobes is not None:
            specs = list(terminology.LOBES.items())
            anatomy = mrml.segmentation_from_labelmap(lobes, volume_node, specs, f"{name} lobes",
                                                      existing.anatomy if existing else None)
        else:
            specs = list(terminology.LUNGS.items())
            anatomy = mrml.segmentation_from_labelmap(lungs, volume_node, specs, f"{name} lungs",
                                                      existing.anatomy if existing else None)
        editor.mark_read_only(anatomy)
        anatomy.SetNodeReferenceID(VOLUME_REFERENCE, volume_node.GetID())
        original = existing.original if existing and existing.original else None
        if original is None:
            original = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} engine lesions")
        original.SetIJKToRASMatrix(_ijk_to_ras(volume_node))
        slicer.util.updateVolumeFromArray(original, np.ascontiguousarray(np.asarray(lesions), np.uint8))
        original.SetAttribute("COVIDLesionSeg.role", "engine lesions")
        table = existing.table if existing else slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode",
                                                                                 f"{name} severity")
        self._update_table(table, severity)
        chart = mrml.severity_chart(table, existing.chart if existing else None)
        table.SetNodeReferenceID("COVIDLesionSeg.chart", chart.GetID())
        lesion_node.SetAttribute(LOADED_STAMP, str(self._edit_stamp(lesion_node)))
        for role, node in (("anatomy", anatomy), ("original", original), ("table", table)):
            lesion_node.SetNodeReferenceID(CASE_REFERENCES[role], node.GetID())
        self._place_in_study(volume_node, [lesion_node, anatomy, original, table, chart])
        p = self.parameters
        p.set_node("inputVolume", volume_node)
        for role, node in (("lesions", lesion_node), ("anatomy", anatomy), ("original", original), ("table", table)):
            p.set_node(role, node)
        return SegmentationNodes(lesion_node, anatomy, table, original, chart, severity)

    @staticmethod
    def _place_in_study(volume_node, nodes) -> None:
        """Put the case's nodes beside the CT in the subject hierarchy (under its study)."""
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        volume_item = sh.GetItemByDataNode(volume_node) if sh is not None else 0
        if not volume_item:
            return
        parent = sh.GetItemParent(volume_item)
        for node in nodes:
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, parent)
            else:
                sh.CreateItem(parent, node)

    @staticmethod
    def _update_table(table_node, severity: dict[str, Any]) -> None:
        mrml.update_severity_table(severity, table_node)

    # --- live scores ----------------------------------------------------------------------------------
    def start_live(self, scheduler, on_update: Callable[[LiveScorer], None] | None = None,
                   volume_node=None) -> LiveScorer | None:
        """Scores that follow edits of the parameter node's case (call again after a scene load)."""
        self.stop_live()
        volume_node = volume_node or self.parameters.node_for("inputVolume")
        nodes = self.nodes_for(volume_node)
        if volume_node is None or nodes is None:
            return None
        source = nodes.severity.get("lobe_source", "segmentation") if nodes.severity else "segmentation"
        self.live = LiveScorer(volume_node, nodes.lesions, nodes.anatomy, nodes.table, scheduler,
                               config=self.config, lobe_source=source, on_update=on_update)
        self.live.attach()
        return self.live

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.detach()
            self.live = None

    def rescore(self, volume_node, nodes: SegmentationNodes | None = None) -> dict[str, Any]:
        """Every score computed afresh from the nodes (the live scores' reference)."""
        from covidlesionseg.severity import compute_severity

        nodes = nodes or self.nodes_for(volume_node)
        if nodes is None:
            raise ValueError("this CT has no segmentation yet")
        ct = mrml.volume_from_node(volume_node)
        final, lungs, lobes, source = self.final_labels(volume_node, nodes, ct)
        severity = compute_severity(ct, final, lungs, lobes, config=self.config, lobe_source=source)
        return severity

    def final_labels(self, volume_node, nodes: SegmentationNodes, ct: io.Volume):
        """(lesion mask, sided lungs, completed lobes or None, lobe source) of the corrected case."""
        from covidlesionseg.lobes import complete_lobes

        final = mrml.segment_mask(nodes.lesions, editor.segment_id(nodes.lesions, terminology.LESION), volume_node)
        mask = mrml.segment_mask(nodes.lesions, editor.segment_id(nodes.lesions, terminology.LUNG_MASK), volume_node)
        found = anatomy_mod.read_anatomy(nodes.anatomy, volume_node,
                                         nodes.severity.get("lobe_source", "segmentation"))
        lungs = anatomy_mod.sided_lung_mask(mask, found.lungs, ct)
        lobes = None if found.lobes is None else complete_lobes(found.lobes, lungs, ct)
        return final, lungs, lobes, (found.source if lobes is not None else "none")

    # --- export -------------------------------------------------------------------------------------
    def export(self, export_dir: str | os.PathLike, volume_node=None, *, annotator: str | None = None,
               case_id: str | None = None, patient_key: str | None = None, dicom_seg: bool = False,
               include_identifiers: bool = False):
        """Write the corrected case (and the engine's original lesions) for retraining; returns ExportResult."""
        volume_node = volume_node or self.parameters.node_for("inputVolume")
        nodes = self.nodes_for(volume_node)
        if volume_node is None or nodes is None:
            raise ValueError("segment this CT before exporting it")
        return self._export_nodes(export_dir, volume_node, nodes, annotator=annotator, case_id=case_id,
                                  patient_key=patient_key, dicom_seg=dicom_seg,
                                  include_identifiers=include_identifiers)

    def _export_nodes(self, export_dir: str | os.PathLike, volume_node, nodes: SegmentationNodes, **kwargs: Any):
        """The one export path of a case's nodes (``export`` and ``export_scene``): core ``export_case``."""
        from covidlesionseg.export import export_case

        if nodes.anatomy is None:
            raise ValueError(f"'{nodes.lesions.GetName()}': its lungs/lobes node is no longer in the scene")
        ct = self.volume_from_node(volume_node)
        final, lungs, lobes, _source = self.final_labels(volume_node, nodes, ct)
        original = slicer.util.arrayFromVolume(nodes.original).copy() if nodes.original is not None else None
        engine = {"id": nodes.severity.get("engine"), "sha256": nodes.severity.get("model", {}).get("sha256")}
        return export_case(export_dir, ct, original, final.astype(np.uint8), lungs=lungs, lobes=lobes,
                           engine=engine, **kwargs)

    def export_scene(self, export_dir: str | os.PathLike, *, annotator: str | None = None,
                     only_corrected: bool = True, include_identifiers: bool = False) -> list[SceneExportCase]:
        """Export every case of the scene (by default only those the reader corrected) into one export folder.

        Each case goes through :meth:`export` 's path, so each is an atomic new version (a re-export is the
        next version of the same pseudonymous case id).  A case that fails is reported (``error``) and the
        others are still exported; CTs without a segmentation, lesion nodes whose CT was removed, and, with
        ``only_corrected``, cases whose lesions equal the engine's (:meth:`is_corrected`) are reported as
        ``skipped``.  Returns one entry per CT (and per lesion node whose CT was removed), in scene order.
        """
        outcomes: list[SceneExportCase] = []
        for volume, nodes in self.scene_cases():
            outcome = SceneExportCase(volume.GetName() if volume is not None else None,
                                      volume.GetID() if volume is not None else None)
            outcomes.append(outcome)
            if volume is None:
                outcome.skipped = f"'{nodes.lesions.GetName()}': its CT is no longer in the scene"
                continue
            if nodes is None:
                outcome.skipped = "not segmented (no lesion node)"
                continue
            try:
                if only_corrected and not self.is_corrected(volume, nodes):
                    outcome.skipped = "no corrections"
                    continue
                result = self._export_nodes(export_dir, volume, nodes, annotator=annotator,
                                            include_identifiers=include_identifiers)
            except Exception as exc:  # one case's failure never stops the others; it is reported
                outcome.error = f"{type(exc).__name__}: {exc}"
                continue
            outcome.result, outcome.case_id, outcome.version = result, result.case_id, result.version
        return outcomes


def _ijk_to_ras(volume_node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix
