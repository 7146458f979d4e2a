"""The regulariser training hooks: thin :class:`~pdenets.hooks.TrainHook` classes over :mod:`pdenets.regularizers`.

Registered when this module is imported (``import pdenets`` does it):

* ``rh-tv[:α₁]`` — α₁ Σ φ_ε(θ_{j+1} − θ_j) over every ``layer_parameters()`` sequence, Ruthotto–Haber Eq. (11)
  first term, α₁ = 3e-4 and ε = 1e-3 by default (the paper's values; no −√ε, the constant does not matter);
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
    layer_sequences,
    model_layer_smoothness,
    smoothness,
)

__all__ = ["BOX_VALUE", "TV_ALPHA", "BoxHook", "CrossLayerHook", "LayerSmoothHook", "TVInTimeHook", "box_project"]

TV_ALPHA, BOX_VALUE = 3e-4, 1.0


def _zero_like_model(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else None)


class TVInTimeHook(TrainHook):
    """Adds α₁ Σ_seq Σ_j Σ_entries φ_ε(θ_{j+1} − θ_j) (Ruthotto–Haber Eq. (11)) to the training loss."""

    def __init__(self, alpha: float = TV_ALPHA, eps: float = TV_EPS) -> None:
        if alpha < 0 or eps <= 0:
            raise ValueError(f"rh-tv needs alpha >= 0 and eps > 0, got alpha={alpha}, eps={eps}")
        self.alpha, self.eps = alpha, eps

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.alpha:
            return None
        seqs = layer_sequences(model)
        return self.alpha * smoothness(seqs, "tv", self.eps) if seqs else _zero_like_model(model)


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
