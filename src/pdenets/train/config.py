"""The training configuration: one flat dataclass, resolved as defaults < recipe < YAML file < overrides.

``resolve_config(recipe=..., config_file=..., overrides={...})`` returns a validated :class:`TrainConfig`;
``cfg.to_dict()`` is what is saved as ``config.yaml`` in the run directory (and with every checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdenets.errors import UsageError


@dataclass
class TrainConfig:
    """All options of :func:`pdenets.train.engine.train`. Field groups:

    Model / data:
        model: registered model name.  model_kwargs: extra keyword arguments of the constructor.
        dataset: see :data:`pdenets.datasets.DATASETS`.  data_dir: root of local torchvision data.
        download: let torchvision download (off by default).  img_size: image side (None: data set default).
        workers: DataLoader workers.  crop_pct / interpolation: evaluation resize (timm semantics).
    Optimisation (timm factories):
        epochs, batch_size (per process), eval_batch_size (None: 2 × batch_size), opt ('sgd' = Nesterov SGD,
        'momentum', 'adamw', ... — anything timm's create_optimizer_v2 knows), lr, momentum, weight_decay,
        sched ('cosine', 'multistep', 'step', 'none', ...), warmup_epochs, warmup_lr, min_lr,
        decay_milestones, decay_epochs, decay_rate, smoothing (label smoothing), clip_grad (None: off),
        clip_mode ('norm', 'value', 'agc'), freeze_bn (BatchNorm kept in eval mode while training).
    Augmentation (timm's create_transform; real image sets only): no_aug, auto_augment ('rand-m7-mstd0.5-inc1'),
        reprob / remode / recount (random erasing), hflip, scale, color_jitter; random_shift: random
        translation by up to N pixels of the digits' training images (independent of no_aug).
    Machinery: amp (None, 'bf16', 'fp16'), channels_last, compile, ema (+ ema_decay), seed, deterministic,
        device ('auto', 'cpu', 'cuda'), hooks (list of 'NAME[:VALUE]' training hooks), tensorboard, progress,
        log_interval, max_steps_per_epoch (None: the whole epoch; for smoke runs and tests), stop_after
        (stop after this many epochs of this invocation; the schedule still spans ``epochs``).
    NaN guard: nan_guard (on/off), nan_snapshot_every (in-memory snapshot every N good steps; 0: use the
        last checkpoint), nan_lr_factor (lr multiplier per failure), nan_max_failures (consecutive failures
        before stopping), nan_check_grads; inject_nan_steps / inject_nan_module: fault injection for tests
        (optimizer-step attempts at which the output of that module is replaced by NaN; -1: every step).
    Output: out (run directory), report (figures + report.md; summary.json is always written), resume
        (None, a checkpoint path, a run directory or 'auto').
    """

    # model / data
    model: str = "qlnet18_eq3_small"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None
    workers: int = 0
    crop_pct: float | None = None
    interpolation: str = "bilinear"
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int | None = None
    opt: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_milestones: list[int] = field(default_factory=lambda: [90, 180, 270])
    decay_epochs: float | None = None
    decay_rate: float = 0.1
    smoothing: float = 0.0
    clip_grad: float | None = None
    clip_mode: str = "norm"
    freeze_bn: bool = False
    # augmentation
    no_aug: bool = True
    auto_augment: str | None = None
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    hflip: float = 0.5
    scale: list[float] | None = None
    color_jitter: float | None = None
    random_shift: int = 0
    # machinery
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.998
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    hooks: list[str] = field(default_factory=list)
    tensorboard: bool = False
    progress: bool = True
    log_interval: int = 10
    max_steps_per_epoch: int | None = None
    stop_after: int | None = None
    # NaN guard
    nan_guard: bool = True
    nan_snapshot_every: int = 50
    nan_lr_factor: float = 0.5
    nan_max_failures: int = 5
    nan_check_grads: bool = True
    inject_nan_steps: list[int] = field(default_factory=list)
    inject_nan_module: str | None = None
    # output
    out: str = "runs/train"
    report: bool = True
    resume: str | None = None
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Check values a user can get wrong; raise a one-line :class:`UsageError` naming the option."""
        from pdenets.datasets import check_dataset_name

        check_dataset_name(self.dataset)
        positive_int = dict(epochs=self.epochs, batch_size=self.batch_size, recount=self.recount)
        for k, v in positive_int.items():
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
        for k in ("eval_batch_size", "max_steps_per_epoch", "stop_after", "img_size"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UsageError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be a positive number, got {self.lr!r}")
        for k in ("weight_decay", "momentum", "smoothing", "reprob", "warmup_lr", "min_lr", "random_shift"):
            if getattr(self, k) < 0:
                raise UsageError(f"--{k.replace('_', '-')} must be non-negative, got {getattr(self, k)!r}")
        if self.warmup_epochs < 0 or self.workers < 0 or self.nan_snapshot_every < 0:
            raise UsageError("--warmup-epochs, --workers and --nan-snapshot-every must be non-negative")
        if not 0 < self.nan_lr_factor <= 1:
            raise UsageError(f"--nan-lr-factor must be in (0, 1], got {self.nan_lr_factor!r}")
        if self.nan_max_failures < 1:
            raise UsageError(f"--nan-max-failures must be a positive integer, got {self.nan_max_failures!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise UsageError(f"--amp must be 'bf16' or 'fp16', got {self.amp!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise UsageError(f"--clip-grad must be positive, got {self.clip_grad!r}")
        if self.clip_mode not in ("norm", "value", "agc"):
            raise UsageError(f"--clip-mode must be 'norm', 'value' or 'agc', got {self.clip_mode!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not 0 < self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in (0, 1), got {self.ema_decay!r}")
        return self


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise UsageError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(p)!r} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _check_keys(d: dict[str, Any], where: str) -> None:
    unknown = sorted(set(d) - FIELD_NAMES)
    if unknown:
        raise UsageError(f"unknown option(s) in {where}: {', '.join(unknown)}")


def resolve_config(recipe: str | None = None, config_file: str | os.PathLike | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < overrides (``None`` values in overrides are ignored). Validated."""
    from pdenets.train.recipes import get_recipe

    file_cfg = load_yaml(config_file) if config_file else {}
    _check_keys(file_cfg, f"config file {config_file}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    extra_hooks = overrides.pop("extra_hooks", None)  # appended to the recipe's/file's hooks
    _check_keys(overrides, "overrides")
    recipe = overrides.get("recipe") or file_cfg.get("recipe") or recipe
    merged: dict[str, Any] = {}
    if recipe:
        merged.update(get_recipe(recipe))
        merged["recipe"] = recipe
    merged.update(file_cfg)
    merged.update(overrides)
    if extra_hooks:
        merged["hooks"] = list(merged.get("hooks") or []) + list(extra_hooks)
    return TrainConfig(**merged).validate()


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a saved dict (unknown keys from newer versions are ignored)."""
    return TrainConfig(**{k: v for k, v in d.items() if k in FIELD_NAMES})
