"""The training run's parts in-process: the EMA's warm-up, the trainer's own step, per-checkpoint time, the
unseen test split, the busy-machine warning and the diagnostics panels of a deeper GPT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from tests.support.training_cli import DATA_DIR  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import Vocab, load_corpus  # noqa: E402
from training.diagnostics import activation_taps  # noqa: E402
from training.nets import build  # noqa: E402
from training.trainer import Run  # noqa: E402

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "names.txt").is_file(), reason=f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR"
)


def test_ema_warms_up_its_decay() -> None:
    """decay_t = min(decay, (1 + t) / (10 + t)): the first updates follow the weights closely, so a short
    run's EMA is not still mostly its initialisation."""
    from training.step import ema_decay_at, weight_average

    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 80) == pytest.approx(81 / 90)
    assert ema_decay_at(0.999, 100_000) == 0.999
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = weight_average(model, 0.999)
    expected = model.weight.detach().clone()
    for t in range(6):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        d = 0.0 if t == 0 else ema_decay_at(0.999, t)  # the first update copies the weights
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert float((model.weight - ema.module.weight).detach().abs().max()) < 3  # plain 0.999 would lag by ~6


@needs_data
def test_train_step_is_the_trainers_step(tmp_path: Path) -> None:
    """train() for 6 steps and a hand loop of train_step (what lr-find and the benchmark run) end with
    bit-identical weights."""
    from safetensors.torch import load_file

    from training.step import lr_at, make_optimizer, train_step
    from training.trainer import train

    settings = "model.n_hidden=16 max_iters=6 eval_interval=6 eval_iters=1 samples=0 threads=1 tensorboard=false"
    cfg = load_config("names_mlp", settings.split())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARLM_DATA_DIR", str(DATA_DIR))
        train(cfg, tmp_path / "run", log=lambda *_: None)
        torch.manual_seed(cfg.seed)
        run = Run(cfg, tmp_path / "hand")
    model, optimizer = run.model, make_optimizer(run.model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(6):
        train_step(model, optimizer, run.task.batch("train", cfg.batch_size, gen), lr_at(step, cfg), cfg.grad_clip)
    saved = load_file(tmp_path / "run" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_checkpoint_time_is_per_checkpoint() -> None:
    import time

    from training.checkpoint import CheckpointMeta, SplitInfo

    def meta() -> CheckpointMeta:
        data = SplitInfo(name="x", sha256="0", split_seed=1, split_fractions=(0.8, 0.1, 0.1))
        return CheckpointMeta(arch="bigram", model={}, vocab=["."], format="lines", boundary_token=0, data=data,
                              train_config={})  # fmt: skip

    first = meta().created_at
    time.sleep(0.01)
    assert meta().created_at > first


def test_unseen_test_samples_exclude_train_duplicates() -> None:
    import numpy as np

    from training.data import Splits
    from training.tasks import Task, unseen_samples

    a, b, c = (np.array(x, dtype=np.int64) for x in ([1, 2], [3, 4, 5], [2, 1]))
    splits = Splits(train=[a, b], val=[c], test=[a.copy(), c.copy(), c.copy()], seed=0, fractions=(0.8, 0.1, 0.1))
    assert [s.tolist() for s in unseen_samples(splits)] == [[2, 1], [2, 1]]
    task = Task("gpt", splits, 4, 0)
    assert task.has("test_unseen") and len(task.eval_set("test_unseen")[0]) == 2


@needs_data
def test_unseen_share_of_names() -> None:
    """names.txt: 11.8% of the course split's test names also occur in its train split."""
    from training.data import split_corpus
    from training.tasks import unseen_samples

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARLM_DATA_DIR", str(DATA_DIR))
        corpus = load_corpus("names", None, None)
    splits = split_corpus(corpus, Vocab.build(corpus.text, corpus.format))
    seen = 1 - len(unseen_samples(splits)) / len(splits.test)
    assert seen == pytest.approx(0.118, abs=0.002)


def test_busy_machine_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning compares the 1-minute load with the cores left free (the OS figures are pinned here)."""
    from training.run import set_threads

    cfg = load_config("names_bigram", ["threads=2"])
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    threads, note = set_threads(cfg)
    assert threads == 2 and note is not None and "load 3.5 on 4 cores" in note
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 1.0, 1.0))
    assert set_threads(cfg) == (2, None)
    assert set_threads(load_config("names_bigram"))[0] == 1  # the default
    torch.set_num_threads(1)


def test_diagnostics_panels_for_a_six_layer_gpt(tmp_path: Path) -> None:
    """One panel per layer type, at most one line per layer in it."""
    from training.plots import _panels, layer_type

    model = build("gpt", {"vocab_size": 27, "block_size": 16, "n_layer": 6, "n_head": 2, "n_embd": 16})
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    panels = _panels(names)
    assert layer_type("blocks.3.mlp.c_fc.weight") == ("blocks.mlp.c_fc.weight", "layer 3")
    assert all(len(members) <= 6 for members in panels.values())
    assert panels["blocks.mlp.c_fc.weight"] == [f"blocks.{i}.mlp.c_fc.weight" for i in range(6)]
    gelu = _panels([label for label, *_ in activation_taps(model)])
    assert list(gelu) == ["blocks.mlp.gelu"] and len(gelu["blocks.mlp.gelu"]) == 6
