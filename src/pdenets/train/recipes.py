"""Training recipes: named presets of :class:`~pdenets.train.config.TrainConfig` fields.

Every value can be overridden (YAML ``--config`` file, then command-line options). ``hooks`` lists
training hooks (:mod:`pdenets.hooks`) that are resolved only when training starts. A recipe may hold
``per_dataset: {DATASET: {...}}``: the entry of the run's data set (the explicit ``--dataset``, else the
recipe's own ``dataset``) is applied over the recipe's other values (:func:`get_recipe`).
"""

from __future__ import annotations

from typing import Any

from pdenets.errors import UsageError

RECIPES: dict[str, dict[str, Any]] = {
    # Liu-Shao-Bai Table 1: timm's ResNeXt-50 recipe with the paper's peak lr 0.3 and 50 epochs (docs/design.md §2).
    "liu2023-imagenet100": dict(
        dataset="imagefolder:data/imagenet100", img_size=224, epochs=50, batch_size=192,
        opt="sgd", momentum=0.9, lr=0.3, weight_decay=1e-4,
        sched="cosine", warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-6,
        auto_augment="rand-m7-mstd0.5-inc1", reprob=0.4, remode="pixel", recount=3, hflip=0.5,
        smoothing=0.1, amp="bf16", crop_pct=0.875, interpolation="bicubic", workers=8,
    ),
    # Ruthotto-Haber supplement: SGD, 120 epochs, lr 0.1 / 10 at 60, 80, 100, wd 5e-4, batch 128, no augmentation.
    "ruthotto2018-stl10": dict(
        dataset="stl10", img_size=96, epochs=120, batch_size=128,
        opt="momentum", momentum=0.9, lr=0.1, weight_decay=5e-4,
        sched="multistep", decay_milestones=[60, 80, 100], decay_rate=0.1, warmup_epochs=0,
        no_aug=True, smoothing=0.0, hooks=["rh-tv:3e-4", "box:1.0"],
    ),
    # The default job: a small QL-ConvNet on the bundled digits, a minute or two on 2 CPU cores. Random
    # shifts of up to 2 px (1 px of the original 8x8 image) lift test accuracy from ~97.3% to ~98.9%.
    "quick": dict(
        model="qlnet18_eq3_small", dataset="digits", img_size=16, epochs=12, batch_size=32,
        opt="adamw", lr=2e-3, weight_decay=0.05,
        sched="cosine", warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5,
        no_aug=True, random_shift=2, smoothing=0.0, workers=0,
    ),
    # `pdenets compare` on digits (docs/design.md §15), sized so that Table 1's twelve rows x 3 seeds (36 runs) take
    # under 15 minutes on 2 CPU cores: `quick` at 12 px (the images are 8x8), 8 epochs at lr 4e-3, shifts of 1 px.
    # Chosen on the validation split (eq3/eq4, seeds 0-2, mean best validation top-1): 98.5/97.7% as here, 97.5/97.2%
    # at lr 2e-3, 97.9/96.6% with shifts of 2 px.
    "table1-digits": dict(
        model="qlnet18_eq3_small", dataset="digits", img_size=12, epochs=8, batch_size=32,
        opt="adamw", lr=4e-3, weight_decay=0.05,
        sched="cosine", warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5,
        no_aug=True, random_shift=1, smoothing=0.0, workers=0,
    ),
    # Ruseckas §5 (arXiv:1909.03767): every parameter starts at zero (the models' init), cross entropy + the
    # layer-smoothness loss of Eq. (113) with λ = 1.0 (circles) / 0.1 (conv), gradient clipping 1.0 (forward
    # Euler with the cubic term is stable only while γ̃x² < 2), one-cycle-like cosine with 10 % warm-up; the
    # optimiser settings are those of `pdenets ruseckas` (README "Ruseckas"). γ̃'s lr factor and γ̃ ≥ 0 are
    # the models' own options (param_lr_scales, constrain_).
    "ruseckas2019": dict(
        model="ruseckas_circles_r3", dataset="circles", no_aug=True, smoothing=0.0, weight_decay=0.0,
        sched="cosine", warmup_lr=1e-5, min_lr=0.0, clip_grad=1.0, workers=0,
        per_dataset={
            # §5.1: 400 points, full batch (one step per epoch), Nesterov SGD 0.9, lr 0.02, 1000 epochs
            # (2000, the `pdenets ruseckas` default, overfits the 255 training points: 97.0% vs 98.0% test)
            "circles": dict(epochs=1000, warmup_epochs=100, batch_size=1024, opt="sgd", momentum=0.9, lr=0.02,
                            eval_batch_size=1024, hooks=["layer-smooth:1.0"]),
            # §5.2 on the bundled 8x8 digits: the conv net, Adam, batch 64, 30 epochs; lr 1e-2 (the 1e-3 of
            # `pdenets ruseckas digits`, on these standardised images and 1144 training images, gave 93.3%)
            "digits": dict(model="ruseckas_conv_mnist", img_size=8, epochs=30, warmup_epochs=3, batch_size=64,
                           opt="adam", lr=1e-2, hooks=["layer-smooth:0.1"]),
            # §5.2 on MNIST (local copy): 3 epochs
            "mnist": dict(model="ruseckas_conv_mnist", img_size=28, epochs=3, warmup_epochs=0, batch_size=64,
                          opt="adam", lr=1e-3, hooks=["layer-smooth:0.1"]),
        },
    ),
}


def get_recipe(name: str, dataset: str | None = None) -> dict[str, Any]:
    """The fields of recipe ``name`` for ``dataset`` (default: the recipe's own): its values, then its
    ``per_dataset`` entry for that data set, if any."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; expected one of: {', '.join(RECIPES)}")
    values = {k: v for k, v in RECIPES[name].items() if k != "per_dataset"}
    per = RECIPES[name].get("per_dataset", {})
    values.update(per.get(dataset or values.get("dataset"), {}))
    return {k: (list(v) if isinstance(v, list) else v) for k, v in values.items()}
