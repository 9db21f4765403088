"""The cancellation board (service/cancels.py): what the API servers post reaches every worker once, in
order; a replacement worker still sees what was posted before it started; and a worker killed while
reading leaves nothing locked or torn for the next one (real processes, spawned as LitServe does)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from service.cancels import RING, CancelBoard

_CTX = multiprocessing.get_context("spawn")


def test_every_worker_reads_each_posted_id_once_in_order() -> None:
    board = CancelBoard(2)
    for rid in ("cmpl-a", "chatcmpl-" + "f" * 32, "gen-c"):
        board.post(rid)
    assert board.read(0) == ["cmpl-a", "chatcmpl-" + "f" * 32, "gen-c"]
    assert board.read(0) == []
    board.post("gen-d")
    assert board.read(0) == ["gen-d"]
    assert board.read(1) == ["cmpl-a", "chatcmpl-" + "f" * 32, "gen-c", "gen-d"]  # its own place


def test_a_new_reader_starts_a_ring_back_and_one_left_behind_gets_the_newest() -> None:
    board = CancelBoard(1)
    for i in range(RING + 10):
        board.post(f"gen-{i}")
    board.place.clear()  # as a spawned replacement has it: the shared arrays, no place of its own yet
    assert board.read(0) == [f"gen-{i}" for i in range(10, RING + 10)]
    board.post("gen-last")
    assert board.read(0) == ["gen-last"]


def _read_forever(board: CancelBoard, out: object) -> None:
    while True:
        for rid in board.read(0):
            out.send(rid)  # type: ignore[attr-defined]


def test_a_reader_killed_while_reading_leaves_the_board_whole_for_the_next() -> None:
    board = CancelBoard(1)
    mine, theirs = _CTX.Pipe()
    first = _CTX.Process(target=_read_forever, args=(board, theirs), daemon=True)
    first.start()
    board.post("gen-before")
    assert mine.poll(30) and mine.recv() == "gen-before"
    for i in range(200):  # it reads all the while
        board.post(f"gen-{i}")
    os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
    first.join(10)
    while mine.poll(0.2):
        mine.recv()
    t0 = time.monotonic()
    board.post("gen-after")  # the API servers' side takes its lock as before: nothing was held
    assert time.monotonic() - t0 < 1.0
    second = _CTX.Process(target=_read_forever, args=(board, theirs), daemon=True)
    second.start()
    seen = []
    while mine.poll(30):
        seen.append(mine.recv())
        if seen[-1] == "gen-after":
            break
    second.kill()
    assert seen[-1] == "gen-after" and seen[0] == "gen-before"  # a ring back: what came before, then the new
