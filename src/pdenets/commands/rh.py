"""``pdenets rh``: the Ruthotto-Haber experiments (Fig. 2, Fig. 3, multiscale, shallow-to-deep, stability)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdenets.commands.common import (
    Range,
    check_out,
    non_negative_int,
    number_type,
    positive_float,
    positive_int,
    seed_int,
)

NETWORKS = ("parabolic", "hamiltonian", "second_order")


def _floats(s: str) -> list[float]:
    from pdenets.errors import UsageError

    try:
        vals = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--fractions must be comma-separated numbers in (0, 1], got {s!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise UsageError(f"--fractions must be comma-separated numbers in (0, 1], got {s!r}")
    return vals


def _networks(s: str) -> list[str]:
    from pdenets.errors import UsageError

    nets = [v.strip() for v in s.split(",") if v.strip()]
    bad = [n for n in nets if n not in NETWORKS]
    if bad or not nets:
        raise UsageError(f"--networks must be a comma-separated subset of {','.join(NETWORKS)}, got {s!r}")
    return nets


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits (default, bundled) or stl10 (needs --data-dir)")
    p.add_argument("--data-dir", default=None, help="root of a local torchvision STL-10 copy (stl10_binary/)")
    p.add_argument("--train-steps", type=positive_int, default=300,
                   help="optimizer steps per training run (default 300), run by the trainer as epochs x "
                   "max_steps_per_epoch (the largest divisor of the steps that fits in one pass over the data)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the model, the data subsets and the training")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="torch CPU threads (default 1: a run's figures do not depend on the machine's core count, "
                   "which changes the float reductions; 0: torch's choice)")
    p.add_argument("--out", default=None, help="output folder (default runs/rh-<command>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace the training runs of an earlier invocation "
                   "in OUT/runs (refused without it)")


def _add_dynamics_parser(rs) -> None:
    """``pdenets rh dynamics``: feature norm and energy against the time step."""
    y = rs.add_parser("dynamics", help="feature norm and energy of a network against the time step (figure)",
                      description="Run test images through an RH network unit by unit and step by step; plot the mean "
                      "feature norm and the energy (Hamiltonian H = -P1(Z) - P2(Y), second-order 1/2|Y'|^2 + P, "
                      "parabolic P; defined without instance norm) against the time step. Writes dynamics.png and "
                      "dynamics.json to --out.")
    ysrc = y.add_mutually_exclusive_group(required=True)
    ysrc.add_argument("--checkpoint", "-c", metavar="PATH", help="a trained RH network (run, checkpoint, artifact)")
    ysrc.add_argument("--network", choices=NETWORKS, help="an untrained rh_<network>_small (digits)")
    y.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    y.add_argument("--samples", type=positive_int, default=64, help="test images (default 64)")
    y.add_argument("--seed", type=seed_int, default=0, help="seed of an untrained --network")
    y.add_argument("--out", default="runs/rh-dynamics", help="output folder (default runs/rh-dynamics)")
    y.set_defaults(rh_func=run_dynamics)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rh", help="Ruthotto-Haber experiments: accuracy vs data (Fig. 2), confusion (Fig. 3), multiscale, ...",
        description="Experiments with the parabolic, Hamiltonian and second-order CNNs of Ruthotto & Haber. "
        "Digits (bundled, 16 px, rh_*_small networks) by default; STL-10 (rh_*_stl10) from a local copy with "
        "--dataset stl10 --data-dir DIR. Every run goes through the trainer of `pdenets train` (run directories "
        "under OUT/runs/): AdamW + cosine, weight decay 5e-4, hooks rh-tv:3e-4 and box:1.0, a fixed number of "
        "optimizer steps per run; validation split carved from the training split, test accuracy reported.",
    )
    rs = p.add_subparsers(dest="rh_command", metavar="EXPERIMENT")

    f = rs.add_parser("fractions", help="test accuracy vs fraction of training data (Fig. 2) + confusion (Fig. 3)",
                      description="Train the three networks on class-balanced subsets of the training data and "
                      "test on the whole test split. Writes results.json, fractions.png (Fig. 2) and "
                      "confusion.png (Fig. 3) to --out.")
    _common(f)
    f.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                   help="comma-separated fractions of the training data (default 10%%..100%%)")
    f.add_argument("--networks", default=",".join(NETWORKS), help="subset of parabolic,hamiltonian,second_order")
    f.set_defaults(rh_func=run_fractions)

    d = rs.add_parser("deepen", help="shallow-to-deep: double the time steps of a trained network (h halved)",
                      description="Train a network, then refine every unit in time (2x steps, h/2, theta linearly "
                      "interpolated) and measure how much the function changes; optionally fine-tune.")
    _common(d)
    d.add_argument("--network", default="parabolic", choices=NETWORKS)
    d.add_argument("--finetune-steps", type=non_negative_int, default=0,
                   help="optimizer steps after deepening (default 0)")
    d.add_argument("--time-steps", type=positive_int, default=3,
                   help="time steps per unit before deepening (default 3)")
    d.add_argument("--h", type=positive_float, default=1.0, help="time step size before deepening (default 1)")
    d.add_argument("--factor", type=positive_int, default=2,
                   help="refine every unit to FACTOR x the steps, h/FACTOR (default 2; theta interpolated in time)")
    d.add_argument("--interpolation", choices=("linear", "constant"), default="linear",
                   help="theta between the old steps: linear (default, the shallow-to-deep rule) or constant (held: "
                   "the trained ODE itself, docs/design.md §14)")
    d.add_argument("--scheme", default=None, help="time-stepping scheme of the units (default: the paper's; e.g. "
                   "rk4, stormer_verlet, leapfrog; docs/design.md §14)")
    d.set_defaults(rh_func=run_deepen)

    m = rs.add_parser("multiscale", help="train at a coarse resolution, then continue at full resolution",
                      description="Multiscale training: half of the steps on coarse images (area-downsampled by 2), "
                      "the other half at full resolution; compared with all steps at full resolution.")
    _common(m)
    m.add_argument("--network", default="hamiltonian", choices=NETWORKS)
    m.set_defaults(rh_func=run_multiscale)

    pl = rs.add_parser("plot", help="merge results.json files of `rh fractions` runs into the Fig. 2 / Fig. 3 plots",
                       description="Read the results.json of one or more `pdenets rh fractions` runs (e.g. one per "
                       "network, run in parallel) and draw fractions.png and confusion.png into --out.")
    pl.add_argument("results", nargs="+", help="results.json files or the folders holding them")
    pl.add_argument("--out", default="runs/rh-fractions", help="output folder (default runs/rh-fractions)")
    pl.add_argument("--title", default="", help="plot title")
    pl.set_defaults(rh_func=run_plot)

    _add_dynamics_parser(rs)

    s = rs.add_parser("stability", help="Jacobian spectra and forward-stability ratios of freshly built units",
                      description="Float64 checks of the paper's stability claims at random points: parabolic "
                      "Jacobian (norm=none) eigenvalues, Hamiltonian spectrum with linear sigma, and "
                      "||Y(T)-Y_eps(T)|| / ||Y(0)-Y_eps(0)|| of each unit.")
    s.add_argument("--channels", type=positive_int, default=4, help="channels of the units (rounded up to even)")
    s.add_argument("--size", type=number_type(int, Range(2), "size"), default=6,
                   help="image side of the test points, at least 2 (instance norm needs 2 pixels; default 6)")
    s.add_argument("--time-steps", type=positive_int, default=8)
    s.add_argument("--seed", type=seed_int, default=0)
    s.set_defaults(rh_func=run_stability)

    def dispatch(args: argparse.Namespace) -> int:
        if not getattr(args, "rh_func", None):
            p.print_help()
            return 2
        return args.rh_func(args)

    p.set_defaults(func=dispatch)
    return p


def _setup(args: argparse.Namespace, name: str):
    """Check the options, apply ``--threads`` (process-wide, so here in the command layer), load the data."""
    import torch

    from pdenets.analysis.rh_experiments import load_data

    out = check_out(args.out if args.out is not None else f"runs/rh-{name}")
    data = load_data(args.dataset, args.data_dir)  # refuses a bad data set before anything changes
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    return data, out


def _cfg_kwargs(args: argparse.Namespace, **over) -> dict:
    """The command's training options for :func:`pdenets.analysis.rh_experiments.train_config`."""
    return dict(dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=not args.no_progress,
                     overwrite=args.overwrite), **over)


