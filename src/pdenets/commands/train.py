"""``pdenets train``: train a model with a recipe, a YAML config and command-line overrides."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from pdenets.commands.common import (
    boolean,
    device_type,
    field_type,
    model_kwarg,
    non_negative_float,
    non_negative_int,
)
from pdenets.errors import UsageError


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``demo`` (defaults None: only given options override)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="registered model name (see `pdenets models`); default qlnet18_eq3_small")
    g.add_argument("--model-kwarg", "-m", dest="model_kwarg", action="append", type=model_kwarg, metavar="KEY=VALUE",
                   help="constructor argument (YAML value), repeatable: -m act=hardball -m widths=[8,8,8,8]")
    g.add_argument("--dataset", help="digits | circles | cifar10 | cifar100 | stl10 | mnist | fashion_mnist | "
                   "imagefolder:PATH (default digits)")
    g.add_argument("--data-dir", help="root of a local torchvision data set")
    g.add_argument("--download", action="store_const", const=True, help="let torchvision download the data set")
    g.add_argument("--img-size", type=field_type("img_size"), help="image side in pixels (digits: 16)")
    g.add_argument("--workers", type=field_type("workers"), help="DataLoader worker processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=field_type("epochs"))
    g.add_argument("--batch-size", "-b", type=field_type("batch_size"), help="batch size per process")
    g.add_argument("--opt", help="timm optimizer name: sgd (Nesterov), momentum, adamw, ...")
    g.add_argument("--lr", type=field_type("lr"), help="peak learning rate")
    g.add_argument("--momentum", type=field_type("momentum"))
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=field_type("weight_decay"))
    g.add_argument("--sched", help="timm scheduler: cosine, multistep, step, none, ...")
    g.add_argument("--warmup-epochs", type=field_type("warmup_epochs"))
    g.add_argument("--min-lr", type=field_type("min_lr"))
    g.add_argument("--decay-milestones", type=field_type("decay_milestones"), nargs="+")
    g.add_argument("--decay-rate", type=field_type("decay_rate"))
    g.add_argument("--smoothing", type=field_type("smoothing"), help="label smoothing")
    g.add_argument("--clip-grad", type=field_type("clip_grad"), help="gradient clipping threshold")
    g.add_argument("--clip-mode", choices=("norm", "value", "agc"))
    g.add_argument("--freeze-bn", action="store_const", const=True, help="keep BatchNorm in eval mode")
    g = p.add_argument_group("augmentation (real image data sets)")
    g.add_argument("--aug", dest="no_aug", action="store_const", const=False, help="enable augmentation")
    g.add_argument("--no-aug", dest="no_aug", action="store_const", const=True, help="disable augmentation")
    g.add_argument("--aa", dest="auto_augment", help="RandAugment spec, e.g. rand-m7-mstd0.5-inc1")
    g.add_argument("--reprob", type=field_type("reprob"), help="random erasing probability")
    g.add_argument("--remode", help="random erasing mode (pixel, rand, const)")
    g.add_argument("--recount", type=field_type("recount"), help="random erasing count")
    g.add_argument("--random-shift", type=field_type("random_shift"), metavar="N",
                   help="digits: random translation by up to N pixels")
    g = p.add_argument_group("machinery")
    g.add_argument("--amp", choices=("bf16", "fp16"), help="automatic mixed precision")
    g.add_argument("--channels-last", action="store_const", const=True)
    g.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    g.add_argument("--ema", action="store_const", const=True, help="exponential moving average of weights")
    g.add_argument("--ema-decay", type=field_type("ema_decay"))
    g.add_argument("--seed", type=field_type("seed"))
    g.add_argument("--deterministic", action="store_const", const=True)
    g.add_argument("--device", type=device_type, help="auto | cpu | cuda[:N]")
    g.add_argument("--threads", type=non_negative_int, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--hook", action="append", metavar="NAME[:VALUE]",
                   help="training hook, repeatable (added to the recipe's hooks), e.g. --hook box:1.0")
    g.add_argument("--nuclear-prox", type=non_negative_float, metavar="LAMBDA",
                   help="shorthand for --hook nuclear-prox:LAMBDA")
    g.add_argument("--tensorboard", action="store_const", const=True, help="also log to RUN/tb")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")
    g.add_argument("--max-steps-per-epoch", type=field_type("max_steps_per_epoch"),
                   help="cut epochs short (smoke runs)")
    g.add_argument("--stop-after", type=field_type("stop_after"),
                   help="stop after N epochs of this invocation (resume later)")
    g.add_argument("--overwrite", action="store_const", const=True, help="let a fresh run replace an earlier run "
                   "in --out (its checkpoints, metrics and report are deleted); without it that is refused")
    g = p.add_argument_group("NaN guard")
    g.add_argument("--nan-guard", type=boolean, metavar="BOOL", help="on (default) / off")
    g.add_argument("--nan-snapshot-every", type=field_type("nan_snapshot_every"), metavar="N",
                   help="in-memory snapshot every N good steps (0: roll back to the last checkpoint)")
    g.add_argument("--nan-lr-factor", type=field_type("nan_lr_factor"), help="lr multiplier per failure (default 0.5)")
    g.add_argument("--nan-max-failures", type=field_type("nan_max_failures"), metavar="K",
                   help="stop after K failures within the window (default 5)")
    g.add_argument("--nan-window", type=field_type("nan_window"), metavar="M",
                   help="window of step attempts over which failures are counted (default 100)")
    g.add_argument("--nan-check-every", type=field_type("nan_check_every"), metavar="N",
                   help="check that the parameters and buffers are finite after every N-th optimizer step "
                   "(default 1; 0: never)")
    g.add_argument("--inject-nan-steps", type=field_type("inject_nan_steps"), nargs="+", metavar="STEP",
                   help="fault injection (testing): NaN output at these step attempts (-1: all)")
    g.add_argument("--inject-nan-module", help="module whose output the injection replaces")


SKIP = {"command", "func", "config", "recipe_arg", "model_kwarg", "hook", "nuclear_prox", "threads", "print_config"}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    ov = {k: v for k, v in vars(args).items() if k not in SKIP and v is not None}
    if args.model_kwarg:
        ov["model_kwargs"] = dict(args.model_kwarg)
    hooks = list(args.hook or [])
    if args.nuclear_prox is not None:
        hooks.append(f"nuclear-prox:{args.nuclear_prox}")
    if hooks:
        ov["extra_hooks"] = hooks
    if getattr(args, "recipe_arg", None):
        ov["recipe"] = args.recipe_arg
    return ov


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pdenets.train.recipes import RECIPES

    p = sub.add_parser(
        "train", help="train a model (recipes, YAML config, resume, NaN guard, torchrun DDP)",
        description="Train a model. Options are resolved as: defaults < --recipe < --config FILE < command "
        "line; the resolved config is saved as RUN/config.yaml. The best checkpoint is chosen on the validation "
        "split; the test split is scored once, at the end, with it. Run directory (--out): metrics.csv/.jsonl, "
        "checkpoints/{last,best}/, summary.json, report.md, curves.png, confusion.png. Multi-process: "
        "torchrun --nproc_per_node=N -m pdenets train ... (gloo on CPU, NCCL on GPU).",
        epilog="recipes: " + ", ".join(RECIPES) + "\nexample: pdenets train --recipe quick --out runs/quick\n"
        "         pdenets train --resume runs/quick        (continue a stopped or killed run; config from the run)\n"
        "         pdenets train --init-from runs/small/checkpoints/best --epochs 3 --out runs/ft",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", dest="recipe_arg", metavar="NAME", help="preset: " + ", ".join(RECIPES))
    p.add_argument("--config", metavar="FILE", help="YAML file of options (keys as in RUN/config.yaml)")
    p.add_argument("--out", help="run directory (default runs/train)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint/run directory, or 'auto': "
                   "from OUT/checkpoints/last if it exists; the run's saved config.yaml is the base (no --model "
                   "needed), options given here override it")
    p.add_argument("--init-from", metavar="ARTIFACT", help="start a fresh run from an artifact's weights and "
                   "structure (a .safetensors file, checkpoint or run directory; a compressed model keeps its "
                   "widths); the model is the artifact's, the data set defaults to the artifact's")
    p.add_argument("--which", dest="init_which", choices=("best", "last"),
                   help="checkpoint of a run directory given to --init-from (default best)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_train_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:

    from pdenets.train.build import preflight
    from pdenets.train.config import resolve_config
    from pdenets.train.trainer import train

    set_threads(args.threads)
    cfg = resolve_config(config_file=args.config, overrides=overrides_from_args(args))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    preflight(cfg)  # unknown hooks, a model the data set cannot feed, refused -m arguments: before any file
    args.interrupt_hint = lambda: resume_hint(cfg.out)
    with deterministic_mode(cfg.deterministic):
        summary = train(cfg)

    if summary is None or os.environ.get("RANK", "0") != "0":
        return 0
    if summary["status"] == "diverged":
        import sys

        print(f"pdenets train: {summary['message']}", file=sys.stderr)
        return 1
    keys = ("model", "dataset", "epochs", "val_top1", "test_top1", "test_top5", "params", "wall_seconds", "status")
    print(json.dumps({k: summary[k] for k in keys}))
    print(f"run directory: {summary['run_dir']}  (report.md, summary.json, checkpoints/)")
    return 0


def resume_hint(out: str) -> str:
    """What to say when a run into ``out`` is interrupted: the command that continues it, if it has a complete
    checkpoint."""
    import shlex

    from pdenets.train.rundir import auto_resume_checkpoint

    try:
        found = auto_resume_checkpoint(out)
    except UsageError:
        found = None
    if found is None:
        return "no epoch had finished, so there is nothing to resume: run the same command again"
    return f"continue with: pdenets train --resume {shlex.quote(str(out))}"


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None/0: keep torch's default); a non-positive value is a usage error."""
    import torch

    if threads:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (torch, cuDNN, cuBLAS workspace) inside the block, when ``enabled``; the
    previous settings are restored on exit, so a run leaves the process as it found it."""
    import torch

    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
        if prev[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = prev[4]
