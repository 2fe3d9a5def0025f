"""The ``inrprior`` command line (``python -m inrprior`` is the same program).

Subcommands live in the registry :data:`COMMANDS`: a new one is one :func:`register` call with a function that adds
its arguments to a parser and a function that runs it. This module holds the registry, the parser, :func:`main` and
the option helpers the commands share; the commands are in :mod:`inrprior.cli_image` (fit, render, blend, demo) and
:mod:`inrprior.cli_prior` (train, sample, adapt, bench). User errors (a missing or unreadable file, a wrong shape,
a bad option value, an unwritable output folder) print ``inrprior: error: <message>`` and exit with status 2, without
a traceback; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["main", "build_parser", "register", "Command", "COMMANDS"]

log = logging.getLogger(__name__)
#: exceptions that mean "the user asked for something impossible"; anything else is a bug and shows a traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # the last: a run that diverged (train says what to do)


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None
    epilog: str | None = None


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments, run, description: str | None = None,
             epilog: str | None = None) -> Command:
    """Add a subcommand ``inrprior NAME``: ``add_arguments(parser)`` declares its options, ``run(args)`` runs it
    and returns an exit status (``None`` means 0)."""
    COMMANDS[name] = Command(name, help, add_arguments, run, description, epilog)
    return COMMANDS[name]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` where there is a meaningful default (not for flags, ``None`` or ones the help states)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


EXAMPLES = """examples:
  inrprior demo --out runs/demo                      fit, blend and meta-train a prior on embedded data (10 min)
  inrprior fit photo.png --supervision gradient --steps 500 -o runs/fit
  inrprior render runs/fit/functions.safetensors --size 512 512 -o big.png
  inrprior render runs/fit --size 256 256 --derivative laplacian -o lap.png
  inrprior blend base.png insert.png --mask mask.png -o runs/blend
  inrprior train --prior meta --data faces --steps 300 --out runs/faces
  inrprior sample runs/faces -n 16 --size 128 -o grid.png

Run `inrprior COMMAND --help` for the options of each command."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="inrprior", formatter_class=_Formatter, epilog=EXAMPLES,
        description="Represent images as SIRENs: fit them from values, gradients or Laplacians, render them at any "
                    "resolution with their derivatives, and blend images in the gradient domain.")
    parser.add_argument("--version", action="version", version=f"inrprior {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help, epilog=cmd.epilog,
                           formatter_class=_Formatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks and debug logging")
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())  # one line


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors (argparse already printed them)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args._command.run(args) or 0
    except KeyboardInterrupt:
        print("inrprior: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"inrprior: error: {_message(e)}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------------------- options
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


class _SizeAction(argparse.Action):
    """``--size H [W]``: one value is a square, two are height and width; stored as ``(H, W)``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"{option_string} takes one value (a square) or two (height width), got {len(values)}")
        setattr(namespace, self.dest, (values[0], values[-1]))


def add_size_argument(p: argparse.ArgumentParser, help: str, flag: str = "--size", **kwargs) -> None:
    p.add_argument(flag, type=positive_int, nargs="+", metavar="PX", action=_SizeAction,
                   help=f"{help}; one value for a square or two: height width", **kwargs)


def add_siren_arguments(p: argparse.ArgumentParser, hidden: int = 256, layers: int = 3, w0: float = 30.0) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--hidden", type=positive_int, default=hidden, help="width of every sine layer")
    g.add_argument("--layers", type=int, default=layers, help="hidden sine layers after the first one")
    g.add_argument("--w0", type=positive_float, default=w0, help="frequency factor of the sine layers")


def device_of(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def load_image(path, size=None, channels: int | None = None) -> torch.Tensor:
    """Read an image file as ``(C, H, W)`` and resize it when ``size`` is given (``(H, W)``)."""
    from .data import read_image, resize

    image = read_image(path, channels=channels)
    return resize(image, tuple(size)) if size else image


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    return path


# The commands register themselves from their own modules, in this order in --help: the image commands (fit,
# render, blend, demo), then the priors' (train, sample, adapt, bench).
from . import cli_image, cli_prior  # noqa: E402,F401
