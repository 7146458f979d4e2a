"""Model files for inference: ONNX (runs in onnxruntime), TorchScript and ``torch.export`` programs.

The exported graph is the eval-mode model with every BatchNorm folded into its conv
(:func:`pdenets.export.fuse_bn`) and the fused training op of :mod:`pdenets.layers.fused` switched off (an
autograd function is a training-time device; after folding the block is two convs and a product anyway).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

FORMATS = ("onnx", "torchscript", "torch-export")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
ONNX_INLINE_LIMIT = 2**31 - 2**26  # protobuf's 2 GB limit on one file, less a margin for the graph
EXPORTER_NAMES = {"dynamo": "dynamo (torch.export-based, onnxscript)", "legacy": "legacy (TorchScript-based)"}


def _n_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


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
                if "external_data" in inspect.signature(torch.onnx.export).parameters:
                    kwargs["external_data"] = _n_bytes(net) >= ONNX_INLINE_LIMIT  # one file unless protobuf's 2 GB
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


@dataclass
class OnnxExport:
    """What :func:`export_onnx` did: the file, the exporter used ('dynamo' or 'legacy'), why the dynamo
    exporter was not used (``fallback``, empty if it was) and the onnxruntime check (None without one)."""

    path: Path
    exporter: str
    fallback: str = ""
    max_abs_diff: float | None = None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def export_onnx(
    model: nn.Module,
    out: str | Path,
    input_shape: tuple[int, ...],
    exporter: str = "auto",
    fold: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: torch.Tensor | None = None,
    tol: float = 1e-4,
) -> OnnxExport:
    """Write ``model`` as ONNX with the chosen exporter and (given ``check``, a batch) compare onnxruntime with
    PyTorch on it.

    ``exporter``: 'dynamo' (torch's ``torch.export``-based exporter; needs ``onnxscript``), 'legacy' (the
    TorchScript-based one) or 'auto' (default): dynamo, and the legacy exporter if dynamo raises for any reason
    (``onnxscript`` missing, an operator it cannot convert ...) or its file fails the check (onnxruntime cannot
    load it, or differs by more than ``tol``). An explicit exporter raises its own error.
    """
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; expected one of {', '.join(ONNX_EXPORTERS)}")
    if check is not None:
        import onnxruntime  # noqa: F401  (a missing runtime is not a reason to switch exporters)
    order = ("dynamo", "legacy") if exporter == "auto" else (exporter,)
    why = ""
    for name in order:
        last = name == order[-1]
        try:
            path = export_model(model, "onnx", out, input_shape, fold, dynamic_batch, dynamo=name == "dynamo",
                                opset=opset)
            err = verify_onnx(path, model, check) if check is not None else None
        except Exception as e:
            if last and why:
                raise RuntimeError(f"ONNX export failed with both exporters (dynamo: {why}; legacy: "
                                   f"{_first_line(e)})") from e
            if last:
                raise
            why = _first_line(e)
            continue
        if err is not None and not err <= tol and not last:
            why = f"onnxruntime differs from PyTorch by {err:.1e} > {tol:g}"
            continue
        return OnnxExport(path, name, why, err)
    raise AssertionError("unreachable")  # pragma: no cover
