"""COVIDLesionSeg: COVID-19 pulmonary infiltrate segmentation and live lobe-wise severity scores in 3D Slicer.

The module file is thin: the widget binds Qt controls to ``COVIDLesionSegLogic`` (COVIDLesionSegLib/logic.py),
which the Slicer Python console and the headless tests use directly; all maths lives in the
``covidlesionseg`` core package beside this file (it never imports slicer).
"""

from __future__ import annotations

import os
import tempfile

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MINIMUM_SLICER = (5, 10)
EDITOR_NODE_TAG = "COVIDLesionSeg"


class COVIDLesionSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "COVID Lesion Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["COVIDLesionSeg developers"]
        self.parent.helpText = (
            "Segments pulmonary infiltrates (ground-glass opacity and consolidation) in chest CT, splits lungs and "
            "lobes, and shows PO, PHO, LSS, LHOS, CTSS and CT0-CT4 per lobe, updated while you correct the lesions. "
            "Scores are research measures, not a triage decision."
        )
        self.parent.acknowledgementText = (
            "Methods: Bressem et al. 2021 (3D U-Net), Chaganti et al. 2020 (PO, PHO, LSS, LHOS), Topff et al. 2023 "
            "(CTSS 0-25), Goncharov et al. 2021 (CT0-CT4)."
        )
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", register_editor_effect)


