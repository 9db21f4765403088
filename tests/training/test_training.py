"""The training package in-process: model shapes, the first sanity checks of every net (initial loss,
overfitting one batch), the bigram counts baseline, BatchNorm in eval mode, the GPT's KV cache, and
the diagnostics hooks. The run's parts: test_training_run.py; the command line: test_training_cli.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from training.config import load_config  # noqa: E402
from training.data import Vocab, load_corpus  # noqa: E402
from training.diagnostics import Diagnostics, activation_taps, plot_losses  # noqa: E402
from training.nets import build  # noqa: E402
from training.nets.bigram import counts_nll  # noqa: E402
from training.trainer import Run, check_initial_loss  # noqa: E402

DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
ARCHS = ("bigram", "mlp", "wavenet", "gpt")
V = 27
SMALL = {
    "bigram": {"vocab_size": V},
    "mlp": {"vocab_size": V, "block_size": 3, "n_embd": 6, "n_hidden": 32},
    "wavenet": {"vocab_size": V, "block_size": 8, "n_embd": 6, "n_hidden": 16},
    "gpt": {"vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16},
}

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "names.txt").is_file(), reason=f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR"
)


@pytest.fixture(scope="module")
def names_runs(tmp_path_factory) -> dict[str, Run]:
    """A Run (real names data, the shipped config, dropout off) per family, built once."""
    if not (DATA_DIR / "names.txt").is_file():
        pytest.skip(f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARLM_DATA_DIR", str(DATA_DIR))
        runs = {}
        for arch in ARCHS:
            overrides = ["model.dropout=0.0"] if arch == "gpt" else []
            torch.manual_seed(1337)
            runs[arch] = Run(load_config(f"names_{arch}", overrides), tmp_path_factory.mktemp(arch))
    return runs


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes(arch: str) -> None:
    model = build(arch, SMALL[arch])
    block = model.cfg.block_size
    idx = torch.randint(V, (4, block))
    if arch == "gpt":
        logits, loss = model(idx, idx)
        assert logits.shape == (4, block, V)
        c = model.cfg
        step_logits, new_kv = model.step(idx[:, :3], torch.zeros(4, dtype=torch.long), model.empty_cache(4))
        assert step_logits.shape == (4, 3, V)  # graph contract v2: logits for every new position
        assert len(new_kv) == 2 * c.n_layer
        assert all(k.shape == (4, c.n_head, c.head_dim, 3) for k in new_kv[0::2])  # keys transposed
        assert all(v.shape == (4, c.n_head, 3, c.head_dim) for v in new_kv[1::2])
    else:
        logits, loss = model(idx, idx[:, 0])
        assert logits.shape == (4, V)
    assert loss.shape == () and torch.isfinite(loss)
    assert model(idx)[1] is None


@pytest.mark.parametrize("arch", ARCHS)
def test_initial_loss_is_ln_vocab(arch: str, names_runs: dict[str, Run]) -> None:
    """A fresh net predicts about uniformly: loss within 10% of ln(27) on real names data."""
    run = names_runs[arch]
    lines: list[str] = []
    loss = check_initial_loss(run, build(run.cfg.arch, run.model_config), "cpu", lines.append)
    assert abs(loss - math.log(run.vocab.size)) < 0.1 * math.log(run.vocab.size), lines


def consistent_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a batch memorisable: a context seen with two different next characters cannot reach
    loss 0. Window nets: keep the first row of each distinct context. GPT rows: ignore (-1) the
    targets whose whole prefix also appears with another target (every row starts with the same '.')."""
    if y.dim() == 1:
        seen: dict[tuple[int, ...], int] = {}
        keep = [i for i, row in enumerate(x.tolist()) if seen.setdefault(tuple(row), i) == i]
        return x[keep], y[keep]
    targets: dict[tuple[int, ...], set[int]] = {}
    for row, tgt in zip(x.tolist(), y.tolist(), strict=True):
        for t, target in enumerate(tgt):
            if target != -1:
                targets.setdefault(tuple(row[: t + 1]), set()).add(target)
    y = y.clone()
    for i, row in enumerate(x.tolist()):
        for t in range(y.shape[1]):
            if y[i, t] != -1 and len(targets[tuple(row[: t + 1])]) > 1:
                y[i, t] = -1
    return x, y


OVERFIT = {"bigram": (0.3, 100), "mlp": (1e-2, 400), "wavenet": (1e-2, 400), "gpt": (3e-3, 400)}


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_one_batch(arch: str, names_runs: dict[str, Run]) -> None:
    """The first sanity check of any net: it can memorise one small batch (loss < 0.1)."""
    run = names_runs[arch]
    torch.manual_seed(0)
    model = build(arch, run.model_config)
    if arch == "gpt":  # 8 names, ~60 predicted characters
        x, y = consistent_batch(*run.task.batch("train", 8, torch.Generator().manual_seed(3)))
        assert (y != -1).sum() >= 32
    else:  # 16 distinct contexts
        x, y = consistent_batch(*run.task.batch("train", 256, torch.Generator().manual_seed(3)))
        x, y = x[:16], y[:16]
        assert len(x) == 16
    lr, max_steps = OVERFIT[arch]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = None
    for _ in range(max_steps):
        _, loss = model(x, y)
        if loss.item() < 0.1:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss is not None and loss.item() < 0.1, f"{arch}: loss {loss.item():.3f} after {max_steps} steps"


