"""``pdenets symmetry analyze|verify|teleport|compress``: the continuous symmetry of the QL-ConvNets, made exact
and useful (Liu-Shao-Bai §4; docs/design.md §3-§4)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from pdenets.commands.common import (
    CHECKPOINT_HELP,
    WHICH_HELP,
    Range,
    check_out,
    data_meta,
    load_checkpoint,
    model_kwarg,
    non_negative_int,
    number_type,
    positive_float,
    positive_int,
    seed_int,
)
from pdenets.errors import UsageError

# --rtol: σ ≤ rtol·σ_max counts as zero. Above 1e-2 the dropped directions carry signal: not a lossless compression.
RTOL_RANGE = Range(0, 1e-2, lo_open=True)

EPILOG = """examples:
  pdenets symmetry analyze --model qlnet50_eq3p
  pdenets symmetry analyze --model qlnet50_eq3 -m act=none
  pdenets symmetry verify --checkpoint runs/demo
  pdenets symmetry teleport --checkpoint runs/demo --objective l1 --out runs/demo/teleport-l1
  pdenets symmetry compress --checkpoint runs/demo --out runs/demo/compressed
  pdenets symmetry fold --checkpoint runs/demo --out runs/demo/folded
  pdenets symmetry quantize --checkpoint runs/demo --weights 4 --acts 8 --rotation none hadamard --out runs/demo/w4a8
