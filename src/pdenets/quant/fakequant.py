"""Fake quantisation of a whole network, built from its ``torch.fx`` graph: the PyTorch reference of the integer
model that :mod:`pdenets.quant.onnx_qdq` writes (docs/design.md §16).

:func:`instrument` traces a model (BN folded: :func:`pdenets.symmetry.fold_bn`) down to modules without
children and

* replaces every conv (``nn.Conv2d``, the folded derivative conv of Liu-Shao-Bai Eq. (3), a :class:`FoldedDepthwise`)
  and ``nn.Linear`` by a :class:`QConv` (same parameter names, so ``torch.func.functional_call`` with the
  rotated parameters of :func:`pdenets.symmetry.transform.transformed_params` still applies);
* with activation quantisation, puts one :class:`ActQuant` on every tensor that a conv/linear or a product /
  sum of two tensors (the block's D P u ⊙ C u and its residual addition u + F(u)) reads or writes — each
  tensor once, as onnxruntime's QDQ format does. Everything else (the radial activations, pooling) stays in
  floating point between a dequantisation and a quantisation;
* rewrites a depthwise conv with a channel multiplier m > 1 (the derivative conv D, n → m·n with groups n) as m
  multiplier-1 depthwise convs stacked back to the same channel order (an exact reparametrisation: onnxruntime
  has fast integer kernels for those only).

The arithmetic (the integer model's):

* weights: symmetric, per output channel, round-to-nearest, levels −2^(b−1) … 2^(b−1)−1, scale max|w|/(2^(b−1)−1)
  (b = 8, or b = 4 stored in int8 containers: the 4-bit grid inside the int8 kernels);
* activations: asymmetric uint8 per tensor, scale (max − min)/255 with 0 inside the range, zero point
  round(−min/scale), from min/max over calibration images (:meth:`QuantSim.calibrate`);
* biases: int32 with scale s_x·s_w (the accumulator's), as in onnxruntime's QLinearConv.

Modes (:meth:`QuantSim.set_mode`): ``float`` (the float network), ``observe`` (record activation ranges),
``dynamic`` (differentiable: straight-through rounding, scales from the current weights and the batch's
ranges — the surrogate a learned rotation is optimised on), ``static`` (the frozen integer model, computed with
PT2E's ``quantized_decomposed`` quantize/dequantize ops on int8/int32 tensors, which the ``torch.export``-based ONNX
exporter writes as QuantizeLinear/DequantizeLinear).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from pdenets.symmetry.fold import FoldedDepthwise

__all__ = ["ActQuant", "QConv", "QuantSim", "instrument", "weight_grid"]

MODES = ("float", "observe", "dynamic", "static")
INT32 = (-(2**31), 2**31 - 1)


def _qd():
    """``torch.ops.quantized_decomposed`` (PT2E's quantize/dequantize ops, which torch's ONNX exporter writes as
    QuantizeLinear/DequantizeLinear; registered by importing ``torch.ao.quantization.fx._decomposed``)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def weight_grid(bits: int) -> tuple[int, int]:
    """(q_min, q_max) of symmetric ``bits``-bit weights: (−128, 127) or (−8, 7)."""
    if bits not in (4, 8):
        raise ValueError(f"weight bits must be 4 or 8, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale max|w_c| / q_max (a zero row gets scale 1)."""
    amax = w.reshape(w.shape[0], -1).abs().amax(1)
    return torch.where(amax > 0, amax, torch.ones_like(amax)) / weight_grid(bits)[1]


def _per_row(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (w.dim() - 1)))


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer levels, scale) of round-to-nearest per-channel quantisation (levels as float tensors)."""
    s = weight_scale(w, bits) if scale is None else scale
    lo, hi = weight_grid(bits)
    return torch.clamp(torch.round(w / _per_row(s, w)), lo, hi), s


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric uint8 over [min(lo, 0), max(hi, 0)] (onnxruntime's convention)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if not scale > 0:
        return 1.0, 0
    scale = float(torch.tensor(scale, dtype=torch.float32))  # the float32 value the ONNX file stores
    return scale, int(min(255, max(0, round(-lo / scale))))


class ActQuant(nn.Module):
    """Quantisation point of one activation tensor (uint8, per tensor); see the module docstring for the modes."""

    def __init__(self) -> None:
        super().__init__()
        self.mode, self.qparams = "float", (1.0, 0)
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def freeze(self) -> None:
        """Scale and zero point from the observed range."""
        s, z = act_qparams(self.lo, self.hi)
        self.scale.fill_(s)
        self.zero_point.fill_(z)
        self.qparams = (s, z)  # Python numbers: exported as constants

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self.lo.copy_(torch.minimum(self.lo, x.detach().min().to(self.lo)))
            self.hi.copy_(torch.maximum(self.hi, x.detach().max().to(self.hi)))
            return x
        if self.mode == "dynamic":
            lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
            s = ((hi - lo) / 255).clamp_min(1e-12)
            z = torch.round(-lo / s).detach().clamp(0, 255)
            return (torch.clamp(_round_ste(x / s) + z, 0, 255) - z) * s
        if self.mode == "static":
            s, z = self.qparams
            return _qd().dequantize_per_tensor(_qd().quantize_per_tensor(x, s, z, 0, 255, torch.uint8), s, z, 0, 255,
                                               torch.uint8)
        return x


class QConv(nn.Module):
    """A conv or linear layer with quantised weights (and, in ``static`` mode, an int32 bias).

    Keeps the parameter names of the module it replaces (``weight``, ``bias``). In ``static`` mode it computes
    with the int8 levels ``w_int`` (per-channel ``w_scale``) and the int32 levels ``b_int`` (scale s_x·s_w),
    dequantised by ``quantized_decomposed.dequantize_per_channel`` — exported as DequantizeLinear of integer
    initializers, the QDQ layout onnxruntime fuses into QLinearConv / QGemm.
    """

    def __init__(self, module: nn.Module, bits: int) -> None:
        super().__init__()
        weight_grid(bits)
        self.mode, self.bits, self.input_quant = "float", bits, None
        if isinstance(module, FoldedDepthwise):
            self.kind, w = "conv", module.full_weight().detach()
            self.stride, self.dilation, self.groups = module.stride, 1, module.groups
            self.padding, self.padding_mode = w.shape[-1] // 2, module.padding_mode
        elif isinstance(module, nn.Conv2d):
            self.kind, w = "conv", module.weight.detach()
            self.stride, self.dilation, self.groups = module.stride, module.dilation, module.groups
            self.padding, self.padding_mode = module.padding, module.padding_mode
            if isinstance(self.padding, str):
                raise ValueError(f"QConv: string padding {self.padding!r} is not supported")
        elif isinstance(module, nn.Linear):
            self.kind, w = "linear", module.weight.detach()
        else:
            raise TypeError(f"QConv replaces Conv2d, Linear or FoldedDepthwise, got {type(module).__name__}")
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        b = getattr(module, "bias", None)
        self.bias = nn.Parameter(b.detach().clone(), requires_grad=False) if b is not None else None
        n = w.shape[0]
        self.register_buffer("w_int", torch.zeros(w.shape, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("b_int", None)
        self.register_buffer("b_scale", None)

    def freeze(self, input_scale: float | None, weight: torch.Tensor | None = None) -> None:
        """Integer weights (of ``weight``, e.g. GPTQ's, else the module's, round-to-nearest; the scale is always
        the module's own max|w_c|/q_max) and the int32 bias (with ``input_scale``, the scale of the activation
        read; None: the bias stays float, weight-only quantisation)."""
        w = (self.weight if weight is None else weight).detach().float()
        q, s = quantize_weight(w, self.bits, weight_scale(self.weight.detach().float(), self.bits))
        self.w_int, self.w_scale = q.to(torch.int8), s.float()
        if self.bias is not None and input_scale is not None:
            bs = torch.tensor(input_scale, dtype=torch.float32) * self.w_scale
            self.b_int = torch.clamp(torch.round(self.bias.detach().float() / bs), *INT32).to(torch.int32)
            self.b_scale = bs

    def static_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The dequantised integer weight and bias of ``static`` mode (float32)."""
        lo, hi = weight_grid(self.bits)
        w = _qd().dequantize_per_channel(self.w_int, self.w_scale, self.zero_point, 0, lo, hi, torch.int8)
        if self.b_int is None:
            return w, None if self.bias is None else self.bias.float()
        return w, _qd().dequantize_per_channel(self.b_int, self.b_scale, self.zero_point, 0, *INT32, torch.int32)

    def _apply_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        if self.padding_mode != "zeros":
            p = self.padding if isinstance(self.padding, int) else self.padding[0]
            x = F.pad(x, (p, p, p, p), mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            return self._apply_op(x, *self.static_weight())
        w = self.weight
        if self.mode == "dynamic":
            s = weight_scale(w, self.bits)
            lo, hi = weight_grid(self.bits)
            w = torch.clamp(_round_ste(w / _per_row(s, w)), lo, hi) * _per_row(s, w)
        return self._apply_op(x, w, self.bias)


class _LeafTracer(fx.Tracer):
    """Traces down to modules without children (convs, activations, pools stay single call_module nodes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, FoldedDepthwise)) or not any(True for _ in m.children())


def _is_binary(n: fx.Node) -> bool:
    """A product or sum of two tensors (the block's D P u ⊙ C u and u + F(u)), not of a tensor and a constant."""
    ops = (operator.mul, operator.add, torch.mul, torch.add)
    return n.op == "call_function" and n.target in ops and sum(isinstance(a, fx.Node) for a in n.args) == 2


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _drop_identities(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Identity, nn.Dropout)):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()


def _insert_act_quants(gm: fx.GraphModule, ops: list[fx.Node]) -> dict[fx.Node, str]:
    """One :class:`ActQuant` after every tensor that a quantised op reads or writes; node → its quantiser."""
    points: dict[fx.Node, None] = {}
    for n in ops:
        for a in n.args:
            if isinstance(a, fx.Node):
                points[a] = None
        points[n] = None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    names: dict[fx.Node, str] = {}
    for v in sorted(points, key=order.get):
        name = f"act_quant_{len(names)}"
        gm.add_submodule(name, ActQuant())
        with gm.graph.inserting_after(v):
            q = gm.graph.call_module(name, (v,))
        v.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        names[v] = name
    return names


def _direction(m: QConv, d: int, mult: int) -> QConv:
    """Output channels m·j + d of a channel-multiplier depthwise conv: a multiplier-1 depthwise conv."""
    conv = nn.Conv2d(m.groups, m.groups, tuple(m.weight.shape[-2:]), m.stride, m.padding, m.dilation, m.groups,
                     m.bias is not None, m.padding_mode).to(m.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(m.weight[d::mult])
        if m.bias is not None:
            conv.bias.copy_(m.bias[d::mult])
    return QConv(conv, m.bits)


def _split_multipliers(gm: fx.GraphModule, convs: list[str]) -> list[tuple[list[fx.Node], fx.Node]]:
    """Rewrite every depthwise conv with a channel multiplier m > 1 (the derivative conv D of Eqs. (3)-(7), n → m·n
    with groups n) as m multiplier-1 depthwise convs, stacked so that channel m·j + d is the same: onnxruntime has
    fast integer kernels for multiplier-1 depthwise convs only (a grouped QLinearConv is ten times slower).
    Returns (the m direction nodes, the node that stacks them) per rewritten conv."""
    groups = []
    for n in list(gm.graph.nodes):
        m = gm.get_submodule(n.target) if n.op == "call_module" and n.target in convs else None
        if m is None or m.kind != "conv" or m.groups == 1 or m.weight.shape[1] != 1 or m.weight.shape[0] == m.groups:
            continue
        mult = m.weight.shape[0] // m.groups
        parts = []
        with gm.graph.inserting_before(n):
            for d in range(mult):
                name = f"{n.target}_direction{d}"
                gm.add_submodule(name, _direction(m, d, mult))
                parts.append(gm.graph.call_module(name, n.args))
            stacked = gm.graph.call_function(torch.stack, (parts,), {"dim": 2})
            flat = gm.graph.call_method("flatten", (stacked, 1, 2))
        n.replace_all_uses_with(flat)
        gm.graph.erase_node(n)
        gm.delete_submodule(n.target)
        i = convs.index(n.target)
        convs[i:i + 1] = [p.target for p in parts]
        groups.append((parts, flat))
    return groups


class QuantSim:
    """The instrumented network (``module``, a ``torch.fx.GraphModule``), its quantised layers and activation
    quantisation points, and the steps that turn it into the integer model: :meth:`calibrate`, :meth:`freeze`."""

    def __init__(self, module: fx.GraphModule, convs: list[str], acts: list[str], weight_bits: int,
                 act_bits: int | None, ties: dict[str, str] | None = None) -> None:
        self.module, self.convs, self.acts = module, convs, acts
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.ties = ties or {}  # quantiser → the quantiser whose range it takes (the parts of a split conv)

    def set_mode(self, mode: str) -> QuantSim:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        for name in self.convs:
            self.module.get_submodule(name).mode = "float" if mode == "observe" else mode
        for name in self.acts:
            self.module.get_submodule(name).mode = mode
        return self

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> QuantSim:
        """Record every activation's min/max on the float network over ``batches`` (calibration images)."""
        self.set_mode("observe")
        dt = next(self.module.parameters()).dtype
        for xb in batches:
            self.module(xb.to(dt))
        return self

    @torch.no_grad()
    def freeze(self, weights: dict[str, torch.Tensor] | None = None) -> QuantSim:
        """Activation scales from the observed ranges, integer weights (``weights``: name → replacement weight,
        e.g. from :func:`pdenets.quant.gptq.gptq_weights`) and int32 biases; switches to ``static`` (float32)."""
        for name, leader in self.ties.items():
            src, dst = self.module.get_submodule(leader), self.module.get_submodule(name)
            dst.lo.copy_(src.lo)
            dst.hi.copy_(src.hi)
        for name in self.acts:
            self.module.get_submodule(name).freeze()
        for name in self.convs:
            m = self.module.get_submodule(name)
            aq = self.module.get_submodule(m.input_quant) if m.input_quant else None
            m.freeze(float(aq.scale) if aq is not None else None, (weights or {}).get(name))
        self.module.float()
        return self.set_mode("static")

    @torch.no_grad()
    def layer_errors(self, x: torch.Tensor, batch: int = 128) -> dict[str, float]:
        """Sensitivity of every quantised layer: ‖y_l − y‖ / ‖y‖ on ``x``, where y is the float network and y_l the
        network with only layer l's weights rounded to its grid (round-to-nearest, per channel; activations float).
        Call before :meth:`freeze` (it uses the float weights); leaves the simulation in ``float`` mode."""
        self.set_mode("float")
        dt = next(self.module.parameters()).dtype
        xb = list(x.to(dt).split(batch))
        ref = torch.cat([self.module(b) for b in xb])
        errors = {}
        for name in self.convs:
            layer = self.module.get_submodule(name)
            layer.mode = "dynamic"
            y = torch.cat([self.module(b) for b in xb])
            layer.mode = "float"
            errors[name] = float((y - ref).norm() / ref.norm())
        return errors

    def output_scale(self) -> float | None:
        """Scale of the quantiser on the network's output (one step of the integer model's output grid)."""
        out = next(n for n in self.module.graph.nodes if n.op == "output").args[0]
        if isinstance(out, fx.Node) and out.op == "call_module" and out.target in self.acts:
            return float(self.module.get_submodule(out.target).scale)
        return None


def _quantizable(gm: fx.GraphModule, weight_bits: int) -> list[str]:
    """Replace every conv/linear by a :class:`QConv`; their names, in graph order."""
    convs = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear, FoldedDepthwise)):
            _set_module(gm, n.target, QConv(gm.get_submodule(n.target), weight_bits))
            convs.append(n.target)
    return convs


