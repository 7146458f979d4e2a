"""Run reports: learning curves, the confusion matrix (as Ruthotto-Haber Fig. 3), ``report.md``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pdenets.utils.plotting import save_figure, subplots


def loss_terms(rows: list[dict[str, Any]]) -> list[str]:
    """The loss-term keys of the metrics rows: ``train_data_loss`` and the ``reg_<hook>`` penalties."""
    keys = [k for r in rows for k in r if k == "train_data_loss" or k.startswith("reg_")]
    return list(dict.fromkeys(keys))


def _plot_terms(ax, rows: list[dict[str, Any]], ep: list[int], terms: list[str]) -> None:
    """The training loss split into the data loss and each regulariser (docs/design.md §14)."""
    ax.plot(ep, [r["train_loss"] for r in rows], "k-", lw=2, alpha=0.4, label="total (train_loss)")
    for k in terms:
        ax.plot(ep, [r.get(k, float("nan")) for r in rows], "o-", ms=3,
                label="data (cross-entropy)" if k == "train_data_loss" else k.removeprefix("reg_"))
    vals = [r.get(k) for r in rows for k in terms]
    if all(isinstance(v, (int, float)) and v > 0 for v in vals):
        ax.set_yscale("log")
    ax.set_xlabel("epoch"), ax.set_ylabel("training loss term"), ax.legend(fontsize=8), ax.grid(alpha=.3)
    ax.set_title("training loss by term")


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Loss and accuracy against epoch (train and validation) from the metrics rows; with loss terms
    (``train_data_loss``, ``reg_<hook>``) a third panel splits the training loss into them."""
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    terms = loss_terms(rows)
    fig, axes = subplots(1, 3 if terms else 2, figsize=(15 if terms else 10, 4))
    a1, a2 = axes[0], axes[1]
    a1.plot(ep, [r.get("train_data_loss", r["train_loss"]) for r in rows], "o-", label="train")  # no penalties
    a1.plot(ep, [r["val_loss"] for r in rows], "s-", label="validation")
    a1.set_xlabel("epoch"), a1.set_ylabel("cross-entropy loss"), a1.set_yscale("log"), a1.legend(), a1.grid(alpha=.3)
    a2.plot(ep, [r["train_top1"] for r in rows], "o-", label="train top-1")
    a2.plot(ep, [r["val_top1"] for r in rows], "s-", label="validation top-1")
    a2.plot(ep, [r["val_top5"] for r in rows], "^--", label="validation top-5", alpha=.6)
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy (%)"), a2.legend(), a2.grid(alpha=.3)
    if terms:
        _plot_terms(axes[2], rows, ep, terms)
    fig.suptitle(title)
    path = save_figure(fig, path, dpi=110)
    return Path(path)


def plot_confusion(cm: list[list[int]] | np.ndarray, class_names: list[str] | None, path: str | os.PathLike,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix (true class vs predicted class) with the counts written in the cells,
    in the style of Ruthotto & Haber Fig. 3. More than 30 classes: no cell labels."""
    cm = np.asarray(cm, dtype=float)
    k = cm.shape[0]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * k + 2), 16)
    fig, ax = subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}  (accuracy {100 * acc:.2f}%)".strip())
    path = save_figure(fig, path, dpi=110)
    return Path(path)


def write_report(run_dir: str | os.PathLike, cfg: dict[str, Any], summary: dict[str, Any],
                 extra_sections: list[tuple[str, str]] | None = None) -> Path:
    """Figures and ``report.md`` (config, final metrics, per-epoch table, figures, extra sections)."""
    from pdenets.train.metrics import read_epochs, read_events

    run_dir = Path(run_dir)
    rows = read_epochs(run_dir)
    title = f"{summary.get('model')} on {summary.get('dataset')}"
    curves = plot_curves(rows, run_dir / "curves.png", title)
    conf = None
    if summary.get("confusion"):
        conf = plot_confusion(summary["confusion"], summary.get("class_names"), run_dir / "confusion.png", title)
    lines = [f"# {title}", "", f"Status: **{summary.get('status')}**"
             + (f" — {summary['message']}" if summary.get("message") else ""), "",
             "## Final metrics", "", "| metric | value |", "|---|---|"]
    for k in ("test_top1", "test_top5", "test_loss", "test_samples", "val_top1", "best_epoch", "epochs", "steps",
              "params", "wall_seconds", "nan_failures", "world_size", "device"):
        v = summary.get(k)
        if isinstance(v, float):
            v = f"{v:.4f}" if k == "test_loss" else f"{v:.2f}"
        elif isinstance(v, int) and k == "params":
            v = f"{v:,}"
        lines.append(f"| {k} | {v} |")
    lines += ["", "test_top1 / test_top5 (percent): the test split, scored once at the end with the best checkpoint "
              "(best_epoch, chosen on the validation split; val_top1 is its validation top-1). The confusion "
              "matrix is that of the test split.", ""]
    if rows:
        lines += ["## Per epoch", "", "| epoch | train loss | train top-1 | val loss | val top-1 | val top-5 | lr | "
                  "img/s | s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_top1']:.2f} | {r['val_loss']:.4f} | "
                         f"{r['val_top1']:.2f} | {r['val_top5']:.2f} | {r['lr']:.2e} | {r['img_per_s']:.0f} | "
                         f"{r['epoch_seconds']:.1f} |")
        lines.append("")
    events = read_events(run_dir, "nan")
    if events:
        lines += ["## NaN guard events", "", "| step | epoch | reason | first module | lr scale | samples |",
                  "|---|---|---|---|---|---|"]
        for e in events:
            s = ", ".join(map(str, e["sample_indices"][:8])) + (" …" if len(e["sample_indices"]) > 8 else "")
            lines.append(f"| {e['step']} | {e['epoch']} | {e['reason']} | {e['module'] or e.get('param')} | "
                         f"{e['lr_scale']:g} | {s} |")
        lines.append("")
    lines += ["## Figures", ""]
    if curves:
        lines += ["![learning curves](curves.png)", ""]
    if conf:
        lines += ["![confusion matrix](confusion.png)", ""]
    for head, body in extra_sections or []:
        lines += [f"## {head}", "", body.rstrip(), ""]
    lines += ["## Configuration", "", "```yaml"]
    import yaml

    lines += [yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def append_report_section(run_dir: str | os.PathLike, head: str, body: str) -> None:
    """Add a section to an existing ``report.md`` (used by the demo's post-training reports)."""
    path = Path(run_dir) / "report.md"
    with open(path, "a") as f:
        f.write(f"\n## {head}\n\n{body.rstrip()}\n")
