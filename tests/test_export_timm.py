"""Compressed models as complete timm models; hub-ready timm folders; the automatic ONNX exporter choice.

References are independent of the code under test: stage widths from the rank of the projection that made
the model deficient, feature maps from forward hooks and from the uncompressed model (compression is an
isometry on the span of the stream, so per-pixel norms must agree), the timm folder from timm's own
``create_model("local-dir:...")`` and ``save_for_hf``, ONNX from onnxruntime.
"""

import copy
import json

import pytest
import timm
import torch
import torch.nn as nn

import pdenets
from _helpers import randomize_bn
from pdenets.artifacts import feature_extractor, load_artifact, save_artifact
from pdenets.cli import main
from pdenets.models import create_model
from pdenets.symmetry.analyze import analyze
from pdenets.symmetry.compress import compress_widths, gauge_fix, segment_writers
from pdenets.symmetry.fold import fold_bn

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = (6, 12, 24, 24)
RANKS = {1: 5, 2: 9, 3: 7}  # segment -> rank its writers are projected to
META = {"kind": "image", "in_chans": 3, "img_size": 8, "dataset": "digits",
        "class_names": [f"class {i}" for i in range(4)]}


def _plain():
    torch.manual_seed(0)
    return randomize_bn(create_model("qlnet18_eq3p_small", widths=WIDTHS, num_classes=4)).eval()


def _deficient(model):
    """The folded model with every writer of segments 1-3 projected onto a random subspace of rank RANKS[seg]."""
    folded = fold_bn(model, share_kernels=True)
    a = analyze(folded)
    p = dict(folded.named_parameters())
    for seg, r in RANKS.items():
        u, _ = torch.linalg.qr(torch.randn(a.segments[seg].width, r, generator=torch.Generator().manual_seed(seg)))
        with torch.no_grad():
            for w, b in segment_writers(a, seg):
                p[w].copy_(torch.einsum("ij,j...->i...", u @ u.T, p[w]))
                p[b].copy_(u @ u.T @ p[b])
    return folded


