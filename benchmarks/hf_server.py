"""`shakespeare-hf`: the stronger reference server, what a user would assemble in an afternoon.

LitServe with its own dynamic batching (`max_batch_size` 32, `batch_timeout` 5 ms) around Hugging Face
`GPT2LMHeadModel.generate` (KV cache, sampling) over the same weights as charlm's shakespeare-gpt
(benchmarks.weights, logits parity checked at start-up). It answers POST /v1/generate in charlm's
request and response shape, without streaming; a batch is one `generate` call: prompts left-padded with
an attention mask, every row run to the batch's longest max_new_tokens, then cut to its own. Sampling
settings (temperature, top_k) are the batch's first request's: HF takes one per call. GPT-2 cannot go
past its n_positions (= block_size), so prompt + max_new_tokens must fit in it (400 otherwise).

    python -m benchmarks.hf_server --port 8100 [--threads 1 --max-batch-size 32]

No `from __future__ import annotations`: LitServe reads decode_request's annotation at runtime.
"""

import argparse
import time
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException

from benchmarks.baseline import ROUTE, _response
from service.http.generate import GenerateRequest


class HFGenerateAPI(ls.LitAPI):
    def __init__(self, models_dir: Path, model: str, threads: int, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=ROUTE)
        self.models_dir, self.model, self.threads = Path(models_dir), model, threads

    def setup(self, device: str) -> None:
        import torch

        from benchmarks.weights import check_hf_parity, load_eager, read_manifest, to_hf

        torch.set_num_threads(self.threads)
        folder = self.models_dir / self.model
        net = load_eager(folder)
        self.hf = to_hf(net)
        check_hf_parity(net, self.hf)
        self.vocab = read_manifest(folder)["vocab"]
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.pad = self.stoi.get("\n", 0)
        self.block_size = net.cfg.block_size

    def decode_request(self, request: GenerateRequest) -> GenerateRequest:
        if request.model != self.model:
            raise HTTPException(404, f"model {request.model!r} not found; available: {self.model}")
        bad = sorted({ch for ch in request.prompt if ch not in self.stoi})
        if bad:
            raise HTTPException(400, f"prompt has characters outside the vocabulary: {bad}")
        if max(1, len(request.prompt)) + (request.max_new_tokens or 256) > self.block_size:
            raise HTTPException(400, f"GPT-2 cannot go past {self.block_size} positions (prompt + max_new_tokens)")
        return request

    def batch(self, inputs: list) -> list:
        return list(inputs)

    def predict(self, x: Any) -> list[dict]:
        import torch

        requests = x if isinstance(x, list) else [x]
        rows = [([self.stoi[ch] for ch in r.prompt] or [self.pad], r) for r in requests for _ in range(r.n)]
        width = max(len(ids) for ids, _ in rows)
        idx = torch.tensor([[self.pad] * (width - len(ids)) + ids for ids, _ in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows], dtype=torch.long)
        new = max(r.max_new_tokens or 256 for r in requests)
        first = requests[0]
        torch.manual_seed(first.seed if first.seed is not None else time.perf_counter_ns() & 0xFFFF_FFFF)
        with torch.no_grad():
            out = self.hf.generate(
                idx,
                attention_mask=mask,
                do_sample=first.temperature > 0,
                temperature=first.temperature or 1.0,
                top_k=first.top_k or 0,
                top_p=1.0,
                max_new_tokens=new,
                min_new_tokens=new,
                use_cache=True,
                pad_token_id=self.pad,
                eos_token_id=None,
            )[:, width:].tolist()
        answers, i = [], 0
        for r in requests:
            limit = r.max_new_tokens or 256
            texts = [r.prompt + "".join(self.vocab[t] for t in row[:limit]) for row in out[i : i + r.n]]
            answers.append(_response(r.model, texts, "length", len(r.prompt), r.n * limit))
            i += r.n
        return answers if isinstance(x, list) else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hf_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (LitServe)")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    from benchmarks.common import MODELS_DIR

    api = HFGenerateAPI(
        args.models or MODELS_DIR, args.model, args.threads, args.max_batch_size, args.batch_timeout_ms / 1000
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=args.timeout)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
