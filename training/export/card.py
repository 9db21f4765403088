"""README.md for an exported model folder: a model card a person reads before using the model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from contract import FileEntry, Manifest, family
from training.export.onnx import OPSET

FORMAT_NOTES = {
    "onnx": f"ONNX (opset {OPSET}, one file), for ONNX Runtime; no torch needed",
    "torchscript": "TorchScript (traced), for `torch.jit.load`",
}


def render_card(
    manifest: Manifest,
    net_config: dict[str, Any],
    samples: list[str],
    export_command: str,
    novelty=None,
    curve: bool = False,
) -> str:
    """The whole README.md: facts from the manifest, plus the net's config, samples, the novelty rate
    (training.export.novelty.Novelty, lines models whose data was at hand) and the command."""
    m = manifest
    sections = [
        _header(m, net_config),
        _data(m),
        _losses(m),
        curve_section(curve),
        _samples(m, samples),
        *([_novelty(m, novelty)] if novelty is not None else []),
        _files(m),
        _reproduce(m, export_command),
        _limitations(m),
    ]
    return "\n\n".join(sections).rstrip() + "\n"


def _header(m: Manifest, net_config: dict[str, Any]) -> str:
    if family(m.arch).kv_cache:
        shape = f"{m.n_layer} layers, {m.n_head} heads of {m.head_dim} dims, context {m.block_size} characters"
    else:
        shape = f"context window of {m.block_size} character{'s' if m.block_size > 1 else ''}"
    return "\n".join(
        [
            f"# {m.name}",
            "",
            f"A character-level **{m.arch}** language model trained on `{m.data.name}`, exported by charlm.",
            "",
            "| | |",
            "|---|---|",
            f"| architecture | {m.arch}: {shape} |",
            f"| net config | {', '.join(f'{k}={v}' for k, v in net_config.items())} |",
            f"| parameters | {m.n_params:,} |",
            f"| vocabulary | {m.vocab_size} characters: {_show_vocab(m.vocab)} |",
            f"| text format | {_format_note(m)} |",
            f"| test loss | {_test_losses(m)} |",
            f"| exported | {m.created_at:%Y-%m-%d %H:%M} UTC |",
        ]
    )


def _data(m: Manifest) -> str:
    a, b, c = m.data.split_fractions
    return "\n".join(
        [
            "## Data",
            "",
            f"- corpus: `{m.data.name}` (sha256 `{m.data.sha256}`)",
            f"- split: train/val/test = {a:g}/{b:g}/{c:g}, split seed {m.data.split_seed}",
        ]
    )


def _losses(m: Manifest) -> str:
    rows = [
        "## Losses",
        "",
        "Mean negative log-likelihood per character on each data split, as evaluated into the checkpoint.",
        "",
        "| split | nats/char | bits/char | perplexity |",
        "|---|---|---|---|",
    ]
    for split in ("train", "val", "test", "test_unseen"):
        loss = getattr(m.metrics, f"{split}_loss" if split != "test_unseen" else "test_loss_unseen")
        if loss is not None:
            shown = "test, not in train" if split == "test_unseen" else split
            rows.append(f"| {shown} | {loss:.4f} | {loss / math.log(2):.4f} | {math.exp(loss):.2f} |")
    if m.metrics.test_loss_unseen is not None:
        rows += [
            "",
            "*test, not in train*: the test samples that do not also occur in the train split (the data "
            "repeats some samples across splits, which flatters the plain test figure).",
        ]
    rows += [
        "",
        f"For reference, a uniform guess over the vocabulary scores ln({m.vocab_size}) = "
        f"{math.log(m.vocab_size):.4f} nats/char.",
    ]
    return "\n".join(rows)


NO_CURVE = (
    "The per-step training curve is not recorded for this model: it was trained before charlm recorded "
    "every step's loss (lossi.csv), or exported without its run folder. Its final figures are the losses above."
)


def curve_section(curve: bool) -> str:
    """The loss curve (curve.png, drawn by the export from the run's lossi.csv and metrics.jsonl), or a plain
    statement that there is none."""
    if not curve:
        return "\n".join(["## Training curve", "", NO_CURVE])
    return "\n".join(
        [
            "## Training curve",
            "",
            "![training loss per step, log10](curve.png)",
            "",
            "log10 of the training loss at every step (light), its running mean, and the train/val evaluations "
            "(markers), as the Zero to Hero lectures plot them; from the run's lossi.csv and metrics.jsonl.",
        ]
    )


def _samples(m: Manifest, samples: list[str]) -> str:
    intro = (
        f"{len(samples)} samples drawn from the checkpoint's eager PyTorch net through the serving engine's "
        "decoder (the server's rules), temperature 1.0, fixed seed (not cherry-picked)."
    )
    if m.format == "lines":
        boundary = repr(m.vocab[m.boundary_token])
        body = "\n".join(s if s else "(empty)" for s in samples)
        return "\n".join(
            [
                "## Samples",
                "",
                intro + f" Each starts and stops at the boundary token {boundary}.",
                "",
                _fence(body),
            ]
        )
    parts = ["## Samples", "", intro + " Each is about 200 characters, continuing from a newline.", ""]
    for i, s in enumerate(samples, 1):
        parts += [f"Sample {i}:", "", _fence(s), ""]
    return "\n".join(parts)


def _test_losses(m: Manifest) -> str:
    unseen = m.metrics.test_loss_unseen
    return f"{m.metrics.test_loss:.4f} nats/char" + (f" ({unseen:.4f} on test samples not in train)" if unseen else "")


def _novelty(m: Manifest, novelty) -> str:
    entry = m.data_hashes
    where = f" (`{entry.path}`, {novelty.bytes:,} bytes)" if entry is not None else ""
    return "\n".join(
        [
            "## Novelty",
            "",
            f"**{novelty.rate:.1%}** of {novelty.samples:,} samples drawn at temperature 1.0 (fixed seed) are not in "
            f"the training data file (any split); the rest are exact copies of one of its samples. The folder "
            f"holds an 8-byte hash of each of its {novelty.distinct:,} distinct samples{where}, so a sample's "
            "novelty can be checked without the data (`engine.novelty`).",
        ]
    )


def decode_line(d: FileEntry) -> str:
    """The files list's line for a GPT's decode graph (also rewritten alone by `training upgrade`)."""
    return (
        f"- `{d.path}`: the ONNX graph for decode steps (one new token per row), which writes each row's new "
        "key and value into the caller's KV cache in place (its weights are read from model.onnx); "
        f"{d.bytes:,} bytes, sha256 `{d.sha256}`"
    )


def _files(m: Manifest) -> str:
    rows = ["## Files", ""]
    for fmt, entry in m.files.items():
        rows.append(f"- `{entry.path}`: {FORMAT_NOTES[fmt]}; {entry.bytes:,} bytes, sha256 `{entry.sha256}`")
    if m.onnx_decode is not None:
        rows.append(decode_line(m.onnx_decode))
    w = m.weights
    rows.append(
        f"- `{w.path}`: the trained weights (safetensors), rebuilt with the manifest's `net_config` to "
        f"re-export (`python -m training export --from-model`) or fine-tune; {w.bytes:,} bytes, sha256 `{w.sha256}`"
    )
    if m.data_hashes is not None:
        h = m.data_hashes
        rows.append(
            f"- `{h.path}`: sorted 8-byte blake2b hashes of every distinct training-data sample (normalised), "
            f"for novelty checks; {h.bytes:,} bytes, sha256 `{h.sha256}`"
        )
    rows.append("- `manifest.json`: everything above, machine-readable (schema in `contract/manifest.py`)")
    rows.append("")
    if family(m.arch).kv_cache:
        rows.append(
            "Graph I/O (contract v2, one step graph for prefill and decode over a KV cache the caller owns): "
            "`idx` int64 [batch, new], `pos` int64 [batch] (each row's cached length), `past_key_i` float32 "
            "[batch, n_head, head_dim, past] (keys transposed), `past_value_i` float32 [batch, n_head, past, "
            "head_dim] -> `logits` float32 [batch, new, vocab] (every new position), `new_key_i` / `new_value_i` "
            "(this step's entries, same layouts with `new` for `past`, for the caller to write at column pos + i). "
            "Cache columns at or past a row's `pos` are masked. The TorchScript file takes the same inputs "
            "positionally and returns the outputs as one flat tuple. See docs/model-repository.md."
        )
    else:
        rows.append(
            f"Graph I/O: `idx` int64 [batch, {m.block_size}] (the last {m.block_size} characters) -> "
            "`logits` float32 [batch, vocab] for the next one. The TorchScript file returns `(logits,)`."
        )
    return "\n".join(rows)


def _reproduce(m: Manifest, export_command: str) -> str:
    from training.export.reproduce import SAVED_AS, train_command

    train, toml = train_command(m.training.config)
    t = m.training
    parts = ["## Reproduce", "", _fence(f"{train}\n{export_command}", "sh"), ""]
    if toml is not None:
        parts += [f"`{SAVED_AS}`: the run's config as recorded (every `--set` applied):", "", _fence(toml, "toml"), ""]
    if t.config.get("data"):
        shown = Path(str(t.config["data"])).name
        parts += [f"`--data {shown}`: the data file (sha256 above), wherever it is on your machine.", ""]
    return "\n".join(
        [
            *parts,
            f"Training: {t.steps:,} steps in {_duration(t.wall_seconds)} on `{t.device}`, torch {t.torch_version}.",
            "",
            "The training config, as resolved at training time:",
            "",
            _fence(json.dumps(t.config, indent=2, sort_keys=True), "json"),
        ]
    )


def _limitations(m: Manifest) -> str:
    return "\n".join(
        [
            "## Limitations",
            "",
            f"- Character-level: it knows only the {m.vocab_size} characters above; any other character "
            "cannot be encoded.",
            f"- Small: {m.n_params:,} parameters and a context of {m.block_size} characters; it imitates "
            "the surface of its training text and has no knowledge, reasoning or memory beyond that window.",
            f"- Trained on one corpus (`{m.data.name}`): it reproduces that corpus's style, gaps and biases, "
            "and may reproduce pieces of it verbatim.",
            "- A teaching-scale model: not evaluated for any use beyond demonstrating character-level "
            "language modelling; its samples can be nonsense.",
        ]
    )


def _format_note(m: Manifest) -> str:
    if m.format == "lines":
        return f"lines: one item per line, boundary token {m.vocab[m.boundary_token]!r} (id {m.boundary_token})"
    return "stream: continuous text, no boundary token"


def _show_vocab(vocab: list[str]) -> str:
    """The vocabulary as a code span in a table cell: escapes visible, pipes escaped for GFM tables."""
    text = "".join(json.dumps(ch)[1:-1] for ch in vocab).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _fence(text: str, lang: str = "text") -> str:
    """A fenced block longer than any backtick run inside `text`, so samples cannot break out of it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _duration(seconds: float) -> str:
    if seconds <= 0:  # checkpoints saved before the end of a run carry no wall time
        return "a wall time that was not recorded"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