def _config(args: argparse.Namespace, model, n_train: int, steps: int, run_dir: Path, **over):
    from pdenets.analysis.rh_experiments import train_config
    from pdenets.models.registry import build_record

    return train_config(build_record(model)["model"], args.dataset, steps, n_train, run_dir,
                        **_cfg_kwargs(args, **over))


def run_fractions(args: argparse.Namespace) -> int:
    from pdenets.analysis.rh_experiments import fractions_experiment, plot_confusions, plot_fractions

    fracs, nets = _floats(args.fractions), _networks(args.networks)
    data, out = _setup(args, "fractions")
    rows = fractions_experiment(data, args.dataset, fracs, nets, steps=args.train_steps, out=out,
                                **_cfg_kwargs(args))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot_fractions(rows, str(out / "fractions.png"), title=f"{args.dataset}: test accuracy vs training data")
    plot_confusions(rows, str(out / "confusion.png"), class_names=data.class_names)
    _print_table(rows)
    print(f"wrote {out / 'results.json'}, {out / 'fractions.png'}, {out / 'confusion.png'}")
    return 0


def _print_table(rows: list[dict]) -> None:
    fracs = sorted({r["fraction"] for r in rows})
    print(f"{'network':<13} " + " ".join(f"{f:>6.0%}" for f in fracs))
    for dyn in dict.fromkeys(r["dynamics"] for r in rows):
        acc = {r["fraction"]: 100 * r["test_acc"] for r in rows if r["dynamics"] == dyn}
        print(f"{dyn:<13} " + " ".join(f"{acc[f]:6.2f}" if f in acc else f"{'-':>6}" for f in fracs))


