"""``pdenets models``: the table of registered models with parameters, GMACs and output shape."""

from __future__ import annotations

import argparse

from pdenets.commands.common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list registered models with parameter counts and GMACs",
        description="List every model pdenets registers (image models are also timm models), with "
        "parameter count, GMACs of one forward pass and output shape. Image models are measured at "
        "224x224 (use --img-size); counting is done on the meta device, so it is quick.",
    )
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'qlnet50_*'")
    p.add_argument("--num-classes", type=positive_int, default=100, help="classifier size (default 100, as Table 1)")
    p.add_argument("--img-size", type=positive_int, default=224, help="image side for GMACs (default 224)")
    p.add_argument("--no-macs", action="store_true", help="parameters only (faster)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pdenets.errors import UsageError
    from pdenets.models import is_image_model, list_models
    from pdenets.models.stats import model_stats

    names = list_models(args.pattern)
    if not names:
        raise UsageError(f"no registered model matches {args.pattern!r} (try `pdenets models` for all)")
    rows = []
    for name in names:
        image = is_image_model(name)
        kwargs = {"num_classes": args.num_classes} if image else {}
        shape = (1, 3, args.img_size, args.img_size) if image else None
        try:
            rows.append(model_stats(name, input_shape=shape, measure=not args.no_macs, **kwargs))
        except ValueError:  # a model with fixed classes/channels (e.g. ruseckas_conv_mnist): its own defaults
            rows.append(model_stats(name, measure=not args.no_macs))
        except RuntimeError as e:  # an input too small for the model's downsampling
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise UsageError(f"{name} cannot run on {args.img_size}x{args.img_size} images (--img-size): "
                             f"{why}") from None
    header = f"{'model':<34} {'params':>12} {'params(M)':>9} {'GMACs':>8}  {'output':<14} input"
    print(header)
    print("-" * len(header))
    for st in rows:
        gm = f"{st.gmacs:8.3f}" if st.gmacs is not None else f"{'-':>8}"
        out = "x".join(map(str, st.output_shape)) if st.output_shape else "-"
        inp = "x".join(map(str, st.input_shape)) if st.input_shape else "-"
        print(f"{st.name:<34} {st.params:>12,} {st.params / 1e6:>9.2f} {gm}  {out:<14} {inp}")
    return 0
