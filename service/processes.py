"""CPU time and resident memory of every charlm process, read from /proc when /metrics is scraped.

prometheus_client's own process collector sees only the process it runs in, and in multiprocess mode it
is off; a server here is a main process, its HTTP (uvicorn) processes, LitServe's manager and the
inference workers. The HTTP process that answers /metrics is a child of the main process, so its
siblings are found by parent pid; the workers are told apart by the pids they post at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, resident bytes) of `pid`, or None when it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE


def server_processes(worker_pids: Iterable[int]) -> dict[int, str]:
    """pid -> role (main, api, worker, other) of the server this HTTP process belongs to."""
    me, main = os.getpid(), os.getppid()
    workers = set(worker_pids)
    roles = {main: "main", me: "api"}
    if not PROC.is_dir():
        return roles
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) not in roles:
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] == main:
                pid = int(entry.name)
                roles[pid] = "worker" if pid in workers else "other"
    for pid in workers:
        roles.setdefault(pid, "worker")
    # Sibling uvicorn processes cannot be told from LitServe's manager by their stat; the extra HTTP
    # servers (--api-servers > 1) show as "other" beside it.
    return roles


class ProcessCollector(Collector):
    def __init__(self, roles: dict[int, str]):
        self.roles = roles

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "charlm_process_cpu_seconds", "CPU time (user + system) of each server process", labels=["pid", "role"]
        )
        rss = GaugeMetricFamily(
            "charlm_process_resident_memory_bytes", "Resident memory of each server process", labels=["pid", "role"]
        )
        for pid, role in sorted(self.roles.items()):
            stat = _stat(pid)
            if stat is not None:
                cpu.add_metric([str(pid), role], stat[1])
                rss.add_metric([str(pid), role], stat[2])
        yield cpu
        yield rss
