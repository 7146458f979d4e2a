"""Ruthotto-Haber dynamics: integrators as residual units, the time-stepping schemes of every family, and
memory-flat reversible backprop (docs/design.md §14)."""

from pdenets.dynamics.integrators import (
    UNITS,
    HamiltonianUnit,
    ParabolicUnit,
    PDEUnit,
    SecondOrderUnit,
    create_unit,
    refine_in_time,
    resample_in_time,
    transfer_in_time,
)
from pdenets.dynamics.reversible import frozen_running_stats, reversible_forward
from pdenets.dynamics.schemes import SCHEMES, Scheme, create_scheme, interpolation_weights, schemes_for

__all__ = [
    "SCHEMES", "UNITS", "HamiltonianUnit", "PDEUnit", "ParabolicUnit", "Scheme", "SecondOrderUnit", "create_scheme",
    "create_unit", "frozen_running_stats", "interpolation_weights", "refine_in_time", "resample_in_time",
    "reversible_forward", "schemes_for", "transfer_in_time",
]