def register_editor_effect() -> None:
    """Register the "COVID lesion grow" Segment Editor effect (COVIDLesionSegLib/SegmentEditorEffect.py)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = os.path.join(os.path.dirname(__file__), "COVIDLesionSegLib", "SegmentEditorEffect.py")
    instance.setPythonSource(path.replace("\\", "/"))
    instance.self().register()


class COVIDLesionSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin Qt layer: controls <-> parameter node <-> logic; QProcess runs, QTimer-coalesced live scores."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.scheduler = None
        self._updating = False

    # --- setup ------------------------------------------------------------------------------------------
    def setup(self):
        from COVIDLesionSegLib.live import QTimerScheduler
        from COVIDLesionSegLib.logic import LOBE_SOURCES, COVIDLesionSegLogic

        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/COVIDLesionSeg.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = COVIDLesionSegLogic()
        self.scheduler = QTimerScheduler(40)

        from covidlesionseg.models import default_model_id, list_models

        for entry in list_models():
            self.ui.engineComboBox.addItem(entry["id"])
        self.ui.engineComboBox.setCurrentText(default_model_id())
        for device in self.logic.available_devices():  # cuda only when torch sees a GPU
            self.ui.deviceComboBox.addItem(device)
        for source in LOBE_SOURCES:
            self.ui.lobeSourceComboBox.addItem(source)

        editor_widget = self.ui.segmentEditorWidget
        self.select_editor_node()  # the editor node first, then the scene (as SegmentEditor.py does)
        editor_widget.setMRMLScene(slicer.mrmlScene)
        editor_widget.setSegmentationNodeSelectorVisible(False)  # only the lesion node; anatomy never reaches it
        editor_widget.setSourceVolumeNodeSelectorVisible(False)
        editor_widget.setSwitchToSegmentationsButtonVisible(False)
        from COVIDLesionSegLib.editor import EFFECTS

        editor_widget.setEffectNameOrder(EFFECTS)
        editor_widget.unorderedEffectsVisible = False

        for widget in (self.ui.engineComboBox, self.ui.deviceComboBox, self.ui.lobeSourceComboBox):
            widget.connect("currentIndexChanged(int)", self.update_parameters_from_gui)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.update_parameters_from_gui)
        self.ui.segmentButton.connect("clicked(bool)", self.on_segment)
        self.ui.cancelButton.connect("clicked(bool)", self.on_cancel)
        self.ui.exportButton.connect("clicked(bool)", self.on_export)
        self.ui.exportSceneButton.connect("clicked(bool)", self.on_export_scene)
        self.ui.showChartButton.connect("clicked(bool)", self.on_show_chart)
        self.ui.editLesionsRadioButton.connect("toggled(bool)", self.on_edit_target)
        self.ui.editLungMaskRadioButton.connect("toggled(bool)", self.on_edit_target)
        self.ui.editLobesRadioButton.connect("toggled(bool)", self.on_edit_target)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.on_scene_start_close)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.on_scene_end_close)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.on_scene_end_import)
        self.update_gui_from_parameters()

    def select_editor_node(self):
        """The module's own segment editor node (a singleton), set before the widget uses the scene."""
        node = slicer.mrmlScene.GetSingletonNode(EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(EDITOR_NODE_TAG)
            node = slicer.mrmlScene.AddNode(node)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(node)

    # --- module life ---------------------------------------------------------------------------------------
    def enter(self):
        self.select_editor_node()
        self.bind_case()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.ui.segmentEditorWidget.setupViewObservations()

    def exit(self):
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()

    def cleanup(self):
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel_run()
            self.logic.stop_live()
        if self.scheduler is not None:
            self.scheduler.stop()

    def on_scene_start_close(self, caller, event):
        self.logic.cancel_run()
        self.logic.stop_live()
        self.scheduler.stop()
        self.ui.segmentEditorWidget.setSegmentationNode(None)

    def on_scene_end_close(self, caller, event):
        self.select_editor_node()
        self.update_gui_from_parameters()
        self.ui.scoreSummaryLabel.text = "No case yet"

    def on_scene_end_import(self, caller, event):
        self.select_editor_node()
        self.update_gui_from_parameters()
        self.bind_case()

    # --- parameter node <-> GUI ------------------------------------------------------------------------
    def update_gui_from_parameters(self):
        p = self.logic.parameters
        self._updating = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(p.node_for("inputVolume"))
            self.ui.engineComboBox.setCurrentText(p.get("engine"))
            self.ui.deviceComboBox.setCurrentText(p.get("device"))
            self.ui.lobeSourceComboBox.setCurrentText(p.get("lobeSource"))
            source = p.get("lobeSource")
            self.ui.lobeSegmentationSelector.enabled = source == "segmentation"
            self.ui.lobeFilePathLineEdit.enabled = source == "file"
        finally:
            self._updating = False

    def update_parameters_from_gui(self, *_args):
        if self._updating:
            return
        p = self.logic.parameters
        p.set_node("inputVolume", self.ui.inputVolumeSelector.currentNode())
        p.set("engine", self.ui.engineComboBox.currentText)
        p.set("device", self.ui.deviceComboBox.currentText)
        p.set("lobeSource", self.ui.lobeSourceComboBox.currentText)
        self.update_gui_from_parameters()
        self.bind_case()

    # --- run ----------------------------------------------------------------------------------------------
    def on_segment(self):
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            from COVIDLesionSegLib.dependencies import ensure_dependencies

            volume = self.ui.inputVolumeSelector.currentNode()
            self.logic.check_volume(volume)
            engine = self.ui.engineComboBox.currentText
            replace = True  # refill this CT's nodes in place, unless the reader has corrected them
            if self.logic.has_corrections(volume):
                replace = slicer.util.confirmYesNoDisplay(
                    "This CT has corrected lesions. Replace them with a new segmentation? "
                    "(No keeps them and makes new nodes.)")
            ensure_dependencies(engine)
            self.logic.start_run(volume, engine=engine, device=self.ui.deviceComboBox.currentText,
                                 lobes=self.ui.lobeSourceComboBox.currentText,
                                 lobe_file=self.ui.lobeFilePathLineEdit.currentPath or None,
                                 lobe_segmentation=self.ui.lobeSegmentationSelector.currentNode(),
                                 replace=replace, on_line=self.on_run_line, on_finished=self.on_run_finished)
            self.ui.segmentButton.enabled, self.ui.cancelButton.enabled = False, True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "starting"

    def on_run_line(self, line):
        run = self.logic.run
        if run is None:
            return
        state = run.runner.state
        self.ui.progressBar.value = int(100 * state.progress)
        self.ui.statusLabel.text = state.errors[-1] if state.errors else state.message

    def on_run_finished(self, exit_code):
        self.ui.segmentButton.enabled, self.ui.cancelButton.enabled = True, False
        run = self.logic.run
        if run is None:  # cancelled: on_cancel has said so and removed the run
            return
        summary = run.runner.state.summary
        try:
            nodes = self.logic.finish_run()
        except ValueError as exc:
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(f"Segmentation failed: {exc}")
            return
        if nodes is None:
            self.ui.statusLabel.text = summary
            return
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = "done: correct the lesions; scores follow your edits"
        self.bind_case()

    def on_cancel(self):
        self.logic.cancel_run()
        self.ui.segmentButton.enabled, self.ui.cancelButton.enabled = True, False
        self.ui.statusLabel.text = "cancelled; nothing loaded"

    # --- correct + live scores -----------------------------------------------------------------------------
    def bind_case(self):
        """Show the current CT's case in the editor and table, with live scores (after runs and scene loads)."""
        from COVIDLesionSegLib import editor

        volume = self.logic.parameters.node_for("inputVolume")
        nodes = self.logic.nodes_for(volume) if volume is not None else None
        if nodes is None:
            self.logic.stop_live()
            self.ui.segmentEditorWidget.setSegmentationNode(None)
            self.ui.tableView.setMRMLTableNode(None)
            self.ui.scoreSummaryLabel.text = "No case yet for this CT"
            return
        editor_node = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        editor.configure_lesion_editing(editor_node, nodes.lesions, volume)
        self.ui.editLesionsRadioButton.checked = True
        self.ui.segmentEditorWidget.setSegmentationNode(nodes.lesions)
        self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.ui.tableView.setMRMLTableNode(nodes.table)
        if self.logic.live is None or self.logic.live.lesion_node is not nodes.lesions:
            self.logic.start_live(self.scheduler, self.on_live_update, volume)

    def on_edit_target(self, checked):
        if not checked:
            return
        from COVIDLesionSegLib import editor

        volume = self.logic.parameters.node_for("inputVolume")
        nodes = self.logic.nodes_for(volume)
        if nodes is None:
            return
        editor_node = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        self.ui.segmentEditorWidget.setActiveEffect(None)
        if self.ui.editLobesRadioButton.checked:
            editor.configure_lobe_editing(editor_node, nodes.anatomy, volume)
        elif self.ui.editLungMaskRadioButton.checked:
            editor.configure_lung_mask_editing(editor_node, nodes.lesions, volume)
        else:
            editor.configure_lesion_editing(editor_node, nodes.lesions, volume)

    def on_live_update(self, scorer):
        if scorer.severity is None:
            self.ui.scoreSummaryLabel.text = f"<span style='color:#b00'>No scores: {scorer.message}</span>"
            return
        s = scorer.severity
        lobes = f", LSS {s['LSS']}/20, LHOS {s['LHOS']}/20, CTSS {s['CTSS']}/25" if s["LSS"] is not None else ""
        self.ui.scoreSummaryLabel.text = (f"PO {s['PO']:.1f}%, PHO {s['PHO']:.1f}%{lobes}, "
                                          f"category {s['CT_category'] or 'n/a'}")

    def on_show_chart(self):
        nodes = self.logic.nodes_for(self.logic.parameters.node_for("inputVolume"))
        if nodes is not None and nodes.chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)

    # --- export -------------------------------------------------------------------------------------------
    def on_export(self):
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            result = self.logic.export(self.ui.exportDirectoryButton.directory,
                                       annotator=self.ui.annotatorLineEdit.text or None)
            self.ui.exportStatusLabel.text = f"exported {result.case_id} version {result.version}"

    def on_export_scene(self):
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            cases = self.logic.export_scene(self.ui.exportDirectoryButton.directory,
                                            annotator=self.ui.annotatorLineEdit.text or None)
            lines = [f"{c.volume or '(no CT)'}: " + (f"{c.case_id} version {c.version}" if c.exported else
                     f"FAILED {c.error}" if c.error else f"skipped, {c.skipped}") for c in cases]
            self.ui.exportStatusLabel.text = "\n".join(lines) or "no CT in the scene"


