"""Poison detectors: Beam-free, scikit-learn-style estimators built on combinable statistics.

Every detector splits into combinable per-class statistics, a fit that turns them into a
small model, and a numba kernel that scores rows against the model (see ``base``).

=================  =========================================  ===================================
name               estimator                                  finds
=================  =========================================  ===================================
spectral           :class:`SpectralSignatureDetector`         backdoor clusters (Tran et al. 2018)
robust_spectral    :class:`RobustSpectralDetector`            backdoor clusters, robust to large
                                                              poison shares (SPECTRE, 2021)
influence          :class:`InfluenceDetector`                 rows that hurt a logistic model or a
                                                              trusted set (Koh & Liang 2017)
clustering         :class:`ActivationClusteringDetector`      small, separated sub-clusters of a
                                                              class (Chen et al. 2018)
knn                :class:`KNNLabelDetector`                  labels their neighbours disagree
                                                              with (Peri et al. 2020)
label              :class:`ConfidentLabelDetector`            label issues by confident learning
                                                              (Northcutt et al. 2021)
pattern            :class:`TriggerPatternDetector`             backdoor triggers as rules: pairs of
                                                              feature values over-represented in one
                                                              class, against what their values say
novelty            :class:`NoveltyDetector`                   rows unlike the trusted reference rows
                                                              of their class (classifier two-sample
                                                              test; Lopez-Paz & Oquab 2017)
=================  =========================================  ===================================

:class:`EnsembleDetector` runs several as one (``--detectors a,b,c`` on the command line).
"""

from .base import BaseDetector, PerClassModel, Screened, calibrated_threshold
from .clustering import ActivationClusteringDetector, ClusteringModel
from .ensemble import EnsembleDetector, EnsembleModel
from .influence import InfluenceDetector, InfluenceModel
from .knn import KNNLabelDetector, KNNLabelModel
from .label import ConfidentLabelDetector, LabelModel
from .novelty import NoveltyDetector, NoveltyModel
from .pattern import PatternModel, TriggerPatternDetector
from .robust_spectral import RobustSpectralDetector, RobustSpectralModel
from .spectral import SpectralModel, SpectralSignatureDetector

#: Detectors by their command-line / ``score_<name>`` name.
DETECTORS = {
    cls.name: cls
    for cls in (SpectralSignatureDetector, RobustSpectralDetector, InfluenceDetector, ActivationClusteringDetector, KNNLabelDetector,
                ConfidentLabelDetector, TriggerPatternDetector, NoveltyDetector)
}

__all__ = [
    "ActivationClusteringDetector",
    "BaseDetector",
    "ClusteringModel",
    "ConfidentLabelDetector",
    "DETECTORS",
    "EnsembleDetector",
    "EnsembleModel",
    "InfluenceDetector",
    "InfluenceModel",
    "KNNLabelDetector",
    "KNNLabelModel",
    "LabelModel",
    "NoveltyDetector",
    "NoveltyModel",
    "PatternModel",
    "PerClassModel",
    "RobustSpectralDetector",
    "RobustSpectralModel",
    "Screened",
    "SpectralModel",
    "SpectralSignatureDetector",
    "TriggerPatternDetector",
    "calibrated_threshold",
]
