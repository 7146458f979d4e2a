"""Smoothness of the parameters across layers / time steps: the one home of the maths (docs/design.md §7).

A network read as a discretised ODE/PDE in depth has parameters θ⁽⁰⁾, θ⁽¹⁾, …, θ⁽ᴸ⁻¹⁾, one per layer or time
step (layer index l = t/Δt). Two penalties on such a sequence, without the strength λ:

* ``'l2'`` — R = ½ Σ_l ‖θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾‖², Ruseckas Eq. (82)/(113): the discretised H¹ seminorm
  ½∫‖dθ/dt‖² dt of Eq. (81) with the 1/Δt absorbed into λ;
* ``'tv'`` — R = Σ_l Σ_entries φ_ε(θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾), φ_ε(x) = √(x² + ε), the smoothed total variation in
  time of Ruthotto–Haber Eq. (11) (first term; ε = 1e-3 there). It favours piecewise-constant dynamics.
  With ``zero_at_zero=True`` each entry costs φ_ε(x) − √ε, so equal layers cost exactly 0 (the constant
  does not change the gradient). With a time step ``h`` it is the quadrature h Σ_l [φ_ε((θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾)/h) − √ε]
  of α₁∫₀ᵀ φ_ε(∂ₜθ) dt, which tends to the integral as h → 0 for smooth θ(t) and is the sum above at h = 1
  (:func:`tv_in_time`, the ``rh-tv`` hook; docs/design.md §14).

The families supply the sequences; this module only walks modules and does arithmetic (it imports torch
alone, so every floor of the package may use it):

* a module with a ``layer_parameters()`` method returns a sequence of θ-sequences, each either a tensor
  stacked over layers (first dimension L) or a list of per-layer tensors. The Ruseckas ODE stacks return
  (W̃, b̃) stacked over layers (for the conv net W̃ is the kernel κ̃); a Ruthotto–Haber unit returns, for
  every parameter of its step layers (K, bias, normalisation), the list over time steps θ_0, …, θ_{N−1}
  (θ¹ and θ² separately in a Hamiltonian unit). :func:`layer_sequences` gathers them over a model;
* consecutive blocks of a stage (:func:`consecutive_weight_pairs`): two same-class children of an
  ``nn.Sequential``/``nn.ModuleList``, their same-named, same-shaped parameters forming sequences of
  length 2 — the "penalise large variations between layers" of Liu–Shao–Bai §3 for the QL-ConvNets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = [
    "KINDS", "TV_EPS", "WeightPair", "consecutive_weight_pairs", "differences", "l2_variation", "layer_sequences",
    "layer_smoothness", "model_layer_smoothness", "phi_eps", "smoothness", "tv_in_time", "tv_variation",
]

TV_EPS = 1e-3  # ε of φ_ε, Ruthotto-Haber's value
KINDS = ("l2", "tv")

ThetaSequence = torch.Tensor | Sequence[torch.Tensor]  # stacked over layers (dim 0), or one tensor per layer


def phi_eps(x: torch.Tensor, eps: float = TV_EPS) -> torch.Tensor:
    """φ_ε(x) = √(x² + ε), elementwise: a smoothed |x| (Ruthotto–Haber Eq. (11))."""
    return torch.sqrt(x * x + eps)


def differences(seq: ThetaSequence) -> list[torch.Tensor]:
    """The consecutive differences θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾ (one stacked tensor for a stacked sequence)."""
    if isinstance(seq, torch.Tensor):
        return [seq[1:] - seq[:-1]] if seq.shape[0] > 1 else []
    return [b - a for a, b in zip(seq[:-1], seq[1:])]


def l2_variation(seq: ThetaSequence) -> torch.Tensor | None:
    """½ Σ_l ‖θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾‖² (Ruseckas Eq. (82)/(113) without λ); ``None`` for fewer than two layers."""
    terms = [d.square().sum() for d in differences(seq)]
    return 0.5 * torch.stack(terms).sum() if terms else None


def tv_variation(seq: ThetaSequence, eps: float = TV_EPS, zero_at_zero: bool = False,
                 h: float = 1.0) -> torch.Tensor | None:
    """h Σ_l Σ_entries [φ_ε((θ⁽ˡ⁺¹⁾ − θ⁽ˡ⁾)/h) − √ε] (the −√ε with ``zero_at_zero``): Ruthotto–Haber Eq. (11), first
    term, without α₁, by the rectangle rule with time step ``h`` (h = 1: Σ φ_ε(Δθ), the paper's δ_t = 1)."""
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not h > 0:
        raise ValueError(f"time step h must be positive, got {h}")
    shift = eps**0.5 if zero_at_zero else 0.0
    terms = [(phi_eps(d if h == 1.0 else d / h, eps) - shift).sum() for d in differences(seq)]
    if not terms:
        return None
    total = torch.stack(terms).sum()
    return total if h == 1.0 else h * total


def smoothness(sequences: Iterable[ThetaSequence], kind: str = "l2", eps: float = TV_EPS,
               zero_at_zero: bool = False) -> torch.Tensor:
    """The ``kind`` ('l2' or 'tv') variation summed over ``sequences`` (0 when no sequence has two layers)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    total, like = None, None
    for seq in sequences:
        if like is None and len(seq):
            like = seq if isinstance(seq, torch.Tensor) else seq[0]
        term = l2_variation(seq) if kind == "l2" else tv_variation(seq, eps, zero_at_zero)
        if term is not None:
            total = term if total is None else total + term
    if total is None:
        return like.new_zeros(()) if like is not None else torch.zeros(())
    return total


def tv_in_time(model: nn.Module, eps: float = TV_EPS) -> torch.Tensor:
    """Σ over every module with ``layer_parameters()`` of :func:`tv_variation` (zero at zero) of its sequences, with
    the module's time step h (``time_step()``; 1 without one): the discretised ∫₀ᵀ φ_ε(∂ₜθ) dt − √ε T of
    Ruthotto–Haber Eq. (11) per entry, for each unit's own h (0 when no module has two steps)."""
    total, like = None, None
    for m in model.modules():
        if not hasattr(m, "layer_parameters"):
            continue
        h = m.time_step() if hasattr(m, "time_step") else 1.0
        h = float(h.detach()) if isinstance(h, torch.Tensor) else float(h)
        for seq in m.layer_parameters():
            like = like if like is not None else (seq if isinstance(seq, torch.Tensor) else seq[0])
            term = tv_variation(seq, eps, zero_at_zero=True, h=h)
            if term is not None:
                total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None) if like is None else like
        return p.new_zeros(()) if p is not None else torch.zeros(())
    return total


