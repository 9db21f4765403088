"""The scoring check that cannot lie: a model's test loss measured through a running charlm server.

The mean negative log-probability of the split's characters, read from `/v1/completions` with `echo`
and `logprobs: 0` (the model's raw log-probabilities), windowed exactly as the manifest's test_loss
was computed (training/verify.py, training/data.py):

- `lines` models score each sample from its start boundary through its end boundary. The sample is the
  prompt (a `lines` model scores its first character, given the start boundary); the end boundary is
  the one generated token, forced with `logit_bias` (+100 on the boundary, `temperature: 0`): the
  reported logprob is raw, before the bias, so it is the model's own probability of ending there.
- `stream` models score non-overlapping blocks of block_size targets, each with the context of its
  block (stream_chunks). A block of text ids[kB : kB + B] is the prompt: its characters after the first
  are scored by the prompt pass (the first has no context: null), and the next character, ids[kB + B],
  which the eval scores with the whole block as context, is the generated token, forced the same way.

`max_tokens: 0` alone scores a prompt without generating; the one forced token is what reaches the end
boundary and the last position of a block, which a prompt of at most block_size characters cannot.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from contract import family
from training.model_split import split_samples

PROMPTS_PER_REQUEST = 64
CONCURRENCY = 4


def _score(
    client: httpx.Client, model: str, mark: str, prompts: list[str], force: int, echo_skip: int
) -> tuple[float, int]:
    """Sum of -logprob over every scored token of the choices (entries after `echo_skip` nulls)."""
    body = {
        "model": model,
        "prompt": prompts,
        "echo": True,
        "max_tokens": 1,
        "logprobs": 0,
        "temperature": 0,
        "logit_bias": {str(force): 100},
    }
    r = client.post("/v1/completions", json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code} from the server: {r.text[:300]}")
    total, count = 0.0, 0
    for choice in r.json()["choices"]:
        lps = choice["logprobs"]["token_logprobs"]
        if choice["logprobs"]["tokens"][-1] != mark:
            raise RuntimeError("the forced token was not generated")
        scored = lps[echo_skip:]
        if any(v is None for v in scored):
            raise RuntimeError("a position the eval scores came back without a logprob")
        total -= sum(scored)
        count += len(scored)
    return total, count


def http_split_loss(
    url: str, model_dir: Path, split: str = "test", data_path: str | None = None, limit: int | None = None
) -> float:
    """Mean NLL (nats/char) of `split` through the server at `url` serving the model of `model_dir`."""
    manifest, samples = split_samples(Path(model_dir), split, data_path)
    if manifest.boundary_token is None and not family(manifest.arch).kv_cache:
        raise ValueError(
            f"{manifest.name}: --via scores lines models and stream GPTs (a stream window model's eval "
            "scores every position with a full window, which this check does not reproduce)"
        )
    vocab = manifest.vocab
    jobs: list[tuple[list[str], int, int]] = []
    if manifest.boundary_token is not None:
        texts = ["".join(vocab[i] for i in s.tolist()) for s in samples[:limit]]
        for i in range(0, len(texts), PROMPTS_PER_REQUEST):
            jobs.append((texts[i : i + PROMPTS_PER_REQUEST], manifest.boundary_token, 0))
    else:
        ids, block = samples[0].tolist(), manifest.block_size
        blocks = (len(ids) - 1) // block
        for k in range(blocks if limit is None else min(limit, blocks)):
            text = "".join(vocab[i] for i in ids[k * block : (k + 1) * block])
            jobs.append(([text], ids[(k + 1) * block], 1))
    with httpx.Client(base_url=url.rstrip("/"), timeout=120) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda job: _score(client, manifest.name, vocab[job[1]], *job), jobs))
    total, count = sum(r[0] for r in results), sum(r[1] for r in results)
    return total / count
