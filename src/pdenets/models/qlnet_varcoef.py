"""QL-ConvNets with variable coefficients (Liu-Shao-Bai §3, first bullet; :mod:`pdenets.layers.varcoef`).

Registered names: ``qlnet18_eq3_varcoef_small`` (affine coefficients a(x, y) = θ0 + θ1 x + θ2 y on every
derivative channel) and ``qlnet18_eq3_varcoef_quad_small`` (quadratic in x, y). Any other QL-ConvNet gets
the option with ``timm.create_model('qlnet50_eq3', var_coef='affine')``. `pdenets models 'qlnet18_eq3*small'`
prints the parameter cost next to the constant-coefficient model.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from pdenets.models.qlnet import LAYOUTS, SMALL_WIDTHS, QLNet, _cfg, _create_qlnet
from pdenets.models.registry import register_image_model

_SMALL = dict(layers=LAYOUTS["18"], stem="small", widths=SMALL_WIDTHS, block="eq3")

default_cfgs: dict[str, Any] = {
    "qlnet18_eq3_varcoef_small": _cfg(input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0),
    "qlnet18_eq3_varcoef_quad_small": _cfg(input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0),
}


@register_image_model
def qlnet18_eq3_varcoef_small(pretrained: bool = False, **kwargs: Any) -> QLNet:
    """qlnet18_eq3_small with affine variable coefficients on the derivative channels."""
    return _create_qlnet("qlnet18_eq3_varcoef_small", pretrained, **dict(_SMALL, var_coef="affine", **kwargs))


@register_image_model
def qlnet18_eq3_varcoef_quad_small(pretrained: bool = False, **kwargs: Any) -> QLNet:
    """qlnet18_eq3_small with quadratic variable coefficients on the derivative channels."""
    return _create_qlnet("qlnet18_eq3_varcoef_quad_small", pretrained, **dict(_SMALL, var_coef="quadratic", **kwargs))


default_cfgs = generate_default_cfgs(default_cfgs)
