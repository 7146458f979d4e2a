"""pdenets: convolutional networks designed from the PDE perspective.

``import pdenets`` registers every model with timm, so ``timm.create_model('qlnet50_eq3')`` works, and
:func:`pdenets.create_model` is the single entry point for every model of the library;
:func:`pdenets.load` rebuilds any model file pdenets wrote (a training checkpoint, a run directory, a
folded, compressed or teleported model: one artifact format, docs/design.md §8). It also imports the
providers of the training hooks (:mod:`pdenets.hooks`), so every hook name is known to
:func:`pdenets.hooks.create_hook` (docs/design.md §7).
"""

from pdenets.models import create_model, list_models  # noqa: I001  (models first: they register with timm)
from pdenets.artifacts import load, load_artifact, save_artifact
from pdenets.symmetry import prox as _prox  # noqa: F401  (registers the nuclear-prox hook)
from pdenets.train import regularizer_hooks as _regularizer_hooks  # noqa: F401  (rh-tv, box, layer-smooth, ...)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "load_artifact", "save_artifact", "__version__"]
