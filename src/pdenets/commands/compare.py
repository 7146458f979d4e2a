"""``pdenets compare``: Table 1 of Liu-Shao-Bai on any data set — many models, one recipe, the same seeds."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from pdenets.commands.common import field_type, positive_int
from pdenets.commands.train import add_train_options, overrides_from_args, set_threads
from pdenets.errors import UsageError

DEFAULT_RECIPE = "table1-digits"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pdenets.experiments.compare import LAYOUTS, PRESETS
    from pdenets.train.recipes import RECIPES

    p = sub.add_parser(
        "compare", help="train several models with one recipe and the same seeds; Table 1 of Liu-Shao-Bai",
        description="Train every model of --models with the identical recipe and seeds, each (model, seed) into "
        "OUT/runs/<model>-s<seed>, and write OUT/table.md (the form of Table 1: model, parameters, GMACs, test "
        "top-1 as mean ± sample std over seeds, activation), OUT/table.json and OUT/top1_vs_params.png. "
        "Resumable: run the same command again after a kill and it continues (finished runs are reused, the "
        "unfinished one resumes exactly); more models or seeds extend an earlier comparison. Every option of "
        "`pdenets train` applies to every run. Under torchrun every run is a DDP run.",
        epilog="model presets: table1 (the paper's 12 rows: ResNet and MobileNet_v3_large baselines, the ten "
        "QL rows), activations (Eq. (3) with relu@all, hardtanh@ds, hardball@ds, softball@ds); built at "
        "--layout (default: 50 from 128 px on, else 18_small).\n"
        "examples: pdenets compare --dataset digits --models table1 --seeds 3 --out runs/table1-digits\n"
        "          pdenets compare --models qlnet18_eq3_small,qlnet18_resnet_small:drop_path_rate=0.1,resnet18\n"
        "          torchrun --nproc_per_node=8 -m pdenets compare --dataset imagefolder:data/imagenet100 "
        "--recipe liu2023-imagenet100 --models table1 --out runs/table1-in100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="table1", metavar="A,B,...",
                   help="comma-separated model specs NAME[:KEY=VALUE...] (any pdenets or timm model) and presets ("
                   + ", ".join(PRESETS) + "); default table1")
    p.add_argument("--seeds", type=positive_int, default=3, metavar="N", help="seeds per model (default 3)")
    p.add_argument("--first-seed", type=field_type("seed"), default=0, metavar="S",
                   help="seeds are S, S+1, ..., S+N-1 (default 0)")
    p.add_argument("--layout", choices=LAYOUTS, help="QL skeleton of the presets (default by image size)")
    p.add_argument("--recipe", dest="recipe_arg", metavar="NAME",
                   help=f"training recipe of every run (default {DEFAULT_RECIPE}): " + ", ".join(RECIPES))
    p.add_argument("--config", metavar="FILE", help="YAML file of training options (keys as in RUN/config.yaml)")
    p.add_argument("--out", default="runs/compare", help="comparison directory (default runs/compare)")
    p.add_argument("--report", action="store_const", const=True, help="also write each run's report.md and figures")
    add_train_options(p)
    p.set_defaults(func=run)
    return p


def _overrides(args: argparse.Namespace) -> dict:
    """The training options every run shares (the file's, then the command line's)."""
    from pdenets.train.config import load_yaml

    if args.model is not None:
        raise UsageError("compare trains the models of --models; drop --model")
    if args.seed is not None:
        raise UsageError("compare sets each run's seed from --seeds/--first-seed; drop --seed")
    ov = load_yaml(args.config) if args.config else {}
    for k in ("model", "seed", "out", "resume", "init_from"):
        if k in ov:
            raise UsageError(f"config file {args.config}: {k!r} is set by compare (per run); remove it")
    cli = overrides_from_args(args)
    cli.pop("out", None)
    cli.pop("layout", None)
    for k in ("models", "seeds", "first_seed"):
        cli.pop(k, None)
    ov.update(cli)
    ov.setdefault("recipe", DEFAULT_RECIPE)
    return ov


def run(args: argparse.Namespace) -> int:
    from pdenets.commands.common import check_out
    from pdenets.experiments.compare import default_layout, image_size, parse_models, run_comparison, run_config

    set_threads(args.threads)
    check_out(args.out)
    ov = _overrides(args)
    kwargs = ov.pop("model_kwargs", {})
    ov.pop("overwrite", None)  # compare's own --overwrite: every run trained afresh
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    from pdenets.train.config import SEED_RANGE

    if not SEED_RANGE.contains(seeds[-1]):
        raise UsageError(f"--first-seed {args.first_seed} with --seeds {args.seeds}: the last seed {seeds[-1]} is not "
                         f"{SEED_RANGE.text}")
    probe = parse_models("qlnet18_eq3_small", "18_small")[0]  # any model: resolves recipe, data set, image size
    img = image_size(run_config(ov, probe, seeds[0], f"{args.out}/runs/probe", fresh=True))
    models = parse_models(args.models, args.layout or default_layout(img))
    argv = sys.argv[1:] if "compare" in sys.argv[1:] else None
    command = "pdenets " + " ".join(shlex.quote(a) for a in argv) if argv else None
    args.interrupt_hint = ("continue with the same command (finished runs are reused, the unfinished one resumes "
                           "from its last checkpoint)" + (f": {command}" if command else ""))
    from pdenets.train.distributed import cleanup, init_distributed

    group = init_distributed(ov.get("device", "auto"))  # under torchrun: one process group for all runs
    try:
        run_comparison(args.out, models, seeds, ov, kwargs, overwrite=bool(args.overwrite), command=command)
    finally:
        cleanup(group)
    if os.environ.get("RANK", "0") == "0":
        from pathlib import Path

        md = Path(args.out) / "table.md"
        if md.is_file():
            print(md.read_text(), end="")
        print(f"comparison directory: {args.out}  (table.md, table.json, top1_vs_params.png, runs/)")
    return 0
