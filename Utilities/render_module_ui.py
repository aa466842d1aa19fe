"""Render the module's .ui (COVIDLesionSeg/Resources/UI/COVIDLesionSeg.ui) to a PNG, as designed, without Slicer.

Slicer's own widgets (ctk*, qMRML*) are replaced by plain Qt stand-ins of the same role and filled with
example content (the scores of a severity.json, e.g. a generated CT2 case), so the picture shows the layout
a reader will see.
Needs PySide6 (``pip install PySide6-Essentials`` in a separate environment); runs offscreen:

    QT_QPA_PLATFORM=offscreen python Utilities/render_module_ui.py docs/images/slicer-module-layout.png severity.json
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

UI = Path(__file__).resolve().parents[1] / "COVIDLesionSeg" / "Resources" / "UI" / "COVIDLesionSeg.ui"
STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
             "ctkPathLineEdit": "QLineEdit", "ctkDirectoryButton": "QPushButton", "qMRMLTableView": "QTableWidget",
             "qMRMLSegmentEditorWidget": "QWidget"}
EFFECTS = ["Paint", "Erase", "Draw", "Scissors", "Grow from seeds", "Threshold", "Islands", "Smoothing",
           "COVID lesion grow", "Local Threshold"]

def severity_rows(severity: dict) -> list[tuple]:
    """The module's table rows (five lobes, two lungs, both lungs) from a severity.json."""
    rows = []
    for name in ("RUL", "RML", "RLL", "LUL", "LLL"):
        lobe = severity.get("lobes", {}).get(name)
        if lobe:
            rows.append((name, lobe["volume_ml"], lobe["lesion_ml"], lobe["percent"], lobe["high_opacity_percent"],
                         lobe["lss"], lobe["lhos"], lobe["ctss"], ""))
    for side in ("right", "left"):
        lung = severity["lungs"][side]
        rows.append((f"{side} lung", lung["volume_ml"], lung["lesion_ml"], lung["percent"], "", "", "", "", ""))
    category = " / ".join(str(v) for v in (severity["CT_category"], severity.get("CTSS_category")) if v)
    rows.append(("both lungs", severity["lung_ml"], severity["lesion_ml"], severity["PO"], severity["PHO"],
                 severity["LSS"], severity["LHOS"], severity["CTSS"], category))
    return rows


COLUMNS = ["Region", "Volume mL", "Lesion mL", "Lesion %", "High opacity %", "LSS", "LHOS", "CTSS", "CT category"]


def plain_ui() -> str:
    text = UI.read_text()
    text = re.sub(r"<customwidgets>.*?</customwidgets>", "", text, flags=re.S)
    text = re.sub(r"<connections>.*?</connections>", "", text, flags=re.S)
    for custom, plain in STAND_INS.items():
        text = text.replace(f'class="{custom}"', f'class="{plain}"')
    for prop in ("nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "collapsed"):
        text = re.sub(rf'<property name="{prop}">.*?</property>', "", text, flags=re.S)
    # QGroupBox shows "title" where ctkCollapsibleButton shows "text".
    return re.sub(r'(<widget class="QGroupBox" name="\w+">\s*)<property name="text">',
                  r'\1<property name="title">', text)


def main(out: str, severity_path: str) -> None:
    import json

    severity = json.loads(Path(severity_path).read_text())
    from PySide6 import QtWidgets
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication(sys.argv)
    with tempfile.NamedTemporaryFile("w", suffix=".ui", delete=False) as handle:
        handle.write(plain_ui())
    file = QFile(handle.name)
    file.open(QFile.ReadOnly)
    widget = QUiLoader().load(file)
    find = widget.findChild
    find(QtWidgets.QComboBox, "inputVolumeSelector").addItem("Generated CT (seed 1, CT2)")
    find(QtWidgets.QComboBox, "engineComboBox").addItem("classical")
    find(QtWidgets.QComboBox, "deviceComboBox").addItem("auto")
    find(QtWidgets.QComboBox, "lobeSourceComboBox").addItem("builtin")
    find(QtWidgets.QComboBox, "lobeSegmentationSelector").addItem("None")
    find(QtWidgets.QComboBox, "lobeSegmentationSelector").setEnabled(False)
    find(QtWidgets.QLineEdit, "lobeFilePathLineEdit").setEnabled(False)
    find(QtWidgets.QProgressBar, "progressBar").setValue(100)
    find(QtWidgets.QLabel, "statusLabel").setText("done: correct the lesions; scores follow your edits")
    find(QtWidgets.QPushButton, "exportDirectoryButton").setText("~/covid-exports")
    s = severity
    find(QtWidgets.QLabel, "scoreSummaryLabel").setText(
        f"PO {s['PO']:.1f}%, PHO {s['PHO']:.1f}%, LSS {s['LSS']}/20, LHOS {s['LHOS']}/20, CTSS {s['CTSS']}/25, "
        f"category {s['CT_category']}")
    table = find(QtWidgets.QTableWidget, "tableView")
    table.setColumnCount(len(COLUMNS))
    table.setHorizontalHeaderLabels(COLUMNS)
    rows = severity_rows(severity)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QtWidgets.QTableWidgetItem(f"{value:.1f}" if isinstance(value, float) else str(value)))
    table.resizeColumnsToContents()
    table.verticalHeader().setVisible(False)
    table.setMinimumHeight(300)
    editor = find(QtWidgets.QWidget, "segmentEditorWidget")
    layout = QtWidgets.QVBoxLayout(editor)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(QtWidgets.QLabel("Segment Editor (lesion node; editable area: inside Lung mask)"))
    segments = QtWidgets.QTableWidget(3, 2)
    segments.setHorizontalHeaderLabels(["Segment", "Visible"])
    for r, (name, shown) in enumerate([("Lesion", "yes"), ("Background", "yes"), ("Lung mask", "hidden")]):
        segments.setItem(r, 0, QtWidgets.QTableWidgetItem(name))
        segments.setItem(r, 1, QtWidgets.QTableWidgetItem(shown))
    segments.verticalHeader().setVisible(False)
    segments.setMaximumHeight(110)
    layout.addWidget(segments)
    grid = QtWidgets.QGridLayout()
    for n, name in enumerate(EFFECTS):
        button = QtWidgets.QToolButton()
        button.setText(name)
        button.setMinimumWidth(120)
        grid.addWidget(button, n // 4, n % 4)
    layout.addLayout(grid)
    options = QtWidgets.QFormLayout()
    window = QtWidgets.QComboBox()
    window.addItem("any opacity (-750 to 100 HU)")
    options.addRow("COVID lesion grow window:", window)
    radius = QtWidgets.QDoubleSpinBox()
    radius.setSuffix(" mm")
    radius.setValue(25.0)
    options.addRow("Box radius:", radius)
    layout.addLayout(options)
    widget.resize(640, 1180)
    widget.show()
    app.processEvents()
    widget.grab().save(out)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