class COVIDLesionSegTest(ScriptedLoadableModuleTest):
    """Self-test (Reload and Test): run, a paint stroke, the live table change, undo, export."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_run_edit_undo_export()

    def test_run_edit_undo_export(self):
        import numpy as np

        from COVIDLesionSegLib.dependencies import ensure_dependencies

        ensure_dependencies("classical")  # no torch needed
        from covidlesionseg.phantom import generate_phantom
        from COVIDLesionSegLib import editor, mrml, terminology
        from COVIDLesionSegLib.live import ManualScheduler
        from COVIDLesionSegLib.logic import COVIDLesionSegLogic

        self.delayDisplay("Generating a chest CT with known lesions")
        phantom = generate_phantom(3, "CT2", shape=(48, 80, 80))
        volume = mrml.node_from_volume(phantom.ct, "Generated CT")
        logic = COVIDLesionSegLogic()
        nodes = logic.segment(volume, engine="classical", lobes="none")
        lesion_id = editor.segment_id(nodes.lesions, terminology.LESION)
        found = mrml.segment_mask(nodes.lesions, lesion_id, volume)
        truth = phantom.lesions > 0
        dice = 2.0 * (found & truth).sum() / max(1, found.sum() + truth.sum())
        self.assertGreater(dice, 0.5)
        self.assertEqual(nodes.table.GetNumberOfRows(), 3)  # right lung, left lung, both lungs

        self.delayDisplay("Painting a stroke in the right lung")
        scheduler = ManualScheduler()
        live = logic.start_live(scheduler)
        po_before = live.severity["PO"]
        editor_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor.configure_lesion_editing(editor_node, nodes.lesions, volume)
        undo = _UndoStack(nodes.lesions, volume, editor_node)
        undo.save()
        lungs = mrml.segment_mask(nodes.lesions, editor.segment_id(nodes.lesions, terminology.LUNG_MASK), volume)
        k, j, i = np.argwhere(lungs).mean(axis=0).astype(int)
        stroke = found.copy()
        stroke[k - 2:k + 3, j - 6:j + 7, i - 6:i + 7] |= lungs[k - 2:k + 3, j - 6:j + 7, i - 6:i + 7]
        slicer.util.updateSegmentBinaryLabelmapFromArray(stroke.astype(np.uint8), nodes.lesions, lesion_id, volume)
        scheduler.flush()
        self.assertGreater(live.severity["PO"], po_before)
        table_po = nodes.table.GetTable().GetColumnByName("Lesion %").GetValue(nodes.table.GetNumberOfRows() - 1)
        self.assertAlmostEqual(table_po, live.severity["PO"], places=6)
        self.assertAlmostEqual(live.severity["PO"], logic.rescore(volume, nodes)["PO"], places=6)

        self.delayDisplay("Undo")
        undo.undo()
        scheduler.flush()
        self.assertAlmostEqual(live.severity["PO"], po_before, places=6)

        self.delayDisplay("Export")
        with tempfile.TemporaryDirectory() as folder:
            result = logic.export(folder, annotator="self-test")
            self.assertTrue(result.paths["label"].exists() and result.paths["original"].exists())
        logic.stop_live()
        self.delayDisplay(f"Lesion Dice {dice:.2f}, PO {po_before:.1f}%: test passed")


class _UndoStack:
    """The segmentation undo of the Segment Editor widget in Slicer, or of its editor logic (Slicer 5.12+)."""

    def __init__(self, segmentation_node, volume_node, editor_node):
        if hasattr(slicer, "qMRMLSegmentEditorWidget"):
            self.target = slicer.qMRMLSegmentEditorWidget()
            self.target.setMRMLScene(slicer.mrmlScene)
            self.target.setMRMLSegmentEditorNode(editor_node)
            self.target.setSegmentationNode(segmentation_node)
            self.target.setSourceVolumeNode(volume_node)
            self.save, self.undo = self.target.saveStateForUndo, self.target.undo
        else:
            self.target = slicer.vtkSlicerSegmentEditorLogic()
            self.target.SetMRMLScene(slicer.mrmlScene)
            self.target.SetSegmentEditorNode(editor_node)
            self.target.SetSegmentationNode(segmentation_node)
            self.target.SetSourceVolumeNode(volume_node)
            self.target.SetMaximumNumberOfUndoStates(10)
            self.save, self.undo = self.target.SaveStateForUndo, self.target.Undo
