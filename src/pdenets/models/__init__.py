"""Model families. Importing this package registers every model with :mod:`pdenets.models.registry`."""

import pdenets.models.qlnet_varcoef  # noqa: F401  (QL-ConvNets with variable coefficients)
from pdenets.models import qlnet  # noqa: F401  (registers the Liu-Shao-Bai QL-ConvNets)
from pdenets.models.registry import create_model, is_image_model, list_models, register_model

__all__ = ["create_model", "is_image_model", "list_models", "register_model"]
