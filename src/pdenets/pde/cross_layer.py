"""Correlated weights across layers: penalise differences between consecutive blocks' weights.

In a PDE the coefficients are constant or vary slowly in time, while a ResNet draws each layer's weights
independently (Liu-Shao-Bai §3, third bullet: "introducing a term in the loss function that penalizes
large variations between layers"). Two discretisations of a time-smoothness penalty on the weights θ(t):

* ``cross-layer`` — Ruseckas Eq. (82) (the H¹ seminorm of Eq. (81) with Δt = 1):
  R = (λ/2) Σ_l ‖θ^(l+1) - θ^(l)‖²;
* ``cross-layer-tv`` — Ruthotto-Haber Eq. (11), first term (smoothed total variation in time, favouring
  piecewise-constant dynamics): R = λ Σ_l Σ_entries (φ_ε(θ^(l+1) - θ^(l)) - √ε), φ_ε(x) = √(x² + ε),
  ε = 1e-3 (their value; the constant √ε only makes R = 0 for equal layers).

"Consecutive blocks" are consecutive children of the same class inside an ``nn.Sequential`` or
``nn.ModuleList`` (a stage of a QL-ConvNet, a Ruthotto-Haber or Ruseckas stack, ...). Their parameters
are paired by name, and a pair is penalised when the shapes match: for a QL stage that is every weight of
blocks 2..L and, for the downsampling block 1, the shared derivative kernels (always m×1×3×3). By default
only weights with ≥ 2 dimensions (conv/linear kernels) are used, not BatchNorm affine parameters.
Usable from the trainer with ``--hook cross-layer:1e-4`` or ``--hook cross-layer-tv:3e-4``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pdenets.errors import UsageError
from pdenets.train.hooks import TrainHook, register_hook

TV_EPS = 1e-3


@dataclass
class WeightPair:
    name: str  # e.g. 'layer3.1.conv_a.weight -> layer3.2.conv_a.weight'
    first: nn.Parameter
    second: nn.Parameter


def consecutive_weight_pairs(model: nn.Module, weights_only: bool = True) -> list[WeightPair]:
    """Pairs of same-named, same-shaped parameters of consecutive same-class blocks (see module docstring)."""
    pairs = []
    for cname, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(container.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:]):
            if type(c1) is not type(c2):
                continue
            second = dict(c2.named_parameters())
            for pname, p in c1.named_parameters():
                q = second.get(pname)
                if q is None or q.shape != p.shape or (weights_only and p.ndim < 2):
                    continue
                prefix = f"{cname}." if cname else ""
                pairs.append(WeightPair(f"{prefix}{n1}.{pname} -> {prefix}{n2}.{pname}", p, q))
    return pairs


def cross_layer_penalty(pairs: list[WeightPair], kind: str = "l2", eps: float = TV_EPS) -> torch.Tensor:
    """Σ over pairs of ½‖Δ‖² (``'l2'``) or Σ_entries √(Δ² + ε) - √ε (``'tv'``), without the factor λ."""
    if kind not in ("l2", "tv"):
        raise ValueError(f"kind must be 'l2' or 'tv', got {kind!r}")
    if not pairs:
        return torch.zeros(())
    total = pairs[0].first.new_zeros(())
    for pr in pairs:
        d = pr.second - pr.first
        if kind == "l2":
            total = total + 0.5 * d.pow(2).sum()
        else:
            total = total + (torch.sqrt(d * d + eps) - eps**0.5).sum()
    return total


class CrossLayerHook(TrainHook):
    """Training hook adding λ·R (see module docstring) to the loss. Fails clearly on a model with no pairs."""

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
        return self.strength * cross_layer_penalty(self.pairs(model), self.kind, self.eps)

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


@register_hook("cross-layer")
def _cross_layer(value: float | None) -> CrossLayerHook:
    return CrossLayerHook(1e-4 if value is None else value, "l2")


@register_hook("cross-layer-tv")
def _cross_layer_tv(value: float | None) -> CrossLayerHook:
    return CrossLayerHook(3e-4 if value is None else value, "tv")
