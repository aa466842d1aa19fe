"""What each engine needs in Slicer's Python, and installing only what is missing.

The classical engine needs only numpy, scipy, SimpleITK (shipped with Slicer) and tqdm: it runs without
torch.  Neural engines need torch, installed through the PyTorch extension (``PyTorchUtils``, which picks
the CUDA build), and MONAI without its dependencies, so pip never replaces Slicer's SimpleITK or numpy or
the torch that extension installed.  ``slicer.packaging.pip_ensure`` (Slicer 5.12+) takes only
`packaging.requirements.Requirement` objects, so "--no-deps" installs go through ``slicer.util.pip_install``,
present in 5.10 and later.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

WITH_DEPENDENCIES = {"tqdm": "tqdm>=4.60", "scipy": "scipy"}
WITHOUT_DEPENDENCIES = {"monai": "monai>=1.3"}


@dataclass
class Plan:
    """What to install: requirements with their dependencies, ones without, and whether torch is missing."""

    with_deps: list[str] = field(default_factory=list)
    no_deps: list[str] = field(default_factory=list)
    torch: bool = False

    @property
    def empty(self) -> bool:
        return not (self.with_deps or self.no_deps or self.torch)


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def plan_for(engine: str | None) -> Plan:
    """The installs ``engine`` needs here ("classical" needs no torch and no MONAI)."""
    plan = Plan(with_deps=[req for module, req in WITH_DEPENDENCIES.items() if _missing(module)])
    if engine != "classical":
        plan.torch = _missing("torch")
        plan.no_deps = [req for module, req in WITHOUT_DEPENDENCIES.items() if _missing(module)]
    return plan


def install(plan: Plan) -> None:  # pragma: no cover - needs the Slicer application
    """Carry out ``plan`` inside Slicer (asks before installing torch, as the PyTorch extension does)."""
    import slicer

    if plan.torch:
        try:
            import PyTorchUtils
        except ImportError as exc:
            raise RuntimeError("the neural engines need the PyTorch extension: install it from the Extensions "
                               "Manager, or choose the classical engine") from exc
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
            raise RuntimeError("PyTorch was not installed; the classical engine works without it")
    packaging = getattr(slicer, "packaging", None)
    if plan.with_deps:
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            from packaging.requirements import Requirement

            packaging.pip_ensure([Requirement(r) for r in plan.with_deps], requester="COVIDLesionSeg")
        else:
            slicer.util.pip_install(" ".join(plan.with_deps))
    for requirement in plan.no_deps:
        slicer.util.pip_install(f"--no-deps {requirement}")


def ensure_dependencies(engine: str | None = "classical") -> None:
    """Install what ``engine`` needs and is missing (nothing when all is there)."""
    plan = plan_for(engine)
    if not plan.empty:
        install(plan)
