"""What the supervisor, the fork server and its children share: the messages between them, and the kernel's links.

Messages travel on a ``SOCK_SEQPACKET`` socketpair, one JSON object each, descriptors attached
with SCM_RIGHTS (:func:`send`, :func:`receive`); the conversation is described in
:mod:`omni_tasks.ops.zygote`.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import signal
import socket
from typing import Any

#: The largest message: a child's environment is a few kilobytes.
MAX_MESSAGE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def die_with_parent() -> None:  # pragma: no cover - runs in a child between fork and exec (or run)
    """Ask the kernel for SIGTERM when the parent ends (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def send(channel: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """One message, with descriptors passed along (SCM_RIGHTS)."""
    data = json.dumps(message).encode()
    if fds:
        channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        channel.send(data)


def receive(channel: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; ``(None, [])`` once the other end is closed."""
    data, fds, _flags, _address = socket.recv_fds(channel, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def name_process(name: str) -> None:
    """The name `ps -e`, top and /proc/PID/comm show (15 bytes at most)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_NAME, name.encode()[:15])
    except OSError:
        pass
