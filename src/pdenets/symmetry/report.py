"""Figures and tables of the symmetry work for a run directory: writer spectra, weight histograms before/after
teleportation, the compression table, and :func:`demo_summary` for ``pdenets demo``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from pdenets.symmetry.analyze import analyze
from pdenets.symmetry.compress import segment_writers, writer_matrix
from pdenets.symmetry.fold import fold_bn, is_folded
from pdenets.utils.plotting import save_figure

__all__ = ["compression_markdown", "demo_summary", "plot_pca_curve", "plot_spectra",
           "plot_weight_histograms"]


def _plt():
    from pdenets.utils.plotting import pyplot

    return pyplot()


def writer_spectra(model: nn.Module) -> dict[str, torch.Tensor]:
    """Singular values (float64) of the stacked writer matrix of every segment written by 1×1 maps."""
    folded = model if is_folded(model) else fold_bn(model)
    a = analyze(folded)
    out = {}
    for s in a.segments[1:]:
        if segment_writers(a, s.index):
            out[f"seg {s.index} ({s.name}, n={s.width}, {s.group})"] = torch.linalg.svdvals(
                writer_matrix(folded, a, s.index))
    return out


def plot_spectra(models: dict[str, nn.Module], path: str | Path, title: str = "") -> Path:
    """Singular-value spectra of each segment's writer matrix, one panel per segment, one line per model."""
    plt = _plt()
    spectra = {label: writer_spectra(m) for label, m in models.items()}
    keys = list(next(iter(spectra.values())).keys())
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for label, sp in spectra.items():
            if k in sp:
                sv = sp[k]
                ax.semilogy(range(1, sv.numel() + 1), (sv / sv[0]).clamp_min(1e-17), label=label)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("index")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("σ_i / σ_1 (writer matrix)")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = save_figure(fig, path, dpi=110)
    return path


def plot_weight_histograms(before: torch.Tensor, after: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Histogram of |w| of the stream-facing weights before and after teleportation (log-log)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    lo = max(min(before.abs().min().item(), after.abs().min().item()), 1e-8)
    hi = max(before.abs().max().item(), after.abs().max().item())
    bins = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), 60).numpy()
    ax.hist(before.abs().clamp_min(lo).numpy(), bins=bins, alpha=0.6,
            label=f"before (L1 {before.abs().sum():.4g})")
    ax.hist(after.abs().clamp_min(lo).numpy(), bins=bins, alpha=0.6, label=f"after (L1 {after.abs().sum():.4g})")
    ax.set_xscale("log")
    ax.set_xlabel("|w| (stream-facing weights)")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title or "teleportation: same function, different weights", fontsize=10)
    path = save_figure(fig, path, dpi=110)
    return path


def plot_pca_curve(rows: Sequence[dict], path: str | Path) -> Path:
    """LOSSY PCA fallback: agreement / accuracy against the kept fraction of the stream width."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    keep = [r["keep"] for r in rows]
    ax.plot(keep, [100 * r["agreement"] for r in rows], "o-", label="top-1 agreement with original")
    if "accuracy" in rows[0]:
        ax.plot(keep, [100 * r["accuracy"] for r in rows], "s--", label="test accuracy")
    ax.set_xlabel("kept fraction of each rotatable segment's width")
    ax.set_ylabel("%")
    ax.set_title("LOSSY PCA fallback (not a symmetry)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = save_figure(fig, path, dpi=110)
    return path


def compression_markdown(rows: Sequence[dict]) -> str:
    """Markdown table: step, params, max output difference, accuracy."""
    out = ["| model | params | % of original | max rel. output diff (fp32) | test accuracy |",
           "|---|---:|---:|---:|---:|"]
    p0 = rows[0]["params"]
    for r in rows:
        acc = f"{r['accuracy']:.2f}%" if r.get("accuracy") is not None else "-"
        diff = f"{r['diff']:.1e}" if r.get("diff") is not None else "-"
        out.append(f"| {r['name']} | {r['params']:,} | {100 * r['params'] / p0:.1f}% | {diff} | {acc} |")
    return "\n".join(out)


def demo_summary(model: nn.Module, example_inputs: torch.Tensor, max_inputs: int = 16, seed: int = 0) -> str:
    """Per-segment group table and verification table of a trained QL-ConvNet (a few seconds on 2 cores).

    The tensors are tiny, and multi-threaded float64 convolutions slow down by orders of magnitude on a machine
    whose cores are busy: callers that time it set the threads themselves (the CLI's ``--threads``).
    """
    from pdenets.symmetry.verify import verify

    t0 = time.time()
    a = analyze(model)
    x = example_inputs[:max_inputs].detach().cpu()
    res = verify(model.cpu(), None, x, generator=torch.Generator().manual_seed(seed), analysis=None)
    lines = ["Continuous symmetry (Liu-Shao-Bai §4, docs/design.md §3): exact group of each residual-stream segment",
             a.table(), "",
             f"verify: a random element of every segment's group applied to the weights ({x.shape[0]} inputs)",
             res.table(), f"({time.time() - t0:.1f} s)"]
    return "\n".join(lines)
