"""``pdenets pde``: the PDE perspective — derivative kernels read as operators, classical PDEs as ResNets."""

from __future__ import annotations

import argparse
import time

from pdenets.commands.common import (
    Range,
    add_checkpoint_args,
    check_out,
    load_checkpoint,
    non_negative_int,
    number_type,
    positive_float,
    seed_int,
)

MAX_DEMO_SIZE = 4096  # pixels of the longer image side of `pde demo` (larger grids do not fit in memory)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pde",
        help="kernels as differential operators; heat/wave/rotation/dilation equations as ResNets",
        description="The PDE perspective of Liu-Shao-Bai (Table 2, Appendix A) and Ruthotto-Haber made "
        "executable. `pdenets pde kernels` reads every 3x3 derivative kernel (QL nets) and every time-stepped "
        "3x3 kernel (the K of the Ruthotto-Haber units, the Ruseckas conv kernels) of a model in the basis "
        "1, dx, dy, dxx, dyy, dxdy, dxxdy, dxdyy, dxxdyy; `pdenets pde demo` runs a classical PDE as a "
        "ResNet on an image and writes an animated GIF and a PNG strip.",
    )
    psub = p.add_subparsers(dest="pde_command", metavar="SUBCOMMAND")

    k = psub.add_parser(
        "kernels",
        help="derivative kernels of a model as differential operators (table + figure)",
        description="For each depthwise derivative kernel (the shared m x 1 x 3 x 3 of a QL block) print its "
        "coefficients in the operator basis and the share of its energy in orders 0, 1, 2 and >= 3, and "
        "save a figure; for the ODE/PDE networks (rh_*, ruseckas_conv_mnist) the same per unit and time step "
        "over all stencils of K (theta1/theta2 of a Hamiltonian unit separately) or of each layer's kernel. "
        "Mesh size h = 1 pixel unless --h is given. Basis 'fd': identity = [0 1 0] (the "
        "Eq. (8) kernel is exactly dxx + dyy, Sobel = 8h(dx + h^2/4 dxdyy)); 'rh': Ruthotto-Haber's "
        "smoothing identity [1 2 1]/4 (Sobel = 8h dx exactly).",
    )
    src = k.add_mutually_exclusive_group(required=True)
    add_checkpoint_args(k, group=src)
    src.add_argument("--model", metavar="NAME", help="registered model name (its initial, untrained kernels)")
    k.add_argument("--basis", choices=("fd", "rh"), default="fd", help="identity stencil of the basis (default fd)")
    k.add_argument("--h", type=positive_float, default=1.0, help="mesh size (default 1 = one pixel)")
    k.add_argument("--out", metavar="DIR", default=None, help="write kernels.png and kernels.csv here")
    k.add_argument("--max-rows", type=non_negative_int, default=None, help="print at most this many kernels")
    k.add_argument("--seed", type=seed_int, default=0, help="seed for --model's random initialisation")
    k.set_defaults(func=run_kernels)

    d = psub.add_parser(
        "demo",
        help="run heat/wave/rotation/dilation as a ResNet on an image; write a GIF and a PNG strip",
        description="Run a classical PDE as a ResNet with the image as initial condition and write "
        "OUT/<equation>.gif and OUT/<equation>_strip.png (like Fig. 2 of Liu-Shao-Bai). heat: Eq. (8) kernel, "
        "forward Euler, tau/h^2 = 0.2; wave: two-skip scheme; rotation: du/dt = -y du/dx + x du/dy up to "
        "t = pi/2; dilation: du/dt = -(x du/dx + y du/dy), zoom by 2.",
    )
    d.add_argument("--equation", choices=("heat", "wave", "rotation", "dilation"), default="heat")
    d.add_argument("--image", default="sample", help="image path, or 'sample' (scikit-image's camera, bundled)")
    d.add_argument("--out", metavar="DIR", default="pde_demo", help="output folder (default ./pde_demo)")
    d.add_argument("--frames", type=number_type(int, Range(2), "frames"), default=8,
                   help="frames in the GIF and strip, at least 2 (default 8)")
    d.add_argument("--size", type=number_type(int, Range(8, MAX_DEMO_SIZE), "size"), default=128,
                   help=f"longer image side in pixels, 8 .. {MAX_DEMO_SIZE} (default 128)")
    d.add_argument(
        "--padding-mode", choices=("zeros", "reflect", "replicate", "circular"), default=None,
        help="boundary condition (default: replicate for heat, zeros otherwise)",
    )
    d.set_defaults(func=run_demo)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def _load_model(args: argparse.Namespace):
    from pdenets.errors import UsageError

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, args.which)
        return model, meta["file"]
    import timm
    import torch

    from pdenets.models import create_model, list_models

    if args.model not in list_models() and not timm.is_model(args.model):  # pdenets' models and timm's
        raise UsageError(f"--model {args.model!r} is not a registered model (see `pdenets models`)")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        return create_model(args.model), f"{args.model} (untrained, seed {args.seed})"


