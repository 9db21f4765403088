"""A fake slot engine and an in-process engine client, to test the HTTP layer without models or workers.

`FakeEngine` has the real Engine's API (add / step / abort over `slots`) and deterministic text: a
seeded sequence gives the same characters alone or in a batch. `LocalClient` runs the real Scheduler
over fake engines inside the test's event loop, where production runs it in a LitServe worker, so the
gateway, the scheduler and the response shapes are exercised together (as vLLM's serving tests mock
their engine client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from litserve.middlewares import MaxSizeMiddleware

from contract import Manifest
from contract.manifest import Metrics
from engine import Delta, InvalidPrompt, TokenLogprob, default_max_new_tokens, prompt_problem
from service.http.catalog import Catalog
from service.http.gateway import Gateway
from service.http.routes import CharLMSpec
from service.metrics import MetricsMiddleware
from service.protocol import EngineRequest, WorkerEvent
from service.server import App, install_routes
from service.settings import MAX_BODY_BYTES, Settings
from service.shared import READY, SharedState
from service.worker.scheduler import Scheduler

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def manifest(name: str, fmt: str = "lines") -> Manifest:
    vocab = [".", *LETTERS] if fmt == "lines" else ["\n", " ", *LETTERS, *LETTERS.upper(), ":"]
    return Manifest.model_construct(
        name=name,
        arch="gpt",
        n_params=1000,
        vocab=vocab,
        format=fmt,
        boundary_token=0 if fmt == "lines" else None,
        block_size=32,
        files={},
        metrics=Metrics.model_construct(train_loss=2.0, val_loss=2.0, test_loss=2.0),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


class FakeEngine:
    """Engine's API; choice text is a function of its seed; `lines` sequences stop after 3-7 tokens."""

    max_new_tokens_cap = 2048

    def __init__(
        self,
        m: Manifest,
        slots: int = 4,
        reject: str = "",
        fail_on_step: bool = False,
        data: Callable[[str], bool] | None = None,
    ):
        self.manifest, self.slots = m, slots
        self.data = data  # "is this sample in the training data?"; None: the model carries no hashes
        self.added: list[Any] = []  # every request id add() took
        self.reject = reject  # characters the "worker" refuses although the vocabulary has them
        self.fail_on_step = fail_on_step
        self.seqs: dict[Any, dict[str, Any]] = {}
        self.steps: list[int] = []  # live sequences at each step

    def default_max_new_tokens(self) -> int:
        return default_max_new_tokens(self.manifest)

    def encode_prompt(self, text: str) -> list[int]:
        problem = prompt_problem(self.manifest, text)
        bad = [ch for ch in text if ch in self.reject]
        if problem or bad:
            raise InvalidPrompt(problem or f"prompt has characters this worker refuses: {bad}", tuple(bad))
        return [self.manifest.vocab.index(ch) for ch in text]

    def prefills(self) -> bool:
        return False

    def active(self) -> int:
        return len(self.seqs)

    def free(self) -> int:
        return self.slots - len(self.seqs)

    def has_capacity(self) -> bool:
        return self.free() > 0

    def add(self, request_id: Any, prompt_ids: list[int], sampling: Any) -> bool:
        vocab = len(self.manifest.vocab)
        if sampling.logprobs is not None and sampling.logprobs > vocab:
            raise ValueError(f"logprobs {sampling.logprobs} exceeds the vocabulary size {vocab}")
        if any(not 0 <= t < vocab for t, _ in sampling.logit_bias):
            raise ValueError("logit_bias has token ids outside the vocabulary")
        if not self.has_capacity():
            return False
        self.added.append(request_id)
        seed = sampling.seed if sampling.seed is not None else 7
        lines = self.manifest.format == "lines" and not sampling.ignore_eos
        stop_after = max(3 + seed % 5, sampling.min_tokens) if lines else None
        max_new = self.default_max_new_tokens() if sampling.max_new_tokens is None else sampling.max_new_tokens
        self.seqs[request_id] = {
            "seed": seed,
            "k": 0,
            "max": max_new,
            "stop_after": stop_after,
            "lps": sampling.logprobs,
            "prompt": list(prompt_ids) if sampling.prompt_logprobs else None,
        }
        return True

    def score(self, s: dict[str, Any], token: int) -> TokenLogprob | None:
        """A deterministic 'log-probability': -(1 + token / 10); alternatives: the first k tokens."""
        if s["lps"] is None:
            return None
        top = tuple((t, -(1 + t / 10)) for t in range(s["lps"]))
        return TokenLogprob(token, -(1 + token / 10), top)

    def prompt_scores(self, s: dict[str, Any]) -> tuple | None:
        ids, s["prompt"] = s["prompt"], None
        if ids is None:
            return None
        lines = self.manifest.boundary_token is not None
        return tuple(self.score(s, t) if (lines or j) else None for j, t in enumerate(ids))

    def is_novel(self, sample: str) -> bool | None:
        return None if self.data is None else not self.data(sample)

    def abort(self, request_id: Any) -> bool:
        return self.seqs.pop(request_id, None) is not None

    def step(self) -> list[Delta]:
        if self.fail_on_step:
            raise RuntimeError("fake engine failure")
        self.steps.append(len(self.seqs))
        deltas = []
        for rid, s in list(self.seqs.items()):
            prompt = self.prompt_scores(s)
            if s["max"] == 0:
                deltas.append(Delta(rid, "", "length", 0, () if s["lps"] is not None else None, None, prompt))
                del self.seqs[rid]
                continue
            s["k"] += 1
            k = s["k"]
            if s["stop_after"] is not None and k > s["stop_after"]:
                end = self.score(s, 0)
                deltas.append(Delta(rid, "", "stop", k, () if end else None, end, prompt))
                del self.seqs[rid]
                continue
            text = LETTERS[(s["seed"] * 7 + k) % 26]
            lp = self.score(s, self.manifest.vocab.index(text))
            lps = (lp,) if lp else None
            if k >= s["max"]:
                deltas.append(Delta(rid, text, "length", k, lps, None, prompt))
                del self.seqs[rid]
            else:
                deltas.append(Delta(rid, text, None, None, lps, None, prompt))
        return deltas


