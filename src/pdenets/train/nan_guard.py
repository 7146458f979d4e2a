"""The NaN guard: survive the instabilities Liu-Shao-Bai §3 report ("fails at a particular epoch … NaN,
and the model could not recover"; "resuming training with a smaller learning rate may get around the bad
regions").

When a training step yields a non-finite loss, output or gradient, :class:`NanGuard`

1. logs the step, the data set indices of the batch's samples and which module first produced a
   non-finite value (found by re-running the forward pass with forward hooks on every module), or the
   first parameter with a non-finite gradient;
2. restores the last good state: an in-memory snapshot taken every ``snapshot_every`` good steps
   (model, optimizer, grad scaler, EMA, hooks), or — with ``snapshot_every=0`` — the last checkpoint
   (the snapshot taken at the start when there is none yet);
3. multiplies the learning rate by ``lr_factor`` (default 0.5; the factor persists for the rest of the
   run and across resume);
4. skips the batch and continues. After ``max_failures`` failures in a row it asks the engine to stop
   (which saves a checkpoint of the restored good state and says so).

Every event is passed to ``log_event`` (the engine writes them to ``metrics.jsonl``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def clone_state(sd: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in sd.items()})


def first_nonfinite_grad(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def first_nonfinite_module(model: nn.Module, run_forward: Callable[[], Any]) -> str | None:
    """Name of the first module (in execution order) whose output has a non-finite entry, or None.

    ``run_forward`` re-runs the failing forward pass; a forward hook on every module records the first.
    """
    found: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            if found:
                return
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for o in outs:
                if torch.is_tensor(o) and o.is_floating_point() and not torch.isfinite(o).all():
                    found.append(name or "<model>")
                    return

        return hook

    for name, m in model.named_modules():
        handles.append(m.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


class NaNInjector:
    """Fault injection for tests: replaces the output of ``module`` by NaN at the chosen step attempts
    (``-1`` in ``steps``: every attempt). ``attempt`` is set by the engine before each step."""

    def __init__(self, model: nn.Module, module_name: str | None, steps: list[int]) -> None:
        modules = dict(model.named_modules())
        if module_name is None:
            module_name = next(n for n, m in model.named_modules() if n and any(True for _ in m.parameters()))
        if module_name not in modules:
            raise ValueError(f"inject_nan_module {module_name!r} is not a module of the model")
        self.module_name, self.steps, self.attempt = module_name, set(steps), -1
        self.handle = modules[module_name].register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out):
        if self.attempt in self.steps or -1 in self.steps:
            return out * float("nan")
        return out


class NanGuard:
    """See module docstring. The engine calls :meth:`snapshot`, :meth:`good_step` and :meth:`handle`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, scaler=None, ema=None,
                 hooks: list | None = None, snapshot_every: int = 50, lr_factor: float = 0.5,
                 max_failures: int = 5, log_event: Callable[[dict], None] | None = None,
                 checkpoint_restore: Callable[[], bool] | None = None) -> None:
        self.model, self.optimizer, self.scaler, self.ema = model, optimizer, scaler, ema
        self.hooks = hooks or []
        self.snapshot_every, self.lr_factor, self.max_failures = snapshot_every, lr_factor, max_failures
        self.log_event = log_event or (lambda e: None)
        self.checkpoint_restore = checkpoint_restore
        self.lr_scale = 1.0
        self.consecutive = 0
        self.total_failures = 0
        self._snap: dict[str, Any] | None = None
        self._snap_step = -1

    # ---- snapshots --------------------------------------------------------------------------------
    def snapshot(self, step: int) -> None:
        self._snap = dict(
            model=clone_state(self.model.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            scaler=copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else None,
            ema=clone_state(self.ema.state_dict()) if self.ema is not None else None,
            hooks=[copy.deepcopy(h.state_dict()) for h in self.hooks],
        )
        self._snap_step = step

    def good_step(self, step: int) -> None:
        self.consecutive = 0
        if self.snapshot_every and step - self._snap_step >= self.snapshot_every:
            self.snapshot(step)

    def _restore(self) -> str:
        if not self.snapshot_every and self.checkpoint_restore is not None and self.checkpoint_restore():
            return "last checkpoint"
        if self._snap is None:
            raise RuntimeError("NaN guard has no snapshot to restore (call snapshot() before training)")
        s = self._snap
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if self.scaler is not None and s["scaler"] is not None:
            self.scaler.load_state_dict(s["scaler"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        for h, hs in zip(self.hooks, s["hooks"]):
            h.load_state_dict(hs)
        return f"in-memory snapshot of step {self._snap_step}"

    # ---- failures ---------------------------------------------------------------------------------
    def handle(self, *, step: int, epoch: int, batch: int, reason: str, sample_indices: list[int],
               module: str | None, param: str | None = None) -> bool:
        """Restore, reduce the lr, log. Returns True when training must stop (too many failures in a row)."""
        self.optimizer.zero_grad(set_to_none=True)
        restored = self._restore()
        self.lr_scale *= self.lr_factor
        self.consecutive += 1
        self.total_failures += 1
        stop = self.consecutive >= self.max_failures
        self.log_event(dict(
            event="nan", step=step, epoch=epoch, batch=batch, reason=reason, module=module, param=param,
            sample_indices=[int(i) for i in sample_indices], restored=restored, lr_scale=self.lr_scale,
            consecutive=self.consecutive, total=self.total_failures, stop=stop,
        ))
        return stop

    def state_dict(self) -> dict[str, Any]:
        return dict(lr_scale=self.lr_scale, consecutive=self.consecutive, total_failures=self.total_failures)

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.lr_scale = float(s.get("lr_scale", 1.0))
        self.consecutive = int(s.get("consecutive", 0))
        self.total_failures = int(s.get("total_failures", 0))
