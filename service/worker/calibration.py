"""Step times measured at start-up, before a worker says READY, so admission is right from the first
request (service/speed.py): a fresh server used to refuse a 1-token request beside two long ones
because nothing had been measured yet.

Each model runs a few steps at batch sizes 1, 16 and its slot count, on sequences whose prompt fills
a third of its context (a GPT's step costs more the longer its context: steps at position 5 were half as
long as those of a request's middle, and the first burst on a fresh server was admitted on them and
ended in 504); the prefill step is not counted, and the slots are freed again. About a second per
worker on 2 cores for the shipped models.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

from service.speed import SpeedBoard

log = logging.getLogger("charlm.worker")

STEPS = 3  # counted steps per batch size (after one uncounted)


def calibrate(engines: Mapping[str, Any], speed: SpeedBoard, worker: int) -> None:
    for name, engine in engines.items():
        sizes = sorted({b for b in (1, 16, engine.slots) if b <= engine.slots})
        prompt = _prompt(engine)
        for size in sizes:
            seconds = _measure(engine, size, prompt)
            if seconds is not None:
                speed.record_step(worker, name, size, seconds)
        log.debug("worker %d: %s step times %s", worker, name, speed.report(worker).get(name))


def _prompt(engine: Any) -> list[int]:
    """Token ids filling half the model's context, of a character its prompts may hold."""
    length = max(0, engine.manifest.block_size // 3 - STEPS - 2)
    for ch in engine.manifest.vocab:
        try:
            return engine.encode_prompt(ch * length)
        except Exception:  # the boundary mark, or a character prompts may not hold
            continue
    return []


def _measure(engine: Any, size: int, prompt: list[int]) -> float | None:
    from engine import SamplingParams

    ids = [("calibration", i) for i in range(size)]
    try:
        for i, rid in enumerate(ids):
            if not engine.add(rid, prompt, SamplingParams(seed=i, max_new_tokens=STEPS + 2, ignore_eos=True)):
                return None
        engine.step()  # prefill
        times = []
        for _ in range(STEPS):
            t0 = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    except Exception:  # a model that cannot be measured is measured by its first real steps instead
        log.exception("could not measure %s at batch %d", getattr(engine.manifest, "name", "?"), size)
        return None
    finally:
        for rid in ids:
            engine.abort(rid)
