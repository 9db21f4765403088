"""The references charlm is measured against: nanoGPT's sampler, and two minimal LitServe servers.

- `nanogpt_generate`: what nanoGPT's sample.py does (model.generate): every step recomputes the whole
  context, cropped to block_size, and only the last position's logits go through the head;
  softmax + torch.multinomial.
- `python -m benchmarks.baseline baseline ...`: a LitServe app answering POST /v1/generate (charlm's
  request schema) with `nanogpt_generate`, one request at a time, eager torch: "the obvious server".
- `python -m benchmarks.baseline noop ...`: the same request schema and server settings (workers,
  max_batch_size, batch_timeout), but predict returns a fixed name: the framework's own ceiling here.

No `from __future__ import annotations` in this module: LitServe reads decode_request's parameter
annotation at runtime to pick the request body's pydantic model, and needs the class, not a string.
"""

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException

from service.http.generate import GenerateRequest

NOOP_NAME = "emma"
ROUTE = "/v1/generate"


def nanogpt_logits_last(net: Any, idx: Any) -> Any:
    """nanoGPT's GPT.forward without targets: all positions through the blocks, the head on the last."""
    import torch

    pos = torch.arange(idx.shape[1], device=idx.device)
    x = net.drop(net.wte(idx) + net.wpe(pos))
    for block in net.blocks:
        x = block(x)
    return net.lm_head(net.ln_f(x[:, -1, :]))


def nanogpt_generate(
    net: Any,
    idx: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: Any = None,
) -> Any:
    """nanoGPT's model.generate: idx [B, T] -> [B, T + max_new_tokens], full recompute every step."""
    import torch
    import torch.nn.functional as F

    block_size = net.cfg.block_size
    with torch.no_grad():
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            logits = nanogpt_logits_last(net, idx_cond)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
    return idx


def _response(model: str, texts: list[str], finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """charlm's GenerateResponse shape, so that the load generator reads every server the same way."""
    return {
        "id": "gen-" + uuid.uuid4().hex,
        "model": model,
        "choices": [{"index": i, "text": t, "finish_reason": finish} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "timing": {"queue_ms": 0.0, "first_token_ms": 0.0, "total_ms": 0.0},
    }


class NoopAPI(ls.LitAPI):
    """Parses charlm's request body, returns a fixed name: all that is left is LitServe itself."""

    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request: GenerateRequest) -> GenerateRequest:
        return request

    def predict(self, x: Any) -> Any:
        if isinstance(x, list):  # batched (max_batch_size > 1)
            return [self._one(r) for r in x]
        return self._one(x)

    @staticmethod
    def _one(request: GenerateRequest) -> dict:
        texts = [request.prompt + NOOP_NAME] * request.n
        # A name's tokens: its letters and the end-of-name boundary, as charlm counts them.
        return _response(request.model, texts, "stop", len(request.prompt), request.n * (len(NOOP_NAME) + 1))

    def encode_response(self, output: dict) -> dict:
        return output


class BaselineAPI(ls.LitAPI):
    """One request at a time through nanoGPT's sampler on the eager net (the shipped weights)."""

    def __init__(self, models_dir: Path, model: str, threads: int):
        super().__init__(max_batch_size=1, api_path=ROUTE)
        self.models_dir, self.model, self.threads = Path(models_dir), model, threads

    def setup(self, device: str) -> None:
        import torch

        from benchmarks.common import model_entry
        from benchmarks.weights import load_eager

        torch.set_num_threads(self.threads)
        entry = model_entry(self.models_dir, self.model)
        if entry.manifest.format != "stream":
            raise ValueError("the baseline server serves stream models only (no end-of-line handling)")
        self.net = load_eager(entry.folder)
        self.vocab = entry.manifest.vocab
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.pad = self.stoi.get("\n", 0)

    def decode_request(self, request: GenerateRequest) -> GenerateRequest:
        if request.model != self.model:
            raise HTTPException(404, f"model {request.model!r} not found; available: {self.model}")
        bad = sorted({ch for ch in request.prompt if ch not in self.stoi})
        if bad:
            raise HTTPException(400, f"prompt has characters outside the vocabulary: {bad}")
        return request

    def predict(self, request: GenerateRequest) -> dict:
        import torch

        ids = [self.stoi[ch] for ch in request.prompt] or [self.pad]
        seed = request.seed if request.seed is not None else time.perf_counter_ns()
        gen = torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        idx = torch.tensor([ids] * request.n, dtype=torch.long)
        new = request.max_new_tokens or 256
        out = nanogpt_generate(self.net, idx, new, request.temperature, request.top_k, gen)
        texts = [request.prompt + "".join(self.vocab[t] for t in row[len(ids) :]) for row in out.tolist()]
        return _response(request.model, texts, "length", len(request.prompt), request.n * new)

    def encode_response(self, output: dict) -> dict:
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["noop", "baseline"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32, help="noop only; the baseline takes 1")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0, help="noop only")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (LitServe)")
    parser.add_argument("--models", type=Path, default=None, help="baseline: models folder")
    parser.add_argument("--model", default="shakespeare-gpt", help="baseline: which model")
    parser.add_argument("--threads", type=int, default=1, help="baseline: torch threads")
    args = parser.parse_args(argv)
    if args.server == "noop":
        api: ls.LitAPI = NoopAPI(
            max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000, api_path=ROUTE
        )
    else:
        from benchmarks.common import MODELS_DIR

        api = BaselineAPI(args.models or MODELS_DIR, args.model, args.threads)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=args.timeout)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