def run_plot(args: argparse.Namespace) -> int:
    from pdenets.analysis.rh_experiments import plot_confusions, plot_fractions
    from pdenets.errors import UsageError

    out = check_out(args.out)
    rows: list[dict] = []
    for r in args.results:
        path = Path(r) / "results.json" if Path(r).is_dir() else Path(r)
        if not path.is_file():
            raise UsageError(f"no results file at {str(path)!r}; expected a results.json of `pdenets rh fractions`")
        rows += _read_results(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot_fractions(rows, str(out / "fractions.png"), title=args.title)
    plot_confusions(rows, str(out / "confusion.png"))
    _print_table(rows)
    print(f"wrote {out / 'results.json'}, {out / 'fractions.png'}, {out / 'confusion.png'}")
    return 0


def _read_results(path: Path) -> list[dict]:
    """The rows of a results.json written by `pdenets rh fractions` (a one-line error for any other file)."""
    from pdenets.errors import UsageError

    try:
        rows = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        rows = None
    keys = {"fraction", "dynamics", "test_acc"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and keys <= set(r) for r in rows):
        raise UsageError(f"{str(path)!r} is not a results.json of `pdenets rh fractions` (a JSON list of rows "
                         f"with {', '.join(sorted(keys))})")
    return rows


def run_deepen(args: argparse.Namespace) -> int:
    """Train, refine every unit in time (2x steps, h/2), measure the change on the test split; fine-tune."""
    from pdenets.analysis.rh_experiments import build_model, deepened, function_change, train

    data, out = _setup(args, "deepen")
    kw = dict(steps=args.time_steps, h=args.h, **({"scheme": args.scheme} if args.scheme else {}))
    try:
        model = build_model(args.network, data, args.dataset, args.seed, **kw)
    except ValueError as e:
        from pdenets.errors import UsageError

        raise UsageError(f"--scheme {args.scheme}: {e}") from None
    n = len(data.y_train)
    model, s = train(model, data.splits(), _config(args, model, n, args.train_steps, out / "runs" / "train"))
    deep = deepened(model, args.factor, args.interpolation)
    res = dict(network=args.network, scheme=model.units()[0].scheme_name, interpolation=args.interpolation,
               h_before=args.h,
               steps_before=[u.steps for u in model.units()],
               steps_after=[u.steps for u in deep.units()], train_steps=s["steps"], val_acc=s["val_top1"] / 100,
               acc_before=s["test_top1"] / 100, acc_after=_test_acc(deep, data),
               **function_change(model, deep, data.x_test))
    if args.finetune_steps:
        cfg = _config(args, deep, n, args.finetune_steps, out / "runs" / "finetune", lr=args.lr / 10)
        res["acc_after_finetune"] = train(deep, data.splits(), cfg)[1]["test_top1"] / 100
    (out / "deepen.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k:<22} {v}")
    return 0


def _test_acc(model, data) -> float:
    """Test accuracy (a fraction) of a network that was not trained by this run (the refined one)."""
    from pdenets.analysis.rh_experiments import predict

    return float((predict(model, data.x_test).argmax(1) == data.y_test).float().mean())


def run_multiscale(args: argparse.Namespace) -> int:
    """All steps at full resolution vs half the steps at half the resolution, then half at full resolution."""
    from pdenets.analysis.rh_experiments import build_model, train

    if args.train_steps < 2:
        from pdenets.errors import UsageError

        raise UsageError(f"--train-steps must be at least 2 for multiscale training, got {args.train_steps}")
    data, out = _setup(args, "multiscale")
    full = data.x_train.shape[-1]
    coarse, half, n = full // 2, args.train_steps // 2, len(data.y_train)
    res = dict(network=args.network, full_size=full, coarse_size=coarse, train_steps=args.train_steps)
    model = build_model(args.network, data, args.dataset, args.seed)
    _, s = train(model, data.splits(), _config(args, model, n, args.train_steps, out / "runs" / "full"))
    res.update(full_seconds=s["wall_seconds"], full_test_acc=s["test_top1"] / 100)
    model = build_model(args.network, data, args.dataset, args.seed)
    model, s1 = train(model, data.splits(size=coarse), _config(args, model, n, half, out / "runs" / "coarse"))
    res.update(coarse_stage_test_acc_at_coarse_res=s1["test_top1"] / 100,
               acc_coarse_stage_at_full_res=_test_acc(model, data))
    _, s2 = train(model, data.splits(), _config(args, model, n, args.train_steps - half, out / "runs" / "fine"))
    res.update(multiscale_seconds=s1["wall_seconds"] + s2["wall_seconds"], multiscale_test_acc=s2["test_top1"] / 100)
    (out / "multiscale.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k:<36} {v}")
    return 0


def run_dynamics(args: argparse.Namespace) -> int:
    """Feature norm and energy against the time step of a trained (or untrained) RH network on test images."""
    import torch

    from pdenets.analysis.rh_dynamics import network_dynamics, plot_dynamics
    from pdenets.datasets import build_dataset
    from pdenets.errors import UsageError

    out = check_out(args.out)
    if args.checkpoint:
        from pdenets.commands.common import load_checkpoint

        model, meta = load_checkpoint(args.checkpoint, args.which)
        label = f"{meta['model']} ({meta['file']})"
    else:
        from pdenets.models import create_model

        torch.manual_seed(args.seed)
        meta = dict(dataset="digits", img_size=None)
        model = create_model(f"rh_{args.network}_small", in_chans=1)
        label = f"rh_{args.network}_small (untrained, seed {args.seed})"
    if not hasattr(model, "units") or not model.units():
        raise UsageError(f"{label} is not a Ruthotto-Haber network (rh_*)")
    ds = build_dataset(meta.get("dataset") or "digits", "test", img_size=meta.get("img_size"),
                       data_dir=meta.get("data_dir"))
    x = torch.stack([ds[i][0] for i in range(min(args.samples, len(ds)))])
    records = network_dynamics(model, x.to(next(model.parameters()).dtype))
    out.mkdir(parents=True, exist_ok=True)
    plot_dynamics(records, str(out / "dynamics.png"), title=f"{label}: {len(x)} test images")
    (out / "dynamics.json").write_text(json.dumps(records, indent=1))
    for r in records:
        e = r["energies"]
        drift = "-" if e[0] is None else f"{(e[-1] - e[0]) / max(abs(e[0]), 1e-300):+.3g}"
        print(f"{r['unit']:<16} {r['dynamics']:<13} {r['scheme']:<27} |Y| {r['norms'][0]:.3g} -> {r['norms'][-1]:.3g}"
              f"  energy drift {drift}")
    print(f"wrote {out / 'dynamics.png'}, {out / 'dynamics.json'}")
    return 0


def run_stability(args: argparse.Namespace) -> int:
    """Float64 checks at random points: explicit float64 inputs and units (no change of the default dtype)."""
    import torch

    from pdenets.analysis import forward_stability, layer_jacobian_spectrum, parabolic_step_bound
    from pdenets.dynamics import create_unit

    f64 = torch.float64
    torch.manual_seed(args.seed)
    c, n = args.channels + args.channels % 2, args.size
    y = torch.randn(1, c, n, n, dtype=f64)
    par = create_unit("parabolic", c, steps=args.time_steps, norm="none").to(f64)
    ev = layer_jacobian_spectrum(par, y)
    bound = min(parabolic_step_bound(layer, (n, n)) for layer in par.layers)
    print(f"parabolic F_sym Jacobian (norm=none, ReLU): eigenvalues in [{ev.real.min():.4g}, "
          f"{ev.real.max():.3g}], max |Im| {ev.imag.abs().max():.2g}; Euler bound h <= {bound:.4g}")
    par.h = 0.99 * bound
    r = forward_stability(par, y.repeat(4, 1, 1, 1), eps=1e-2, trials=8)
    print(f"parabolic, {args.time_steps} Euler steps at h = 0.99 x bound: max ratio {r.max():.6f} (<= 1)")
    ham = create_unit("hamiltonian", c, steps=args.time_steps, norm="none", act="identity", bias=False).to(f64)
    ev = layer_jacobian_spectrum(ham, y)
    print(f"Hamiltonian linearisation (sigma = identity): max |Re| / max |lambda| = "
          f"{ev.real.abs().max() / ev.abs().max():.2e}")
    for dyn in ("hamiltonian", "second_order"):
        u = create_unit(dyn, c, steps=args.time_steps, h=1.0, norm="instance").to(f64)
        r = forward_stability(u, y.repeat(4, 1, 1, 1), eps=1e-2, trials=8)
        with torch.no_grad():
            back = u.reconstruct(u.integrate(y))
        print(f"{dyn:<12} (instance norm, h=1): ratio {r.min():.3f}..{r.max():.3f}; reconstruction error "
              f"{(back - y).abs().max():.2e}")
    return 0
