"""Figures like Ruseckas' Figs. 2-7 for trained ODE networks (matplotlib figures on their own Agg canvas, PNG files).

* :func:`plot_circles` — Fig. 2a: the data set.
* :func:`plot_transformed` — Figs. 2b/5a: the final states x⁽ᴸ⁾, coloured by the predicted probability of
  class 2 (our label 1, the outer circle).
* :func:`plot_trajectories` — Figs. 2c/5b: sample inputs through the layers, layer numbers beside them.
* :func:`plot_dense_parameters`, :func:`plot_conv_parameters` — Figs. 3, 4, 6: b̃ and W̃ (κ̃) against l.
* :func:`plot_conv_activations` — Fig. 7: the final-layer channels for one image, and one channel after
  every layer.
* :func:`plot_history` — loss and accuracy per epoch (the trainer's epoch rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from pdenets.models.ruseckas import OdeConvNet, OdeNet
from pdenets.utils.plotting import figure, save_figure, subplots

CLASS_COLORS = ("tab:blue", "tab:red")


def _save(fig: Figure, path: str | Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight")


def plot_circles(x: torch.Tensor, y: torch.Tensor, path: str | Path) -> Path:
    x, y = x.detach().cpu().numpy(), y.cpu().numpy()
    fig, ax = subplots(figsize=(4.2, 4))
    for c in (0, 1):
        ax.scatter(*x[y == c].T, s=8, c=CLASS_COLORS[c], label=f"class {c + 1}")
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("data (Fig. 2a)")
    return _save(fig, path)


@torch.no_grad()
def plot_transformed(model: OdeNet, x: torch.Tensor, y: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Final states coloured by P(class 2); 2-D scatter for N = 2, 3-D for N = 3 (markers: true class)."""
    model.eval()
    xl = model.forward_features(x)
    p2 = model.forward_head(xl).softmax(1)[:, 1].numpy()
    xl, y = xl.numpy(), y.cpu().numpy()
    markers = ("o", "^")
    if model.width >= 3:
        fig = figure(figsize=(5.4, 4.6))
        ax = fig.add_subplot(projection="3d")
        for c in (0, 1):
            m = y == c
            sc = ax.scatter(xl[m, 0], xl[m, 1], xl[m, 2], c=p2[m], cmap="coolwarm", vmin=0, vmax=1, s=8,
                            marker=markers[c], label=f"class {c + 1}")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_zlabel("$x_3$")
    else:
        fig, ax = subplots(figsize=(5, 4.2))
        for c in (0, 1):
            m = y == c
            sc = ax.scatter(xl[m, 0], xl[m, 1], c=p2[m], cmap="coolwarm", vmin=0, vmax=1, s=8, marker=markers[c],
                            label=f"class {c + 1}")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    fig.colorbar(sc, ax=ax, shrink=0.7, label="P(class 2)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "output of the network (Fig. 2b/5a)")
    return _save(fig, path)


@torch.no_grad()
def plot_trajectories(
    model: OdeNet, x: torch.Tensor, y: torch.Tensor, path: str | Path, label_every: int | None = None, title: str = ""
) -> Path:
    """States x⁽⁰⁾…x⁽ᴸ⁾ of a few inputs joined by lines, layer numbers beside them (Figs. 2c/5b)."""
    model.eval()
    states = torch.stack(model.forward_states(x)).numpy()  # (L+1, B, N)
    label_every = label_every or max(1, model.depth // 10)
    three_d = model.width >= 3
    fig = figure(figsize=(5.4, 4.6))
    ax = fig.add_subplot(projection="3d") if three_d else fig.add_subplot()
    for b in range(states.shape[1]):
        tr = states[:, b]
        col = CLASS_COLORS[int(y[b])]
        coords = (tr[:, 0], tr[:, 1], tr[:, 2]) if three_d else (tr[:, 0], tr[:, 1])
        ax.plot(*coords, "-", color=col, lw=1)
        ax.plot(*[c[:1] for c in coords], "o", color=col, ms=4)
        ax.plot(*[c[-1:] for c in coords], "s", color=col, ms=4)
        for layer in range(0, model.depth + 1, label_every):
            ax.text(*[float(c[layer]) for c in coords], str(layer), fontsize=6)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if three_d:
        ax.set_zlabel("$x_3$")
    ax.set_title(title or "trajectories through the layers (Fig. 2c/5b); o = input, ■ = output")
    return _save(fig, path)


@torch.no_grad()
def plot_dense_parameters(model: OdeNet, path: str | Path, title: str = "") -> Path:
    """b̃_i⁽ˡ⁾ (a) and W̃_ij⁽ˡ⁾ (b) against the layer index l (Figs. 3, 4)."""
    w = model.weight.detach().cpu().numpy()
    b = model.bias.detach().cpu().numpy()
    layers = list(range(model.depth))
    fig, axs = subplots(1, 2, figsize=(10, 3.6))
    for i in range(model.width):
        axs[0].plot(layers, b[:, i], marker="o" if i == 0 else ("+" if i == 1 else "x"), ms=4, lw=0.8,
                    label=f"$b_{i + 1}$")
    axs[0].set_xlabel("layer $l$")
    axs[0].set_title("a) biases $\\tilde b$")
    axs[0].legend(fontsize=8)
    for i in range(model.width):
        for j in range(model.width):
            axs[1].plot(layers, w[:, i, j], lw=1, label=f"$w_{{{i + 1}{j + 1}}}$")
    axs[1].set_xlabel("layer $l$")
    axs[1].set_title("b) weights $\\tilde w$")
    axs[1].legend(fontsize=7, ncol=max(1, model.width))
    fig.suptitle(title or f"parameters vs layer (γ̃ = {float(model.gamma.detach()):.3g})")
    return _save(fig, path)


@torch.no_grad()
def plot_conv_parameters(model: OdeConvNet, path: str | Path) -> Path:
    """b̃_c⁽ˡ⁾ (a) and every kernel element κ̃⁽ˡ⁾ (b) against l (Fig. 6)."""
    w = model.weight.detach().reshape(model.depth, -1).cpu().numpy()
    b = model.bias.detach().cpu().numpy()
    layers = list(range(model.depth))
    fig, axs = subplots(1, 2, figsize=(10, 3.6))
    for c in range(model.channels):
        axs[0].plot(layers, b[:, c], lw=1, label=f"ch {c}")
    axs[0].set_xlabel("layer $l$")
    axs[0].set_title("a) biases $\\tilde b$")
    axs[0].legend(fontsize=6, ncol=2)
    axs[1].plot(layers, w, lw=0.4, alpha=0.6)
    axs[1].set_xlabel("layer $l$")
    axs[1].set_title(f"b) all {w.shape[1]} kernel elements $\\tilde\\kappa$")
    fig.suptitle(f"conv ODE net: parameters vs layer (γ̃ = {float(model.gamma.detach()):.3g})")
    return _save(fig, path)


@torch.no_grad()
def plot_conv_activations(model: OdeConvNet, image: torch.Tensor, path: str | Path, channel: int = 0,
                          label: int | None = None) -> Path:
    """Fig. 7: a) the C channels of x⁽ᴸ⁾ for one image, b) channel ``channel`` after each layer."""
    model.eval()
    states = model.forward_states(image[None])
    final = states[-1][0]
    probs = model.forward_head(states[-1]).softmax(1)[0]
    C, L = model.channels, model.depth
    ncol = max(C, 11)
    fig, axs = subplots(3, ncol, figsize=(1.1 * ncol, 4.2))
    for ax in axs.flat:
        ax.axis("off")
    vmax = float(final.abs().max()) or 1.0
    for c in range(C):
        axs[0, c].imshow(final[c].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        title = f"ch {c}" + (f"\np={probs[c]:.2f}" if c < probs.numel() else "")
        axs[0, c].set_title(title, fontsize=7)
    chan = torch.stack([s[0, channel] for s in states])  # (L+1, H, W)
    for layer in range(L + 1):  # each panel its own scale: the input (l = 0) is far smaller than x^(L)
        ax = axs[1 + layer // ncol, layer % ncol]
        vmax = float(chan[layer].abs().max()) or 1.0
        ax.imshow(chan[layer].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"l={layer}\n|x|≤{vmax:.2g}", fontsize=6)
    head = f"digit {label}: " if label is not None else ""
    fig.suptitle(f"{head}a) final-layer activations (row 1, one colour scale); b) channel {channel} after each "
                 f"layer (rows 2-3, each panel its own scale ±max|x|)", fontsize=9)
    return _save(fig, path)


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss (cross entropy + the Eq. 113 penalty, and each term where the rows have them) and accuracies
    per epoch, from the trainer's epoch rows (:func:`pdenets.train.metrics.read_epochs`: ``train_loss``,
    ``train_data_loss``, ``reg_<hook>``, ``train_top1``, ``val_top1`` in %)."""
    ep = [h["epoch"] for h in history]
    fig, axs = subplots(1, 2, figsize=(9, 3.2))
    axs[0].plot(ep, [h["train_loss"] for h in history], label="total")
    for key in dict.fromkeys(k for h in history for k in h if k == "train_data_loss" or k.startswith("reg_")):
        vals = [h.get(key, float("nan")) for h in history]
        if all(v > 0 for v in vals if v == v):
            axs[0].plot(ep, vals, label="cross entropy" if key == "train_data_loss" else key.removeprefix("reg_"))
    axs[0].set_yscale("log")
    axs[0].set_xlabel("epoch")
    axs[0].legend(fontsize=7)
    axs[0].set_title("training loss (cross entropy + Eq. 113)")
    axs[1].plot(ep, [h["train_top1"] for h in history], label="train (running)")
    axs[1].plot(ep, [h["val_top1"] for h in history], label="validation")
    axs[1].set_xlabel("epoch")
    axs[1].set_ylabel("%")
    axs[1].set_title("accuracy")
    axs[1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
