"""``pdenets eval``: evaluate a checkpoint (top-1 / top-5, loss) and write its confusion matrix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdenets.commands.common import (
    add_checkpoint_args,
    check_out,
    data_meta,
    device_type,
    load_checkpoint,
    model_kwarg,
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
    p.add_argument("-m", "--model-kwarg", type=model_kwarg, action="append", default=[], metavar="KEY=VALUE",
                   help="re-discretise an ODE/PDE network (rh_*, ruseckas_*) before evaluating it: steps=N (int, or a "
                   "list per stage; T kept unless h is given), h=H, factor=F (F x the steps, h/F), scheme=NAME "
                   "(e.g. rk4, stormer_verlet, leapfrog), interpolation=constant (default: theta held on the trained "
                   "steps, the same ODE) or linear (docs/design.md §14); repeatable")
    p.add_argument("--save-model", metavar="DIR", help="also write the evaluated (re-discretised) model as an artifact "
                   "to DIR, e.g. to fine-tune it at the new steps with `pdenets train --init-from DIR`")
    p.set_defaults(func=run)
    return p


def evaluate_checkpoint(checkpoint: str, which: str = "best", dataset: str | None = None,
                        data_dir: str | None = None, split: str = "test", img_size: int | None = None,
                        batch_size: int = 256, workers: int = 0, device: str = "auto", amp: str | None = None,
                        out: str | None = None, model_kwargs: dict | None = None,
                        save_model: str | None = None) -> dict:
    """Load, re-discretise if ``model_kwargs`` asks (:func:`rediscretized_checkpoint`), evaluate, write
    ``confusion.png`` + ``eval.json``; returns the metrics (percentages)."""
    from pdenets.datasets import build_dataset, dataset_info
    from pdenets.train.data import make_eval_loader
    from pdenets.train.distributed import pick_device
    from pdenets.train.engine import evaluate
    from pdenets.train.report import plot_confusion

    if batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size}")
    if out is not None:
        check_out(out)
    if save_model is not None:
        check_out(save_model, "--save-model")
    dev = pick_device(device)
    model, meta = load_checkpoint(checkpoint, which, dev)
    grid = None
    if model_kwargs:
        model, grid = rediscretized_checkpoint(model, model_kwargs)
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
    tag = "".join(f"-{k}{_tag(v)}" for k, v in sorted((model_kwargs or {}).items()))
    out_dir = Path(out) if out else base / f"eval-{name.replace(':', '_').replace('/', '_')}-{split}{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{meta['model']} on {name} ({split})"
    plot_confusion(res["confusion"], info.class_names, out_dir / "confusion.png", title)
    record = dict(checkpoint=str(wfile), model=meta["model"], dataset=name, split=split, top1=res["top1"],
                  top5=res["top5"], loss=res["loss"], n=res["n"], confusion=res["confusion"], rediscretized=grid)
    (out_dir / "eval.json").write_text(json.dumps(record, indent=1))
    record["out_dir"] = str(out_dir)
    if save_model is not None:
        from pdenets.artifacts import save_artifact

        extra = {k: meta[k] for k in ("epoch", "step", "val_top1") if k in meta}
        record["saved"] = str(save_artifact(model, save_model, dict(data_meta(meta), **extra, eval_top1=res["top1"],
                                                                   eval_split=split)))
    return record


def _tag(v) -> str:
    return "_".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def rediscretized_checkpoint(model, model_kwargs: dict):
    """(the re-discretised model, its edit record) for ``-m steps=… -m h=… -m factor=… -m scheme=…``
    (:func:`pdenets.analysis.rediscretize.rediscretize`); a one-line usage error for other keys or refusals."""
    from pdenets.analysis.rediscretize import REDISCRETIZE_KEYS, rediscretize
    from pdenets.artifacts import edits

    bad = sorted(set(model_kwargs) - set(REDISCRETIZE_KEYS))
    if bad:
        raise UsageError(f"-m {bad[0]}: eval re-discretises a network with -m {', -m '.join(REDISCRETIZE_KEYS)} only "
                         f"(other constructor arguments are fixed by the checkpoint)")
    try:
        new = rediscretize(model, **model_kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot re-discretise the model: {str(e).splitlines()[0]}") from None
    record = edits(new)[-1]
    print(f"re-discretised: {record['before']} -> {record['after']}", flush=True)
    return new.eval(), record


def run(args: argparse.Namespace) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.which, args.dataset, args.data_dir, args.split, args.img_size,
                            args.batch_size, args.workers, args.device, args.amp, args.out,
                            dict(args.model_kwarg), args.save_model)
    print(f"{r['model']} on {r['dataset']} ({r['split']}, {r['n']} samples): top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    print(f"confusion matrix: {r['out_dir']}/confusion.png   metrics: {r['out_dir']}/eval.json")
    if r.get("saved"):
        print(f"model: {r['saved']} (fine-tune with: pdenets train --init-from {Path(r['saved']).parent})")
    return 0
