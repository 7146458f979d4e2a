"""``pdenets export``: write a trained (or fresh) model as an ONNX, TorchScript or torch.export file, or as a
hub-ready timm folder."""

from __future__ import annotations

import argparse
import sys

from pdenets.commands.common import (
    add_checkpoint_args,
    check_out,
    load_checkpoint,
    non_negative_float,
    positive_int,
)

ONNX_EXPORTER_CHOICES = ("auto", "dynamo", "legacy")  # pdenets.export.ONNX_EXPORTERS (not imported for --help)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX / TorchScript / torch.export (BatchNorm folded) or a timm hub folder",
        description="Write a model file for inference. The model comes from any model pdenets wrote "
        "(--checkpoint: a run, a checkpoint, a teleported/compressed/folded artifact; read with "
        "pdenets.load) or is built untrained by name "
        "(--model). Every BatchNorm is folded into its conv first (pdenets.export.fuse_bn). The written "
        "file is loaded back and its output compared with PyTorch's on a random batch (onnxruntime for "
        "ONNX); the maximum absolute difference is printed. --format timm writes a folder (config.json + "
        "model.safetensors, timm's Hugging Face Hub layout) that timm.create_model('local-dir:DIR', "
        "pretrained=True) rebuilds after `import pdenets` and timm.models.push_to_hf_hub uploads; a folded, "
        "teleported or compressed artifact cannot be rebuilt by timm from a name and arguments and is refused.",
        epilog="examples: pdenets export --model qlnet50_eq3 --num-classes 100 --format onnx --out qlnet.onnx   |   "
        "pdenets export --checkpoint runs/demo --which best --format timm --out hub/qlnet-digits",
    )
    src = p.add_mutually_exclusive_group(required=True)
    add_checkpoint_args(p, group=src)
    src.add_argument("--model", metavar="NAME", help="registered model name (untrained weights)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "torch-export", "timm"),
                   help="file format; timm: a hub-ready folder")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (.onnx / .pt / .pt2) or folder (timm)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier size for --model (default: model's)")
    p.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's input_size)")
    p.add_argument("--batch", type=positive_int, default=1, help="example batch size (the batch stays dynamic)")
    p.add_argument("--no-fuse-bn", action="store_true", help="keep BatchNorm layers (eval mode) in the graph")
    p.add_argument("--onnx-exporter", choices=ONNX_EXPORTER_CHOICES, default=None,
                   help="auto (default): torch's torch.export-based exporter (dynamo, needs onnxscript), and the "
                   "TorchScript-based one (legacy) if it fails or its file fails the check; or one of them only")
    p.add_argument("--legacy-onnx", action="store_true", help="same as --onnx-exporter legacy")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset version (default: exporter's)")
    p.add_argument("--no-verify", action="store_true", help="do not reload and compare the written file")
    p.add_argument("--tol", type=non_negative_float, default=1e-4, help="max |difference| accepted by the check (1e-4)")
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


def _onnx_exporter(args: argparse.Namespace) -> str:
    """The ONNX exporter asked for (``--onnx-exporter``, ``--legacy-onnx``); refuses ONNX options elsewhere."""
    from pdenets.errors import UsageError

    if args.legacy_onnx and args.onnx_exporter not in (None, "legacy"):
        raise UsageError(f"--legacy-onnx contradicts --onnx-exporter {args.onnx_exporter}")
    asked = [o for o, v in (("--onnx-exporter", args.onnx_exporter), ("--legacy-onnx", args.legacy_onnx),
                            ("--opset", args.opset)) if v]
    if args.format != "onnx" and asked:
        raise UsageError(f"{asked[0]} applies to --format onnx only, not {args.format}")
    return "legacy" if args.legacy_onnx else (args.onnx_exporter or "auto")


def _input_shape(args: argparse.Namespace, model, meta: dict) -> tuple[int, int, int, int]:
    from pdenets.errors import UsageError

    if args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    _, h, w = cfg.get("input_size", (3, 224, 224))
    c = meta.get("in_chans") or getattr(model, "in_chans", 3)
    if meta.get("img_size"):
        h = w = int(meta["img_size"])
    if args.img_size is not None:
        if args.img_size < 1:
            raise UsageError(f"--img-size must be a positive integer, got {args.img_size}")
        h = w = args.img_size
    return args.batch, c, h, w


def run(args: argparse.Namespace) -> int:
    import torch

    exporter = _onnx_exporter(args)
    check_out(args.out, kind="dir" if args.format == "timm" else "file")  # before any work
    model, label, meta = _load(args)
    model.eval()
    shape = _input_shape(args, model, meta)
    x = torch.randn(max(2, shape[0]), *shape[1:])
    if args.format == "timm":
        return _run_timm(args, model, label, meta, x)
    if args.format == "onnx":
        return _run_onnx(args, model, label, shape, exporter, x)
    return _run_torch(args, model, label, shape, x)


def _report(path, label: str, what: str, shape, runtime: str, err: float | None, tol: float) -> int:
    """Print what was written and the check; exit code 1 if the check is above ``tol``."""
    from pathlib import Path

    p = Path(path)
    size = sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size
    print(f"wrote {p} ({size / 1e6:.1f} MB): {label}, {what}, input {'x'.join(map(str, shape))}")
    if err is None:
        return 0
    print(f"check: max |{runtime} - pytorch| = {err:.2e} on a random batch of {max(2, shape[0])}")
    if not err <= tol:
        print(f"check FAILED: difference above --tol {tol:g}")
        return 1
    return 0


def _run_onnx(args: argparse.Namespace, model, label: str, shape, exporter: str, x) -> int:
    import logging

    from pdenets.errors import UsageError
    from pdenets.export import EXPORTER_NAMES, export_onnx

    # onnxscript's IR logs a warning per empty attribute list it meets; they say nothing about the file
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        res = export_onnx(model, args.out, shape, exporter, fold=not args.no_fuse_bn, opset=args.opset,
                          check=None if args.no_verify else x, tol=args.tol)
    except ImportError as e:
        raise UsageError(f"{e.name or e} is not installed (pip install {e.name or 'onnx onnxruntime onnxscript'}); "
                         f"it is needed for --format onnx{'' if args.no_verify else ' and its check'}") from None
    except Exception as e:  # an exporter that cannot convert this model: one line, not a traceback
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        other = "" if exporter == "auto" else f"; try --onnx-exporter {'legacy' if exporter == 'dynamo' else 'dynamo'}"
        print(f"pdenets export: ONNX export failed ({exporter}): {detail}{other}", file=sys.stderr)
        return 1
    what = f"onnx, exporter {EXPORTER_NAMES[res.exporter]}"
    if res.fallback:
        print(f"ONNX exporter: the dynamo exporter failed ({res.fallback}); used the legacy one")
    return _report(res.path, label, what, shape, "onnxruntime", res.max_abs_diff, args.tol)


def _run_torch(args: argparse.Namespace, model, label: str, shape, x) -> int:
    import warnings

    import torch

    from pdenets.export import export_model

    path = export_model(model, args.format, args.out, shape, fold=not args.no_fuse_bn)
    if args.no_verify:
        return _report(path, label, args.format, shape, args.format, None, args.tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path)) if args.format == "torchscript" else torch.export.load(str(path)).module()
    with torch.no_grad():
        err = float((loaded(x) - model(x)).abs().max())
    return _report(path, label, args.format, shape, args.format, err, args.tol)


def _run_timm(args: argparse.Namespace, model, label: str, meta: dict, x) -> int:
    from pdenets.errors import UsageError
    from pdenets.export import save_timm_folder
    from pdenets.export.timm_hub import check_timm_folder

    if args.no_fuse_bn:
        raise UsageError("--no-fuse-bn does not apply to --format timm (the folder always keeps the BatchNorms)")
    out = save_timm_folder(model, args.out, meta)
    err = None if args.no_verify else check_timm_folder(out, model, x)
    print(f"timm: after `import pdenets`, timm.create_model('local-dir:{out}', pretrained=True) rebuilds it; "
          f"timm.models.push_to_hf_hub uploads the same files")
    return _report(out, label, "timm folder (config.json + model.safetensors)", (args.batch, *x.shape[1:]),
                   "timm local-dir", err, args.tol)
