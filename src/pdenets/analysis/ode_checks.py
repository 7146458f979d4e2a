"""Ruseckas §2-§5 made checkable: the adjoint (backward) recursion, the conserved quantity a·F, the energy
balance and the closed-form solutions of dx/dt = w x + b − γ x³.

Conventions: states x are row vectors of shape (B, N) (or (B, C, H, W) for the conv net); the adjoint
a = ∂𝓛/∂x (Eq. A.5) has the shape of x; ``F`` maps x to dx/dt.

* :func:`adjoint_states` — Eq. (112), a⁽ˡ⁾ = a⁽ˡ⁺¹⁾ + a⁽ˡ⁺¹⁾W̃⁽ˡ⁾ − 3γ̃ x⁽ˡ⁾² a⁽ˡ⁺¹⁾, written out explicitly
  (no autograd) for a trained :class:`~pdenets.models.ruseckas.OdeNet` (also for μ ≠ 3, Eq. 63, for the
  two-step scheme of Eq. 111, and for the conv net with zero padding, Eq. 76 — the transposed conv).
* :func:`parameter_gradients` — Eqs. (A.8), (65), (66), (71): ∂𝓛/∂W̃⁽ˡ⁾ = a⁽ˡ⁺¹⁾ᵀ x⁽ˡ⁾, ∂𝓛/∂b̃⁽ˡ⁾ = a⁽ˡ⁺¹⁾,
  ∂𝓛/∂γ̃ = −Σ_l a⁽ˡ⁺¹⁾·φ(x⁽ˡ⁾).
* :func:`euler_trajectory`, :func:`euler_adjoint`, :func:`conserved_quantity` — Eq. (24)/(25): for
  t-independent parameters H(t) = a(t)·F(x(t), q) is constant; with forward Euler it is constant up to O(Δt).
* :func:`energy_terms`, :func:`layer_energy_terms` — Eqs. (103)-(108): dE/dt = P_w + P_b − P_γ with
  E = ½‖x‖², P_w = xᵀ w_sym x, P_b = bᵀx, P_γ = γ Σ x_i⁴ (γ Σ |x_i|^(μ+1) for Eq. 57).
* :func:`closed_form_diagonal`, :func:`closed_form_adjoint_diagonal` — Eqs. (85), (87), (89), (90).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pdenets.models.ruseckas import OdeConvNet, OdeNet, _OdeStack, odd_power, odd_power_derivative

Field = Callable[[torch.Tensor], torch.Tensor]


# ---- the discrete network: backward recursion (Eq. 112) and parameter gradients (Eq. A.8) -----------


def _linear_transpose(model: _OdeStack, layer: int, a: torch.Tensor) -> torch.Tensor:
    """a ↦ a W̃⁽ˡ⁾ (Σ_j a_j w_ji of Eq. 62), or the transposed convolution Σ_j a_{i−j} κ_j of Eq. (76)."""
    w = model.weight[layer]
    if isinstance(model, OdeNet):
        return a @ w
    if isinstance(model, OdeConvNet):
        if model.padding_mode != "zeros":
            raise NotImplementedError("the explicit conv adjoint (Eq. 76) is written for zero padding only")
        return F.conv_transpose2d(a, w, padding=w.shape[-1] // 2)
    raise TypeError(f"expected an OdeNet or OdeConvNet, got {type(model).__name__}")


@torch.no_grad()
def adjoint_states(model: _OdeStack, states: list[torch.Tensor], a_final: torch.Tensor) -> list[torch.Tensor]:
    """The backward recursion of Eq. (112), from a⁽ᴸ⁾ = ∂𝓛/∂x⁽ᴸ⁾ (Eq. 10) down to a⁽⁰⁾.

    Euler (Eq. 109):  a⁽ˡ⁾ = a⁽ˡ⁺¹⁾ + a⁽ˡ⁺¹⁾ W̃⁽ˡ⁾ − γ̃ φ'(x⁽ˡ⁾) ⊙ a⁽ˡ⁺¹⁾,   φ'(x) = 3x² (μ|x|^(μ−1), Eq. 63).
    Two-step (Eq. 111): a⁽ˡ⁾ = (1 − k_l) a⁽ˡ⁺¹⁾ + a⁽ˡ⁺¹⁾ W̃⁽ˡ⁾ − γ̃ φ'(x⁽ˡ⁾) ⊙ a⁽ˡ⁺¹⁾ + k_{l+1} a⁽ˡ⁺²⁾
    (k_0 = 0, no a⁽ᴸ⁺¹⁾). ``states`` are [x⁽⁰⁾ … x⁽ᴸ⁾] from ``model.forward_states``. Returns [a⁽⁰⁾ … a⁽ᴸ⁾].
    """
    depth = model.depth
    if model.scheme == "rk4" or model.learn_time:
        raise NotImplementedError("Eq. (112) is the adjoint of the Euler and two-step schemes with fixed T; use "
                                  "autograd for rk4 or a learnable final time")
    if len(states) != depth + 1:
        raise ValueError(f"expected {depth + 1} states x(0..L), got {len(states)}")
    adj: list[torch.Tensor | None] = [None] * (depth + 1)
    adj[depth] = a_final
    gamma = model.gamma
    for layer in range(depth - 1, -1, -1):
        a_next = adj[layer + 1]
        x = states[layer]
        a = a_next + _linear_transpose(model, layer, a_next) - gamma * odd_power_derivative(x, model.mu) * a_next
        if model.k is not None:
            a = a - model.layer_k(layer) * a_next
            if layer + 2 <= depth:
                a = a + model.layer_k(layer + 1) * adj[layer + 2]
        adj[layer] = a
    return adj  # type: ignore[return-value]


@torch.no_grad()
def parameter_gradients(
    model: OdeNet, states: list[torch.Tensor], adjoints: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """∂𝓛/∂q from the adjoint (Eq. A.8 with the Δt of Eq. 110 absorbed), summed over the batch:

    weight[l] = a⁽ˡ⁺¹⁾ᵀ x⁽ˡ⁾ (Eq. 65), bias[l] = a⁽ˡ⁺¹⁾ (Eq. 66), gamma = −Σ_l a⁽ˡ⁺¹⁾·φ(x⁽ˡ⁾) (Eq. 71),
    k[l−1] = a⁽ˡ⁺¹⁾·(x⁽ˡ⁻¹⁾ − x⁽ˡ⁾) for the two-step scheme.
    """
    if not isinstance(model, OdeNet):
        raise TypeError("parameter_gradients is written for the dense OdeNet")
    L = model.depth
    out = {
        "weight": torch.stack([adjoints[l + 1].T @ states[l] for l in range(L)]),
        "bias": torch.stack([adjoints[l + 1].sum(0) for l in range(L)]),
        "gamma": -sum((adjoints[l + 1] * odd_power(states[l], model.mu)).sum() for l in range(L)),
    }
    if model.k is not None:
        out["k"] = torch.stack([(adjoints[l + 1] * (states[l - 1] - states[l])).sum() for l in range(1, L)])
    return out


# ---- the continuous equation: Euler, its adjoint, the conserved quantity (Eqs. 24-25, A.1-A.4) -------


def ruseckas_field(
    w: torch.Tensor, b: torch.Tensor, gamma: float | torch.Tensor, mu: float = 3.0
) -> Field:
    """F(x) = w x + b − γ sign(x)|x|^μ (Eq. 60; Eq. 57 for μ ≠ 3), for row vectors x of shape (..., N)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return x @ w.T + b - gamma * odd_power(x, mu)

    return f


