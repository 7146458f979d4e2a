"""Stability tools for the Ruthotto-Haber dynamics: Jacobian spectra, step-size bounds, a forward probe.

* :func:`layer_jacobian_spectrum` — eigenvalues of the Jacobian of F_sym (Eq. 6) at a point, or of the
  Hamiltonian system's vector field (Y, Z) ↦ (F_sym(θ¹, Z), −F_sym(θ², Y)) of one Verlet step, by
  autograd. Theorem 1: with monotone σ and nothing non-diagonal between K and σ (``norm='none'`` or an
  eval-mode BatchNorm), J = −Kᵀ diag(σ') K is symmetric negative semi-definite; with σ = identity and
  no bias the Hamiltonian matrix [[0, −K₁ᵀK₁], [K₂ᵀK₂, 0]] has purely imaginary eigenvalues (docs/design.md §5).
* :func:`parabolic_step_bound` — the forward-Euler bound of the paper, max_i |1 + h λ_i(J)| ≤ 1, made
  global: σ∘N is L-Lipschitz and monotone, so every secant Jacobian is −Kᵀ D K with 0 ≤ D ≤ L, with
  eigenvalues in [−L‖K‖₂², 0]; hence h ≤ 2 / (L ‖K‖₂²) makes Y ↦ Y + h F_sym(Y) non-expansive.
* :func:`forward_stability` — ‖Y(T) − Y_ε(T)‖ / ‖Y(0) − Y_ε(0)‖ for random perturbations of the input
  of a unit (or any module).

BatchNorm in training mode couples the samples of a batch: analyse in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.dynamics.integrators import HamiltonianUnit, PDEUnit
from pdenets.layers.symmetric import SymmetricLayer, conv_k, conv_kt

_LIPSCHITZ_ACT = {"relu": 1.0, "identity": 1.0, "tanh": 1.0, "leaky_relu": 1.0, "softplus": 1.0,
                  "sigmoid": 0.25, "hardtanh": 1.0}


def _jacobian(fn, y: torch.Tensor) -> torch.Tensor:
    n = y.numel()
    jac = torch.autograd.functional.jacobian(
        lambda v: fn(v.view_as(y)).reshape(-1), y.detach().reshape(-1), vectorize=True)
    return jac.reshape(n, n)


def jacobian_matrix(layer: nn.Module, y: torch.Tensor, step: int = 0) -> torch.Tensor:
    """The dense Jacobian at ``y`` (one sample, shape (C, H, W) or (1, C, H, W)).

    ``layer``: a :class:`SymmetricLayer` (Jacobian of F_sym), a :class:`HamiltonianUnit` (the vector field
    (Y, Z) ↦ (F_sym(θ¹_step, Z), −F_sym(θ²_step, Y)) on the split channels), or a unit with a single layer
    type (the F_sym of its step ``step``).
    """
    y = y.unsqueeze(0) if y.dim() == 3 else y
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"expected one sample of shape (C, H, W) or (1, C, H, W), got {tuple(y.shape)}")
    if isinstance(layer, HamiltonianUnit):
        f1, f2, half = layer.layers_y[step], layer.layers_z[step], layer.channels // 2

        def field(v: torch.Tensor) -> torch.Tensor:
            return torch.cat([f1(v[:, half:]), -f2(v[:, :half])], dim=1)

        return _jacobian(field, y)
    if isinstance(layer, PDEUnit):
        layer = layer.step_layers(step)[0]
    if not isinstance(layer, SymmetricLayer):
        raise TypeError(f"expected a SymmetricLayer or a PDE unit, got {type(layer).__name__}")
    return _jacobian(layer, y)


def layer_jacobian_spectrum(layer: nn.Module, y: torch.Tensor, step: int = 0) -> torch.Tensor:
    """Eigenvalues (complex, sorted by real part) of the Jacobian of F_sym / of the Hamiltonian system at ``y``.

    See :func:`jacobian_matrix` for what ``layer`` may be. Dense: meant for small feature maps.
    """
    ev = torch.linalg.eigvals(jacobian_matrix(layer, y, step))
    return ev[torch.argsort(ev.real)]


@torch.no_grad()
def operator_norm_sq(layer: SymmetricLayer, shape: tuple[int, int], iters: int = 500, tol: float = 1e-13) -> float:
    """‖K‖₂² = λ_max(KᵀK) on images of size ``shape`` (H, W), by power iteration."""
    w = layer.weight
    v = torch.randn(1, layer.channels, *shape, dtype=w.dtype, device=w.device)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        u = conv_kt(conv_k(v, w, layer.padding_mode), w, layer.padding_mode)
        new = float(torch.dot(u.reshape(-1), v.reshape(-1)))
        v = u / u.norm()
        if abs(new - lam) <= tol * abs(new):
            lam = new
            break
        lam = new
    return lam


def _norm_lipschitz(layer: SymmetricLayer) -> float:
    if layer.norm_name == "none":
        return 1.0
    if layer.norm_name == "batch" and not layer.norm.training:
        bn = layer.norm
        scale = bn.weight.abs() if bn.weight is not None else torch.ones_like(bn.running_var)
        return float((scale / torch.sqrt(bn.running_var + bn.eps)).max())
    raise ValueError("the step bound holds without normalisation or with eval-mode BatchNorm "
                     f"(got norm={layer.norm_name!r}, training={layer.norm.training})")


def parabolic_step_bound(layer: SymmetricLayer, shape: tuple[int, int]) -> float:
    """Largest h with Y ↦ Y + h F_sym(θ, Y) non-expansive for all Y on (H, W) images: 2 / (L ‖K‖₂²).

    This is the paper's condition max_i |1 + h λ_i(J)| ≤ 1 with the eigenvalues of every (secant)
    Jacobian bounded by the spectral radius L‖K‖₂² of −Kᵀ diag(σ'·scale) K.
    """
    lip = _LIPSCHITZ_ACT.get(layer.act_name, 1.0) * _norm_lipschitz(layer)
    return 2.0 / (lip * operator_norm_sq(layer, shape))


@torch.no_grad()
def forward_stability(
    module: nn.Module, y: torch.Tensor, eps: float = 1e-3, trials: int = 8, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ratios ‖Y(T) − Y_ε(T)‖_F / ‖Y(0) − Y_ε(0)‖_F for ``trials`` random perturbations of size ``eps``.

    ``module`` maps Y(0) to Y(T) (a PDE unit, a whole network, or any module); ``eps`` is the Frobenius
    norm of each perturbation relative to ‖Y(0)‖.
    """
    base = module(y)
    ratios = []
    for _ in range(trials):
        d = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        d *= eps * y.norm() / d.norm()
        ratios.append((module(y + d) - base).norm() / d.norm())
    return torch.stack(ratios)
