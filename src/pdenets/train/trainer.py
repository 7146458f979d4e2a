"""The training loop: :class:`Trainer` (one run, from a resolved config) and :func:`train`.

One code path for one process and for ``torchrun`` DDP (:mod:`pdenets.train.distributed`). Everything that
makes a run reproducible and resumable lives here: seeding, the epoch-seeded DistributedSampler, RNG states
in the checkpoint, the NaN guard (:mod:`pdenets.train.nan_guard`), hooks (:mod:`pdenets.hooks`), model-side
options and the run directory::

    RUN/config.yaml            the resolved configuration
    RUN/metrics.csv / .jsonl   one row per epoch (+ events: nan, resume, stop) in the .jsonl
    RUN/checkpoints/last/      artifact (model.safetensors + meta.json) + state.pt  (exact resume)
    RUN/checkpoints/best/      artifact of the best validation top-1 (ties: lower validation loss)
    RUN/summary.json           val_top1 (best), test_top1/test_top5 of the best weights (percent), params ...
    RUN/report.md, curves.png, confusion.png (the test split)

Validation picks the best checkpoint after every epoch; the test split is scored **once**, at the end,
with the best checkpoint's weights (not for a run stopped by ``stop_after``: it has not ended).

``cfg.deterministic`` is a process-wide switch, so library code does not flip it: ``pdenets train`` runs
the trainer inside :func:`pdenets.commands.train.deterministic_mode`; Python callers who want it wrap
:meth:`Trainer.fit` the same way.

Model-side options (duck-typed, all optional): ``model.param_lr_scales() -> dict[str, float]`` gives
parameters their own lr factor (:mod:`pdenets.train.optim`); ``model.constrain_()`` is called under
``torch.no_grad()`` once before training and after every optimizer step (after the hooks' ``after_step``),
e.g. to keep the Ruseckas nets' γ̃ ≥ 0.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from pdenets.errors import RunFailed, UsageError
from pdenets.hooks import TrainHook
from pdenets.train import checkpoint as ckpt
from pdenets.train.build import (
    build_model,
    check_build_record,
    check_classes,
    model_create_kwargs,
    model_from_artifact,
)
from pdenets.train.config import TrainConfig, config_from_dict
from pdenets.train.data import DataSplits, batch_indices, build_loaders, to_device
from pdenets.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from pdenets.train.evaluate import autocast_ctx, evaluate
from pdenets.train.metrics import MetricsLogger
from pdenets.train.nan_guard import (
    NanGuard,
    NaNInjector,
    first_nonfinite_grad,
    first_nonfinite_module,
    first_nonfinite_state,
)
from pdenets.train.optim import LrControl, build_optimizer, build_scheduler
from pdenets.train.resume import ResumePlan, plan_resume
from pdenets.train.rng import gather_rng_states, restore_rank_rng, rng_state, seed_everything
from pdenets.train.rundir import RunLock, auto_resume_checkpoint, clear_run, existing_run

__all__ = ["Trainer", "TrainingDiverged", "evaluate", "resolve_resume", "train"]


class TrainingDiverged(RunFailed):
    """A non-finite step without the NaN guard (with it, the run stops with status 'diverged' instead)."""


def resolve_resume(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The 'last' checkpoint directory to resume from: ``cfg.resume`` a path, or 'auto' (the newest complete
    checkpoint of ``run_dir``; None for a directory without a run; an error for a run without a complete
    checkpoint, see :func:`pdenets.train.rundir.auto_resume_checkpoint`)."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        return auto_resume_checkpoint(run_dir)
    p = ckpt.resolve_checkpoint(cfg.resume, prefer="last")
    if p.is_file():
        p = p.parent
    problem = ckpt.checkpoint_problem(p)
    if problem is not None:
        raise ckpt.CheckpointError(f"cannot resume from {str(p)!r}: {problem} (only complete 'last' "
                                   f"checkpoints hold the training state)")
    return p


def _artifact_epoch(path: Path) -> int | None:
    """The ``epoch`` recorded in a checkpoint's meta.json (None when it has none or cannot be read)."""
    try:
        return int(json.loads((path / ckpt.META).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_train_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    """``model.train()``, BatchNorm layers kept in eval mode with ``freeze_bn``."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def constrain(model: nn.Module) -> None:
    """Apply the model's ``constrain_()`` (if it has one) under no_grad."""
    fn = getattr(model, "constrain_", None)
    if callable(fn):
        with torch.no_grad():
            fn()


def _max_rank_weight_diff(model: nn.Module, d: DistInfo) -> float:
    """max |w_rank - w_rank0| over all parameters and ranks (0 when DDP kept the replicas in sync)."""
    import torch.distributed as tdist

    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    ref = flat.clone()
    tdist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    tdist.all_reduce(diff, op=tdist.ReduceOp.MAX)
    return float(diff)


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` trains ``cfg.model`` on ``cfg.dataset`` and writes ``cfg.out``.

    Args:
        cfg: a :class:`~pdenets.train.config.TrainConfig` (see its docstring for every field) or a dict of its
            fields; build one from a recipe with :func:`pdenets.train.config.resolve_config`. Not modified.
        model: train this module instead of building ``cfg.model``. It must carry a build record (built by
            :func:`pdenets.create_model` or loaded with :func:`pdenets.load`), so its checkpoints rebuild it.
        data: use these splits instead of building ``cfg.dataset`` (which is then only a label).

    Attributes after :meth:`fit`: :attr:`model` (the trained model), ``summary``, ``run_dir``.
    """

    def __init__(self, cfg: TrainConfig | dict[str, Any], *, model: nn.Module | None = None,
                 data: DataSplits | None = None) -> None:
        cfg = config_from_dict(cfg) if isinstance(cfg, dict) else dataclasses.replace(cfg)
        self.cfg = cfg.validate(check_dataset=data is None)
        self._given_model, self._given_data = model, data
        self.run_dir = Path(cfg.out)
        self.epoch, self.step, self.attempts = 0, 0, 0
        self.best: dict[str, float] = dict(top1=-1.0, loss=math.inf, epoch=-1)
        self._best_state: dict[str, torch.Tensor] | None = None
        self._final: nn.Module | None = None
        self._rng: Any = None
        self.summary: dict[str, Any] | None = None

    # ---- the whole run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train, score the test split once with the best weights, write the run directory; returns the
        summary (also ``RUN/summary.json``): model, dataset, epochs, steps, val_top1 (best validation top-1),
        best_epoch, test_top1/test_top5 (percent), test_loss, test_samples, params, wall_seconds, status
        ('completed', 'stopped' after ``stop_after`` epochs — then the test_* values are None — or
        'diverged' when the NaN guard gave up), message, run_dir, checkpoint (the best/ directory),
        nan_failures, ..."""
        t_start = time.time()
        self.dist = init_distributed(self.cfg.device)
        self._lock: RunLock | None = None
        try:
            self.setup()
            status, message = self.run_epochs(t_start)
            self.summary = self.finish(status, message, t_start)
            barrier(self.dist)  # rank 0 writes the report: let every rank reach the teardown together (gloo)
            return self.summary
        finally:
            if hasattr(self, "logger"):
                self.logger.close()
            if self._lock is not None:
                self._lock.release()
            cleanup(self.dist)

    @property
    def model(self) -> nn.Module:
        """The trained, unwrapped model (EMA weights with ``cfg.ema``): after :meth:`fit`, the best
        checkpoint's weights, i.e. the model whose test score the summary reports."""
        if self._final is not None:
            return self._final
        if not hasattr(self, "net"):
            raise RuntimeError("Trainer.model: call fit() first")
        return self.eval_net

    @property
    def eval_net(self) -> nn.Module:
        """The module that is evaluated and saved as best: the EMA copy with ``cfg.ema``, else the model."""
        return self.ema.module if self.ema is not None else self.net

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Run directory, data, model, optimizer, scheduler, EMA, hooks, NaN guard; resume if asked."""
        cfg, d = self.cfg, self.dist
        self._prepare_run_dir()
        self.resume_state = ckpt.load_training_state(self.resume_dir) if self.resume_dir is not None else None
        self.plan = self._plan_resume()
        seed_everything(cfg.seed)
        self.logger = MetricsLogger(self.run_dir, enabled=d.is_main, tensorboard=cfg.tensorboard)
        self.loaders = build_loaders(cfg, d, self._given_data)
        self.info = self.loaders.info
        self.net = self._setup_model().to(d.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        constrain(self.net)
        self.n_params = sum(p.numel() for p in self.net.parameters())
        seed_everything(cfg.seed + d.rank)  # per-rank augmentation streams; model init above is shared
        self._setup_optimization()
        self._setup_machinery()
        self.meta = dict(num_classes=self.info.num_classes, in_chans=self.info.in_chans,
                         in_features=self.info.in_features, kind=self.info.kind, dataset=cfg.dataset,
                         data_dir=cfg.data_dir, img_size=self.loaders.img_size, class_names=self.info.class_names,
                         crop_pct=cfg.crop_pct, params=self.n_params, init_from=cfg.init_from)
        if self.resume_dir is not None:
            self.restore(self.resume_dir)
            self._after_resume()
        if d.is_main:
            import yaml

            ckpt.atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if self.guard is not None:
            self.guard.snapshot_epoch(self.step, self._epoch_extra())
        self.train_net = self._wrap(self.net)

    def _prepare_run_dir(self) -> None:
        """Rank 0 locks the run directory, drops temporary checkpoints of killed runs and refuses to replace
        an earlier run without ``overwrite``; then every rank picks the checkpoint to resume from."""
        error = ""
        if self.dist.is_main:
            try:
                self._claim_run_dir()
            except UsageError as e:
                error = str(e)
        if self._flag(bool(error)):
            raise UsageError(error or "rank 0 refused the run directory (see its message)")
        self.resume_dir = resolve_resume(self.cfg, self.run_dir)

    def _claim_run_dir(self) -> None:
        cfg, run = self.cfg, self.run_dir
        if run.exists() and not run.is_dir():
            raise UsageError(f"--out {str(run)!r} is a file; give a directory")
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the run directory {str(run)!r}: {e.strerror}") from None
        self._lock = RunLock(run).acquire()
        for stale in (run / "checkpoints").glob("*.tmp-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        for stale in run.glob(".*.tmp-*"):  # a metrics/summary file of a killed run's atomic write
            stale.unlink(missing_ok=True)
        if resolve_resume(cfg, run) is not None:
            return
        found = existing_run(run)
        if found and not cfg.overwrite:
            raise UsageError(f"{run} already holds a run ({', '.join(found)}); continue it with --resume auto, "
                             f"replace it with --overwrite, or choose another --out")
        clear_run(run)  # an empty directory, or --overwrite: start clean (also events of a killed first epoch)

    def _setup_model(self) -> nn.Module:
        """The given model, else the resume checkpoint's artifact, else ``--init-from``'s, else ``cfg.model``."""
        cfg = self.cfg
        if self._given_model is not None:
            model = self._given_model
        elif self.resume_dir is not None:
            model, _ = model_from_artifact(self.resume_dir, "last")
        elif cfg.init_from:
            model, meta = model_from_artifact(cfg.init_from, cfg.init_which)
            check_classes(meta, self.info, f"--init-from {cfg.init_from}")
        else:
            model = build_model(cfg.model, model_create_kwargs(cfg.model, self.info, cfg.model_kwargs))
        cfg.model = check_build_record(model)["model"]
        return model.train()

    def _setup_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(self.net, cfg)
        steps = len(self.loaders.train)
        self.steps_per_epoch = min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
        if self.steps_per_epoch == 0:
            raise UsageError(f"the training split of {cfg.dataset!r} has fewer samples than one batch")
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.lrc = LrControl(self.optimizer, self.scheduler)

    def _setup_machinery(self) -> None:
        """Grad scaler, EMA, hooks, loss, NaN guard and the fault injector."""
        from pdenets.hooks import create_hook

        cfg = self.cfg
        self.scaler = torch.amp.GradScaler(self.dist.device.type) if cfg.amp == "fp16" else None
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.net, decay=cfg.ema_decay)
        try:
            self.hooks = [create_hook(s) for s in cfg.hooks]
        except ValueError as e:
            raise UsageError(str(e)) from None
        if cfg.smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy

            self.loss_fn: nn.Module = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.loss_fn = nn.CrossEntropyLoss()
        self.guard = None
        if cfg.nan_guard:
            self.guard = NanGuard(self.net, self.optimizer, scaler=self.scaler, ema=self.ema, hooks=self.hooks,
                                  snapshot_every=cfg.nan_snapshot_every, lr_factor=cfg.nan_lr_factor,
                                  max_failures=cfg.nan_max_failures, window=cfg.nan_window,
                                  log_event=self.logger.log_event, checkpoint_restore=self._restore_last)
        self.injector = NaNInjector(self.net, cfg.inject_nan_module, cfg.inject_nan_steps) \
            if cfg.inject_nan_steps else None

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP under torchrun, then ``torch.compile`` with ``cfg.compile``."""
        d = self.dist
        if d.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        return torch.compile(model) if self.cfg.compile else model

    @property
    def guard_scale(self) -> float:
        return self.guard.lr_scale if self.guard is not None else 1.0

    # ---- save and restore --------------------------------------------------------------------------
    def training_state(self, epoch_done: int) -> dict[str, Any]:
        """Everything :meth:`restore` needs for an exact resume (tensors and plain containers only)."""
        return dict(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            hooks=[h.state_dict() for h in self.hooks],
            nan_guard=self.guard.state_dict() if self.guard is not None else None,
            progress=dict(epoch=epoch_done, step=self.step, best_top1=self.best["top1"],
                          best_epoch=self.best["epoch"], best_loss=self.best["loss"], attempts=self.attempts),
            sched_lrs=list(self.lrc.sched_lrs), rng=self._rng if self._rng is not None else rng_state(),
            world_size=self.dist.world_size, config=self.cfg.to_dict(),
        )

    def save(self, name: str = "last", epoch_done: int | None = None) -> Path | None:
        """Write checkpoint ``RUN/checkpoints/NAME`` (artifact + training state; rank 0 only)."""
        if not self.dist.is_main:
            return None
        epoch_done = self.epoch if epoch_done is None else epoch_done
        meta = dict(self.meta, epoch=epoch_done, step=self.step)
        return ckpt.save_checkpoint(self.run_dir / "checkpoints" / name, self.net, meta,
                                    self.training_state(epoch_done))

    def save_best(self, val_top1: float) -> None:
        """Keep the evaluated weights in memory (every rank) and write ``checkpoints/best`` (rank 0)."""
        self._best_state = {k: v.detach().clone() for k, v in self.eval_net.state_dict().items()}
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best", self.eval_net,
                                 dict(self.meta, epoch=self.epoch, step=self.step, val_top1=val_top1))

    def restore(self, ckpt_dir: str | Path, *, full: bool = True) -> None:
        """Load a 'last' checkpoint: weights, optimizer and grad scaler; with ``full`` (resume) also the
        scheduler, EMA, hooks, NaN guard, progress, lr state and this rank's RNG states — and the options
        the resume changes (:attr:`plan`, :mod:`pdenets.train.resume`) are applied on top."""
        tensors, _ = ckpt.read_weights(ckpt_dir)
        state = self.resume_state if full and self.resume_state is not None else ckpt.load_training_state(ckpt_dir)
        plan = self.plan if full else ResumePlan()
        self.net.load_state_dict(tensors)
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        if plan.changes:  # the new weight decay, momentum, base lr ... replace the saved hyperparameters
            for g, f in zip(self.optimizer.param_groups, fresh):
                g.update({k: v for k, v in f.items() if k != "lr"})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if not full:
            return
        if self.scheduler is not None and state.get("scheduler") is not None and not plan.rebuild_schedule:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for h, hs in zip(self.hooks, state.get("hooks", [])):
            h.load_state_dict(hs)
        if self.guard is not None and state.get("nan_guard") and not plan.reset_guard:
            self.guard.load_state_dict(state["nan_guard"])
        p = state["progress"]
        self.epoch, self.step = int(p["epoch"]), int(p["step"])
        self.attempts = int(p.get("attempts", self.step))
        self.best = dict(top1=float(p["best_top1"]), epoch=int(p["best_epoch"]),
                         loss=float(p.get("best_loss", math.inf)))
        if plan.rebuild_schedule:
            self.lrc.schedule(self.guard_scale, num_updates=self.step)  # the new schedule at this step
        else:
            self.lrc.sched_lrs = list(state["sched_lrs"])
        self.lrc.apply(self.guard_scale)
        restore_rank_rng(state["rng"], self.dist)

    def _plan_resume(self) -> ResumePlan:
        """The resume's changes of options (refused ones raise, see :mod:`pdenets.train.resume`)."""
        if self.resume_state is None:
            return ResumePlan()
        st = self.resume_state
        return plan_resume(st.get("config"), self.cfg.to_dict(), where=str(self.resume_dir),
                           epochs_done=int(st["progress"]["epoch"]), old_world=st.get("world_size"),
                           new_world=self.dist.world_size)

    def _after_resume(self) -> None:
        """Log (and say) the resume and what it changes; repair ``best/`` when a kill landed between the
        'last' and 'best' writes of the resumed epoch; drop metrics rows of epochs that are trained again."""
        msg = self.plan.describe()
        self.logger.log_event(dict(event="resume", checkpoint=str(self.resume_dir), epoch=self.epoch,
                                   step=self.step, changes={k: list(v) for k, v in self.plan.changes.items()}))
        if self.dist.is_main:
            if msg:
                tqdm.write(f"resume at epoch {self.epoch}: {msg} (lr now {self.lrc.lr:.3g})", file=sys.stderr)
            self.logger.truncate(self.epoch)
            best_dir = self.run_dir / "checkpoints" / "best"
            if self.best["epoch"] == self.epoch and self.epoch > 0 and _artifact_epoch(best_dir) != self.epoch:
                self.save_best(self.best["top1"])

    def _restore_last(self) -> bool:
        """The NaN guard's rollback with ``nan_snapshot_every=0``: weights + optimizer of checkpoints/last."""
        try:
            p = ckpt.resolve_checkpoint(self.run_dir, prefer="last")
        except ckpt.CheckpointError:
            return False
        if not (p / ckpt.STATE).is_file():
            return False
        self.restore(p, full=False)
        return True

    # ---- training ----------------------------------------------------------------------------------
    def run_epochs(self, t_start: float) -> tuple[str, str]:
        """Epochs from the current one to ``cfg.epochs``; returns (status, message). An epoch whose
        validation loss is not finite is trained again from its start (NaN guard)."""
        cfg = self.cfg
        epochs_run, epoch = 0, self.epoch
        while epoch < cfg.epochs:
            t_ep = time.time()
            outcome = "stop" if self.train_epoch(epoch) else self.end_epoch(epoch, t_ep, t_start)
            if outcome == "stop":
                return "diverged", self._give_up(epoch)
            if outcome == "retry":
                continue
            epoch += 1
            epochs_run += 1
            if cfg.stop_after and epochs_run >= cfg.stop_after and epoch < cfg.epochs:
                self.logger.log_event(dict(event="stop", reason="stop_after", epoch=epoch, step=self.step))
                return "stopped", ""
        return "completed", ""

    def train_epoch(self, epoch: int) -> bool:
        """One epoch of steps; returns True when the NaN guard asks to stop."""
        cfg = self.cfg
        self.loaders.train_sampler.set_epoch(epoch)
        self._idx_batches = batch_indices(self.loaders.train) if self.guard is not None else None
        set_train_mode(self.train_net, cfg.freeze_bn)
        self._sums = [0.0, 0, 0, 0.0] + [0.0] * len(self.hooks)  # loss, correct, seen, data loss, each penalty
        self._t_epoch = time.time()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True)
        try:
            for b, (x, y) in enumerate(self.loaders.train):
                if b >= self.steps_per_epoch:
                    break
                outcome = self.train_step(x, y, epoch, b)
                if outcome == "stop":
                    return True
                if outcome == "ok" and (b % max(cfg.log_interval, 1) == 0 or b == self.steps_per_epoch - 1):
                    self._progress(bar)
                bar.update(1)
        finally:
            bar.close()
        return False

    def _progress(self, bar: tqdm) -> None:
        loss_sum, correct, seen = self._sums[:3]
        elapsed = max(time.time() - self._t_epoch, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{100 * correct / max(seen, 1):.1f}",
                        lr=f"{self.lrc.lr:.2e}", img_s=f"{seen * self.dist.world_size / elapsed:.0f}")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> str:
        """Forward, backward, checks, optimizer step; returns 'ok', 'skipped' (NaN guard) or 'stop'."""
        if self.injector is not None:
            self.injector.attempt = epoch * self.steps_per_epoch + batch
        x, y = to_device(x, y, self.dist.device, self.cfg.channels_last)
        with autocast_ctx(self.dist.device, self.cfg.amp):
            out = self.train_net(x)
            loss = data_loss = self.loss_fn(out, y)
            pens = [h.penalty(self.net) for h in self.hooks]
            for pen in pens:
                if pen is not None:
                    loss = loss + pen
        self.attempts += 1
        reason, bad_param = self._backward(loss, out)
        if reason:
            return self._handle_failure(reason, bad_param, x, epoch, batch)
        self._optimizer_step()
        self._apply_constraints()
        checked = self._check_weights_now()
        if checked:
            bad = first_nonfinite_state(self.net) if self.guard is not None else None
            if self._flag(bad is not None):
                self.step -= 1  # the step is undone by the rollback
                return self._handle_failure("non-finite weights after the step", bad, x, epoch, batch)
        self._after_step(checked)
        with torch.no_grad():
            self._sums[0] += loss.item() * len(y)
            self._sums[1] += int((out.argmax(1) == y).sum())
            self._sums[2] += len(y)
            self._sums[3] += data_loss.item() * len(y)
            for i, pen in enumerate(pens):
                if pen is not None:
                    self._sums[4 + i] += pen.item() * len(y)
        return "ok"

    def _flag(self, bad: bool) -> bool:
        """True if any rank is bad."""
        return all_reduce_sum(torch.tensor([1.0 if bad else 0.0], device=self.dist.device), self.dist).item() > 0

    def _backward(self, loss: torch.Tensor, out: torch.Tensor) -> tuple[str, str | None]:
        """Backward pass unless the loss is non-finite on some rank; returns (failure reason or '', bad param)."""
        if self._flag(not bool(torch.isfinite(loss))):
            return ("non-finite loss" if torch.isfinite(out).all() else "non-finite output"), None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.guard is not None and self.cfg.nan_check_grads and self.scaler is None:
            bad_param = first_nonfinite_grad(self.net)
            if self._flag(bad_param is not None):
                return "non-finite gradient", bad_param
        return "", None

    def _handle_failure(self, reason: str, bad_param: str | None, x: torch.Tensor, epoch: int, batch: int) -> str:
        step = self.step
        if self.guard is None:
            raise TrainingDiverged(f"{reason} at step {step} (epoch {epoch + 1}, batch {batch}); the run is kept "
                                   f"at its last checkpoint; turn the NaN guard on (--nan-guard on) to roll back "
                                   f"and continue")
        module = first_nonfinite_module(self.net, lambda: self.net(x)) if "weights" not in reason else None
        idx = self._idx_batches
        samples = idx[batch] if idx is not None and batch < len(idx) else []
        stop = self.guard.handle(step=step, epoch=epoch + 1, batch=batch, reason=reason, sample_indices=samples,
                                 module=module, param=bad_param, attempt=self.attempts)
        self.lrc.apply(self.guard.lr_scale)
        if self.dist.is_main:
            tqdm.write(f"NaN guard: {reason} at step {step} (epoch {epoch + 1}, batch {batch}), first in module "
                       f"{module or bad_param or '?'}; restored, lr x{self.guard.lr_scale:g}, batch skipped",
                       file=sys.stderr)
        return "stop" if stop else "skipped"

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if cfg.clip_grad is not None:
            from timm.utils import dispatch_clip_grad

            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.net.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1

    def _apply_constraints(self) -> None:
        """Hooks' after_step (proximal steps ...) and the model's constraint, right after the optimizer step."""
        if self.hooks:
            lr_now = self.lrc.lr
            with torch.no_grad():
                for h in self.hooks:
                    h.after_step(self.net, lr_now)
        constrain(self.net)

    def _check_weights_now(self) -> bool:
        k = self.cfg.nan_check_every
        return self.guard is not None and k > 0 and self.step % k == 0

    def _after_step(self, checked: bool = True) -> None:
        """EMA, the schedule and the guard's bookkeeping (a snapshot only of weights that were checked)."""
        if self.ema is not None:
            self.ema.update(self.net, step=self.step)
        self.lrc.schedule(self.guard_scale, num_updates=self.step)
        if self.guard is not None:
            self.guard.good_step(self.step, checked=checked)

    def _epoch_extra(self) -> dict[str, Any]:
        """What the epoch snapshot keeps besides the model state: the step and the schedule's lr values."""
        return dict(sched_lrs=list(self.lrc.sched_lrs), attempts=self.attempts)

    def _rewind_to_epoch_start(self) -> None:
        """Load the NaN guard's epoch-boundary state (weights, optimizer, EMA, hooks, step, schedule)."""
        extra = self.guard.restore_epoch()
        self.step = int(extra["step"])
        self.lrc.sched_lrs = list(extra["sched_lrs"])
        self.lrc.apply(self.guard_scale)

    def _give_up(self, epoch: int) -> str:
        """The NaN guard gives up: back to the last completed epoch, kept as checkpoints/last (written now
        if the failures came in the first epoch); the message says what happened and how to continue."""
        g, cfg = self.guard, self.cfg
        self._rewind_to_epoch_start()
        last = self.run_dir / "checkpoints" / "last"
        if self.dist.is_main and (self.epoch == 0 or ckpt.checkpoint_problem(last) is not None):
            self.save("last", self.epoch)
        lr = cfg.lr * g.lr_scale * 0.1
        msg = (f"training diverged: {len(g.recent)} non-finite steps within {cfg.nan_window} step attempts (last "
               f"at step {self.step}, epoch {epoch + 1}; {g.total_failures} in all, lr reduced to x{g.lr_scale:g}); "
               f"the run is kept at the end of epoch {self.epoch} in {last}; continue with: pdenets train "
               f"--resume {self.run_dir} --lr {lr:.3g}")
        self.logger.log_event(dict(event="stop", reason="nan", step=self.step, epoch=epoch + 1, message=msg))
        return msg

    # ---- end of an epoch -----------------------------------------------------------------------------
    def end_epoch(self, epoch: int, t_ep: float, t_start: float) -> str:
        """Epoch-wise schedule, validation, metrics row, 'last' and (if better) 'best' checkpoints; returns
        'ok', or 'retry' / 'stop' when the validation loss is not finite (NaN guard: the epoch is trained
        again from its start at a reduced lr, or the guard gives up)."""
        d = self.dist
        self.lrc.schedule(self.guard_scale, epoch=epoch + 1)
        ep_seconds = time.time() - t_ep
        sums = all_reduce_sum(torch.tensor(self._sums, dtype=torch.float64, device=d.device), d)
        if d.distributed:
            from timm.utils import distribute_bn

            distribute_bn(self.net, d.world_size, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, d.world_size, reduce=True)
        val = self.validate()
        if not math.isfinite(val["loss"]):
            return self._failed_validation(epoch)
        self.epoch = epoch + 1
        b = self.best
        is_best = val["top1"] > b["top1"] or (val["top1"] == b["top1"] and val["loss"] < b["loss"])
        if is_best:
            self.best = dict(top1=val["top1"], loss=val["loss"], epoch=self.epoch)
        n_seen = max(sums[2].item(), 1.0)
        row = dict(epoch=self.epoch, train_loss=sums[0].item() / n_seen, train_top1=100 * sums[1].item() / n_seen,
                   val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], lr=self.lrc.lr,
                   img_per_s=sums[2].item() / max(ep_seconds, 1e-9), epoch_seconds=ep_seconds,
                   wall_seconds=time.time() - t_start, nan_failures=self.guard.total_failures if self.guard else 0)
        row.update(self._loss_terms(sums, n_seen))
        self.logger.log_epoch(row)
        self._print_epoch(row)
        self._rng = gather_rng_states(d)  # every rank's streams, so that resume continues each of them
        self.save("last", self.epoch)  # a kill before 'best' is written: resume repairs it (_after_resume)
        if is_best:
            self.save_best(val["top1"])
        if self.guard is not None:
            self.guard.snapshot_epoch(self.step, self._epoch_extra())
        barrier(d)
        return "ok"

    def _loss_terms(self, sums: torch.Tensor, n_seen: float) -> dict[str, float]:
        """The epoch means of the data loss (``train_data_loss``) and of each penalty hook's term (``reg_NAME``;
        ``train_loss`` is their sum), docs/design.md §14."""
        terms = dict(train_data_loss=sums[3].item() / n_seen)
        for i, h in enumerate(self.hooks):
            if type(h).penalty is TrainHook.penalty:
                continue  # a hook without a penalty (box, nuclear-prox): no column
            name, k = f"reg_{h.name or type(h).__name__}", 1
            while (name if k == 1 else f"{name}_{k}") in terms:
                k += 1
            terms[name if k == 1 else f"{name}_{k}"] = sums[4 + i].item() / n_seen
        return terms

    def _failed_validation(self, epoch: int) -> str:
        """A non-finite validation loss: a NaN-guard failure (back to the epoch's start, lr reduced)."""
        reason = f"non-finite validation loss after epoch {epoch + 1}"
        if self.guard is None:
            raise TrainingDiverged(f"{reason}; the run is kept at its last checkpoint; turn the NaN guard on "
                                   f"(--nan-guard on) to roll back and continue")
        stop = self.guard.handle(step=self.step, epoch=epoch + 1, batch=-1, reason=reason, sample_indices=[],
                                 module=None, attempt=self.attempts, restore=False)
        self._rewind_to_epoch_start()
        if self.dist.is_main:
            tqdm.write(f"NaN guard: {reason}; back to the start of the epoch, lr x{self.guard.lr_scale:g}",
                       file=sys.stderr)
        return "stop" if stop else "retry"

    def validate(self) -> dict[str, Any]:
        """Top-1 / top-5 / loss of the evaluated weights on the validation split."""
        cfg = self.cfg
        return evaluate(self.eval_net, self.loaders.val, self.dist.device, amp=cfg.amp,
                        channels_last=cfg.channels_last, dist_info=self.dist)

    def _print_epoch(self, row: dict[str, Any]) -> None:
        """One line per epoch (about 50 lines in all for long runs: every ⌊epochs/50⌋-th and the last)."""
        n = self.cfg.epochs
        if not self.dist.is_main or (row["epoch"] % max(1, n // 50) and row["epoch"] != n):
            return
        tqdm.write(f"epoch {row['epoch']}/{n}: train loss {row['train_loss']:.4f} acc {row['train_top1']:.2f}% | "
                   f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% | "
                   f"lr {row['lr']:.2e} | {row['img_per_s']:.0f} img/s | {row['epoch_seconds']:.1f}s",
                   file=sys.stderr)

    # ---- the end -------------------------------------------------------------------------------------
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The best validation weights: kept in memory, or read from checkpoints/best of a resumed run."""
        if self._best_state is not None:
            return self._best_state
        if self.resume_dir is not None and self.best["epoch"] > 0:
            return ckpt.read_weights(self.run_dir / "checkpoints" / "best")[0]
        return None

    def test(self) -> dict[str, Any]:
        """Score the test split once, with the best weights (the current ones if no epoch completed)."""
        net = copy.deepcopy(self.eval_net)
        best = self.best_weights()
        if best is not None:
            net.load_state_dict(best)
        self._final = net.eval()
        cfg = self.cfg
        return evaluate(net, self.loaders.test, self.dist.device, num_classes=self.info.num_classes, amp=cfg.amp,
                        channels_last=cfg.channels_last, dist_info=self.dist, confusion=True)

    def finish(self, status: str, message: str, t_start: float) -> dict[str, Any]:
        """Test score, summary, report and summary.json."""
        cfg, d = self.cfg, self.dist
        test = self.test() if status != "stopped" else {}
        rank_diff = _max_rank_weight_diff(self.net, d) if d.distributed else 0.0
        ck = self.run_dir / "checkpoints"
        summary = dict(
            model=cfg.model, dataset=cfg.dataset, recipe=cfg.recipe, epochs=self.epoch, epochs_planned=cfg.epochs,
            steps=self.step, val_top1=max(self.best["top1"], 0.0), best_epoch=self.best["epoch"],
            test_top1=test.get("top1"), test_top5=test.get("top5"), test_loss=test.get("loss"),
            test_samples=test.get("n"), params=self.n_params, wall_seconds=time.time() - t_start, status=status,
            message=message, nan_failures=self.guard.total_failures if self.guard else 0, world_size=d.world_size,
            device=str(d.device), img_size=self.loaders.img_size, ddp_max_rank_weight_diff=rank_diff,
            run_dir=str(self.run_dir), checkpoint=str(ck / "best"), last_checkpoint=str(ck / "last"),
            init_from=cfg.init_from)
        summary["best_top1"] = summary["val_top1"]  # the name of earlier versions
        if d.is_main:
            summary["confusion"] = test.get("confusion")
            summary["class_names"] = self.info.class_names
            if cfg.report:
                from pdenets.train.report import write_report

                write_report(self.run_dir, cfg.to_dict(), summary)
            ckpt.atomic_write_text(self.run_dir / "summary.json", json.dumps(
                {k: v for k, v in summary.items() if k not in ("confusion", "class_names")}, indent=2))
        return summary


def train(cfg: TrainConfig | dict[str, Any], *, model: nn.Module | None = None,
          data: DataSplits | None = None) -> dict[str, Any]:
    """``Trainer(cfg, model=model, data=data).fit()``: one whole run; returns its summary (see
    :meth:`Trainer.fit`)."""
    return Trainer(cfg, model=model, data=data).fit()
