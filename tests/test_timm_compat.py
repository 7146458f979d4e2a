"""timm's own model checks (its tests/test_models.py), rewritten for pdenets' image models, one model per family.

What timm checks on every model it ships — forward, backward, the default config, ``features_only`` and
``forward_intermediates``, FX forward and backward, TorchScript — here for the QL-ConvNets of Eqs. (3)-(7) (the
fused path and the radial activations included), the variable-coefficient variant and the three Ruthotto-Haber
dynamics (reversible units included). Where a model is traced or scripted, the fused op and the reversible
units give way to a traceable path (docs/design.md §12): every such check compares against the eager model
in float64, whose normal path is checked to be the fused / reversible one. Last, the naming rule of issue 14:
pdenets' model names use prefixes no timm model uses, and no pdenets registration replaces a timm model.
"""

from __future__ import annotations

import copy
import math
import sys

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import pdenets
from _helpers import randomize_bn
from pdenets.layers.tracing import is_symbolic_tracing, is_tracing
from pdenets.models.qlnet import QLNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits (conftest.py)

# name, constructor overrides, the custom autograd Function its eager training path runs (None: none)
CASES = {
    "eq3": ("qlnet18_eq3_small", dict(fused=True), "pdenets_derivative_bn"),  # the fused core (custom op)
    "eq3p-fused": ("qlnet18_eq3p_small", dict(fused=True), "pdenets_derivative_bn"),
    "eq4": ("qlnet18_eq4_small", dict(fused=True), "pdenets_derivative_bn"),
    "eq5": ("qlnet18_eq5_small", dict(fused=True), "pdenets_derivative_bn"),
    "eq6": ("qlnet18_eq6_small", dict(fused=True), "pdenets_derivative_bn"),
    "eq7": ("qlnet18_eq7_nows_x6_small", dict(fused=True), "pdenets_derivative_bn"),
    "eq3-hardball-all": ("qlnet18_eq3_small", dict(act="hardball", act_placement="all", fused=True),
                         "pdenets_derivative_bn"),
    "eq3-varcoef": ("qlnet18_eq3_varcoef_small", {}, None),
    "eq3-imagenet-stem": ("qlnet18_eq3", dict(fused=True), "pdenets_derivative_bn"),  # 7×7/2 stem + max-pool, 64 px
    "rh-hamiltonian-rev": ("rh_hamiltonian_small", dict(reversible=True), "ReversibleUnitFn"),
    "rh-parabolic": ("rh_parabolic_small", {}, None),
    "rh-second-order-rev": ("rh_second_order_small", dict(reversible=True), "ReversibleUnitFn"),
}
PREFIXES = ("qlnet", "rh_", "ruseckas_")
TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64: the traceable paths equal the normal ones up to rounding


def _build(case: str, dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs) -> nn.Module:
    """The case's model with random BatchNorm statistics and scales (so no branch starts as zero)."""
    name, overrides, _ = CASES[case]
    torch.manual_seed(seed)
    model = timm.create_model(name, **dict(overrides, **kwargs))
    return randomize_bn(model.to(dtype), seed)


def _input(model: nn.Module, batch: int = 2, dtype: torch.dtype = torch.float64, size: int | None = None,
           seed: int = 1) -> torch.Tensor:
    """A batch at the model's default input size capped at 64 px (32 px for the small QL nets, 16 px RH), scaled
    so the radial activations clip."""
    c, h, _ = model.pretrained_cfg["input_size"]
    size = size or min(h, 64)
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(batch, c, size, size, generator=g, dtype=dtype)


def _hooked(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """forward_features(x), and the outputs of the modules ``feature_info`` names (by forward hooks: an
    independent reference for features_only and forward_intermediates)."""
    names = [f["module"] for f in model.feature_info]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    assert not missing, f"feature_info names modules that do not exist: {missing}"
    outs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in names]
    try:
        y = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return y, [outs[n] for n in names]


def _grad_fn_names(t: torch.Tensor) -> set[str]:
    """Names of every autograd node that produced ``t``."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _train_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and parameter gradients of one training-mode forward/backward (loss: mean of squares + mean)."""
    model.train()
    out = model(x)
    out = next(iter(out.values())) if isinstance(out, dict) else out
    (out.square().mean() + out.mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    return out, grads


def _assert_same_training(ref: nn.Module, other: nn.Module, x: torch.Tensor, function: str | None = None) -> None:
    """ref (eager) and other (an equal copy, traced or scripted) agree on one training step: outputs, every
    gradient, and the BatchNorm running statistics they update. ``function``: the custom autograd Function
    the eager step must have run (so the comparison is between two different paths)."""
    y_ref, g_ref = _train_step(ref, x)
    if function is not None:
        names = _grad_fn_names(y_ref)
        assert any(function in n for n in names), f"the eager path does not run {function}: {sorted(names)}"
    y, g = _train_step(other, x)
    torch.testing.assert_close(y, y_ref, **TIGHT)
    for n, gr in g_ref.items():
        torch.testing.assert_close(g[n], gr, **TIGHT, msg=lambda m, n=n: f"{n}: {m}")
    buffers = dict(other.named_buffers())
    for n, b in ref.named_buffers():
        torch.testing.assert_close(buffers[n], b, **TIGHT)


# ---- forward, backward, default config (timm: test_model_forward / _backward / _default_cfgs) --------------


@pytest.mark.parametrize("case", CASES)
def test_forward_backward(case):
    model = _build(case, torch.float32).eval()
    x = _input(model, dtype=torch.float32)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, model.num_classes) and torch.isfinite(y).all()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), y)

    model = _build(case, torch.float32, num_classes=42).train()
    out = model(x)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    assert out.shape == (2, 42) and torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES)
