"""Rewrite the file lists of COVIDLesionSeg/CMakeLists.txt from the module folder.

slicerMacroBuildScriptedModule installs only what is listed: a file missing there works in a development
build and fails once installed. Run this after adding a file; Testing/core/test_extension_layout.py
fails while a list is out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "COVIDLesionSeg"
RESOURCE_SUFFIXES = (".ui", ".png", ".json", ".term.json", ".svg", ".pt", ".md")


def module_files() -> tuple[list[str], list[str]]:
    """(scripts, resources) relative to the module folder, sorted."""
    files = [p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    scripts = sorted(p.relative_to(MODULE).as_posix() for p in files if p.suffix == ".py")
    resources = sorted(p.relative_to(MODULE).as_posix() for p in files if p.name.endswith(RESOURCE_SUFFIXES))
    return scripts, resources


def render(text: str, scripts: list[str], resources: list[str]) -> str:
    def block(name: str, items: list[str]) -> str:
        return f"set(MODULE_PYTHON_{name}\n" + "".join(f"  {item}\n" for item in items) + "  )"

    text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS\n.*?\)", block("SCRIPTS", scripts), text, flags=re.S)
    return re.sub(r"set\(MODULE_PYTHON_RESOURCES\n.*?\)", block("RESOURCES", resources), text, flags=re.S)


if __name__ == "__main__":
    cmake = MODULE / "CMakeLists.txt"
    new = render(cmake.read_text(), *module_files())
    if "--check" in sys.argv:
        sys.exit(0 if new == cmake.read_text() else 1)
    cmake.write_text(new)
