"""`python -m service serve|generate`: run the HTTP server, or sample from a model without HTTP.

Bad options are one line on stderr and exit code 2, never a traceback; heavy imports (litserve,
onnxruntime, prometheus_client) happen only once the options are known to be good. With `--log-format json`
(or CHARLM_LOG_FORMAT=json) that line is one JSON object like every other log line, even when the options
that asked for it are the ones at fault: the format is read from the raw arguments first. An exception
nothing expected (a bug, or the environment: too few file descriptors, ...) is one JSON record as well,
with its type and traceback as fields, and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import traceback
from typing import NoReturn

from pydantic import ValidationError

from service.settings import Settings, describe_error, env_name, flag_name, load_settings

PROG = "python -m service"
USAGE_ERROR = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
# Sampling fields the offline CLI has no use for: token ids of a vocabulary one cannot see from a shell.
CLI_SKIPS = frozenset({"logit_bias"})


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump, JSON when asked) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, _fatal_line(f"{self.prog}: error: {message}", USAGE_ERROR) + "\n")


_fatal_format = "text"  # set by main() from the raw arguments, before anything can fail


def requested_log_format(argv: list[str]) -> str:
    """json when the last --log-format of `argv`, else CHARLM_LOG_FORMAT, says so; text otherwise."""
    fmt = os.environ.get(env_name("log_format"), "")
    for i, arg in enumerate(argv):
        if arg == flag_name("log_format") and i + 1 < len(argv):
            fmt = argv[i + 1]
        elif arg.startswith(flag_name("log_format") + "="):
            fmt = arg.partition("=")[2]
    return "json" if fmt.strip().lower() == "json" else "text"


def _fatal_line(text: str, code: int) -> str:
    """`text` as the one line it is, or as one JSON log record (the JsonFormatter's fields) in json mode."""
    if _fatal_format != "json":
        return text
    from service.logs import JsonFormatter

    record = logging.LogRecord("charlm.cli", logging.CRITICAL, __file__, 0, text, None, None)
    record.exit_code = code
    return JsonFormatter().format(record)


def _fail(message: str, code: int = USAGE_ERROR) -> int:
    print(_fatal_line(f"{PROG}: error: {message}", code), file=sys.stderr)
    return code


def _add_settings_options(parser: argparse.ArgumentParser, fields: list[str]) -> None:
    for name in fields:
        info = Settings.model_fields[name]
        default = info.default
        shown = "repo's models/" if name == "models" else ("auto" if default is None else default)
        help_text = f"{info.description} (env {env_name(name)}; default {shown})"
        if info.annotation is bool:  # a switch: --allow-empty, no value
            parser.add_argument(flag_name(name), dest=name, action="store_const", const=True, help=help_text)
            continue
        parser.add_argument(flag_name(name), dest=name, default=None, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="charlm: serve small character-level language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,generate}")
    serve = sub.add_parser("serve", help="run the HTTP server", description="Run the HTTP server.")
    _add_settings_options(serve, list(Settings.model_fields))
    gen = sub.add_parser(
        "generate", help="print samples from a model (no HTTP)", description="Print samples, one per line."
    )
    gen.add_argument("--model", required=True, help="model name (a folder's manifest name)")
    gen.add_argument("-n", dest="n", default="1", help="number of samples (1-64; default 1)")
    gen.add_argument("--prompt", default="", help="text every sample starts with")
    gen.add_argument("--max-new-tokens", dest="max_new_tokens", default=None, help="cap on new characters")
    _add_sampling_options(gen)
    _add_settings_options(gen, ["models", "backend", "device", "precision", "threads"])
    return parser


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """One flag per sampling field of the HTTP API (service.http.sampling.Sampling), so both stay the same set."""
    from service.http.sampling import Sampling

    for name, info in Sampling.model_fields.items():
        if name in CLI_SKIPS:
            continue
        flag, text = "--" + name.replace("_", "-"), info.description or name.replace("_", " ")
        if info.annotation in (bool, bool | None):
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=text)
        elif name == "stop":
            parser.add_argument(flag, dest=name, action="append", default=None, help=text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"{text} (default {info.default})")