every --checkpoint takes any model pdenets wrote (runs, checkpoints, teleported/compressed/folded artifacts);
every --out writes one (model.safetensors + meta.json), readable by eval, export, pde kernels, symmetry and
`pdenets train --init-from`.
"""


def _common(p: argparse.ArgumentParser, need_ckpt: bool) -> None:
    p.add_argument("--checkpoint", "-c", required=need_ckpt, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--which", choices=("best", "last"), default="best", help=WHICH_HELP)
    p.add_argument("--n-inputs", type=non_negative_int, default=0,
                   help="evaluate on the first N test images only (default 0: all of the test split)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random group elements")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (default 0: torch's choice)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "symmetry", help="weight-space symmetry: group analysis, verification, teleportation, compression",
        description="The QL-ConvNet admits a change of basis T of each residual-stream segment that keeps its "
        "output: readers W -> W T^-1, writers A -> T A, skips T' S T^-1, classifier W T^-1 (BN folded). "
        "Which T are exact depends on the blocks and activations (GL / O / monomial / signed or positive "
        "monomial / permutations, docs/design.md §3).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="symmetry_command", metavar="ACTION")

    a = ss.add_parser("analyze", help="table of the exact group of every segment, with dim G and Σ dim G",
                      description="Per residual-stream segment: width, exact group, dim G and the reason.")
    a.add_argument("--model", help="registered model name, e.g. qlnet50_eq3p (or use --checkpoint)")
    a.add_argument("--model-kwarg", "-m", action="append", default=[], type=model_kwarg, metavar="KEY=VALUE",
                   help="constructor argument (YAML value), repeatable: -m act=none -m act_placement=all")
    _common(a, need_ckpt=False)
    a.set_defaults(func=run_analyze)

    v = ss.add_parser("verify", help="apply random group elements; float32/float64 errors and a power check",
                      description="Apply a random element of every segment's group and measure the output change "
                      "in float32 and float64, per segment and all at once, plus top-1 agreement on the test split; "
                      "the power check applies a same-norm element of the next larger group with inputs scaled so "
                      "|x| ~ R at the radial activations, which must change the output clearly.")
    v.add_argument("--model", help="registered model (random weights and BN statistics) instead of a checkpoint")
    v.add_argument("--model-kwarg", "-m", action="append", default=[], type=model_kwarg, metavar="KEY=VALUE")
    _common(v, need_ckpt=False)
    v.set_defaults(func=run_verify)

    t = ss.add_parser("teleport", help="move along the orbit to lower an objective, same function",
                      description="Optimise exact group elements (exp of skew matrices for O, exp for GL, log-scales "
                      "for monomial segments) to lower an objective: l1 (stream-facing L1 norm), quant4 (4-bit "
                      "round-to-nearest per-channel output error) or gradnorm (raise the gradient norm; a no-op on O "
                      "segments, which are skipped with a warning).")
    _common(t, need_ckpt=True)
    t.add_argument("--objective", choices=("l1", "quant4", "gradnorm"), default="l1")
    t.add_argument("--steps", type=positive_int, default=300, help="optimiser steps (default 300)")
    t.add_argument("--lr", type=positive_float, default=0.02, help="Adam step on the group generators (default 0.02)")
    t.add_argument("--calib", type=positive_int, default=128,
                   help="calibration images for quant4/gradnorm, from the training split (default 128)")
    t.add_argument("--out", metavar="DIR", help="artifact directory: the teleported model (model.safetensors + "
                   "meta.json), weights_hist.png, teleport.json")
    t.set_defaults(func=run_teleport)

    c = ss.add_parser("compress", help="lossless width reduction + gauge fixing (and a lossy PCA curve)",
                      description="Drop the null directions of every rotatable segment's writer matrix (numerical "
                      "rank in float64, relative tolerance --rtol), fix the gauge (first reader -> triangular or "
                      "identity), write a smaller loadable model and a table. --pca adds the LOSSY PCA curve.")
    _common(c, need_ckpt=True)
    c.add_argument("--out", required=True, metavar="DIR|FILE.safetensors",
                   help="artifact directory (model.safetensors + meta.json + table and figures) or a .safetensors file")
    c.add_argument("--rtol", type=number_type(float, RTOL_RANGE, "rtol"), default=1e-6,
                   help="σ ≤ rtol·σ_max counts as zero, in (0, 0.01]: larger thresholds drop directions that carry "
                   "signal (default 1e-6)")
    c.add_argument("--no-gauge", action="store_true", help="skip gauge fixing")
    c.add_argument("--pca", action="store_true", help="also compute the LOSSY PCA agreement curve (figure)")
    c.add_argument("--compare", metavar="CKPT", help="another checkpoint (e.g. trained without --nuclear-prox) "
                   "whose writer spectra are drawn in the same figure")
    c.set_defaults(func=run_compress)

    f = ss.add_parser("fold", help="fold every BatchNorm into its conv (same function, eval form) and save it",
                      description="Write the BN-folded (eval-mode) form of a model as an artifact: every BatchNorm "
                      "becomes part of the conv before it (docs/design.md §3); the function is unchanged.")
    _common(f, need_ckpt=True)
    f.add_argument("--out", required=True, metavar="DIR|FILE.safetensors", help="artifact directory or file")
    f.add_argument("--share-kernels", action="store_true",
                   help="keep weight-shared derivative kernels shared (a per-channel scale holds the BN)")
    f.set_defaults(func=run_fold)
    _add_quantize(ss)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


# ---- helpers ----------------------------------------------------------------------------------------------


def _threads(args) -> None:
    from pdenets.commands.train import set_threads

    set_threads(args.threads)


def _parse_kwargs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """The ``-m KEY=VALUE`` pairs (parsed by :func:`pdenets.commands.common.model_kwarg`) as a dict."""
    return dict(items)


def load_any(path: str, which: str = "best"):
    """(model, meta) of any artifact (:func:`pdenets.commands.common.load_checkpoint`)."""
    return load_checkpoint(path, which)


def _check_out(out: str) -> Path:
    """Refuse an unusable --out before any work is done."""
    if Path(out).suffix in (".pth", ".pt", ".pkl", ".bin"):
        raise UsageError(f"--out {out!r}: models are written as safetensors; give a directory or a .safetensors file")
    return check_out(out, "--out", suffixes=(".safetensors",))


def _check_stream(model, label: str) -> None:
    """Teleport, compress: the model must declare its residual stream (a QL-ConvNet), checked before any work."""
    from pdenets.symmetry.analyze import analyze

    try:
        analyze(model)
    except ValueError as e:
        raise UsageError(f"{label}: {e}") from None


def _save(model, out: Path, meta: dict[str, Any], source: dict[str, Any], **extra: Any) -> Path:
    from pdenets.artifacts import save_artifact

    return save_artifact(model, out, dict(data_meta(source), source=source.get("file"), **extra, **meta))


def _random_model(name: str, kwargs: dict[str, Any]):
    from pdenets.train.build import build_model
    from pdenets.utils.stats import randomize_bn_statistics

    model = build_model(name, kwargs)
    return randomize_bn_statistics(model, seed=0)  # untrained BN is the identity: checks would mean nothing


def test_data(meta: dict[str, Any], n: int = 0, split: str = "test"):
    """(images, labels) of a split (default: test) of the data set the model was trained on."""
    import torch

    from pdenets.datasets import build_dataset

    name = meta.get("dataset")
    if not name:
        raise UsageError("the checkpoint does not name its data set")
    ds = build_dataset(name, split, img_size=meta.get("img_size"), data_dir=meta.get("data_dir"),
                       crop_pct=meta.get("crop_pct"))
    idx = range(len(ds)) if not n else range(min(n, len(ds)))
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.as_tensor(ys)


def _model_and_data(args, stream: bool = False):
    """(model, metadata, test inputs, labels or None); ``stream``: refuse a model without a residual-stream
    declaration before the data are read."""
    import torch

    if getattr(args, "checkpoint", None):
        model, meta = load_any(args.checkpoint, args.which)
        if stream:
            _check_stream(model, f"--checkpoint {args.checkpoint}")
        x, y = test_data(meta, args.n_inputs)
        return model, meta, x, y
    if not getattr(args, "model", None):
        raise UsageError("give --checkpoint PATH or --model NAME")
    model = _random_model(args.model, _parse_kwargs(args.model_kwarg))
    if stream:
        _check_stream(model, f"--model {args.model}")
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

        from pdenets.train.build import build_model

        with torch.device("meta"):
            model = build_model(args.model, _parse_kwargs(args.model_kwarg))
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


def _calibration(args, meta: dict[str, Any], x, y):
    """Calibration images and labels: the first --calib of the training split (the test split only scores)."""
    if not meta.get("dataset"):
        return x[: args.calib], None if y is None else y[: args.calib]
    return test_data(meta, args.calib, split="train")


def run_teleport(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from pdenets.artifacts import add_edit
    from pdenets.symmetry.fold import fold_bn
    from pdenets.symmetry.report import plot_weight_histograms
    from pdenets.symmetry.teleport import quant_output_error, stream_facing_l1, teleport, weight_histograms

    _threads(args)
    out = _check_out(args.out) if args.out is not None else None
    model, meta, x, y = _model_and_data(args, stream=True)
    calib, calib_y = _calibration(args, meta, x, y)
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
    acc = None
    if y is not None:
        a0, acc = 100 * float((p0 == y).double().mean()), 100 * float((p1 == y).double().mean())
        msg += f", accuracy {a0:.2f}% -> {acc:.2f}%"
    print(msg)
    if out is not None:
        report = dict(objective=args.objective, before=res.before, after=res.after, l1_before=l1b, l1_after=l1a,
                      quant4_before=qb, quant4_after=qa, rel_diff_fp32=rel,
                      identical_predictions=bool((p0 == p1).all()))
        add_edit(t32, "teleport", objective=args.objective, steps=args.steps, seed=args.seed)
        f = _save(t32, out, dict(test_top1=acc, teleport=report), meta)
        d = f.parent
        hb, ha = weight_histograms(base, res.model)
        plot_weight_histograms(hb, ha, d / "weights_hist.png", f"teleport {args.objective}")
        (d / "teleport.json").write_text(json.dumps(report, indent=1))
        print(f"wrote {f} (the teleported model), {d}/weights_hist.png, {d}/teleport.json")
    return 0


def _compression_table(args, model, folded, small, x, y) -> tuple[str, dict[str, Any]]:
    """Markdown table of the original / folded / compressed models, and the compression record."""
    import torch

    from pdenets.symmetry.compress import n_params
    from pdenets.symmetry.report import compression_markdown

    small32 = copy.deepcopy(small).float()
    with torch.no_grad():
        y0, y1 = model(x), small32(x)
    diff = float((y1 - y0).abs().max() / y0.abs().max())
    acc0, acc1 = (_accuracy(model, x, y), _accuracy(small32, x, y)) if y is not None else (None, None)
    gauge = any(e["op"] == "gauge_fix" for e in getattr(small, "_pdenets_edits", []))
    table = [dict(name="original", params=n_params(model), diff=None, accuracy=acc0),
             dict(name="folded (BN into convs)", params=n_params(folded), diff=None, accuracy=None),
             dict(name="compressed" + (" + gauge" if gauge else ""), params=n_params(small), diff=diff,
                  accuracy=acc1)]
    record = dict(params=n_params(small), params_original=n_params(model), max_rel_diff=diff,
                  identical_predictions=bool((y0.argmax(1) == y1.argmax(1)).all()), test_top1_original=acc0,
                  test_top1=acc1, rtol=args.rtol)
    return compression_markdown(table), record


def _print_compression_rows(rows, gauge_rows) -> None:
    print("width reduction (writer-matrix rank in float64):")
    print(f"{'seg':<4}{'width':>6}{'rank':>6}{'σ_max':>11}{'σ kept min':>12}{'σ dropped max':>14}"
          f"{'params removed':>16}  note")
    for r in rows:
        print(f"{r.index:<4}{r.width:>6}{r.rank:>6}{r.sigma_max:>11.3g}{r.sigma_kept_min:>12.3g}"
              f"{r.sigma_dropped:>14.2e}{r.params_removed:>16,}  {r.note}")
    if gauge_rows:
        print("gauge fixing:")
    for g in gauge_rows:
        print(f"  seg {g.index} ({g.group}): {g.matrix} -> {g.form}, {g.params_removed:,} parameters removed")


def run_compress(args: argparse.Namespace) -> int:
    from pdenets.symmetry.compress import compress_widths, gauge_fix, pca_curve
    from pdenets.symmetry.fold import fold_bn
    from pdenets.symmetry.report import plot_pca_curve, plot_spectra

    _threads(args)
    out = _check_out(args.out)
    if args.compare and not Path(args.compare).exists():
        raise UsageError(f"--compare {args.compare!r} does not exist ({CHECKPOINT_HELP})")
    model, meta, x, y = _model_and_data(args, stream=True)
    model = model.float().eval()
    folded = fold_bn(copy.deepcopy(model).double(), share_kernels=True)
    small, rows = compress_widths(folded, rtol=args.rtol)
    gauge_rows = []
    if not args.no_gauge:
        small, gauge_rows = gauge_fix(small)
    _print_compression_rows(rows, gauge_rows)
    md, record = _compression_table(args, model, folded, small, x, y)
    print(md)
    print(f"identical test predictions: {record['identical_predictions']}")
    f = _save(small.float(), out, dict(test_top1=record["test_top1"], compression=record), meta)
    fig_dir, stem = (f.parent, "compressed") if f.name == "model.safetensors" else (f.parent, f.stem)
    curves = {"this model": folded}
    if args.compare:
        other, _ = load_any(args.compare, args.which)
        curves[f"compare: {args.compare}"] = fold_bn(other.double())
    plot_spectra(curves, fig_dir / f"{stem}_spectra.png", "singular values of each segment's writer matrix")
    (fig_dir / f"{stem}_table.md").write_text(md + "\n")
    print(f"wrote {f} ({record['params']:,} parameters), {stem}_spectra.png, {stem}_table.md in {fig_dir}")
    if args.pca:
        curve = pca_curve(copy.deepcopy(model).double(), x[:256].double(), x.double(), y)
        plot_pca_curve(curve, fig_dir / f"{stem}_pca_lossy.png")
        print("LOSSY PCA fallback (not a symmetry): keep  params  agreement  accuracy")
        for r in curve:
            print(f"  {r['keep']:.3f}  {r['params']:,}  {100 * r['agreement']:.2f}%  "
                  f"{100 * r.get('accuracy', float('nan')):.2f}%")
    return 0


def run_fold(args: argparse.Namespace) -> int:
    import torch

    from pdenets.symmetry.fold import fold_bn

    _threads(args)
    out = _check_out(args.out)
    model, meta, x, y = _model_and_data(args)
    folded = fold_bn(model.float().eval(), share_kernels=args.share_kernels)
    with torch.no_grad():
        y0, y1 = model(x), folded(x)
    rel = float((y1 - y0).abs().max() / y0.abs().max())
    acc = _accuracy(folded, x, y) if y is not None else None
    same = bool((y0.argmax(1) == y1.argmax(1)).all())
    print(f"folded every BatchNorm: max rel output diff {rel:.1e}, identical predictions {same}"
          + (f", test top-1 {acc:.2f}%" if acc is not None else ""))
    f = _save(folded, out, dict(test_top1=acc), meta)
    print(f"wrote {f}")
    return 0


def _add_quantize(ss: argparse._SubParsersAction) -> None:
    q = ss.add_parser("quantize", help="rotate the O(n) segments, quantise to integers, write and run an int8 ONNX "
                      "model", description="Rotate every O/GL segment (none | random: Haar, --seeds of them | "
                      "hadamard: randomised block-Hadamard | learned: exp of a skew matrix optimised on the "
                      "quantised output error), quantise weights per output channel (8 or 4 bits, round-to-nearest "
                      "or --gptq) and activations per tensor (uint8, calibrated on --calib training images), write "
                      "the integer ONNX model (QDQ), run it in onnxruntime on the test split and write "
                      "quant_report.json (docs/design.md §16).")
    _common(q, need_ckpt=True)
    q.add_argument("--weights", type=int, choices=(8, 4), default=8, help="weight bits (default 8)")
    q.add_argument("--acts", choices=("8", "none"), default="8", help="activation bits, or none (default 8)")
    q.add_argument("--rotation", nargs="+", choices=("none", "random", "hadamard", "learned"),
                   default=["none", "random", "hadamard", "learned"], help="one or more (default: all four)")
    q.add_argument("--seeds", type=positive_int, default=5,
                   help="draws of random and of hadamard (its signs), seeds --seed ... (default 5)")
    q.add_argument("--gptq", action="store_true", help="GPTQ-style error-compensating weight rounding")
    q.add_argument("--keep-first-last", action="store_true",
                   help="8-bit weights for the stem conv and the classifier (with --weights 4)")
    q.add_argument("--calib", type=positive_int, default=256,
                   help="calibration images from the training split (default 256)")
    q.add_argument("--learn-steps", type=positive_int, default=100, help="Adam steps of 'learned' (default 100)")
    q.add_argument("--learn-lr", type=positive_float, default=0.005, help="its step size (default 0.005)")
    q.add_argument("--per-layer", action="store_true",
                   help="also measure each layer's sensitivity: the output error on the calibration images with only "
                   "that layer's weights rounded (round-to-nearest), per rotation choice (layer_errors in the report)")
    q.add_argument("--ort-threads", type=positive_int, default=2, help="onnxruntime intra-op threads (default 2)")
    q.add_argument("--latency-batch", type=positive_int, default=8, help="batch of the latency runs (default 8)")
    q.add_argument("--out", required=True, metavar="DIR", help="directory: quant_report.json, float.onnx, "
                   "NAME.int.onnx per rotation choice")
    q.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from pdenets.quant.pipeline import QuantConfig, layer_table, quantize_report, report_table

    _threads(args)
    out = check_out(args.out, "--out")
    model, meta = load_any(args.checkpoint, args.which)
    _check_stream(model, f"--checkpoint {args.checkpoint}")
    x, y = test_data(meta, args.n_inputs)
    calib, _ = test_data(meta, args.calib, split="train")
    cfg = QuantConfig(weight_bits=args.weights, act_bits=None if args.acts == "none" else 8,
                      first_last_bits=8 if args.keep_first_last else None, gptq=args.gptq, seeds=args.seeds,
                      seed=args.seed, learn_steps=args.learn_steps, learn_lr=args.learn_lr,
                      ort_threads=args.ort_threads, latency_batch=args.latency_batch, per_layer=args.per_layer)
    try:
        report = quantize_report(model, calib, x, y, list(dict.fromkeys(args.rotation)), cfg, out)
    except ValueError as e:
        raise UsageError(f"symmetry quantize: {e}") from None
    print(report_table(report))
    if args.per_layer:
        print(layer_table(report))
    print(f"wrote {out}/quant_report.json and the ONNX models ({len(calib)} calibration images from the training "
          f"split, {len(x)} test images)")
    return 0
