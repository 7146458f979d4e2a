"""Analysis tools: numerical checks of the papers' mathematical claims (one module per family)."""

from pdenets.analysis.stability import (
    forward_stability,
    jacobian_matrix,
    layer_jacobian_spectrum,
    operator_norm_sq,
    parabolic_step_bound,
)

__all__ = [
    "forward_stability", "jacobian_matrix", "layer_jacobian_spectrum", "operator_norm_sq", "parabolic_step_bound",
]
