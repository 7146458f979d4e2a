"""The training configuration: one flat dataclass, resolved as defaults < recipe < YAML file < overrides.

``resolve_config(recipe=..., config_file=..., overrides={...})`` returns a validated :class:`TrainConfig`;
``cfg.to_dict()`` is what is saved as ``config.yaml`` in the run directory (and with every checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
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
        """Check every value a user can get wrong (types, ranges, names, paths, device); raise a one-line
        :class:`UsageError` naming the option (:func:`validate_config`). ``check_dataset=False``: ``dataset``
        is only a label (the trainer was given the data)."""
        validate_config(self, check_dataset)
        return self


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}


# ---- validation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: ``lo``..``hi`` (None: unbounded), each end open or closed; a float must
    also be finite. ``text`` replaces the generated description in messages."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))

    def describe(self, integer: bool) -> str:
        """'a positive integer', 'a finite number in [0, 1)', ..."""
        if self.text:
            return self.text
        art, noun = ("an", "integer") if integer else ("a", "finite number")
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return f"{art} {noun}"
        if hi is None:
            if lo == 0 or (integer and lo == 1 and not self.lo_open):
                return f"a {'positive' if self.lo_open or lo == 1 else 'non-negative'} {noun}"
            return f"{art} {noun} {'>' if self.lo_open else '>='} {lo:g}"
        if lo is None:
            return f"{art} {noun} {'<' if self.hi_open else '<='} {hi:g}"
        return f"{art} {noun} in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"


POSITIVE, NON_NEGATIVE = Range(0, lo_open=True), Range(0)
SEED_RANGE = Range(-(2**63), 2**63 - 1, text="an integer in [-2^63, 2^63 - 1] (64 bits)")

# Allowed numbers of every numeric field (for a list field: of each element); types come from the annotations.
FIELD_RANGES: dict[str, Range] = dict(
    img_size=Range(1), workers=NON_NEGATIVE, crop_pct=Range(0, 1, lo_open=True),
    epochs=Range(1), batch_size=Range(1), eval_batch_size=Range(1), lr=POSITIVE, momentum=Range(0, 1),
    weight_decay=NON_NEGATIVE, warmup_epochs=NON_NEGATIVE, warmup_lr=NON_NEGATIVE, min_lr=NON_NEGATIVE,
    decay_milestones=NON_NEGATIVE, decay_epochs=POSITIVE, decay_rate=POSITIVE, smoothing=Range(0, 1, hi_open=True),
    clip_grad=POSITIVE, reprob=Range(0, 1), recount=Range(1), hflip=Range(0, 1), scale=POSITIVE,
    color_jitter=NON_NEGATIVE, random_shift=NON_NEGATIVE, ema_decay=Range(0, 1, lo_open=True, hi_open=True),
    seed=SEED_RANGE, log_interval=Range(1), max_steps_per_epoch=Range(1), stop_after=Range(1),
    nan_snapshot_every=NON_NEGATIVE, nan_lr_factor=Range(0, 1, lo_open=True), nan_max_failures=Range(1),
    nan_window=Range(1), nan_check_every=NON_NEGATIVE, inject_nan_steps=Range(-1),
)
# Fields whose value is one of a fixed set of names (None allowed where the field is optional).
FIELD_CHOICES: dict[str, tuple[str, ...]] = dict(
    interpolation=("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos", "random"),
    clip_mode=("norm", "value", "agc"), remode=("pixel", "rand", "const"), amp=("bf16", "fp16"),
    init_which=("best", "last"),
)
PATH_FIELDS = ("data_dir", "out", "resume", "init_from")
# Command-line spellings that are not --FIELD-NAME.
OPTION_NAMES = dict(model_kwargs="-m/--model-kwarg", auto_augment="--aa", init_which="--which", hooks="--hook",
                    no_aug="--aug/--no-aug", progress="--no-progress")


def option_name(field_name: str) -> str:
    """The command-line spelling of a field: ``lr`` -> ``--lr``, ``init_which`` -> ``--which``."""
    return OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type (``bool`` is not an ``int``; an ``int`` is a ``float``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return hint is Any or isinstance(value, hint)


def _expected(name: str, hint: Any) -> str:
    """What a field accepts, in words (for messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_expected(name, a) if a is not type(None) else "null" for a in args)
    if origin is list:
        return f"a list of {_expected(name, args[0]).split(' ', 1)[1].replace('integer', 'integers')}"
    if origin is dict:
        return "a mapping of KEY: VALUE"
    if hint is bool:
        return "true or false (a YAML boolean, not a string)"
    if hint in (int, float):
        return FIELD_RANGES.get(name, Range()).describe(hint is int)
    return "a string" if hint is str else str(hint)


