"""Deployment: BatchNorm folding (pdenets.export.fuse_bn) and model files checked in their runtimes."""

import pytest
import torch
import torch.nn as nn

from pdenets.export import export_model, fuse_bn, verify_onnx
from pdenets.models import create_model


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("qlnet18_eq3_small", num_classes=10, fused=True)
    _randomize_bn(m)
    return m.eval()


def test_fuse_bn_keeps_outputs(model):
    folded = fuse_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert (ref - got).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_onnx_matches_pytorch(model, tmp_path):
    """ONNX file (TorchScript-based exporter, the quick one; `pdenets export` defaults to the torch.export-
    based one, checked by the command itself) evaluated by onnxruntime, on another batch size."""
    pytest.importorskip("onnxruntime")
    path = export_model(model, "onnx", tmp_path / "m.onnx", (2, 3, 32, 32), dynamo=False)
    x = torch.randn(3, 3, 32, 32)
    assert verify_onnx(path, model, x) <= 1e-4


def test_export_cli_from_checkpoint(model, tmp_path, capsys):
    """`pdenets export --checkpoint` on a model artifact file."""
    pytest.importorskip("onnxruntime")
    from pdenets.artifacts import save_artifact
    from pdenets.cli import main

    save_artifact(model, tmp_path / "model.safetensors", {"kind": "image", "in_chans": 3, "img_size": 32})
    out = tmp_path / "m.onnx"
    rc = main(["export", "--checkpoint", str(tmp_path / "model.safetensors"), "--format", "onnx", "--legacy-onnx",
               "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert "check: max |onnxruntime - pytorch|" in capsys.readouterr().out
    assert main(["export", "--model", "no_such_model", "--format", "onnx", "--out", str(out)]) == 2
    assert "no_such_model" in capsys.readouterr().err
