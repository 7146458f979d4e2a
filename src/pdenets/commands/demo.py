"""``pdenets demo``: the main job — train a small QL-ConvNet on the bundled digits, evaluate, report.

Trains ``qlnet18_eq3_small`` (Liu-Shao-Bai Eq. (3) blocks, one per stage, ≈0.32M parameters) on
scikit-learn's digits at 16×16 with the ``quick`` recipe, evaluates it on the fixed 25% test split,
writes the run report and prints where everything is. No download, a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

# ---- post-training reports ---------------------------------------------------------------------------
# Each entry is "module:function", called after training as
#     function(model=<trained model, eval mode>, run_dir=<Path>, summary=<dict>) -> (title, markdown) | None
# Its markdown is appended to report.md and printed.
POST_TRAINING_REPORTS: list[str] = [
    "pdenets.symmetry.report:demo_symmetry_table",  # issue 4: analyze + verify on the trained model
]


def run_post_training_reports(model, run_dir: Path, summary: dict[str, Any],
                              reports: list[str] | None = None) -> list[tuple[str, str]]:
    from pdenets.train.report import append_report_section

    sections = []
    for spec in POST_TRAINING_REPORTS if reports is None else reports:
        mod_name, _, fn_name = spec.partition(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        res = fn(model=model, run_dir=run_dir, summary=summary)
        if res:
            title, body = res
            append_report_section(run_dir, title, body)
            sections.append((title, body))
    return sections


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="the main job: train a small QL-ConvNet on digits, evaluate, write the report",
        description="Train qlnet18_eq3_small on scikit-learn's bundled digits (16x16, fixed stratified "
        "75/25 split) with the 'quick' recipe, evaluate it on the test split, write learning curves, "
        "confusion matrix, report.md and summary.json, and print where everything is. Needs no download; "
        "a few minutes at most on 2 CPU cores. Any `pdenets train` option overrides the recipe.",
        epilog="example: pdenets demo --out runs/demo --epochs 6",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue an interrupted demo")
    from pdenets.commands.train import add_train_options

    add_train_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from pdenets.commands.train import overrides_from_args, set_threads
    from pdenets.train.checkpoint import load_model
    from pdenets.train.config import resolve_config
    from pdenets.train.engine import train

    set_threads(args.threads)
    t0 = time.time()
    cfg = resolve_config(recipe="quick", overrides=overrides_from_args(args))
    n_threads = torch.get_num_threads()
    print(f"pdenets demo: training {cfg.model} on {cfg.dataset} ({cfg.img_size or 16}px) for {cfg.epochs} "
          f"epochs with the 'quick' recipe ({n_threads} CPU thread{'s' if n_threads > 1 else ''}) ...", flush=True)
    summary = train(cfg)
    if summary["status"] == "diverged":
        print(f"pdenets demo: {summary['message']}")
        return 1
    run_dir = Path(summary["run_dir"])
    model, _ = load_model(run_dir / "checkpoints" / "last")
    sections = run_post_training_reports(model, run_dir, summary)
    wall = time.time() - t0
    print()
    print(f"test accuracy: top-1 {summary['test_top1']:.2f}%  top-5 {summary['test_top5']:.2f}%  "
          f"({summary['test_samples']} test images, {summary['params']:,} parameters, {wall:.0f} s)")
    for title, body in sections:
        print(f"\n{title}\n{body}")
    print()
    print("where everything is:")
    for label, rel in [("report", "report.md"), ("summary", "summary.json"), ("learning curves", "curves.png"),
                       ("confusion matrix", "confusion.png"), ("metrics per epoch", "metrics.csv"),
                       ("resolved config", "config.yaml"), ("best weights", "checkpoints/best/model.safetensors"),
                       ("last checkpoint", "checkpoints/last/")]:
        print(f"  {label:<18} {run_dir / rel}")
    print("\nnext: pdenets eval --checkpoint", run_dir, "   |   pdenets train --help")
    return 0
