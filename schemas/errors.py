"""The exception hierarchy: every error poisonguard raises on purpose is a PoisonguardError.

Messages name the file, column, option or key at fault and say what was expected, so that
the CLI can print them as one line (exit code 2) without a traceback.
"""


class PoisonguardError(Exception):
    """Base class of every error poisonguard raises for bad input or configuration."""


class InputError(PoisonguardError):
    """An input file cannot be used: missing, unreadable, empty, or without a required column."""


class ConfigError(PoisonguardError, ValueError):
    """An option, parameter or configuration value is invalid (a ValueError, as scikit-learn expects)."""
