"""Regularisers and constraints of Ruthotto & Haber (Eq. 11 and the supplement), as training hooks.

* ``rh-tv[:α₁]`` — smoothed total variation in time, the first term of Eq. (11) discretised as
  α₁ Σ_units Σ_j Σ_elements φ_ε(θ_{j+1} − θ_j), φ_ε(x) = sqrt(x² + ε) (a smoothed ℓ¹ norm),
  defaults α₁ = 3e-4, ε = 1e-3. θ_j is every parameter of step j's F_sym (K, the bias / normalisation
  shift and scale); in a Hamiltonian unit θ¹ (the Y-updates) and θ² (the Z-updates) are two separate
  sequences in time. Added to the loss of each training step.
* ``box[:value]`` — projection of every K onto the box |θ| ≤ value (default 1; DESIGN.md §5) after each
  optimizer step, which keeps δ_t = 1 stable ("we use the condition −1 ≤ θ₁ ≤ 1").

Weight decay (the second term of Eq. (11), 5e-4 in the paper) is the optimiser's job (recipe
``ruthotto2018-stl10``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.dynamics.integrators import PDEUnit
from pdenets.layers.symmetric import SymmetricLayer
from pdenets.train.hooks import TrainHook, register_hook

TV_ALPHA, TV_EPS, BOX_VALUE = 3e-4, 1e-3, 1.0


def time_sequences(model: nn.Module) -> list[list[SymmetricLayer]]:
    """The sequences θ_0, θ_1, ... of step layers in time, one per unit (two per Hamiltonian unit)."""
    seqs: list[list[SymmetricLayer]] = []
    for unit in model.modules():
        if isinstance(unit, PDEUnit):
            per_step = [unit.step_layers(j) for j in range(unit.steps)]
            for k in range(len(per_step[0])):
                seqs.append([layers[k] for layers in per_step])
    return seqs


def phi_eps(x: torch.Tensor, eps: float = TV_EPS) -> torch.Tensor:
    """φ_ε(x) = sqrt(x² + ε), elementwise."""
    return torch.sqrt(x * x + eps)


def tv_in_time(model: nn.Module, alpha: float = TV_ALPHA, eps: float = TV_EPS) -> torch.Tensor:
    """α Σ_j Σ_elements φ_ε(θ_{j+1} − θ_j) over every unit of ``model`` (0 if it has none or one step)."""
    total = None
    for seq in time_sequences(model):
        for a, b in zip(seq[:-1], seq[1:]):
            for pa, pb in zip(a.parameters(), b.parameters()):
                term = phi_eps(pb - pa, eps).sum()
                total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return alpha * total


@torch.no_grad()
def box_project(model: nn.Module, value: float = BOX_VALUE) -> None:
    """Clamp the weights of every K (``SymmetricLayer.weight``) to [−value, value], in place."""
    for m in model.modules():
        if isinstance(m, SymmetricLayer):
            m.weight.clamp_(-value, value)


class TVInTimeHook(TrainHook):
    """Adds :func:`tv_in_time` (α₁ = ``alpha``) to the training loss."""

    def __init__(self, alpha: float = TV_ALPHA, eps: float = TV_EPS) -> None:
        if alpha < 0 or eps <= 0:
            raise ValueError(f"rh-tv needs alpha >= 0 and eps > 0, got alpha={alpha}, eps={eps}")
        self.alpha, self.eps = alpha, eps

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return tv_in_time(model, self.alpha, self.eps) if self.alpha else None


class BoxHook(TrainHook):
    """Projects every K onto |θ| ≤ ``value`` after each optimizer step."""

    def __init__(self, value: float = BOX_VALUE) -> None:
        if not value > 0:
            raise ValueError(f"box value must be positive, got {value}")
        self.value = value

    def after_step(self, model: nn.Module, lr: float) -> None:
        box_project(model, self.value)


@register_hook("rh-tv")
def _make_tv(value: float | None) -> TrainHook:
    return TVInTimeHook(TV_ALPHA if value is None else value)


@register_hook("box")
def _make_box(value: float | None) -> TrainHook:
    return BoxHook(BOX_VALUE if value is None else value)
