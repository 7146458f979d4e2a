"""Ruseckas §5: the data and training configurations of the two circle models (§5.1) and the convolutional
model on digits / MNIST (§5.2). Training itself is the one trainer's (:class:`pdenets.train.trainer.Trainer`).

Loss (Eq. 113): cross entropy + λ/2 Σ_l (‖Δb̃‖² + ‖ΔW̃‖²), the trainer hook ``layer-smooth:λ``, with
λ = 1.0 (circles) or 0.1 (conv); every parameter starts at zero (§4.4). The recipe ``ruseckas2019`` holds
the schedule; :func:`train_config` adds the command's choices (optimizer, learning rate, epochs, batch).

Two practical guards the paper does not mention, both on by default and both switchable:

* gradient-norm clipping (``clip`` → ``clip_grad``): forward Euler with the cubic term is only stable
  while γ̃ x² < 2, and a single large SGD step early in training can leave that region (loss → NaN);
* a separate learning-rate factor for the scalar γ̃ (the models' ``gamma_lr_scale``): ∂𝓛/∂γ̃ sums over all
  L layers (Eq. 71), so with a shared learning rate γ̃ moves L times faster than any one layer's
  parameters; and the trainer keeps γ̃ ≥ 0 after every step (the models' ``constrain_``; a friction,
  Eq. 52: γ > 0).

Splits: circles and digits use the fixed train / val / test splits of ``pdenets train --dataset circles``
and ``--dataset digits`` (the validation split is a fixed stratified 15 % of the training part,
:mod:`pdenets.datasets.splits`); MNIST its official test split and the same 15 % carve of its training split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

if TYPE_CHECKING:
    from pdenets.train.config import TrainConfig
    from pdenets.train.data import DataSplits

RECIPE = "ruseckas2019"


def train_config(model: str, dataset: str, out: str | Path, *, epochs: int, lr: float, opt: str,
                 batch_size: int, lam: float, clip: float, momentum: float = 0.9, seed: int = 0,
                 progress: bool = False, **overrides: Any) -> TrainConfig:
    """The trainer's configuration of one run: recipe :data:`RECIPE` < these arguments < ``overrides``.

    ``opt`` is 'sgd' (Nesterov momentum) or 'adam'; ``lam`` the λ of Eq. (113) (0: no smoothness hook);
    ``clip`` the gradient-norm bound (0: off); the first 10 % of the epochs warm the learning rate up (the
    one-cycle shape of the recipe); the run directory is ``out``; no report figures (``report=False``: the
    commands draw the paper's own).
    """
    from pdenets.train.config import resolve_config

    fields = dict(model=model, dataset=dataset, epochs=epochs, warmup_epochs=epochs // 10, lr=lr, opt=opt,
                  momentum=momentum,
                  batch_size=batch_size, weight_decay=0.0, clip_grad=clip if clip > 0 else None, seed=seed,
                  hooks=[f"layer-smooth:{lam:g}"] if lam > 0 else [], progress=progress, out=str(out), report=False)
    fields.update(overrides)
    cfg = resolve_config(recipe=RECIPE, overrides=fields)
    if clip <= 0:
        cfg.clip_grad = None  # resolve_config ignores None overrides, so a recipe's clip would survive
    return cfg


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` with the one trainer. Returns (the trained network with the best validation weights —
    the one whose test score the summary reports —, the trainer's summary, metrics in percent)."""
    from pdenets.train.trainer import Trainer

    trainer = Trainer(cfg, model=model, data=data)
    summary = trainer.fit()
    return trainer.model, summary


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``model`` (eval mode) classifies as ``y``."""
    model.eval()
    correct = sum((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    return correct / max(len(y), 1)


def split_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a whole in-memory split (a ``TensorDataset`` or a data set with ``points``/``images``)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    x = getattr(ds, "points", None)
    return (x if x is not None else ds.images), ds.targets


# ---- data ---------------------------------------------------------------------------------------------


def circles_splits(seed: int = 0) -> DataSplits:
    """The circles set exactly as ``pdenets train --dataset circles --seed SEED`` sees it: 255 train / 45 val /
    100 test points (:class:`~pdenets.datasets.circles_dataset.CirclesDataset`)."""
    from pdenets.datasets import build_dataset, dataset_info
    from pdenets.train.data import DataSplits

    train, val, test = (build_dataset("circles", split, seed=seed) for split in ("train", "val", "test"))
    return DataSplits(train, val, test, dataset_info("circles"))


def digits_splits_8px() -> DataSplits:
    """scikit-learn's bundled 8×8 digits (1797 images, no download) scaled to [0, 1] — the paper's input
    scale, not standardised — in the fixed train / val / test splits of ``pdenets train --dataset digits``
    (1144 / 203 / 450 images; :func:`pdenets.datasets.digits.digits_splits`); x of shape (n, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    from pdenets.datasets import dataset_info
    from pdenets.datasets.digits import digits_splits
    from pdenets.train.data import DataSplits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx = digits_splits()
    parts = [TensorDataset(x[idx[s]], y[idx[s]]) for s in ("train", "val", "test")]
    return DataSplits(*parts, dataset_info("digits"))


def mnist_splits(data_dir: str | Path) -> DataSplits:
    """MNIST from a local torchvision-layout copy (``data_dir/MNIST/raw``; never downloads), scaled to [0, 1]:
    the official test split, and the fixed stratified 85/15 carve of the training split
    (:func:`pdenets.datasets.splits.carve_validation`, as ``pdenets train --dataset mnist``); x (n, 1, 28, 28)."""
    from torchvision.datasets import MNIST

    from pdenets.datasets import dataset_info
    from pdenets.datasets.splits import carve_validation
    from pdenets.train.data import DataSplits

    tr, te = (MNIST(str(data_dir), train=train, download=False) for train in (True, False))
    x, y = tr.data.unsqueeze(1).float() / 255.0, tr.targets.long()
    train, val = carve_validation(range(len(y)), y.tolist())
    test = TensorDataset(te.data.unsqueeze(1).float() / 255.0, te.targets.long())
    return DataSplits(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), test,
                      dataset_info("mnist", data_dir))
