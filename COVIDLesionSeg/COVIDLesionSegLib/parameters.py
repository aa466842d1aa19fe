"""The module's parameter node: what the reader chose and which nodes belong together, saved with the scene.

Stored as Slicer's `parameterNodeWrapper` stores a parameter pack (a `vtkMRMLScriptedModuleNode` with the
"ModuleName" attribute; plain values as parameters, nodes as node references named after the field), so the
links between the CT, the lesion node, the anatomy node, the engine's original lesions and the severity table
survive Save / Load of the scene (.mrb or .mrml) and Close Scene.  A small explicit class instead of the
decorator keeps it usable where `slicer.parameterNodeWrapper` is absent (slicer-core, the Python console of
older builds) and typed for the logic.
"""

from __future__ import annotations

import slicer

MODULE_NAME = "COVIDLesionSeg"

# field -> (default, allowed values or None)
VALUES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "engine": ("classical", None),
    "device": ("auto", ("auto", "cpu", "cuda")),
    "lobeSource": ("builtin", ("builtin", "segmentation", "file", "none")),
    "lobeFile": ("", None),
    "growWindow": ("any opacity", None),
    "growRadiusMm": ("25", None),
}
NODES: dict[str, str] = {
    "inputVolume": "vtkMRMLScalarVolumeNode",
    "lobeSegmentation": "vtkMRMLSegmentationNode",
    "lesions": "vtkMRMLSegmentationNode",
    "anatomy": "vtkMRMLSegmentationNode",
    "original": "vtkMRMLLabelMapVolumeNode",
    "table": "vtkMRMLTableNode",
}


def find_parameter_node(scene=None):
    """The module's parameter node in ``scene`` (None when there is none yet)."""
    scene = scene or slicer.mrmlScene
    for node in scene.GetNodesByClass("vtkMRMLScriptedModuleNode"):
        if node.GetAttribute("ModuleName") == MODULE_NAME:
            return node
    return None


class Parameters:
    """Typed access to the parameter node; ``Parameters(scene)`` finds or creates it (singleton per scene)."""

    def __init__(self, scene=None, node=None) -> None:
        scene = scene or slicer.mrmlScene
        self.node = node or find_parameter_node(scene)
        if self.node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node.SetHideFromEditors(True)
            self.node = scene.AddNode(node)
        for name, (default, _allowed) in VALUES.items():
            if self.node.GetParameter(name) == "":
                self.node.SetParameter(name, default)

    # plain values
    def get(self, name: str) -> str:
        if name not in VALUES:
            raise KeyError(f"unknown parameter {name}")
        return self.node.GetParameter(name) or VALUES[name][0]

    def set(self, name: str, value: str) -> None:
        default, allowed = VALUES[name]
        if allowed is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, not '{value}'")
        self.node.SetParameter(name, str(value))

    # node references
    def node_for(self, role: str):
        if role not in NODES:
            raise KeyError(f"unknown node role {role}")
        return self.node.GetNodeReference(role)

    def set_node(self, role: str, node) -> None:
        if role not in NODES:
            raise KeyError(f"unknown node role {role}")
        if node is not None and not node.IsA(NODES[role]):
            raise ValueError(f"{role} must be a {NODES[role]}, not {node.GetClassName()}")
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)