@needs_data
def test_bigram_counts_nll_on_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """makemore part 1: the smoothed counts model's mean NLL over every name is 2.4544."""
    monkeypatch.setenv("CHARLM_DATA_DIR", str(DATA_DIR))
    corpus = load_corpus("names", None, None)
    vocab = Vocab.build(corpus.text, corpus.format)
    names = [line for line in corpus.text.splitlines() if line]
    assert len(names) == 32033 and vocab.size == 27
    sequences = [[vocab.boundary, *vocab.encode(n), vocab.boundary] for n in names]
    assert counts_nll(sequences, vocab.size) == pytest.approx(2.4544, abs=1e-3)


@pytest.mark.parametrize("arch", ["mlp", "wavenet"])
def test_batchnorm_eval_is_per_row(arch: str) -> None:
    """In eval mode BatchNorm uses running statistics: a row's logits do not depend on its batch."""
    torch.manual_seed(0)
    model = build(arch, SMALL[arch])
    block = model.cfg.block_size
    model.train()
    with torch.no_grad():
        for _ in range(5):  # move the running statistics away from their (0, 1) start
            model(torch.randint(V, (32, block)))
    model.eval()
    x = torch.randint(V, (16, block))
    with torch.no_grad():
        full, _ = model(x)
        for i in (0, 7, 15):
            single, _ = model(x[i : i + 1])
            torch.testing.assert_close(single[0], full[i], rtol=1e-5, atol=1e-5)


def test_gpt_kv_cache_matches_full_forward() -> None:
    """Prefill + one-token steps through the cache give the full forward's logits at every position."""
    torch.manual_seed(0)
    model = build("gpt", {**SMALL["gpt"], "dropout": 0.1}).eval()
    idx = torch.randint(V, (3, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.empty_cache(3)
        logits = model.generate_step(idx[:, :5], torch.zeros(3, dtype=torch.long), cache)
        torch.testing.assert_close(logits, full[:, :5], rtol=1e-4, atol=1e-5)
        for t in range(5, idx.shape[1]):
            logits = model.generate_step(idx[:, t : t + 1], torch.full((3,), t), cache)
            torch.testing.assert_close(logits[:, 0], full[:, t], rtol=1e-4, atol=1e-5)
    assert cache[1].shape[2] == idx.shape[1]


def test_gpt_batches_drop_padding_without_changing_the_loss(names_runs: dict[str, Run]) -> None:
    """Trailing all-padding columns are cut from each names batch; the loss is the full-width one."""
    run = names_runs["gpt"]
    x, y = run.task.batch("train", 64, torch.Generator().manual_seed(3))
    assert x.shape == y.shape and x.shape[1] < run.block_size
    assert (y[:, -1] != -1).any()  # the longest sample of the batch keeps its last target
    pad = run.block_size - x.shape[1]
    x_full = torch.nn.functional.pad(x, (0, pad), value=0)
    y_full = torch.nn.functional.pad(y, (0, pad), value=-1)
    model = run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y)[1], model(x_full, y_full)[1], rtol=1e-5, atol=1e-6)


def test_activation_taps_cover_every_family() -> None:
    kinds = {arch: [kind for *_, kind in activation_taps(build(arch, SMALL[arch]))] for arch in ARCHS}
    assert kinds == {"bigram": [], "mlp": ["tanh"], "wavenet": ["tanh"] * 3, "gpt": ["gelu"] * 2}


@pytest.mark.parametrize("arch", ["bigram", "gpt"])
def test_diagnostics_records_and_plots(arch: str, tmp_path: Path) -> None:
    """A hand-driven loop with the trainer's call order: records on the chosen steps, numbers, PNGs."""
    torch.manual_seed(0)
    model = build(arch, SMALL[arch])
    block = model.cfg.block_size
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10}) + "\n" for s in (2, 4))
    )
    diag = Diagnostics(model, tmp_path, every=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(9):
        x = torch.randint(V, (8, block))
        y = x if arch == "gpt" else x[:, 0]
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        diag.before_step(step)
        optimizer.step()
        diag.after_step(step, 1e-2, loss.item())
        with torch.no_grad():  # an eval forward in between must not be recorded
            model.eval()
            model(x)
            model.train()
    written = diag.finish()
    rows = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    records = [r for r in rows if "hist" not in r]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 7, 8]
    weight = "table.weight" if arch == "bigram" else "blocks.0.mlp.c_fc.weight"
    assert records[0]["params"][weight]["grad_std"] > 0
    ratio = records[-1]["params"][weight]["update_ratio_log10"]
    assert ratio is not None and -6 < ratio < 1
    if arch == "gpt":
        gelu = records[-1]["activations"]["blocks.1.mlp.gelu"]
        assert gelu["std"] > 0 and gelu["grad_std"] > 0
    names = {p.name for p in written if p.suffix == ".png"}
    expected = {"loss.png", "weight_grads.png", "update_ratio.png"}
    if arch == "gpt":
        expected |= {"activations.png", "activation_grads.png"}
    assert names == expected
    assert all((tmp_path / "plots" / n).stat().st_size > 1000 for n in names)


def test_plot_losses_without_metrics_is_quiet(tmp_path: Path) -> None:
    assert plot_losses(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_losses(tmp_path) is None