def layer_sequences(model: nn.Module) -> list[ThetaSequence]:
    """Every θ-sequence supplied by a ``layer_parameters()`` method of ``model`` or of one of its submodules."""
    return [seq for m in model.modules() if hasattr(m, "layer_parameters") for seq in m.layer_parameters()]


def layer_smoothness(weight: torch.Tensor, bias: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """λ/2 Σ_l (‖b_l − b_{l−1}‖² + ‖W_l − W_{l−1}‖²) of Ruseckas Eq. (113); ``weight``/``bias`` stacked over l."""
    if weight.shape[0] != bias.shape[0]:
        raise ValueError(f"weight and bias must have the same number of layers, got {weight.shape[0]}, {bias.shape[0]}")
    return lam * smoothness((weight, bias), "l2")


def model_layer_smoothness(model: nn.Module, lam: float = 1.0) -> torch.Tensor:
    """Eq. (113)'s penalty λ·R_l2 over every :func:`layer_sequences` of ``model``; ValueError if it has none."""
    seqs = layer_sequences(model)
    if not seqs:
        raise ValueError(
            f"layer-smooth: {type(model).__name__} has no module with layer_parameters() "
            "(the regulariser is for the Ruseckas ODE networks, e.g. ruseckas_conv_mnist, and the Ruthotto-Haber units)"
        )
    return lam * smoothness(seqs, "l2")


@dataclass
class WeightPair:
    """Same-named parameters of two consecutive blocks, e.g. ``'layer3.1.conv_a.weight -> layer3.2.conv_a.weight'``."""

    name: str
    first: nn.Parameter
    second: nn.Parameter

    def sequence(self) -> list[torch.Tensor]:
        return [self.first, self.second]


def consecutive_weight_pairs(model: nn.Module, weights_only: bool = True) -> list[WeightPair]:
    """Pairs of same-named, same-shaped parameters of consecutive same-class children of every
    ``nn.Sequential``/``nn.ModuleList`` of ``model`` (by default only tensors with ≥ 2 dimensions: conv and
    linear kernels, not BatchNorm's affine parameters). For a QL stage that is every weight of blocks 2..L
    and, with the downsampling block 1, its shared m×1×3×3 derivative kernels."""
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
