"""The supervisor's end of the fork server (:mod:`omni_tasks.ops.zygote`): start it, ask it for children, hear of their exits.

A child forked by the server is not the supervisor's own child, so it cannot be waited for; the
server reports each exit instead, and :class:`ForkedProcess` gives the supervisor the part of
``subprocess.Popen`` it uses (``pid``, ``poll``, ``wait``, ``returncode``). Used from one thread.

If the server dies, its children die with it (each gets SIGTERM); their process groups are
killed too and each reports code -9, so the supervisor restarts them, through a new server. A
server that dies twice before forking anything is given up (:attr:`ForkServer.broken`): the
supervisor starts its children as plain processes again.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

from omni_tasks.ops.forkwire import die_with_parent, receive, send

#: Seconds to wait for the server to fork a child (its first answer comes after its imports).
ANSWER_TIMEOUT_S = 60.0


class ForkedProcess:
    """A child forked by the server, as the supervisor sees it."""

    def __init__(self, server: ForkServer, name: str) -> None:
        self._server = server
        self.name = name
        self._pid: int | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        """Its pid (waits for the server's answer; 0 if the server never gave one)."""
        if self._pid is None and self.returncode is None:
            self._server.receive(until=lambda: self._pid is not None or self.returncode is not None, timeout_s=ANSWER_TIMEOUT_S)
        return self._pid or 0

    def poll(self) -> int | None:
        self._server.receive(until=lambda: False, timeout_s=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._server.receive(until=lambda: self.returncode is not None, timeout_s=timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.name, timeout or 0)
        return self.returncode


class ForkServer:
    """Runs ``python -m omni_tasks.ops.zygote`` with the children's environment; forks children through it."""

    def __init__(
        self, env: dict[str, str], *, on_launch: Callable[[subprocess.Popen[bytes]], None] | None = None, program: list[str] | None = None
    ) -> None:
        self._env = env
        #: The server's command line, its end of the socketpair appended (another one in tests: a server that fails).
        self._program = program or [sys.executable, "-m", "omni_tasks.ops.zygote"]
        self._on_launch = on_launch
        self.process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._awaiting: deque[ForkedProcess] = deque()
        self._children: dict[int, ForkedProcess] = {}
        self._forked_any = False
        self._early_deaths = 0

    @property
    def broken(self) -> bool:
        """The server died twice before forking anything: start the children without it."""
        return self._early_deaths >= 2

    def launch(self) -> None:
        """Start the server now (it imports while the caller goes on); a no-op if it runs or cannot be started."""
        if self._channel is not None or self.broken:
            return
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:  # no such sockets here: the children start as plain processes
            self._early_deaths = 2
            return
        with theirs:
            self.process = subprocess.Popen(  # noqa: S603 - our own module, no user input
                [*self._program, str(theirs.fileno())],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self._on_launch else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        self._channel = ours
        self._forked_any = False
        if self._on_launch is not None:
            self._on_launch(self.process)

    def spawn(self, name: str, args: list[str], env: dict[str, str], output: int) -> ForkedProcess:
        """Ask for a child running ``omni ARGS``, its stdout and stderr on ``output``; the answer is read later."""
        self.launch()
        child = ForkedProcess(self, name)
        self._awaiting.append(child)
        try:
            if self._channel is None:
                raise ConnectionError("the fork server could not be started")
            send(self._channel, {"name": name, "args": args, "env": env}, (output,))
        except OSError:
            self._lost()
        return child

    def receive(self, *, until: Callable[[], bool], timeout_s: float | None) -> None:
        """Read the server's messages until ``until()`` holds or ``timeout_s`` passes (None: no limit; 0: what is there)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._channel is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._channel], [], [], left)[0]:
                return
            try:
                message, fds = receive(self._channel)
            except OSError:
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            if message is None:
                self._lost()
                return
            self._handle(message)
            if until():
                return

    def _handle(self, message: dict[str, object]) -> None:
        if "pid" in message:
            child = self._awaiting.popleft()
            child._pid = int(str(message["pid"]))
            self._children[child._pid] = child
            self._forked_any = True
        elif "exited" in message:
            gone = self._children.pop(int(str(message["exited"])), None)
            if gone is not None:
                gone.returncode = int(str(message["code"]))

    def _lost(self) -> None:
        """The server is gone: so are its children (SIGTERM from the kernel); kill what is left of their groups."""
        if not self._forked_any:
            self._early_deaths += 1
        for child in [*self._children.values(), *self._awaiting]:
            if child._pid:
                try:
                    os.killpg(child._pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            child.returncode = -signal.SIGKILL
        self._children.clear()
        self._awaiting.clear()
        self.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Hang up: the server exits (after its children, which the supervisor stopped first)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            self.process = None
