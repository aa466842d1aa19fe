"""Lesion engines behind one interface (see ``base.LesionEngine``); ``factory.make_engine`` builds one by id."""

from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.progress import Cancelled, RunControl

__all__ = ["Cancelled", "LesionEngine", "RunControl"]
