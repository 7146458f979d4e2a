"""Ruthotto-Haber dynamics: integrators as residual units and memory-flat reversible backprop."""

from pdenets.dynamics.integrators import (
    UNITS,
    HamiltonianUnit,
    ParabolicUnit,
    PDEUnit,
    SecondOrderUnit,
    create_unit,
    refine_in_time,
)
from pdenets.dynamics.reversible import frozen_running_stats, reversible_forward

__all__ = [
    "UNITS", "HamiltonianUnit", "PDEUnit", "ParabolicUnit", "SecondOrderUnit", "create_unit",
    "frozen_running_stats", "refine_in_time", "reversible_forward",
]
