"""Rotation-aided integer quantisation (`pdenets symmetry quantize`, docs/design.md §16): the rotations keep the
float function, the integer ONNX model computes what the PyTorch fake-quant reference computes, the report."""

import copy
import json

import numpy as np
import pytest
import torch

from _helpers import randomize_bn
from pdenets import create_model, save_artifact
from pdenets.cli import main
from pdenets.quant.fakequant import act_qparams, instrument
from pdenets.quant.gptq import gptq_quantize
from pdenets.quant.onnx_qdq import integer_ops, ort_run, ort_session
from pdenets.quant.pipeline import QuantConfig, layer_table, prepare, quantize_model, quantize_report, rotate
from pdenets.symmetry.groups import haar_orthogonal
from pdenets.symmetry.rotations import hadamard, learn_rotation, randomized_hadamard, rotatable, rotation_element
from pdenets.symmetry.transform import GroupElement
from pdenets.symmetry.verify import radial_input_scale

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(name: str = "qlnet18_eq3p_small", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(create_model(name, num_classes=10, in_chans=1, widths=[8, 8, 8, 8]), seed).eval()


def test_hadamard_matrices():
    import scipy.linalg

    assert torch.equal(hadamard(8), torch.from_numpy(scipy.linalg.hadamard(8)).double() / 8**0.5)
    g = torch.Generator().manual_seed(0)
    for n, b in ((16, 16), (12, 4), (24, 8)):
        t = randomized_hadamard(n, g)
        assert torch.allclose(t.T @ t, torch.eye(n, dtype=torch.float64), atol=1e-14)
        nz = t[t != 0].abs()
        assert len(nz) == n * b and torch.allclose(nz, torch.full_like(nz, b**-0.5))  # block-Hadamard, ±1/√b


def test_rotations_keep_the_float_function_float64():
    model = _tiny()
    folded, a = prepare(model)
    assert rotatable(a) == [1, 2, 3]  # stage 1 is bounded by the stem ReLU: positive monomials only
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x * radial_input_scale(folded, x)  # |x| ≈ R at the softballs: a non-symmetry would show
    with torch.no_grad():
        y0 = model.double()(x)
    skew = [torch.randn(8, 8, dtype=torch.float64) if i in rotatable(a) else None for i in range(4)]
    learned_like = GroupElement([None if m is None else torch.linalg.matrix_exp(0.3 * (m - m.T)) for m in skew])
    elements = [rotation_element(a, k, torch.Generator().manual_seed(3)) for k in ("random", "hadamard")]
    for el in [*elements, learned_like]:
        r = rotate(folded, a, el)
        changed = max(float((p - q).detach().abs().max()) for p, q in zip(folded.parameters(), r.parameters()))
        with torch.no_grad():
            err = float((r(x) - y0).abs().max() / y0.abs().max())
        assert changed > 1e-2 and err <= 1e-12, (changed, err)
    # power check: the same change with a non-orthogonal T (GL) on an O segment is not a symmetry
    gl = GroupElement([None, haar_orthogonal(8, torch.Generator().manual_seed(2)) @ torch.diag(
        torch.linspace(0.5, 2.0, 8, dtype=torch.float64)), None, None])
    with torch.no_grad():
        assert float((rotate(folded, a, gl)(x) - y0).abs().max() / y0.abs().max()) > 1e-3


def test_act_qparams_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in ((-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5)):
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255))
        s, z = act_qparams(lo, hi)
        assert z == int(zp) and abs(s - float(scale)) <= 1e-7 * s


def test_gptq_beats_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 400, generator=g, dtype=torch.float64)
    x[:4] *= 5  # correlated, uneven inputs: where error compensation pays
    x[4:8] = x[:4] + 0.1 * x[4:8]
    w = torch.randn(6, 24, generator=g, dtype=torch.float64)
    s = w.abs().amax(1) / 7
    rtn = torch.clamp(torch.round(w / s[:, None]), -8, 7) * s[:, None]
    q = gptq_quantize(w[None], (x @ x.T)[None], 4, s[None].float().double())[0]
    levels = q / s[:, None]
    assert torch.allclose(levels, levels.round(), atol=1e-9) and levels.abs().max() <= 8
    assert ((q - w) @ x).norm() < 0.8 * ((rtn - w) @ x).norm()


