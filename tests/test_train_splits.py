"""Validation apart from test: fixed stratified validation splits, the best checkpoint chosen on
validation, and the test split scored exactly once, at the end, with the best weights."""

import json

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from _train_util import one_thread
from pdenets.datasets import DatasetInfo
from pdenets.datasets.circles import make_circles
from pdenets.datasets.circles_dataset import CirclesDataset
from pdenets.datasets.digits import DigitsDataset, digits_split_indices, digits_splits
from pdenets.train.checkpoint import load_model
from pdenets.train.data import DataSplits
from pdenets.train.metrics import read_epochs
from pdenets.train.trainer import Trainer


def test_digits_val_is_a_fixed_stratified_part_of_train():
    from sklearn.datasets import load_digits

    y = load_digits().target
    s = digits_splits()
    part, test = digits_split_indices()
    assert {k: len(v) for k, v in s.items()} == dict(train=1144, val=203, test=450)
    assert not set(s["train"]) & set(s["val"]) and not (set(s["train"]) | set(s["val"])) & set(s["test"])
    assert sorted(s["train"] + s["val"]) == part and s["test"] == test  # test split unchanged
    for c in range(10):  # stratified: each class keeps its share of the training part within one sample
        assert abs((y[s["val"]] == c).sum() - 0.15 * (y[part] == c).sum()) <= 1
    assert digits_splits() == s
    for split in ("train", "val", "test"):
        assert DigitsDataset(split, img_size=8).indices == s[split]


@pytest.mark.parametrize("seed", [0, 3])
def test_circles_splits_disjoint_and_val_fixed(seed):
    ds = {k: CirclesDataset(k, seed=seed) for k in ("train", "val", "test")}
    idx = {k: set(d.indices) for k, d in ds.items()}
    assert [len(ds[k]) for k in ("train", "val", "test")] == [255, 45, 100]
    assert not idx["train"] & idx["val"] and not idx["train"] & idx["test"] and not idx["val"] & idx["test"]
    assert idx["train"] | idx["val"] | idx["test"] == set(range(400))
    assert sorted(ds["val"].targets.tolist()) == [0] * 22 + [1] * 23 or sorted(ds["val"].targets.tolist()) == \
        [0] * 23 + [1] * 22
    assert CirclesDataset("val", seed=seed).indices == ds["val"].indices


def test_imagefolder_test_dir_is_the_test_split(tmp_path):
    from PIL import Image

    from pdenets.datasets.vision import build_imagefolder

    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (4, 4)).save(tmp_path / split / c / f"{i}.png")
    assert [len(build_imagefolder(tmp_path, s, None)) for s in ("train", "val", "test")] == [6, 4, 2]


class Counting(Dataset):
    """Wraps a dataset and counts how often its samples are read."""

    def __init__(self, ds):
        self.ds, self.reads = ds, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads += 1
        return self.ds[i]


def _memory_splits():
    x, y = make_circles(n_per_class=60, seed=5)
    parts = [TensorDataset(x[i::3], y[i::3]) for i in range(3)]
    info = DatasetInfo("memory-circles", 2, 0, kind="vector", in_features=2, class_names=["in", "out"])
    return DataSplits(parts[0], Counting(parts[1]), Counting(parts[2]), info)


def test_best_chosen_on_val_and_test_scored_once(tmp_path):
    """In-memory splits through the public API (model= and data=): the test set is read exactly once
    (one pass, at the end), the validation set once per epoch; best/ holds the epoch of the highest
    validation top-1 (ties: lowest validation loss); test_top1 is the best weights' test accuracy."""
    from pdenets.models import create_model

    data = _memory_splits()
    torch.manual_seed(0)
    model = create_model("ruseckas_circles_r3", depth=6)
    cfg = dict(model="ignored", dataset="memory-circles", epochs=6, batch_size=20, opt="adam", lr=0.05,
               weight_decay=0.0, sched="none", progress=False, report=False, out=str(tmp_path / "r"))
    with one_thread():
        trainer = Trainer(cfg, model=model, data=data)
        s = trainer.fit()
    assert data.test.reads == len(data.test) == 40 and data.val.reads == 6 * 40
    rows = read_epochs(tmp_path / "r")
    best = max(rows, key=lambda r: (r["val_top1"], -r["val_loss"]))
    assert s["best_epoch"] == best["epoch"] and s["val_top1"] == best["val_top1"]
    assert s["model"] == "ruseckas_circles_r3" and s["test_samples"] == 40
    m, meta = load_model(tmp_path / "r", prefer="best")
    assert meta["epoch"] == best["epoch"]
    xt, yt = data.test.ds.tensors
    with torch.no_grad():
        acc_best = 100 * (m(xt).argmax(1) == yt).float().mean().item()
        acc_model = 100 * (trainer.model(xt).argmax(1) == yt).float().mean().item()
    assert acc_best == pytest.approx(s["test_top1"]) and acc_model == pytest.approx(s["test_top1"])
    on_disk = json.loads((tmp_path / "r/summary.json").read_text())
    assert on_disk["checkpoint"] == str(tmp_path / "r/checkpoints/best") and on_disk["test_top1"] == s["test_top1"]


def test_stopped_run_does_not_score_test(tmp_path):
    data = _memory_splits()
    cfg = dict(model="ruseckas_circles_r3", model_kwargs={"depth": 3}, dataset="memory-circles", epochs=3,
               batch_size=40, sched="none", progress=False, report=False, stop_after=1, out=str(tmp_path / "r"))
    with one_thread():
        s = Trainer(cfg, data=data).fit()
    assert s["status"] == "stopped" and s["test_top1"] is None and data.test.reads == 0


def _image_tree(root, counts: dict[str, int]) -> None:
    from PIL import Image

    for split, n in counts.items():
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (4, 4), (10 * i, 0, 0)).save(root / split / c / f"{i}.png")


def test_imagefolder_without_test_dir_carves_validation_from_train(tmp_path):
    """ImageNet's layout (train + val): PATH/val is the test split, validation a fixed stratified 15% of train."""
    from pdenets.datasets.vision import build_imagefolder

    _image_tree(tmp_path, {"train": 20, "val": 3})
    train, val, test = (build_imagefolder(tmp_path, s, None) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (34, 6, 6)
    assert not set(train.indices) & set(val.indices) and set(train.indices) | set(val.indices) == set(range(40))
    assert sorted(val.dataset.targets[i] for i in val.indices) == [0, 0, 0, 1, 1, 1]  # stratified
    assert {p.split("/")[-3] for p, _ in test.samples} == {"val"}
    assert build_imagefolder(tmp_path, "val", None).indices == val.indices  # fixed, not drawn per call


def test_imagefolder_too_small_to_carve_is_refused(tmp_path):
    from pdenets.datasets.vision import build_imagefolder
    from pdenets.errors import UsageError

    _image_tree(tmp_path, {"train": 1, "val": 1})
    with pytest.raises(UsageError, match="too few images per class"):
        build_imagefolder(tmp_path, "train", None)
