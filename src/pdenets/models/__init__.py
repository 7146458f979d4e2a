"""Model families. Importing this package registers every model with :mod:`pdenets.models.registry`."""

from pdenets.models import (
    qlnet,  # noqa: F401  (registers the Liu-Shao-Bai QL-ConvNets)
    qlnet_varcoef,  # noqa: F401  (QL-ConvNets with variable coefficients)
    ruseckas,  # noqa: F401  (registers the Ruseckas ODE networks)
    ruthotto,  # noqa: F401  (registers the Ruthotto-Haber PDE-CNNs)
)
from pdenets.models.registry import create_model, is_image_model, list_models, register_model

__all__ = ["create_model", "is_image_model", "list_models", "register_model"]
