"""`python -m training launch --nproc N train ...`: torchrun on one machine, answering the user's shell
as a single process would.

`torchrun` (torch.distributed.run) reports any failed worker as a failure of its own: Ctrl+C or a
SIGTERM gave the shell exit 1 and the launcher's traceback, though every rank had saved its state and
exited 130. This runs the same elastic launch through torch.distributed.run's API and turns its outcome
into one exit code: 130 when the run was interrupted (a signal to the launcher, or every rank ending
as interrupted), the ranks' own code when they agree (2: a mistake rank 0 has already reported in one
line), else 1 with one line naming the first failed rank. Workers print their own messages.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
INTERRUPTED_CODES = {EXIT_INTERRUPTED, -2, -15}  # a rank that exited 130, or died of SIGINT / SIGTERM


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training launch",
        description="Run `python -m training ARGS...` as N data-parallel processes on this machine (torchrun "
        "--standalone --nproc-per-node N); Ctrl+C or SIGTERM ends it with exit 130, the state saved.",
    )
    p.add_argument("--nproc", type=int, required=True, help="processes (ranks) to start")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the training command, e.g. train --config names_mlp")
    return p


def exit_code(codes: list[int]) -> int:
    """The shell's exit code for the ranks' exit codes (negative: killed by that signal)."""
    if codes and all(c in INTERRUPTED_CODES for c in codes):
        return EXIT_INTERRUPTED
    if codes and len(set(codes)) == 1 and codes[0] > 0:
        return codes[0]
    # a mistake every rank meets (exit 2, reported by rank 0): the launcher stops the slower ranks with
    # SIGTERM (-15), or they end as interrupted (130) if their handler is in place by then
    if EXIT_USAGE in codes and set(codes) <= {EXIT_USAGE, *INTERRUPTED_CODES}:
        return EXIT_USAGE
    return 1


def _quiet_torchrun() -> None:
    """Silence torchrun's own logging ("Received 2 death signal", the failure table): the ranks' lines and
    ours are the report. Its loggers set their own levels, so each is set after the modules load."""
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (creates the agent's logger)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main_launch(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.nproc < 1 or not args.args:
        print("error: need --nproc >= 1 and a command (e.g. train --config names_mlp)", file=sys.stderr)
        return 2
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    _quiet_torchrun()
    torchrun = parse_args(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "training", *args.args])
    try:
        run(torchrun)
    except SignalException:  # Ctrl+C / SIGTERM to the launcher: it has stopped the ranks (they save, exit 130)
        return EXIT_INTERRUPTED
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        code = exit_code([f.exitcode for _, f in failures])
        if code == 1:
            rank, first = failures[0]
            print(f"error: rank {rank} exited with code {first.exitcode}", file=sys.stderr)
        return code
    return 0
