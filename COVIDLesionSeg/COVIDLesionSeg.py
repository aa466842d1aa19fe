"""COVIDLesionSeg: COVID-19 pulmonary infiltrate segmentation and lobe-wise severity scores in 3D Slicer.

The module file is thin: the widget binds Qt controls to ``COVIDLesionSegLogic`` (COVIDLesionSegLib/logic.py),
which the Slicer Python console and the headless tests use directly; all maths lives in the
``covidlesionseg`` core package beside this file (it never imports slicer).
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

MINIMUM_SLICER = (5, 10)
# Installed into Slicer's Python on first use; MONAI without its dependencies so that pip never replaces
# Slicer's own SimpleITK/numpy or the torch that the PyTorch extension installed.
PIP_REQUIREMENTS = ["tqdm>=4.60"]
PIP_NO_DEPS = ["monai>=1.3", "scipy"]  # scipy ships with Slicer; installed only if a build lacks it


def ensure_dependencies() -> None:
    """Install what the core needs into Slicer's Python (pip_ensure on 5.12+, pip_install on 5.10)."""
    import importlib.util

    missing = [r for r in PIP_REQUIREMENTS + PIP_NO_DEPS if importlib.util.find_spec(r.split(">")[0]) is None]
    if not missing:
        return
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("PyTorch is missing: install the PyTorch extension and run its installer first")
    packaging = getattr(slicer, "packaging", None)
    for requirement in missing:
        no_deps = requirement in PIP_NO_DEPS
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure([requirement] + (["--no-deps"] if no_deps else []))
        else:
            slicer.util.pip_install(("--no-deps " if no_deps else "") + requirement)


class COVIDLesionSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "COVID Lesion Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["COVIDLesionSeg developers"]
        self.parent.helpText = (
            "Segments pulmonary infiltrates (ground-glass opacity and consolidation) in chest CT, splits lungs and "
            "lobes, and reports PO, PHO, LSS, LHOS, CTSS and CT0-CT4. Scores are research measures, not a triage "
            "decision."
        )
        self.parent.acknowledgementText = (
            "Methods: Bressem et al. 2021 (3D U-Net), Chaganti et al. 2020 (PO, PHO, LSS, LHOS), Topff et al. 2023 "
            "(CTSS 0-25), Goncharov et al. 2021 (CT0-CT4)."
        )


