"""The fused derivative/BN/product op (pdenets.layers.fused) against the reference module path.

The reference path (conv_d → bn_d → ⊙ conv_c, all separate modules with autograd) is an independent
implementation, itself checked against einsum transcriptions in test_blocks.py. Every other path — the fused
core (the custom op ``pdenets::derivative_bn``, eager), and the same under ``torch.compile`` — is compared
with it in float64 (≤ 1e-10) and float32 (≤ 1e-5), forward and backward, NCHW and channels_last
(docs/design.md §17).
"""

import copy
import time

import pytest
import torch

from _helpers import randomize_bn
from pdenets.layers.fused import fused_derivative_bn
from pdenets.layers.ql_blocks import create_block


def _pair(eq, n, o, stride, **kw):
    ref = create_block(eq, n, o, stride, zero_init_last=False, fused=False, **kw)
    randomize_bn(ref, seed=3)
    fus = copy.deepcopy(ref)
    fus.fused = True
    return ref, fus


def _run(block, x, g):
    x = x.detach().clone().requires_grad_()
    y = block(x)
    y.backward(g)
    grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in block.named_parameters()}
    return y.detach(), x.grad, grads, {n.removeprefix("_orig_mod."): b.clone() for n, b in block.named_buffers()}


def _max_diff(a, b):
    ya, xa, ga, ba = a
    yb, xb, gb, bb = b
    diffs = [(ya - yb).abs().max(), (xa - xb).abs().max()]
    diffs += [(ga[k] - gb[k]).abs().max() for k in ga]
    diffs += [(ba[k].double() - bb[k].double()).abs().max() for k in ba]
    return float(max(diffs))


@pytest.mark.parametrize("eq", ["eq3", "eq3p", "eq4", "eq5", "eq6", "eq7"])
@pytest.mark.parametrize("train", [True, False])
def test_fused_equals_reference_float64(eq, train, f64):
    torch.manual_seed(0)
    for ws, stride, o, mode in ((True, 1, 6, "zeros"), (False, 2, 12, "reflect")):
        ref, fus = _pair(eq, 6, o, stride, weight_sharing=ws, padding_mode=mode)
        ref.train(train)
        fus.train(train)
        x = torch.randn(2, 6, 7, 7)
        g = torch.randn_like(ref(x))
        ref.load_state_dict(fus.state_dict())  # undo the running-stat update of the shape probe
        assert _max_diff(_run(ref, x, g), _run(fus, x, g)) < 1e-10


@pytest.mark.parametrize("train", [True, False])
def test_fused_equals_reference_float32(train):
    """Max |difference| ≤ 1e-5 in float32, forward and backward, at the default BN initialisation (γ = 1,
    β = 0) and, in eval mode, the running statistics of one training batch.

    An absolute float32 tolerance only means something for quantities of order one (the spacing of float32
    numbers is 1.5e-5 at 128), so the output gradient is scaled to make every compared gradient O(1)
    (outputs ≈ 5, gradients ≤ 2). At the unscaled gradient (weight gradients up to ≈ 180) the same
    comparison is made relative to the largest magnitude: ≤ 1e-6, a few float32 roundings.
    """
    torch.manual_seed(1)
    ref = create_block("eq3", 16, 16, 1, zero_init_last=False, fused=False)
    if not train:
        ref(torch.randn(4, 16, 12, 12))
    ref.train(train)
    x = torch.randn(4, 16, 12, 12)
    g = torch.randn(4, 16, 12, 12)
    for scale, tol, relative in ((0.01, 1e-5, False), (1.0, 1e-6, True)):
        r = copy.deepcopy(ref)
        fus = copy.deepcopy(ref)
        fus.fused = True
        a, b = _run(r, x, g * scale), _run(fus, x, g * scale)
        if relative:
            top = max(float(t.abs().max()) for t in (a[0], a[1], *a[2].values()))
            assert _max_diff(a, b) <= tol * top
        else:
            assert max(float(t.abs().max()) for t in a[2].values()) < 3
            assert _max_diff(a, b) <= tol


@pytest.mark.parametrize("coef", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_gradcheck_tiny(coef, train):
    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, requires_grad=True)
    n, m, s = 2, 2, 1
    xd = torch.randn(2, n, 4, 4, **kw)
    wd = torch.randn(n * m, 1, 3, 3, **kw)
    xc = torch.randn(2, n, 4, 4, **kw) if coef else None
    wc = torch.randn(n * m, n, 1, 1, **kw) if coef else None
    gamma = torch.rand(n * m, **kw)
    beta = torch.randn(n * m, **kw)
    if train:
        mean = invstd = None
    else:
        mean = torch.randn(n * m, dtype=torch.float64)
        invstd = torch.rand(n * m, dtype=torch.float64) + 0.5

    def f(xd, wd, xc, wc, gamma, beta):
        return torch.ops.pdenets.derivative_bn(xd, wd, xc, wc, gamma, beta, mean, invstd, s, 1, n, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (xd, wd, xc, wc, gamma, beta), eps=1e-6, atol=1e-6, fast_mode=True)


