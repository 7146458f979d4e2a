"""The training engine: :func:`train` (a whole run, from a resolved config) and :func:`evaluate`.

One code path for one process and for ``torchrun`` DDP (:mod:`pdenets.train.distributed`). Everything
that makes a run reproducible and resumable lives here: seeding, the epoch-seeded DistributedSampler,
RNG states in the checkpoint, the NaN guard (:mod:`pdenets.train.nan_guard`), hooks
(:mod:`pdenets.train.hooks`) and the run directory::

    RUN/config.yaml            the resolved configuration
    RUN/metrics.csv / .jsonl   one row per epoch (+ events: nan, resume, stop) in the .jsonl
    RUN/checkpoints/last/      model.safetensors + state.pt + meta.json  (exact resume)
    RUN/checkpoints/best/      model.safetensors + meta.json            (best val top-1)
    RUN/summary.json           final metrics (test_top1/test_top5 in percent, params, wall_seconds ...)
    RUN/report.md, curves.png, confusion.png
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pdenets.errors import UsageError
from pdenets.train import checkpoint as ckpt
from pdenets.train.config import TrainConfig, config_from_dict
from pdenets.train.data import batch_indices, build_loaders, to_device
from pdenets.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from pdenets.train.metrics import MetricsLogger, topk_correct
from pdenets.train.nan_guard import NanGuard, NaNInjector, first_nonfinite_grad, first_nonfinite_module


class TrainingDiverged(RuntimeError):
    """The NaN guard gave up after ``nan_max_failures`` failures in a row."""


# ---- small helpers --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), numpy=[np_state[0], torch.from_numpy(np_state[1].copy()),
                                                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors_to_numpy(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.cpu().numpy()
    if isinstance(obj, dict):
        return {k: _tensors_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v) for v in obj)
    return obj


def _numpy_to_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _numpy_to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy_to_tensors(v) for v in obj)
    return obj


def model_create_kwargs(name: str, info, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor keywords for ``create_model(name)`` on a data set: ``num_classes`` and ``in_chans`` for
    image models; for other models only those of ``num_classes`` / ``in_features`` / ``in_chans`` that the
    constructor accepts."""
    from pdenets.models import is_image_model, registry

    kw: dict[str, Any] = {}
    if is_image_model(name):
        kw = dict(num_classes=info.num_classes, in_chans=info.in_chans)
    else:
        fn = registry._OTHER_MODELS.get(name)
        if fn is None:
            raise UsageError(f"unknown model {name!r} (see `pdenets models`)")
        params = inspect.signature(fn).parameters
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        wanted = dict(num_classes=info.num_classes, in_features=info.in_features,
                      in_chans=info.in_chans if info.kind == "image" else None)
        kw = {k: v for k, v in wanted.items() if v is not None and (k in params or var_kw)}
    kw.update(model_kwargs or {})
    return kw


def build_model(name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    from pdenets.models import create_model, list_models

    if name not in list_models():
        import timm

        if not timm.is_model(name):
            raise UsageError(f"unknown model {name!r} (see `pdenets models`)")
    try:
        return create_model(name, **create_kwargs)
    except TypeError as e:
        raise UsageError(f"model {name!r} does not accept these arguments: {e}") from None


def set_train_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def autocast_ctx(device: torch.device, amp: str | None):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


# ---- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu", *, num_classes: int | None = None,
             amp: str | None = None, channels_last: bool = False, dist_info: DistInfo | None = None,
             confusion: bool = False, progress: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent), mean cross-entropy and sample count of ``model`` on ``loader``.

    Under DDP each rank evaluates its shard and the sums are all-reduced. ``confusion=True`` adds the
    confusion matrix (rows: true class, columns: predicted class) as a nested list.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # n, top1, top5
    cm = None
    for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress, file=sys.stderr):
        x, y = to_device(x, y, device, channels_last)
        with autocast_ctx(device, amp):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        c1, c5 = topk_correct(out, y)
        counts += torch.tensor([len(y), c1, c5], dtype=torch.float64, device=device)
        if confusion:
            k = num_classes or out.shape[1]
            if cm is None:
                cm = torch.zeros(k, k, dtype=torch.float64, device=device)
            cm += torch.bincount(y * k + out.argmax(1), minlength=k * k).reshape(k, k).to(cm)
    d = dist_info or DistInfo()
    loss_sum, counts = all_reduce_sum(loss_sum, d), all_reduce_sum(counts, d)
    model.train(was_training)
    n = max(counts[0].item(), 1.0)
    res: dict[str, Any] = dict(top1=100.0 * counts[1].item() / n, top5=100.0 * counts[2].item() / n,
                               loss=loss_sum.item() / n, n=int(counts[0].item()))
    if confusion:
        if cm is None:
            cm = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.float64, device=device)
        res["confusion"] = all_reduce_sum(cm, d).long().cpu().tolist()
    return res


