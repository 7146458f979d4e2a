"""The ``pdenets`` command line: one entry point, one subcommand per job.

Each subcommand lives in a module of :mod:`pdenets.commands` that defines ``add_parser(subparsers)``;
the work itself is done by the library modules those commands call. The providers of the training hooks
are imported here, so every ``--hook NAME[:VALUE]`` is known to every subcommand (docs/design.md §7).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from pdenets.errors import RunFailed, UsageError
from pdenets.symmetry import prox as _prox  # noqa: F401  (registers the nuclear-prox training hook)
from pdenets.train import regularizer_hooks as _regularizer_hooks  # noqa: F401  (rh-tv, box, layer-smooth, ...)

# Modules of pdenets.commands, each adding one subcommand (in this order in --help).
COMMAND_MODULES: tuple[str, ...] = (
    "pdenets.commands.models",
    "pdenets.commands.train",
    "pdenets.commands.compare",
    "pdenets.commands.eval",
    "pdenets.commands.demo",
    "pdenets.commands.make_imagenet100",
    "pdenets.commands.rh",
    "pdenets.commands.ruseckas",
    "pdenets.commands.pde",
    "pdenets.commands.export",
    "pdenets.commands.symmetry",
)


class ArgumentsRefused(Exception):
    """A command line argparse refused; :func:`main` prints it as one line and returns 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message} (see {prog} --help)")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``pdenets CMD: error: MSG`` (exit code 2), like every other bad input
    (no usage block; ``--help`` shows it). Subcommand parsers are of this class too (argparse's default)."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsRefused(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pdenets",
        description="Convolutional networks from the PDE perspective: build, train, analyse and export "
        "the models of Liu-Shao-Bai, Ruthotto-Haber and Ruseckas.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from pdenets import __version__

    parser.add_argument("--version", action="version", version=f"pdenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        importlib.import_module(mod_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentsRefused as e:
        print(e, file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UsageError as e:
        print(f"pdenets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"pdenets {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a command may say how to continue (``args.interrupt_hint``)
        hint = getattr(args, "interrupt_hint", None)
        hint = hint() if callable(hint) else hint
        print(f"pdenets {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