def euler_trajectory(f: Field, x0: torch.Tensor, t_end: float, steps: int) -> torch.Tensor:
    """Forward Euler (Eq. A.1): x_{l+1} = x_l + Δt F(x_l), Δt = t_end/steps. Returns (steps + 1, *x0.shape)."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    dt = t_end / steps
    xs = [x0]
    for _ in range(steps):
        xs.append(xs[-1] + dt * f(xs[-1]))
    return torch.stack(xs)


def euler_adjoint(f: Field, xs: torch.Tensor, a_end: torch.Tensor, t_end: float) -> torch.Tensor:
    """The discrete adjoint of :func:`euler_trajectory` (Eq. A.4): a_l = a_{l+1} + Δt a_{l+1} ∂F/∂x(x_l),
    i.e. the exact gradient of the loss w.r.t. x_l; a_L = ∂𝓛/∂x(T) (Eq. 10). Returns (steps + 1, ...)."""
    steps = xs.shape[0] - 1
    dt = t_end / steps
    adj = [a_end]
    for layer in range(steps - 1, -1, -1):
        _, vjp = torch.func.vjp(f, xs[layer])
        adj.append(adj[-1] + dt * vjp(adj[-1])[0])
    return torch.stack(adj[::-1])


def conserved_quantity(f: Field, xs: torch.Tensor, adjoints: torch.Tensor) -> torch.Tensor:
    """H(t_l) = a(t_l)·F(x(t_l), q) (Eqs. 21, 24): the Hamiltonian, constant in t when q is t-independent
    (Noether), so H(t) = ∂𝓛/∂x(T)·F(x(T), q) (Eq. 25). Returns (steps + 1, *batch) (summed over the
    last, feature dimension)."""
    return (adjoints * f(xs)).sum(-1)


# ---- energy balance (Eqs. 103-108) ---------------------------------------------------------------------


def energy_terms(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gamma: float | torch.Tensor, mu: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P_w, P_b, P_γ) of Eqs. (106)-(108) at states x (..., N): dE/dt = P_w + P_b − P_γ (Eqs. 104/105).

    P_w = xᵀ w_sym x — only the symmetric part of w (Eq. 96) does work; the antisymmetric "magnetic field"
    (Eq. 97) does none. P_b = bᵀ x. P_γ = γ Σ_i x_i φ(x_i) = γ Σ |x_i|^(μ+1) (γ Σ x_i⁴ for μ = 3).
    """
    w_sym = 0.5 * (w + w.T)
    p_w = ((x @ w_sym) * x).sum(-1)
    p_b = (x * b).sum(-1)
    p_g = gamma * (x * odd_power(x, mu)).sum(-1)
    return p_w, p_b, p_g


