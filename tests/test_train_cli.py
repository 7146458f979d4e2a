"""Command-line behaviour of train/eval/make-imagenet100: one-line errors (exit 2), corrupt checkpoints,
ImageFolder end to end, the ImageNet-100 symlink tree, YAML config + overrides."""

import json
import os
import shutil

import pytest
import torch

from _train_util import TINY, TINY_CLI, one_thread
from pdenets.cli import main


def _one_line_error(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("argv, needles", [
    (["--dataset", "nosuch"], ["unknown dataset 'nosuch'", "digits"]),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], ["/nonexistent/cifar", "cifar-10-batches-py"]),
    (["--dataset", "cifar10"], ["--data-dir"]),
    (["--dataset", "imagefolder:/nonexistent/tree"], ["/nonexistent/tree/train", "PATH/train/<class>"]),
    (["--lr", "-0.1"], ["--lr", "-0.1"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--recipe", "nosuch"], ["unknown recipe 'nosuch'"]),
    (["--model", "nosuch_model"], ["unknown model 'nosuch_model'"]),
    (["--hook", "nosuch-hook:1"], ["unknown training hook 'nosuch-hook'"]),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, needles):
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *argv], *needles)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pdenets.train.trainer import train

    out = tmp_path_factory.mktemp("run")
    with one_thread():
        train(dict(TINY, epochs=1, out=str(out)))
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_clear_error_and_untouched(capsys, tmp_path, trained_run, damage):
    src = trained_run / "checkpoints" / "best" / "model.safetensors"
    bad = tmp_path / "model.safetensors"
    data = src.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    before = bad.read_bytes()
    # the message is pdenets.artifacts.read_artifact's: "cannot read FILE: not a pdenets model file ... or corrupt"
    _one_line_error(capsys, ["eval", "--checkpoint", str(bad), "--device", "cpu"], str(bad), "cannot read", "corrupt")
    assert bad.read_bytes() == before


def test_corrupt_training_state_on_resume(capsys, tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = run / "checkpoints" / "last" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = state.read_bytes()
    _one_line_error(capsys, ["train", *TINY_CLI, "--epochs", "2", "--out", str(run), "--resume", "auto"],
                    str(state), "fails its checksum (corrupt)", "nothing was changed")
    assert state.read_bytes() == before


def test_eval_prints_and_writes_confusion(capsys, trained_run, tmp_path):
    with one_thread():
        assert main(["eval", "--checkpoint", str(trained_run), "--device", "cpu", "--split", "test",
                     "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert (tmp_path / "e" / "confusion.png").stat().st_size > 1000
    assert f"top-1 {rec['top1']:.2f}%" in out and "top-5" in out
    cm = torch.tensor(rec["confusion"])
    assert cm.sum() == 450 and abs(100 * cm.trace().item() / 450 - rec["top1"]) < 1e-9


def test_yaml_config_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: quick\nepochs: 7\nlr: 0.01\nhooks: [a:1]\n")
    assert main(["train", "--config", str(cfg), "--lr", "0.02", "--print-config"]) == 0
    import yaml

    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["epochs"] == 7 and resolved["lr"] == 0.02 and resolved["batch_size"] == 32
    assert resolved["hooks"] == ["a:1"] and resolved["recipe"] == "quick"
    assert main(["train", "--recipe", "ruthotto2018-stl10", "--nuclear-prox", "0.001", "--print-config"]) == 0
    r = yaml.safe_load(capsys.readouterr().out)
    assert r["hooks"] == ["rh-tv:3e-4", "box:1.0", "nuclear-prox:0.001"] and r["decay_milestones"] == [60, 80, 100]
    cfg.write_text("epoch: 3\n")
    _one_line_error(capsys, ["train", "--config", str(cfg)], "unknown option(s)", "epoch")


def _write_images(root, classes, n, size=12):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, k in (("train", n), ("val", max(n // 2, 1))):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(k):
                arr = (torch.rand(size, size, 3, generator=g) * 80 + 60 * ci).clamp(0, 255).byte().numpy()
                Image.fromarray(arr).save(d / f"{i}.png")


def test_imagefolder_trains_and_evaluates(tmp_path, capsys):
    tree = tmp_path / "tree"
    _write_images(tree, ["cat", "dog", "eel"], 8)
    out = tmp_path / "run"
    with one_thread():
        rc = main(["train", *TINY_CLI, "--dataset", f"imagefolder:{tree}", "--epochs", "2", "--batch-size", "8",
                   "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        s = json.loads((out / "summary.json").read_text())
        assert s["dataset"] == f"imagefolder:{tree}" and s["test_samples"] == 12 and s["epochs"] == 2
        assert main(["eval", "--checkpoint", str(out), "--device", "cpu"]) == 0
    assert (out / "confusion.png").is_file() and (out / "report.md").is_file()
    assert "top-1" in capsys.readouterr().out


def test_make_imagenet100_fake_tree(tmp_path, capsys):
    from pdenets.commands.make_imagenet100 import cmc_wnids

    wnids = cmc_wnids()
    assert len(wnids) == len(set(wnids)) == 100
    src = tmp_path / "imagenet"
    for split in ("train", "val"):
        for w in wnids[2:] + ["n99999999"]:  # two classes missing, one extra
            (src / split / w).mkdir(parents=True)
            (src / split / w / "x.JPEG").write_bytes(b"")
    dst = tmp_path / "in100"
    assert main(["make-imagenet100", "--src", str(src), "--dst", str(dst)]) == 1
    out = capsys.readouterr().out
    assert f"98/100 classes linked under {dst / 'train'}" in out
    assert f"{wnids[0]} {wnids[1]}" in out and "missing" in out
    linked = sorted(p.name for p in (dst / "train").iterdir())
    assert linked == sorted(wnids[2:]) and "n99999999" not in linked
    assert all((dst / "val" / w).resolve() == (src / "val" / w).resolve() for w in wnids[2:])
    for split in ("train", "val"):
        for w in wnids[:2]:
            (src / split / w).mkdir()
    assert main(["make-imagenet100", "--src", str(src), "--dst", str(dst)]) == 0  # completes, idempotent
    assert len(list((dst / "val").iterdir())) == 100
    _one_line_error(capsys, ["make-imagenet100", "--src", str(tmp_path / "nope"), "--dst", str(dst)],
                    str(tmp_path / "nope"), "train/<wnid>")


def test_ctrl_c_names_the_resume_command(tmp_path):
    """SIGINT after the first checkpoint: exit 130 and one line with the command that continues the run, which
    then finishes it from that checkpoint."""
    import shlex

    from _train_util import interrupt_once, run_cli

    out = tmp_path / "run"
    meta = out / "checkpoints" / "last" / "meta.json"
    rc, err = interrupt_once(["train", *TINY_CLI, "--epochs", "12", "--max-steps-per-epoch", "5", "--out", str(out)],
                             meta.is_file)
    if rc == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert rc == 130, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("pdenets train: interrupted; continue with: pdenets train --resume "), line
    argv = shlex.split(line.partition("continue with: ")[2])
    again = run_cli(*argv[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 12
