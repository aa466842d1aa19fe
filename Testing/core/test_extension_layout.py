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