def _max_rank_weight_diff(model: nn.Module, d: DistInfo) -> float:
    """max |w_rank - w_rank0| over all parameters and ranks (0 when DDP kept the replicas in sync)."""
    import torch.distributed as tdist

    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    ref = flat.clone()
    tdist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    tdist.all_reduce(diff, op=tdist.ReduceOp.MAX)
    return float(diff)


# ---- training -------------------------------------------------------------------------------------


def _resolve_resume(cfg: TrainConfig, run_dir: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        try:
            p = ckpt.resolve_checkpoint(run_dir, prefer="last")
        except ckpt.CheckpointError:
            return None
        return p if (p / ckpt.STATE).is_file() else None
    p = ckpt.resolve_checkpoint(cfg.resume, prefer="last")
    if p.is_file():
        p = p.parent
    if not (p / ckpt.STATE).is_file():
        raise ckpt.CheckpointError(f"cannot resume from {str(p)!r}: no {ckpt.STATE} (only 'last' checkpoints "
                                   f"hold the training state)")
    return p


def train(cfg: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` and write the run directory ``cfg.out``; returns the summary.

    ``cfg`` is a :class:`~pdenets.train.config.TrainConfig` (see its docstring for every field) or a dict
    of its fields; build one from a recipe with :func:`pdenets.train.config.resolve_config`. The summary
    (also ``RUN/summary.json``) holds ``model``, ``dataset``, ``epochs``, ``test_top1``/``test_top5``
    (percent), ``test_loss``, ``best_top1``, ``params``, ``wall_seconds``, ``status`` ('completed',
    'stopped' after ``stop_after`` epochs, or 'diverged' when the NaN guard gave up), ``run_dir``,
    ``checkpoint`` and ``nan_failures``.
    """
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    cfg.validate()
    t_start = time.time()
    d = init_distributed(cfg.device)
    try:
        return _train(cfg, d, t_start)
    finally:
        cleanup(d)


def _train(cfg: TrainConfig, d: DistInfo, t_start: float) -> dict[str, Any]:
    run_dir = Path(cfg.out)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / "checkpoints").glob("*.tmp-*"):  # left by a run killed while saving
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
    barrier(d)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(cfg.seed)
    resume_dir = _resolve_resume(cfg, run_dir)
    logger = MetricsLogger(run_dir, enabled=d.is_main, tensorboard=cfg.tensorboard)

    # data and model
    loaders = build_loaders(cfg, d)
    info = loaders.info
    create_kwargs = model_create_kwargs(cfg.model, info, cfg.model_kwargs)
    model = build_model(cfg.model, create_kwargs).to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    seed_everything(cfg.seed + d.rank)  # per-rank augmentation streams; model init above is shared

    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    try:
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
    except (ValueError, AssertionError) as e:
        raise UsageError(f"--opt {cfg.opt!r}: {e}") from None
    steps_per_epoch = len(loaders.train)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise UsageError(f"the training split of {cfg.dataset!r} has fewer samples than one batch")
    scheduler = None
    if cfg.sched not in ("none", "const"):
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
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(d.device.type) if cfg.amp == "fp16" else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    from pdenets.train.hooks import create_hook

    try:
        hooks = [create_hook(s) for s in cfg.hooks]
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.smoothing > 0:
        from timm.loss import LabelSmoothingCrossEntropy

        train_loss_fn: nn.Module = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    meta = dict(model=cfg.model, create_kwargs=create_kwargs, num_classes=info.num_classes,
                in_chans=info.in_chans, in_features=info.in_features, kind=info.kind, dataset=cfg.dataset,
                data_dir=cfg.data_dir, img_size=loaders.img_size, class_names=info.class_names,
                crop_pct=cfg.crop_pct, params=n_params)

    # state shared with the guard
    st = dict(epoch=0, step=0, best_top1=-1.0, best_epoch=-1)
    sched_lrs = list(base_lrs)

    def apply_lr(guard_scale: float) -> None:
        for g, lr in zip(optimizer.param_groups, sched_lrs):
            g["lr"] = lr * guard_scale

    def schedule(num_updates: int | None = None, epoch: int | None = None) -> None:
        """Let the scheduler set the lr (from the unscaled values), then apply the NaN guard's factor."""
        if scheduler is not None:
            apply_lr(1.0)
            if num_updates is not None:
                scheduler.step_update(num_updates)
            if epoch is not None:
                scheduler.step(epoch)
            sched_lrs[:] = [g["lr"] for g in optimizer.param_groups]
        apply_lr(guard.lr_scale if guard else 1.0)

    def restore_from_last() -> bool:
        try:
            p = ckpt.resolve_checkpoint(run_dir, prefer="last")
        except ckpt.CheckpointError:
            return False
        if not (p / ckpt.STATE).is_file():
            return False
        tensors, _ = ckpt.read_weights(p)
        model.load_state_dict(tensors)
        state = ckpt.load_training_state(p)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        return True

    guard = None
    if cfg.nan_guard:
        guard = NanGuard(model, optimizer, scaler=scaler, ema=ema, hooks=hooks,
                         snapshot_every=cfg.nan_snapshot_every, lr_factor=cfg.nan_lr_factor,
                         max_failures=cfg.nan_max_failures, log_event=logger.log_event,
                         checkpoint_restore=restore_from_last)
    injector = NaNInjector(model, cfg.inject_nan_module, cfg.inject_nan_steps) if cfg.inject_nan_steps else None

    start_epoch = 0
    if resume_dir is not None:
        tensors, _ = ckpt.read_weights(resume_dir)
        model.load_state_dict(tensors)
        state = ckpt.load_training_state(resume_dir)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        for h, hs in zip(hooks, state.get("hooks", [])):
            h.load_state_dict(hs)
        if guard is not None and state.get("nan_guard"):
            guard.load_state_dict(state["nan_guard"])
        st.update(state["progress"])
        sched_lrs[:] = list(state["sched_lrs"])
        start_epoch = st["epoch"]
        rs = state["rng"]
        set_rng_state(rs[d.rank] if isinstance(rs, list) and d.rank < len(rs) else rs)
        logger.log_event(dict(event="resume", checkpoint=str(resume_dir), epoch=start_epoch, step=st["step"]))
    elif d.is_main:
        for f in ("metrics.csv", "metrics.jsonl"):
            (run_dir / f).unlink(missing_ok=True)
    if d.is_main:
        import yaml

        ckpt.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if guard is not None:
        guard.snapshot(st["step"])

    train_model: nn.Module = model
    if d.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    def save_last(epoch_done: int, name: str = "last") -> Path | None:
        if not d.is_main:
            return None
        state = dict(
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler else None,
            scaler=scaler.state_dict() if scaler is not None else None,
            ema=ema.state_dict() if ema is not None else None, hooks=[h.state_dict() for h in hooks],
            nan_guard=guard.state_dict() if guard else None, progress=dict(st, epoch=epoch_done),
            sched_lrs=list(sched_lrs), rng=all_rng if all_rng is not None else rng_state(), world_size=d.world_size,
        )
        return ckpt.save_checkpoint(run_dir / "checkpoints" / name, model,
                                    dict(meta, epoch=epoch_done, step=st["step"]), state)

    eval_model = (lambda: ema.module) if ema is not None else (lambda: model)
    status, stop_msg = "completed", ""
    epochs_run = 0
    last_eval: dict[str, Any] = {}
    all_rng: Any = None
    for epoch in range(start_epoch, cfg.epochs):
        t_ep = time.time()
        loaders.train_sampler.set_epoch(epoch)
        idx_batches = batch_indices(loaders.train) if guard is not None else None
        set_train_mode(train_model, cfg.freeze_bn)
        loss_sum, correct, seen = 0.0, 0, 0
        n_good = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=not (cfg.progress and d.is_main), dynamic_ncols=True)
        diverged = False
        for b, (x, y) in enumerate(loaders.train):
            if b >= steps_per_epoch:
                break
            attempt = epoch * steps_per_epoch + b
            if injector is not None:
                injector.attempt = attempt
            x, y = to_device(x, y, d.device, cfg.channels_last)
            with autocast_ctx(d.device, cfg.amp):
                out = train_model(x)
                loss = train_loss_fn(out, y)
                for h in hooks:
                    pen = h.penalty(model)
                    if pen is not None:
                        loss = loss + pen
            bad_flag = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=d.device)
            bad_flag = all_reduce_sum(bad_flag, d)
            reason, bad_param = "", None
            if bad_flag.item() > 0:
                reason = "non-finite loss" if torch.isfinite(out).all() else "non-finite output"
            else:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                if guard is not None and cfg.nan_check_grads and scaler is None:
                    bad_param = first_nonfinite_grad(model)
                    g_flag = all_reduce_sum(torch.tensor([1.0 if bad_param else 0.0], device=d.device), d)
                    if g_flag.item() > 0:
                        reason = "non-finite gradient"
            if reason:
                if guard is None:
                    raise TrainingDiverged(f"{reason} at step {st['step']} (epoch {epoch + 1}, batch {b}); "
                                           f"enable the NaN guard (--nan-guard) to roll back and continue")
                module = first_nonfinite_module(model, lambda x=x: model(x))
                samples = idx_batches[b] if idx_batches is not None and b < len(idx_batches) else []
                stop = guard.handle(step=st["step"], epoch=epoch + 1, batch=b, reason=reason,
                                    sample_indices=samples, module=module, param=bad_param)
                apply_lr(guard.lr_scale)
                if d.is_main:
                    tqdm.write(f"NaN guard: {reason} at step {st['step']} (epoch {epoch + 1}, batch {b}), first in "
                               f"module {module or bad_param or '?'}; restored, lr x{guard.lr_scale:g}, batch "
                               f"skipped", file=sys.stderr)
                bar.update(1)
                if stop:
                    diverged = True
                    break
                continue
            if cfg.clip_grad is not None:
                from timm.utils import dispatch_clip_grad

                if scaler is not None:
                    scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            st["step"] += 1
            lr_now = optimizer.param_groups[0]["lr"]
            if hooks:
                with torch.no_grad():
                    for h in hooks:
                        h.after_step(model, lr_now)
            if ema is not None:
                ema.update(model, step=st["step"])
            schedule(num_updates=st["step"])
            if guard is not None:
                guard.good_step(st["step"])
            n_good += 1
            with torch.no_grad():
                loss_sum += loss.item() * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
            elapsed = max(time.time() - t_ep, 1e-9)
            if b % max(cfg.log_interval, 1) == 0 or b == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{100 * correct / max(seen, 1):.1f}",
                                lr=f"{lr_now:.2e}", img_s=f"{seen * d.world_size / elapsed:.0f}")
            bar.update(1)
        bar.close()
        if diverged:
            status = "diverged"
            ck = save_last(epoch, name="nan_stop") if d.is_main else None
            stop_msg = (f"training stopped: {cfg.nan_max_failures} non-finite steps in a row at step {st['step']} "
                        f"(epoch {epoch + 1}); the last good state is saved in {ck}; resume from "
                        f"{run_dir / 'checkpoints' / 'last'} with a smaller --lr")
            logger.log_event(dict(event="stop", reason="nan", step=st["step"], epoch=epoch + 1, message=stop_msg))
            break
        schedule(epoch=epoch + 1)
        ep_seconds = time.time() - t_ep
        sums = all_reduce_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=d.device), d)
        if d.distributed:
            from timm.utils import distribute_bn

            distribute_bn(model, d.world_size, reduce=True)
            if ema is not None:
                distribute_bn(ema.module, d.world_size, reduce=True)
        last_eval = evaluate(eval_model(), loaders.eval, d.device, amp=cfg.amp, channels_last=cfg.channels_last,
                             dist_info=d)
        st["epoch"] = epoch + 1
        is_best = last_eval["top1"] > st["best_top1"]
        if is_best:
            st["best_top1"], st["best_epoch"] = last_eval["top1"], epoch + 1
        n_seen = max(sums[2].item(), 1.0)
        row = dict(epoch=epoch + 1, train_loss=sums[0].item() / n_seen, train_top1=100 * sums[1].item() / n_seen,
                   val_loss=last_eval["loss"], val_top1=last_eval["top1"], val_top5=last_eval["top5"],
                   lr=optimizer.param_groups[0]["lr"], img_per_s=sums[2].item() / max(ep_seconds, 1e-9),
                   epoch_seconds=ep_seconds, wall_seconds=time.time() - t_start,
                   nan_failures=guard.total_failures if guard else 0)
        logger.log_epoch(row)
        if d.is_main:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc "
                       f"{row['train_top1']:.2f}% | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% "
                       f"top-5 {row['val_top5']:.2f}% | lr {row['lr']:.2e} | {row['img_per_s']:.0f} img/s | "
                       f"{ep_seconds:.1f}s", file=sys.stderr)
        # RNG states of every rank (rank 0 saves them) so that resume continues each rank's streams
        local_rng = rng_state()
        if d.distributed:
            import torch.distributed as tdist

            gathered: list[Any] = [None] * d.world_size
            tdist.all_gather_object(gathered, _tensors_to_numpy(local_rng))  # tensors do not pickle through gloo
            all_rng = [_numpy_to_tensors(g) for g in gathered]
        else:
            all_rng = local_rng
        save_last(epoch + 1)
        if is_best and d.is_main:
            ckpt.save_checkpoint(run_dir / "checkpoints" / "best", eval_model(),
                                 dict(meta, epoch=epoch + 1, step=st["step"], val_top1=last_eval["top1"]))
        barrier(d)
        epochs_run += 1
        if cfg.stop_after and epochs_run >= cfg.stop_after and epoch + 1 < cfg.epochs:
            status = "stopped"
            logger.log_event(dict(event="stop", reason="stop_after", epoch=epoch + 1, step=st["step"]))
            break

    # final evaluation (with the confusion matrix) of the last weights (the EMA weights with --ema)
    final = evaluate(eval_model(), loaders.eval, d.device, num_classes=info.num_classes, amp=cfg.amp,
                     channels_last=cfg.channels_last, dist_info=d, confusion=True)
    rank_diff = _max_rank_weight_diff(model, d) if d.distributed else 0.0
    summary = dict(
        model=cfg.model, dataset=cfg.dataset, recipe=cfg.recipe, epochs=st["epoch"], epochs_planned=cfg.epochs,
        steps=st["step"], test_top1=final["top1"], test_top5=final["top5"], test_loss=final["loss"],
        test_samples=final["n"], best_top1=max(st["best_top1"], 0.0), best_epoch=st["best_epoch"],
        params=n_params, wall_seconds=time.time() - t_start, status=status, message=stop_msg,
        nan_failures=guard.total_failures if guard else 0, world_size=d.world_size, device=str(d.device),
        img_size=loaders.img_size, ddp_max_rank_weight_diff=rank_diff, run_dir=str(run_dir),
        checkpoint=str(run_dir / "checkpoints" / "last"),
    )
    logger.close()
    if d.is_main:
        summary["confusion"] = final["confusion"]
        summary["class_names"] = info.class_names
        if cfg.report:
            from pdenets.train.report import write_report

            write_report(run_dir, cfg.to_dict(), summary)
        ckpt.atomic_write_text(run_dir / "summary.json", json.dumps(
            {k: v for k, v in summary.items() if k not in ("confusion", "class_names")}, indent=2))
    return summary
