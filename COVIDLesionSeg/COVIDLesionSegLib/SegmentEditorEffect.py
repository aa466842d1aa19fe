"""Segment Editor effect "COVID lesion grow": click in a lesion, the connected region within an HU window is
added to the selected segment, inside the editable area (the Lung mask), bounded to a box around the click.

Loaded by Slicer from this file (`qSlicerSegmentEditorScriptedEffect.setPythonSource`), registered when the
application has started (COVIDLesionSeg.py).  The maths is `covidlesionseg.regiongrow`; reading the box and
building the modifier labelmap is `COVIDLesionSegLib.editor`; this class only turns a click into a voxel and
hands the result to the editor, which saves the undo state (Ctrl+Z) and applies masking like any effect.
"""

import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from covidlesionseg import regiongrow
from covidlesionseg.io import InputError
from COVIDLesionSegLib import editor

WINDOW_PARAMETER = "COVIDLesionGrow.Window"
RADIUS_PARAMETER = "COVIDLesionGrow.RadiusMm"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """One click adds the connected opacity around it (ground glass, consolidation, or both)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "COVID lesion grow"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "COVIDLesionGrow.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return ("<html>Click inside a lesion: the connected voxels within the HU window are added to the selected "
                "segment, inside the editable area (Lung mask) and within the box radius of the click. "
                "Ctrl+Z undoes a click.</html>")

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(WINDOW_PARAMETER, regiongrow.DEFAULT_WINDOW)
        self.scriptedEffect.setParameterDefault(RADIUS_PARAMETER, regiongrow.DEFAULT_RADIUS_MM)

    def setupOptionsFrame(self):
        self.windowComboBox = qt.QComboBox()
        for name, (low, high) in regiongrow.WINDOWS.items():
            self.windowComboBox.addItem(f"{name} ({low:.0f} to {high:.0f} HU)", name)
        self.windowComboBox.setToolTip("HU window of the voxels a click may add")
        self.scriptedEffect.addLabeledOptionsWidget("Window:", self.windowComboBox)
        self.radiusSpinBox = qt.QDoubleSpinBox()
        self.radiusSpinBox.setRange(2.0, 100.0)
        self.radiusSpinBox.setSuffix(" mm")
        self.radiusSpinBox.setToolTip("Half-size of the box around the click that bounds the grown region")
        self.scriptedEffect.addLabeledOptionsWidget("Box radius:", self.radiusSpinBox)
        self.windowComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.radiusSpinBox.connect("valueChanged(double)", self.updateMRMLFromGUI)

    def updateGUIFromMRML(self):
        window = self.scriptedEffect.parameter(WINDOW_PARAMETER)
        was_blocked = self.windowComboBox.blockSignals(True)
        self.windowComboBox.setCurrentIndex(max(self.windowComboBox.findData(window), 0))
        self.windowComboBox.blockSignals(was_blocked)
        was_blocked = self.radiusSpinBox.blockSignals(True)
        self.radiusSpinBox.value = self.scriptedEffect.doubleParameter(RADIUS_PARAMETER)
        self.radiusSpinBox.blockSignals(was_blocked)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter(WINDOW_PARAMETER, self.windowComboBox.currentData)
        self.scriptedEffect.setParameter(RADIUS_PARAMETER, self.radiusSpinBox.value)

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        import vtk

        if eventId != vtk.vtkCommand.LeftButtonPressEvent or viewWidget.className() != "qMRMLSliceWidget":
            return False
        parameters = self.scriptedEffect.parameterSetNode()
        volume_node = parameters.GetSourceVolumeNode()
        segmentation_node = parameters.GetSegmentationNode()
        if volume_node is None or segmentation_node is None:
            return False
        xy = callerInteractor.GetEventPosition()
        # The source volume as the editor aligns it to the segmentation's grid (the CT's grid for the module's
        # nodes), so the voxel index is the CT's.
        source_image = self.scriptedEffect.sourceVolumeImageData()
        ijk = self.xyToIjk(xy, viewWidget, source_image, segmentation_node.GetParentTransformNode())
        try:
            result = editor.grow_at(volume_node, segmentation_node, ijk,
                                    window=self.scriptedEffect.parameter(WINDOW_PARAMETER),
                                    radius_mm=self.scriptedEffect.doubleParameter(RADIUS_PARAMETER))
        except (InputError, ValueError) as exc:
            slicer.util.showStatusMessage(f"COVID lesion grow: {exc}", 4000)
            return True
        self.scriptedEffect.saveStateForUndo()
        # The region already lies inside the Lung mask; the editor's own masking would only repeat it over
        # the whole volume, so it is skipped when the editable area is exactly that mask.
        bypass_masking = editor.grow_already_masked(parameters, segmentation_node)
        self.scriptedEffect.modifySelectedSegmentByLabelmap(editor.modifier_labelmap(result, volume_node),
                                                            slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd,
                                                            bypass_masking)
        slicer.util.showStatusMessage(f"COVID lesion grow: {result.voxels} voxels added", 2000)
        return True
