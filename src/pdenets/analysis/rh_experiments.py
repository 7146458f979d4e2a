"""The Ruthotto-Haber experiments: accuracy vs fraction of training data (Fig. 2), confusion matrices
(Fig. 3), multiscale training and shallow-to-deep refinement (§"Computational benefits").

Training here is a deliberately small loop (SGD/AdamW, cosine schedule, the ``rh-tv`` / ``box`` hooks of
:mod:`pdenets.dynamics.regularizers`) over in-memory tensors, because the experiments need
class-balanced subsets of the training split and re-training at several resolutions, which the
general engine (:func:`pdenets.train.engine.train`) does not express; full training runs use the
engine (``pdenets train --recipe ruthotto2018-stl10 --model rh_hamiltonian_stl10 --data-dir ...``).

Data: ``digits`` (scikit-learn's 8×8 digits at 16 px, the fixed stratified 25 % test split) by default;
``stl10`` from a local torchvision copy (``data_dir``; no download).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdenets.dynamics.integrators import PDEUnit, refine_in_time
from pdenets.utils.plotting import save_figure

DYNAMICS = ("parabolic", "hamiltonian", "second_order")


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_chans: int
    class_names: list[str] = field(default_factory=list)


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
    """Training and test splits of ``dataset`` ('digits' or 'stl10') as tensors."""
    from pdenets.datasets import build_dataset, dataset_info
    from pdenets.errors import UsageError

    if dataset not in ("digits", "stl10"):
        raise UsageError(f"--dataset must be 'digits' or 'stl10', got {dataset!r}")
    if dataset == "stl10" and not data_dir:
        raise UsageError("--dataset stl10 needs --data-dir DIR holding torchvision's stl10_binary/ (no download)")
    info = dataset_info(dataset, data_dir)
    tr = build_dataset(dataset, "train", img_size=img_size, data_dir=data_dir)
    te = build_dataset(dataset, "test", img_size=img_size, data_dir=data_dir)
    xtr, ytr = _to_tensors(tr)
    xte, yte = _to_tensors(te)
    return Data(xtr, ytr, xte, yte, info.num_classes, info.in_chans, list(info.class_names))


def model_name(dynamics: str, dataset: str) -> str:
    return f"rh_{dynamics}_{'stl10' if dataset == 'stl10' else 'small'}"


def balanced_subset(y: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of an equal number of examples per class (⌈fraction · smallest class⌉), chosen at random."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    n = max(1, math.ceil(fraction * min(int((y == c).sum()) for c in classes)))
    idx = [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:n]] for c in classes]
    return torch.cat(idx).sort().values


def fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 2e-3,
    opt: str = "adamw", weight_decay: float = 5e-4, hooks: Sequence[str] = ("rh-tv:3e-4", "box:1.0"),
    seed: int = 0, progress: bool = False, desc: str = "train",
) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps on (x, y) with a cosine schedule; returns the losses."""
    from pdenets.train.hooks import create_hook

    torch.manual_seed(seed)
    hk = [create_hook(s) for s in hooks]
    if opt == "adamw":
        optim: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    model.train()
    losses: list[float] = []
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(y), generator=g), 0
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=desc, leave=False)
    for _ in it:
        if pos + batch_size > len(y):
            perm, pos = torch.randperm(len(y), generator=g), 0
        b = perm[pos: pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(x[b]), y[b])
        total = loss
        for h in hk:
            p = h.penalty(model)
            if p is not None:
                total = total + p
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        sched.step()
        with torch.no_grad():
            for h in hk:
                h.after_step(model, sched.get_last_lr()[0])
        losses.append(loss.item())
    return losses


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
    seed: int = 0, progress: bool = True, model_kwargs: dict[str, Any] | None = None, **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train each network on class-balanced subsets of the training split; test on the whole test split.

    Every run gets the same number of optimizer steps (so small fractions are not under-trained).
    Returns one row per (dynamics, fraction) with test accuracy, confusion matrix and wall time.
    """
    import timm

    rows = []
    for dyn in dynamics:
        for frac in fractions:
            idx = balanced_subset(data.y_train, frac, seed)
            torch.manual_seed(seed)
            model = timm.create_model(model_name(dyn, dataset), num_classes=data.num_classes,
                                      in_chans=data.in_chans, **(model_kwargs or {}))
            t0 = time.time()
            losses = fit(model, data.x_train[idx], data.y_train[idx], steps, seed=seed, progress=progress,
                         desc=f"{dyn} {frac:.0%}", **fit_kwargs)
            pred = predict(model, data.x_test).argmax(1)
            train_acc = float((predict(model, data.x_train[idx]).argmax(1) == data.y_train[idx]).float().mean())
            rows.append(dict(
                dynamics=dyn, fraction=frac, n_train=len(idx), test_acc=float((pred == data.y_test).float().mean()),
                train_acc=train_acc, final_loss=sum(losses[-10:]) / len(losses[-10:]), seconds=time.time() - t0,
                confusion=confusion_matrix(data.y_test, pred, data.num_classes).tolist(),
            ))
    return rows


def plot_fractions(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Test accuracy vs fraction of training data, one line per network (the paper's Fig. 2, left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for dyn in dict.fromkeys(r["dynamics"] for r in rows):
        rs = [r for r in rows if r["dynamics"] == dyn]
        ax.plot([100 * r["fraction"] for r in rs], [100 * r["test_acc"] for r in rs], "o-", label=dyn)
    ax.set_xlabel("training data used (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy vs amount of training data")
    ax.grid(alpha=0.3)
    ax.legend()
    path = save_figure(fig, path, dpi=130)


def plot_confusions(rows: list[dict[str, Any]], path: str, fractions: Sequence[float] | None = None,
                    class_names: Sequence[str] | None = None) -> None:
    """Grid of confusion matrices: networks row-wise, fractions of training data column-wise (Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dyns = list(dict.fromkeys(r["dynamics"] for r in rows))
    fr_all = sorted({r["fraction"] for r in rows})
    if fractions is None:
        fractions = fr_all if len(fr_all) <= 4 else [fr_all[0], fr_all[len(fr_all) // 3],
                                                     fr_all[2 * len(fr_all) // 3], fr_all[-1]]
    fig, axes = plt.subplots(len(dyns), len(fractions), figsize=(2.6 * len(fractions), 2.6 * len(dyns)),
                             squeeze=False)
    for i, dyn in enumerate(dyns):
        for j, frac in enumerate(fractions):
            ax = axes[i][j]
            r = next((r for r in rows if r["dynamics"] == dyn and abs(r["fraction"] - frac) < 1e-9), None)
            if r is not None:
                ax.imshow(torch.tensor(r["confusion"]).float().log1p().numpy(), cmap="viridis")
                ax.set_title(f"{dyn}, {frac:.0%}: {100 * r['test_acc']:.1f}%", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("true class")
            if i == len(dyns) - 1:
                ax.set_xlabel("predicted class")
    path = save_figure(fig, path, dpi=120)


def deepen(model: nn.Module) -> nn.Module:
    """Shallow-to-deep: replace every PDE unit by :func:`refine_in_time` of it (2× steps, h/2), in place."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, PDEUnit):
                setattr(module, child_name, refine_in_time(child))
    return model


def function_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How much the function changed: relative change of the logits and agreement of the predictions."""
    la, lb = predict(a, x), predict(b, x)
    return dict(rel_logit_change=float((la - lb).norm() / la.norm()),
                prediction_agreement=float((la.argmax(1) == lb.argmax(1)).float().mean()))


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Coarse-scale images for multiscale training (area averaging)."""
    return F.interpolate(x, size=(size, size), mode="area")