@pytest.fixture(scope="module")
def w4_report(tmp_path_factory):
    """One W4A8 run of the pipeline on the tiny model (random rotations over 2 seeds)."""
    from _helpers import one_thread

    out = tmp_path_factory.mktemp("quant")
    g = torch.Generator().manual_seed(0)
    calib, x = torch.randn(32, 1, 8, 8, generator=g), torch.randn(40, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    cfg = QuantConfig(weight_bits=4, act_bits=8, seeds=2, latency_repeats=2, calib_batch=16, per_layer=True)
    with one_thread():
        report = quantize_report(_tiny(), calib, x, y, ["random"], cfg, out, progress=lambda m: None)
    return report, out, calib, x, cfg


def test_quant_report_keys(w4_report):
    report, out, *_ = w4_report
    assert json.loads((out / "quant_report.json").read_text()) == json.loads(json.dumps(report))
    rnd = report["rotations"]["random"]
    for r in (rnd, *rnd["per_seed"]):
        for k in ("top1_float", "top1_quant", "agreement", "output_rel_err", "latency_ms_float", "latency_ms_int",
                  "float_rel_diff_after_rotation"):
            assert isinstance(r[k], float), k
        assert r["float_check_passed"] and r["float_rel_diff_after_rotation"] <= 1e-5
    assert rnd["seeds"] == [0, 1] and len(rnd["per_seed"]) == 2
    assert rnd["top1_quant_min"] <= rnd["top1_quant"] <= rnd["top1_quant_max"]
    assert rnd["agreement"] == sum(r["agreement"] for r in rnd["per_seed"]) / 2
    assert [s["index"] for s in report["rotated_segments"]] == [1, 2, 3]
    assert (out / "float.onnx").exists() and (out / "random_s1.int.onnx").exists()
    per_seed = [r["layer_errors"] for r in rnd["per_seed"]]  # --per-layer: the mean over seeds, layer by layer
    assert rnd["layer_errors"] == {k: sum(e[k] for e in per_seed) / 2 for k in per_seed[0]}
    table = layer_table(report, top=3).splitlines()
    assert len(table) == 5 and table[0].startswith("| layer (W4 alone") and "random" in table[0]


def test_learned_rotation_keeps_the_best_scored_element():
    """learn_rotation: exact rotations (orthogonal Q, same float function), scored on calibration images, the best
    scored element kept (never worse than the start)."""
    folded, a = prepare(_tiny())
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(weight_bits=4, act_bits=8, calib_batch=32)
    with torch.no_grad():
        y = folded(calib.double()).float()

    def score(el):
        sim = quantize_model(rotate(folded, a, el), calib, cfg)
        with torch.no_grad():
            return float((sim.module(calib) - y).norm() / y.norm())

    dyn = instrument(folded, 4, 8).set_mode("dynamic")
    dyn.module.float()
    init = rotation_element(a, "hadamard", torch.Generator().manual_seed(0))
    res = learn_rotation(folded, a, dyn.module, calib, init, score, steps=6, lr=0.05, score_every=3, batch=16)
    assert [s for s, _ in res.scores] == [0, 3, 6] and len(res.losses) == 6
    assert score(res.element) == min(v for _, v in res.scores) <= res.scores[0][1]
    for i in rotatable(a):
        q = res.element.mats[i]
        assert torch.allclose(q.T @ q, torch.eye(8, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():
        y1, y0 = rotate(folded, a, res.element)(calib.double()), folded(calib.double())
    assert float((y1 - y0).abs().max() / y0.abs().max()) <= 1e-12


def test_onnx_integer_model_matches_fake_quant_reference(w4_report):
    """The file the pipeline wrote for random seed 0 against the PyTorch simulation rebuilt from the same
    rotation: onnxruntime's integer kernels agree to one step of the output quantiser."""
    import onnx
    from onnx import numpy_helper

    report, out, calib, x, cfg = w4_report
    folded, a = prepare(_tiny())
    sim = quantize_model(rotate(folded, a, rotation_element(a, "random", torch.Generator().manual_seed(0))),
                         calib, cfg)
    with torch.no_grad():
        ref = sim.module(x)
    path = out / "random_s0.int.onnx"
    y = ort_run(ort_session(path, threads=1), x)
    step = sim.output_scale()
    assert step is not None and float((y - ref).abs().max()) <= 1.01 * step  # 1 step (+ float32 round-off)
    ops = integer_ops(path)
    # every conv (the derivative convs as 4 multiplier-1 depthwise convs each) and the classifier run integer kernels
    assert len(sim.convs) == 1 + 4 * (3 + 4) + 3 + 1 and ops.get("QLinearConv") == len(sim.convs) - 1
    assert ops.get("QGemm") == 1 and ops.get("QLinearMul") == 4 and ops.get("QLinearAdd") == 4
    graph = onnx.load(str(path)).graph
    dq_in = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    ints = [numpy_helper.to_array(i) for i in graph.initializer if i.name in dq_in and i.data_type == 3]  # int8
    assert len(ints) == len(sim.convs) and all(v.min() >= -8 and v.max() <= 7 for v in ints)  # W4 in int8 containers
    w = sim.module.get_submodule("layer2.0.conv_a")  # an independent round-to-nearest of one layer
    ww = w.weight.detach().reshape(8, -1)
    expect = torch.clamp(torch.round(ww / (ww.abs().amax(1, keepdim=True) / 7)), -8, 7)
    assert torch.equal(w.w_int.reshape(8, -1).float(), expect)


def test_weights_only_and_first_last():
    model = _tiny()
    folded, _ = prepare(model)
    sim = instrument(folded, 4, None, first_last_bits=8)
    assert sim.acts == [] and [sim.module.get_submodule(n).bits for n in (sim.convs[0], sim.convs[-1])] == [8, 8]
    assert {sim.module.get_submodule(n).bits for n in sim.convs[1:-1]} == {4}
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sim.module.float()
    with torch.no_grad():  # float mode, the derivative convs split into multiplier-1 depthwise convs: same function
        y0 = folded.float()(x)
        assert float((sim.module(x) - y0).abs().max() / y0.abs().max()) < 1e-5
    sim.calibrate([x]).freeze()
    with torch.no_grad():
        y1 = sim.module(x)
    assert 0 < float((y1 - y0).norm() / y0.norm()) < 1


def test_cli_refuses_rotation_without_rotatable_segment(tmp_path, capsys):
    # raw Eq. (3): D reads every segment channel by channel (with one block per stage the last segment, read only
    # by the classifier, would still rotate: qlnet18_eq3 has O on stage 4)
    assert rotatable(prepare(_tiny("qlnet18_eq3_small"))[1]) == [3]
    save_artifact(_tiny("qlnet26_eq3_small"), tmp_path / "eq3", dict(dataset="digits", img_size=8))
    code = main(["symmetry", "quantize", "--checkpoint", str(tmp_path / "eq3"), "--rotation", "hadamard",
                 "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "only rotation 'none' applies" in err and len(err.strip().splitlines()) == 1


class _Branchy(torch.nn.Module):
    """A network whose forward branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_untraceable_model_is_a_value_error():
    with pytest.raises(ValueError, match="torch.fx cannot trace _Branchy"):
        instrument(_Branchy())


def _rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric round-to-nearest, written out: scale max|w_c| / (2^(b-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    s = w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-30) / qmax
    s = s.view(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s


def test_layer_errors_match_rounding_one_layer_by_hand():
    """QuantSim.layer_errors against the plain PyTorch model with one layer's weight replaced (float64)."""
    folded, _ = prepare(_tiny())  # float64
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = instrument(folded, 4, None).layer_errors(x)
    with torch.no_grad():
        y = folded(x)
        for name in ("conv1", "layer2.0.conv_p", "fc"):
            assert name in errors, sorted(errors)[:5]
            m = copy.deepcopy(folded)
            w = m.get_submodule(name).weight
            w.copy_(_rtn(w, 4))
            want = float((m(x) - y).norm() / y.norm())
            assert want > 1e-4 and abs(errors[name] - want) <= 1e-12 * max(1.0, want), (name, errors[name], want)
    assert all(e >= 0 for e in errors.values()) and len(errors) == len(instrument(folded, 4, None).convs)
