"""``pdenets ruseckas circles|digits``: train Ruseckas' ODE networks (§5) and write the paper's figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CIRCLE_MODELS = {"r2": "ruseckas_circles_r2", "r3": "ruseckas_circles_r3"}
# Per-model defaults of the circles runs (chosen by the measured runs in README.md "Ruseckas").
CIRCLE_DEFAULTS = {
    "r2": dict(epochs=1000, lr=0.01, optimizer="sgd", gamma_lr_scale=0.001),
    "r3": dict(epochs=2000, lr=0.02, optimizer="sgd", gamma_lr_scale=0.01),
}


def _common(p: argparse.ArgumentParser, lam: float) -> None:
    p.add_argument("--out", default=None, help="run directory for figures, metrics.json and weights "
                   "(default runs/ruseckas-<task>)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: per model/task)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="SGD (Nesterov momentum) or Adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--lam", type=float, default=lam, help=f"λ of the smoothness loss Eq. (113) (default {lam})")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping, 0 = off (default 1.0)")
    p.add_argument("--gamma-lr-scale", type=float, default=None,
                   help="learning-rate factor of the learnable γ̃ (its gradient sums over all L layers)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, shuffling and split (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ruseckas",
        help="train Ruseckas' ODE networks (circles, digits/MNIST) and draw the paper's figures",
        description="Ruseckas, 'Differential equations as models of deep neural networks' §5: the ODE "
        "network dx/dt = Wx + b - γx³ discretised by forward Euler (Eq. 109), all parameters initialised "
        "to zero, trained with cross entropy + the layer-smoothness loss of Eq. (113).",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    c = tasks.add_parser(
        "circles",
        help="§5.1: two noisy concentric circles, model 1 (R², L=100) and model 2 (R³, L=20)",
        description="Train model 1 (ruseckas_circles_r2: R², L=100, learnable γ̃, softmax; 601 parameters) "
        "and/or model 2 (ruseckas_circles_r3: R³ with one zero dimension, L=20, γ̃=0.1, sigmoid of x₃; "
        "240 parameters) on 400 points (radii 1 and 2, σ=0.2), full batch, λ=1.0. Writes "
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
        "(stratified 25%% test split), or on MNIST read from --data-dir (torchvision layout, no download). "
        "Writes conv_parameters.png (Fig. 6), conv_activations.png (Fig. 7), history.png, metrics.json.",
    )
    d.add_argument("--data-dir", default=None, help="directory holding MNIST/raw (torchvision layout); "
                   "default: use the bundled 8×8 digits")
    d.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    d.add_argument("--padding-mode", default="zeros", help="boundary condition of the convs (default zeros)")
    _common(d, lam=0.1)
    d.set_defaults(func=run_digits)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def _out_dir(args: argparse.Namespace, task: str) -> Path:
    out = Path(args.out or f"runs/ruseckas-{task}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check(args: argparse.Namespace) -> None:
    from pdenets.errors import UsageError

    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be positive, got {args.epochs}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.lam < 0:
        raise UsageError(f"--lam must be non-negative, got {args.lam}")
    if args.threads < 1:
        raise UsageError(f"--threads must be positive, got {args.threads}")


def _config(args: argparse.Namespace, defaults: dict, **extra):
    from pdenets.experiments.ruseckas import FitConfig

    pick = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    return FitConfig(momentum=args.momentum, lam=args.lam, clip=args.clip, seed=args.seed, **pick, **extra)


def run_circles(args: argparse.Namespace) -> int:
    import torch

    from pdenets.analysis import ruseckas_figures as figs
    from pdenets.datasets.circles import make_circles
    from pdenets.experiments.ruseckas import accuracy, fit
    from pdenets.models import create_model
    from pdenets.utils.stats import count_params

    _check(args)
    torch.set_num_threads(args.threads)
    out = _out_dir(args, "circles")
    x, y = make_circles(seed=args.seed)
    if not args.no_figures:
        figs.plot_circles(x, y, out / "circles_data.png")
    keys = ("r2", "r3") if args.model == "both" else (args.model,)
    metrics = {}
    for key in keys:
        name = CIRCLE_MODELS[key]
        torch.manual_seed(args.seed)
        model = create_model(name)
        cfg = _config(args, CIRCLE_DEFAULTS[key])
        print(f"{name}: {count_params(model)} parameters, {cfg}")
        res = fit(model, x, y, cfg, log_every=max(1, cfg.epochs // 10))
        acc = accuracy(model, x, y)
        metrics[name] = {"params": count_params(model), "train_acc": acc, "gamma": float(model.gamma.detach()),
                         "final_train_ce": res.history[-1]["train_ce"], "seconds": res.seconds,
                         "config": vars(cfg)}
        print(f"{name}: training accuracy {acc:.4f}, γ̃ = {float(model.gamma.detach()):.4g}, {res.seconds:.1f} s")
        torch.save(model.state_dict(), out / f"{name}.pt")
        if not args.no_figures:
            figs.plot_transformed(model, x, y, out / f"{name}_transformed.png",
                                  title=f"{name}: output, training accuracy {acc:.1%}")
            sample = torch.cat([torch.nonzero(y == 0)[:2, 0], torch.nonzero(y == 1)[:2, 0]])
            figs.plot_trajectories(model, x[sample], y[sample], out / f"{name}_trajectories.png")
            figs.plot_dense_parameters(model, out / f"{name}_parameters.png",
                                       title=f"{name}: parameters vs layer (γ̃ = {float(model.gamma.detach()):.3g})")
            figs.plot_history(res.history, out / f"{name}_history.png", title=name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}/")
    return 0


def run_digits(args: argparse.Namespace) -> int:
    import torch

    from pdenets.analysis import ruseckas_figures as figs
    from pdenets.errors import UsageError
    from pdenets.experiments.ruseckas import accuracy, fit, load_digits_split, load_mnist
    from pdenets.layers.derivative import PADDING_MODES
    from pdenets.models import create_model
    from pdenets.utils.stats import count_params

    _check(args)
    if args.padding_mode not in PADDING_MODES:
        raise UsageError(f"--padding-mode {args.padding_mode!r}: expected one of {', '.join(PADDING_MODES)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    torch.set_num_threads(args.threads)
    out = _out_dir(args, "digits" if args.data_dir is None else "mnist")
    if args.data_dir is not None:
        raw = Path(args.data_dir) / "MNIST" / "raw"
        if not raw.is_dir():
            raise UsageError(f"--data-dir {args.data_dir!r}: expected MNIST in torchvision layout ({raw} missing)")
        xtr, ytr, xte, yte = load_mnist(args.data_dir)
        dataset, defaults = "mnist", dict(epochs=3, lr=0.001, optimizer="adam", gamma_lr_scale=0.1)
    else:
        xtr, ytr, xte, yte = load_digits_split(seed=args.seed)
        dataset, defaults = "digits", dict(epochs=30, lr=0.001, optimizer="adam", gamma_lr_scale=0.1)
    torch.manual_seed(args.seed)
    model = create_model("ruseckas_conv_mnist", in_chans=1, num_classes=10, padding_mode=args.padding_mode)
    cfg = _config(args, defaults, batch_size=args.batch_size)
    print(f"ruseckas_conv_mnist on {dataset} ({len(ytr)} train / {len(yte)} test, {tuple(xtr.shape[2:])} px): "
          f"{count_params(model)} parameters, {cfg}")
    res = fit(model, xtr, ytr, cfg, xte, yte)
    test_acc = accuracy(model, xte, yte)
    train_acc = accuracy(model, xtr, ytr)
    metrics = {"dataset": dataset, "params": count_params(model), "test_acc": test_acc, "train_acc": train_acc,
               "gamma": float(model.gamma.detach()), "seconds": res.seconds, "config": vars(cfg),
               "history": res.history}
    print(f"{dataset}: test accuracy {test_acc:.4f}, train accuracy {train_acc:.4f}, "
          f"γ̃ = {float(model.gamma.detach()):.3g}, {res.seconds:.1f} s")
    torch.save(model.state_dict(), out / "ruseckas_conv_mnist.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not args.no_figures:
        figs.plot_conv_parameters(model, out / "conv_parameters.png")
        zero = int(torch.nonzero(yte == 0)[0, 0])
        figs.plot_conv_activations(model, xte[zero], out / "conv_activations.png", channel=0, label=0)
        figs.plot_history(res.history, out / "history.png", title=f"ruseckas_conv_mnist on {dataset}")
    print(f"wrote {out}/")
    return 0
