"""The command-line faces of the course exercises: `counts` (makemore part 1) and `ninja` (part 4)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from training.errors import CLIError


def add_parsers(sub) -> None:  # argparse's _SubParsersAction
    c = sub.add_parser("counts", help="the counting bigram of makemore part 1: count pairs, smooth, normalise")
    c.add_argument("--config", default="names_bigram", help="whose data and split (default: %(default)s)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--data", help="a text file instead of the config's dataset")
    c.add_argument("--format", choices=["lines", "stream"])
    c.add_argument("--smoothing", type=float, default=1.0, help="added to every count (default %(default)s)")
    c.add_argument("--out", help="checkpoint folder (default runs/<config name>-counts)")
    c.add_argument("-n", type=int, default=10, help="samples to print")

    n = sub.add_parser("ninja", help="backprop ninja (makemore part 4): the MLP's gradients by hand vs autograd")
    n.add_argument("--hidden", type=int, default=64, help="hidden units (the lecture's 64)")
    n.add_argument("--batch", type=int, default=32)
    n.add_argument("--seed", type=int, default=2147483647, help="the lecture's generator seed")
    n.add_argument("--steps", type=int, default=0, help="then train this many steps on the hand-written gradients")


def cmd_counts(args: argparse.Namespace) -> int:
    from training.course.counts import counts_command

    if args.smoothing < 0 or args.n < 0:
        raise CLIError("need --smoothing >= 0 and -n >= 0")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is a file, not a folder")
    return counts_command(args)


def cmd_ninja(args: argparse.Namespace) -> int:
    from training.course.ninja import ninja_command

    if args.hidden < 1 or args.batch < 2 or args.steps < 0:
        raise CLIError("need --hidden >= 1, --batch >= 2 (BatchNorm's variance) and --steps >= 0")
    return ninja_command(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"counts": cmd_counts, "ninja": cmd_ninja}
