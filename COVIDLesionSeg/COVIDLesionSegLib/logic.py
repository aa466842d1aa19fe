"""COVIDLesionSegLogic: everything the module does, usable from the Slicer Python console and headless.

Two ways to segment:
- ``segment(volumeNode)`` runs in this process and blocks (scripts, the console, tests);
- ``segmentation_command(...)`` + ``load_results(...)`` run the same core as a subprocess
  (``PythonSlicer -m covidlesionseg segment ...``), which the widget starts in the background so that
  inference never touches MRML from a thread and Cancel simply ends the process.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidlesionseg import io, labels
from covidlesionseg.engines.base import CancelCheck, ProgressCallback
from covidlesionseg.severity import SeverityConfig
from COVIDLesionSegLib import mrml

SEVERITY_ATTRIBUTE = "COVIDLesionSeg.severity"


@dataclass
class SegmentationNodes:
    """The nodes one run produced: lesions (edited by the reader), anatomy (lungs/lobes, locked), table."""

    lesions: Any
    anatomy: Any
    table: Any
    severity: dict[str, Any]


class COVIDLesionSegLogic:
    """Segmentation, severity and result loading for a CT volume node."""

    def __init__(self, config: SeverityConfig | None = None):
        self.config = config or SeverityConfig()

    # --- in-process ---------------------------------------------------------------------------
    def volume_from_node(self, volume_node) -> io.Volume:
        """The CT of a volume node as a checked core Volume (float32 HU)."""
        volume = mrml.volume_from_node(volume_node)
        image = io.check_ct(volume.to_sitk(volume.array.astype(np.float32)), {}, volume_node.GetName())
        return io.Volume.from_sitk(image, {"source": volume_node.GetName()})

    def segment(
        self,
        volume_node,
        engine: str | None = None,
        lobes: str = "auto",
        device: str = "auto",
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> SegmentationNodes:
        """Segment lungs, lesions and lobes of ``volume_node`` (blocking) and show them as nodes."""
        from covidlesionseg.models import make_engine
        from covidlesionseg.pipeline import run_segmentation

        ct = self.volume_from_node(volume_node)
        result = run_segmentation(ct, make_engine(engine, device=device), lobes=lobes, config=self.config,
                                  progress=progress, cancel=cancel)
        return self.show_results(volume_node, result.lesions, result.lungs, result.lobes, result.severity)

    def rescore(self, volume_node, nodes: SegmentationNodes) -> dict[str, Any]:
        """Recompute every score from the (edited) lesion segment and the anatomy node; update the table."""
        from covidlesionseg.pipeline import finish_labels, severity_document

        ct = self.volume_from_node(volume_node)
        lesion_mask = mrml.labelmap_from_segments(nodes.lesions, ["Lesion"], volume_node) > 0
        anatomy = nodes.anatomy.GetSegmentation()
        lobe_names = [name for _, name, _ in mrml.LOBE_SEGMENTS]
        has_lobes = all(anatomy.GetSegmentIdBySegmentName(n) for n in lobe_names)
        if has_lobes:
            lobes = mrml.labelmap_from_segments(nodes.anatomy, lobe_names, volume_node)
            lungs = labels.lungs_from_lobes(lobes)
            spec: Any = lobes
        else:
            lungs = mrml.labelmap_from_segments(nodes.anatomy, [n for _, n, _ in mrml.LUNG_SEGMENTS], volume_node)
            spec = "none"
        _, _, _, core = finish_labels(ct, lesion_mask, lungs.astype(np.uint8), spec, lobe_source="segmentation",
                                      config=self.config)
        previous = json.loads(nodes.table.GetAttribute(SEVERITY_ATTRIBUTE) or "{}")
        engine = {"id": previous.get("engine"), "sha256": previous.get("model", {}).get("sha256")}
        nodes.severity = severity_document(core, engine)
        self._update_table(nodes.table, nodes.severity)
        return nodes.severity

    # --- showing results ----------------------------------------------------------------------
    def show_results(self, volume_node, lesions, lungs, lobes, severity) -> SegmentationNodes:
        name = volume_node.GetName()
        lesion_node = mrml.segmentation_from_labelmap(
            lesions, volume_node, mrml.LESION_SEGMENTS, f"{name} lesions",
            values={1: [labels.LESION_LOW, labels.LESION_HIGH]})
        if lobes is not None:
            anatomy = mrml.segmentation_from_labelmap(lobes, volume_node, mrml.LOBE_SEGMENTS, f"{name} lobes")
        else:
            anatomy = mrml.segmentation_from_labelmap(lungs, volume_node, mrml.LUNG_SEGMENTS, f"{name} lungs")
        anatomy.SetAttribute("COVIDLesionSeg.locked", "1")  # the widget keeps this node out of the editor
        lesion_node.SetNodeReferenceID("COVIDLesionSeg.anatomy", anatomy.GetID())
        table = mrml.update_severity_table(severity)
        self._update_table(table, severity)
        return SegmentationNodes(lesion_node, anatomy, table, severity)

    @staticmethod
    def _update_table(table_node, severity: dict[str, Any]) -> None:
        mrml.update_severity_table(severity, table_node)
        table_node.SetAttribute(SEVERITY_ATTRIBUTE, json.dumps(severity))

    # --- subprocess ---------------------------------------------------------------------------
    @staticmethod
    def python_executable() -> str:
        """PythonSlicer inside Slicer, else this interpreter."""
        exe = Path(sys.executable)
        candidate = exe.with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        return str(candidate if candidate.exists() else exe)

    def segmentation_command(self, input_path: str, output_dir: str, engine: str | None = None,
                             lobes: str = "auto", device: str = "auto") -> list[str]:
        """The command line that segments ``input_path`` into ``output_dir`` (contracts.md ``segment``)."""
        cmd = [self.python_executable(), "-m", "covidlesionseg", "segment", input_path, "-o", output_dir,
               "--device", device, "--lobes", lobes, "--high-opacity-hu", str(self.config.high_opacity_hu),
               "--floor-ml", str(self.config.floor_ml)]
        if engine:
            cmd += ["--engine", engine]
        return cmd

    @staticmethod
    def segmentation_environment() -> dict[str, str]:
        """Environment additions for the subprocess: the core package on its path, progress as lines.

        PythonSlicer does not have the module folder on its path, so the folder holding ``covidlesionseg``
        goes first on PYTHONPATH; ``COVIDLESIONSEG_PROGRESS=lines`` makes the CLI print ``PROGRESS f message``.
        """
        import covidlesionseg

        core_parent = str(Path(covidlesionseg.__file__).resolve().parents[1])
        existing = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": core_parent + (os.pathsep + existing if existing else ""),
            "COVIDLESIONSEG_PROGRESS": "lines",
            "PYTHONUNBUFFERED": "1",
        }

    def load_results(self, volume_node, output_dir: str) -> SegmentationNodes:
        """Load a ``segment`` output folder onto ``volume_node``'s grid as nodes."""
        out = Path(output_dir)
        reference = self.volume_from_node(volume_node)
        lesions = io.read_label(out / labels.LESIONS_FILE, reference).array
        lungs = io.read_label(out / labels.LUNGS_FILE, reference).array
        lobes_path = out / labels.LOBES_FILE
        lobes = io.read_label(lobes_path, reference).array if lobes_path.exists() else None
        severity = json.loads((out / labels.SEVERITY_FILE).read_text())
        return self.show_results(volume_node, lesions, lungs, lobes, severity)

    def write_input(self, volume_node, path: str) -> str:
        """Write the CT of ``volume_node`` to ``path`` (NRRD/NIfTI by suffix) for the subprocess."""
        io.write_volume(path, self.volume_from_node(volume_node))
        return path
