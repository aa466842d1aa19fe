"""What the module installs per engine: the classical engine never asks for torch or MONAI, and pip_ensure only
ever gets plain requirements (no pip flags)."""

from __future__ import annotations

import pytest


def test_nothing_to_install_here_for_the_classical_engine():
    from COVIDLesionSegLib import dependencies

    plan = dependencies.plan_for("classical")
    assert plan.empty  # tqdm and scipy are in this environment; torch is never needed


def test_plans_on_an_empty_python(monkeypatch):
    from packaging.requirements import InvalidRequirement, Requirement

    from COVIDLesionSegLib import dependencies

    monkeypatch.setattr(dependencies, "_missing", lambda module: True)  # as on a fresh Slicer
    classical = dependencies.plan_for("classical")
    assert not classical.torch and classical.no_deps == []
    neural = dependencies.plan_for("bressem-resnet18")
    assert neural.torch and neural.no_deps == ["monai>=1.3"]
    for requirement in classical.with_deps + neural.with_deps:
        Requirement(requirement)  # what slicer.packaging.pip_ensure needs
    with pytest.raises(InvalidRequirement):
        Requirement("--no-deps")
