"""The Slicer extension's shape: CMake lists every module file, the core never imports slicer."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "COVIDLesionSeg"


def _listed(cmake_text: str, name: str) -> list[str]:
    block = re.search(rf"set\(MODULE_PYTHON_{name}\n(.*?)\)", cmake_text, flags=re.S)
    assert block, f"MODULE_PYTHON_{name} not found"
    return block.group(1).split()


def test_every_module_file_is_listed_for_installation():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts, resources = _listed(text, "SCRIPTS"), _listed(text, "RESOURCES")
    on_disk = [p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in on_disk:
        rel = path.relative_to(MODULE).as_posix()
        if path.suffix == ".py":
            assert rel in scripts, f"{rel} missing from SCRIPTS (run Utilities/module_cmake_lists.py)"
        elif path.suffix in (".json", ".ui", ".png"):
            assert rel in resources, f"{rel} missing from RESOURCES (run Utilities/module_cmake_lists.py)"
    for rel in scripts + resources:
        assert (MODULE / rel).is_file(), f"{rel} is listed but does not exist"
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({var} \".+\"\)", text), var
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    assert "add_subdirectory(COVIDLesionSeg)" in text
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_core_never_imports_slicer_qt_or_vtk():
    for path in (MODULE / "covidlesionseg").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("slicer", "qt", "ctk", "vtk", "torchvision"), f"{path.name}: {name}"


def test_ui_file_names_every_widget_the_module_uses():
    ui = (MODULE / "Resources" / "UI" / "COVIDLesionSeg.ui").read_text()
    names = set(re.findall(r'name="([A-Za-z]+)"', ui))
    used = set(re.findall(r"self\.ui\.([A-Za-z]+)", (MODULE / "COVIDLesionSeg.py").read_text()))
    assert used and used <= names, f"widgets used but not in the .ui file: {used - names}"


def test_core_files_are_imported_without_slicer():
    code = "import sys, covidlesionseg.cli, covidlesionseg.pipeline; assert 'slicer' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the widget against Slicer 5.10 -------------------------------------------------------------------------
# Every Slicer / Qt / CTK / MRML-widget API the Qt layer (module widget, self-test, Segment Editor effect) uses,
# with where it is declared.  Paths are in Slicer/Slicer unless prefixed (CTK = commontk/CTK, VTK, Qt 5.15 headers,
# SlicerPyTorch = fepegar/SlicerPyTorch).  The MRML and logic calls of COVIDLesionSegLib run for real on
# slicer-core in Testing/mrml and are not listed here.
SEGMENT_EDITOR_WIDGET = "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h"
SCRIPTED_EFFECT = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.h"
ABSTRACT_EFFECT = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorAbstractEffect.h"
NODE_COMBOBOX = "Libs/MRML/Widgets/qMRMLNodeComboBox.h"
UTIL = "Base/Python/slicer/util.py"
SCRIPTED_MODULE = "Base/Python/slicer/ScriptedLoadableModule.py"
SCENE = "Libs/MRML/Core/vtkMRMLScene.h"
EDITOR_LOGIC = "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.h"
SLICER_API = {
    "slicer.util.loadUI": UTIL,
    "slicer.util.childWidgetVariables": UTIL,
    "slicer.util.confirmYesNoDisplay": UTIL,
    "slicer.util.errorDisplay": UTIL,
    "slicer.util.tryWithErrorDisplay": UTIL,
    "slicer.util.showStatusMessage": UTIL,
    "slicer.util.updateSegmentBinaryLabelmapFromArray": UTIL,
    "slicer.util.VTKObservationMixin": UTIL,
    "VTKObservationMixin.addObserver": UTIL,
    "VTKObservationMixin.removeObservers": UTIL,
    "ScriptedLoadableModule.parent": SCRIPTED_MODULE,
    "ScriptedLoadableModuleWidget.layout": SCRIPTED_MODULE,
    "ScriptedLoadableModuleWidget.resourcePath": SCRIPTED_MODULE,
    "ScriptedLoadableModuleTest.delayDisplay": SCRIPTED_MODULE,
    "slicer.mrmlScene": "Base/Python/slicer/__init__.py",
    "slicer.mrmlScene.AddNewNodeByClass": SCENE,
    "slicer.mrmlScene.AddNode": SCENE,
    "slicer.mrmlScene.Clear": SCENE,
    "slicer.mrmlScene.CreateNodeByClass": SCENE,
    "slicer.mrmlScene.GetSingletonNode": SCENE,
    "slicer.mrmlScene.StartCloseEvent": SCENE,
    "slicer.mrmlScene.EndCloseEvent": SCENE,
    "slicer.mrmlScene.EndImportEvent": SCENE,
    "slicer.modules.plots.logic().ShowChartInLayout": "Modules/Loadable/Plots/Logic/vtkSlicerPlotsLogic.h",
    "slicer.qMRMLSegmentEditorWidget": SEGMENT_EDITOR_WIDGET,
    "slicer.vtkSlicerSegmentEditorLogic": "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.h (5.12+)",
    "slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd": ABSTRACT_EFFECT,
    "effects.qSlicerSegmentEditorScriptedEffect": SCRIPTED_EFFECT,
    "qMRMLWidget.setMRMLScene": "Libs/MRML/Widgets/qMRMLWidget.h",
    "qMRMLSegmentEditorWidget.setMRMLScene": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setMRMLSegmentEditorNode": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.mrmlSegmentEditorNode": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setSegmentationNode": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setSourceVolumeNode": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setSegmentationNodeSelectorVisible": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setSourceVolumeNodeSelectorVisible": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setSwitchToSegmentationsButtonVisible": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setEffectNameOrder": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.unorderedEffectsVisible": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setActiveEffect": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.installKeyboardShortcuts": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.uninstallKeyboardShortcuts": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.setupViewObservations": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.removeViewObservations": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.saveStateForUndo": SEGMENT_EDITOR_WIDGET,
    "qMRMLSegmentEditorWidget.undo": SEGMENT_EDITOR_WIDGET,
    "vtkSlicerSegmentEditorLogic.SetMRMLScene": "Libs/MRML/Logic/vtkMRMLAbstractLogic.h",
    "vtkSlicerSegmentEditorLogic.SetSegmentEditorNode": EDITOR_LOGIC,
    "vtkSlicerSegmentEditorLogic.SetSegmentationNode": EDITOR_LOGIC,
    "vtkSlicerSegmentEditorLogic.SetSourceVolumeNode": EDITOR_LOGIC,
    "vtkSlicerSegmentEditorLogic.SetMaximumNumberOfUndoStates": EDITOR_LOGIC,
    "vtkSlicerSegmentEditorLogic.SaveStateForUndo": EDITOR_LOGIC,
    "vtkSlicerSegmentEditorLogic.Undo": EDITOR_LOGIC,
    "qMRMLNodeComboBox.currentNode": NODE_COMBOBOX,
    "qMRMLNodeComboBox.setCurrentNode": NODE_COMBOBOX,
    "qMRMLNodeComboBox.connect": "Qt: QtCore/qobject.h (PythonQt connect)",
    "qMRMLNodeComboBox.enabled": "Qt: QtWidgets/qwidget.h",
    "qMRMLTableView.setMRMLTableNode": "Libs/MRML/Widgets/qMRMLTableView.h",
    "ctkPathLineEdit.currentPath": "CTK: Libs/Widgets/ctkPathLineEdit.h",
    "ctkPathLineEdit.enabled": "Qt: QtWidgets/qwidget.h",
    "ctkDirectoryButton.directory": "CTK: Libs/Widgets/ctkDirectoryButton.h",
    "QComboBox.addItem": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.currentText": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.setCurrentText": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.currentData": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.findData": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.setCurrentIndex": "Qt: QtWidgets/qcombobox.h",
    "QComboBox.setToolTip": "Qt: QtWidgets/qwidget.h",
    "QComboBox.blockSignals": "Qt: QtCore/qobject.h",
    "QComboBox.connect": "Qt: QtCore/qobject.h (PythonQt connect)",
    "QDoubleSpinBox.setRange": "Qt: QtWidgets/qspinbox.h",
    "QDoubleSpinBox.setSuffix": "Qt: QtWidgets/qspinbox.h",
    "QDoubleSpinBox.setToolTip": "Qt: QtWidgets/qwidget.h",
    "QDoubleSpinBox.value": "Qt: QtWidgets/qspinbox.h",
    "QDoubleSpinBox.blockSignals": "Qt: QtCore/qobject.h",
    "QDoubleSpinBox.connect": "Qt: QtCore/qobject.h (PythonQt connect)",
    "QPushButton.connect": "Qt: QtCore/qobject.h (PythonQt connect)",
    "QPushButton.enabled": "Qt: QtWidgets/qwidget.h",
    "QRadioButton.checked": "Qt: QtWidgets/qabstractbutton.h",
    "QRadioButton.connect": "Qt: QtCore/qobject.h (PythonQt connect)",
    "QLabel.text": "Qt: QtWidgets/qlabel.h",
    "QLineEdit.text": "Qt: QtWidgets/qlineedit.h",
    "QProgressBar.value": "Qt: QtWidgets/qprogressbar.h",
    "qt.QComboBox": "Qt: QtWidgets/qcombobox.h",
    "qt.QDoubleSpinBox": "Qt: QtWidgets/qspinbox.h",
    "qt.QIcon": "Qt: QtGui/qicon.h",
    "qt.QTimer": "Qt: QtCore/qtimer.h",
    "qt.QProcess": "Qt: QtCore/qprocess.h",
    "qt.QProcess.MergedChannels": "Qt: QtCore/qprocess.h",
    "qt.QProcessEnvironment.systemEnvironment": "Qt: QtCore/qprocess.h",
    "QProcess.setProcessChannelMode": "Qt: QtCore/qprocess.h",
    "QProcess.setProcessEnvironment": "Qt: QtCore/qprocess.h",
    "QProcess.readyRead": "Qt: QtCore/qiodevice.h",
    "QProcess.finished": "Qt: QtCore/qprocess.h",
    "QProcess.start": "Qt: QtCore/qprocess.h",
    "QProcess.readAll().data": "Qt: QtCore/qiodevice.h, QtCore/qbytearray.h",
    "QProcess.closeWriteChannel": "Qt: QtCore/qprocess.h",
    "QProcess.kill": "Qt: QtCore/qprocess.h",
    "QTimer.setSingleShot": "Qt: QtCore/qtimer.h",
    "QTimer.setInterval": "Qt: QtCore/qtimer.h",
    "QTimer.timeout": "Qt: QtCore/qtimer.h",
    "QTimer.isActive": "Qt: QtCore/qtimer.h",
    "QTimer.start": "Qt: QtCore/qtimer.h",
    "QTimer.stop": "Qt: QtCore/qtimer.h",
    "qSlicerSegmentEditorScriptedEffect.addLabeledOptionsWidget": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.doubleParameter": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.modifySelectedSegmentByLabelmap": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.parameter": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.parameterSetNode": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.saveStateForUndo": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.setParameter": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.setParameterDefault": ABSTRACT_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.setPythonSource": SCRIPTED_EFFECT,
    "qSlicerSegmentEditorScriptedEffect.sourceVolumeImageData": ABSTRACT_EFFECT,
    "vtkMRMLSegmentEditorNode.GetSourceVolumeNode": "Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h",
    "vtkMRMLSegmentEditorNode.GetSegmentationNode": "Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h",
    "vtkMRMLSegmentationNode.GetParentTransformNode": "Libs/MRML/Core/vtkMRMLTransformableNode.h",
    "qMRMLSliceWidget.className": "Qt: QtCore/qobject.h (PythonQt className of a wrapped QObject)",
    "vtkRenderWindowInteractor.GetEventPosition": "VTK: Rendering/Core/vtkRenderWindowInteractor.h",
    "qSlicerSegmentEditorScriptedEffect.self().register":
        "Modules/Loadable/Segmentations/EditorEffects/Python/AbstractScriptedSegmentEditorEffect.py",
    "AbstractScriptedSegmentEditorEffect.xyToIjk":
        "Modules/Loadable/Segmentations/EditorEffects/Python/AbstractScriptedSegmentEditorEffect.py",
    "slicer.app.connect startupCompleted()": "Base/QTCore/qSlicerCoreApplication.h",
    "PyTorchUtils.PyTorchUtilsLogic().installTorch": "SlicerPyTorch: PyTorchUtils/PyTorchUtils.py",
    "slicer.packaging.pip_ensure": "Base/Python/slicer/packaging (5.12+, used only where present)",
    "slicer.util.pip_install": UTIL,
}

# Objects whose type the code names by a local variable, not by a `self.ui` widget.
LOCAL_TYPES = {"editor_widget": "qMRMLSegmentEditorWidget",
               "self.scriptedEffect": "qSlicerSegmentEditorScriptedEffect",
               "self.windowComboBox": "QComboBox", "self.radiusSpinBox": "QDoubleSpinBox",
               "self.timer": "QTimer", "process": "QProcess", "self.process": "QProcess", "ui_widget": "qMRMLWidget",
               "instance": "qSlicerSegmentEditorScriptedEffect", "clonedEffect": "qSlicerSegmentEditorScriptedEffect",
               "packaging": "slicer.packaging", "app": "slicer.app", "parameters": "vtkMRMLSegmentEditorNode",
               "viewWidget": "qMRMLSliceWidget", "callerInteractor": "vtkRenderWindowInteractor",
               "segmentation_node": "vtkMRMLSegmentationNode"}
BASE_MEMBERS = {"addObserver": "VTKObservationMixin", "removeObservers": "VTKObservationMixin",
                "layout": "ScriptedLoadableModuleWidget", "resourcePath": "ScriptedLoadableModuleWidget",
                "delayDisplay": "ScriptedLoadableModuleTest", "parent": "ScriptedLoadableModule",
                "xyToIjk": "AbstractScriptedSegmentEditorEffect"}
QT_FILES = ["COVIDLesionSeg.py", "COVIDLesionSegLib/SegmentEditorEffect.py"]
QT_CLASSES = {"COVIDLesionSegLib/process.py": "QProcessRunner", "COVIDLesionSegLib/live.py": "QTimerScheduler",
              "COVIDLesionSegLib/dependencies.py": "install"}


def _ui_classes() -> dict[str, str]:
    import xml.etree.ElementTree as ET

    root = ET.parse(MODULE / "Resources" / "UI" / "COVIDLesionSeg.ui").getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Call):
        base = _dotted(node.func)
        return None if base is None else f"{base}()"
    return None


def _chains(tree: ast.AST) -> set[str]:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def inner(n: ast.AST) -> bool:  # part of a longer chain, e.g. `a.b` in `a.b().c`
        parent = parents.get(n)
        if isinstance(parent, ast.Call) and parent.func is n:
            return isinstance(parents.get(parent), ast.Attribute)
        return isinstance(parent, ast.Attribute)

    return {d for n in ast.walk(tree) if isinstance(n, ast.Attribute) and not inner(n)
            for d in [_dotted(n)] if d}


def _api_uses() -> set[str]:
    """Every Slicer/Qt API the Qt layer touches, named as in SLICER_API."""
    ui = _ui_classes()
    uses: set[str] = set()
    trees = [ast.parse((MODULE / f).read_text()) for f in QT_FILES]
    for rel, name in QT_CLASSES.items():
        tree = ast.parse((MODULE / rel).read_text())
        trees += [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
    for tree in trees:
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        own |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
        for chain in _chains(tree):
            parts = chain.split(".")
            if chain.startswith("self.ui.") and len(parts) >= 4:
                uses.add(f"{ui[parts[2]]}.{parts[3]}")
            elif chain.startswith("self.target."):  # the self-test's undo: widget (Slicer) or editor logic
                method = parts[2]
                uses.add(f"{'vtkSlicerSegmentEditorLogic' if method[0].isupper() else 'qMRMLSegmentEditorWidget'}"
                         f".{method}")
            elif any(chain.startswith(prefix + ".") for prefix in LOCAL_TYPES):
                prefix = max((p for p in LOCAL_TYPES if chain.startswith(p + ".")), key=len)
                rest = chain[len(prefix) + 1:]
                member = rest if rest.split(".")[0].endswith("()") else rest.split(".")[0]
                if not (prefix.startswith("self.") and member in own and prefix == "self." + member):
                    uses.add(f"{LOCAL_TYPES[prefix]}.{member}")
            elif parts[0] == "self" and len(parts) >= 2 and parts[1] in BASE_MEMBERS and parts[1] not in own:
                uses.add(f"{BASE_MEMBERS[parts[1]]}.{parts[1]}")
            elif parts[0] in ("slicer", "qt", "effects", "PyTorchUtils") and len(parts) > 1:
                uses.add(chain)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
                uses.update(f"slicer.util.{alias.name}" for alias in node.names)
    if "slicer.app.connect" in uses:
        uses.discard("slicer.app.connect")
        uses.add("slicer.app.connect startupCompleted()")
    return uses


def test_every_ui_widget_the_module_uses_exists_with_the_right_class():
    ui = _ui_classes()
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox", "lobeSegmentationSelector": "qMRMLNodeComboBox",
        "engineComboBox": "QComboBox", "deviceComboBox": "QComboBox", "lobeSourceComboBox": "QComboBox",
        "lobeFilePathLineEdit": "ctkPathLineEdit", "segmentButton": "QPushButton", "cancelButton": "QPushButton",
        "progressBar": "QProgressBar", "statusLabel": "QLabel", "editLesionsRadioButton": "QRadioButton",
        "editLungMaskRadioButton": "QRadioButton", "editLobesRadioButton": "QRadioButton",
        "segmentEditorWidget": "qMRMLSegmentEditorWidget", "scoreSummaryLabel": "QLabel",
        "tableView": "qMRMLTableView", "showChartButton": "QPushButton", "exportDirectoryButton": "ctkDirectoryButton",
        "annotatorLineEdit": "QLineEdit", "exportButton": "QPushButton", "exportStatusLabel": "QLabel",
        "exportSceneButton": "QPushButton",
    }
    used = set(re.findall(r"self\.ui\.([A-Za-z]+)", (MODULE / "COVIDLesionSeg.py").read_text()))
    assert used == set(expected), f"update the expected classes: {used ^ set(expected)}"
    for name, cls in expected.items():
        assert ui.get(name) == cls, f"{name}: .ui has {ui.get(name)}, the module uses it as {cls}"


def test_every_slicer_api_the_widget_calls_is_listed_with_its_declaration():
    uses = _api_uses()
    missing = sorted(uses - set(SLICER_API))
    assert not missing, f"APIs used but not checked against Slicer 5.10 sources: {missing}"
    stale = sorted(set(SLICER_API) - uses)
    assert not stale, f"listed but no longer used: {stale}"
    for name, path in SLICER_API.items():
        assert path.split(" ")[0].rstrip(":") in ("Qt", "CTK", "VTK", "SlicerPyTorch") or re.match(
            r"(Base|Libs|Modules)/", path), f"{name}: {path}"


def test_segment_editor_effect_is_registered_and_shipped():
    module_text = (MODULE / "COVIDLesionSeg.py").read_text()
    assert 'connect("startupCompleted()", register_editor_effect)' in module_text
    assert '"COVIDLesionSegLib", "SegmentEditorEffect.py"' in module_text
    effect = ast.parse((MODULE / "COVIDLesionSegLib" / "SegmentEditorEffect.py").read_text())
    classes = [n for n in effect.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["SegmentEditorEffect"]
    assert [b.id for b in classes[0].bases if isinstance(b, ast.Name)] == ["AbstractScriptedSegmentEditorEffect"]
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "COVIDLesionSegLib/SegmentEditorEffect.py" in _listed(text, "SCRIPTS")
