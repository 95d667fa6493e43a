"""Poisoning attacks: frozen config objects plus pure functions of an Arrow table, Beam-free.

In memory::

    from poisonguard.simulators import Backdoor, LabelFlip, apply_attacks
    result = apply_attacks(table, [LabelFlip(mode="random", rate=0.1)], seed=0,
                           label_column="label", feature_columns=features)
    result.table, result.mask

In a pipeline: build a :class:`DataProfile` (empty / add_table / merge), ``attack.prepare``
it, then ``prepared.apply(batch, cutoff)`` per batch; count-mode attacks
(``prepared.needs_cutoff``) get ``cutoff`` from a :class:`SmallestHashes` pass over
``prepared.hashes(batch)[prepared.eligible(batch)]``. See ``base`` for the contract.
"""

from .backdoor import Backdoor, CleanLabel, TabularBackdoor
from .base import (
    Attack,
    AttackResult,
    DataProfile,
    PreparedAttack,
    SmallestHashes,
    apply_attacks,
    count_cutoff,
)
from .injection import DuplicateFlip, Inject
from .label_flip import LabelFlip
from .noise import FeatureNoise
from .registry import ATTACKS, make_attack
from .triggers import FeatureTrigger, ImageTrigger, QuantileTrigger, make_triggers

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Backdoor",
    "CleanLabel",
    "DataProfile",
    "DuplicateFlip",
    "FeatureNoise",
    "FeatureTrigger",
    "ImageTrigger",
    "Inject",
    "LabelFlip",
    "PreparedAttack",
    "QuantileTrigger",
    "SmallestHashes",
    "TabularBackdoor",
    "apply_attacks",
    "count_cutoff",
    "make_attack",
    "make_triggers",
]
