"""Model files for inference: ONNX (runs in onnxruntime), TorchScript and ``torch.export`` programs.

The exported graph is the eval-mode model with every BatchNorm folded into its conv
(:func:`pdenets.export.fuse_bn`) and the fused training op of :mod:`pdenets.layers.fused` switched off (an
autograd function is a training-time device; after folding the block is two convs and a product anyway).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

FORMATS = ("onnx", "torchscript", "torch-export")


def prepare_for_export(model: nn.Module, fold: bool = True) -> nn.Module:
    """Eval-mode copy with BatchNorm folded (``fold=True``) and every QL block on its reference path."""
    from pdenets.symmetry.fold import fold_bn

    model = fold_bn(model) if fold else copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = False
    return model


def export_model(
    model: nn.Module,
    fmt: str,
    out: str | Path,
    input_shape: tuple[int, ...],
    fold: bool = True,
    dynamic_batch: bool = True,
    dynamo: bool = True,
    opset: int | None = None,
) -> Path:
    """Write ``model`` as ``fmt`` ('onnx', 'torchscript' or 'torch-export') to ``out``; returns the path.

    ``input_shape`` includes the batch (e.g. (1, 3, 224, 224)); with ``dynamic_batch`` the ONNX and
    torch.export files accept any batch size. ``dynamo`` selects torch's ``torch.export``-based ONNX
    exporter (default) or the older TorchScript-based one.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = prepare_for_export(model, fold)
    if dynamic_batch and input_shape[0] < 2:
        input_shape = (2, *input_shape[1:])  # a batch of 1 would be specialised by torch.export
    x = torch.randn(input_shape)
    batch = torch.export.Dim("batch", min=1) if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            kwargs = dict(input_names=["input"], output_names=["output"], dynamo=dynamo)
            if opset is not None:
                kwargs["opset_version"] = opset
            if dynamic_batch and dynamo:
                kwargs["dynamic_shapes"] = ({0: batch},)
            elif dynamic_batch:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            if dynamo:
                kwargs["verbose"] = False
            torch.onnx.export(net, (x,), str(out), **kwargs)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, x), str(out))
        else:
            ep = torch.export.export(net, (x,), dynamic_shapes=({0: batch},) if dynamic_batch else None)
            torch.export.save(ep, str(out))
    return out


def verify_onnx(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max |onnxruntime(x) − model(x)| (model in eval mode, float32 on the CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().float().numpy()})[0]
    was = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.train(was)
    return float((torch.from_numpy(got) - ref.float()).abs().max())
