"""A worker's SIGTERM (how a process worker cancels a flow run) stops the run's batch loop.

Prefect's engine turns SIGTERM into a `TerminationSignal` raised in the main thread wherever it
is at that instant. Under asyncio that is whichever task happens to be running. Only when it is
the flow's own task, or the loop is idle, does the flow hear of it; in another task (a batch, a
request to a server) asyncio keeps the exception in that task and the loop goes on: the run went
on until its worker killed it 30 s later, its servers' shared slots still held, and a batch's
task run that the signal hit said "Crash detected!".

While `SigtermWatch` is entered, SIGTERM raises nothing anywhere: the interpreter writes the
signal's number to a socket the loop reads (`signal.set_wakeup_fd`), and the watch cancels the
task that entered it, once. Prefect's handler is back as soon as the watch exits. (While it is
away, Prefect's control channel does not acknowledge a cancel; the worker then sends the same
SIGTERM unacknowledged, and ends the run Cancelled once its process has exited: the run's own
`Cancelled` state, after it gave its slots back, or the worker's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from types import TracebackType
from typing import Any

from prefect.exceptions import TerminationSignal


class SigtermWatch:
    """``async with SigtermWatch() as watch:`` around a run's batch loop; the loop's stop path
    calls ``watch.stopping()`` first, so a SIGTERM heard later does not cut its tidying short."""

    def __init__(self) -> None:
        self.heard = False
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False
        self._cancelled = False
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1
        self._previous_handler: Any = None

    def stopping(self) -> None:
        """The run is stopping already (Ctrl-C, or this watch's cancel): a SIGTERM from now on
        leaves its tidying alone."""
        self._stopping = True

    async def __aenter__(self) -> SigtermWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread: nothing to watch
        self._task = asyncio.current_task()
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:
            reader.close()
            writer.close()
            return self
        self._sockets = (reader, writer)
        asyncio.get_running_loop().add_reader(reader.fileno(), self._on_wakeup)
        # Nothing raised in Python: the interpreter still writes the number to the socket.
        self._previous_handler = signal.signal(signal.SIGTERM, _heard_later)
        return self

    def _on_wakeup(self) -> None:
        assert self._sockets is not None
        try:
            numbers = self._sockets[0].recv(4096)
        except OSError:
            return
        if self._previous_fd != -1:  # whoever watched before us hears them too
            with contextlib.suppress(OSError):
                os.write(self._previous_fd, numbers)
        if signal.SIGTERM not in numbers:
            return
        self.heard = True
        task = self._task
        if not self._stopping and task is not None and not task.done():
            self._stopping = self._cancelled = True
            task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sockets is not None:
            reader, writer = self._sockets
            self._sockets = None
            signal.signal(signal.SIGTERM, self._previous_handler)
            asyncio.get_running_loop().remove_reader(reader.fileno())
            signal.set_wakeup_fd(self._previous_fd)
            reader.close()
            writer.close()
        if not self._cancelled or self._task is None:
            return
        self._task.uncancel()  # it was this watch's, and it has been dealt with here
        if isinstance(exc, asyncio.CancelledError):
            # Stopped by the signal, as Prefect's handler would have stopped it had it landed
            # in this task: the engine ends the run Cancelled (or Crashed, for a bare SIGTERM).
            raise TerminationSignal(signal=signal.SIGTERM) from exc


def _heard_later(signum: int, frame: Any) -> None:
    """SIGTERM's handler while a watch is entered: the watch hears it from the loop."""
