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
    """All options of :class:`pdenets.train.trainer.Trainer`. Field groups:

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
        last checkpoint), nan_lr_factor (lr multiplier per failure), nan_max_failures (failures within
        nan_window step attempts before stopping), nan_window, nan_check_grads, nan_check_every (check the
        parameters and buffers after every N-th optimizer step; 0: never);
        inject_nan_steps / inject_nan_module: fault injection for tests
        (optimizer-step attempts at which the output of that module is replaced by NaN; -1: every step).
    Output: out (run directory), report (figures + report.md; summary.json is always written), resume
        (None, a checkpoint path, a run directory or 'auto'), overwrite (a fresh run may replace an earlier
        run in ``out``; without it that is refused — nothing of a run is deleted unasked).
    Start: init_from (an artifact, checkpoint or run directory: a fresh run starts from its weights *and*
        structure, e.g. a compressed model keeps its widths; ``model`` becomes its model name),
        init_which ('best' or 'last' checkpoint of a run directory).
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
    nan_window: int = 100
    nan_check_every: int = 1
    nan_check_grads: bool = True
    inject_nan_steps: list[int] = field(default_factory=list)
    inject_nan_module: str | None = None
    # output
    out: str = "runs/train"
    report: bool = True
    resume: str | None = None
    overwrite: bool = False
    recipe: str | None = None
    # start
    init_from: str | None = None
    init_which: str = "best"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, check_dataset: bool = True) -> TrainConfig:
        """Check values a user can get wrong; raise a one-line :class:`UsageError` naming the option.
        ``check_dataset=False``: ``dataset`` is only a label (the trainer was given the data)."""
        from pdenets.datasets import check_dataset_name

        if check_dataset:
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
        if self.nan_window < self.nan_max_failures:
            raise UsageError(f"--nan-window must be at least --nan-max-failures ({self.nan_max_failures}), got "
                             f"{self.nan_window!r}")
        if self.nan_check_every < 0:
            raise UsageError(f"--nan-check-every must be non-negative, got {self.nan_check_every!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise UsageError(f"--amp must be 'bf16' or 'fp16', got {self.amp!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise UsageError(f"--clip-grad must be positive, got {self.clip_grad!r}")
        if self.clip_mode not in ("norm", "value", "agc"):
            raise UsageError(f"--clip-mode must be 'norm', 'value' or 'agc', got {self.clip_mode!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.init_which not in ("best", "last"):
            raise UsageError(f"--which must be 'best' or 'last', got {self.init_which!r}")
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


def saved_run_config(resume: str | None, out: str | None) -> tuple[dict[str, Any], Path] | None:
    """(RUN/config.yaml, RUN) of the run ``resume`` continues: a run, checkpoint or weights path (its
    config.yaml is looked up in it and up to two levels above), or 'auto' (``out``'s, if it holds a
    resumable 'last' checkpoint). None when there is nothing to continue or no saved configuration."""
    if not resume:
        return None
    if resume == "auto":
        run = Path(out or TrainConfig.out)
        if not any((run / "checkpoints" / n / "state.pt").is_file() for n in ("last", "last.old")):
            return None
        candidates = [run]
    else:
        p = Path(resume).expanduser()
        candidates = [p, p.parent, p.parent.parent]
    for c in candidates:
        if (c / "config.yaml").is_file():
            saved = load_yaml(c / "config.yaml")
            return {k: v for k, v in saved.items() if k in FIELD_NAMES}, c
    return None


def _resume_base(saved: dict[str, Any], run: Path, explicit: dict[str, Any], extra_hooks: list[str] | None
                 ) -> dict[str, Any]:
    """The saved configuration < ``explicit`` (file, then command line); hooks not yet saved are appended.
    ``stop_after`` and ``overwrite`` belong to one invocation and are not inherited; ``out`` defaults to the
    run directory."""
    merged = dict(saved)
    merged.pop("stop_after", None)
    merged.pop("overwrite", None)
    merged["out"] = str(run)
    merged.update({k: v for k, v in explicit.items() if k != "recipe"})
    hooks = list(merged.get("hooks") or [])
    merged["hooks"] = hooks + [h for h in extra_hooks or [] if h not in hooks]
    return merged


def _init_from_values(explicit: dict[str, Any]) -> dict[str, Any]:
    """``init_from``: the model is the artifact's (over the recipe's); data set, image size and data dir
    default to the artifact's own (over the recipe's, under explicit values)."""
    from pdenets.train.build import artifact_meta

    meta = artifact_meta(explicit["init_from"], explicit.get("init_which", "best"))
    if explicit.get("model") not in (None, meta["model"]):
        raise UsageError(f"--init-from {explicit['init_from']} holds a {meta['model']!r} model, not "
                         f"{explicit['model']!r}; drop --model")
    if explicit.get("model_kwargs"):
        raise UsageError("--init-from takes the model's constructor arguments from the artifact; drop -m")
    values: dict[str, Any] = dict(model=meta["model"], model_kwargs={})
    values.update({k: meta[k] for k in ("dataset", "img_size", "data_dir") if meta.get(k) is not None})
    return values


def resolve_config(recipe: str | None = None, config_file: str | os.PathLike | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < overrides (``None`` values in overrides are ignored). Validated.

    Resuming (``resume`` set, and the run has a saved ``config.yaml``): the saved configuration replaces
    defaults and recipe, so ``--resume RUN`` needs no ``--model``; the file and overrides still win.
    ``init_from``: see :func:`_init_from_values`. A recipe may depend on the data set
    (:func:`pdenets.train.recipes.get_recipe`): the explicit one, else the artifact's, else the recipe's.
    """
    file_cfg = load_yaml(config_file) if config_file else {}
    _check_keys(file_cfg, f"config file {config_file}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    extra_hooks = overrides.pop("extra_hooks", None)  # appended to the recipe's/file's hooks
    _check_keys(overrides, "overrides")
    explicit = {**file_cfg, **overrides}
    saved = saved_run_config(explicit.get("resume"), explicit.get("out"))
    if saved is not None:
        return TrainConfig(**_resume_base(*saved, explicit, extra_hooks)).validate()
    merged: dict[str, Any] = {}
    recipe = overrides.get("recipe") or file_cfg.get("recipe") or recipe
    init = _init_from_values(explicit) if explicit.get("init_from") else {}
    if recipe:
        merged.update(_recipe_values(recipe, explicit.get("dataset") or init.get("dataset")))
        merged["recipe"] = recipe
    merged.update(init)
    merged.update(explicit)
    if extra_hooks:
        merged["hooks"] = list(merged.get("hooks") or []) + list(extra_hooks)
    return TrainConfig(**merged).validate()


def _recipe_values(name: str, dataset: str | None) -> dict[str, Any]:
    from pdenets.train.recipes import get_recipe

    return get_recipe(name, dataset)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a saved dict (unknown keys from newer versions are ignored)."""
    return TrainConfig(**{k: v for k, v in d.items() if k in FIELD_NAMES})