def instrument(model: nn.Module, weight_bits: int = 8, act_bits: int | None = 8,
               first_last_bits: int | None = None) -> QuantSim:
    """A :class:`QuantSim` of ``model`` (a copy, eval mode, fused training paths off), in ``float`` mode.

    ``act_bits``: 8 (uint8 activations) or None (weights only). ``first_last_bits``: weight bits of the first and
    the last quantised layer (the stem conv that reads the image, the classifier), if they differ from
    ``weight_bits`` (the usual 8 of low-bit ConvNets). Raises ``ValueError`` for other bit widths or a model
    ``torch.fx`` cannot trace.
    """
    weight_grid(weight_bits)
    if first_last_bits is not None:
        weight_grid(first_last_bits)
    _qd()  # registered before any ONNX export builds its op registry
    if act_bits not in (8, None):
        raise ValueError(f"activation bits must be 8 or None, got {act_bits}")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = False
    try:
        gm = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ... for Python control flow on tensors
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}: {why}") from e
    _drop_identities(gm)
    convs = _quantizable(gm, weight_bits)
    if first_last_bits is not None and convs:
        for name in {convs[0], convs[-1]}:
            gm.get_submodule(name).bits = first_last_bits
    groups = _split_multipliers(gm, convs)
    ops = [n for n in gm.graph.nodes if (n.op == "call_module" and n.target in convs) or _is_binary(n)]
    names = _insert_act_quants(gm, ops) if act_bits else {}
    ties = {names[p]: names[flat] for parts, flat in groups for p in parts if flat in names and p in names}
    acts = list(names.values())
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in convs and acts:
            src = n.args[0]
            quantized = src.op == "call_module" and src.target in acts
            gm.get_submodule(n.target).input_quant = src.target if quantized else None
    gm.recompile()
    return QuantSim(gm, convs, acts, weight_bits, act_bits, ties)
