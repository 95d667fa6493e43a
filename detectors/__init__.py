"""Poison detectors: Beam-free, scikit-learn-style estimators built on combinable statistics.

Every detector splits into combinable per-class statistics, a fit that turns them into a
small model, and a numba kernel that scores rows against the model (see ``base``).
"""

from .base import BaseDetector, PerClassModel, Screened, calibrated_threshold
from .ensemble import EnsembleDetector, EnsembleModel
from .spectral import SpectralModel, SpectralSignatureDetector

#: Detectors by their command-line / ``score_<name>`` name.
DETECTORS = {SpectralSignatureDetector.name: SpectralSignatureDetector}

__all__ = [
    "BaseDetector",
    "DETECTORS",
    "EnsembleDetector",
    "EnsembleModel",
    "PerClassModel",
    "Screened",
    "SpectralModel",
    "SpectralSignatureDetector",
    "calibrated_threshold",
]
