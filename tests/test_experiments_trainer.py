"""The Ruthotto-Haber and Ruseckas experiments train through the one trainer: step layout, splits shared
with `pdenets train`, refined networks that carry a build record, reproducible runs, test accuracy reported."""

import json

import pytest
import torch

import pdenets
from pdenets.analysis.rh_experiments import deepen, deepened, load_data, steps_layout
from pdenets.cli import main
from pdenets.datasets import build_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("steps,batches", [(200, 17), (100, 3), (7, 4), (1, 5), (300, 400), (64, 8)])
def test_steps_layout_is_exact(steps, batches):
    epochs, per_epoch = steps_layout(steps, batches)
    assert epochs * per_epoch == steps and 1 <= per_epoch <= batches
    assert all(steps % d for d in range(per_epoch + 1, min(steps, batches) + 1))  # the largest such divisor


def test_rh_data_are_the_train_command_splits():
    data = load_data("digits")
    for split, (x, y) in dict(train=(data.x_train, data.y_train), val=(data.x_val, data.y_val),
                              test=(data.x_test, data.y_test)).items():
        ds = build_dataset("digits", split)
        assert torch.equal(x, ds.images) and torch.equal(y, ds.targets)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (1144, 203, 450)


def test_ruseckas_splits_are_the_train_command_splits():
    from pdenets.experiments.ruseckas import circles_splits, digits_splits_8px, split_tensors

    c = circles_splits(3)
    for split, ds in (("train", c.train), ("val", c.val), ("test", c.test)):
        ref = build_dataset("circles", split, seed=3)
        assert ds.indices == ref.indices
    d = digits_splits_8px()
    for split, ds in (("train", d.train), ("val", d.val), ("test", d.test)):
        assert torch.equal(split_tensors(ds)[1], build_dataset("digits", split).targets)
    assert split_tensors(d.train)[0].shape[1:] == (1, 8, 8) and float(split_tensors(d.train)[0].max()) <= 1.0


def test_deepened_network_carries_its_build_record(tmp_path):
    from pdenets.artifacts import save_artifact

    torch.manual_seed(0)
    m = pdenets.create_model("rh_second_order_small", num_classes=10, in_chans=1, steps=2, h=1.0)
    new = deepened(m)
    assert [u.steps for u in new.units()] == [4, 4, 4] and all(u.h == 0.5 for u in new.units())
    assert [u.steps for u in m.units()] == [2, 2, 2]  # the original is left alone
    x = torch.randn(3, 1, 16, 16)
    ref = deepen(m)
    ref.eval(), new.eval()
    assert torch.equal(ref(x), new(x))
    save_artifact(new, tmp_path / "deep")
    back = pdenets.load(tmp_path / "deep")
    back.eval()
    assert torch.equal(back(x), new(x))


def test_rh_deepen_is_reproducible(tmp_path, capsys):
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["rh", "deepen", "--network", "second_order", "--train-steps", "4", "--batch-size", "32",
                "--finetune-steps", "2", "--seed", "0", "--no-progress", "--out", str(out)]
        assert main(args) == 0
        outs.append(json.loads((out / "deepen.json").read_text()))
        assert (out / "runs" / "train" / "summary.json").is_file()
        assert (out / "runs" / "finetune" / "summary.json").is_file()
    assert outs[0] == outs[1]
    assert outs[0]["train_steps"] == 4 and outs[0]["steps_after"] == [6, 6, 6]


def test_rh_multiscale_smoke(tmp_path, capsys):
    out = tmp_path / "ms"
    assert main(["rh", "multiscale", "--train-steps", "4", "--batch-size", "32", "--no-progress",
                 "--out", str(out)]) == 0
    res = json.loads((out / "multiscale.json").read_text())
    assert res["coarse_size"] == 8 and 0 <= res["multiscale_test_acc"] <= 1
    assert json.loads((out / "runs" / "coarse" / "summary.json").read_text())["steps"] == 2
    assert json.loads((out / "runs" / "fine" / "summary.json").read_text())["steps"] == 2
    assert json.loads((out / "runs" / "full" / "summary.json").read_text())["steps"] == 4


def test_ruseckas_circles_reports_test_accuracy(tmp_path, capsys):
    assert main(["ruseckas", "circles", "--model", "r2", "--epochs", "2", "--no-figures", "--out",
                 str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["ruseckas_circles_r2"]
    run = tmp_path / "runs" / "ruseckas_circles_r2"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_samples"] == 100 and m["test_acc"] == pytest.approx(summary["test_top1"] / 100)
    assert m["steps"] == 2 and m["gamma"] >= 0  # full batch: one step per epoch; γ̃ kept >= 0
    assert m["config"]["batch_size"] == 255 and m["config"]["hooks"] == ["layer-smooth:1"]
    assert "test accuracy" in capsys.readouterr().out


def test_ruseckas_digits_reports_test_accuracy(tmp_path, capsys):
    assert main(["ruseckas", "digits", "--epochs", "1", "--no-figures", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    summary = json.loads((tmp_path / "runs" / "ruseckas_conv_mnist" / "summary.json").read_text())
    assert summary["test_samples"] == 450 and m["test_acc"] == pytest.approx(summary["test_top1"] / 100)
    assert m["steps"] == 1144 // 64 and m["config"]["opt"] == "adam" and m["gamma"] >= 0