@torch.no_grad()
def layer_energy_terms(model: OdeNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eqs. (104)-(108) along a trained dense network, per layer l and sample, with the scaled parameters
    (W̃, b̃, γ̃ = Δt·(w, b, γ), Eq. 110), so P's are energy changes per layer. Returns tensors (L, B):
    ``P_w``, ``P_b``, ``P_gamma`` and ``dE`` = E⁽ˡ⁺¹⁾ − E⁽ˡ⁾ (= P_w + P_b − P_γ + O(Δt²) for Euler), and
    ``E`` (L + 1, B) with E = ½‖x‖² (Eq. 103)."""
    states = model.forward_states(x)
    terms = [energy_terms(states[l], model.weight[l], model.bias[l], model.gamma, model.mu) for l in range(model.depth)]
    energy = torch.stack([0.5 * s.square().sum(-1) for s in states])
    return {
        "P_w": torch.stack([t[0] for t in terms]),
        "P_b": torch.stack([t[1] for t in terms]),
        "P_gamma": torch.stack([t[2] for t in terms]),
        "E": energy,
        "dE": energy[1:] - energy[:-1],
    }


# ---- closed forms (Eqs. 85, 87, 89, 90) ----------------------------------------------------------------


def _growth(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(e^{2wt} − 1)/w, continued to 2t at w = 0 (the step from Eq. 85 to Eq. 87)."""
    w = torch.as_tensor(w, dtype=t.dtype)
    safe = torch.where(w == 0, torch.ones_like(w), w)
    return torch.where(w == 0, 2 * t, torch.expm1(2 * w * t) / safe)


def closed_form_diagonal(
    x0: torch.Tensor, w: float | torch.Tensor, gamma: float, t: float | torch.Tensor
) -> torch.Tensor:
    """Solution of dx/dt = w x − γ x³ (Eq. 84, diagonal w, b = 0), elementwise:

    x(t) = x(0) e^{wt} / sqrt(1 + (γ/w) x(0)² (e^{2wt} − 1))     (Eq. 85)
    x(t) = x(0) / sqrt(1 + 2γ x(0)² t)                           (Eq. 87, w = 0)
    """
    t = torch.as_tensor(t, dtype=x0.dtype)
    w = torch.as_tensor(w, dtype=x0.dtype)
    return x0 * torch.exp(w * t) / torch.sqrt(1 + gamma * x0.square() * _growth(w, t))


def closed_form_adjoint_diagonal(
    x0: torch.Tensor, w: float | torch.Tensor, gamma: float, t: float | torch.Tensor, t_end: float,
    a_end: torch.Tensor,
) -> torch.Tensor:
    """Adjoint of Eq. (84) (Eq. 89; Eq. 90 at w = 0), a(T) = a_end:

    a(t) = a(T) e^{w(T−t)} [(1 + (γ/w) x(0)² (e^{2wt} − 1)) / (1 + (γ/w) x(0)² (e^{2wT} − 1))]^{3/2}.
    """
    t = torch.as_tensor(t, dtype=x0.dtype)
    w = torch.as_tensor(w, dtype=x0.dtype)
    te = torch.as_tensor(t_end, dtype=x0.dtype)
    ratio = (1 + gamma * x0.square() * _growth(w, t)) / (1 + gamma * x0.square() * _growth(w, te))
    return a_end * torch.exp(w * (te - t)) * ratio.pow(1.5)
