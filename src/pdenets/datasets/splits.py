"""The fixed validation split: a stratified share of a training part, carved with a seed of its own.

Data sets without an official validation split (digits, circles, the torchvision sets) get their
validation split from the training part with :func:`carve_validation`: ``VAL_FRACTION`` (15 %) of it,
stratified by class, with the fixed seed ``VAL_SPLIT_SEED`` — independent of the run's ``--seed``, so the
validation samples never move between runs. The test split is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

VAL_FRACTION = 0.15
VAL_SPLIT_SEED = 20190909


def carve_validation(indices: Sequence[int], targets: Sequence[int], fraction: float = VAL_FRACTION,
                     seed: int = VAL_SPLIT_SEED) -> tuple[list[int], list[int]]:
    """(train, val): a stratified ``fraction`` of ``indices`` (labels ``targets``, one per index) held out as
    validation; both sorted, disjoint, together exactly ``indices``."""
    from sklearn.model_selection import train_test_split

    if len(indices) != len(targets):
        raise ValueError(f"{len(indices)} indices but {len(targets)} targets")
    train, val = train_test_split(list(indices), test_size=fraction, stratify=list(targets), random_state=seed)
    return sorted(int(i) for i in train), sorted(int(i) for i in val)
