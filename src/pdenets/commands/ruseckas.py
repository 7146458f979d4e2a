"""``pdenets ruseckas circles|digits``: train Ruseckas' ODE networks (§5) and write the paper's figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdenets.commands.common import (
    check_out,
    non_negative_float,
    positive_float,
    positive_int,
    probability,
    seed_int,
)

CIRCLE_MODELS = {"r2": "ruseckas_circles_r2", "r3": "ruseckas_circles_r3"}
# Per-model defaults of the circles runs (chosen by the measured runs in README.md "Ruseckas").
CIRCLE_DEFAULTS = {
    "r2": dict(epochs=1000, lr=0.01, optimizer="sgd", gamma_lr_scale=1.0),  # 0.001 keeps γ̃ ≈ 0 (README)
    "r3": dict(epochs=2000, lr=0.02, optimizer="sgd", gamma_lr_scale=0.01),
}


def _common(p: argparse.ArgumentParser, lam: float) -> None:
    p.add_argument("--out", default=None, help="folder for figures and metrics.json; the trainer's run "
                   "directories (checkpoints, metrics per epoch) go to OUT/runs/<model> (default runs/ruseckas-<task>)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: per model/task)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="SGD (Nesterov momentum) or Adam")
    p.add_argument("--momentum", type=probability, default=0.9, help="SGD momentum in [0, 1] (default 0.9)")
    p.add_argument("--lam", type=non_negative_float, default=lam,
                   help=f"λ of the smoothness loss Eq. (113) (default {lam})")
    p.add_argument("--clip", type=non_negative_float, default=1.0, help="gradient-norm clipping, 0 = off (default 1.0)")
    p.add_argument("--gamma-lr-scale", type=positive_float, default=None,
                   help="learning-rate factor of the learnable γ̃ (its gradient sums over all L layers)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the model, the shuffling and (circles) the points "
                   "(default 0)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--overwrite", action="store_true", help="replace the training runs of an earlier invocation "
                   "in OUT/runs (refused without it)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ruseckas",
        help="train Ruseckas' ODE networks (circles, digits/MNIST) and draw the paper's figures",
        description="Ruseckas, 'Differential equations as models of deep neural networks' §5: the ODE "
        "network dx/dt = Wx + b - γx³ discretised by forward Euler (Eq. 109), all parameters initialised "
        "to zero, trained with cross entropy + the layer-smoothness loss of Eq. (113) (hook layer-smooth:λ) by the "
        "trainer of `pdenets train` (recipe ruseckas2019).",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    c = tasks.add_parser(
        "circles",
        help="§5.1: two noisy concentric circles, model 1 (R², L=100) and model 2 (R³, L=20)",
        description="Train model 1 (ruseckas_circles_r2: R², L=100, learnable γ̃, softmax; 601 parameters) "
        "and/or model 2 (ruseckas_circles_r3: R³ with one zero dimension, L=20, γ̃=0.1, sigmoid of x₃; "
        "240 parameters) on the circles splits of `pdenets train --dataset circles` (400 points, radii 1 and 2, "
        "σ=0.2: 255 train / 45 val / 100 test), full batch, λ=1.0, and report the test accuracy. Writes "
        "<model>_transformed.png (Fig. 2b/5a), <model>_trajectories.png (Fig. 2c/5b), "
        "<model>_parameters.png (Figs. 3/4), circles_data.png (Fig. 2a) and metrics.json.",
    )
    c.add_argument("--model", choices=("r2", "r3", "both"), default="both", help="which model (default both)")
    _common(c, lam=1.0)
    c.set_defaults(func=run_circles)
    d = tasks.add_parser(
        "digits",
        help="§5.2: the convolutional ODE network (18201 parameters) on 8×8 digits or a local MNIST",
        description="Train ruseckas_conv_mnist (C=10 channels incl. 9 zero channels, L=20 3×3 conv layers, "
        "learnable γ̃, global max pool, softmax) with λ=0.1 on scikit-learn's bundled 8×8 digits "
        "(the fixed train/val/test splits of `pdenets train --dataset digits`: 1144/203/450), or on MNIST read from "
        "--data-dir (torchvision layout, no download; validation carved from the training split). "
        "Writes conv_parameters.png (Fig. 6), conv_activations.png (Fig. 7), history.png, metrics.json.",
    )
    d.add_argument("--data-dir", default=None, help="directory holding MNIST/raw (torchvision layout); "
                   "default: use the bundled 8×8 digits")
    d.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch size (default 64)")
    d.add_argument("--padding-mode", default="zeros", help="boundary condition of the convs (default zeros)")
    _common(d, lam=0.1)
    d.set_defaults(func=run_digits)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def _out_dir(args: argparse.Namespace, task: str) -> Path:
    out = check_out(args.out if args.out is not None else f"runs/ruseckas-{task}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pick(args: argparse.Namespace, defaults: dict) -> dict:
    """The per-model/task defaults, overridden by the options the user gave."""
    return {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}


def _train(args: argparse.Namespace, name: str, data, run_dir: Path, batch_size: int, pick: dict, **model_kwargs):
    """Seed, build ``name`` with the picked ``gamma_lr_scale``, train it with the one trainer on ``data``
    (:class:`~pdenets.train.data.DataSplits`); returns (the trained model with the best validation weights,
    the trainer's summary, the config)."""
    from pdenets.experiments.ruseckas import train, train_config
    from pdenets.models import create_model
    from pdenets.train.rng import seed_everything
    from pdenets.utils.stats import count_params

    seed_everything(args.seed)  # before the model and the trainer's data order
    model = create_model(name, gamma_lr_scale=pick["gamma_lr_scale"], **model_kwargs)
    cfg = train_config(name, data.info.name, run_dir, epochs=pick["epochs"], lr=pick["lr"], opt=pick["optimizer"],
                       batch_size=batch_size, lam=args.lam, clip=args.clip, momentum=args.momentum, seed=args.seed,
                       overwrite=args.overwrite)
    print(f"{name}: {count_params(model)} parameters; {len(data.train)} train / {len(data.val)} val / "
          f"{len(data.test)} test; {cfg.opt} lr {cfg.lr:g} (γ̃ ×{pick['gamma_lr_scale']:g}), {cfg.epochs} epochs "
          f"of batch {cfg.batch_size}, hooks {cfg.hooks}, clip {cfg.clip_grad}; run directory {run_dir}", flush=True)
    model, summary = train(model, data, cfg)
    return model, summary, cfg


def _metrics(model, summary: dict, cfg) -> dict:
    """What metrics.json records of one run (accuracies as fractions; the test split is scored once)."""
    from pdenets.utils.stats import count_params

    return {"params": count_params(model), "test_acc": summary["test_top1"] / 100,
            "val_acc": summary["val_top1"] / 100, "best_epoch": summary["best_epoch"],
            "gamma": float(model.gamma.detach()), "steps": summary["steps"], "seconds": summary["wall_seconds"],
            "run_dir": summary["run_dir"], "checkpoint": summary["checkpoint"], "config": cfg.to_dict()}


def run_circles(args: argparse.Namespace) -> int:
    """Train model 1 and/or model 2 on the circles splits of `pdenets train`, report test accuracy, draw."""
    import torch

    from pdenets.analysis import ruseckas_figures as figs
    from pdenets.experiments.ruseckas import circles_splits, split_tensors

    out = _out_dir(args, "circles")
    torch.set_num_threads(args.threads)
    data = circles_splits(args.seed)
    parts = [split_tensors(ds) for ds in (data.train, data.val, data.test)]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # all 400 points, for the figures
    if not args.no_figures:
        figs.plot_circles(x, y, out / "circles_data.png")
    keys = ("r2", "r3") if args.model == "both" else (args.model,)
    metrics = {}
    for key in keys:
        name = CIRCLE_MODELS[key]
        model, s, cfg = _train(args, name, data, out / "runs" / name, len(data.train),
                               pick=_pick(args, CIRCLE_DEFAULTS[key]))
        metrics[name] = m = _metrics(model, s, cfg)
        print(f"{name}: test accuracy {m['test_acc']:.4f} ({len(data.test)} points), validation "
              f"{m['val_acc']:.4f}, γ̃ = {m['gamma']:.4g}, {m['seconds']:.1f} s")
        if not args.no_figures:
            _circle_figures(model, x, y, out, name, m)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}/")
    return 0