def _stage_outputs(model, x):
    """The output of every stage (forward hooks), the reference for features_only."""
    outs = []
    hooks = [s.register_forward_hook(lambda _m, _a, o: outs.append(o)) for s in model.stages]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """(folded deficient model, compressed + gauge-fixed model, its artifact path), float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        folded = _deficient(_plain().double())
        small, rows = compress_widths(folded)
        small, _ = gauge_fix(small)
    finally:
        torch.set_default_dtype(old)
    assert [r.rank for r in rows] == [WIDTHS[0], *RANKS.values()]
    path = tmp_path_factory.mktemp("compressed") / "art"
    save_artifact(small, path, META)
    return folded, small, path


def test_compressed_model_has_its_widths(compressed, tmp_path):
    folded, small, path = compressed
    widths = [WIDTHS[0], *RANKS.values()]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    loaded, meta = load_artifact(path)
    assert meta["attributes"]["num_features"] == widths[-1]
    for m in (small, loaded.double()):
        assert [f["num_chs"] for f in m.feature_info] == widths == [o.shape[1] for o in _stage_outputs(m, x)]
        assert m.num_features == m.head_hidden_size == widths[-1] and tuple(m.widths) == tuple(widths)
        with torch.no_grad():
            feats = m.forward_features(x)
            assert feats.shape[1] == m.num_features
            assert m.forward_head(feats, pre_logits=True).shape == (3, widths[-1])
            assert (m.forward_head(feats) - folded(x)).abs().max() <= 1e-10 * folded(x).abs().max()
        m = copy.deepcopy(m)
        m.reset_classifier(5)  # a new head in the default dtype
        assert m.get_classifier().in_features == widths[-1]
        with torch.no_grad():
            assert m.float()(x.float()).shape == (3, 5)
    save_artifact(m, tmp_path / "reset")  # the new class count and head survive a save and load
    again = pdenets.load(tmp_path / "reset")
    assert again.num_classes == 5 and again.num_features == widths[-1]
    with torch.no_grad():
        assert (again(x.float()) - m(x.float())).abs().max() == 0


@pytest.mark.parametrize("wrapper", ["FeatureGetterNet", "FeatureHookNet"])
def test_compressed_features_only(compressed, wrapper, monkeypatch):
    """features_only from a loaded compressed artifact: through the model's forward_intermediates (if it has
    one) or through hooks on its own forward."""
    from pdenets.models.qlnet import QLNet

    folded, small, path = compressed
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    if wrapper == "FeatureHookNet":
        monkeypatch.delattr(QLNet, "forward_intermediates", raising=False)
    elif not hasattr(QLNet, "forward_intermediates"):
        pytest.skip("QLNet has no forward_intermediates")
    feats = pdenets.load(path, features_only=True).double()
    assert type(feats).__name__ == wrapper
    assert feats.feature_info.channels() == [WIDTHS[0], *RANKS.values()]
    with torch.no_grad():
        got = feats(x)
    for g, ref in zip(got, _stage_outputs(small, x)):
        assert (g - ref).abs().max() <= 1e-12 * ref.abs().max()
    # the compressed stream is U_rᵀ z of the original stream z: per-pixel norms agree with the uncompressed model
    for g, ref in zip(got, _stage_outputs(folded, x)):
        assert (g.norm(dim=1) - ref.norm(dim=1)).abs().max() <= 1e-10 * ref.norm(dim=1).max()
    two = feature_extractor(copy.deepcopy(small), out_indices=(1, 3))
    assert two.feature_info.channels() == [RANKS[1], RANKS[3]]


def test_compressed_onnx_after_reset_classifier(compressed, tmp_path):
    pytest.importorskip("onnxruntime")
    from pdenets.export import export_onnx

    m = copy.deepcopy(compressed[1]).float()
    m.reset_classifier(5)
    x = torch.randn(3, 3, 8, 8)
    res = export_onnx(m, tmp_path / "c.onnx", (1, 3, 8, 8), check=x)
    assert res.exporter in ("dynamo", "legacy") and res.max_abs_diff <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == (3, 5)


def test_timm_folder_round_trip(tmp_path, capsys):
    model = _plain()
    art = tmp_path / "art"
    save_artifact(model, art, META)
    out = tmp_path / "hub"
    assert main(["export", "-c", str(art), "--format", "timm", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"reading {art / 'model.safetensors'}" in text and "check: max |timm local-dir - pytorch|" in text
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "qlnet18_eq3p_small" and cfg["num_classes"] == 4 and cfg["num_features"] == 24
    assert cfg["label_names"] == META["class_names"] and cfg["model_args"]["widths"] == list(WIDTHS)
    assert cfg["pretrained_cfg"]["input_size"] == [3, 8, 8]
    rebuilt = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= 1e-6
    assert rebuilt.pretrained_cfg["label_names"] == META["class_names"]
    # the same folder is a pdenets artifact
    with torch.no_grad():
        assert (pdenets.load(out)(x) - model(x)).abs().max() == 0
    # the layout timm's own save_for_hf (what push_to_hf_hub uploads) writes for the same model
    pytest.importorskip("huggingface_hub")
    from timm.models import save_for_hf

    ref_dir = tmp_path / "timm_ref"
    save_for_hf(model, str(ref_dir), model_config={"label_names": META["class_names"]}, safe_serialization=True)
    ref = json.loads((ref_dir / "config.json").read_text())
    assert sorted(p.name for p in ref_dir.iterdir()) == sorted(p.name for p in out.iterdir())
    assert set(ref) == set(cfg) and set(ref["pretrained_cfg"]) == set(cfg["pretrained_cfg"])
    for key in ("architecture", "num_classes", "num_features", "label_names", "model_args"):
        assert ref[key] == cfg[key], key


def test_timm_folder_refuses_edited_models(compressed, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["export", "-c", str(compressed[2]), "--format", "timm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compress_widths" in err and "--format onnx" in err
    assert not out.exists()


def _failing_dynamo(monkeypatch):
    real = torch.onnx.export

    def export(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)


def test_onnx_exporter_falls_back_automatically(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    art = tmp_path / "art"
    save_artifact(_plain(), art, META)
    _failing_dynamo(monkeypatch)
    out = str(tmp_path / "m.onnx")
    assert main(["export", "-c", str(art), "--format", "onnx", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "simulated dynamo failure" in text and "exporter legacy" in text
    assert main(["export", "-c", str(art), "--format", "onnx", "--onnx-exporter", "dynamo", "--out", out]) == 1
    assert "simulated dynamo failure" in capsys.readouterr().err
    assert main(["export", "-c", str(art), "--format", "onnx", "--legacy-onnx", "--onnx-exporter", "dynamo",
                 "--out", out]) == 2
    assert main(["export", "-c", str(art), "--format", "timm", "--onnx-exporter", "legacy",
                 "--out", str(tmp_path / "hub")]) == 2


def test_feature_extractor_refuses_models_without_feature_info():
    with pytest.raises(pdenets.artifacts.ArtifactError, match="feature_info"):
        feature_extractor(nn.Linear(2, 2))