def test_default_cfg(case):
    model = _build(case, torch.float32).eval()
    cfg = model.pretrained_cfg
    for key in ("architecture", "num_classes", "input_size", "pool_size", "mean", "std", "crop_pct",
                "interpolation", "first_conv", "classifier"):
        assert key in cfg, key
    assert cfg["architecture"] == CASES[case][0] and model.default_cfg == cfg
    assert model.num_classes == cfg["num_classes"] > 0 and model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    assert model.get_classifier() is dict(model.named_modules())[cfg["classifier"]]
    assert state[f"{cfg['first_conv']}.weight"].shape[1] == cfg["input_size"][0]

    x = _input(model, batch=1, dtype=torch.float32, size=cfg["input_size"][1])  # pool_size is for this size
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
        bare = timm.create_model(CASES[case][0], num_classes=0, global_pool="", **CASES[case][1]).eval()
        assert bare(x).shape == feats.shape


# ---- features_only and forward_intermediates ---------------------------------------------------------------


@pytest.mark.parametrize("feature_cls", [None, "hook", "getter", "fx"])
@pytest.mark.parametrize("case", CASES)
def test_features_only(case, feature_cls):
    """features_only with each of timm's wrappers (None: the model's default): channels, reductions and
    values of the features, against forward hooks on the plain model's modules named in feature_info (built
    the same way from the same seed, so the weights are the same)."""
    model = _build(case).eval()
    extra = {} if feature_cls is None else dict(feature_cls=feature_cls)
    feat = _build(case, features_only=True, **extra).eval()
    x = _input(model)
    with torch.no_grad():
        _, ref = _hooked(model, x)
        outs = feat(x)
    channels, reductions = feat.feature_info.channels(), feat.feature_info.reduction()
    assert len(outs) == len(channels) == len(ref) >= 3
    for o, r, c, red in zip(outs, ref, channels, reductions):
        assert o.shape == (2, c, math.ceil(x.shape[2] / red), math.ceil(x.shape[3] / red))
        torch.testing.assert_close(o, r, **TIGHT)


@pytest.mark.parametrize("case", CASES)
def test_forward_intermediates(case):
    model = _build(case).eval()
    x = _input(model)
    with torch.no_grad():
        ref_out, ref = _hooked(model, x)
        out, inter = model.forward_intermediates(x)
        torch.testing.assert_close(out, ref_out, **TIGHT)
        assert len(inter) == len(ref) == len(model.feature_info) >= 3
        for o, r, info in zip(inter, ref, model.feature_info):
            assert o.shape[1] == info["num_chs"] and o.shape[2] == math.ceil(x.shape[2] / info["reduction"])
            torch.testing.assert_close(o, r, **TIGHT)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2, ref[-2:], **TIGHT)
        ends = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(ends, [ref[0], ref[-1]], **TIGHT)
        early, (second,) = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(second, ref[1], **TIGHT)
        torch.testing.assert_close(early, ref[1], **TIGHT)  # stopped right after stage 1
        *_, normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        final = getattr(model, "final_act", nn.Identity())  # QLNet's activation "after the last stage"
        torch.testing.assert_close(normed, final(ref[-1]), **TIGHT)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], ref_out, **TIGHT)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("case", CASES)
def test_prune_intermediate_layers(case):
    model = _build(case).eval()
    x = _input(model)
    with torch.no_grad():
        _, ref = _hooked(model, x)
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
        assert set(pruned.state_dict()) < set(model.state_dict())  # kept modules keep their keys
        assert pruned.num_features == pruned.head_hidden_size == model.feature_info[1]["num_chs"]
        torch.testing.assert_close(pruned.forward_features(x), ref[1], **TIGHT)
        torch.testing.assert_close(pruned(x), ref[1], **TIGHT)  # head pruned: unpooled features
        torch.testing.assert_close(pruned.forward_intermediates(x, [0, 1], intermediates_only=True), ref[:2],
                                   **TIGHT)
        whole = copy.deepcopy(model)
        whole.prune_intermediate_layers(len(model.feature_info), prune_head=False)
        torch.testing.assert_close(whole(x), model(x), **TIGHT)  # nothing to prune: the same model


# ---- FX (timm: test_model_forward_fx / _backward_fx) ---------------------------------------------------


LEAVES = {"qlnet": "pad_conv2d", "rh_": "conv_kt"}  # wrapped functions each family's graph must call