def run_kernels(args: argparse.Namespace) -> int:
    from pdenets.errors import UsageError
    from pdenets.pde.operators import format_report, kernel_report
    from pdenets.pde.time_kernels import format_time_report, time_kernel_report

    if args.out is not None:
        check_out(args.out)
    model, label = _load_model(args)
    rows = kernel_report(model, args.h, args.basis)
    step_rows = time_kernel_report(model, args.h, args.basis)
    if not rows and not step_rows:
        raise UsageError(f"{label} has no 3x3 derivative convs (DerivativeConv) and no time-stepped 3x3 kernels "
                         f"(Ruthotto-Haber K, Ruseckas conv) to analyse")
    if rows:
        print(f"derivative kernels of {label}: {len(rows)} kernels, basis {args.basis!r}, h = {args.h:g}")
        print(format_report(rows, args.max_rows))
    if step_rows:
        n = sum(r.count for r in step_rows)
        print(f"time-stepped kernels of {label}: {n} stencils in {len(step_rows)} (module, step) groups, basis "
              f"{args.basis!r}, h = {args.h:g}; per group the RMS coefficient of each operator and the share of "
              f"the stencils' energy by order")
        print(format_time_report(step_rows, args.max_rows))
    if args.out:
        _write_kernels(args, label, rows, step_rows)
    return 0


def _write_kernels(args: argparse.Namespace, label: str, rows: list, step_rows: list) -> None:
    """kernels.csv/png (derivative kernels) and time_kernels.csv/png (per unit and step) in ``--out``."""
    from pathlib import Path

    from pdenets.pde.operators import OPERATORS_ASCII, plot_report
    from pdenets.pde.time_kernels import plot_time_kernels

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{label} — basis {args.basis}, h = {args.h:g}"
    written = []
    if rows:
        with open(out / "kernels.csv", "w") as f:
            f.write("module,kernel," + ",".join(OPERATORS_ASCII) + ",order0,order1,order2,order3plus\n")
            for r in rows:
                vals = [*r.coefficients, *r.shares]
                f.write(f"{r.module},{r.index}," + ",".join(f"{v:.6g}" for v in vals) + "\n")
        plot_report(rows, str(out / "kernels.png"), title=title)
        written += [out / "kernels.csv", out / "kernels.png"]
    if step_rows:
        with open(out / "time_kernels.csv", "w") as f:
            f.write("module,step,stencils," + ",".join(f"rms_{n}" for n in OPERATORS_ASCII)
                    + ",order0,order1,order2,order3plus\n")
            for r in step_rows:
                vals = [*r.coefficients_rms, *r.shares]
                f.write(f"{r.module},{r.step},{r.count}," + ",".join(f"{v:.6g}" for v in vals) + "\n")
        plot_time_kernels(step_rows, str(out / "time_kernels.png"), title=f"{title}: share of order vs time step")
        written += [out / "time_kernels.csv", out / "time_kernels.png"]
    print("wrote " + ", ".join(map(str, written)))


def run_demo(args: argparse.Namespace) -> int:
    from pdenets.errors import UsageError
    from pdenets.pde.demo import run_demo as demo

    check_out(args.out)
    t0 = time.perf_counter()
    try:
        res = demo(args.equation, args.image, args.out, args.frames, args.size, args.padding_mode)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"{args.equation}: {res.blocks[-1]} residual blocks to t = {res.times[-1]:.4g}, "
          f"{len(res.times)} frames in {time.perf_counter() - t0:.1f} s")
    print(f"wrote {res.gif} and {res.png}")
    return 0