def main(argv: list[str] | None = None) -> int:
    global _fatal_format
    _fatal_format = requested_log_format(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _serve(args) if args.command == "serve" else _generate(args)
    except Exception as exc:  # a bug or the environment (e.g. too few file descriptors): still one record
        return _crash(exc)


def _crash(exc: Exception) -> int:
    """An uncaught exception: in json mode one JSON record (message, `exc_type`, the traceback in `exc`,
    `exit_code`); in text mode the message on one line, then the traceback. Exit code 1."""
    message = f"{PROG}: error: unexpected {type(exc).__name__}: {exc}"
    if _fatal_format != "json":
        trace = "".join(traceback.format_exception(exc)).rstrip()
        print(f"{message}\n{trace}", file=sys.stderr)
        return 1
    from service.logs import JsonFormatter  # imported already by then (logging is configured first)

    record = logging.LogRecord("charlm.cli", logging.CRITICAL, __file__, 0, message, None, sys.exc_info())
    record.exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    record.exit_code = 1
    print(JsonFormatter().format(record), file=sys.stderr)
    return 1


def _settings(args: argparse.Namespace, fields: list[str]) -> Settings | str:
    try:
        settings = load_settings(**{name: getattr(args, name) for name in fields})
    except ValidationError as exc:
        return describe_error(exc)
    if not settings.models.is_dir():
        return f"models directory {settings.models} does not exist (--models / {env_name('models')})"
    if settings.backend == "torchscript" and importlib.util.find_spec("torch") is None:
        return "--backend torchscript needs torch, which is not installed (pip install charlm[torch])"
    return settings


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args, list(Settings.model_fields))
    if isinstance(settings, str):
        return _fail(settings)
    problem = _configure_logging(settings)
    if problem:
        return _fail(problem)
    from service.lifecycle import TempDirError, check_temp_dir, prepare_multiproc_dir, remove_multiproc_dir

    problem = check_temp_dir()  # multiprocessing needs one too, whatever PROMETHEUS_MULTIPROC_DIR says
    if problem:
        return _fail(problem)
    try:  # before anything imports prometheus_client: it picks multiprocess mode at import time
        metrics_dir, created = prepare_multiproc_dir()
    except TempDirError as exc:
        return _fail(str(exc))
    try:
        from contract.precision import repository_at
        from contract.repository import describe_unservable, log_left_out, scan_repository
        from service.server import StartupError, check_port, serve

        problem = check_port(settings.host, settings.port)
        if problem:
            return _fail(problem, 1)
        repo = _without_backend_files(scan_repository(settings.models, log_failures=False), settings.backend)
        repo = repository_at(repo, settings.precision)
        if not repo.models and not settings.allow_empty:
            return _fail(describe_unservable(settings.models, repo))
        log_left_out(repo)
        try:
            return serve(settings, repo)
        except StartupError as exc:
            return _fail(str(exc), exc.exit_code)
    finally:
        remove_multiproc_dir(metrics_dir, created)


def _configure_logging(settings: Settings) -> str | None:
    """Logging in the chosen format (service.logs, when present); a bad API key option, or None."""
    try:
        from service.auth import load_api_keys
        from service.logs import configure_logging
    except ImportError:
        logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
        return None
    configure_logging(settings.log_level, settings.log_format)
    try:
        load_api_keys(settings.api_key)
    except ValueError as exc:
        return f"invalid {flag_name('api_key')} / {env_name('api_key')}: {exc}"
    return None


def _without_backend_files(repo, backend: str):  # type: ignore[no-untyped-def]
    """Models without a file for the chosen backend are left out like failed folders (logged by the caller)."""
    from contract.repository import Repository

    models, failed = {}, dict(repo.failed)
    for name, entry in repo.models.items():
        if backend in entry.manifest.files:
            models[name] = entry
        else:
            failed[entry.folder.name] = f"no {backend} file in the manifest (has: {', '.join(entry.manifest.files)})"
    return Repository(models=models, failed=failed)


def _generate(args: argparse.Namespace) -> int:
    from service.http.generate import GenerateRequest
    from service.http.sampling import Sampling

    settings = _settings(args, ["models", "backend", "device", "precision", "threads"])
    if isinstance(settings, str):
        return _fail(settings)
    try:
        fields = {name: getattr(args, name) for name in Sampling.model_fields if name not in CLI_SKIPS}
        fields |= {"model": args.model, "prompt": args.prompt, "n": args.n, "max_new_tokens": args.max_new_tokens}
        request = GenerateRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None},
            strict=False,  # values come from the command line as strings
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        flag = "-n" if field == "n" else "--" + field.replace("_", "-")
        return _fail(f"invalid {flag} value {first.get('input')!r}: {first['msg']}")

    from contract.precision import at_precision
    from contract.repository import scan_repository
    from engine import (
        BackendUnavailable,
        EngineError,
        Generator,
        InvalidPrompt,
        derive_seed,
    )

    repo = scan_repository(settings.models)
    entry = repo.models.get(request.model)
    if entry is None:
        why = ""
        for folder, reason in repo.failed.items():
            if folder == request.model:
                why = f" (its folder failed validation: {reason})"
        available = ", ".join(sorted(repo.models)) or "none"
        return _fail(f"model {request.model!r} not found{why}; available models: {available}")
    try:
        entry = at_precision(entry, settings.precision)
        gen = Generator.load(entry, settings.backend, settings.device, settings.threads or 1)
        gen.encode_prompt(request.prompt)
    except (BackendUnavailable, InvalidPrompt) as exc:
        return _fail(exc.message)
    except EngineError as exc:
        return _fail(exc.message, 1)
    params = [
        request.sampling_params(seed=derive_seed(request.seed, i), max_new_tokens=request.max_new_tokens)
        for i in range(request.n)
    ]
    completions = gen.generate([request.prompt] * request.n, params)
    separator = "\n" if gen.manifest.format == "lines" else "\n\n" + "-" * 40 + "\n"
    sys.stdout.write(separator.join(request.prompt + c.text for c in completions) + "\n")
    return 0
