"""The one model artifact: every model-holding file rebuilds through pdenets.load, every command reads every
artifact, and nothing is unpickled (docs/design.md §8)."""

import json
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch

from _helpers import randomize_bn
from pdenets.artifacts import ArtifactError, load, load_artifact, save_artifact
from pdenets.cli import main
from pdenets.models import create_model
from pdenets.symmetry.compress import compress_widths, gauge_fix, n_params
from pdenets.symmetry.fold import fold_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("name, kwargs, shape", [
    ("qlnet18_eq3_small", dict(num_classes=4, widths=[8, 8, 16, 16]), (2, 3, 16, 16)),
    ("qlnet18_eq4_small", dict(num_classes=4, widths=[8, 8, 16, 16], act="hardball"), (2, 3, 16, 16)),
    ("rh_hamiltonian_small", dict(num_classes=3, width=0.25), (2, 3, 16, 16)),
    ("resnet10t", dict(num_classes=3), (2, 3, 32, 32)),
    ("ruseckas_circles_r2", {}, (5, 2)),
])
def test_round_trip_plain_and_folded(tmp_path, name, kwargs, shape):
    """Saved and rebuilt models compute the same function (bit for bit), also after BN folding, for models of
    every family and a timm model; the build record comes from create_model and from timm.create_model."""
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **kwargs)).eval()
    x = torch.randn(*shape)
    save_artifact(model, tmp_path / "plain")
    assert _same(load(tmp_path / "plain"), model, x) == 0.0
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        folded = fold_bn(model)
        f = save_artifact(folded, tmp_path / "folded.safetensors")
        loaded, meta = load_artifact(f)
        assert [e["op"] for e in meta["edits"]] == ["fold_bn"]
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
        assert _same(loaded, folded, x) == 0.0
    if name.startswith(("qlnet", "rh_")):
        t = timm.create_model(name, **kwargs).eval()
        save_artifact(t, tmp_path / "timm")
        assert load_artifact(tmp_path / "timm")[1]["create_kwargs"] == kwargs


def test_compressed_gauge_fixed_round_trip_float64(tmp_path):
    """A compressed + gauge-fixed model (other widths, other module classes) rebuilds from its file alone,
    keeps its dtype, and a re-save of the loaded model is the same artifact."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("qlnet18_eq3p_small", num_classes=5, widths=[8, 12, 16, 24],
                                      act="softball")).eval().double()
    with torch.no_grad():  # make the writers of the last stage rank-deficient: only 10 of 24 directions used
        blk = model.layer4[0]
        blk.downsample[0].weight[10:] = 0
        blk.downsample[1].bias.zero_()
        blk.downsample[1].running_mean.zero_()
        blk.conv_a.weight.zero_()
        blk.bn_a.bias.zero_()
        blk.bn_a.running_mean.zero_()
    small, rows = compress_widths(fold_bn(model, share_kernels=True))
    small, _ = gauge_fix(small)
    assert rows[-1].rank == 10 and n_params(small) < n_params(model)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    f = save_artifact(small, tmp_path / "c")
    loaded, meta = load_artifact(f)
    assert next(loaded.parameters()).dtype == torch.float64
    assert n_params(loaded) == n_params(small) == meta["params"]
    assert _same(loaded, small, x) == 0.0 and _same(loaded, model, x) <= 1e-12 * float(model(x).abs().max())
    assert [e["op"] for e in meta["edits"]] == ["fold_bn", "compress_widths", "gauge_fix"]
    again = save_artifact(loaded, tmp_path / "again")
    assert load_artifact(again)[1]["modules"] == meta["modules"]


class _Payload:
    """A pickle that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("as_name", ["evil.pth", "model.safetensors", "dir"])
def test_crafted_pickle_refused_by_every_command(tmp_path, as_name, capsys):
    marker = tmp_path / "executed"
    target = tmp_path / as_name
    if as_name == "dir":
        target.mkdir()
        target = target / "model.safetensors"
    target.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    ck = str(tmp_path / "dir") if as_name == "dir" else str(target)
    commands = [["eval", "-c", ck], ["export", "--checkpoint", ck, "--format", "onnx", "--out", str(tmp_path / "o")],
                ["symmetry", "analyze", "-c", ck], ["symmetry", "verify", "-c", ck],
                ["symmetry", "teleport", "-c", ck], ["symmetry", "compress", "-c", ck, "--out", str(tmp_path / "c")],
                ["symmetry", "fold", "-c", ck, "--out", str(tmp_path / "f")], ["pde", "kernels", "--checkpoint", ck],
                ["train", "--init-from", ck, "--out", str(tmp_path / "run")]]
    for argv in commands:
        assert main(argv) == 2, argv
        assert "not a pdenets model file" in capsys.readouterr().err, argv
    assert not marker.exists()
    with pytest.raises(ArtifactError):
        load(ck)


def test_crafted_training_state_refused(tmp_path):
    """state.pt is read with weights_only=True: a code-executing pickle there is refused, not run."""
    from pdenets.train.checkpoint import load_training_state

    marker = tmp_path / "executed"
    torch.save({"x": _Payload(marker)}, tmp_path / "state.pt")
    with pytest.raises(ArtifactError):
        load_training_state(tmp_path)
    assert not marker.exists()


