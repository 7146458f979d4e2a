"""The regulariser training hooks: thin :class:`~pdenets.hooks.TrainHook` classes over :mod:`pdenets.regularizers`.

Registered when this module is imported (``import pdenets`` does it):

* ``rh-tv[:α₁]`` — α₁ h Σ_j [φ_ε((θ_{j+1} − θ_j)/h) − √ε] over every ``layer_parameters()`` sequence, with each
  unit's time step h: Ruthotto–Haber Eq. (11), first term, α₁∫φ_ε(∂ₜθ)dt by the rectangle rule, zero for
  θ constant in time (the −√ε per entry leaves the gradient alone; at h = 1 it is the paper's Σ φ_ε(Δθ) − √ε),
  α₁ = 3e-4 and ε = 1e-3 by default (the paper's values; :func:`~pdenets.regularizers.tv_in_time`);
* ``box[:value]`` — after each optimizer step, every K (``SymmetricLayer.weight``) projected onto
  |θ| ≤ value (default 1, docs/design.md §5), which keeps the step δ_t = 1 stable;
* ``layer-smooth[:λ]`` — λ/2 Σ_l (‖Δb̃‖² + ‖ΔW̃‖²), Ruseckas Eq. (82)/(113), λ = 1 by default (circles);
* ``cross-layer[:λ]`` / ``cross-layer-tv[:λ]`` — λ·R over the consecutive blocks' weights
  (:func:`~pdenets.regularizers.consecutive_weight_pairs`), R the l2 (Ruseckas Eq. (82)) or the zero-based
  smoothed TV (Ruthotto–Haber Eq. (11)) variation; λ = 1e-4 / 3e-4 by default.

Weight decay (the second term of Ruthotto–Haber Eq. (11)) is the optimiser's job.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.errors import UsageError
from pdenets.hooks import TrainHook, register_hook
from pdenets.layers.symmetric import SymmetricLayer
from pdenets.regularizers import (
    TV_EPS,
    WeightPair,
    consecutive_weight_pairs,
    model_layer_smoothness,
    smoothness,
    tv_in_time,
)

__all__ = ["BOX_VALUE", "TV_ALPHA", "BoxHook", "CrossLayerHook", "LayerSmoothHook", "TVInTimeHook", "box_project"]

TV_ALPHA, BOX_VALUE = 3e-4, 1.0


class TVInTimeHook(TrainHook):
    """Adds α₁ Σ_seq h Σ_j Σ_entries [φ_ε((θ_{j+1} − θ_j)/h) − √ε] (Ruthotto–Haber Eq. (11), the TV of θ(t) in
    time; h each unit's time step) to the training loss (:func:`~pdenets.regularizers.tv_in_time`)."""

    def __init__(self, alpha: float = TV_ALPHA, eps: float = TV_EPS) -> None:
        if alpha < 0 or eps <= 0:
            raise ValueError(f"rh-tv needs alpha >= 0 and eps > 0, got alpha={alpha}, eps={eps}")
        self.alpha, self.eps = alpha, eps

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.alpha:
            return None
        return self.alpha * tv_in_time(model, self.eps)


@torch.no_grad()
def box_project(model: nn.Module, value: float = BOX_VALUE) -> None:
    """Clamp the weights of every K (``SymmetricLayer.weight``) to [−value, value], in place."""
    for m in model.modules():
        if isinstance(m, SymmetricLayer):
            m.weight.clamp_(-value, value)


class BoxHook(TrainHook):
    """Projects every K onto |θ| ≤ ``value`` after each optimizer step."""

    def __init__(self, value: float = BOX_VALUE) -> None:
        if not value > 0:
            raise ValueError(f"box value must be positive, got {value}")
        self.value = value

    def after_step(self, model: nn.Module, lr: float) -> None:
        box_project(model, self.value)


class LayerSmoothHook(TrainHook):
    """Adds λ/2 Σ_l (‖Δb̃‖² + ‖ΔW̃‖²) (Ruseckas Eq. (113)) to every training loss."""

    name = "layer-smooth"

    def __init__(self, lam: float = 1.0) -> None:
        if lam < 0:
            raise ValueError(f"layer-smooth: lambda must be non-negative, got {lam}")
        self.lam = lam

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return model_layer_smoothness(model, self.lam) if self.lam else None


class CrossLayerHook(TrainHook):
    """Adds λ·R over the consecutive blocks' weight pairs; fails clearly on a model with no pairs."""

    def __init__(self, strength: float, kind: str = "l2", eps: float = TV_EPS, weights_only: bool = True) -> None:
        if strength < 0:
            raise ValueError(f"cross-layer strength must be non-negative, got {strength}")
        self.strength, self.kind, self.eps, self.weights_only = strength, kind, eps, weights_only
        self._cache: tuple[int, list[WeightPair]] | None = None

    def pairs(self, model: nn.Module) -> list[WeightPair]:
        if self._cache is None or self._cache[0] != id(model):
            pairs = consecutive_weight_pairs(model, self.weights_only)
            if not pairs:
                raise UsageError(
                    f"cross-layer hook: {type(model).__name__} has no consecutive blocks with matching weight "
                    "shapes (it needs nn.Sequential/nn.ModuleList stages of at least two same-class blocks)"
                )
            self._cache = (id(model), pairs)
        return self._cache[1]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        seqs = [pr.sequence() for pr in self.pairs(model)]
        return self.strength * smoothness(seqs, self.kind, self.eps, zero_at_zero=True)

    def describe(self, model: nn.Module) -> str:
        pairs = self.pairs(model)
        n = sum(p.first.numel() for p in pairs)
        return f"{self.name or 'cross-layer'} ({self.kind}, λ={self.strength:g}): {len(pairs)} pairs, {n:,} entries"

    def state_dict(self) -> dict:
        return {"strength": self.strength, "kind": self.kind, "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        self.strength = state.get("strength", self.strength)
        self.kind = state.get("kind", self.kind)
        self.eps = state.get("eps", self.eps)


@register_hook("rh-tv")
def _make_tv(value: float | None) -> TrainHook:
    return TVInTimeHook(TV_ALPHA if value is None else value)


@register_hook("box")
def _make_box(value: float | None) -> TrainHook:
    return BoxHook(BOX_VALUE if value is None else value)


@register_hook("layer-smooth")
def _make_layer_smooth(value: float | None) -> TrainHook:
    return LayerSmoothHook(1.0 if value is None else value)


@register_hook("cross-layer")
def _make_cross_layer(value: float | None) -> TrainHook:
    return CrossLayerHook(1e-4 if value is None else value, "l2")


@register_hook("cross-layer-tv")
def _make_cross_layer_tv(value: float | None) -> TrainHook:
    return CrossLayerHook(3e-4 if value is None else value, "tv")
