"""The Table 1 baselines on the QL skeleton (layers/resnet_blocks.py, docs/design.md §15): where the layouts agree
they are timm's ResNets exactly (parameter count, state-dict keys, outputs with timm's weights); the `_small`
layouts match a count derived here from the block formulas; the symmetry tools see the ReLU ResNet's positive
rescalings; timm models and the baselines train with the `quick` recipe."""

import json

import pytest
import timm
import torch

import pdenets
from _helpers import randomize_bn
from pdenets.cli import main
from pdenets.layers.resnet_blocks import ResNetBottleneck
from pdenets.symmetry import analyze, verify
from pdenets.utils.stats import count_params

pytestmark = pytest.mark.usefixtures("one_thread")

# The baseline on the QL skeleton and the timm ResNet with the same layout (blocks per stage, block type).
SAME_AS_TIMM = [("qlnet50_resnet", "resnet50"), ("qlnet26_resnet", "resnet26"),
                ("qlnet50_resnet_basic", "resnet34"), ("qlnet26_resnet_basic", "resnet18")]


def test_resnet50_row_count():
    """docs/design.md §1: timm's resnet50 has 23,712,932 parameters at 100 classes (Table 1: 23.7M)."""
    with torch.device("meta"):
        assert count_params(timm.create_model("qlnet50_resnet", num_classes=100)) == 23_712_932


@pytest.mark.parametrize("ours,theirs", SAME_AS_TIMM)
def test_same_as_timm(ours, theirs):
    """Same parameter count and state-dict keys as timm's model, and the same outputs with its weights (fp64)."""
    torch.manual_seed(0)
    ref = randomize_bn(timm.create_model(theirs, num_classes=10).double()).eval()
    model = timm.create_model(ours, num_classes=10).double().eval()
    assert count_params(model) == count_params(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-10, atol=1e-12)


def _small_count(block: str, layers, classes: int = 10, in_chans: int = 3) -> int:
    """Parameters of a `_small` baseline from the block formulas: 3×3 stem in_chans → 32 + BN; per block with
    n inputs, stride s and stage width w — basic: o = w, 9no + 9o² + 4o; bottleneck: o = 4w, p = w,
    np + 9p² + po + 4p + 2o; plus no + 2o for a 1×1 skip when s = 2 or n ≠ o; the linear head."""
    widths, n = (32, 64, 128, 256), 32
    total = 9 * in_chans * 32 + 2 * 32
    for i, (depth, w) in enumerate(zip(layers, widths)):
        for j in range(depth):
            s = 2 if i > 0 and j == 0 else 1
            if block == "basic":
                o = w
                total += 9 * n * o + 9 * o * o + 4 * o
            else:
                o, p = 4 * w, w
                total += n * p + 9 * p * p + p * o + 4 * p + 2 * o
            if s == 2 or n != o:
                total += n * o + 2 * o
            n = o
    return total + n * classes + classes


@pytest.mark.parametrize("depth,layers", [("18", (1, 1, 1, 1)), ("26", (2, 2, 2, 2)), ("50", (3, 4, 6, 3))])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_small_counts(depth, layers, block):
    name = f"qlnet{depth}_resnet" + ("_basic" if block == "basic" else "") + "_small"
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10, in_chans=1)
    assert count_params(model) == _small_count(block, layers, 10, 1)
    assert model.act_name == "relu" and model.act_placement == "all"
    stream = [w * (4 if block == "bottleneck" else 1) for w in (32, 64, 128, 256)]
    assert [f["num_chs"] for f in model.feature_info] == stream and model.num_features == stream[-1]


def test_block_refuses_ql_options():
    for kw in (dict(multiplier=6), dict(weight_sharing=False), dict(var_coef="affine")):
        with pytest.raises(ValueError, match="no derivative convs"):
            timm.create_model("qlnet18_resnet_small", **kw)
    with pytest.raises(ValueError, match="multiple of 4"):
        ResNetBottleneck(8, 10)


@pytest.mark.parametrize("name", ["qlnet18_resnet_small", "qlnet18_resnet_basic_small"])
def test_symmetry_positive_rescaling(name):
    """ReLU after every addition: every segment is permutation × positive diagonal; such a T is exact and a sign
    flip (monomial, the next larger group) is caught by the power check. The bottleneck's stem (8 channels)
    writes a segment of its own, read by the first block's 1×1 conv and skip."""
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model(name, num_classes=5, widths=(8, 8, 8, 8)).double()).eval()
    a = analyze(model)
    bottleneck = "basic" not in name
    assert [s.name for s in a.segments] == ["stem"] * bottleneck + ["stage1", "stage2", "stage3", "stage4"]
    assert [s.width for s in a.segments] == [8] * bottleneck + [32 if bottleneck else 8] * 4
    assert {s.group for s in a.segments} == {"positive_monomial"}
    res = verify(model, inputs=3 * torch.randn(4, 3, 16, 16, dtype=torch.float64))
    assert res.err64 < 1e-12 and res.pred_agreement == 1.0
    assert all(r.power_group.startswith("monomial") and r.power_err > 1e-3 for r in res.rows)


def test_traceable_and_scriptable():
    """FX and TorchScript give the eager outputs (timm's checks, docs/design.md §11)."""
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("qlnet18_resnet_small", num_classes=5, widths=(8, 8, 8, 8)).double())
    model.eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), y, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.jit.script(model)(x), y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model,extra", [("resnet18", []), ("qlnet18_resnet_small", ["-m", "widths=[8,8,8,8]"])])
def test_train_quick_timm_and_baseline(tmp_path, model, extra):
    """`pdenets train --recipe quick --model resnet18 --epochs 1` (cut to 2 steps) trains timm's model with the
    data set's classes and channels (10, grey), as it does the baseline on the QL skeleton."""
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "quick", "--model", model, "--epochs", "1", "--max-steps-per-epoch", "2",
               "--img-size", "8", "--no-progress", "--out", str(out), *extra])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["model"] == model and s["test_samples"] == 450
    kwargs = dict(widths=(8, 8, 8, 8)) if extra else {}
    with torch.device("meta"):
        ref = timm.create_model(model, num_classes=10, in_chans=1, **kwargs)
    assert s["params"] == count_params(ref)
    loaded = pdenets.load(out)
    assert loaded.get_classifier().out_features == 10
    assert next(loaded.parameters()).shape[1] == 1  # in_chans from the data set
