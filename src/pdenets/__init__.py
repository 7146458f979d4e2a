"""pdenets: convolutional networks designed from the PDE perspective.

``import pdenets`` registers every model with timm, so ``timm.create_model('qlnet50_eq3')`` works, and
:func:`pdenets.create_model` is the single entry point for every model of the library;
:func:`pdenets.load` rebuilds any model file pdenets wrote (a training checkpoint, a run directory, a
folded, compressed or teleported model: one artifact format, docs/design.md §8).
"""

from pdenets.models import create_model, list_models  # noqa: I001  (models first: they register with timm)
from pdenets.artifacts import load, load_artifact, save_artifact

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "load_artifact", "save_artifact", "__version__"]
