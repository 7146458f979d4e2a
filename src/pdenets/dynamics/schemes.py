"""Time-stepping schemes: small classes over one base, shared by every family (docs/design.md §14).

A *problem* is a vector field with per-step parameters θ_j, piecewise constant on [t_j, t_{j+1}) (t_j = j h), in
one of three forms, named by its ``kind``:

* ``'first_order'`` — dY/dt = f_j(Y): the parabolic unit of Ruthotto–Haber Eq. (7) (f = F_sym(θ_j, ·)) and the
  Ruseckas networks, Eq. (56) (f = w x + b − γ x³). The problem defines ``rate(j, y)``.
* ``'hamiltonian'`` — dY/dt = f_j(Z), dZ/dt = g_j(Y) (a partitioned, separable system): the Hamiltonian unit,
  f = F_sym(θ¹_j, ·), g = −F_sym(θ²_j, ·). The problem defines ``rate_y(j, z)`` and ``rate_z(j, y)``.
* ``'second_order'`` — d²Y/dt² = a_j(Y), dY/dt(0) = 0: Ruthotto–Haber Eqs. (8)–(9), a = F_sym(θ_j, ·). The
  problem defines ``accel(j, y)``.

Every problem also has ``time_step()`` (h; a tensor when the final time is learnable). A scheme keeps its own
*state* (a tuple of tensors): :meth:`Scheme.start` makes it from the initial condition (a tuple: (Y₀,), or
(Y₀, Z₀) for a Hamiltonian problem), :meth:`Scheme.step` advances it by one step with θ_j,
:meth:`Scheme.finish` returns the positions ((Y,) or (Y, Z)); reversible schemes also have
:meth:`Scheme.inverse_step` and :meth:`Scheme.initial` (the initial condition from a start state), which the
memory-flat backward pass of :mod:`pdenets.dynamics.reversible` uses.

=============================== ================== ===== ========== ==================================================
name                            kinds              order reversible step
=============================== ================== ===== ========== ==================================================
``forward_euler`` (``euler``)   all                1     no         u ← u + h F(u) on the first-order form
``rk4``                         all                4     no         classical Runge–Kutta on the first-order form
``symplectic_euler``            hamiltonian        1     yes        Y ← Y + h f(Z); Z ← Z + h g(Y) — the paper's
                                                                    "Verlet" scheme (Ruthotto–Haber §"Hyperbolic")
``stormer_verlet``              hamiltonian,       2     yes        kick-drift-kick: Z ← Z + h/2 g(Y); Y ← Y + h f(Z);
                                second_order                        Z ← Z + h/2 g(Y)  (velocity Verlet on (Y, dY/dt))
``leapfrog``                    second_order       2     yes        Y_{j+1} = 2Y_j − Y_{j−1} + h² a_j(Y_j), started
                                                                    second-order: Y₁ = Y₀ + (h²/2) a₀(Y₀)
``leapfrog_first_order_start``  second_order       1     yes        the same with Y₋₁ = Y₀, i.e. Y₁ = Y₀ + h² a₀(Y₀)
                                                                    (the paper's start; first order overall)
``lm2``                         first_order        1     no         Ruseckas Eq. (111): Y ← Y + k_j (Y_prev − Y) + h f
=============================== ================== ===== ========== ==================================================

The first-order form of a Hamiltonian problem is u = (Y, Z), F(u) = (f(Z), g(Y)); of a second-order problem
u = (Y, V), F(u) = (V, a(Y)) with V₀ = 0. ``lm2`` asks the problem for its coefficients ``multistep_k(j)``
(Ruseckas' trainable k_l; k₀ = 0, the first step is Euler's since Y₋₁ = Y₀). With a fixed k it is consistent
with dY/dt = f/(1 + k): ρ(ζ) = (ζ − 1)(ζ + k), ρ'(1) = 1 + k, σ(1) = 1 — its learned W̃, b̃ absorb the factor.

The observed orders (slope of log error against log h on smooth problems with known solutions, float64) are
tested in ``tests/test_dynamics_schemes.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

State = tuple[torch.Tensor, ...]
KINDS = ("first_order", "hamiltonian", "second_order")

__all__ = ["INTERPOLATIONS", "KINDS", "SCHEMES", "ForwardEuler", "Leapfrog", "LeapfrogFirstOrderStart",
           "LinearMultistep2", "RK4", "Scheme", "StormerVerlet", "SymplecticEuler", "create_scheme",
           "interpolation_weights", "new_time_grid", "resample_sequence", "schemes_for"]


def _axpy(u: State, a: Any, k: State) -> State:
    """u + a·k, componentwise over the state tuple."""
    return tuple(ui + a * ki for ui, ki in zip(u, k))


class Scheme:
    """Base class of the time-stepping schemes (see the module docstring for the problem interface)."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = KINDS
    order: ClassVar[int] = 1
    reversible: ClassVar[bool] = False
    _kind: str = "first_order"

    def start(self, problem: Any, y0: State) -> State:
        """The state before step 0 from the initial condition (Y₀,) or (Y₀, Z₀)."""
        if problem.kind == "second_order":
            return y0[0], y0[0] * 0  # (Y, V), V₀ = 0 (a function of Y₀, so autograd can route through the start)
        return tuple(y0)

    def step(self, problem: Any, j: int, state: State) -> State:
        raise NotImplementedError

    def inverse_step(self, problem: Any, j: int, state: State) -> State:
        raise NotImplementedError(f"{self.name} is not reversible")

    def finish(self, state: State) -> State:
        """The positions of a state: (Y,) or (Y, Z)."""
        return state[:1] if self._kind == "second_order" else state

    def initial(self, state: State) -> State:
        """The initial condition of a start state (inverse of :meth:`start`)."""
        return self.finish(state)

    def integrate(self, problem: Any, y0: State, steps: int) -> State:
        """The positions after ``steps`` steps from the initial condition ``y0``."""
        state = self.start(problem, y0)
        for j in range(steps):
            state = self.step(problem, j, state)
        return self.finish(state)

    # the first-order form u' = F(u) of every kind
    @staticmethod
    def rate(problem: Any, j: int, u: State) -> State:
        """F(u) of the first-order form of ``problem``."""
        if problem.kind == "hamiltonian":
            return problem.rate_y(j, u[1]), problem.rate_z(j, u[0])
        if problem.kind == "second_order":
            return u[1], problem.accel(j, u[0])
        return (problem.rate(j, u[0]),)

    def bind(self, kind: str) -> Scheme:
        """Check that the scheme applies to problems of ``kind`` and remember it (for :meth:`finish`)."""
        if kind not in self.kinds:
            raise ValueError(f"scheme {self.name!r} does not apply to {kind.replace('_', '-')} problems; use one of "
                             f"{', '.join(schemes_for(kind))}")
        self._kind = kind
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ForwardEuler(Scheme):
    """u_{j+1} = u_j + h F_j(u_j) (order 1); Ruthotto–Haber Eq. (7) discretised, Ruseckas Eq. (109)."""

    name = "forward_euler"

    def step(self, problem: Any, j: int, state: State) -> State:
        return _axpy(state, problem.time_step(), self.rate(problem, j, state))


