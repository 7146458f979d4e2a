"""The integer ONNX model of a :class:`~pdenets.quant.fakequant.QuantSim`, and running it in onnxruntime
(docs/design.md §16).

:func:`export_qdq` exports the ``static`` simulation with torch's ``torch.export``-based ONNX exporter. The
simulation computes with PT2E's ``quantized_decomposed`` ops, which the exporter writes one for one as
QuantizeLinear / DequantizeLinear: the file is in the QDQ format that ``onnxruntime.quantization.quantize_static``
writes — int8 weight initializers with per-channel DequantizeLinear (axis 0), int32 biases with scale s_x·s_w,
uint8 activations quantised and dequantised per tensor — with the simulation's own scales, zero points and
integers, so the two compute the same arithmetic.

onnxruntime then fuses DequantizeLinear → Conv/Gemm/Mul/Add → QuantizeLinear into its integer kernels
(QLinearConv, QGemm, QLinearMul, QLinearAdd: :func:`integer_ops` lists them). Threads are set on the session
(``SessionOptions``), never process-wide.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdenets.quant.fakequant import QuantSim

__all__ = ["QdqExport", "export_qdq", "integer_ops", "ort_latency", "ort_run", "ort_session"]

INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearMul", "QLinearAdd", "QLinearConcat", "ConvInteger",
               "MatMulInteger", "QLinearAveragePool", "QLinearGlobalAveragePool")


@dataclass
class QdqExport:
    """The integer ONNX file, the exporter used and how many weights / biases it stores as integers."""

    path: Path
    exporter: str
    int_weights: int
    int_biases: int


def _int_initializers(path: Path) -> tuple[int, int]:
    """(int8 weight initializers, int32 bias initializers) read by DequantizeLinear nodes of the file."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(path)).graph
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    kinds = Counter(i.data_type for i in graph.initializer if i.name in dq_inputs)
    return kinds[TensorProto.INT8], kinds[TensorProto.INT32]


def export_qdq(sim: QuantSim, path: str | Path, input_shape: tuple[int, ...]) -> QdqExport:
    """Write the frozen ``sim`` (``static`` mode) as an integer QDQ ONNX file (dynamic batch).

    The ``torch.export``-based exporter is used: it writes ``quantized_decomposed`` quantize/dequantize ops as
    QuantizeLinear/DequantizeLinear with integer initializers (the TorchScript-based exporter has no
    translation for them)."""
    from pdenets.export.files import export_onnx

    sim.set_mode("static")
    res = export_onnx(sim.module, path, input_shape, exporter="dynamo", fold=False)
    n_w, n_b = _int_initializers(res.path)
    return QdqExport(res.path, res.exporter, n_w, n_b)


def ort_session(path: str | Path, threads: int = 2, optimize: bool = True, optimized_path: str | Path | None = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads (its own thread pool; nothing process-wide)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(session, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Outputs of ``session`` on ``x`` (float32), in batches."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i:i + batch].detach().float().numpy()})[0] for i in range(0, len(x), batch)]
    return torch.from_numpy(np.concatenate(outs))


def ort_latency(session, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one ``session.run`` on the batch ``x``, in milliseconds."""
    feed = {session.get_inputs()[0].name: x.detach().float().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def integer_ops(path: str | Path) -> dict[str, int]:
    """Operator counts of the graph onnxruntime runs after its optimisations (QLinearConv etc. = integer kernels)."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "optimized.onnx"
        ort_session(path, threads=1, optimized_path=opt)
        ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    return dict(sorted(ops.items()))
