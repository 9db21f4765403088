"""The HTTP benchmark's settings and scenarios as data: what benchmarks.http_bench runs, and what its load
generator (http_load) and server launcher (http_servers) read, so none of them imports the others' runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpSettings:
    duration_s: int = 10
    names_concurrency: tuple[int, ...] = (1, 16, 64)
    shakespeare_concurrency: tuple[int, ...] = (1, 8, 32)
    hf_concurrency: tuple[int, ...] = (32,)
    new_tokens: int = 256
    workers: int = 1
    max_batch_size: int = 32
    batch_timeout_ms: float = 5.0
    ttft_requests: int = 20
    baseline_threads: int = 1
    wrk_threads: int = 1
    wrk_timeout_s: int = 60
    ready_timeout_s: float = 180.0
    long_n: int = 64  # head-of-line: the two long requests
    charlm_timeout_s: float = 300.0  # so that admission by cost takes both long requests (see http_servers)
    long_tokens: int = 2048
    scenarios: tuple[str, ...] = ()  # empty: all

    @classmethod
    def quick(cls, baseline_threads: int) -> HttpSettings:
        return cls(duration_s=3, ttft_requests=5, baseline_threads=baseline_threads)


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # one of http_servers.KINDS
    route: str
    body: dict[str, Any]
    kind: str  # names | shakespeare | hf | head-of-line: which levels, which reference, which ratio
    reference: str | None
    echo: str = ""  # text the route puts before the generated characters (native route: the prompt)

    def concurrency(self, settings: HttpSettings) -> tuple[int, ...]:
        levels = {"names": settings.names_concurrency, "shakespeare": settings.shakespeare_concurrency}
        return levels.get(self.kind, settings.hf_concurrency)
