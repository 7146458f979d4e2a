"""Optimizer, scheduler and learning-rate bookkeeping of the trainer (timm's factories).

Per-parameter learning-rate factors are a model-side option: a model may define
``param_lr_scales() -> dict[str, float]`` (parameter name → factor, e.g. the Ruseckas nets' γ̃, whose
gradient sums over all L layers). Those parameters get their own optimizer param groups carrying timm's
``lr_scale`` key, which timm's schedulers multiply into the group's lr at every update (and
:class:`LrControl` applies when there is no scheduler). Weight-decay grouping stays timm's
(``param_groups_weight_decay``: no decay for biases and 1-d parameters).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pdenets.errors import UsageError

__all__ = ["SCHEDULERS", "LrControl", "build_optimizer", "build_scheduler", "check_optimizer_name",
           "param_groups"]


def model_lr_scales(model: nn.Module) -> dict[str, float]:
    """``model.param_lr_scales()`` if the model defines it (factors ≠ 1 only), else ``{}``."""
    fn = getattr(model, "param_lr_scales", None)
    if not callable(fn):
        return {}
    scales = {str(k): float(v) for k, v in fn().items() if float(v) != 1.0}
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(scales) - names)
    if unknown:
        raise ValueError(f"param_lr_scales() names unknown parameters: {', '.join(unknown)}")
    return scales


def param_groups(model: nn.Module, weight_decay: float, scales: dict[str, float]) -> list[dict[str, Any]]:
    """timm's weight-decay groups, each split further by lr factor (``lr_scale`` key where ≠ 1)."""
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    scale_of = {id(p): scales.get(n, 1.0) for n, p in model.named_parameters()}
    out: list[dict[str, Any]] = []
    for g in param_groups_weight_decay(model, weight_decay, skip):
        by_scale: dict[float, list[nn.Parameter]] = {}
        for p in g["params"]:
            by_scale.setdefault(scale_of[id(p)], []).append(p)
        for s, ps in by_scale.items():
            out.append(dict(g, params=ps, **({"lr_scale": s} if s != 1.0 else {})))
    out.sort(key=lambda g: "lr_scale" in g)  # unscaled groups first: param_groups[0]['lr'] is the base lr
    return out


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` on ``model`` (or on its lr-scaled param groups, see module docstring)."""
    from timm.optim import create_optimizer_v2

    scales = model_lr_scales(model)
    target: Any = param_groups(model, cfg.weight_decay, scales) if scales else model
    try:
        return create_optimizer_v2(target, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
    except (ValueError, AssertionError) as e:
        raise UsageError(f"--opt {cfg.opt!r}: {e}") from None


# timm's create_scheduler_v2 names, and ours for a constant lr.
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none", "const")


def check_optimizer_name(opt: str) -> None:
    """A :class:`UsageError` unless timm's optimizer registry knows ``opt`` (a ``lookahead_`` prefix allowed)."""
    from timm.optim import get_optimizer_class

    name = opt.lower()
    name = name[len("lookahead_"):] if name.startswith("lookahead_") else name
    try:
        get_optimizer_class(name)
    except (ValueError, KeyError, ImportError, AssertionError) as e:
        raise UsageError(f"--opt {opt!r}: {e} (timm's names, e.g. sgd, momentum, adamw)") from None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """timm's ``create_scheduler_v2``, stepped per update; None for ``--sched none|const``."""
    from timm.scheduler import create_scheduler_v2

    if cfg.sched in ("none", "const"):
        return None
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
            decay_milestones=list(cfg.decay_milestones), decay_rate=cfg.decay_rate, min_lr=cfg.min_lr,
            warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
    except (ValueError, AssertionError) as e:
        raise UsageError(f"--sched {cfg.sched!r}: {e}") from None
    if scheduler is None:
        raise UsageError(f"unknown scheduler --sched {cfg.sched!r} (timm's names, e.g. cosine, multistep)")
    return scheduler


class LrControl:
    """The lr of every param group = the scheduler's value × the NaN guard's factor.

    ``sched_lrs`` holds the scheduler's (unguarded) values; they are saved with the training state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler=None) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler
        if scheduler is None:  # timm's schedulers apply lr_scale; without one, apply it once here
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        self.sched_lrs = [g["lr"] for g in optimizer.param_groups]

    def apply(self, guard_scale: float = 1.0) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.sched_lrs):
            g["lr"] = lr * guard_scale

    def schedule(self, guard_scale: float = 1.0, num_updates: int | None = None, epoch: int | None = None) -> None:
        """Let the scheduler set the lr (from the unguarded values), then apply the guard's factor."""
        if self.scheduler is not None:
            self.apply(1.0)
            if num_updates is not None:
                self.scheduler.step_update(num_updates)
            if epoch is not None:
                self.scheduler.step(epoch)
            self.sched_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.apply(guard_scale)

    @property
    def lr(self) -> float:
        """The current lr of the first param group."""
        return self.optimizer.param_groups[0]["lr"]
