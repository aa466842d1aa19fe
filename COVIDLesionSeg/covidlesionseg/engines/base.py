"""The lesion-engine interface shared by every engine (classical and neural).

An engine turns a CT (``io.Volume``, float32 HU) and a lung mask on the same grid into a boolean
lesion mask on that grid.  Engines report progress through a callback and stop early when a
cancel check returns True (``covidlesionseg.progress``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from covidlesionseg.io import InputError, Volume
from covidlesionseg.progress import CancelCheck, ProgressCallback, RunControl


class LesionEngine(ABC):
    """One way of finding pulmonary infiltrates.

    Attributes every engine sets: ``name`` (the id users pass to ``--engine``), ``version``,
    ``weights_sha256`` (None for engines without weights) and ``device`` ("cpu" or "cuda").
    """

    name: str = ""
    version: str = ""
    weights_sha256: str | None = None
    device: str = "cpu"
    provides_lungs: bool = False
    """True for engines that segment the lungs together with the lesions (``segment_with_lungs``)."""

    def segment(
        self,
        ct: Volume,
        lungs: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> np.ndarray:
        """Return a boolean lesion mask on ``ct``'s grid.

        ``lungs`` is the lung label map (0 background, 1 right, 2 left) on the same grid.
        Lesions may extend slightly beyond it (dense consolidation at the pleura); the caller
        then extends the lungs, never clips the lesions.
        """
        lungs = np.asarray(lungs)
        if lungs.shape != ct.shape:
            raise InputError(f"lung mask shape {lungs.shape} differs from the CT's {ct.shape}")
        return self._segment(ct, lungs, RunControl(progress, cancel))

    def segment_with_lungs(
        self,
        ct: Volume,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lung mask, lesion mask), both boolean on ``ct``'s grid, from one pass of an engine that
        ``provides_lungs``; the lung mask contains the lesion mask.  Right and left are not the engine's:
        the caller splits them by the direction cosines."""
        raise NotImplementedError(f"engine {self.name!r} does not segment lungs")

    @abstractmethod
    def _segment(self, ct: Volume, lungs: np.ndarray, run: RunControl) -> np.ndarray:
        """The engine's own work: ``lungs`` already checked to lie on ``ct``'s grid."""

    def describe(self) -> dict:
        """What severity.json records about the engine."""
        return {"id": self.name, "version": self.version, "sha256": self.weights_sha256, "device": self.device}
