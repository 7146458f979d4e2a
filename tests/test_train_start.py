"""How a run starts: `--resume RUN` rebuilds everything from the run's own config.yaml (no --model), and
`--init-from ARTIFACT` fine-tunes a compressed model with its own (smaller) structure, also across resume."""

import json

import torch
import yaml

from _train_util import TINY_CLI, max_abs_diff, one_thread, weights
from pdenets.cli import main


def _train(*argv):
    with one_thread():
        rc = main(["train", *argv])
    assert rc == 0


def test_resume_without_model_uses_the_saved_config(tmp_path, capsys):
    args = [*TINY_CLI, "--epochs", "2", "--max-steps-per-epoch", "3", "--dataset", "digits"]
    _train(*args, "--out", str(tmp_path / "straight"))
    _train(*args, "--stop-after", "1", "--out", str(tmp_path / "run"))
    _train("--resume", str(tmp_path / "run"), "--no-progress")  # nothing else: model, data, lr ... from the run
    s = json.loads((tmp_path / "run/summary.json").read_text())
    ref = json.loads((tmp_path / "straight/summary.json").read_text())
    assert s["status"] == "completed" and s["epochs"] == 2 and s["params"] == ref["params"]
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert cfg["model_kwargs"] == {"widths": [8, 8, 8, 8]} and cfg["img_size"] == 8 and cfg["stop_after"] is None
    a, b = tmp_path / "straight/checkpoints/last", tmp_path / "run/checkpoints/last"
    assert max_abs_diff(weights(a), weights(b)) <= 1e-6
    # explicit options still override the saved configuration
    _train("--resume", str(tmp_path / "run/checkpoints/last"), "--epochs", "3", "--no-progress")
    assert json.loads((tmp_path / "run/summary.json").read_text())["epochs"] == 3
    capsys.readouterr()


def _compressed_artifact(path):
    """A tiny eq3p model, BN folded, three stream channels of stage 3 never written, compressed."""
    from pdenets.artifacts import save_artifact
    from pdenets.models import create_model
    from pdenets.symmetry import analyze
    from pdenets.symmetry.compress import compress_widths, n_params, segment_writers
    from pdenets.symmetry.fold import fold_bn

    torch.manual_seed(0)
    model = create_model("qlnet18_eq3p_small", widths=(8, 8, 8, 8), num_classes=10, in_chans=1).eval()
    folded = fold_bn(model)
    p = dict(folded.named_parameters())
    with torch.no_grad():
        for w, b in segment_writers(analyze(folded), 2):
            p[w][:3].zero_()
            if b:
                p[b][:3].zero_()
    small, rows = compress_widths(folded)
    assert [r.rank for r in rows] == [8, 8, 5, 5] and n_params(small) < n_params(folded)
    save_artifact(small, path, dict(dataset="digits", img_size=8, num_classes=10))
    return n_params(small)


def test_init_from_a_compressed_artifact_keeps_its_structure(tmp_path, capsys):
    from pdenets.artifacts import load_artifact

    n_small = _compressed_artifact(tmp_path / "small")
    out = tmp_path / "ft"
    common = ["--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "16", "--lr", "0.01", "--no-progress",
              "--deterministic", "--out", str(out)]
    _train("--init-from", str(tmp_path / "small"), *common, "--stop-after", "1")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["init_from"] == str(tmp_path / "small") and cfg["model"] == "qlnet18_eq3p_small"
    assert cfg["dataset"] == "digits" and cfg["img_size"] == 8  # defaults from the artifact
    _train("--resume", str(out), "--no-progress")  # resume rebuilds the compressed structure from last/
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs"] == 2 and s["params"] == n_small
    for which in ("best", "last"):
        model, meta = load_artifact(out, which)
        assert sum(p.numel() for p in model.parameters()) == n_small
        assert [e["op"] for e in meta["edits"]] == ["fold_bn", "compress_widths"]
        assert torch.isfinite(model(torch.zeros(2, 1, 8, 8))).all()
    capsys.readouterr()


def test_init_from_wrong_model_is_a_usage_error(tmp_path, capsys):
    _compressed_artifact(tmp_path / "small")
    with one_thread():
        rc = main(["train", "--init-from", str(tmp_path / "small"), "--model", "qlnet18_eq3_small",
                   "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "qlnet18_eq3p_small" in err and len(err.splitlines()) == 1


def test_deterministic_mode_is_scoped():
    from pdenets.commands.train import deterministic_mode

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled() == before
