"""Build a lesion engine by id: ``classical``, a registered model, or the user's default.

The registry (``covidlesionseg.models``) says which engines exist; the engines themselves never import
it.  Engines are imported lazily so that choosing one stays importable without torch.
"""

from __future__ import annotations

from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.models import CLASSICAL_ID, default_model_id, get_model


def make_engine(engine_id: str | None = None, device: str = "auto") -> LesionEngine:
    """The lesion engine for ``engine_id``: ``classical``, a registered model id, or None for the default.

    An unknown id raises InputError listing the known ones.
    """
    chosen = default_model_id() if engine_id is None else engine_id
    entry = get_model(chosen)
    if entry.get("architecture") == CLASSICAL_ID:
        from covidlesionseg.engines.classical import ClassicalEngine

        return ClassicalEngine()  # CPU only: ``device`` does not apply
    from covidlesionseg.engines.unet import UNetEngine

    return UNetEngine(entry, device=device)
