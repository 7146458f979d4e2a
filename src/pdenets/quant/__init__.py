"""Integer quantisation (docs/design.md §16).

* :func:`instrument` — the fake-quant simulation of a (BN-folded) network, built from its ``torch.fx`` graph:
  per-channel weights (8 or 4 bits), per-tensor uint8 activations, int32 biases (:class:`QuantSim`:
  ``calibrate``, ``freeze``, the modes float / observe / dynamic / static);
* :func:`gptq_weights` — GPTQ-style error-compensating rounding of every layer;
* :func:`export_qdq` — the integer ONNX model (QDQ), and :func:`ort_session`, :func:`ort_run`, :func:`ort_latency`,
  :func:`integer_ops` to run it in onnxruntime.

The rotations that make a network easier to quantise are in :mod:`pdenets.symmetry.rotations`, the whole pipeline
(``pdenets symmetry quantize``) in :mod:`pdenets.quant.pipeline`.
"""

from pdenets.quant.fakequant import ActQuant, QConv, QuantSim, instrument
from pdenets.quant.gptq import gptq_weights
from pdenets.quant.onnx_qdq import export_qdq, integer_ops, ort_latency, ort_run, ort_session

__all__ = ["ActQuant", "QConv", "QuantSim", "export_qdq", "gptq_weights", "instrument", "integer_ops", "ort_latency",
           "ort_run", "ort_session"]
