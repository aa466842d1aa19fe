"""Lesion engines behind one interface (see ``base.LesionEngine``)."""

from covidlesionseg.engines.base import Cancelled, LesionEngine, RunControl

__all__ = ["Cancelled", "LesionEngine", "RunControl"]