def _circle_figures(model, x, y, out: Path, name: str, m: dict) -> None:
    """Figs. 2b/5a, 2c/5b, 3/4 and the learning curves of one trained circle model."""
    import torch

    from pdenets.analysis import ruseckas_figures as figs
    from pdenets.train.metrics import read_epochs

    figs.plot_transformed(model, x, y, out / f"{name}_transformed.png",
                          title=f"{name}: output on all 400 points, test accuracy {m['test_acc']:.1%}")
    sample = torch.cat([torch.nonzero(y == 0)[:2, 0], torch.nonzero(y == 1)[:2, 0]])
    figs.plot_trajectories(model, x[sample], y[sample], out / f"{name}_trajectories.png")
    figs.plot_dense_parameters(model, out / f"{name}_parameters.png",
                               title=f"{name}: parameters vs layer (γ̃ = {m['gamma']:.3g})")
    figs.plot_history(read_epochs(m["run_dir"]), out / f"{name}_history.png", title=name)


def run_digits(args: argparse.Namespace) -> int:
    """Train the conv ODE network on the 8×8 digits (splits of `pdenets train`) or a local MNIST; draw."""
    import torch

    from pdenets.analysis import ruseckas_figures as figs
    from pdenets.errors import UsageError
    from pdenets.experiments.ruseckas import accuracy, digits_splits_8px, mnist_splits, split_tensors
    from pdenets.layers.derivative import PADDING_MODES
    from pdenets.train.metrics import read_epochs

    if args.padding_mode not in PADDING_MODES:
        raise UsageError(f"--padding-mode {args.padding_mode!r}: expected one of {', '.join(PADDING_MODES)}")
    raw = Path(args.data_dir or ".") / "MNIST" / "raw"
    if args.data_dir is not None and not raw.is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r}: expected MNIST in torchvision layout ({raw} missing)")
    out = _out_dir(args, "digits" if args.data_dir is None else "mnist")
    torch.set_num_threads(args.threads)
    if args.data_dir is not None:
        data, epochs = mnist_splits(args.data_dir), 3
    else:
        data, epochs = digits_splits_8px(), 30
    defaults = dict(epochs=epochs, lr=0.001, optimizer="adam", gamma_lr_scale=0.1)
    model, s, cfg = _train(args, "ruseckas_conv_mnist", data, out / "runs" / "ruseckas_conv_mnist", args.batch_size,
                           pick=_pick(args, defaults), in_chans=1, num_classes=10, padding_mode=args.padding_mode)
    m = dict(dataset=data.info.name, **_metrics(model, s, cfg))
    (xtr, ytr), (xte, yte) = split_tensors(data.train), split_tensors(data.test)
    m["train_acc"] = accuracy(model, xtr, ytr)
    print(f"{m['dataset']}: test accuracy {m['test_acc']:.4f} ({len(yte)} images), validation {m['val_acc']:.4f}, "
          f"train {m['train_acc']:.4f}, γ̃ = {m['gamma']:.3g}, {m['seconds']:.1f} s")
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    if not args.no_figures:
        figs.plot_conv_parameters(model, out / "conv_parameters.png")
        zero = int(torch.nonzero(yte == 0)[0, 0])
        figs.plot_conv_activations(model, xte[zero], out / "conv_activations.png", channel=0, label=0)
        figs.plot_history(read_epochs(m["run_dir"]), out / "history.png",
                          title=f"ruseckas_conv_mnist on {m['dataset']}")
    print(f"wrote {out}/")
    return 0
