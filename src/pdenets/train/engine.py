"""Compatibility names: the training loop is :mod:`pdenets.train.trainer`, evaluation :mod:`pdenets.train.evaluate`.

``from pdenets.train.engine import train, evaluate`` keeps working; new code imports
``from pdenets.train.trainer import Trainer, train`` and ``from pdenets.train.evaluate import evaluate``.
"""

from pdenets.train.evaluate import evaluate
from pdenets.train.trainer import Trainer, TrainingDiverged, train

__all__ = ["Trainer", "TrainingDiverged", "evaluate", "train"]
