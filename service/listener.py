"""Closing the listening socket without resetting anyone (stdlib only).

Every process of the server holds the same listening socket (bound in the main process, inherited by
the forked API servers). When its last descriptor closes, the kernel resets every connection still in
its accept queue, and until then it goes on completing handshakes that nobody may accept any more:
that is how late arrivals during a shutdown got reset. So at the end of the drain the main process
first makes the socket drop new SYNs (a classic BPF filter that accepts nothing: clients retry their
SYN and, once the socket is gone, are refused, which is not a reset), then gives the API servers
ACCEPT_GRACE_S to accept what is already queued and answer it (503 + Retry-After, Connection: close),
and only then lets LitServe stop them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
import sys
import time

log = logging.getLogger("charlm.listener")

ACCEPT_GRACE_S = 0.5  # the API servers accept and answer what is queued within this (they poll at once)
SO_ATTACH_FILTER = 26
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: keep 0 bytes of every packet


def listening_sockets(port: int) -> list[socket.socket]:
    """This process's listening TCP sockets on `port` (duplicated descriptors; close them after use)."""
    found: list[socket.socket] = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            try:
                fd = int(name)
                if not os.path.islink(f"/proc/self/fd/{fd}") or "socket:" not in os.readlink(f"/proc/self/fd/{fd}"):
                    continue
                sock = socket.socket(fileno=os.dup(fd))
            except (OSError, ValueError):
                continue
            try:
                is_listener = sock.type == socket.SOCK_STREAM and sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_ACCEPTCONN
                )
                if is_listener and sock.getsockname()[1] == port:
                    found.append(sock)
                    continue
            except (OSError, IndexError, TypeError):
                pass
            sock.close()
    return found


def drop_new_connections(sock: socket.socket) -> bool:
    """Make a listening socket ignore new SYNs (for every process sharing it); True if it worked."""
    if sys.platform != "linux":
        return False
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("could not stop new connections on the listener: %s", exc)
        return False
    return True


def stop_accepting(port: int, grace_s: float = ACCEPT_GRACE_S) -> None:
    """New connections to `port` are no longer completed; those already queued get `grace_s` to be
    accepted and answered by the API servers (still running)."""
    socks = listening_sockets(port)
    try:
        dropped = [s for s in socks if drop_new_connections(s)]
        if dropped:
            log.info("listener closed to new connections; answering those already queued")
            time.sleep(grace_s)
    finally:
        for s in socks:
            s.close()
