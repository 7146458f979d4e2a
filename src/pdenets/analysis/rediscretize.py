"""Re-discretisation: a trained ODE/PDE network evaluated or fine-tuned on another time grid (docs/design.md §14).

A network read as a discretised ODE/PDE in depth has parameters θ(t) on a time grid (Ruthotto–Haber: θ_j of
each unit at t_j = j h; Ruseckas: the scaled W̃⁽ˡ⁾ = Δt w(t_l), Eq. 110). :func:`rediscretize` returns the
same network with another number of steps, step size or time-stepping scheme — θ(t) resampled in time for any
factor, the Ruseckas parameters rescaled to the new Δt — built by :func:`pdenets.create_model` with the new
constructor arguments and carrying the edit ``rediscretize`` (:func:`pdenets.artifacts.add_edit`), so that an
artifact of it reloads (``pdenets.load``) and fine-tunes (``pdenets train --init-from``). The models do the
work (``RHNet.rediscretized``, ``OdeNet/OdeConvNet.rediscretized``); this function checks the request and
records it. ``pdenets eval -m steps=N -m h=H`` and ``pdenets train --init-from A -m steps=N`` call it.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["REDISCRETIZE_KEYS", "rediscretize", "time_grid"]

REDISCRETIZE_KEYS = ("steps", "h", "factor", "scheme", "interpolation")


def time_grid(model: nn.Module) -> dict[str, Any]:
    """The time grid of a re-discretisable network: steps (per RH stage, or the Ruseckas depth), h and scheme."""
    if hasattr(model, "units"):  # RHNet
        units = model.units()
        return dict(steps=list(model.steps), h=model.h, scheme=units[0].scheme_name if units else None)
    if hasattr(model, "depth") and hasattr(model, "integrator"):  # the Ruseckas ODE stacks
        h = model.time_step()
        return dict(steps=model.depth, h=float(h.detach()) if hasattr(h, "detach") else h, scheme=model.scheme)
    raise ValueError(f"{type(model).__name__} has no time grid to re-discretise (the Ruthotto-Haber rh_* and the "
                     f"Ruseckas ruseckas_* networks have one)")


def rediscretize(model: nn.Module, steps: int | list[int] | None = None, h: float | None = None,
                 factor: float | None = None, scheme: str | None = None, interpolation: str = "constant") -> nn.Module:
    """``model`` on another time grid: ``steps`` (int, or one per RH stage), ``h``, ``factor`` (f× the steps,
    h/f), ``scheme`` (see :mod:`pdenets.dynamics.schemes`); see :func:`pdenets.dynamics.schemes.new_time_grid`
    for how they combine. ``interpolation``: 'constant' (default) keeps θ(t) as the network integrates it,
    piecewise constant on its steps — the same ODE, so with a whole factor only the discretisation error changes
    the output —; 'linear' interpolates θ between the steps (the shallow-to-deep rule of ``pdenets rh deepen``).
    Returns a new model in the same mode, with ``model``'s edit history plus this edit.

    Raises ValueError for a model without a time grid or an impossible request."""
    from pdenets.artifacts import EDITS_ATTR, add_edit, edits

    if steps is None and h is None and factor is None and scheme is None:
        raise ValueError(f"rediscretize needs one of {', '.join(REDISCRETIZE_KEYS)}")
    before = time_grid(model)
    fn = getattr(model, "rediscretized", None)
    if not callable(fn):
        raise ValueError(f"{type(model).__name__} cannot be re-discretised")
    new = fn(steps=steps, h=h, factor=factor, scheme=scheme, interpolation=interpolation)
    new.__dict__[EDITS_ATTR] = edits(model)
    add_edit(new, "rediscretize", before=before, after=time_grid(new), interpolation=interpolation)
    return new
