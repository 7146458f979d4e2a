"""Time integrators of the Ruthotto-Haber dynamics as residual units (one :class:`SymmetricLayer` per step).

Every unit holds ``steps`` time steps of size ``h`` with per-step weights θ_j (θ(t) piecewise constant on
[t_j, t_{j+1}), t_j = j h). A unit is the *problem* (the vector field, :mod:`pdenets.dynamics.schemes`) and
holds a *scheme* (``scheme=``, a :class:`~pdenets.dynamics.schemes.Scheme`) that advances a *state* tuple, so
that one machinery (:mod:`pdenets.dynamics.reversible`) can run any reversible scheme backwards
(docs/design.md §14). The default scheme of each unit is the paper's:

* :class:`ParabolicUnit` — Eq. (7), ∂ₜY = F_sym(θ_j, Y): ``forward_euler`` (default,
  Y_{j+1} = Y_j + h F_sym(θ_j, Y_j)) or ``rk4``. Not reversible (time reversal of a parabolic PDE is ill-posed).
* :class:`HamiltonianUnit` — ∂ₜY = F_sym(θ¹, Z), ∂ₜZ = −F_sym(θ², Y): ``symplectic_euler`` (default, the
  paper's scheme, which it calls Verlet: Y_{j+1} = Y_j + h F_sym(θ¹_j, Z_j), Z_{j+1} = Z_j − h F_sym(θ²_j,
  Y_{j+1}); first order, run backwards exactly), ``stormer_verlet`` (kick-drift-kick, second order,
  reversible), ``forward_euler``, ``rk4``.
  **Channel split**: the unit's C input channels (C even) are split in two halves, Y = channels
  [0, C/2) and Z = channels [C/2, C); the output is cat(Y_N, Z_N) along channels. Each F_sym acts on C/2
  channels, so a Hamiltonian step has 2·(C/2)²·9 = 4.5 C² conv weights (half of a parabolic step's 9 C²).
* :class:`SecondOrderUnit` — Eqs. (8)-(9), ∂ₜ²Y = F_sym(θ_j, Y), ∂ₜY(0) = 0: ``leapfrog_first_order_start``
  (default, the paper's: Y_{j+1} = 2Y_j − Y_{j−1} + h² F_sym(θ_j, Y_j) with Y_{−1} = Y_0; first order
  overall), ``leapfrog`` (the same with the second-order start Y_1 = Y_0 + (h²/2) F_sym(θ_0, Y_0)),
  ``stormer_verlet`` (velocity Verlet), ``forward_euler``, ``rk4`` (on (Y, ∂ₜY)). Output Y_N.

``reversible=True`` (reversible schemes only) trains with the memory-flat autograd of
:mod:`pdenets.dynamics.reversible`: only the final state is kept and earlier states are recomputed
backwards in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pdenets.dynamics.schemes import Scheme, create_scheme, interpolation_weights
from pdenets.layers.symmetric import SymmetricLayer
from pdenets.layers.tracing import is_symbolic_tracing, is_tracing

State = tuple[torch.Tensor, ...]


class PDEUnit(nn.Module):
    """Base class: a residual unit integrating a PDE-motivated dynamic over ``steps`` steps of size ``h``.

    Subclasses define the vector field (``rate``, ``rate_y``/``rate_z`` or ``accel``, by their ``kind``, see
    :mod:`pdenets.dynamics.schemes`), :meth:`split` / :meth:`merge` (input ↔ initial condition),
    :meth:`step_layers` and :meth:`forward_unrolled`; the scheme ``scheme`` (default: the paper's,
    ``default_scheme``) does the stepping: :meth:`init_state`, :meth:`step`, :meth:`output`, and for reversible
    schemes :meth:`inverse_step` and :meth:`input_from_state`.

    TorchScript cannot type the variable-length state tuples nor index a ModuleList with a variable, so a
    scripted unit runs :meth:`forward_unrolled`, the same scheme written as a loop over the step layers. A
    scripted or traced (``torch.jit``, ``torch.fx``) reversible unit stores its activations like a plain one
    (the memory-flat backward is an autograd Function no tracer can record); its gradients are the same
    (docs/design.md §12).
    """

    dynamics: str = ""
    kind: str = "first_order"
    default_scheme: str = "forward_euler"

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                 scheme: str | None = None) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if not h > 0:
            raise ValueError(f"time step h must be positive, got {h}")
        self.scheme: Scheme = create_scheme(scheme or self.default_scheme, self.kind)
        self.scheme_name: str = self.scheme.name
        self.is_reversible_scheme: bool = self.scheme.reversible
        if reversible and not self.is_reversible_scheme:
            raise ValueError(f"{type(self).__name__} with scheme {self.scheme_name!r} is not reversible; "
                             f"reversible=True needs a reversible scheme of a hyperbolic unit")
        self.channels, self.steps, self.h, self.reversible = channels, steps, float(h), reversible

    # ---- the problem -----------------------------------------------------------------------------
    def time_step(self) -> float:
        return self.h

    def split(self, x: torch.Tensor) -> State:
        """The initial condition (Y₀,) (or (Y₀, Z₀)) of the input."""
        return (x,)

    def merge(self, ys: State) -> torch.Tensor:
        """The unit's output from the positions (Y,) (or (Y, Z))."""
        return ys[0]

    # ---- the scheme ------------------------------------------------------------------------------
    def init_state(self, x: torch.Tensor) -> State:
        return self.scheme.start(self, self.split(x))

    def step(self, j: int, state: State) -> State:
        return self.scheme.step(self, j, state)

    def inverse_step(self, j: int, state: State) -> State:
        return self.scheme.inverse_step(self, j, state)

    def output(self, state: State) -> torch.Tensor:
        return self.merge(self.scheme.finish(state))

    def input_from_state(self, state: State) -> torch.Tensor:
        return self.merge(self.scheme.initial(state))

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        """The layers holding θ_j (used by the regularisers and by re-discretisation)."""
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

    def forward_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """``output(integrate(x))`` as one loop over the step layers (the scripted forward; subclasses)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.forward_unrolled(x)
        else:
            return self._forward_python(x)

    def _forward_python(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass outside TorchScript: the input check (not while fx-traced), the memory-flat
        reversible path (not while traced), else the plain integration."""
        if not is_symbolic_tracing() and x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects {self.channels} channels, got shape {tuple(x.shape)}")
        if self.reversible and torch.is_grad_enabled() and not is_tracing():
            from pdenets.dynamics.reversible import reversible_forward

            return reversible_forward(self, x)
        return self.output(self.integrate(x))

    def extra_repr(self) -> str:
        return (f"{self.channels}, steps={self.steps}, h={self.h:g}, scheme={self.scheme_name}, "
                f"reversible={self.reversible}")


