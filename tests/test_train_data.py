"""Data plumbing of the trainer: the fixed digits split, the shift augmentation, batch indices, top-k."""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from pdenets.datasets.digits import DigitsDataset, digits_split_indices, random_translate
from pdenets.train.data import batch_indices
from pdenets.train.metrics import topk_correct


def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    y = load_digits().target
    train, test = digits_split_indices()
    assert (len(train), len(test)) == (1347, 450) and not set(train) & set(test)
    assert sorted(train + test) == list(range(1797))
    # stratified: every class keeps its share within one sample
    for c in range(10):
        assert abs((y[test] == c).sum() - 0.25 * (y == c).sum()) <= 1
    assert digits_split_indices() == (train, test)
    ds = DigitsDataset("test", img_size=16)
    assert ds.images.shape == (450, 1, 16, 16) and ds.indices == test
    assert torch.equal(ds.targets, torch.tensor(y[test]))


def test_random_translate_matches_a_numpy_shift():
    x = torch.arange(2 * 5 * 6, dtype=torch.float64).reshape(2, 5, 6)
    torch.manual_seed(3)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,)))
    torch.manual_seed(3)
    out = random_translate(x, 2, -1.0)
    ref = np.full((2, 5, 6), -1.0)
    for i in range(5):
        for j in range(6):
            si, sj = i - dy, j - dx
            if 0 <= si < 5 and 0 <= sj < 6:
                ref[:, i, j] = x[:, si, sj].numpy()
    assert np.array_equal(out.numpy(), ref)


class _Ids(Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return torch.tensor(i), 0


def test_batch_indices_are_the_loaders_samples():
    for world, rank, drop in ((1, 0, True), (2, 1, False)):
        sampler = DistributedSampler(_Ids(), num_replicas=world, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(3)
        loader = DataLoader(_Ids(), batch_size=4, sampler=sampler, drop_last=drop)
        seen = [x.tolist() for x, _ in loader]
        assert batch_indices(loader) == seen


def test_topk_correct_brute_force():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    ranks = (logits > logits.gather(1, y[:, None])).sum(1)  # how many classes beat the target
    assert topk_correct(logits, y, (1, 5)) == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    assert topk_correct(logits[:, :3], y.clamp(max=2), (1, 5))[1] == 50  # k capped at the class count


def test_checkpoint_swap_interrupted_falls_back_to_old(tmp_path):
    """A kill between the two renames of save_checkpoint leaves only last.old: resume must find it."""
    from pdenets.models import create_model
    from pdenets.train.checkpoint import resolve_checkpoint, save_checkpoint

    ck = tmp_path / "checkpoints"
    model = create_model("ruseckas_circles_r3")
    save_checkpoint(ck / "last", model, {"epoch": 1}, {"epoch": 1})
    save_checkpoint(ck / "best", model, {"epoch": 1})
    (ck / "last").rename(ck / "last.old")  # the state right after the first rename
    assert resolve_checkpoint(tmp_path, prefer="last") == ck / "last.old"
    assert resolve_checkpoint(tmp_path, prefer="best") == ck / "best"
