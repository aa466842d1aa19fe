"""The test scene: the module's own headless bootstrap (COVIDLesionSegLib/headless.py), one per test."""

from __future__ import annotations


def bootstrap_scene():
    from COVIDLesionSegLib.headless import bootstrap_scene as bootstrap

    return bootstrap()
