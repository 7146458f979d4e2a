"""The circles set (Ruseckas §5.1) as a train/val/test :class:`~torch.utils.data.Dataset` of 2-D points."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from pdenets.datasets.circles import make_circles


class CirclesDataset(Dataset):
    """A fixed stratified 75/25 train/test split of :func:`make_circles` (400 points, σ = 0.2, radii 1 and 2);
    'val' is a fixed stratified 15 % of the training part (255 train / 45 val / 100 test points).

    ``seed`` generates the points and the 75/25 split (the trainer passes ``cfg.seed``); the validation
    carve uses its own fixed seed. Samples are (2,) float vectors; labels 0 (inner) / 1 (outer).
    ``indices`` maps to the generated order.
    """

    classes = ["inner", "outer"]

    def __init__(self, split: str = "train", seed: int = 0, **circles_kwargs) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"circles split must be 'train', 'val' or 'test', got {split!r}")
        x, y = make_circles(seed=seed, **circles_kwargs)
        g = torch.Generator().manual_seed(seed + 1)
        train, test = [], []
        for c in (0, 1):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_test = len(idx) // 4
            test += idx[:n_test].tolist()
            train += idx[n_test:].tolist()
        if split == "test":
            self.indices = sorted(test)
        else:
            from pdenets.datasets.splits import carve_validation

            train, val = carve_validation(sorted(train), y[sorted(train)].tolist())
            self.indices = train if split == "train" else val
        self.points = x[self.indices].contiguous()
        self.targets = y[self.indices].contiguous()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.points[i], int(self.targets[i])
