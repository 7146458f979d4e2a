"""Time integrators of the Ruthotto-Haber dynamics as residual units (one :class:`SymmetricLayer` per step).

Every unit holds ``steps`` time steps of size ``h`` with per-step weights θ_j (θ(t) piecewise constant on
[t_j, t_{j+1}), t_j = j h). A unit is written as a map on a *state* tuple so that one machinery
(:mod:`pdenets.dynamics.reversible`) can run any reversible scheme backwards:

* :class:`ParabolicUnit` — Eq. (7) by forward Euler: Y_{j+1} = Y_j + h F_sym(θ_j, Y_j). State (Y,).
  Not reversible (time reversal of a parabolic PDE is ill-posed).
* :class:`HamiltonianUnit` — the paper's symplectic Verlet scheme
  Y_{j+1} = Y_j + h F_sym(θ¹_j, Z_j),  Z_{j+1} = Z_j − h F_sym(θ²_j, Y_{j+1}),
  run backwards exactly by Z_j = Z_{j+1} + h F_sym(θ²_j, Y_{j+1}),  Y_j = Y_{j+1} − h F_sym(θ¹_j, Z_j).
  **Channel split**: the unit's C input channels (C even) are split in two halves, Y = channels
  [0, C/2) and Z = channels [C/2, C); the output is cat(Y_N, Z_N) along channels. Each F_sym acts on C/2
  channels, so a Hamiltonian step has 2·(C/2)²·9 = 4.5 C² conv weights (half of a parabolic step's 9 C²).
* :class:`SecondOrderUnit` — Eqs. (8)-(9) by leapfrog:
  Y_{j+1} = 2Y_j − Y_{j−1} + h² F_sym(θ_j, Y_j) with Y_{−1} = Y_0 (zero initial velocity);
  backwards: Y_{j−1} = 2Y_j − Y_{j+1} + h² F_sym(θ_j, Y_j). State (Y_{j−1}, Y_j); output Y_N.

``reversible=True`` (hyperbolic units only) trains with the memory-flat autograd of
:mod:`pdenets.dynamics.reversible`: only the final state is kept and earlier states are recomputed
backwards in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pdenets.layers.symmetric import SymmetricLayer

State = tuple[torch.Tensor, ...]


class PDEUnit(nn.Module):
    """Base class: a residual unit integrating a PDE-motivated dynamic over ``steps`` steps of size ``h``.

    Subclasses define :meth:`init_state`, :meth:`step`, :meth:`output`, and for reversible schemes
    :meth:`inverse_step` and :meth:`input_from_state`.
    """

    dynamics: str = ""
    is_reversible_scheme: bool = False

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if not h > 0:
            raise ValueError(f"time step h must be positive, got {h}")
        if reversible and not self.is_reversible_scheme:
            raise ValueError(f"{type(self).__name__} is not reversible; reversible=True needs a hyperbolic unit")
        self.channels, self.steps, self.h, self.reversible = channels, steps, float(h), reversible

    # ---- the scheme ------------------------------------------------------------------------------
    def init_state(self, x: torch.Tensor) -> State:
        raise NotImplementedError

    def step(self, j: int, state: State) -> State:
        raise NotImplementedError

    def inverse_step(self, j: int, state: State) -> State:
        raise NotImplementedError(f"{type(self).__name__} cannot be run backwards in time")

    def output(self, state: State) -> torch.Tensor:
        raise NotImplementedError

    def input_from_state(self, state: State) -> torch.Tensor:
        raise NotImplementedError

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        """The layers holding θ_j (used by the regularisers and by shallow-to-deep refinement)."""
        raise NotImplementedError

    def layer_parameters(self) -> list[list[torch.Tensor]]:
        """θ_0, …, θ_{steps−1} in time for every parameter of the step layers (K, bias, normalisation), one list
        per parameter; θ¹ and θ² of a Hamiltonian unit are separate sequences. What the smoothness-in-time
        regularisers of :mod:`pdenets.regularizers` see (Ruthotto–Haber Eq. (11))."""
        per_step = [self.step_layers(j) for j in range(self.steps)]
        seqs: list[list[torch.Tensor]] = []
        for k in range(len(per_step[0])):
            in_time = [list(layers[k].parameters()) for layers in per_step]
            seqs.extend(list(theta) for theta in zip(*in_time))
        return seqs

    # ---- running it ------------------------------------------------------------------------------
    def integrate(self, x: torch.Tensor) -> State:
        """Final state of the plain (stored-activation) forward integration."""
        state = self.init_state(x)
        for j in range(self.steps):
            state = self.step(j, state)
        return state

    def reconstruct(self, state: State) -> torch.Tensor:
        """Run a final state backwards in time to the unit's input (reversible schemes only)."""
        for j in reversed(range(self.steps)):
            state = self.inverse_step(j, state)
        return self.input_from_state(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects {self.channels} channels, got shape {tuple(x.shape)}")
        if self.reversible and torch.is_grad_enabled():
            from pdenets.dynamics.reversible import reversible_forward

            return reversible_forward(self, x)
        return self.output(self.integrate(x))

    def extra_repr(self) -> str:
        return f"{self.channels}, steps={self.steps}, h={self.h:g}, reversible={self.reversible}"


def _layers(n: int, channels: int, layer_kwargs: dict[str, Any]) -> nn.ModuleList:
    return nn.ModuleList(SymmetricLayer(channels, **layer_kwargs) for _ in range(n))


class ParabolicUnit(PDEUnit):
    """Forward Euler on ∂ₜY = F_sym(θ(t), Y) (Eq. 7). Keyword arguments go to :class:`SymmetricLayer`."""

    dynamics = "parabolic"

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False, **layer_kwargs):
        super().__init__(channels, steps, h, reversible)
        self.layers = _layers(steps, channels, layer_kwargs)

    def init_state(self, x: torch.Tensor) -> State:
        return (x,)

    def step(self, j: int, state: State) -> State:
        (y,) = state
        return (y + self.h * self.layers[j](y),)

    def output(self, state: State) -> torch.Tensor:
        return state[0]

    def input_from_state(self, state: State) -> torch.Tensor:
        return state[0]

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers[j]]