class COVIDLesionSegWidget(ScriptedLoadableModuleWidget):
    """Thin Qt layer: controls -> logic; background segmentation in a subprocess with progress and Cancel."""

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/COVIDLesionSeg.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = None
        self.nodes = None
        self.process = None
        self.output_dir = None
        self.lines: queue.Queue = queue.Queue()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll_process)
        # Every registered engine (classical and models in the registry), the registry default selected.
        # The registry needs only numpy and SimpleITK, which Slicer ships.
        from covidlesionseg.models import default_model_id, list_models

        for entry in list_models():
            self.ui.engineComboBox.addItem(entry["id"])
        self.ui.engineComboBox.setCurrentText(default_model_id())
        for device in ("auto", "cpu", "cuda"):
            self.ui.deviceComboBox.addItem(device)
        for lobes in ("auto", "none"):
            self.ui.lobesComboBox.addItem(lobes)
        editor_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "COVIDLesionSeg editor")
        self.ui.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(editor_node)
        self.ui.segmentButton.clicked.connect(self.on_segment)
        self.ui.cancelButton.clicked.connect(self.on_cancel)
        self.ui.rescoreButton.clicked.connect(self.on_rescore)
        self.ui.cancelButton.enabled = False
        self.layout.addStretch(1)

    def get_logic(self):
        if self.logic is None:
            ensure_dependencies()
            from COVIDLesionSegLib.logic import COVIDLesionSegLogic

            self.logic = COVIDLesionSegLogic()
        return self.logic

    def on_segment(self):
        volume_node = self.ui.inputSelector.currentNode()
        if volume_node is None:
            slicer.util.errorDisplay("Select a CT volume first.")
            return
        logic = self.get_logic()
        work = tempfile.mkdtemp(prefix="COVIDLesionSeg-")
        input_path = logic.write_input(volume_node, os.path.join(work, "ct.nrrd"))
        self.output_dir = os.path.join(work, "out")
        cmd = logic.segmentation_command(input_path, self.output_dir, engine=self.ui.engineComboBox.currentText,
                                         lobes=self.ui.lobesComboBox.currentText,
                                         device=self.ui.deviceComboBox.currentText)
        self.process = slicer.util.launchConsoleProcess(cmd, updateEnvironment=logic.segmentation_environment())
        threading.Thread(target=self._read_output, args=(self.process,), daemon=True).start()
        self.ui.segmentButton.enabled, self.ui.cancelButton.enabled = False, True
        self.ui.progressBar.value = 0
        self.timer.start()

    def _read_output(self, process):
        # Only reads the pipe (no MRML, no Qt): the timer moves lines to the GUI thread.
        for line in process.stdout:
            self.lines.put(line.rstrip())

    def poll_process(self):
        last_error = ""
        while not self.lines.empty():
            line = self.lines.get()
            if line.startswith("PROGRESS "):
                parts = line.split(" ", 2)
                self.ui.progressBar.value = int(100 * float(parts[1]))
                self.ui.statusLabel.text = parts[2] if len(parts) > 2 else ""
            elif line.startswith("covidlesionseg:"):
                last_error = line
        if self.process is None or self.process.poll() is None:
            return
        self.timer.stop()
        code, self.process = self.process.returncode, None
        self.ui.segmentButton.enabled, self.ui.cancelButton.enabled = True, False
        if code != 0:
            self.ui.statusLabel.text = last_error or f"segmentation stopped (exit {code})"
            return
        self.nodes = self.get_logic().load_results(self.ui.inputSelector.currentNode(), self.output_dir)
        self.ui.tableView.setMRMLTableNode(self.nodes.table)
        self.ui.segmentEditorWidget.setSegmentationNode(self.nodes.lesions)
        self.ui.segmentEditorWidget.setSourceVolumeNode(self.ui.inputSelector.currentNode())
        severity = self.nodes.severity
        self.ui.statusLabel.text = f"PO {severity['PO']:.2f}%  CT category {severity['CT_category']}"

    def on_cancel(self):
        if self.process is not None:
            self.process.kill()
            self.ui.statusLabel.text = "cancelled; nothing loaded"

    def on_rescore(self):
        if self.nodes is None:
            return
        severity = self.get_logic().rescore(self.ui.inputSelector.currentNode(), self.nodes)
        self.ui.statusLabel.text = f"PO {severity['PO']:.2f}%  CT category {severity['CT_category']}"

    def cleanup(self):
        self.timer.stop()
        if self.process is not None:
            self.process.kill()


class COVIDLesionSegTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a generated chest CT through the logic, nodes and scores checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_generated_ct()

    def test_segment_generated_ct(self):
        ensure_dependencies()
        from covidlesionseg.phantom import generate_phantom
        from COVIDLesionSegLib import mrml
        from COVIDLesionSegLib.logic import COVIDLesionSegLogic

        self.delayDisplay("Generating a chest CT with known lesions")
        phantom = generate_phantom(3, "CT2", shape=(64, 96, 96))
        volume_node = mrml.node_from_volume(phantom.ct, "Generated CT")
        logic = COVIDLesionSegLogic()
        nodes = logic.segment(volume_node, engine="classical", lobes="none")
        lesion = slicer.util.arrayFromSegmentBinaryLabelmap(
            nodes.lesions, nodes.lesions.GetSegmentation().GetSegmentIdBySegmentName("Lesion"), volume_node)
        truth = phantom.lesions > 0
        dice = 2.0 * (lesion.astype(bool) & truth).sum() / max(1, lesion.astype(bool).sum() + truth.sum())
        self.assertGreater(dice, 0.5)
        self.assertGreater(nodes.severity["PO"], 0.0)
        self.assertEqual(nodes.table.GetNumberOfRows(), 3)  # right lung, left lung, both lungs
        self.delayDisplay(f"Lesion Dice {dice:.2f}, PO {nodes.severity['PO']:.1f}%: test passed")
