"""The smoothness-in-depth regulariser of Ruseckas Eqs. (81)-(82)/(113), and its training hook.

    R = λ/2 Σ_{l=1}^{L-1} ( ‖b̃⁽ˡ⁾ − b̃⁽ˡ⁻¹⁾‖₂² + ‖W̃⁽ˡ⁾ − W̃⁽ˡ⁻¹⁾‖_F² )                        (Eq. 113)

the discretised ½∫(‖dw/dt‖² + ‖db/dt‖²) dt of Eq. (81) (Eq. 82 with the 1/Δt absorbed into λ). It prefers
parameters that vary smoothly with the layer index l = t/Δt. Any module with a ``layer_parameters()``
method returning (W̃, b̃) stacked over layers (first dimension L) is regularised — the Ruseckas
:class:`~pdenets.models.ruseckas.OdeNet` and :class:`~pdenets.models.ruseckas.OdeConvNet` (for the latter
W̃ is the kernel κ̃, so ‖·‖_F is the norm of all kernel entries).

Trainer use: ``--hook layer-smooth:0.1`` (λ = 0.1; without a value λ = 1.0, the circles setting).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.train.hooks import TrainHook, register_hook


def layer_smoothness(weight: torch.Tensor, bias: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """λ/2 Σ_l (‖b_l − b_{l−1}‖² + ‖W_l − W_{l−1}‖²) of Eq. (113); ``weight``/``bias`` are stacked over l."""
    if weight.shape[0] != bias.shape[0]:
        raise ValueError(f"weight and bias must have the same number of layers, got {weight.shape[0]}, {bias.shape[0]}")
    dw = weight[1:] - weight[:-1]
    db = bias[1:] - bias[:-1]
    return 0.5 * lam * (dw.square().sum() + db.square().sum())


def model_layer_smoothness(model: nn.Module, lam: float = 1.0) -> torch.Tensor:
    """Eq. (113)'s penalty summed over every submodule with ``layer_parameters()``; ValueError if none."""
    mods = [m for m in model.modules() if hasattr(m, "layer_parameters")]
    terms = [layer_smoothness(*m.layer_parameters(), lam=lam) for m in mods]
    if not terms:
        raise ValueError(
            f"layer-smooth: {type(model).__name__} has no module with layer_parameters() "
            "(the regulariser is for the Ruseckas ODE networks, e.g. ruseckas_conv_mnist)"
        )
    return torch.stack(terms).sum()


class LayerSmoothHook(TrainHook):
    """Adds λ/2 Σ_l (‖Δb̃‖² + ‖ΔW̃‖²) (Eq. 113) to every training loss."""

    name = "layer-smooth"

    def __init__(self, lam: float = 1.0) -> None:
        if lam < 0:
            raise ValueError(f"layer-smooth: lambda must be non-negative, got {lam}")
        self.lam = lam

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.lam == 0:
            return None
        return model_layer_smoothness(model, self.lam)


@register_hook("layer-smooth")
def _layer_smooth(value: float | None) -> TrainHook:
    return LayerSmoothHook(1.0 if value is None else value)