class RK4(Scheme):
    """The classical fourth-order Runge–Kutta step with θ_j held over the step (order 4)."""

    name = "rk4"
    order = 4

    def step(self, problem: Any, j: int, state: State) -> State:
        h = problem.time_step()
        k1 = self.rate(problem, j, state)
        k2 = self.rate(problem, j, _axpy(state, 0.5 * h, k1))
        k3 = self.rate(problem, j, _axpy(state, 0.5 * h, k2))
        k4 = self.rate(problem, j, _axpy(state, h, k3))
        return tuple(u + (h / 6) * (a + 2 * b + 2 * c + d) for u, a, b, c, d in zip(state, k1, k2, k3, k4))


class SymplecticEuler(Scheme):
    """Y_{j+1} = Y_j + h f_j(Z_j), Z_{j+1} = Z_j + h g_j(Y_{j+1}) (order 1, symplectic, exactly reversible).

    This is the scheme Ruthotto & Haber write for their Hamiltonian network (and call Verlet).
    """

    name = "symplectic_euler"
    kinds = ("hamiltonian",)
    reversible = True

    def step(self, problem: Any, j: int, state: State) -> State:
        y, z = state
        h = problem.time_step()
        y = y + h * problem.rate_y(j, z)
        return y, z + h * problem.rate_z(j, y)

    def inverse_step(self, problem: Any, j: int, state: State) -> State:
        y, z = state
        h = problem.time_step()
        z = z - h * problem.rate_z(j, y)
        return y - h * problem.rate_y(j, z), z


