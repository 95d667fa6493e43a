"""Beam stages, the jobs (screen, simulate, demo) and the command line.

Public surface: the jobs (:func:`run_screen` with :class:`ScreenConfig`,
:func:`run_simulate` with :class:`SimulateConfig`), the composite
stage for your own pipeline (:class:`ScreenBatches` with :class:`ReadChunks`), and the
pieces they are built from.

Names are imported on first use, so that ``poisonguard.pipelines.cli`` can pin thread
counts before numpy, numba and Beam load.
"""

import importlib

_EXPORTS = {
    "Shard": "io", "discover_shards": "io", "read_output": "io",
    "Contract": "rows", "resolve_contract": "rows", "validate_chunk": "rows",
    "RunnerConfig": "runners", "DriftRule": "history",
    "Policy": "screen", "ScreenConfig": "screen", "ScreenResult": "screen", "run_screen": "screen",
    "SimulateConfig": "simulate", "SimulateResult": "simulate", "run_simulate": "simulate",
    "Chunk": "transforms", "FitDetector": "transforms", "ReadChunks": "transforms", "ScreenBatches": "transforms",
    "ScreenChunks": "transforms", "ScreenedChunk": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
