"""Memory-flat backpropagation through reversible units (Ruthotto & Haber §"Computational benefits"; [6, 15]).

:func:`reversible_forward` runs a hyperbolic unit (:class:`~pdenets.dynamics.integrators.HamiltonianUnit`
or :class:`~pdenets.dynamics.integrators.SecondOrderUnit`) under ``torch.no_grad`` and keeps **only its final
state**. The backward pass walks the steps in reverse: it reconstructs the state before step j with the
unit's exact inverse step, re-runs step j with autograd on (one step's graph at a time), and
backpropagates the incoming gradient through it. Memory is therefore independent of the number of
steps (up to one step's activations), at the price of roughly two extra F_sym evaluations per step.

F_sym need not be invertible (the schemes are reversible because of their structure, not because of
F), so normalisation inside F is fine: instance norm and batch norm are functions of the current batch,
and the inverse step evaluates F at the very same inputs as the forward step did.

**BatchNorm running statistics.** In training mode each F_sym evaluation with ``norm='batch'`` would
update the running mean/variance; the backward pass evaluates every F twice more (inverse step and
recomputed step). :func:`frozen_running_stats` sets ``momentum = 0`` on every BatchNorm of the unit
during the backward pass and restores ``num_batches_tracked`` afterwards, so the running statistics
are updated exactly once per training step, as without reversibility (tested).

Double backward (gradients of gradients) is not supported through a reversible unit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

State = tuple[torch.Tensor, ...]


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` normalise with batch statistics as usual but do not
    update their running statistics (momentum 0, ``num_batches_tracked`` restored)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            nbt = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, nbt))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def _with_grad_fn(ts: State, leaf: torch.Tensor) -> State:
    """Make every output that *is* the leaf a view of it, so autograd.grad can route its gradient."""
    return tuple(t.view_as(t) if t is leaf else t for t in ts)


class _ReversibleUnitFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        state = unit.integrate(x)  # autograd is off inside Function.forward: nothing per step is kept
        ctx.unit = unit
        ctx.n_state = len(state)
        ctx.save_for_backward(*state)
        return unit.output(state)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        unit = ctx.unit
        state: State = tuple(t.detach() for t in ctx.saved_tensors)
        params = [p for p in unit.parameters()]
        grads: list[torch.Tensor | None] = [None] * len(params)
        ids = {id(q): i for i, q in enumerate(params)}

        with torch.enable_grad():
            s = tuple(t.requires_grad_() for t in (u.clone() for u in state))
            out = unit.output(s)
            g_state = torch.autograd.grad(out, s, grad_out, allow_unused=True)
        g_state = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(state, g_state))

        with frozen_running_stats(unit):
            for j in reversed(range(unit.steps)):
                with torch.no_grad():
                    prev = unit.inverse_step(j, state)
                with torch.enable_grad():
                    p = tuple(t.detach().requires_grad_() for t in prev)
                    new = unit.step(j, p)
                    step_params = [q for layer in unit.step_layers(j) for q in layer.parameters()]
                    gs = torch.autograd.grad(new, p + tuple(step_params), g_state, allow_unused=True)
                g_state = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(p, gs[: len(p)]))
                for q, g in zip(step_params, gs[len(p):]):
                    if g is not None:
                        i = ids[id(q)]
                        grads[i] = g if grads[i] is None else grads[i] + g
                state = prev

            with torch.enable_grad():
                x = unit.input_from_state(state).detach().requires_grad_()
                s0 = _with_grad_fn(unit.init_state(x), x)
                (g_x,) = torch.autograd.grad(s0, (x,), g_state)
        return (None, g_x, *grads)


def reversible_forward(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a reversible unit with memory-flat autograd (only the final state is stored)."""
    params = [p for p in unit.parameters()]
    return _ReversibleUnitFn.apply(unit, x, *params)
