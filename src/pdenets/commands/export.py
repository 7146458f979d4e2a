"""``pdenets export``: write a trained (or fresh) model as an ONNX, TorchScript or torch.export file."""

from __future__ import annotations

import argparse

from pdenets.commands.common import add_checkpoint_args, load_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX / TorchScript / torch.export with BatchNorm folded",
        description="Write a model file for inference. The model comes from any model pdenets wrote "
        "(--checkpoint: a run, a checkpoint, a teleported/compressed/folded artifact; read with "
        "pdenets.load) or is built untrained by name "
        "(--model). Every BatchNorm is folded into its conv first (pdenets.export.fuse_bn). The written "
        "file is loaded back and its output compared with PyTorch's on a random batch (onnxruntime for "
        "ONNX); the maximum absolute difference is printed.",
        epilog="example: pdenets export --model qlnet50_eq3 --num-classes 100 --format onnx --out qlnet.onnx",
    )
    src = p.add_mutually_exclusive_group(required=True)
    add_checkpoint_args(p, group=src)
    src.add_argument("--model", metavar="NAME", help="registered model name (untrained weights)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "torch-export"), help="file format")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx / .pt / .pt2)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size for --model (default: model's)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's input_size)")
    p.add_argument("--batch", type=int, default=1, help="example batch size (the batch stays dynamic)")
    p.add_argument("--no-fuse-bn", action="store_true", help="keep BatchNorm layers (eval mode) in the graph")
    p.add_argument("--legacy-onnx", action="store_true", help="use the TorchScript-based ONNX exporter")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: exporter's)")
    p.add_argument("--no-verify", action="store_true", help="do not reload and compare the written file")
    p.add_argument("--tol", type=float, default=1e-4, help="max |difference| accepted by the check (1e-4)")
    p.set_defaults(func=run)
    return p


def _load(args: argparse.Namespace):
    from pdenets.errors import UsageError

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, args.which)
        if meta.get("kind", "image") != "image":
            raise UsageError(f"--checkpoint {args.checkpoint!r} holds a non-image model; export handles image models")
        return model, meta["file"], meta
    from pdenets.models import create_model, list_models

    if args.model not in list_models() and not _is_timm(args.model):
        raise UsageError(f"--model {args.model!r} is not a registered model (see `pdenets models`)")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    return create_model(args.model, **kwargs), args.model, {}


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from pdenets.errors import UsageError
    from pdenets.export import export_model, verify_onnx

    if args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    model, label, meta = _load(args)
    model.eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    _, h, w = cfg.get("input_size", (3, 224, 224))
    c = meta.get("in_chans") or getattr(model, "in_chans", 3)
    if meta.get("img_size"):
        h = w = int(meta["img_size"])
    if args.img_size is not None:
        if args.img_size < 1:
            raise UsageError(f"--img-size must be a positive integer, got {args.img_size}")
        h = w = args.img_size
    shape = (args.batch, c, h, w)
    path = export_model(
        model, args.format, args.out, shape, fold=not args.no_fuse_bn, dynamo=not args.legacy_onnx, opset=args.opset
    )
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB): {label}, {args.format}, input {'x'.join(map(str, shape))}")
    if args.no_verify:
        return 0
    x = torch.randn(max(2, args.batch), c, h, w)
    if args.format == "onnx":
        err = verify_onnx(path, model, x)
        runtime = "onnxruntime"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if args.format == "torchscript":
                loaded = torch.jit.load(str(path))
            else:
                loaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            err = float((loaded(x) - model(x)).abs().max())
        runtime = args.format
    print(f"check: max |{runtime} - pytorch| = {err:.2e} on a random batch of {x.shape[0]}")
    if err > args.tol:
        print(f"check FAILED: difference above --tol {args.tol:g}")
        return 1
    return 0
