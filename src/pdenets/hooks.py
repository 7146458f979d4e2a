"""The training-hook registry: penalties added to the loss and steps after the optimizer (docs/design.md §7).

A :class:`TrainHook` is created from a spec string ``NAME`` or ``NAME:VALUE`` (``--hook rh-tv:3e-4``, or a
recipe's ``hooks`` list). This module sits at the bottom of the package and imports only torch: the
providers register their hooks with :func:`register_hook` when *they* are imported, and whoever needs every
hook (``import pdenets``, the command line) imports the providers. The registry never names them.

Providers: :mod:`pdenets.train.regularizer_hooks` (``rh-tv``, ``box``, ``layer-smooth``, ``cross-layer``,
``cross-layer-tv``) and :mod:`pdenets.symmetry.prox` (``nuclear-prox``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["HookFactory", "TrainHook", "create_hook", "list_hooks", "register_hook"]


class TrainHook:
    """Base class. Override what you need; the engine calls every hook at the same points.

    * :meth:`penalty` — a scalar added to the loss of each training step (or ``None``);
    * :meth:`after_step` — called after each ``optimizer.step()`` under ``torch.no_grad()``
      (projections, proximal steps); receives the current learning rate;
    * :meth:`state_dict` / :meth:`load_state_dict` — saved with the training state for exact resume.
    """

    name: str = ""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, lr: float) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


HookFactory = Callable[[float | None], TrainHook]
_HOOKS: dict[str, HookFactory] = {}


def register_hook(name: str) -> Callable[[HookFactory], HookFactory]:
    """Decorator: ``@register_hook('box')`` on a factory ``(value: float | None) -> TrainHook``."""

    def deco(factory: HookFactory) -> HookFactory:
        if name in _HOOKS:
            raise ValueError(f"training hook {name!r} is already registered")
        _HOOKS[name] = factory
        return factory

    return deco


def list_hooks() -> list[str]:
    """Names of the hooks registered so far (every built-in one once :mod:`pdenets` is imported)."""
    return sorted(_HOOKS)


def create_hook(spec: str) -> TrainHook:
    """Build a hook from ``'NAME'`` or ``'NAME:VALUE'`` (VALUE a float). Unknown names raise ValueError."""
    name, _, value = spec.partition(":")
    if name not in _HOOKS:
        known = ", ".join(sorted(_HOOKS)) or "none registered"
        raise ValueError(f"unknown training hook {name!r}; expected one of: {known}")
    try:
        val = float(value) if value else None
    except ValueError:
        raise ValueError(f"hook value must be a number, got {spec!r}") from None
    if val is not None and not math.isfinite(val):
        raise ValueError(f"hook value must be a finite number, got {spec!r}")
    hook = _HOOKS[name](val)
    hook.name = hook.name or name
    return hook
