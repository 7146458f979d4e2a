"""pdenets: convolutional networks designed from the PDE perspective.

``import pdenets`` registers every model with timm, so ``timm.create_model('qlnet50_eq3')`` works, and
:func:`pdenets.create_model` is the single entry point for every model of the library.
"""

from pdenets.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