def _layers(n: int, channels: int, layer_kwargs: dict[str, Any]) -> nn.ModuleList:
    return nn.ModuleList(SymmetricLayer(channels, **layer_kwargs) for _ in range(n))


def _rk4_increment(k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor, h: float) -> torch.Tensor:
    """(h/6)(k1 + 2k2 + 2k3 + k4), in the order of :class:`~pdenets.dynamics.schemes.RK4`."""
    return (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


class ParabolicUnit(PDEUnit):
    """∂ₜY = F_sym(θ(t), Y) (Eq. 7) by forward Euler (default) or RK4. Keyword arguments go to
    :class:`SymmetricLayer`."""

    dynamics = "parabolic"

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                 scheme: str | None = None, **layer_kwargs):
        super().__init__(channels, steps, h, reversible, scheme)
        self.layers = _layers(steps, channels, layer_kwargs)

    def rate(self, j: int, y: torch.Tensor) -> torch.Tensor:
        return self.layers[j](y)

    def forward_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        y, h = x, self.h
        for layer in self.layers:
            if self.scheme_name == "rk4":
                k1 = layer(y)
                k2 = layer(y + (0.5 * h) * k1)
                k3 = layer(y + (0.5 * h) * k2)
                y = y + _rk4_increment(k1, k2, k3, layer(y + h * k3), h)
            else:
                y = y + h * layer(y)
        return y

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers[j]]


