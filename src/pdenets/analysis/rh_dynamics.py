"""Feature norms and energies of a Ruthotto–Haber network along its time steps (docs/design.md §14).

**Potential of a step layer.** With σ = Φ' (Φ an antiderivative of the activation) and no normalisation,
F_sym(θ, Y) = −Kᵀσ(KY + b) (Eq. 6) is the negative gradient of P_θ(Y) = Σ_{channels, pixels} Φ(KY + b); with an
eval-mode BatchNorm, a per-channel affine map u ↦ a u + c, P_θ(Y) = Σ Φ(a·KY + c)/a. Instance norm couples the
pixels (docs/design.md §5): F_sym is then not a gradient and no energy is defined (None).

**Energies** (evaluated with θ_j for the state after step j, so for θ constant in time they are the conserved
quantities of the continuous flow, kept up to O(h^p) — without drift — by the symplectic schemes):

* Hamiltonian unit, ∂ₜY = F(θ¹, Z) = −∇P_θ¹(Z), ∂ₜZ = −F(θ², Y) = ∇P_θ²(Y): H(Y, Z) = −P_θ¹(Z) − P_θ²(Y);
* second-order unit, ∂ₜ²Y = F(θ, Y) = −∇P_θ(Y): E = ½‖∂ₜY‖² + P_θ(Y), with ∂ₜY from the scheme's state
  (the velocity, or (Y_j − Y_{j−1})/h for leapfrog);
* parabolic unit, ∂ₜY = −∇P_θ(Y): P_θ(Y), non-increasing along the flow (a gradient flow).

:func:`network_dynamics` runs a network step by step and records, per unit and step, the mean per-example
feature norm ‖Y_j‖ (‖(Y_j, Z_j)‖ for a Hamiltonian unit) and the energy; :func:`plot_dynamics` draws both
against the global time step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdenets.dynamics.integrators import PDEUnit
from pdenets.layers.symmetric import SymmetricLayer, conv_k
from pdenets.utils.plotting import save_figure, subplots

__all__ = ["antiderivative", "layer_potential", "network_dynamics", "plot_dynamics", "unit_dynamics"]


def antiderivative(act: str, u: torch.Tensor) -> torch.Tensor | None:
    """Φ(u) with Φ' = σ and Φ(0) = 0 for the monotone activations of :mod:`pdenets.layers.symmetric` (None for
    softplus, whose antiderivative is a dilogarithm)."""
    if act == "relu":
        return 0.5 * F.relu(u).square()
    if act == "identity":
        return 0.5 * u.square()
    if act == "tanh":
        return torch.log(torch.cosh(u))
    if act == "sigmoid":
        return F.softplus(u) - math.log(2.0)
    if act == "leaky_relu":
        return 0.5 * torch.where(u > 0, u, 0.01 * u) * u
    if act == "hardtanh":
        return torch.where(u.abs() <= 1, 0.5 * u.square(), u.abs() - 0.5)
    return None


def layer_potential(layer: SymmetricLayer, y: torch.Tensor) -> torch.Tensor | None:
    """P_θ(Y) per example (shape (N,)) with F_sym(θ, Y) = −∇P_θ(Y), or None where F_sym is not a gradient
    (instance norm, BatchNorm in training mode, an activation without a closed-form Φ)."""
    x = conv_k(y, layer.weight, layer.padding_mode)
    if layer.bias is not None:
        x = x + layer.bias.view(1, -1, 1, 1)
    a = None
    if isinstance(layer.norm, nn.modules.batchnorm._BatchNorm):
        bn = layer.norm
        if bn.training or bn.running_mean is None:
            return None
        a = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps)
        c = (bn.bias if bn.bias is not None else torch.zeros_like(a)) - a * bn.running_mean
        if bool((a == 0).any()):
            return None
        x = a.view(1, -1, 1, 1) * x + c.view(1, -1, 1, 1)
    elif not isinstance(layer.norm, nn.Identity):
        return None
    phi = antiderivative(layer.act_name, x)
    if phi is None:
        return None
    if a is not None:
        phi = phi / a.view(1, -1, 1, 1)
    return phi.flatten(1).sum(1)


def _energy(unit: PDEUnit, j: int, state: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The unit's energy (module docstring) for the state after step j, with θ_j."""
    layers = unit.step_layers(j)
    if unit.kind == "hamiltonian":
        y, z = state
        p1, p2 = layer_potential(layers[0], z), layer_potential(layers[1], y)
        return None if p1 is None or p2 is None else -(p1 + p2)
    if unit.kind == "second_order":
        if unit.scheme_name.startswith("leapfrog"):
            y, v = state[1], (state[1] - state[0]) / unit.h
        else:
            y, v = state
        p = layer_potential(layers[0], y)
        return None if p is None else 0.5 * v.flatten(1).square().sum(1) + p
    p = layer_potential(layers[0], state[0])
    return p


