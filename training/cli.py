"""`python -m training ...`: train, sample, eval, lr-find, export. Errors are one line and exit 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from training.course.cli import COMMANDS as COURSE_COMMANDS
from training.course.cli import add_parsers as add_course_parsers
from training.errors import CLIError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl+C


def _parser() -> argparse.ArgumentParser:
    """Every subcommand's options, declared in one place so `--help` and the code read alike (a flat list of
    add_argument calls, hence its length)."""
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config (or fine-tune one: --init-from)")
    t.add_argument(
        "--config", help="training/configs/<name>.toml (or just <name>); optional with --init-from or --resume"
    )
    t.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        help="fine-tune this model folder (models/NAME) or checkpoint: its net, vocabulary and recorded recipe",
    )
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--data", help="a text file instead of the config's dataset")
    t.add_argument("--format", choices=["lines", "stream"], help="how to read --data")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda when available, else cpu")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--diagnostics",
        action="store_true",
        default=None,
        help="record activation/gradient/update statistics and plot them in <out>/plots (diagnostics = true)",
    )

    s = sub.add_parser("sample", help="print samples from a checkpoint or model folder (the server's decoder)")
    s.add_argument("ckpt", help="a run folder (runs/NAME) or a model folder (models/NAME)")
    s.add_argument("-n", type=int, default=10)
    s.add_argument("--prompt", default="")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--stop", action="append", default=[], help="end a sample at this string (repeatable)")
    s.add_argument("--seed", type=int, help="sample i uses the server's derive_seed(seed, i)")
    s.add_argument("--max-new-tokens", type=int, help="default: the server's (lines 64, stream 256)")

    e = sub.add_parser("eval", help="mean NLL (nats/char) of a checkpoint or model folder on a split")
    e.add_argument("ckpt", help="a run folder (runs/NAME) or a model folder (models/NAME)")
    e.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "test_unseen"],
        help="test_unseen: test samples that do not occur in the train split (lines data)",
    )
    e.add_argument("--data", help="the data file, when the checkpoint was trained on one")

    lr = sub.add_parser("lr-find", help="sweep the learning rate and suggest one")
    lr.add_argument("--config", required=True)
    lr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    lr.add_argument("--data")
    lr.add_argument("--format", choices=["lines", "stream"])
    lr.add_argument("--out", help="folder for the plot (default runs/<config name>-lr-find)")
    lr.add_argument("--steps", type=int, default=300)
    # 1e-7: below where any shipped net's loss moves in a 300-step sweep (names_gpt's still falls at 1e-5)
    lr.add_argument("--min-lr", type=float, default=1e-7)
    lr.add_argument("--max-lr", type=float, default=1.0)

    m = sub.add_parser("micrograd", help="train a tiny MLP on scalar autograd (micrograd) and plot its boundary")
    m.add_argument("--out", default="runs/micrograd", help="folder for boundary.png")
    m.add_argument("--steps", type=int, default=100, help="the lecture's 100")
    m.add_argument("--samples", type=int, default=100, help="points of the two-moons dataset (the lecture's 100)")
    m.add_argument("--seed", type=int, default=1337)

    add_course_parsers(sub)
    sub.add_parser("export", help="export a checkpoint to models/<name> (python -m training export -h)")
    sub.add_parser("launch", help="train on N processes (torchrun); Ctrl+C exits 130 (python -m training launch -h)")
    sub.add_parser("verify", help="re-measure shipped models' test loss with ONNX Runtime alone")
    sub.add_parser(
        "upgrade",
        help="upgrade v1 model folders to graph contract v2, a GPT's old decode graph to the current one (-h)",
    )
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.trainer import train

    options = {"data": args.data, "format": args.format, "device": args.device, "diagnostics": args.diagnostics}
    if args.init_from:
        from training.finetune import init_config

        options["fmt"] = options.pop("format")
        cfg = init_config(args.init_from, args.config, args.set, **options)
    elif args.config:
        cfg = load_config(args.config, args.set, **options)
    elif args.resume and args.out:
        cfg = recorded_config(Path(args.out), args.set, options)
    else:
        raise CLIError("give --config (or --init-from MODEL_DIR to fine-tune a model, or --resume --out RUN_DIR)")
    out = Path(args.out or f"runs/{cfg.name}")
    check_out_dir(out)
    if not args.resume and (out / "checkpoint.json").exists():
        raise CLIError(f"{out} already holds a checkpoint: pass --resume to continue or choose another --out")
    # SIGTERM too: when one torchrun rank stops at Ctrl+C first, the launcher SIGTERMs the others while
    # they wait in a collective; they must still end as interrupted (exit 130, state kept), not die.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt_once)
    try:
        train(cfg, out, resume=args.resume)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        if _interrupted:  # under torchrun a peer that stopped first breaks this rank's collective: still Ctrl+C
            return EXIT_INTERRUPTED
        raise
    return 0


def recorded_config(out: Path, overrides: list[str], options: dict):
    """`train --resume --out RUN_DIR` alone: the config the run recorded in RUN_DIR/config.json."""
    import json

    from training.config import config_from
    from training.state import CONFIG_FILE

    path = out / CONFIG_FILE
    if not path.is_file():
        raise CLIError(f"{out}: no {CONFIG_FILE} to resume from; give the run's --config")
    return config_from(json.loads(path.read_text()), str(path), overrides, **options)


_interrupted = False


def _interrupt_once(signum, frame) -> None:
    """Ctrl+C (or SIGTERM): raise KeyboardInterrupt once, then ignore both, so that the signals torchrun
    forwards to its workers (on top of the terminal's) cannot interrupt the state being saved into a
    traceback."""
    global _interrupted
    _interrupted = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder; choose a folder for the run")


def cmd_sample(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.sample import sample_texts

    if args.n < 1:
        raise CLIError("-n must be >= 1")
    model, meta = load_checkpoint(Path(args.ckpt))
    texts = sample_texts(
        model, meta, args.n, args.prompt, args.temperature, args.seed, args.max_new_tokens,
        top_k=args.top_k, top_p=args.top_p, stop=args.stop,
    )  # fmt: skip
    for text in texts:
        print(text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.data import Vocab, load_corpus, split_corpus
    from training.tasks import Task

    model, meta = load_checkpoint(Path(args.ckpt))
    recorded = meta.train_config.get("data")  # a user's file: where it was at training time
    data = args.data or (recorded if recorded and Path(recorded).is_file() else None)
    dataset = meta.data.name if not data else None
    corpus = load_corpus(dataset, data, meta.format)
    if corpus.sha256 != meta.data.sha256:
        raise CLIError(f"the data ({corpus.name}) is not the file this checkpoint was trained on (sha256 differs)")
    vocab = Vocab(chars=tuple(meta.vocab), boundary=meta.boundary_token)  # a fine-tuned model's too
    splits = split_corpus(corpus, vocab, meta.data.split_seed)
    task = Task(meta.arch, splits, model.cfg.block_size, vocab.boundary)
    if not task.has(args.split):
        raise CLIError(f"--split {args.split}: only lines data has unseen test samples (or none are unseen)")
    print(f"{task.exact_loss(model, args.split):.4f}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from training.lr_find import lr_find_command

    if args.out:
        check_out_dir(Path(args.out))
    return lr_find_command(args)


def cmd_micrograd(args: argparse.Namespace) -> int:
    from training.micrograd.demo import micrograd_command

    if args.steps < 1 or args.samples < 4:
        raise CLIError("need --steps >= 1 and --samples >= 4")
    check_out_dir(Path(args.out))
    return micrograd_command(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from training.export.cli import main_export

        return main_export(argv[1:])
    if argv and argv[0] == "upgrade":
        from training.export.cli import main_upgrade

        return main_upgrade(argv[1:])
    if argv and argv[0] == "launch":
        from training.launch import main_launch

        return main_launch(argv[1:])
    if argv and argv[0] == "verify":
        from training.verify import main as verify_main

        return verify_main(argv[1:])
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "lr-find": cmd_lr_find,
        "micrograd": cmd_micrograd,
        **COURSE_COMMANDS,
    }
    try:
        return commands[args.command](args)
    except (CLIError, ValueError, FileNotFoundError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line from rank 0, not one per rank
            print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
