"""``pdenets demo``: the main job — the whole spine of the library on the bundled digits, in two minutes.

1. **train** ``qlnet18_eq3p_small`` (Liu-Shao-Bai Eq. (3) with the 1×1 premix P that makes the §4 symmetry
   exact, docs/design.md §3) with the ``quick`` recipe (20 epochs) and the ``nuclear-prox`` hook (singular-value
   soft-thresholding of every rotatable segment's writer matrix, so that the trained model is compressible);
   the best epoch is chosen on the validation split, the test split is scored once;
2. **verify** the symmetry on the trained weights (a random group element of every segment, float32 and
   float64, plus the power check);
3. **compress** losslessly (exact width reduction + gauge fixing) and save the compressed model as an
   artifact (``RUN/compressed/``: any command's ``--checkpoint`` reads it, ``train --init-from`` fine-tunes it);
4. **export** the compressed model to ONNX and check it in onnxruntime;
5. print one table (parameters, accuracy, identical predictions, output differences) and add
   ``compression`` and ``onnx`` to ``summary.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

DEMO_MODEL = "qlnet18_eq3p_small"
DEMO_PROX = 5.0  # λ of the nuclear-prox hook (threshold λ·lr per step)
DEMO_EPOCHS = 20  # the quick recipe's 12 epochs reach ~98.0% on the 1,144-image training part; 20 reach ~99%
DEMO_RTOL = 1e-6  # relative singular-value threshold of the compression


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="the main job: train an exactly-symmetric QL-ConvNet on digits, verify, compress, export",
        description=f"Train {DEMO_MODEL} on scikit-learn's bundled digits (16x16; fixed stratified test split, "
        f"validation split carved from the training part) with the 'quick' recipe for {DEMO_EPOCHS} epochs and the "
        "nuclear-norm prox "
        f"(--nuclear-prox {DEMO_PROX:g}); verify the weight-space symmetry; compress the model losslessly; export "
        "the compressed model to ONNX and check it in onnxruntime; print one table and write the run directory "
        "(report, curves, confusion matrix, summary.json, checkpoints, compressed/). No download; about two "
        "minutes on 2 CPU cores. Any `pdenets train` option overrides the recipe.",
        epilog="example: pdenets demo --out runs/demo --epochs 6",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue an interrupted demo")
    from pdenets.commands.train import add_train_options

    add_train_options(p)
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace):
    from pdenets.commands.train import overrides_from_args
    from pdenets.train.config import resolve_config

    ov = overrides_from_args(args)
    ov.setdefault("model", DEMO_MODEL)
    ov.setdefault("epochs", DEMO_EPOCHS)
    if args.nuclear_prox is None and not args.hook and _rotatable(ov["model"], ov.get("model_kwargs", {})):
        ov["extra_hooks"] = [f"nuclear-prox:{DEMO_PROX:g}"]
    return resolve_config(recipe="quick", overrides=ov)


def _rotatable(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether ``name`` is a QL-ConvNet with a segment the nuclear prox can make compressible."""
    import torch

    from pdenets.models import create_model
    from pdenets.symmetry.analyze import analyze
    from pdenets.symmetry.prox import prox_segments

    try:
        with torch.device("meta"):
            return bool(prox_segments(analyze(create_model(name, num_classes=10, in_chans=1, **kwargs))))
    except Exception:  # not a QL net, or arguments the model refuses (the trainer reports those)
        return False


def _test_split(meta: dict[str, Any]):
    from pdenets.commands.symmetry import test_data

    return test_data(meta, 0, split="test")


def _verify(model, x) -> tuple[str, dict[str, Any]]:
    import torch

    from pdenets.symmetry.analyze import analyze
    from pdenets.symmetry.verify import verify

    a = analyze(model)
    res = verify(model, None, x[:16], generator=torch.Generator().manual_seed(0))
    text = "\n".join([a.table(), "", res.table()])
    return text, dict(fp32_rel=res.err32, fp64_rel=res.err64, groups=[s.group for s in a.segments])


def _compress(model, meta: dict[str, Any], x, y, out: Path) -> tuple[Any, dict[str, Any]]:
    import torch

    from pdenets.artifacts import save_artifact
    from pdenets.commands.common import data_meta
    from pdenets.symmetry.compress import compress_widths, gauge_fix, n_params
    from pdenets.symmetry.fold import fold_bn

    small, _ = compress_widths(fold_bn(copy.deepcopy(model).double(), share_kernels=True), rtol=DEMO_RTOL)
    small, _ = gauge_fix(small)
    small = small.float().eval()
    with torch.no_grad():
        y0, y1 = model(x), small(x)
    p0, p1 = y0.argmax(1), y1.argmax(1)
    rec = dict(params=n_params(small), params_original=n_params(model),
               identical_predictions=bool((p0 == p1).all()),
               max_rel_diff=float((y1 - y0).abs().max() / y0.abs().max()),
               test_top1_original=100 * float((p0 == y).double().mean()),
               test_top1=100 * float((p1 == y).double().mean()), rtol=DEMO_RTOL)
    save_artifact(small, out, dict(data_meta(meta), source=meta["file"], test_top1=rec["test_top1"], compression=rec))
    return small, rec


