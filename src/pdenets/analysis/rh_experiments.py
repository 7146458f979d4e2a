"""The Ruthotto-Haber experiments: accuracy vs fraction of training data (Fig. 2), confusion matrices
(Fig. 3), multiscale training and shallow-to-deep refinement (§"Computational benefits").

Every training run goes through the one trainer (:class:`pdenets.train.trainer.Trainer`): this module only
builds the data (:class:`~pdenets.train.data.DataSplits` of in-memory tensors: class-balanced subsets of
the training split, images at a coarser resolution) and the configuration (:data:`RH_TRAINING`: AdamW +
per-step cosine decay, weight decay 5e-4, the ``rh-tv:3e-4`` smoothness-in-time penalty of Eq. (11) and the
``box:1.0`` projection |θ| ≤ 1). A run of ``steps`` optimizer steps is ``epochs × max_steps_per_epoch`` of
the trainer (:func:`steps_layout`).

Data: ``digits`` (scikit-learn's 8×8 digits at 16 px, the fixed stratified 25 % test split) by default;
``stl10`` from a local torchvision copy (``data_dir``; no download). The splits are those of
``pdenets train``: the validation split is the fixed stratified 15 % of the training part (digits: 1144
train / 203 val / 450 test images); the test split is evaluated by the trainer once, at the end of a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pdenets.datasets import DatasetInfo
from pdenets.dynamics.integrators import PDEUnit, refine_in_time
from pdenets.utils.plotting import save_figure, subplots

if TYPE_CHECKING:
    from pdenets.train.config import TrainConfig
    from pdenets.train.data import DataSplits

DYNAMICS = ("parabolic", "hamiltonian", "second_order")


@dataclass
class Data:
    """Training, validation and test tensors of one data set, and its :class:`DatasetInfo`."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DatasetInfo

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def in_chans(self) -> int:
        return self.info.in_chans

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    def splits(self, train_idx: torch.Tensor | None = None, size: int | None = None) -> DataSplits:
        """The trainer's :class:`DataSplits`: the training examples ``train_idx`` (default all) and the whole
        validation and test splits, area-downsampled to ``size`` px if given (:func:`downsample`)."""
        from pdenets.train.data import DataSplits

        xtr, ytr = (self.x_train, self.y_train) if train_idx is None else (self.x_train[train_idx],
                                                                          self.y_train[train_idx])
        xs = [xtr, self.x_val, self.x_test]
        if size is not None:
            xs = [downsample(x, size) for x in xs]
        return DataSplits(TensorDataset(xs[0], ytr), TensorDataset(xs[1], self.y_val),
                          TensorDataset(xs[2], self.y_test), self.info)


def _to_tensors(ds, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "images") and hasattr(ds, "targets") and torch.is_tensor(ds.images):
        return ds.images, ds.targets
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(torch.as_tensor(y))
        if limit and sum(len(t) for t in ys) >= limit:
            break
    return torch.cat(xs), torch.cat(ys).long()


def load_data(dataset: str = "digits", data_dir: str | None = None, img_size: int | None = None) -> Data:
    """The fixed 'train', 'val' and 'test' splits of ``dataset`` ('digits' or 'stl10') as tensors: the same
    splits as ``pdenets train --dataset ...`` (:func:`pdenets.datasets.build_dataset`; the validation split is
    the fixed stratified 15 % of the training part, :mod:`pdenets.datasets.splits`)."""
    from pdenets.datasets import build_dataset, dataset_info
    from pdenets.errors import UsageError

    if dataset not in ("digits", "stl10"):
        raise UsageError(f"--dataset must be 'digits' or 'stl10', got {dataset!r}")
    if dataset == "stl10" and not data_dir:
        raise UsageError("--dataset stl10 needs --data-dir DIR holding torchvision's stl10_binary/ (no download)")
    info = dataset_info(dataset, data_dir)
    tensors = [_to_tensors(build_dataset(dataset, split, img_size=img_size, data_dir=data_dir))
               for split in ("train", "val", "test")]
    return Data(*(t for pair in tensors for t in pair), info)


def model_name(dynamics: str, dataset: str) -> str:
    return f"rh_{dynamics}_{'stl10' if dataset == 'stl10' else 'small'}"


def build_model(dynamics: str, data: Data, dataset: str = "digits", seed: int = 0, **kwargs: Any) -> nn.Module:
    """``rh_<dynamics>_{small,stl10}`` for ``data`` via :func:`pdenets.create_model`, initialised from ``seed``
    (the RNGs are seeded first, so a run is reproducible from its seed alone)."""
    from pdenets.models import create_model
    from pdenets.train.rng import seed_everything

    seed_everything(seed)
    return create_model(model_name(dynamics, dataset), num_classes=data.num_classes, in_chans=data.in_chans,
                        **kwargs)


