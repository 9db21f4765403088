"""Continuous arrivals at the engine level: does a request wait for another one to finish?

Tokens/s at a fixed batch cannot show it; a stream of requests arriving while others run can. One seeded
Poisson trace of mixed requests (names-gpt n=1 with its default length; shakespeare-gpt 256 tokens,
prompt "\\n") drives, in one process and one after the other:
- **v2**: one `engine.Engine` per model (ONNX); every loop iteration admits what has arrived
  into free slots (`add`), then `step()`s each engine with live work;
- **v1**: the reference in benchmarks/v1_reference.py: v1's step graph and frozen-batch grouping, driven
  the way the old worker drove it (a batch is frozen when it starts, at most two run interleaved, new
  requests are taken every 10 ms into a new batch only).
Reported per engine: tokens/s (all tokens / first arrival to last finish), time to first token from
arrival and from admission (`add`) as p50/p99 in ms and in units of the median scheduler step (one
loop iteration: every engine with live work steps once; v1: one model call per running batch), and the
longest wait for admission, and how many requests found no room (v2: no free slot; v1: two batches
running or the batch limit reached) — a wait for another request to finish. Targets: p99 add -> first
token <= 2 steps, and no request finds no room.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import NAMES, SHAKESPEARE, BenchError, median, model_entry

V1_CACHE = Path(tempfile.gettempdir()) / "charlm-bench-v1"


@dataclass(frozen=True)
class ArrivalSettings:
    duration_s: float = 20.0
    names_rate: float = 20.0  # requests/s
    shakespeare_rate: float = 6.0
    shakespeare_tokens: int = 256
    threads: int = 1
    slots: int = 128
    v1_max_batch: int = 32  # the old server's default max_batch_size
    seed: int = 4242

    @classmethod
    def quick(cls) -> ArrivalSettings:
        return cls(duration_s=2.0)


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    rid: int
    model: str
    ids: tuple[int, ...]
    max_new: int | None  # None: the model's default (names: until the boundary, at most 64)
    seed: int


def make_trace(settings: ArrivalSettings, encode: dict[str, Callable[[str], list[int]]]) -> list[Arrival]:
    """Two merged Poisson streams, seeded: the same trace for both engines."""
    rng = np.random.default_rng(settings.seed)
    items: list[tuple[float, str]] = []
    for model, rate in ((NAMES, settings.names_rate), (SHAKESPEARE, settings.shakespeare_rate)):
        t = rng.exponential(1 / rate) if rate > 0 else settings.duration_s
        while t < settings.duration_s:
            items.append((t, model))
            t += rng.exponential(1 / rate)
    items.sort()
    prompts = {NAMES: "", SHAKESPEARE: "\n"}
    limits = {NAMES: None, SHAKESPEARE: settings.shakespeare_tokens}
    return [
        Arrival(at, i, model, tuple(encode[model](prompts[model])), limits[model], settings.seed + i)
        for i, (at, model) in enumerate(items)
    ]


class V2Driver:
    """One Engine per model: admit whatever fits, then one step per engine with live work."""

    idle_gather_s = 0.0

    def __init__(self, engines: dict[str, Any]):
        from engine import SamplingParams

        self.engines, self.params = engines, SamplingParams
        self.step_s: list[float] = []
        self.refused: set[int] = set()  # requests that found no free slot at least once

    def busy(self) -> bool:
        return any(e.active() for e in self.engines.values())

    def admit(self, pending: list[Arrival], now: float) -> list[int]:
        taken = []
        for a in pending:
            params = self.params(temperature=1.0, seed=a.seed, max_new_tokens=a.max_new)
            if self.engines[a.model].add(a.rid, list(a.ids), params):
                taken.append(a.rid)
            else:
                self.refused.add(a.rid)
        if taken:
            keep = set(taken)
            pending[:] = [a for a in pending if a.rid not in keep]
        return taken

    def step(self) -> list[tuple[int, int | None, bool]]:
        events = []
        for engine in self.engines.values():
            if not engine.active():
                continue
            t0 = time.perf_counter()
            deltas = engine.step()
            self.step_s.append(time.perf_counter() - t0)
            events += [(d.request_id, d.completion_tokens, d.finish_reason is not None) for d in deltas]
        return events


class V1Driver:
    """benchmarks.v1_reference.V1Worker behind the same three calls."""

    def __init__(self, worker: Any, boundaries: dict[str, int | None], defaults: dict[str, int]):
        self.worker, self.boundaries, self.defaults = worker, boundaries, defaults
        self.idle_gather_s = worker.idle_gather_s
        self.step_s = worker.step_s
        self.refused: set[int] = set()  # requests that arrived while v1 could start no new batch

    def busy(self) -> bool:
        return self.worker.busy()

    def admit(self, pending: list[Arrival], now: float) -> list[int]:
        from benchmarks.v1_reference import V1Request

        pairs = []
        for a in pending:
            boundary = self.boundaries[a.model]
            context = [boundary, *a.ids] if boundary is not None else list(a.ids)
            max_new = a.max_new or self.defaults[a.model]
            pairs.append((a.model, V1Request(a.rid, context, max_new, boundary, np.random.default_rng(a.seed))))
        if not self.worker.can_start():
            self.refused.update(a.rid for a in pending)
        taken = self.worker.admit(pairs, now)
        if taken:
            keep = set(taken)
            pending[:] = [a for a in pending if a.rid not in keep]
        return taken

    def step(self) -> list[tuple[int, int | None, bool]]:
        return self.worker.step()


@dataclass
class _Log:
    added: dict[int, float] = field(default_factory=dict)
    first: dict[int, float] = field(default_factory=dict)
    done: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    iter_s: list[float] = field(default_factory=list)  # one scheduler step: every engine (batch) once


def drive(driver: Any, trace: list[Arrival]) -> _Log:
    """Replay `trace` in real time through `driver` until every request has finished."""
    pending: list[Arrival] = []
    log, i, t0 = _Log(), 0, time.perf_counter()
    while i < len(trace) or pending or driver.busy():
        now = time.perf_counter() - t0
        while i < len(trace) and trace[i].at <= now:
            pending.append(trace[i])
            i += 1
        if not pending and not driver.busy():
            time.sleep(max(0.0, trace[i].at - now))
            continue
        if pending and not driver.busy() and now < pending[0].at + driver.idle_gather_s:
            time.sleep(pending[0].at + driver.idle_gather_s - now)  # v1: an idle worker gathers a batch
            continue
        for rid in driver.admit(pending, now):
            log.added[rid] = now
        events = driver.step()
        t = time.perf_counter() - t0
        log.iter_s.append(t - now)
        for rid, n, finished in events:
            log.first.setdefault(rid, t)
            if finished:
                log.done[rid], log.tokens[rid] = t, int(n or 0)
    return log


def _summary(name: str, trace: list[Arrival], log: _Log, call_s: list[float], refused: set[int]) -> dict[str, Any]:
    if len(log.done) != len(trace):
        raise BenchError(f"arrivals/{name}: {len(trace) - len(log.done)} of {len(trace)} requests never finished")
    step = median(log.iter_s)
    arrival = np.array([log.first[a.rid] - a.at for a in trace])
    added = np.array([log.first[a.rid] - log.added[a.rid] for a in trace])
    waited = np.array([log.added[a.rid] - a.at for a in trace])
    names = np.array([log.first[a.rid] - a.at for a in trace if a.model == NAMES])
    wall = max(log.done.values()) - trace[0].at
    total = sum(log.tokens.values())

    def ms(x: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(x, q)) * 1000, 2) if x.size else None

    return {
        "engine": name,
        "requests": len(trace),
        "tokens": total,
        "tokens_per_s": round(total / wall, 1),
        "median_step_ms": round(step * 1000, 3),
        "steps": len(log.iter_s),
        "median_call_ms": round(median(call_s) * 1000, 3) if call_s else None,
        "calls": len(call_s),
        "ttft_p50_ms": ms(arrival, 50),
        "ttft_p99_ms": ms(arrival, 99),
        "add_to_first_p50_ms": ms(added, 50),
        "add_to_first_p99_ms": ms(added, 99),
        "add_to_first_p99_steps": round(float(np.percentile(added, 99)) / step, 2),
        "ttft_p99_steps": round(float(np.percentile(arrival, 99)) / step, 2),
        "max_admission_wait_ms": round(float(waited.max()) * 1000, 2),
        "waited_for_capacity": len(refused & {a.rid for a in trace}),
        "names_ttft_p99_ms": ms(names, 99),
    }


def _v1_driver(models_dir: Path, settings: ArrivalSettings, manifests: dict[str, Any]) -> V1Driver:
    from benchmarks.v1_export import export_v1
    from benchmarks.v1_reference import V1Session, V1Worker
    from benchmarks.weights import load_eager

    sessions = {}
    for name in (NAMES, SHAKESPEARE):
        net = load_eager(Path(models_dir) / name)
        sessions[name] = V1Session(export_v1(net, V1_CACHE), net, settings.threads)
    worker = V1Worker(sessions, max_batch=settings.v1_max_batch)
    boundaries = {n: m.boundary_token for n, m in manifests.items()}
    defaults = {n: 64 if m.format == "lines" else 256 for n, m in manifests.items()}
    return V1Driver(worker, boundaries, defaults)


def run_arrivals(models_dir: Path, settings: ArrivalSettings, log: Callable[[str], None] = print) -> list[dict]:
    """Rows for the JSON's "arrivals" list: one per engine (v2, v1 reference), same trace."""
    from engine import Engine

    entries = {n: model_entry(models_dir, n) for n in (NAMES, SHAKESPEARE)}
    engines = {
        n: Engine.load(e, backend="onnx", threads=settings.threads, slots=settings.slots) for n, e in entries.items()
    }
    trace = make_trace(settings, {n: e.encode_prompt for n, e in engines.items()})
    if not trace:
        raise BenchError("arrivals: the trace is empty (raise the rates or the duration)")
    v1 = _v1_driver(models_dir, settings, {n: e.manifest for n, e in entries.items()})
    log(
        f"arrivals: {len(trace)} requests over {settings.duration_s:g} s (Poisson: names-gpt "
        f"{settings.names_rate:g}/s, shakespeare-gpt {settings.shakespeare_rate:g}/s x "
        f"{settings.shakespeare_tokens} tokens), ONNX, {settings.threads} thread(s)"
    )
    warm = make_trace(
        ArrivalSettings(duration_s=0.5, seed=settings.seed + 1), {n: e.encode_prompt for n, e in engines.items()}
    )
    rows = []
    for name, driver in (("v2", V2Driver(engines)), ("v1-reference", v1)):
        if warm:
            drive(driver, warm)  # first-call allocations for the shapes the run will see
            driver.step_s.clear()
            driver.refused.clear()
        row = _summary(name, trace, drive(driver, trace), driver.step_s, driver.refused)
        rows.append(row)
        log(
            f"  {name:<13} {row['tokens_per_s']:>8,.0f} tok/s  first token p50 {row['ttft_p50_ms']} p99 "
            f"{row['ttft_p99_ms']} ms (add -> first p99 {row['add_to_first_p99_steps']} steps of "
            f"{row['median_step_ms']} ms), longest admission wait {row['max_admission_wait_ms']} ms, "
            f"{row['waited_for_capacity']} request(s) found no room"
        )
    return rows


def settings_dict(settings: ArrivalSettings) -> dict[str, Any]:
    return asdict(settings)
