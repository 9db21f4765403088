"""Setting a run up: the device, the CPU threads, the data, the vocabulary, the block size and the net."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from contract import family
from training.checkpoint import CheckpointMeta, LinesInfo, SplitInfo, load_checkpoint, load_meta
from training.config import TrainConfig
from training.data import DataError, Splits, Vocab, check_stream_length, line_lengths, load_corpus, split_corpus
from training.finetune import start_vocab
from training.nets import build
from training.tasks import Task

# Thread default. `python -m benchmarks.training_threads` (alternating ~2 s rounds of train_step, median
# tokens/s, 1 -> 2 threads) on the 2-core development machine, quiet: names_bigram 725,756 -> 714,678
# (0.98x); names_mlp 44,174 -> 45,152 (1.02x); names_wavenet 12,572 -> 11,648 (0.93x); names_gpt 6,914 ->
# 9,025 (1.31x); shakespeare_gpt 5,903 -> 8,083 (1.37x). Beside one busy process (a shell loop on one
# core): 0.20x, 0.12x, 0.21x, 0.34x, 0.56x (earlier, under load 5-8 from other jobs: 0.04-0.19x). A
# second thread that has to wait for a busy core stalls every op of these small nets, so one thread is
# the default: it loses at most 27% on a quiet machine and never stalls; `--set threads=2` on a quiet
# machine speeds the GPTs up by about a third (the start-up warning says when the machine is busy).
DEFAULT_THREADS = 1


def pick_device(choice: str) -> str:
    """The torch device for a config's `device`. "auto" picks CUDA or the CPU, never MPS: Apple's backend
    still lacks kernels some nets use, so it is taken only when asked for by name."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps: no MPS device is available (Apple silicon with an MPS build of torch)")
    return choice


def set_threads(cfg: TrainConfig, processes: int = 1) -> tuple[int, str | None]:
    """Apply cfg.threads (default 1) and return it with a warning when the machine is already busy."""
    threads = cfg.threads or DEFAULT_THREADS
    torch.set_num_threads(threads)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return threads, None
    return threads, busy_warning(threads * processes, os.cpu_count() or 1, load)


def busy_warning(wanted: int, cores: int, load: float) -> str | None:
    """A warning when more processes are runnable (1-minute load average) than the cores this run leaves
    free; it names the free cores only when there is at least one ("about 0.0 free cores" read as a bug)."""
    free = cores - load
    if wanted <= free:
        return None
    room = f"about {free:.1f} free cores" if free >= 1 else f"no free core (the load fills all {cores})"
    return (
        f"WARNING: the machine is busy (load {load:.1f} on {cores} cores): {wanted} training thread(s) will "
        f"contend for {room}; expect it slower than on a quiet machine"
    )


def resolve_block_size(cfg: TrainConfig, corpus_lines, fmt: str) -> tuple[int | None, LinesInfo | None]:
    """A GPT on `lines` data sees one sample per row, so block_size must fit the longest sample plus the
    boundary token. Unset or "auto": derived from the data. Too small: an error naming the longest line
    (before, such lines were cut silently: 197 of 200 samples of a 30-60 character file came out 15 long)."""
    set_to = cfg.model.get("block_size", "auto" if family(cfg.arch).kv_cache else None)
    if fmt != "lines" or not family(cfg.arch).kv_cache:
        if set_to == "auto":
            raise DataError(f'model.block_size = "auto" needs a gpt on lines data (this is {cfg.arch} on {fmt})')
        return set_to, None
    lengths = corpus_lines
    need = lengths.longest + 1
    if set_to == "auto":
        return need, LinesInfo(longest=lengths.longest, block_size=need, block_size_from="auto", over_block=0)
    if not isinstance(set_to, int) or isinstance(set_to, bool):
        raise DataError(f'model.block_size must be an integer or "auto", not {set_to!r}')
    over = lengths.over(set_to - 1)
    if over:
        preview = lengths.text if len(lengths.text) <= 40 else lengths.text[:37] + "..."
        fix = (
            f"the net of --init-from {cfg.init_from} fixes block_size: shorten those lines or train a new model"
            if cfg.init_from
            else f'--set model.block_size={need} (or "auto")'
        )
        raise DataError(
            f"{over} of {len(lengths.lengths)} lines are longer than block_size - 1 = {set_to - 1} characters and "
            f"would be cut; the longest (line {lengths.line_no}, {lengths.longest} characters: {preview!r}) needs "
            f"block_size >= {need}: {fix}"
        )
    return set_to, LinesInfo(longest=lengths.longest, block_size=set_to, block_size_from="config", over_block=0)


class Run:
    """Everything a training run needs, set up once: data, vocab, task, model, output folder."""

    def __init__(self, cfg: TrainConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        corpus = load_corpus(cfg.dataset, cfg.data, cfg.format)
        start = load_meta(Path(cfg.init_from)) if cfg.init_from else None
        self.vocab = start_vocab(start, corpus) if start else Vocab.build(corpus.text, corpus.format)
        self.splits: Splits = split_corpus(corpus, self.vocab, cfg.split_seed)
        self.corpus = corpus
        lengths = line_lengths(corpus) if corpus.format == "lines" else None
        block, self.lines = resolve_block_size(cfg, lengths, corpus.format)
        self.model_config: dict[str, Any] = {**cfg.model, "vocab_size": self.vocab.size}
        if block is not None:
            self.model_config["block_size"] = block
        self.model = build(cfg.arch, self.model_config)
        if start is not None:  # fine-tuning: the start's weights (a --resume then replaces them)
            self.model.load_state_dict(load_checkpoint(Path(cfg.init_from))[0].state_dict())
        self.block_size = self.model.cfg.block_size
        if corpus.format == "stream":
            check_stream_length(self.splits, self.block_size, corpus.name)
        self.task = Task(cfg.arch, self.splits, self.block_size, self.vocab.boundary)

    def describe_block(self) -> str:
        """The block size and, for a GPT on lines, why it is what it is."""
        if self.lines is None:
            return f"block {self.block_size}"
        how = "derived from the data" if self.lines.block_size_from == "auto" else "from the config"
        return f"block {self.block_size} ({how}; longest line {self.lines.longest}, 0 lines cut)"

    def meta(self, **fields) -> CheckpointMeta:
        return CheckpointMeta(
            arch=self.cfg.arch,
            model=self.model.cfg.model_dump(),
            vocab=list(self.vocab.chars),
            format=self.corpus.format,
            boundary_token=self.vocab.boundary,
            data=SplitInfo(
                name=self.corpus.name,
                sha256=self.corpus.sha256,
                split_seed=self.splits.seed,
                split_fractions=self.splits.fractions,
            ),
            train_config=self.cfg.model_dump(),
            lines=self.lines,
            **fields,
        )