def _check_types_and_ranges(cfg: TrainConfig) -> None:
    hints = field_hints()
    for f in dataclasses.fields(cfg):
        v, hint = getattr(cfg, f.name), hints[f.name]
        if f.name in PATH_FIELDS and isinstance(v, os.PathLike):  # a pathlib.Path from Python: saved as text
            v = os.fspath(v)
            setattr(cfg, f.name, v)
        rng = FIELD_RANGES.get(f.name, Range())
        numbers = [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
        if not _matches(v, hint) or not all(rng.contains(x) for x in numbers if isinstance(x, (int, float))):
            raise UsageError(f"{option_name(f.name)} must be {_expected(f.name, hint)}, got {v!r}")
        choices = FIELD_CHOICES.get(f.name)
        if choices and v is not None and v not in choices:
            raise UsageError(f"{option_name(f.name)} must be one of {', '.join(choices)}, got {v!r}")


@functools.lru_cache(maxsize=1)
def field_hints() -> dict[str, Any]:
    """The resolved type annotations of the :class:`TrainConfig` fields."""
    return typing.get_type_hints(TrainConfig)


def numeric_kind(name: str) -> type | None:
    """``int`` or ``float`` for a numeric field (or a list of numbers), else None."""
    hint = field_hints().get(name)
    todo, seen = [hint], set()
    while todo:
        h = todo.pop()
        if h in (int, float):
            seen.add(h)
        todo += typing.get_args(h)
    return float if float in seen else int if int in seen else None


def _check_relations(cfg: TrainConfig) -> None:
    """Options that constrain each other."""
    if cfg.nan_window < cfg.nan_max_failures:
        raise UsageError(f"--nan-window must be at least --nan-max-failures ({cfg.nan_max_failures}), got "
                         f"{cfg.nan_window!r}")
    if cfg.scale is not None and (len(cfg.scale) != 2 or cfg.scale[0] > cfg.scale[1]):
        raise UsageError(f"scale must be two numbers [low, high] with low <= high, got {cfg.scale!r}")


def _check_names(cfg: TrainConfig, check_dataset: bool) -> None:
    """Names looked up in a registry: data set, optimizer, scheduler, recipe (hooks are resolved when a run
    starts, :func:`pdenets.train.build.preflight`)."""
    from pdenets.train.optim import SCHEDULERS, check_optimizer_name

    if check_dataset:
        from pdenets.datasets import check_dataset_name

        check_dataset_name(cfg.dataset)
    check_optimizer_name(cfg.opt)
    if cfg.sched not in SCHEDULERS:
        raise UsageError(f"--sched must be one of {', '.join(SCHEDULERS)}, got {cfg.sched!r}")
    if cfg.recipe is not None:
        from pdenets.train.recipes import RECIPES

        if cfg.recipe not in RECIPES:
            raise UsageError(f"unknown recipe {cfg.recipe!r}; expected one of: {', '.join(RECIPES)}")


def validate_config(cfg: TrainConfig, check_dataset: bool = True) -> None:
    """Every field against its annotated type (an int field refuses a bool, a bool field a string such as
    "false", a float field a non-finite number), its :data:`FIELD_RANGES` / :data:`FIELD_CHOICES` entry, the
    registries (data set, optimizer, scheduler, recipe), the output path and the device."""
    _check_types_and_ranges(cfg)
    _check_relations(cfg)
    _check_names(cfg, check_dataset)
    check_device(cfg.device)
    check_out_path(cfg.out)
    for k in ("resume", "init_from"):
        v = getattr(cfg, k)
        if v and not (k == "resume" and v == "auto") and not Path(v).expanduser().exists():
            raise UsageError(f"{option_name(k)} {v!r} does not exist")


def check_device(spec: Any, option: str = "--device") -> str:
    """``auto``, ``cpu``, or ``cuda[:N]`` with such a CUDA device present; else a :class:`UsageError`."""
    if spec in ("auto", "cpu"):
        return spec
    if isinstance(spec, str) and (spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"{option} {spec}: no CUDA device is available here; use --device cpu (or auto)")
        if spec != "cuda" and int(spec[5:]) >= n:
            raise UsageError(f"{option} {spec}: there are {n} CUDA device(s), cuda:0 .. cuda:{n - 1}")
        return spec
    raise UsageError(f"{option} must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}")


def check_out_path(value: Any, option: str = "--out", kind: str = "dir", suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an output path that cannot be written, before any work is done: empty, an existing file where a
    directory is meant (``kind='dir'``; a file with one of ``suffixes`` is allowed) or an existing directory
    where a file is meant (``kind='file'``), below a file, or in a directory without write permission."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{option} must be a path, got {value!r}")
    p = Path(value).expanduser()
    if kind == "file" and p.is_dir():
        raise UsageError(f"{option} {value!r} is a directory; give a file name")
    if kind == "dir" and p.exists() and not p.is_dir() and p.suffix not in suffixes:
        also = f" or a {' / '.join(suffixes)} file" if suffixes else ""
        raise UsageError(f"{option} {value!r} is an existing file; give a directory{also}")
    q = p.absolute()
    base = q if q.is_dir() else next(a for a in q.parents if a.exists())
    if not base.is_dir():
        raise UsageError(f"{option} {value!r}: {str(base)!r} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {value!r}: cannot write in {str(base)!r} (permission denied)")
    return p


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
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    return {k: _yaml_number(v) if numeric_kind(k) is float else v for k, v in data.items()}


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _yaml_number(v: Any) -> Any:
    """``1e-3`` of a float option as a number: YAML 1.1 (PyYAML) reads scientific notation without a dot as a
    string."""
    return float(v) if isinstance(v, str) and _SCIENTIFIC.fullmatch(v.strip()) else v


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