class StormerVerlet(Scheme):
    """Kick-drift-kick Störmer–Verlet (order 2, symplectic, exactly reversible), 3 field evaluations per step:
    Z_{j+½} = Z_j + (h/2) g_j(Y_j), Y_{j+1} = Y_j + h f_j(Z_{j+½}), Z_{j+1} = Z_{j+½} + (h/2) g_j(Y_{j+1}).
    On a second-order problem it is velocity Verlet on (Y, V), whose Y_j are those of :class:`Leapfrog`."""

    name = "stormer_verlet"
    kinds = ("hamiltonian", "second_order")
    order = 2
    reversible = True

    @staticmethod
    def _fields(problem: Any):
        if problem.kind == "second_order":  # Y' = V, V' = a(Y)
            return (lambda j, v: v), problem.accel
        return problem.rate_y, problem.rate_z

    def step(self, problem: Any, j: int, state: State) -> State:
        f, g = self._fields(problem)
        y, z = state
        h = problem.time_step()
        z = z + (0.5 * h) * g(j, y)
        y = y + h * f(j, z)
        return y, z + (0.5 * h) * g(j, y)

    def inverse_step(self, problem: Any, j: int, state: State) -> State:
        f, g = self._fields(problem)
        y, z = state
        h = problem.time_step()
        z = z - (0.5 * h) * g(j, y)
        y = y - h * f(j, z)
        return y, z - (0.5 * h) * g(j, y)


class Leapfrog(Scheme):
    """Y_{j+1} = 2Y_j − Y_{j−1} + c_j h² a_j(Y_j) on d²Y/dt² = a(Y), Y'(0) = 0 (Ruthotto–Haber Eqs. (8)–(9)).
    State (Y_{j−1}, Y_j), started as (Y₀, Y₀); c_0 = 1/2 gives the second-order start Y₁ = Y₀ + (h²/2) a₀(Y₀)
    (Taylor, Y'(0) = 0), c_j = 1 afterwards: order 2. Backwards: Y_{j−1} = 2Y_j − Y_{j+1} + c_j h² a_j(Y_j)."""

    name = "leapfrog"
    kinds = ("second_order",)
    order = 2
    reversible = True
    first_factor: ClassVar[float] = 0.5

    def start(self, problem: Any, y0: State) -> State:
        return y0[0], y0[0]

    def _c(self, j: int) -> float:
        return self.first_factor if j == 0 else 1.0

    def step(self, problem: Any, j: int, state: State) -> State:
        y_prev, y = state
        h = problem.time_step()
        return y, 2 * y - y_prev + (self._c(j) * h * h) * problem.accel(j, y)

    def inverse_step(self, problem: Any, j: int, state: State) -> State:
        y, y_next = state
        h = problem.time_step()
        return 2 * y - y_next + (self._c(j) * h * h) * problem.accel(j, y), y

    def finish(self, state: State) -> State:
        return state[1:]


class LeapfrogFirstOrderStart(Leapfrog):
    """:class:`Leapfrog` started with Y₋₁ = Y₀ (Y₁ = Y₀ + h² a₀(Y₀)), as the paper: first order overall (the
    start's O(h²) local error is not compensated)."""

    name = "leapfrog_first_order_start"
    order = 1
    first_factor = 1.0


class LinearMultistep2(Scheme):
    """Ruseckas' explicit two-step scheme, Eq. (111): Y_{j+1} = Y_j + k_j (Y_{j−1} − Y_j) + h f_j(Y_j), with the
    problem's ``multistep_k(j)`` (k₀ = 0) and Y₋₁ = Y₀. Order 1 (consistent with dY/dt = f/(1 + k), see the
    module docstring); k ≡ 0 is :class:`ForwardEuler`."""

    name = "lm2"
    kinds = ("first_order",)

    def start(self, problem: Any, y0: State) -> State:
        return y0[0], y0[0]

    def step(self, problem: Any, j: int, state: State) -> State:
        y_prev, y = state
        nxt = y + problem.time_step() * problem.rate(j, y)
        if j > 0:
            nxt = nxt + problem.multistep_k(j) * (y_prev - y)
        return y, nxt

    def finish(self, state: State) -> State:
        return state[1:]


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (ForwardEuler, RK4, SymplecticEuler, StormerVerlet, Leapfrog, LeapfrogFirstOrderStart,
                              LinearMultistep2)
}
ALIASES = {"euler": "forward_euler", "verlet": "stormer_verlet"}


def schemes_for(kind: str) -> list[str]:
    """The scheme names that apply to problems of ``kind``."""
    return [n for n, cls in SCHEMES.items() if kind in cls.kinds]


def create_scheme(name: str, kind: str) -> Scheme:
    """The scheme ``name`` (``'euler'`` = ``'forward_euler'``, ``'verlet'`` = ``'stormer_verlet'``) bound to
    problems of ``kind``; a ValueError naming the valid schemes otherwise."""
    if kind not in KINDS:
        raise ValueError(f"unknown problem kind {kind!r}; expected one of {', '.join(KINDS)}")
    cls = SCHEMES.get(ALIASES.get(name, name))
    if cls is None:
        raise ValueError(f"unknown scheme {name!r}; expected one of {', '.join(schemes_for(kind))}")
    return cls().bind(kind)


