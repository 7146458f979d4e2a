"""scikit-learn's bundled handwritten digits (1797 images of 8×8, 10 classes), resized, with a fixed split.

The embedded default data set of pdenets: it needs no download. Images are scaled to [0, 1], resized to
``img_size`` by bilinear interpolation and standardised with the mean/std of the training split. The
train/test split is stratified 75/25 with a fixed seed (``random_state=0``), so every run sees the same
test set (docs/design.md §5); the validation split is a fixed stratified 15 % of the 75 % training part
(:func:`pdenets.datasets.splits.carve_validation`): 1144 train / 203 val / 450 test images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25


def digits_split_indices() -> tuple[list[int], list[int]]:
    """Indices (into scikit-learn's 1797 samples) of the fixed stratified train and test splits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, test = train_test_split(
        list(range(len(target))), test_size=DIGITS_TEST_FRACTION, stratify=target, random_state=DIGITS_SPLIT_SEED
    )
    return sorted(train), sorted(test)


def digits_splits() -> dict[str, list[int]]:
    """Indices of the fixed 'train', 'val' and 'test' splits (disjoint; train + val = the 75 % part)."""
    from sklearn.datasets import load_digits

    from pdenets.datasets.splits import carve_validation

    part, test = digits_split_indices()
    target = load_digits().target
    train, val = carve_validation(part, target[part].tolist())
    return dict(train=train, val=val, test=test)


def random_translate(x: torch.Tensor, max_shift: int, fill: float) -> torch.Tensor:
    """Shift a (C, H, W) image by random integers in [-max_shift, max_shift] along H and W (torch RNG),
    filling the uncovered border with ``fill``."""
    s = max_shift
    dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,)))
    h, w = x.shape[-2:]
    padded = F.pad(x, (s, s, s, s), value=fill)
    return padded[..., s - dy:s - dy + h, s - dx:s - dx + w]


class DigitsDataset(Dataset):
    """One split of the digits set as (1, img_size, img_size) float tensors and integer labels.

    ``random_shift`` (training augmentation) translates each image by up to that many pixels.
    ``indices[i]`` is the index in scikit-learn's ``load_digits()`` of sample ``i`` (the NaN guard logs
    these, so a bad sample can be looked up). ``transform`` (optional) is applied to each image tensor.
    """

    classes = [str(i) for i in range(10)]

    def __init__(self, split: str = "train", img_size: int = 16, transform=None, random_shift: int = 0) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "test", "val"):
            raise ValueError(f"digits split must be 'train', 'val' or 'test', got {split!r}")
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        data = load_digits()
        splits = digits_splits()
        x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
        if img_size != 8:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        mean, std = x[splits["train"]].mean(), x[splits["train"]].std()
        self.indices = splits[split]
        self.images = ((x[self.indices] - mean) / std).contiguous()
        self.targets = torch.tensor(data.target[self.indices], dtype=torch.long)
        self.transform = transform
        self.mean, self.std = float(mean), float(std)
        self.random_shift = random_shift
        self.background = float(-mean / std)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.random_shift:
            x = random_translate(x, self.random_shift, self.background)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])