def test_no_pickle_in_src():
    src = Path(__file__).resolve().parents[1] / "src" / "pdenets"
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "weights_only=False" not in text, f
        assert "import pickle" not in text and "pickle.load" not in text, f


# ---- the spine: train -> teleport / compress / fold -> every command on every artifact ---------------------

TINY = ["-m", "widths=[8,12,16,16]", "--epochs", "2", "--max-steps-per-epoch", "25", "--no-progress"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("spine")
    run = d / "run"
    assert main(["train", "--recipe", "quick", "--model", "qlnet18_eq3p_small", *TINY, "--nuclear-prox", "5",
                 "--out", str(run)]) == 0
    for action in ("teleport", "compress", "fold"):
        extra = ["--steps", "3"] if action == "teleport" else []
        assert main(["symmetry", action, "-c", str(run), "--out", str(d / action), *extra]) == 0, action
    return d


@pytest.mark.parametrize("kind", ["teleport", "compress", "fold"])
def test_every_command_takes_every_artifact(artifacts, kind, capsys):
    art = artifacts / kind
    meta = json.loads((art / "meta.json").read_text())
    assert meta["format"] == "pdenets-artifact/1" and meta["dataset"] == "digits"
    if kind == "compress":
        assert meta["compression"]["identical_predictions"]
    capsys.readouterr()
    assert main(["eval", "-c", str(art), "--out", str(artifacts / f"eval-{kind}")]) == 0
    rec = json.loads((artifacts / f"eval-{kind}" / "eval.json").read_text())
    assert rec["split"] == "test" and rec["top1"] == pytest.approx(meta["test_top1"], abs=1e-9)
    assert main(["export", "--checkpoint", str(art), "--format", "onnx", "--legacy-onnx",
                 "--out", str(artifacts / f"{kind}.onnx")]) == 0
    assert main(["symmetry", "analyze", "-c", str(art)]) == 0
    assert main(["symmetry", "verify", "-c", str(art)]) == 0
    assert main(["symmetry", "teleport", "-c", str(art), "--steps", "2"]) == 0
    assert main(["symmetry", "compress", "-c", str(art), "--out", str(artifacts / f"{kind}-again")]) == 0
    assert main(["pde", "kernels", "--checkpoint", str(art), "--max-rows", "2"]) == 0
    out = capsys.readouterr().out
    assert f"reading {art / 'model.safetensors'}" in out
    ft = artifacts / f"ft-{kind}"
    assert main(["train", "--init-from", str(art), "--epochs", "1", "--max-steps-per-epoch", "3", "--no-progress",
                 "--out", str(ft)]) == 0
    tuned, tuned_meta = load_artifact(ft, "last")
    assert n_params(tuned) == meta["params"]  # a compressed model fine-tunes as a compressed model
    assert tuned_meta["edits"][: len(meta["edits"])] == meta["edits"]


def test_which_best_and_last(artifacts, capsys):
    run = artifacts / "run"
    best, last = load_artifact(run, "best")[1], load_artifact(run, "last")[1]
    assert best["file"].endswith(os.path.join("best", "model.safetensors"))
    assert last["file"].endswith(os.path.join("last", "model.safetensors"))
    assert main(["eval", "-c", str(run), "--which", "last", "--out", str(artifacts / "eval-last")]) == 0
    assert "last" in capsys.readouterr().out


def test_demo_runs_the_whole_spine(tmp_path, capsys):
    """`pdenets demo` (shortened): train with the prox, verify, compress, export + onnxruntime check, one table,
    summary.json with `compression` and `onnx`; the compressed artifact agrees with the recorded figures."""
    pytest.importorskip("onnxruntime")
    torch.set_num_threads(1)
    run = tmp_path / "demo"
    assert main(["demo", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "identical test predictions" in out and "ONNX (onnxruntime) max |difference|" in out
    summary = json.loads((run / "summary.json").read_text())
    c = summary["compression"]
    assert set(c) >= {"params", "params_original", "identical_predictions", "max_rel_diff"}
    assert c["identical_predictions"] and c["max_rel_diff"] < 1e-5 and summary["onnx"]["max_abs_diff"] < 1e-4
    small = load(run / "compressed")
    assert n_params(small) == c["params"] <= c["params_original"]
    assert summary["val_top1"] is not None and summary["test_top1"] == pytest.approx(c["test_top1_original"])


def test_bad_outputs_and_options_refused_before_work(artifacts, tmp_path, capsys):
    """An unusable --out or --rtol is a one-line error (exit 2) before any work; nothing is written."""
    run = str(artifacts / "run")
    (tmp_path / "a_file").write_text("x")
    cases = [(["symmetry", "compress", "-c", run, "--out", str(tmp_path / "c.pth")], "safetensors"),
             (["symmetry", "compress", "-c", run, "--out", str(tmp_path / "a_file")], "existing file"),
             (["symmetry", "compress", "-c", run, "--rtol", "nan", "--out", str(tmp_path / "c")], "--rtol"),
             (["symmetry", "compress", "-c", run, "--rtol", "2", "--out", str(tmp_path / "c")], "--rtol"),
             (["symmetry", "fold", "-c", run, "--out", str(tmp_path / "f.pt")], "safetensors"),
             (["symmetry", "teleport", "-c", run, "--out", str(tmp_path / "t.pkl")], "safetensors")]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    with pytest.raises(ArtifactError, match="which"):
        load(run, which="first")
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "missing")
