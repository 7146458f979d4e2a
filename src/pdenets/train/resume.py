"""What ``--resume`` may change (docs/design.md §9): every option is either applied or refused, so the
``config.yaml`` of a resumed run always records what runs.

* Refused (:data:`FIXED`): options that define the model, the data stream or the state that was saved —
  model, its constructor arguments, data set, image size, batch size (and the world size), optimizer,
  mixed precision, EMA, seed, steps per epoch; hooks may only be appended. Change them with a new run
  started from the checkpoint's weights (``--init-from``).
* Applied with a rebuilt schedule (:data:`SCHEDULE`): lr, epochs and the schedule's options — the
  scheduler is rebuilt for the new values and set to the run's current step; a new ``lr`` also resets the
  NaN guard's lr factor (the user chose the lr).
* Applied as they are: everything else (weight decay, momentum, clipping, smoothing, NaN-guard settings,
  augmentation, machinery); optimizer hyperparameters are written into the restored param groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdenets.errors import UsageError

FIXED = ("model", "model_kwargs", "dataset", "img_size", "batch_size", "opt", "amp", "ema", "seed",
         "max_steps_per_epoch")
SCHEDULE = ("lr", "epochs", "sched", "warmup_epochs", "warmup_lr", "min_lr", "decay_milestones", "decay_epochs",
            "decay_rate")
OPTIMIZER = ("lr", "momentum", "weight_decay")
PER_INVOCATION = ("resume", "out", "stop_after", "overwrite", "progress", "init_from", "init_which", "recipe",
                  "data_dir", "workers", "device", "log_interval", "tensorboard", "report")


@dataclass
class ResumePlan:
    """The options a resume changes (``{name: (old, new)}``) and what has to be rebuilt for them."""

    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def rebuild_schedule(self) -> bool:
        return any(k in self.changes for k in SCHEDULE)

    @property
    def reset_optimizer_hparams(self) -> bool:
        return any(k in self.changes for k in OPTIMIZER)

    @property
    def reset_guard(self) -> bool:
        return "lr" in self.changes

    def describe(self) -> str:
        parts = [f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changes.items()]
        tail = "; the lr schedule is rebuilt for the new values" if self.rebuild_schedule else ""
        return ", ".join(parts) + tail


def plan_resume(old: dict[str, Any] | None, new: dict[str, Any], *, where: str, epochs_done: int,
                old_world: int | None, new_world: int) -> ResumePlan:
    """Compare the configuration a checkpoint was trained with (``old``; None for checkpoints of earlier
    versions, which are resumed as they are) with the one asked for; raise a one-line :class:`UsageError`
    for a change that cannot be applied."""
    if old_world is not None and old_world != new_world:
        raise UsageError(f"--resume {where}: the run was trained by {old_world} process(es), this is {new_world}; "
                         f"the data order depends on it: resume with the same world size, or start a new run "
                         f"with --init-from {where}")
    if old is None:
        return ResumePlan()
    for k in FIXED:
        if k in old and old[k] != new.get(k):
            raise UsageError(f"--resume {where}: {k} is {old[k]!r} in the run, {new.get(k)!r} asked; it cannot "
                             f"change on resume: start a new run with --init-from {where}")
    old_hooks, new_hooks = list(old.get("hooks") or []), list(new.get("hooks") or [])
    if new_hooks[: len(old_hooks)] != old_hooks:
        raise UsageError(f"--resume {where}: the run's hooks {old_hooks} can only be extended on resume, got "
                         f"{new_hooks}")
    if new["epochs"] < epochs_done:
        raise UsageError(f"--resume {where}: --epochs {new['epochs']} is fewer than the {epochs_done} epochs the "
                         f"run has trained")
    skip = set(PER_INVOCATION) | {"hooks"}
    changes = {k: (old[k], v) for k, v in new.items() if k in old and k not in skip and old[k] != v}
    return ResumePlan(changes)
