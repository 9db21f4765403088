"""The HTTP benchmark's two throughputs (benchmarks.http_bench): wrk's count of completed requests, and the
closed loop's steady rate by Little's law, which is given only where the window held enough requests.
Nothing is timed here (timings are `python -m benchmarks --only http`)."""

from benchmarks.http_bench import _row
from benchmarks.http_settings import Scenario

SCENARIO = Scenario("shakespeare", "charlm", "/v1/generate", {}, "shakespeare", "shakespeare-baseline", "\n")


def wrk_result(ok: int, chars: int, mean_s: float, stops: int = 0) -> dict:
    """wrk's counters (benchmarks.http_load's Lua) for `ok` completed requests in a 10 s window."""
    return {
        "requests": ok, "duration_us": 10_000_000, "ok": ok, "non200": 0, "first_error_status": 0,
        "tokens": chars + stops, "stops": stops, "connect": 0, "read": 0, "write": 0, "timeout": 0,
        "p50_us": int(mean_s * 1e6), "p95_us": int(mean_s * 1e6), "p99_us": int(mean_s * 1e6),
        "max_us": int(mean_s * 1e6), "mean_us": int(mean_s * 1e6),
    }  # fmt: skip


def test_the_steady_rate_counts_the_wave_still_running():
    # 32 connections, 256 characters a request, 1.8 s each: 5 whole waves end inside 10 s, the 6th does not
    row = _row(SCENARIO, 32, wrk_result(ok=160, chars=160 * 256, mean_s=1.8), [], 0)
    assert row["chars_per_s"] == 4096.0  # wrk's count: 5 waves over 10 s
    assert row["steady_chars_per_s"] == round(32 * 256 / 1.8, 1)  # 4,551: what the server kept up


def test_stops_are_not_characters_in_either_rate():
    row = _row(SCENARIO, 2, wrk_result(ok=10, chars=100, mean_s=0.5, stops=10), [], 0)
    assert row["chars_per_s"] == 10.0
    assert row["steady_chars_per_s"] == 40.0  # 2 / 0.5 s = 4 requests/s of 10 characters


def test_no_steady_rate_from_fewer_than_two_requests_a_connection():
    # a server answering one request at a time: 3 of 32 connections got through, their mean is no mean
    row = _row(SCENARIO, 32, wrk_result(ok=3, chars=768, mean_s=5.0), [], 0)
    assert row["steady_chars_per_s"] is None
    assert row["chars_per_s"] == 76.8
    assert _row(SCENARIO, 32, wrk_result(ok=64, chars=64, mean_s=1.0), [], 0)["steady_chars_per_s"] == 32.0