class HamiltonianUnit(PDEUnit):
    """∂ₜY = F_sym(θ¹, Z), ∂ₜZ = −F_sym(θ², Y) by symplectic Euler (default, the paper's "Verlet"), Störmer–
    Verlet, forward Euler or RK4; channels split in halves (Y, Z).

    Keyword arguments go to :class:`SymmetricLayer` (each acting on ``channels // 2`` channels).
    """

    dynamics = "hamiltonian"
    kind = "hamiltonian"
    default_scheme = "symplectic_euler"

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                 scheme: str | None = None, **layer_kwargs):
        if channels % 2:
            raise ValueError(f"the Hamiltonian unit splits channels into halves (Y, Z): channels must be even, "
                             f"got {channels}")
        super().__init__(channels, steps, h, reversible, scheme)
        half = channels // 2
        self.layers_y = _layers(steps, half, layer_kwargs)  # θ¹_j: updates Y from Z
        self.layers_z = _layers(steps, half, layer_kwargs)  # θ²_j: updates Z from Y

    def rate_y(self, j: int, z: torch.Tensor) -> torch.Tensor:
        return self.layers_y[j](z)

    def rate_z(self, j: int, y: torch.Tensor) -> torch.Tensor:
        return -self.layers_z[j](y)

    def split(self, x: torch.Tensor) -> State:
        half = self.channels // 2
        return x[:, :half], x[:, half:]

    def merge(self, ys: State) -> torch.Tensor:
        return torch.cat(ys, dim=1)

    def forward_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        half, h, name = self.channels // 2, self.h, self.scheme_name
        y, z = x[:, :half], x[:, half:]
        for layer_y, layer_z in zip(self.layers_y, self.layers_z):
            if name == "stormer_verlet":
                z = z - (0.5 * h) * layer_z(y)
                y = y + h * layer_y(z)
                z = z - (0.5 * h) * layer_z(y)
            elif name == "forward_euler":
                y, z = y + h * layer_y(z), z + h * -layer_z(y)
            elif name == "rk4":
                a1, b1 = layer_y(z), -layer_z(y)
                a2, b2 = layer_y(z + (0.5 * h) * b1), -layer_z(y + (0.5 * h) * a1)
                a3, b3 = layer_y(z + (0.5 * h) * b2), -layer_z(y + (0.5 * h) * a2)
                a4, b4 = layer_y(z + h * b3), -layer_z(y + h * a3)
                y, z = y + _rk4_increment(a1, a2, a3, a4, h), z + _rk4_increment(b1, b2, b3, b4, h)
            else:  # symplectic_euler
                y = y + h * layer_y(z)
                z = z + h * -layer_z(y)
        return torch.cat((y, z), dim=1)

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers_y[j], self.layers_z[j]]


class SecondOrderUnit(PDEUnit):
    """∂ₜ²Y = F_sym(θ(t), Y), Y(0) = Y₀, ∂ₜY(0) = 0 (Eqs. 8-9): leapfrog with Y₋₁ = Y₀ (default, the paper's),
    leapfrog with the second-order start, Störmer–Verlet, forward Euler or RK4."""

    dynamics = "second_order"
    kind = "second_order"
    default_scheme = "leapfrog_first_order_start"

    def __init__(self, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                 scheme: str | None = None, **layer_kwargs):
        super().__init__(channels, steps, h, reversible, scheme)
        self.layers = _layers(steps, channels, layer_kwargs)

    def accel(self, j: int, y: torch.Tensor) -> torch.Tensor:
        return self.layers[j](y)

    def forward_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        h, name = self.h, self.scheme_name
        y_prev, y, v = x, x, torch.zeros_like(x)
        c = 0.5 if name == "leapfrog" else 1.0
        for layer in self.layers:
            if name == "stormer_verlet":
                v = v + (0.5 * h) * layer(y)
                y = y + h * v
                v = v + (0.5 * h) * layer(y)
            elif name == "forward_euler":
                y, v = y + h * v, v + h * layer(y)
            elif name == "rk4":
                a1, b1 = v, layer(y)
                a2, b2 = v + (0.5 * h) * b1, layer(y + (0.5 * h) * a1)
                a3, b3 = v + (0.5 * h) * b2, layer(y + (0.5 * h) * a2)
                a4, b4 = v + h * b3, layer(y + h * a3)
                y, v = y + _rk4_increment(a1, a2, a3, a4, h), v + _rk4_increment(b1, b2, b3, b4, h)
            else:  # the two leapfrog starts: c_0 = 1/2 (second order) or 1 (Y_{-1} = Y_0), then 1
                y_prev, y = y, 2 * y - y_prev + (c * h * h) * layer(y)
                c = 1.0
        return y

    def step_layers(self, j: int) -> list[SymmetricLayer]:
        return [self.layers[j]]


