"""Poisoning attacks: frozen configuration objects called on an Arrow table, Beam-free."""

from .backdoor import AttackResult, TabularBackdoor

__all__ = ["AttackResult", "TabularBackdoor"]
