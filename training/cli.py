"""`python -m training ...`: train, sample, eval, lr-find, export. Errors are one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config")
    t.add_argument("--config", required=True, help="training/configs/<name>.toml (or just <name>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--data", help="a text file instead of the config's dataset")
    t.add_argument("--format", choices=["lines", "stream"], help="how to read --data")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--diagnostics",
        action="store_true",
        default=None,
        help="record activation/gradient/update statistics and plot them in <out>/plots (diagnostics = true)",
    )

    s = sub.add_parser("sample", help="print samples from a checkpoint")
    s.add_argument("ckpt")
    s.add_argument("-n", type=int, default=10)
    s.add_argument("--prompt", default="")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int)
    s.add_argument("--max-new-tokens", type=int)

    e = sub.add_parser("eval", help="mean NLL (nats/char) of a checkpoint on a split")
    e.add_argument("ckpt")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--data", help="the data file, when the checkpoint was trained on one")

    lr = sub.add_parser("lr-find", help="sweep the learning rate and suggest one")
    lr.add_argument("--config", required=True)
    lr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    lr.add_argument("--data")
    lr.add_argument("--format", choices=["lines", "stream"])
    lr.add_argument("--out", help="folder for the plot (default runs/<config name>-lr-find)")
    lr.add_argument("--steps", type=int, default=300)
    lr.add_argument("--min-lr", type=float, default=1e-3)
    lr.add_argument("--max-lr", type=float, default=1.0)

    sub.add_parser("export", help="export a checkpoint to models/<name> (python -m training export -h)")
    sub.add_parser("verify", help="re-measure shipped models' test loss with ONNX Runtime alone")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.trainer import train

    cfg = load_config(
        args.config, args.set, data=args.data, format=args.format, device=args.device, diagnostics=args.diagnostics
    )
    out = Path(args.out or f"runs/{cfg.name}")
    if not args.resume and (out / "checkpoint.json").exists():
        raise CLIError(f"{out} already holds a checkpoint: pass --resume to continue or choose another --out")
    try:
        train(cfg, out, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.sample import sample_texts

    if args.n < 1:
        raise CLIError("-n must be >= 1")
    model, meta = load_checkpoint(Path(args.ckpt))
    for text in sample_texts(model, meta, args.n, args.prompt, args.temperature, args.seed, args.max_new_tokens):
        print(text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.data import Vocab, load_corpus, split_corpus
    from training.tasks import Task

    model, meta = load_checkpoint(Path(args.ckpt))
    dataset = meta.data.name if not args.data else None
    corpus = load_corpus(dataset, args.data, meta.format)
    if corpus.sha256 != meta.data.sha256:
        raise CLIError(f"the data ({corpus.name}) is not the file this checkpoint was trained on (sha256 differs)")
    vocab = Vocab.build(corpus.text, corpus.format)
    splits = split_corpus(corpus, vocab, meta.data.split_seed)
    task = Task(meta.arch, splits, model.cfg.block_size, vocab.boundary)
    print(f"{task.exact_loss(model, args.split):.4f}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from training.lr_find import lr_find_command

    return lr_find_command(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from training.export.cli import main_export

        return main_export(argv[1:])
    if argv and argv[0] == "verify":
        from training.verify import main as verify_main

        return verify_main(argv[1:])
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "lr-find": cmd_lr_find,
    }
    try:
        return commands[args.command](args)
    except (CLIError, ValueError, FileNotFoundError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