def _export(model, x, out: Path) -> dict[str, Any]:
    from pdenets.export import export_model, verify_onnx

    path = export_model(model, "onnx", out, (1, *x.shape[1:]), dynamo=False)
    return dict(file=str(path), exporter="torch.onnx (TorchScript-based)", max_abs_diff=verify_onnx(path, model, x))


def _spine(run_dir: Path, summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Verify, compress, export and check the best checkpoint; returns (printed text, summary additions)."""
    from pdenets.artifacts import load_artifact

    model, meta = load_artifact(run_dir, "best")
    x, y = _test_split(meta)
    extra: dict[str, Any] = {}
    try:
        text, extra["symmetry"] = _verify(model, x)
    except ValueError as e:  # not a QL-ConvNet: the symmetry steps do not apply
        text = f"symmetry: not applicable to {meta['model']} ({e})"
        small = model
    else:
        small, extra["compression"] = _compress(model, meta, x, y, run_dir / "compressed")
    extra["onnx"] = _export(small, x, run_dir / ("compressed" if "compression" in extra else ".") / "model.onnx")
    return text, extra


def _table(summary: dict[str, Any], extra: dict[str, Any]) -> str:
    c, o = extra.get("compression"), extra["onnx"]
    rows = [("test top-1 (trained, best on validation)", f"{summary['test_top1']:.2f}%"),
            ("validation top-1 (best epoch)", f"{summary.get('val_top1', float('nan')):.2f}%")]
    if c:
        rows += [("parameters before -> after compression",
                  f"{c['params_original']:,} -> {c['params']:,} ({100 * c['params'] / c['params_original']:.1f}%)"),
                 ("test top-1 before -> after", f"{c['test_top1_original']:.2f}% -> {c['test_top1']:.2f}%"),
                 ("identical test predictions", str(c["identical_predictions"])),
                 ("max rel. output difference (fp32)", f"{c['max_rel_diff']:.1e}")]
    if "symmetry" in extra:
        s = extra["symmetry"]
        rows.append(("symmetry verified (rel. diff fp32 / fp64)", f"{s['fp32_rel']:.1e} / {s['fp64_rel']:.1e}"))
    rows.append(("ONNX (onnxruntime) max |difference|", f"{o['max_abs_diff']:.1e}"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def _write_summary(run_dir: Path, extra: dict[str, Any], wall: float) -> None:
    from pdenets.train.checkpoint import atomic_write_text

    path = run_dir / "summary.json"
    data = json.loads(path.read_text())
    data.update(extra, demo_wall_seconds=wall)
    atomic_write_text(path, json.dumps(data, indent=2))


def run(args: argparse.Namespace) -> int:
    import torch

    from pdenets.commands.train import set_threads
    from pdenets.train.build import preflight
    from pdenets.train.report import append_report_section
    from pdenets.train.trainer import train

    set_threads(args.threads)
    t0 = time.time()
    cfg = _config(args)
    preflight(cfg)
    n = torch.get_num_threads()
    print(f"pdenets demo: training {cfg.model} on {cfg.dataset} ({cfg.img_size or 16}px) for {cfg.epochs} epochs "
          f"with the 'quick' recipe{' + ' + ', '.join(cfg.hooks) if cfg.hooks else ''} ({n} CPU thread"
          f"{'s' if n > 1 else ''}) ...", flush=True)
    summary = train(cfg)
    if summary["status"] == "diverged":
        print(f"pdenets demo: {summary['message']}")
        return 1
    run_dir = Path(summary["run_dir"])
    text, extra = _spine(run_dir, summary)
    wall = time.time() - t0
    _write_summary(run_dir, extra, wall)
    table = _table(summary, extra)
    append_report_section(run_dir, "The spine: verify, compress, export", f"```\n{text}\n\n{table}\n```")
    print(f"\n{text}\n\n{table}\n  {'whole command':<41}  {wall:.0f} s\n")
    _print_locations(run_dir, "compression" in extra)
    return 0


def _print_locations(run_dir: Path, compressed: bool) -> None:
    print("where everything is:")
    items = [("report", "report.md"), ("summary", "summary.json"), ("learning curves", "curves.png"),
             ("confusion matrix", "confusion.png"), ("metrics per epoch", "metrics.csv"),
             ("resolved config", "config.yaml"), ("best checkpoint", "checkpoints/best/"),
             ("last checkpoint", "checkpoints/last/")]
    if compressed:
        items += [("compressed model", "compressed/"), ("its ONNX file", "compressed/model.onnx")]
    else:
        items += [("ONNX file", "model.onnx")]
    for label, rel in items:
        print(f"  {label:<18} {run_dir / rel}")
    nxt = run_dir / "compressed" if compressed else run_dir
    print(f"\nnext: pdenets eval --checkpoint {nxt}   |   pdenets train --init-from {nxt} --epochs 2 --out runs/ft")