UNITS: dict[str, type[PDEUnit]] = {
    "parabolic": ParabolicUnit, "hamiltonian": HamiltonianUnit, "second_order": SecondOrderUnit,
}


def create_unit(dynamics: str, channels: int, steps: int = 3, h: float = 1.0, reversible: bool = False,
                scheme: str | None = None, **layer_kwargs: Any) -> PDEUnit:
    """Build a unit by dynamics name ('parabolic', 'hamiltonian' or 'second_order') with the time-stepping
    ``scheme`` (None: the paper's; see :mod:`pdenets.dynamics.schemes`)."""
    if dynamics not in UNITS:
        raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(UNITS)}")
    return UNITS[dynamics](channels, steps=steps, h=h, reversible=reversible, scheme=scheme, **layer_kwargs)


@torch.no_grad()
def transfer_in_time(src: PDEUnit, dst: PDEUnit, interpolation: str = "linear") -> PDEUnit:
    """Load into ``dst`` the θ(t) of ``src`` resampled to ``dst.steps`` steps (``interpolation`` 'linear': θ
    piecewise linear in the fraction s = t/T of the unit; 'constant': θ held on the original steps;
    :func:`~pdenets.dynamics.schemes.interpolation_weights`); every floating state of the step layers (K, biases,
    normalisation weights and running statistics) is interpolated, counters are copied. Returns ``dst``."""
    for k, (a, b, w) in enumerate(interpolation_weights(src.steps, dst.steps, interpolation)):
        for d, sa, sb in zip(dst.step_layers(k), src.step_layers(a), src.step_layers(b)):
            va, vb, sd = sa.state_dict(), sb.state_dict(), d.state_dict()
            for key in sd:
                ta, tb = va[key], vb[key]
                sd[key] = ta.clone() if (not ta.is_floating_point() or w == 0.0) else (1 - w) * ta + w * tb
            d.load_state_dict(sd)
    return dst


@torch.no_grad()
def resample_in_time(unit: PDEUnit, steps: int, h: float, scheme: str | None = None,
                     interpolation: str = "linear") -> PDEUnit:
    """A new unit with ``steps`` steps of size ``h`` (and ``scheme``, default the unit's own) whose θ is the
    unit's θ(t) resampled (:func:`transfer_in_time`). With steps·h = unit.steps·unit.h the end time T is kept;
    with ``interpolation='constant'`` and a whole factor the network's function then changes only by the
    discretisation error (docs/design.md §14)."""
    p = next(unit.parameters())
    new = create_unit(unit.dynamics, unit.channels, steps=steps, h=h, reversible=unit.reversible,
                      scheme=scheme or unit.scheme_name, **_layer_kwargs(unit))
    new = transfer_in_time(unit, new.to(p.device, p.dtype), interpolation)
    new.train(unit.training)
    return new


def refine_in_time(unit: PDEUnit) -> PDEUnit:
    """Shallow-to-deep: a unit with twice the steps and h/2 whose θ is θ(t) linearly interpolated in time.

    θ_j sits at t_j = j h. New step k sits at k h/2: even k copy θ_{k/2}; odd k average θ_{(k−1)/2} and
    θ_{(k+1)/2} (the last one copies θ_{N−1}). The end time T = N h is unchanged, so the network's
    function changes only by the discretisation error (measured by ``pdenets rh deepen``).
    """
    return resample_in_time(unit, 2 * unit.steps, unit.h / 2)


def _layer_kwargs(unit: PDEUnit) -> dict[str, Any]:
    layer = unit.step_layers(0)[0]
    return dict(hidden=None if layer.hidden == layer.channels else layer.hidden, norm=layer.norm_name,
                act=layer.act_name, bias=layer.bias is not None or getattr(layer.norm, "bias", None) is not None,
                padding_mode=layer.padding_mode, kernel_size=layer.weight.shape[-1])
