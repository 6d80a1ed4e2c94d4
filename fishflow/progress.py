"""How far a run is: counts, a total from a cheap estimate, and an ETA, as one line of text.

Used by the CLI for its progress bar (on a terminal) and for the line it prints every so often
when stderr is not a terminal (a scheduler's log, `nohup`, CI), and by the flow for the lines it
logs when no CLI watches it (a deployment's run on a worker: ``ProgressLog``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """4m10s, 1h02m, 35s."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Tally:
    """Items finished so far, by status; thread-safe (items finish on the run's event loop,
    lines are written from a timer thread)."""

    def __init__(
        self,
        total: int | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        already: int = 0,
    ) -> None:
        self.total = total
        self.already = already  # finished before this session (a resumed run): not in the pace
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self._clock = clock
        self._first: float | None = None  # when the first item finished: start-up excluded
        self._lock = threading.Lock()

    def add(self, status: str) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if self._first is None:
                self._first = self._clock()

    @property
    def done(self) -> int:
        return self.already + sum(self.counts.values())

    def eta_s(self) -> float | None:
        """Seconds left at the pace since the first item finished, when there is a total."""
        with self._lock:
            done, first = sum(self.counts.values()), self._first
        if not self.total or first is None or done < 2 or self.already + done >= self.total:
            return None
        elapsed = self._clock() - first
        if elapsed <= 0:
            return None
        return (self.total - self.already - done) * elapsed / (done - 1)

    def line(self) -> str:
        """fishflow: 1,200 of 10,000 items (12%), 1,180 ok, 20 failed, ETA 4m10s"""
        with self._lock:
            c = dict(self.counts)
        done = self.already + sum(c.values())
        if self.total:
            head = f"{done:,} of {self.total:,} items ({min(100, 100 * done // self.total)}%)"
        else:
            head = f"{done:,} items"
        parts = [head] + ([f"{self.already:,} earlier"] if self.already else [])
        parts.append(f"{c['ok']:,} ok")
        if c["skipped"]:
            parts.append(f"{c['skipped']:,} skipped")
        parts.append(f"{c['failed']:,} failed")
        if (eta := self.eta_s()) is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return "fishflow: " + ", ".join(parts)


class Ticker:
    """Calls `emit` every `interval_s` seconds from a daemon thread until stopped."""

    def __init__(self, interval_s: float, emit: Callable[[], None]) -> None:
        self._interval = interval_s
        self._emit = emit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fishflow-progress", daemon=True)

    def start(self) -> None:
        """Start ticking; again: nothing (a run may announce its start more than once)."""
        if self._thread.ident is None:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class ProgressLog:
    """A run's progress as log lines, for a run no CLI watches (a deployment's, on a worker):
    one when its items start, then one every `interval_s`, with the chunks placed and the
    audio made so far, so that an hours-long item is not silent either."""

    def __init__(
        self,
        tally: Tally,
        placed: Callable[[], tuple[int, float]],  # chunks placed, seconds of audio made
        log: Callable[[str], None],
        interval_s: float,
    ) -> None:
        self.tally = tally
        self._placed = placed
        self._log = log
        self._ticker = Ticker(interval_s, self.say)

    def line(self) -> str:
        """fishflow: 3 of 41 items (7%), 3 ok, 0 failed, ETA 38m12s; 212 chunks, 1h02m of audio"""
        chunks, audio_s = self._placed()
        return f"{self.tally.line()}; {chunks:,} chunks, {format_duration(audio_s)} of audio"

    def say(self) -> None:
        self._log(self.line())

    def start(self) -> None:
        self.say()  # now, before any item: the run has begun, with its total
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
