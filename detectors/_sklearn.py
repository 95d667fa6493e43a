"""The one module that imports scikit-learn's private helpers (parameter validation; the boosting losses' link functions)."""

from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["HalfBinomialLoss", "HalfMultinomialLoss", "Interval", "StrOptions"]
