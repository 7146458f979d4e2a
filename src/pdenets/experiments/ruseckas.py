"""Ruseckas §5: the two circle models (§5.1) and the convolutional model on digits / MNIST (§5.2).

Loss (Eq. 113): cross entropy + λ/2 Σ_l (‖Δb̃‖² + ‖ΔW̃‖²) with λ = 1.0 (circles) or 0.1 (conv); every
parameter starts at zero (§4.4). The loops are deliberately plain (torch optimisers, a full batch for the
400 circle points, mini-batches for images) so that a run is quick on two CPU cores.

Two practical guards the paper does not mention, both on by default and both switchable:

* gradient-norm clipping (``clip``): forward Euler with the cubic term is only stable while
  γ̃ x² < 2, and a single large SGD step early in training can leave that region (loss → NaN);
* a separate learning-rate factor for the scalar γ̃ (``gamma_lr_scale``): ∂𝓛/∂γ̃ sums over all L layers
  (Eq. 71), so with a shared learning rate γ̃ moves L times faster than any one layer's parameters; and
  γ̃ is kept ≥ 0 (a friction, Eq. 52: γ > 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdenets.train.layer_smooth import model_layer_smoothness


@dataclass
class FitConfig:
    epochs: int = 2000
    lr: float = 0.02
    optimizer: str = "sgd"  # 'sgd' (momentum, Nesterov) or 'adam'
    momentum: float = 0.9
    lam: float = 1.0  # λ of Eq. (113)
    clip: float = 1.0  # max gradient norm (0: off)
    gamma_lr_scale: float = 0.01
    batch_size: int = 0  # 0: full batch
    warmup_frac: float = 0.1  # one-cycle schedule: linear warm-up fraction, then cosine to 0
    seed: int = 0


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    gamma = [p for n, p in model.named_parameters() if n.endswith("gamma")]
    other = [p for n, p in model.named_parameters() if not n.endswith("gamma")]
    groups = [{"params": other, "lr": cfg.lr}]
    if gamma:
        groups.append({"params": gamma, "lr": cfg.lr * cfg.gamma_lr_scale})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adam'")


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    if batch_size <= 0 or batch_size >= n:
        yield torch.arange(n)
        return
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    return correct / max(len(y), 1)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FitConfig,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    log: Callable[[str], None] | None = print,
    log_every: int = 1,
) -> FitResult:
    """Minimise cross entropy + Eq. (113) with ``cfg``; returns per-epoch history (loss, accuracies, γ̃)."""
    from tqdm import tqdm

    if log is print:
        log = tqdm.write
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    n_batches = 1 if cfg.batch_size <= 0 else math.ceil(len(y) / cfg.batch_size)
    total = cfg.epochs * n_batches
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total, pct_start=cfg.warmup_frac,
        anneal_strategy="cos", cycle_momentum=False,
    )
    result = FitResult()
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="train", leave=False, disable=True if log is None else None, mininterval=1.0)
    for epoch in bar:
        model.train()
        ce_sum, correct, seen = 0.0, 0, 0
        for idx in _batches(len(y), cfg.batch_size, gen):
            logits = model(x[idx])
            ce = F.cross_entropy(logits, y[idx])
            loss = ce + model_layer_smoothness(model, cfg.lam) if cfg.lam else ce
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch}: lower --lr or keep --clip on "
                    "(forward Euler with the cubic term needs γ̃x² < 2)"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            gamma = getattr(model, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                with torch.no_grad():
                    gamma.clamp_(min=0)
            ce_sum += ce.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
            seen += len(idx)
        gamma_now = float(getattr(model, "gamma", torch.tensor(float("nan"))).detach())
        row = {"epoch": epoch + 1, "train_ce": ce_sum / seen, "train_acc_running": correct / seen,
               "gamma": gamma_now, "seconds": time.perf_counter() - t0}
        last = epoch + 1 == cfg.epochs
        if x_test is not None and y_test is not None and (last or (epoch + 1) % log_every == 0):
            row["test_acc"] = accuracy(model, x_test, y_test)
        result.history.append(row)
        bar.set_postfix(ce=f"{row['train_ce']:.3f}", acc=f"{row['train_acc_running']:.3f}")
        if log is not None and ((epoch + 1) % log_every == 0 or last):
            extra = f" test_acc={row['test_acc']:.4f}" if "test_acc" in row else ""
            log(f"epoch {epoch + 1}/{cfg.epochs} train_ce={row['train_ce']:.4f} "
                f"train_acc={row['train_acc_running']:.4f}{extra} gamma={row['gamma']:.3g} "
                f"({row['seconds']:.0f}s)")
    result.seconds = time.perf_counter() - t0
    return result


# ---- data ---------------------------------------------------------------------------------------------


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download), scaled to [0, 1], with a stratified
    ``test_size`` split: (x_train, y_train, x_test, y_test), x of shape (n, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=test_size, stratify=d.target, random_state=seed)
    return x[tr], y[tr], x[te], y[te]


def load_mnist(data_dir: str | Path) -> tuple[torch.Tensor, ...]:
    """MNIST from a local torchvision-layout copy (``data_dir/MNIST/raw``; never downloads), scaled to
    [0, 1]: (x_train, y_train, x_test, y_test) with x of shape (n, 1, 28, 28)."""
    from torchvision.datasets import MNIST

    out = []
    for train in (True, False):
        ds = MNIST(str(data_dir), train=train, download=False)
        out += [ds.data.unsqueeze(1).float() / 255.0, ds.targets.long()]
    return tuple(out)