@torch.no_grad()
def unit_dynamics(unit: PDEUnit, x: torch.Tensor) -> dict[str, Any]:
    """Feature norms and energies of one unit at t_0 … t_N (means over the batch); returns (dict, its output)."""
    state = unit.init_state(x)
    norms = [float(x.flatten(1).norm(dim=1).mean())]
    e0 = _energy(unit, 0, state)
    energies = [None if e0 is None else float(e0.mean())]
    for j in range(unit.steps):
        state = unit.step(j, state)
        out = unit.output(state)
        norms.append(float(out.flatten(1).norm(dim=1).mean()))
        e = _energy(unit, j, state)
        energies.append(None if e is None else float(e.mean()))
    return dict(norms=norms, energies=energies, h=unit.h, scheme=unit.scheme_name), out


@torch.no_grad()
def network_dynamics(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Run an RH network (eval mode) on ``x`` and record :func:`unit_dynamics` of each unit, in order."""
    model.eval()
    records: list[dict[str, Any]] = []
    y = model.stem(x)
    for i, stage in enumerate(model.stages):
        for name, module in stage.named_children():
            if isinstance(module, PDEUnit):
                rec, y = unit_dynamics(module, y)
                records.append(dict(rec, unit=f"stages.{i}.{name}", dynamics=module.dynamics))
            else:
                y = module(y)
    return records


def plot_dynamics(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Feature norm (left) and energy relative to its start, (E_j − E_0)/|E_0| (right), against the time
    step, one line per unit (units one after another on the step axis); the energy panel says where it is
    undefined (instance norm)."""
    fig, (a1, a2) = subplots(1, 2, figsize=(11, 3.8))
    start, any_energy = 0, False
    for r in records:
        steps = list(range(start, start + len(r["norms"])))
        label = f"{r['unit']} ({r['scheme']}, h={r['h']:g})"
        a1.plot(steps, r["norms"], "o-", ms=3, label=label)
        if all(e is not None for e in r["energies"]):
            e0 = r["energies"][0]
            a2.plot(steps, [(e - e0) / max(abs(e0), 1e-300) for e in r["energies"]], "o-", ms=3, label=label)
            any_energy = True
        start += len(r["norms"]) - 1
    a1.set_xlabel("time step (all units in order)"), a1.set_ylabel("mean feature norm ‖Y_j‖")
    a1.set_yscale("log"), a1.grid(alpha=0.3), a1.legend(fontsize=7)
    a2.set_xlabel("time step (all units in order)"), a2.set_ylabel("(E_j − E_0) / |E_0|"), a2.grid(alpha=0.3)
    if any_energy:
        a2.legend(fontsize=7)
    else:
        a2.text(0.5, 0.5, "no energy: F_sym is not a gradient\nwith instance norm (use norm='none'\nor an eval-mode "
                "BatchNorm)", ha="center", va="center", transform=a2.transAxes)
    a2.set_title("energy (Hamiltonian H, second-order ½‖Y′‖² + P, parabolic P)", fontsize=9)
    a1.set_title("feature norm", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=120)