def test_fused_saves_less_memory():
    """Tensors kept for backward: the fused block keeps about a third of the reference's bytes."""
    ref, fus = _pair("eq3", 8, 8, 1)

    def saved_bytes(block):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(2, 8, 16, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x).sum()
        return sum(seen.values())

    assert saved_bytes(fus) < 0.45 * saved_bytes(ref)


def test_channels_last_and_autocast():
    torch.manual_seed(2)
    ref, fus = _pair("eq3", 8, 16, 2)
    x = torch.randn(2, 8, 10, 10)
    g = torch.randn(2, 16, 5, 5)
    ref_cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    fus_cl = copy.deepcopy(fus).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    # gradients O(1) (output gradient scaled), where an absolute float32 tolerance is meaningful
    assert _max_diff(_run(ref_cl, xcl, g * 0.01), _run(fus_cl, xcl, g * 0.01)) < 1e-5
    for train in (True, False):
        ref.train(train)
        fus.train(train)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = _run(ref, x, g)
            b = _run(fus, x, g)
        assert a[0].dtype == b[0].dtype == torch.bfloat16
        assert b[1].dtype == torch.float32 and all(v.dtype == torch.float32 for v in b[2].values())
        # bf16 has an 8-bit mantissa: compare relative to the size of each quantity.
        for u, v in [(a[0], b[0]), (a[1], b[1])] + [(a[2][k], b[2][k]) for k in a[2]]:
            assert (u.float() - v.float()).abs().max() <= 0.05 * u.float().abs().max() + 1e-3


def test_torch_compile():
    torch.manual_seed(3)
    ref, fus = _pair("eq3", 4, 4, 1)
    x = torch.randn(2, 4, 6, 6)
    g = torch.randn(2, 4, 6, 6) * 0.01  # gradients O(1), where an absolute float32 tolerance is meaningful
    t0 = time.perf_counter()
    compiled = torch.compile(fus, backend="aot_eager")
    got = _run(compiled, x, g)
    assert time.perf_counter() - t0 < 60
    assert _max_diff(_run(ref, x, g), got) < 1e-5


def test_fused_falls_back_after_bn_folding(f64):
    from pdenets.symmetry.fold import fold_bn

    ref, fus = _pair("eq3", 6, 6, 1)
    fus.eval()
    folded = fold_bn(fus)
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        assert (folded(x) - fus(x)).abs().max() < 1e-10


def test_fused_argument_errors():
    from pdenets.layers.fused import AUTO_FUSED

    blk = create_block("eq3", 4, 4, 1)
    assert blk.fused is None
    assert blk.train().use_fused == AUTO_FUSED[(True, False)]  # default: the path measured fastest per mode
    assert blk.eval().use_fused == AUTO_FUSED[(False, False)]
    assert create_block("eq3", 4, 4, 1, fused=True).use_fused
    assert not create_block("eq3", 4, 4, 1, fused=False).use_fused
    assert not create_block("eq3", 4, 4, 1, var_coef="affine").use_fused  # no fused path with var_coef
    with pytest.raises(ValueError, match="both xc and conv_c"):
        fused_derivative_bn(torch.randn(1, 4, 5, 5), blk.conv_d, blk.bn_d, None, blk.conv_c)


def test_conv_bn_folds_eval_batchnorm(f64):
    """Eval mode: the folded conv equals the two modules (float64), padding modes and conv bias included;
    training mode and hooked modules take the two-module path (so BN statistics update and hooks fire)."""
    from pdenets.layers.fused import conv_bn

    torch.manual_seed(4)
    for mode, bias in (("zeros", False), ("reflect", True)):
        conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias, padding_mode=mode)
        bn = torch.nn.BatchNorm2d(5)
        randomize_bn(torch.nn.Sequential(conv, bn), seed=5)
        x = torch.randn(2, 3, 9, 9)
        bn.eval()
        assert (conv_bn(conv, bn, x) - bn(conv(x))).abs().max() < 1e-12
        w2 = torch.randn_like(conv.weight)  # a replacement weight (as the blocks pass A's reordered one)
        want = bn(conv._conv_forward(x, w2, conv.bias))
        assert (conv_bn(conv, bn, x, weight=w2) - want).abs().max() < 1e-12
        seen: list[int] = []
        h = bn.register_forward_hook(lambda *a, s=seen: s.append(1))
        conv_bn(conv, bn, x)
        assert (conv_bn(conv, bn, x, weight=w2) - want).abs().max() < 1e-12  # hooked: unfolded path
        h.remove()
        assert seen == [1, 1]
        bn.train()
        before = bn.running_mean.clone()
        y = conv_bn(conv, bn, x)
        assert not torch.equal(before, bn.running_mean)
        bn.running_mean.copy_(before)
        assert (y - torch.nn.functional.batch_norm(conv(x), None, None, bn.weight, bn.bias, True)).abs().max() < 1e-12


