"""The NaN guard: survive the instabilities Liu-Shao-Bai §3 report ("fails at a particular epoch … NaN,
and the model could not recover"; "resuming training with a smaller learning rate may get around the bad
regions").

When a training step yields a non-finite loss, output or gradient, when the parameters or buffers are no
longer finite after an optimizer step (:func:`first_nonfinite_state`, one fused reduction), or when an
epoch's validation loss is not finite, :class:`NanGuard`

1. logs the step, the data set indices of the batch's samples and which module first produced a
   non-finite value (found by re-running the forward pass with forward hooks on every module), or the
   first parameter with a non-finite gradient;
2. restores the last good state: an in-memory snapshot taken every ``snapshot_every`` good steps
   (model, optimizer, grad scaler, EMA, hooks), or — with ``snapshot_every=0`` — the last checkpoint
   (the snapshot taken at the start when there is none yet);
3. multiplies the learning rate by ``lr_factor`` (default 0.5; the factor persists for the rest of the
   run and across resume);
4. skips the batch and continues. After ``max_failures`` failures within ``window`` step attempts (not
   only in a row: failures that alternate with good steps count too) it asks the trainer to stop, which
   restores the state of the last completed epoch (:meth:`NanGuard.restore_epoch`), keeps it as the
   run's ``last`` checkpoint and exits non-zero with the command that continues the run.

A failed validation restores the epoch-start state (kept on the CPU, :meth:`NanGuard.snapshot_epoch`) and
the epoch is trained again at the reduced lr.

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


def first_nonfinite_state(model: nn.Module) -> str | None:
    """Name of the first parameter or buffer with a non-finite entry, or None. The check is one fused
    reduction (max |x| of every floating tensor, NaN-propagating); names are looked up only on failure."""
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers())
             if t.is_floating_point() and t.numel()]
    if not named:
        return None
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for _, t in named:
        by_dtype.setdefault(t.dtype, []).append(t.detach())
    ok = all(bool(torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all())
             for ts in by_dtype.values())
    if ok:
        return None
    return next(n for n, t in named if not torch.isfinite(t).all())


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
                 max_failures: int = 5, window: int = 100, log_event: Callable[[dict], None] | None = None,
                 checkpoint_restore: Callable[[], bool] | None = None) -> None:
        self.model, self.optimizer, self.scaler, self.ema = model, optimizer, scaler, ema
        self.hooks = hooks or []
        self.snapshot_every, self.lr_factor, self.max_failures = snapshot_every, lr_factor, max_failures
        self.window = window
        self.log_event = log_event or (lambda e: None)
        self.checkpoint_restore = checkpoint_restore
        self.lr_scale = 1.0
        self.consecutive = 0
        self.total_failures = 0
        self.recent: list[int] = []  # step attempts of the failures inside the window
        self._snap: dict[str, Any] | None = None
        self._snap_step = -1
        self._epoch_snap: dict[str, Any] | None = None

    # ---- snapshots --------------------------------------------------------------------------------
    def _capture(self) -> dict[str, Any]:
        return dict(
            model=clone_state(self.model.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            scaler=copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else None,
            ema=clone_state(self.ema.state_dict()) if self.ema is not None else None,
            hooks=[copy.deepcopy(h.state_dict()) for h in self.hooks],
        )

    def _load(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if self.scaler is not None and s["scaler"] is not None:
            self.scaler.load_state_dict(s["scaler"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        for h, hs in zip(self.hooks, s["hooks"]):
            h.load_state_dict(hs)

    def snapshot(self, step: int) -> None:
        self._snap = self._capture()
        self._snap_step = step

    def snapshot_epoch(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Keep the state of an epoch boundary (validated, finite) on the CPU; also the in-memory snapshot.
        ``extra`` (e.g. the trainer's step and schedule) is returned by :meth:`restore_epoch`."""
        self.snapshot(step)
        self._epoch_snap = dict(_to_cpu(self._capture()), extra=copy.deepcopy(extra or {}), step=step)

    def restore_epoch(self) -> dict[str, Any]:
        """Load the last epoch-boundary state; returns its ``extra`` (with ``step``)."""
        if self._epoch_snap is None:
            raise RuntimeError("NaN guard: no epoch snapshot (call snapshot_epoch() before training)")
        self.optimizer.zero_grad(set_to_none=True)
        self._load(self._epoch_snap)
        self.snapshot(self._epoch_snap["step"])
        return dict(self._epoch_snap["extra"], step=self._epoch_snap["step"])

    def good_step(self, step: int, checked: bool = True) -> None:
        """A step without failure; every ``snapshot_every`` steps (at a step whose weights were checked) the
        in-memory snapshot is renewed."""
        self.consecutive = 0
        if checked and self.snapshot_every and step - self._snap_step >= self.snapshot_every:
            self.snapshot(step)

    def _restore(self) -> str:
        if not self.snapshot_every and self.checkpoint_restore is not None and self.checkpoint_restore():
            return "last checkpoint"
        if self._snap is None:
            raise RuntimeError("NaN guard has no snapshot to restore (call snapshot() before training)")
        self._load(self._snap)
        return f"in-memory snapshot of step {self._snap_step}"

    # ---- failures ---------------------------------------------------------------------------------
    def handle(self, *, step: int, epoch: int, batch: int, reason: str, sample_indices: list[int],
               module: str | None, param: str | None = None, attempt: int | None = None,
               restore: bool = True) -> bool:
        """Restore (unless ``restore=False``: the caller restores), reduce the lr, log. Returns True when
        training must stop: ``max_failures`` failures within the last ``window`` step attempts."""
        self.optimizer.zero_grad(set_to_none=True)
        restored = self._restore() if restore else "epoch start"
        self.lr_scale *= self.lr_factor
        self.consecutive += 1
        self.total_failures += 1
        at = step if attempt is None else attempt
        self.recent = [a for a in self.recent if a > at - self.window] + [at]
        stop = len(self.recent) >= self.max_failures
        self.log_event(dict(
            event="nan", step=step, epoch=epoch, batch=batch, reason=reason, module=module, param=param,
            sample_indices=[int(i) for i in sample_indices], restored=restored, lr_scale=self.lr_scale,
            consecutive=self.consecutive, in_window=len(self.recent), total=self.total_failures, stop=stop,
        ))
        return stop

    def state_dict(self) -> dict[str, Any]:
        return dict(lr_scale=self.lr_scale, consecutive=self.consecutive, total_failures=self.total_failures,
                    recent=list(self.recent))

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.lr_scale = float(s.get("lr_scale", 1.0))
        self.consecutive = int(s.get("consecutive", 0))
        self.total_failures = int(s.get("total_failures", 0))
        self.recent = [int(a) for a in s.get("recent", [])]


def _to_cpu(obj: Any) -> Any:
    """A copy of nested containers with every tensor moved to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
