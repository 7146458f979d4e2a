"""``pdenets make-imagenet100``: the 100-class ImageNet subset of CMC (Tian et al.) as a tree of symlinks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pdenets.errors import UsageError

LAYOUT = "IMAGENET_ROOT/train/<wnid>/*.JPEG and IMAGENET_ROOT/val/<wnid>/*.JPEG"


def cmc_wnids() -> list[str]:
    """The 100 WordNet ids of CMC's ImageNet-100 list, as shipped in ``pdenets/assets``."""
    from importlib.resources import files

    text = files("pdenets").joinpath("assets/imagenet100_cmc_wnids.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def make_imagenet100(src: str | os.PathLike, dst: str | os.PathLike, wnids: list[str] | None = None,
                     splits: tuple[str, ...] = ("train", "val")) -> dict[str, list[str]]:
    """Create ``dst/{train,val}/<wnid>`` as symlinks to ``src/{train,val}/<wnid>`` for the 100 classes.

    Returns ``{split: [missing wnids]}``. Existing correct links are kept; a ``dst`` entry that is not a
    link to the right place is an error (nothing is overwritten).
    """
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser()
    wnids = wnids or cmc_wnids()
    if not src.is_dir():
        raise UsageError(f"ImageNet root {str(src)!r} does not exist; expected {LAYOUT}")
    present = [s for s in splits if (src / s).is_dir()]
    if not present:
        raise UsageError(f"ImageNet root {str(src)!r} has no train/ or val/ folder; expected {LAYOUT}")
    missing: dict[str, list[str]] = {}
    for split in splits:
        if split not in present:
            missing[split] = list(wnids)
            continue
        (dst / split).mkdir(parents=True, exist_ok=True)
        missing[split] = []
        for w in wnids:
            target = src / split / w
            link = dst / split / w
            if not target.is_dir():
                missing[split].append(w)
                continue
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == target:
                    continue
                raise UsageError(f"{str(link)!r} exists and is not a link to {str(target)!r}; remove it first")
            link.symlink_to(target, target_is_directory=True)
    return missing


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "make-imagenet100", help="build the 100-class ImageNet subset (CMC list) with symlinks",
        description="Create DST/train/<wnid> and DST/val/<wnid> as symbolic links into an ImageNet tree "
        f"({LAYOUT}; val sorted into class folders) for the 100 classes of CMC's ImageNet-100 list "
        "(Tian et al.; shipped as pdenets/assets/imagenet100_cmc_wnids.txt). Reports missing classes "
        "(exit code 1 when any is missing). Then: pdenets train --recipe liu2023-imagenet100 "
        "--dataset imagefolder:DST (DST/val is scored as the test split; the validation split that chooses the "
        "checkpoint is a fixed stratified 15% of DST/train), or pdenets compare ... --models table1.",
    )
    p.add_argument("--src", required=True, metavar="IMAGENET_ROOT")
    p.add_argument("--dst", required=True, metavar="DIR")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pdenets.commands.common import check_out

    check_out(args.dst, "--dst")
    wnids = cmc_wnids()
    missing = make_imagenet100(args.src, args.dst, wnids)
    rc = 0
    for split, miss in missing.items():
        print(f"{split}: {len(wnids) - len(miss)}/{len(wnids)} classes linked under {Path(args.dst) / split}")
        if miss:
            rc = 1
            print(f"  missing in {Path(args.src) / split}: {' '.join(miss)}")
    if rc:
        print("some classes are missing: the subset is incomplete (see the list above)")
    else:
        print(f"done: pdenets train --recipe liu2023-imagenet100 --dataset imagefolder:{args.dst}")
    return rc
