"""``pdenets eval``: evaluate a checkpoint (top-1 / top-5, loss) and write its confusion matrix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdenets.commands.common import (
    add_checkpoint_args,
    check_out,
    device_type,
    load_checkpoint,
    non_negative_int,
    positive_int,
)
from pdenets.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: top-1/top-5 and a confusion matrix",
        description="Evaluate any model pdenets wrote (a run directory — its best checkpoint unless "
        "--which last —, a checkpoint directory, a teleported/compressed/folded artifact or its "
        "model.safetensors) on a split of its data set, or of --dataset. Prints top-1/top-5 and writes "
        "confusion.png and eval.json to --out (default: next to the model, in eval-<dataset>-<split>/).",
        epilog="example: pdenets eval --checkpoint runs/demo   (uses runs/demo/checkpoints/best)",
    )
    add_checkpoint_args(p)
    p.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    p.add_argument("--data-dir", help="root of a local torchvision data set (default: as in training)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="split: test (default; scored once per run by `pdenets train`), val (the validation split "
                   "that chose the best checkpoint) or train")
    p.add_argument("--img-size", type=positive_int, help="image side (default: as in training)")
    p.add_argument("--batch-size", "-b", type=positive_int, default=256)
    p.add_argument("--workers", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_type, default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--amp", choices=("bf16", "fp16"))
    p.add_argument("--out", help="directory for confusion.png and eval.json")
    p.set_defaults(func=run)
    return p


def evaluate_checkpoint(checkpoint: str, which: str = "best", dataset: str | None = None,
                        data_dir: str | None = None, split: str = "test", img_size: int | None = None,
                        batch_size: int = 256, workers: int = 0, device: str = "auto", amp: str | None = None,
                        out: str | None = None) -> dict:
    """Load, evaluate, write ``confusion.png`` + ``eval.json``; returns the metrics (percentages)."""
    from pdenets.datasets import build_dataset, dataset_info
    from pdenets.train.data import make_eval_loader
    from pdenets.train.distributed import pick_device
    from pdenets.train.engine import evaluate
    from pdenets.train.report import plot_confusion

    if batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size}")
    if out is not None:
        check_out(out)
    dev = pick_device(device)
    model, meta = load_checkpoint(checkpoint, which, dev)
    wfile = Path(meta["file"])
    name = dataset or meta.get("dataset")
    if not name:
        raise UsageError(f"checkpoint {str(wfile)!r} does not name its data set: pass --dataset")
    info = dataset_info(name, data_dir or meta.get("data_dir"))
    if info.kind != meta.get("kind", "image"):
        raise UsageError(f"data set {name!r} holds {info.kind} data but the model takes {meta.get('kind', 'image')} "
                         f"data")
    if info.num_classes != meta.get("num_classes"):
        raise UsageError(f"data set {name!r} has {info.num_classes} classes but the model has "
                         f"{meta.get('num_classes')}")
    ds = build_dataset(name, split, img_size=img_size or meta.get("img_size"),
                       data_dir=data_dir or meta.get("data_dir"), crop_pct=meta.get("crop_pct"))
    res = evaluate(model, make_eval_loader(ds, batch_size, workers), dev, num_classes=info.num_classes, amp=amp,
                   confusion=True, progress=True)
    base = wfile.parent.parent.parent if wfile.parent.parent.name == "checkpoints" else wfile.parent
    out_dir = Path(out) if out else base / f"eval-{name.replace(':', '_').replace('/', '_')}-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{meta['model']} on {name} ({split})"
    plot_confusion(res["confusion"], info.class_names, out_dir / "confusion.png", title)
    record = dict(checkpoint=str(wfile), model=meta["model"], dataset=name, split=split, top1=res["top1"],
                  top5=res["top5"], loss=res["loss"], n=res["n"], confusion=res["confusion"])
    (out_dir / "eval.json").write_text(json.dumps(record, indent=1))
    record["out_dir"] = str(out_dir)
    return record


def run(args: argparse.Namespace) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.which, args.dataset, args.data_dir, args.split, args.img_size,
                            args.batch_size, args.workers, args.device, args.amp, args.out)
    print(f"{r['model']} on {r['dataset']} ({r['split']}, {r['n']} samples): top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    print(f"confusion matrix: {r['out_dir']}/confusion.png   metrics: {r['out_dir']}/eval.json")
    return 0