# ---- θ(t) on another time grid (re-discretisation, docs/design.md §14) --------------------------------------


INTERPOLATIONS = ("constant", "linear")


def interpolation_weights(old_steps: int, new_steps: int, mode: str = "linear") -> list[tuple[int, int, float]]:
    """(a, b, w) for each new step k: θ'_k = (1 − w) θ_a + w θ_b.

    ``'linear'``: the piecewise-linear θ(s) through θ_j at s = j / old_steps (held constant after the last),
    sampled at s = k / new_steps; for new_steps = 2·old_steps this is the shallow-to-deep rule (even k copy
    θ_{k/2}, odd k average the neighbours). ``'constant'``: θ(t) as the network integrates it, piecewise constant
    on [t_j, t_{j+1}), sampled at the new step's midpoint s = (k + ½) / new_steps; for a whole factor the new
    network integrates exactly the same θ(t), so its output changes by the discretisation error only."""
    if old_steps < 1 or new_steps < 1:
        raise ValueError(f"step counts must be positive, got {old_steps} and {new_steps}")
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {mode!r}")
    out = []
    for k in range(new_steps):
        if mode == "constant":
            a = ((2 * k + 1) * old_steps) // (2 * new_steps)
            out.append((a, a, 0.0))
            continue
        a, rem = divmod(k * old_steps, new_steps)
        b = a if rem == 0 else min(a + 1, old_steps - 1)
        out.append((a, b, rem / new_steps if b != a else 0.0))
    return out


def resample_sequence(seq: list[torch.Tensor] | torch.Tensor, new_steps: int,
                      mode: str = "linear") -> list[torch.Tensor]:
    """θ_0 … θ_{N−1} (a list, or a tensor stacked over dim 0) resampled to ``new_steps`` steps by
    :func:`interpolation_weights` (``mode``); integer tensors (counters) are copied from θ_a."""
    items = list(seq.unbind(0)) if isinstance(seq, torch.Tensor) else list(seq)
    out = []
    for a, b, w in interpolation_weights(len(items), new_steps, mode):
        va, vb = items[a], items[b]
        if not va.is_floating_point():
            out.append(va.clone())
        elif w == 0.0:
            out.append(va.clone())
        else:
            out.append((1 - w) * va + w * vb)
    return out


def new_time_grid(steps: list[int], h: float, new_steps: int | list[int] | None = None, new_h: float | None = None,
                  factor: float | None = None) -> tuple[list[int], float]:
    """(steps per unit, step size) of a re-discretisation of units with ``steps`` steps of size ``h``
    (docs/design.md §14):

    * ``factor=f`` — f× the steps and h/f (T = N h kept; every f·N must be a whole number);
    * ``new_steps`` (an int for every unit, or one per unit) — h' = T/N' (T kept), or ``new_h`` if given
      (T' = N'·h');
    * ``new_h`` alone — the same steps of size h' (T' = N·h'); nothing: the grid unchanged.
    """
    import math

    if factor is not None and (new_steps is not None or new_h is not None):
        raise ValueError("give either factor or steps/h, not both")
    if factor is not None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        scaled = [factor * n for n in steps]
        if any(abs(s - round(s)) > 1e-9 or round(s) < 1 for s in scaled):
            raise ValueError(f"factor {factor:g} times the steps {steps} must give whole numbers of steps")
        return [round(s) for s in scaled], h / factor
    if new_h is not None and not (isinstance(new_h, (int, float)) and math.isfinite(new_h) and new_h > 0):
        raise ValueError(f"h must be a positive number, got {new_h!r}")
    if new_steps is None:  # h alone, or nothing (the grid unchanged: e.g. only the scheme changes)
        return list(steps), float(h if new_h is None else new_h)
    per = [new_steps] * len(steps) if isinstance(new_steps, int) else list(new_steps)
    if len(per) != len(steps) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in per):
        raise ValueError(f"steps must be a positive integer or {len(steps)} of them, got {new_steps!r}")
    if new_h is not None:
        return per, float(new_h)
    hs = {n * h / m for n, m in zip(steps, per)}
    if max(hs) - min(hs) > 1e-12 * max(hs):
        raise ValueError(f"keeping every unit's end time needs a different h per unit ({sorted(hs)}); give h too")
    return per, steps[0] * h / per[0]