class QueueStream:
    def __init__(self, queue: asyncio.Queue):
        self.queue = queue

    async def next(self, timeout: float) -> WorkerEvent | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.queue.get(), timeout)
        return None

    async def close(self) -> None:
        pass


class LocalClient:
    """An EngineClient that runs the real Scheduler over fake engines in this event loop."""

    def __init__(self, engines: dict[str, FakeEngine], shared: SharedState, step_s: float = 0.001):
        self.engines, self.shared, self.step_s = engines, shared, step_s
        self.queues: dict[str, asyncio.Queue] = {}
        self.cancelled: list[str] = []
        self.scheduler = Scheduler(engines, self._emit)
        self.task: asyncio.Task | None = None
        self.publish_rates = True  # off: a test sets the measured speed itself

    def _emit(self, job: Any, event: WorkerEvent) -> None:
        queue = self.queues.get(job.uid)
        if queue is not None:
            queue.put_nowait(event)

    async def open(self, req: EngineRequest) -> QueueStream:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[req.rid] = queue
        self.scheduler.admit(req, uid=req.rid)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        return QueueStream(queue)

    def cancel(self, rid: str) -> None:
        self.cancelled.append(rid)
        self.scheduler.cancel(rid)

    async def _run(self) -> None:
        while not self.scheduler.idle():
            self.scheduler.expire()
            self.scheduler.fill()
            self.scheduler.step()
            self.shared.heartbeat(0, self.scheduler.live())
            for model, rate in self.scheduler.rates.items() if self.publish_rates else ():
                self.shared.post_rate(0, model, rate)
            await asyncio.sleep(self.step_s)


def make_app(
    engines: dict[str, FakeEngine] | None = None, step_s: float = 0.001, **settings: Any
) -> tuple[FastAPI, LocalClient, App]:
    """The service's FastAPI app (routes, errors, middlewares) over a LocalClient."""
    engines = engines or {"names": FakeEngine(manifest("names")), "prose": FakeEngine(manifest("prose", "stream"))}
    cfg = Settings(**settings)
    shared = SharedState(1, list(engines))
    shared.state[0] = READY
    shared.heartbeat(0, 0)
    shared.post_info(0, {"failed": {}, "fatal": None, "torch_imported": False})
    catalog = Catalog({name: e.manifest for name, e in engines.items()}, {"broken": "no manifest.json"}, "onnx")
    client = LocalClient(engines, shared, step_s)
    spec = CharLMSpec()
    spec.gateway = Gateway(catalog, client, shared, cfg.timeout, cfg.max_queue, cfg.max_request_tokens)
    app = FastAPI()
    for path, endpoint, methods in spec.endpoints:  # what LitServer does with a spec's endpoints
        app.add_api_route(path, endpoint, methods=methods)
    info = App(server=None, spec=spec, shared=shared, catalog=catalog, settings=cfg)  # type: ignore[arg-type]
    install_routes(app, info)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(MaxSizeMiddleware, max_size=MAX_BODY_BYTES)
    return app, client, info


GEN, CMPL = "/v1/generate", "/v1/completions"


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[Any]], **app_kwargs: Any) -> Any:
    app, client, info = make_app(**app_kwargs)

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as http:
            http.engine_client = client  # type: ignore[attr-defined]
            http.info = info  # type: ignore[attr-defined]
            return await scenario(http)

    return asyncio.run(main())


def sse(response: httpx.Response) -> list[Any]:
    body = response.text
    assert body.endswith("\n\n")
    out = []
    for block in body.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