def balanced_subset(y: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of an equal number of examples per class (⌈fraction · smallest class⌉), chosen at random."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    n = max(1, math.ceil(fraction * min(int((y == c).sum()) for c in classes)))
    idx = [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:n]] for c in classes]
    return torch.cat(idx).sort().values


# ---- training: the one trainer ------------------------------------------------------------------------

#: The experiments' training settings (TrainConfig fields): AdamW, cosine decay to 0 stepped per update,
#: weight decay 5e-4, the TV-in-time penalty of Eq. (11) (α₁ = 3e-4) and the box constraint |θ| ≤ 1.
RH_TRAINING: dict[str, Any] = dict(
    opt="adamw", weight_decay=5e-4, sched="cosine", warmup_epochs=0, min_lr=0.0, no_aug=True, random_shift=0,
    smoothing=0.0, hooks=["rh-tv:3e-4", "box:1.0"], report=False,
)


def steps_layout(steps: int, batches_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) with epochs × steps per epoch = ``steps`` exactly: the steps per epoch are the
    largest divisor of ``steps`` that fits in one pass over the training data (``batches_per_epoch``)."""
    if steps < 1 or batches_per_epoch < 1:
        raise ValueError(f"steps and batches_per_epoch must be positive, got {steps} and {batches_per_epoch}")
    per_epoch = max(d for d in range(1, min(steps, batches_per_epoch) + 1) if steps % d == 0)
    return steps // per_epoch, per_epoch


def train_config(model: str, dataset: str, steps: int, n_train: int, out: str | Path, *, batch_size: int = 64,
                 lr: float = 2e-3, seed: int = 0, progress: bool = False, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of one run of ``steps`` optimizer steps on ``n_train`` examples (:data:`RH_TRAINING`
    < the arguments < ``overrides``), writing its run directory to ``out``."""
    from pdenets.train.config import resolve_config

    epochs, per_epoch = steps_layout(steps, max(1, n_train // batch_size))
    fields = dict(RH_TRAINING, model=model, dataset=dataset, epochs=epochs, max_steps_per_epoch=per_epoch,
                  batch_size=batch_size, lr=lr, seed=seed, progress=progress, out=str(out))
    fields.update(overrides)
    return resolve_config(overrides=fields)


def train(model: nn.Module, splits: DataSplits, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` on ``splits`` with the one trainer. Returns (the trained network with the best validation
    weights — the one whose test score the summary reports —, the trainer's summary, metrics in percent)."""
    from pdenets.train.trainer import Trainer

    trainer = Trainer(cfg, model=model, data=splits)
    summary = trainer.fit()
    return trainer.model, summary


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``x``."""
    model.eval()
    return torch.cat([model(x[i: i + batch_size]) for i in range(0, len(x), batch_size)])


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """(i, j) = number of examples of class i predicted as j (the paper's Fig. 3 convention)."""
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def fractions_experiment(
    data: Data, dataset: str, fractions: Sequence[float], dynamics: Sequence[str] = DYNAMICS, steps: int = 300,
    out: str | Path = "runs/rh-fractions", seed: int = 0, model_kwargs: dict[str, Any] | None = None,
    **cfg_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train each network on class-balanced subsets of the training split; test on the whole test split.

    Every run gets the same number of optimizer steps (so small fractions are not under-trained) and its own
    run directory ``out/runs/<dynamics>-<percent>pct``; ``cfg_kwargs`` go to :func:`train_config`
    (``batch_size``, ``lr``, ``progress``). Returns one row per (dynamics, fraction) with the test accuracy
    (a fraction), the test confusion matrix, the validation accuracy and the wall time.
    """
    rows = []
    for dyn in dynamics:
        for frac in fractions:
            idx = balanced_subset(data.y_train, frac, seed)
            model = build_model(dyn, data, dataset, seed, **(model_kwargs or {}))
            run_dir = Path(out) / "runs" / f"{dyn}-{round(100 * frac)}pct"
            cfg = train_config(model_name(dyn, dataset), dataset, steps, len(idx), run_dir, seed=seed, **cfg_kwargs)
            model, s = train(model, data.splits(idx), cfg)
            rows.append(dict(
                dynamics=dyn, fraction=frac, n_train=len(idx), test_acc=s["test_top1"] / 100,
                val_acc=s["val_top1"] / 100, steps=s["steps"], seconds=s["wall_seconds"], run_dir=str(run_dir),
                confusion=run_confusion(s, model, data),
            ))
    return rows


def run_confusion(summary: dict[str, Any], model: nn.Module, data: Data) -> list[list[int]]:
    """The test confusion matrix of a finished run: the trainer's, or computed from ``model`` if it has none."""
    if summary.get("confusion") is not None:
        return [[int(v) for v in row] for row in summary["confusion"]]
    pred = predict(model, data.x_test).argmax(1)
    return confusion_matrix(data.y_test, pred, data.num_classes).tolist()


def plot_fractions(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Test accuracy vs fraction of training data, one line per network (the paper's Fig. 2, left)."""
    import textwrap

    fig, ax = subplots(figsize=(5, 3.6))
    for dyn in dict.fromkeys(r["dynamics"] for r in rows):
        rs = [r for r in rows if r["dynamics"] == dyn]
        ax.plot([100 * r["fraction"] for r in rs], [100 * r["test_acc"] for r in rs], "o-", label=dyn)
    ax.set_xlabel("training data used (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(textwrap.fill(title or "accuracy vs amount of training data", 48), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=130, bbox_inches="tight")


def plot_confusions(rows: list[dict[str, Any]], path: str, fractions: Sequence[float] | None = None,
                    class_names: Sequence[str] | None = None) -> None:
    """Grid of confusion matrices: networks row-wise, fractions of training data column-wise (Fig. 3). Each cell
    is the fraction of the true class (rows) predicted as each class (columns), on one colour scale [0, 1]
    (a shared colour bar, power 0.4 so that single errors show); the class names label the outer panels."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    dyns = list(dict.fromkeys(r["dynamics"] for r in rows))
    fr_all = sorted({r["fraction"] for r in rows})
    if fractions is None:
        fractions = fr_all if len(fr_all) <= 4 else [fr_all[0], fr_all[len(fr_all) // 3],
                                                     fr_all[2 * len(fr_all) // 3], fr_all[-1]]
    n = len(fractions)  # a last, narrow column holds the colour bar (a grid axes: tight_layout places it)
    fig, axes = subplots(len(dyns), n + 1, figsize=(2.6 * n + 0.9, 2.6 * len(dyns) + 0.3), squeeze=False,
                         width_ratios=[1.0] * n + [0.07])
    im, norm = None, PowerNorm(0.4, vmin=0.0, vmax=1.0)  # lifts the few misclassified images into view
    for i, dyn in enumerate(dyns):
        for j, frac in enumerate(fractions):
            ax = axes[i][j]
            r = next((r for r in rows if r["dynamics"] == dyn and abs(r["fraction"] - frac) < 1e-9), None)
            if r is not None:
                cm = np.asarray(r["confusion"], dtype=float)
                im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="viridis", norm=norm)
                ax.set_title(f"{dyn}, {frac:.0%}: {100 * r['test_acc']:.1f}%", fontsize=8)
                k = cm.shape[0]
                names = list(class_names) if class_names and len(class_names) == k else [str(c) for c in range(k)]
                ax.set_xticks(range(k), names if i == len(dyns) - 1 else [], fontsize=6,
                              rotation=90 if max(map(len, names)) > 2 else 0)
                ax.set_yticks(range(k), names if j == 0 else [], fontsize=6)
            if j == 0:
                ax.set_ylabel("true class")
            if i == len(dyns) - 1:
                ax.set_xlabel("predicted class")
    for i in range(len(dyns)):
        axes[i][n].axis("off")
    if im is not None:
        cax = axes[len(dyns) // 2][n]
        cax.axis("on")
        fig.colorbar(im, cax=cax, label="fraction of the true class")
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def deepen(model: nn.Module) -> nn.Module:
    """Shallow-to-deep: replace every PDE unit by :func:`refine_in_time` of it (2× steps, h/2), in place."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, PDEUnit):
                setattr(module, child_name, refine_in_time(child))
    return model


def deepened(model: nn.Module, factor: float = 2, interpolation: str = "linear") -> nn.Module:
    """A new network with every unit refined in time (``factor``× the steps, h/factor, θ(t) linearly
    interpolated — factor 2 is :func:`deepen` of a copy — or held, ``interpolation='constant'``):
    :func:`pdenets.analysis.rediscretize.rediscretize`,
    built by :func:`pdenets.create_model` from ``model``'s build record, so that it carries its own build
    record and the ``rediscretize`` edit (and can be trained, saved and reloaded)."""
    from pdenets.analysis.rediscretize import rediscretize
    from pdenets.models.registry import build_record

    if build_record(model) is None:
        raise ValueError("deepened() needs a model built by pdenets.create_model (it carries a build record)")
    return rediscretize(model, factor=factor, interpolation=interpolation)


def function_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How much the function changed: relative change of the logits and agreement of the predictions."""
    la, lb = predict(a, x), predict(b, x)
    return dict(rel_logit_change=float((la - lb).norm() / la.norm()),
                prediction_agreement=float((la.argmax(1) == lb.argmax(1)).float().mean()))


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Coarse-scale images for multiscale training (area averaging)."""
    return F.interpolate(x, size=(size, size), mode="area")