@pytest.mark.parametrize("case", CASES)
def test_fx_forward(case):
    """torch.fx.symbolic_trace and timm's FX feature extractor give the eager outputs (eval, float64); the
    graph calls the wrapped leaf functions and is not tied to the traced resolution."""
    model = _build(case).eval()
    x = _input(model)
    graph = torch.fx.symbolic_trace(model)
    leaf = next(v for k, v in LEAVES.items() if CASES[case][0].startswith(k))
    assert f"{leaf}(" in graph.code
    if "varcoef" in case:
        assert "coordinate_features(" in graph.code
    _, eval_nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, [eval_nodes[-1]])
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(graph(x), ref, **TIGHT)
        torch.testing.assert_close(next(iter(extractor(x).values())), ref, **TIGHT)
        x2 = _input(model, batch=3, size=x.shape[-1] // 2 + 4, seed=2)
        torch.testing.assert_close(graph(x2), model(x2), **TIGHT)


@pytest.mark.parametrize("case", CASES)
def test_fx_backward(case):
    """A training step through timm's FX feature extractor (train-mode graph) equals the eager one (float64),
    whose path runs the fused op / the reversible units."""
    model = _build(case).train()
    x = _input(model)
    train_nodes, _ = get_graph_node_names(model)
    extractor = create_feature_extractor(copy.deepcopy(model), [train_nodes[-1]])
    _assert_same_training(model, extractor, x, CASES[case][2])


# ---- TorchScript (timm: test_model_forward_torchscript, test_model_forward_fx_torchscript) -------------


@pytest.mark.parametrize("case", CASES)
def test_torchscript(case):
    """torch.jit.script: eval outputs and a training step (gradients, running statistics) equal the eager
    model's (float64)."""
    model = _build(case)
    x = _input(model)
    scripted = torch.jit.script(copy.deepcopy(model).eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.eval()(x), **TIGHT)
    _assert_same_training(model, scripted, x, CASES[case][2])


@pytest.mark.parametrize("case", ["eq3", "eq3-varcoef", "rh-hamiltonian-rev"])
def test_fx_then_torchscript(case):
    """Scripting the FX graph (timm's test_model_forward_fx_torchscript): the wrapped leaves are scriptable."""
    model = _build(case).eval()
    x = _input(model)
    scripted = torch.jit.script(torch.fx.symbolic_trace(copy.deepcopy(model)))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), **TIGHT)


@pytest.mark.parametrize("case", ["eq3", "eq3p-fused", "rh-hamiltonian-rev"])
def test_jit_trace(case):
    """torch.jit.trace records the module path, not the custom autograd Function (which it cannot save)."""
    model = _build(case).train()
    x = _input(model)
    traced = torch.jit.trace(copy.deepcopy(model), x, check_trace=False)
    assert "PythonOp" not in str(traced.inlined_graph)
    with torch.no_grad():
        model(x)  # the forward torch.jit.trace ran (it updated the BatchNorm statistics once)
    _assert_same_training(model, traced, x, CASES[case][2])


def test_script_refuses_unscriptable_depth():
    model = QLNet(layers=(1,) * 9, widths=(8,) * 9, num_classes=3, stem="small")
    with pytest.raises(ValueError, match="at most 8 stages"):
        torch.jit.script(model)


def test_tracing_switches():
    """The switches: off in eager and under torch.export (whose fake tensors run the normal path), on while
    torch.fx traces symbolically; is_tracing also under torch.jit.trace."""
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((is_symbolic_tracing(), is_tracing()))
            return x + 1

    probe, x = Probe(), torch.randn(2)
    probe(x)
    torch.fx.symbolic_trace(probe)
    torch.jit.trace(probe, x, check_trace=False)
    torch.export.export(probe, (x,))
    assert seen[:3] == [(False, False), (True, True), (False, True)]
    assert len(seen) > 3 and set(seen[3:]) == {(False, False)}


# ---- naming (issue 14, item 5) ----------------------------------------------------------------------------


def test_names_use_prefixes_no_timm_model_uses():
    names = pdenets.list_models()
    assert names and all(n.startswith(PREFIXES) for n in names), [n for n in names if not n.startswith(PREFIXES)]
    image = [n for n in names if pdenets.models.is_image_model(n)]
    timm_names = set(timm.list_models())
    assert set(image) <= timm_names
    ours = {n for n in timm_names if timm.models.model_entrypoint(n).__module__.startswith("pdenets.")}
    assert ours == set(image)  # every pdenets entry point in timm's registry is one of ours, and vice versa
    shipped = timm_names - ours
    assert not [n for n in shipped if n.startswith(PREFIXES)]
    assert all(timm.models.model_entrypoint(n).__module__.startswith("timm.") for n in shipped)


def test_no_registration_replaces_a_timm_model():
    """No pdenets name is defined by a timm model module (a registration under it would replace timm's)."""
    timm_modules = [m for k, m in sys.modules.items() if k.startswith("timm.models.") and m is not None]
    assert len(timm_modules) > 50
    clashes = {n: m.__name__ for n in pdenets.list_models() for m in timm_modules if callable(getattr(m, n, None))}
    assert not clashes, clashes
