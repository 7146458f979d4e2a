"""The time-stepped 3×3 kernels of the ODE/PDE networks read as differential operators (docs/design.md §14).

Ruthotto & Haber build their layers from the very stencils the operator basis comes from (§"Residual networks
and PDEs": a 3×3 stencil is β₁·1 + β₂∂x + … + β₉∂x²∂y² after a change of basis). Each step j of each unit holds
a full convolution K(θ_j) (``hidden × channels`` stencils; two per step in a Hamiltonian unit, θ¹ and θ²), and
each layer l of the Ruseckas conv net a kernel κ̃⁽ˡ⁾ (C × C stencils, Eq. 75). :func:`time_kernel_report` reads
every stencil in the basis of :mod:`pdenets.pde.operators` and aggregates per (module, step): the share of the
stencils' energy in the operator parts of order 0, 1, 2 and ≥ 3 (Σ over stencils of ‖θ_r‖², normalised), and
the root-mean-square coefficient of each of the nine operators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from pdenets.pde.operators import OPERATORS_ASCII, ORDER_GROUPS, mean_share_line, order_parts, to_operators
from pdenets.utils.plotting import save_figure, subplots

__all__ = ["StepKernelRow", "format_time_report", "plot_time_kernels", "time_kernel_report", "time_kernels"]


@dataclass
class StepKernelRow:
    """The stencils of one module at one time step, read as operators."""

    module: str
    step: int
    count: int  # number of 3×3 stencils
    coefficients_rms: np.ndarray  # (9,), in the order of OPERATORS
    shares: np.ndarray  # (4,), orders 0, 1, 2, >=3 of the summed energy


def time_kernels(model: torch.nn.Module) -> list[tuple[str, int, torch.Tensor]]:
    """(module, step, stencils (n, 3, 3) in float64) of every time-stepped 3×3 conv of ``model``: the K of each
    step layer of the Ruthotto–Haber units (a module with ``step_layers(j)`` and ``steps``), named by the step
    layers' container (``…unit0.layers``, ``…layers_y`` = θ¹, ``…layers_z`` = θ²), and each layer's kernel of a
    Ruseckas conv net (a module with ``layer_parameters()`` and a (L, C, C, 3, 3) ``weight``)."""
    names = {id(m): n for n, m in model.named_modules()}
    out: list[tuple[str, int, torch.Tensor]] = []
    for name, m in model.named_modules():
        if callable(getattr(m, "step_layers", None)) and hasattr(m, "steps"):
            for j in range(m.steps):
                for layer in m.step_layers(j):
                    w = layer.weight.detach()
                    if tuple(w.shape[-2:]) == (3, 3):
                        out.append((names[id(layer)].rpartition(".")[0], j, w.reshape(-1, 3, 3).double().cpu()))
        elif hasattr(m, "layer_parameters") and getattr(m, "weight", None) is not None:
            w = m.weight.detach()
            if w.dim() == 5 and tuple(w.shape[-2:]) == (3, 3):
                label = f"{name}.weight" if name else "weight"
                out += [(label, j, w[j].reshape(-1, 3, 3).double().cpu()) for j in range(w.shape[0])]
    return out


def time_kernel_report(model: torch.nn.Module, h: float = 1.0, basis: str = "fd") -> list[StepKernelRow]:
    """One :class:`StepKernelRow` per (module, step) of :func:`time_kernels`, mesh size ``h``, basis ``basis``."""
    rows = []
    for module, step, st in time_kernels(model):
        energy = order_parts(st, h, basis).pow(2).sum(dim=(-2, -1)).sum(0)
        total = float(energy.sum())
        shares = (energy / total).numpy() if total > 0 else np.zeros(4)
        rms = to_operators(st, h, basis).pow(2).mean(0).sqrt().numpy()
        rows.append(StepKernelRow(module, step, st.shape[0], rms, shares))
    return rows


def format_time_report(rows: list[StepKernelRow], max_rows: int | None = None) -> str:
    """Plain-text table: module, step, number of stencils, RMS coefficients, order shares in percent."""
    head = f"{'module':<28} {'step':>4} {'n':>5} " + " ".join(f"{'rms ' + n:>10}" for n in OPERATORS_ASCII)
    head += "  " + " ".join(f"{'ord' + g:>6}" for g in ORDER_GROUPS)
    lines = [head, "-" * len(head)]
    for r in rows if max_rows is None else rows[:max_rows]:
        line = f"{r.module[-28:]:<28} {r.step:>4} {r.count:>5} " + " ".join(f"{c:>10.3g}" for c in r.coefficients_rms)
        lines.append(line + "  " + " ".join(f"{100 * s:>5.1f}%" for s in r.shares))
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more (module, step) rows")
    if rows:
        lines.append(mean_share_line([r.shares for r in rows]))
    return "\n".join(lines)


def plot_time_kernels(rows: list[StepKernelRow], path: str, title: str = "", max_modules: int = 12) -> None:
    """One panel per module (at most ``max_modules``): the share of each order against the time step."""
    if not rows:
        raise ValueError("no time-stepped kernels to plot")
    modules = list(dict.fromkeys(r.module for r in rows))[:max_modules]
    ncol = min(4, len(modules))
    nrow = -(-len(modules) // ncol)
    fig, axes = subplots(nrow, ncol, figsize=(3.3 * ncol, 2.6 * nrow + 0.6), squeeze=False)
    colors = ("#999999", "#1f77b4", "#d62728", "#2ca02c")
    for ax, mod in zip(axes.flat, modules):
        rs = [r for r in rows if r.module == mod]
        steps = [r.step for r in rs]
        for g in range(4):
            ax.plot(steps, [r.shares[g] for r in rs], "o-", ms=3, color=colors[g], label=f"order {ORDER_GROUPS[g]}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(mod[-32:], fontsize=8)
        ax.set_xlabel("time step j", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(modules):]:
        ax.axis("off")
    axes[0][0].set_ylabel("share of energy")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
