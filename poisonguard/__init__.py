"""poisonguard: simulate data-poisoning attacks and screen data for poisoned rows.

The subpackages are ``poisonguard.schemas`` (the data contract),
``poisonguard.detectors`` (Beam-free detectors), ``poisonguard.simulators``
(Beam-free attacks) and ``poisonguard.pipelines`` (Beam stages, jobs and CLI).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("poisonguard")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