@pytest.mark.parametrize("train", [True, False])
def test_whole_model_fused_channels_last_equals_module_path(train, f64):
    """A whole QLNet on the fused path (fused cores, channels_last inside, eval-mode BN folding of the
    stem and skips) against the same weights run module by module in NCHW: logits and every gradient."""
    from pdenets.models import create_model

    torch.manual_seed(6)
    ref = create_model("qlnet18_eq3_small", num_classes=5, zero_init_last=False, fused=False, channels_last=False)
    randomize_bn(ref, seed=7)
    fus = create_model("qlnet18_eq3_small", num_classes=5, zero_init_last=False, fused=True, channels_last=True)
    fus.load_state_dict(ref.state_dict())
    ref.train(train)
    fus.train(train)
    x = torch.randn(3, 3, 12, 12)
    g = torch.randn(3, 5)
    assert _max_diff(_run(ref, x, g), _run(fus, x, g)) < 1e-10


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _layout_pair(dtype, layout):
    """An Eq. (3) block 6 → 12, stride 2 (C x subsampled, a downsample skip), random BN, in dtype / layout."""
    torch.manual_seed(11)
    ref, fus = _pair("eq3", 6, 12, 2)
    ref, fus = (b.to(dtype).to(memory_format=LAYOUTS[layout]) for b in (ref, fus))
    x = torch.randn(2, 6, 7, 7, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
    g = (torch.randn(2, 12, 4, 4, dtype=dtype) * 0.01).contiguous(memory_format=LAYOUTS[layout])
    return ref, fus, x, g  # (output gradient scaled: gradients O(1), where an absolute fp32 tolerance means something)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_path_equals_reference_all_layouts(dtype, layout):
    """The eager fused path (custom op) equals the module path: outputs, input and parameter gradients and
    running statistics, training and eval mode, float64 ≤ 1e-10 and float32 ≤ 1e-5, NCHW and channels_last."""
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    ref, fus, x, g = _layout_pair(dtype, layout)
    for train in (True, False):
        ref.train(train)
        fus.train(train)
        assert _max_diff(_run(ref, x, g), _run(fus, x, g)) <= tol


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compiled_path_equals_reference(layout):
    """``torch.compile`` (AOTAutograd, one compile per mode) keeps the custom op whole — it appears as one node in
    the forward and the backward graphs, with no graph break — and equals the module path in float64 (≤ 1e-10).
    inductor (the default backend) runs the same graphs with the op as an extern kernel (benchmarks/README.md)."""
    from torch._dynamo.backends.common import aot_autograd

    ref, fus, x, g = _layout_pair(torch.float64, layout)
    seen: list[str] = []
    groups: list[int] = []  # of every convolution in the graphs: the depthwise one must sit inside the op

    def record(gm, _inputs):
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        seen.extend(str(n.target) for n in calls)
        groups.extend(n.args[9 if "backward" in str(n.target) else 8] for n in calls if "convolution" in str(n.target))
        return gm

    compiled = torch.compile(fus, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
    torch._dynamo.reset()
    for train in (True, False):
        ref.train(train)
        fus.train(train)
        assert _max_diff(_run(ref, x, g), _run(compiled, x, g)) <= 1e-10
    assert "pdenets.derivative_bn.default" in seen and "pdenets.derivative_bn_backward.default" in seen
    assert groups and set(groups) == {1}  # only the 1×1 convs A and the skip: the core was not decomposed


def test_compiled_default_path_equals_reference(f64):
    """``fused=None`` under ``torch.compile`` takes the path AUTO_FUSED names for compiled modes (decided while
    dynamo traces) and equals the module path in float64 (≤ 1e-10), training and eval mode, channels_last."""
    from pdenets.layers.fused import AUTO_FUSED

    ref, fus, x, g = _layout_pair(torch.float64, "channels_last")
    fus.fused = None
    ops: list[str] = []

    def record(gm, _inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    compiled = torch.compile(fus, backend=record, fullgraph=True)
    torch._dynamo.reset()
    for train in (True, False):
        ref.train(train)
        fus.train(train)
        ops.clear()
        assert _max_diff(_run(ref, x, g), _run(compiled, x, g)) <= 1e-10
        assert any("derivative_bn" in t for t in ops) == AUTO_FUSED[(train, True)]


def test_custom_op_opcheck(f64):
    """torch.library.opcheck: schema, fake kernel (shapes, dtypes, strides), autograd registration and AOT
    dispatch of ``pdenets::derivative_bn`` (and so of its backward op), training and eval mode."""
    torch.manual_seed(12)
    n, m = 3, 2
    xd = torch.randn(2, n, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    wd = torch.randn(n * m, 1, 3, 3, requires_grad=True)
    wc = torch.randn(n * m, n, 1, 1, requires_grad=True)
    gamma, beta = torch.rand(n * m, requires_grad=True), torch.randn(n * m, requires_grad=True)
    running = (torch.randn(n * m), torch.rand(n * m) + 0.5)
    for xc, w, stats, stride in ((xd, wc, (None, None), 2), (None, None, running, 1)):
        torch.library.opcheck(torch.ops.pdenets.derivative_bn.default,
                              (xd, wd, xc, w, gamma, beta, *stats, stride, 1, n, 1e-5))
