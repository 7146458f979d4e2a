"""``pdenets symmetry analyze|verify|teleport|compress``: the continuous symmetry of the QL-ConvNets, made exact
and useful (Liu-Shao-Bai §4; DESIGN.md §3-§4)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from pdenets.errors import UsageError

EPILOG = """examples:
  pdenets symmetry analyze --model qlnet50_eq3p
  pdenets symmetry analyze --model qlnet50_eq3 -m act=none
  pdenets symmetry verify --checkpoint runs/demo
  pdenets symmetry teleport --checkpoint runs/demo --objective l1 --out runs/demo/teleport-l1
  pdenets symmetry compress --checkpoint runs/prox --out runs/prox/compressed.pth
"""


def _common(p: argparse.ArgumentParser, need_ckpt: bool) -> None:
    p.add_argument("--checkpoint", "-c", required=need_ckpt, metavar="PATH",
                   help="trained model: a pdenets checkpoint (file, directory or run directory) or a file "
                   "written by `pdenets symmetry compress/teleport`")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run directory")
    p.add_argument("--n-inputs", type=int, default=0,
                   help="evaluate on the first N test images only (default: all of the test split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random group elements")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "symmetry", help="weight-space symmetry: group analysis, verification, teleportation, compression",
        description="The QL-ConvNet admits a change of basis T of each residual-stream segment that keeps its "
        "output: readers W -> W T^-1, writers A -> T A, skips T' S T^-1, classifier W T^-1 (BN folded). "
        "Which T are exact depends on the blocks and activations (GL / O / monomial / signed or positive "
        "monomial / permutations, DESIGN.md §3).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="symmetry_command", metavar="ACTION")

    a = ss.add_parser("analyze", help="table of the exact group of every segment, with dim G and Σ dim G",
                      description="Per residual-stream segment: width, exact group, dim G and the reason.")
    a.add_argument("--model", help="registered model name, e.g. qlnet50_eq3p (or use --checkpoint)")
    a.add_argument("--model-kwarg", "-m", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument (YAML value), repeatable: -m act=none -m act_placement=all")
    _common(a, need_ckpt=False)
    a.set_defaults(func=run_analyze)

    v = ss.add_parser("verify", help="apply random group elements; float32/float64 errors and a power check",
                      description="Apply a random element of every segment's group and measure the output change "
                      "in float32 and float64, per segment and all at once, plus top-1 agreement on the test split; "
                      "the power check applies a same-norm element of the next larger group with inputs scaled so "
                      "|x| ~ R at the radial activations, which must change the output clearly.")
    v.add_argument("--model", help="registered model (random weights and BN statistics) instead of a checkpoint")
    v.add_argument("--model-kwarg", "-m", action="append", default=[], metavar="KEY=VALUE")
    _common(v, need_ckpt=False)
    v.set_defaults(func=run_verify)

    t = ss.add_parser("teleport", help="move along the orbit to lower an objective, same function",
                      description="Optimise exact group elements (exp of skew matrices for O, exp for GL, log-scales "
                      "for monomial segments) to lower an objective: l1 (stream-facing L1 norm), quant4 (4-bit "
                      "round-to-nearest per-channel output error) or gradnorm (raise the gradient norm; a no-op on O "
                      "segments, which are skipped with a warning).")
    _common(t, need_ckpt=True)
    t.add_argument("--objective", choices=("l1", "quant4", "gradnorm"), default="l1")
    t.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    t.add_argument("--lr", type=float, default=0.02, help="Adam step on the group generators (default 0.02)")
    t.add_argument("--calib", type=int, default=128, help="calibration images for quant4/gradnorm (default 128)")
    t.add_argument("--out", help="directory: teleported model (model.pth), histogram, report.md")
    t.set_defaults(func=run_teleport)

    c = ss.add_parser("compress", help="lossless width reduction + gauge fixing (and a lossy PCA curve)",
                      description="Drop the null directions of every rotatable segment's writer matrix (numerical "
                      "rank in float64, relative tolerance --rtol), fix the gauge (first reader -> triangular or "
                      "identity), write a smaller loadable model and a table. --pca adds the LOSSY PCA curve.")
    _common(c, need_ckpt=True)
    c.add_argument("--out", required=True, help="output file of the compressed model (.pth)")
    c.add_argument("--rtol", type=float, default=1e-6, help="σ ≤ rtol·σ_max counts as zero (default 1e-6)")
    c.add_argument("--no-gauge", action="store_true", help="skip gauge fixing")
    c.add_argument("--pca", action="store_true", help="also compute the LOSSY PCA agreement curve (figure)")
    c.add_argument("--compare", metavar="CKPT", help="another checkpoint (e.g. trained without --nuclear-prox) "
                   "whose writer spectra are drawn in the same figure")
    c.set_defaults(func=run_compress)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


# ---- helpers ----------------------------------------------------------------------------------------------


def _threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _parse_kwargs(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise UsageError(f"--model-kwarg expects KEY=VALUE, got {it!r}")
        out[k] = yaml.safe_load(v)
    return out


def load_any(path: str, which: str = "best"):
    """(model, meta) from a pdenets checkpoint or a symmetry file; meta has 'dataset', 'img_size' if known."""
    import torch

    p = Path(path)
    if p.is_file() and p.suffix in (".pth", ".pt"):
        from pdenets.symmetry.compress import load_compressed

        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
            model, meta = load_compressed(obj)
        except Exception as e:
            raise UsageError(f"cannot read {path!r} as a symmetry model file ({type(e).__name__}: {e})") from None
        return model, meta
    from pdenets.train.checkpoint import load_model

    if not p.exists():
        raise UsageError(f"checkpoint {path!r} does not exist")
    return load_model(path, "cpu", prefer=which)


def _random_model(name: str, kwargs: dict[str, Any]):
    import torch
    import torch.nn as nn

    from pdenets.models import create_model

    try:
        model = create_model(name, **kwargs)
    except RuntimeError as e:
        raise UsageError(f"unknown model {name!r} (see `pdenets models`): {e}") from None
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # untrained BN is the identity: give it random statistics so checks mean something
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def test_data(meta: dict[str, Any], n: int = 0):
    """(images, labels) of the test split of the data set the model was trained on."""
    import torch

    from pdenets.datasets import build_dataset

    name = meta.get("dataset")
    if not name:
        raise UsageError("the checkpoint does not name its data set")
    ds = build_dataset(name, "val", img_size=meta.get("img_size"), data_dir=meta.get("data_dir"),
                       crop_pct=meta.get("crop_pct"))
    idx = range(len(ds)) if not n else range(min(n, len(ds)))
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.as_tensor(ys)


def _model_and_data(args):
    import torch

    if getattr(args, "checkpoint", None):
        model, meta = load_any(args.checkpoint, args.which)
        x, y = test_data(meta, args.n_inputs)
        return model, meta, x, y
    if not getattr(args, "model", None):
        raise UsageError("give --checkpoint PATH or --model NAME")
    model = _random_model(args.model, _parse_kwargs(args.model_kwarg))
    shape = getattr(model, "default_cfg", {}).get("input_size", (3, 32, 32))
    x = torch.randn(args.n_inputs or 8, *shape, generator=torch.Generator().manual_seed(1))
    return model, {}, x, None


def _accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return 100.0 * float((model(x.to(next(model.parameters()).dtype)).argmax(1) == y).double().mean())


# ---- actions ----------------------------------------------------------------------------------------------


def run_analyze(args: argparse.Namespace) -> int:
    from pdenets.symmetry.analyze import analyze

    _threads(args)
    if args.checkpoint:
        model, meta = load_any(args.checkpoint, args.which)
        label = meta.get("model", args.checkpoint)
    elif args.model:
        import torch

        from pdenets.models import create_model

        try:
            with torch.device("meta"):
                model = create_model(args.model, **_parse_kwargs(args.model_kwarg))
        except RuntimeError as e:
            raise UsageError(f"unknown model {args.model!r} (see `pdenets models`): {e}") from None
        label = args.model
    else:
        raise UsageError("give --model NAME or --checkpoint PATH")
    try:
        a = analyze(model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"{label}: exact weight-space group of each residual-stream segment (eval mode, BN folded)")
    print(a.table())
    return 0


def run_verify(args: argparse.Namespace) -> int:
    import torch

    from pdenets.symmetry.transform import transform
    from pdenets.symmetry.verify import verify

    _threads(args)
    model, meta, x, y = _model_and_data(args)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        res = verify(model, None, x[:64], generator=gen)
    except ValueError as e:
        raise UsageError(f"cannot verify this model: {e}") from None
    print(f"verify: random element of every segment's group on {min(64, len(x))} inputs "
          f"(relative = max|Δ| / max|y|)")
    print(res.table())
    if y is not None:
        from pdenets.symmetry.analyze import analyze
        from pdenets.symmetry.fold import fold_bn
        from pdenets.symmetry.transform import random_element

        f = fold_bn(copy.deepcopy(model).double())
        t = transform(f, random_element(analyze(f), torch.Generator().manual_seed(args.seed))).float()
        m32 = model.float()
        with torch.no_grad():
            p0, p1 = m32(x).argmax(1), t(x).argmax(1)
        print(f"test split ({len(x)} images): accuracy {100 * float((p0 == y).double().mean()):.2f}% -> "
              f"{100 * float((p1 == y).double().mean()):.2f}%, identical predictions: {bool((p0 == p1).all())}")
    return 0


def run_teleport(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from pdenets.symmetry.compress import qlnet_config, save_compressed
    from pdenets.symmetry.fold import fold_bn
    from pdenets.symmetry.report import plot_weight_histograms
    from pdenets.symmetry.teleport import quant_output_error, stream_facing_l1, teleport, weight_histograms

    _threads(args)
    if args.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    model, meta, x, y = _model_and_data(args)
    calib, calib_y = x[: args.calib], y[: args.calib] if y is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = teleport(model, args.objective, steps=args.steps, lr=args.lr, inputs=calib, targets=calib_y,
                       progress=True)
    for w in caught:
        print(f"warning: {w.message}")
    base = fold_bn(copy.deepcopy(model).double())
    t32, b32 = copy.deepcopy(res.model).float(), copy.deepcopy(base).float()
    with torch.no_grad():
        p0, p1 = b32(x).argmax(1), t32(x).argmax(1)
        rel = float((t32(x) - b32(x)).abs().max() / b32(x).abs().max())
    l1b, l1a = stream_facing_l1(base), stream_facing_l1(res.model)
    print(f"teleport {args.objective}: objective {res.before:.6g} -> {res.after:.6g}  (skipped segments: "
          f"{res.skipped or 'none'})")
    print(f"stream-facing L1: {l1b:.6g} -> {l1a:.6g} ({100 * (l1a - l1b) / l1b:+.1f}%)")
    qb, qa = quant_output_error(base, x.double()), quant_output_error(res.model, x.double())
    print(f"4-bit RTN per-channel (test split): output error {qb[0]:.4f} -> {qa[0]:.4f}, "
          f"top-1 agreement {100 * qb[1]:.2f}% -> {100 * qa[1]:.2f}%")
    msg = f"float32 outputs: max rel diff {rel:.1e}, identical predictions: {bool((p0 == p1).all())}"
    if y is not None:
        a0, a1 = 100 * float((p0 == y).double().mean()), 100 * float((p1 == y).double().mean())
        msg += f", accuracy {a0:.2f}% -> {a1:.2f}%"
    print(msg)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_compressed(copy.deepcopy(res.model).float(), str(out / "model.pth"), qlnet_config(model), meta=dict(meta))
        hb, ha = weight_histograms(base, res.model)
        plot_weight_histograms(hb, ha, out / "weights_hist.png", f"teleport {args.objective}")
        (out / "teleport.json").write_text(json.dumps(dict(objective=args.objective, before=res.before,
                                                           after=res.after, l1_before=l1b, l1_after=l1a,
                                                           quant4_before=qb, quant4_after=qa, rel_diff_fp32=rel,
                                                           identical_predictions=bool((p0 == p1).all())), indent=1))
        print(f"wrote {out}/model.pth, weights_hist.png, teleport.json")
    return 0


def run_compress(args: argparse.Namespace) -> int:
    import torch

    from pdenets.symmetry.compress import compress_widths, gauge_fix, n_params, pca_curve, qlnet_config, save_compressed
    from pdenets.symmetry.fold import fold_bn
    from pdenets.symmetry.report import compression_markdown, plot_pca_curve, plot_spectra

    _threads(args)
    model, meta, x, y = _model_and_data(args)
    model = model.float().eval()
    p_orig = n_params(model)
    folded = fold_bn(copy.deepcopy(model).double(), share_kernels=True)
    small, rows = compress_widths(folded, rtol=args.rtol)
    print("width reduction (writer-matrix rank in float64):")
    print(f"{'seg':<4}{'width':>6}{'rank':>6}{'σ_max':>11}{'σ kept min':>12}{'σ dropped max':>14}"
          f"{'params removed':>16}  note")
    for r in rows:
        print(f"{r.index:<4}{r.width:>6}{r.rank:>6}{r.sigma_max:>11.3g}{r.sigma_kept_min:>12.3g}"
              f"{r.sigma_dropped:>14.2e}{r.params_removed:>16,}  {r.note}")
    gauge_rows = []
    if not args.no_gauge:
        small, gauge_rows = gauge_fix(small)
        print("gauge fixing:")
        for g in gauge_rows:
            print(f"  seg {g.index} ({g.group}): {g.matrix} -> {g.form}, {g.params_removed:,} parameters removed")
    small32 = small.float()
    with torch.no_grad():
        y0 = model(x)
        y1 = small32(x)
    diff = float((y1 - y0).abs().max() / y0.abs().max())
    acc0, acc1 = (_accuracy(model, x, y), _accuracy(small32, x, y)) if y is not None else (None, None)
    table = [dict(name="original", params=p_orig, diff=None, accuracy=acc0),
             dict(name="folded (BN into convs)", params=n_params(folded), diff=None, accuracy=None),
             dict(name="compressed" + (" + gauge" if gauge_rows else ""), params=n_params(small), diff=diff,
                  accuracy=acc1)]
    md = compression_markdown(table)
    print(md)
    print(f"identical test predictions: {bool((y0.argmax(1) == y1.argmax(1)).all())}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_compressed(small32, str(out), qlnet_config(model), meta=dict(meta, compressed_from=args.checkpoint))
    fig_dir = out.parent
    curves = {"this model": folded}
    if args.compare:
        other, _ = load_any(args.compare, args.which)
        curves = {"this model": folded, f"compare: {args.compare}": fold_bn(other.double())}
    plot_spectra(curves, fig_dir / f"{out.stem}_spectra.png", "singular values of each segment's writer matrix")
    (fig_dir / f"{out.stem}_table.md").write_text(md + "\n")
    print(f"wrote {out} ({n_params(small):,} parameters), {out.stem}_spectra.png, {out.stem}_table.md")
    if args.pca:
        curve = pca_curve(copy.deepcopy(model).double(), x[:256].double(), x.double(), y)
        plot_pca_curve(curve, fig_dir / f"{out.stem}_pca_lossy.png")
        print("LOSSY PCA fallback (not a symmetry): keep  params  agreement  accuracy")
        for r in curve:
            print(f"  {r['keep']:.3f}  {r['params']:,}  {100 * r['agreement']:.2f}%  "
                  f"{100 * r.get('accuracy', float('nan')):.2f}%")
    return 0
