"""Is the model being traced into a graph? The switches of the traceable fallbacks (docs/design.md §12).

Two parts of pdenets cannot enter every graph capture: the custom autograd Functions (the fused derivative +
BatchNorm op of :mod:`pdenets.layers.fused`, the memory-flat reversible units of
:mod:`pdenets.dynamics.reversible`) and the Python-side input checks (``if x.shape[1] != ...: raise``), which
``torch.fx`` cannot evaluate on its symbolic ``Proxy`` values. While a model is traced they step aside for the
equivalent module-by-module computation, which every tracer records op by op.

* **TorchScript** (``torch.jit.script``) is handled at each call site with ``if torch.jit.is_scripting():`` —
  the compiler evaluates that condition itself and never compiles the branch not taken, so the unscriptable
  code may stay in the other branch. (It must be its own ``if``: ``not torch.jit.is_scripting() and ...`` is
  not evaluated at compile time.)
* **torch.jit.trace** records concrete tensors: only the custom Functions step aside (:func:`is_tracing`).
* **torch.fx** symbolic tracing (``torch.fx.symbolic_trace``, timm's / torchvision's feature extractors):
  the Functions and the checks step aside (:func:`is_tracing`, :func:`is_symbolic_tracing`); ``torch.export``
  and ``torch.compile``, which run the model on real or fake tensors, keep the normal path.

Every condition here depends on how the model is being run, never on tensor values, so a traced graph computes
the same function as the eager model (tested in float64 in ``tests/test_timm_compat.py``).
"""

from __future__ import annotations

import torch
from torch.fx import _symbolic_trace

__all__ = ["is_symbolic_tracing", "is_tracing"]


def is_symbolic_tracing() -> bool:
    """True while ``torch.fx`` traces symbolically (the inputs are ``Proxy`` objects); False under
    ``torch.export`` and ``torch.compile``, which also set torch.fx's tracing flag but run on (fake) tensors."""
    fn = getattr(_symbolic_trace, "is_fx_symbolic_tracing", None)
    if fn is not None:
        return bool(fn())
    return bool(_symbolic_trace.is_fx_tracing()) and not torch.compiler.is_compiling()  # torch < 2.6


def is_tracing() -> bool:
    """True while ``torch.jit.trace`` records the model or ``torch.fx`` traces it symbolically: the custom
    autograd Functions then give way to their module-by-module equivalents."""
    return torch.jit.is_tracing() or is_symbolic_tracing()