class HamiltonianUnit(PDEUnit):
    """Symplectic Verlet on ∂ₜY = F_sym(θ¹, Z), ∂ₜZ = −F_sym(θ², Y); channels split in halves (Y, Z).

    Keyword arguments go to :class:`SymmetricLayer` (each acting on ``channels // 2`` channels).
    """

    dynamics = "hamiltonian"
    is_reversible_scheme = True

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False, **layer_kwargs):
        if channels % 2:
            raise ValueError(f"the Hamiltonian unit splits channels into halves (Y, Z): channels must be even, "
                             f"got {channels}")
        super().__init__(channels, steps, h, reversible)
        half = channels // 2
        self.layers_y = _layers(steps, half, layer_kwargs)  # θ¹_j: updates Y from Z
        self.layers_z = _layers(steps, half, layer_kwargs)  # θ²_j: updates Z from Y

    def init_state(self, x: torch.Tensor) -> State:
        half = self.channels // 2
        return x[:, :half], x[:, half:]

    def step(self, j: int, state: State) -> State:
        y, z = state
        y = y + self.h * self.layers_y[j](z)
        z = z - self.h * self.layers_z[j](y)
        return y, z

    def inverse_step(self, j: int, state: State) -> State:
        y, z = state
        z = z + self.h * self.layers_z[j](y)
        y = y - self.h * self.layers_y[j](z)
        return y, z

    def output(self, state: State) -> torch.Tensor:
        return torch.cat(state, dim=1)

    def input_from_state(self, state: State) -> torch.Tensor:
        return torch.cat(state, dim=1)

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers_y[j], self.layers_z[j]]


class SecondOrderUnit(PDEUnit):
    """Leapfrog on ∂ₜ²Y = F_sym(θ(t), Y), Y(0) = Y₀, ∂ₜY(0) = 0 (Eqs. 8-9), with Y₋₁ = Y₀."""

    dynamics = "second_order"
    is_reversible_scheme = True

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False, **layer_kwargs):
        super().__init__(channels, steps, h, reversible)
        self.layers = _layers(steps, channels, layer_kwargs)

    def init_state(self, x: torch.Tensor) -> State:
        return x, x  # (Y_{-1}, Y_0) with Y_{-1} = Y_0

    def step(self, j: int, state: State) -> State:
        y_prev, y = state
        return y, 2 * y - y_prev + (self.h * self.h) * self.layers[j](y)

    def inverse_step(self, j: int, state: State) -> State:
        y, y_next = state
        return 2 * y - y_next + (self.h * self.h) * self.layers[j](y), y

    def output(self, state: State) -> torch.Tensor:
        return state[1]

    def input_from_state(self, state: State) -> torch.Tensor:
        return state[1]

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers[j]]


UNITS: dict[str, type[PDEUnit]] = {
    "parabolic": ParabolicUnit, "hamiltonian": HamiltonianUnit, "second_order": SecondOrderUnit,
}


def create_unit(dynamics: str, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                **layer_kwargs: Any) -> PDEUnit:
    """Build a unit by dynamics name: 'parabolic', 'hamiltonian' or 'second_order'."""
    if dynamics not in UNITS:
        raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(UNITS)}")
    return UNITS[dynamics](channels, steps=steps, h=h, reversible=reversible, **layer_kwargs)


@torch.no_grad()
def refine_in_time(unit: PDEUnit) -> PDEUnit:
    """Shallow-to-deep: a unit with twice the steps and h/2 whose θ is θ(t) linearly interpolated in time.

    θ_j sits at t_j = j h. New step k sits at k h/2: even k copy θ_{k/2}; odd k average θ_{(k−1)/2} and
    θ_{(k+1)/2} (the last one copies θ_{N−1}). The end time T = N h is unchanged, so the network's
    function changes only by the discretisation error (measured by ``pdenets rh deepen``).
    """
    kwargs = _layer_kwargs(unit)
    new = create_unit(unit.dynamics, unit.channels, steps=2 * unit.steps, h=unit.h / 2,
                      reversible=unit.reversible, **kwargs)
    new = new.to(next(unit.parameters()).device, next(unit.parameters()).dtype)
    n = unit.steps
    for k in range(2 * n):
        a, b = k // 2, min(k // 2 + 1, n - 1) if k % 2 else k // 2
        for dst, src_a, src_b in zip(new.step_layers(k), unit.step_layers(a), unit.step_layers(b)):
            sa, sb, sd = src_a.state_dict(), src_b.state_dict(), dst.state_dict()
            for key in sd:
                va, vb = sa[key], sb[key]
                sd[key] = 0.5 * (va + vb) if va.is_floating_point() else va.clone()
            dst.load_state_dict(sd)
    new.train(unit.training)
    return new


def _layer_kwargs(unit: PDEUnit) -> dict[str, Any]:
    layer = unit.step_layers(0)[0]
    return dict(hidden=None if layer.hidden == layer.channels else layer.hidden, norm=layer.norm_name,
                act=layer.act_name, bias=layer.bias is not None or getattr(layer.norm, "bias", None) is not None,
                padding_mode=layer.padding_mode, kernel_size=layer.weight.shape[-1])
