"""Slots of a server's in-flight limit shared with other runs, held by leases that expire.

The limit itself lives elsewhere (a Prefect global concurrency limit, see ``tasks/limits.py``);
this module decides, for one run and one server, when to take a slot, how long to keep it and
when to give it back. The rules, and why:

- **A slot is used only while its lease is live.** A lease lives ``lease_s`` from the moment
  the request that took or renewed it was *sent* (the server's clock starts later, so that is
  the safe side). Leases are renewed every ``lease_s / 3``; one that is refused (gone) is
  dropped at once, one that cannot be renewed for ``2 * lease_s / 3`` is dropped before it can
  expire. The pool never has more requests in flight than the leases it holds; a dropped lease
  only stops new requests (one already sent cannot be recalled).
- **Leases belong to the run, not to a Prefect task run**: one asyncio task per server takes,
  renews and gives them back for as long as the pool lives. A crashed run stops renewing, so
  its slots come back when the lease expires (60 s, the shortest Prefect allows, plus up to
  15 s until Prefect's repossessor runs).
- **Waiting costs no log line and no per-request call.** A full limit answers "none free" and
  the run asks again after about 1 s (0.7-1.3 s, jittered). A waiting run also
  takes a lease on the server's *waiting* limit, which is how other runs learn that someone
  waits: Prefect keeps no queue of waiters.
- **Hand-over, not starvation.** A run that has held a slot for ``tenure_s`` and sees other runs
  waiting gives back slots above its fair share (``limit // runs wanting``; with more runs than
  slots every holder rotates). The slot is given back when a request on it finishes, and the run
  does not ask for it again for 1.5-3 s, so a waiter (asking every ~1 s) takes it. Alone, a run
  never gives up a slot it uses: the hand-over costs nothing unless someone waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class NoSharedLimit(Exception):
    """The server's shared limit does not exist (any more): the run keeps to its own limit."""


class SharedLimit(Protocol):
    """One server's limit shared by every run that uses it, as this run reaches it."""

    size: int  # slots in the limit
    lease_s: float  # how long a lease lives without renewal

    async def take(self) -> str | None:
        """A lease on one slot if one is free now, else None. Never waits for one."""
        ...

    async def renew(self, lease_id: str) -> bool:
        """Extend a lease by ``lease_s``; False when it is gone (expired or revoked)."""
        ...

    async def give_back(self, lease_id: str) -> None:
        """Free a lease's slot (a lease already gone is fine)."""
        ...

    async def announce_waiting(self) -> str | None:
        """A lease that counts this run among the server's waiters (None if that failed)."""
        ...

    async def waiting(self) -> int:
        """How many runs wait for a slot of this server now, this one included if announced."""
        ...


class SlotLeaser(Protocol):
    """Where the shared limits live. ``shared_limit`` returns None for a server without one
    (the run then keeps to its local limit only, and says so once)."""

    logger: logging.Logger | logging.LoggerAdapter[Any]

    async def shared_limit(self, server_url: str) -> SharedLimit | None: ...

    async def aclose(self) -> None: ...


class LeaseLedger:
    """The ids of the leases a run holds, kept in a small file for whoever has to give them back
    when the run's process cannot: a run killed by its worker after a cancel, or crashed, would
    otherwise hold its slots until they expire (a minute and more, every other run waiting).

    A safety net, never a reason to stop a run: a file that cannot be written is given up on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held: set[str] = set()
        self._broken = False

    def add(self, lease_id: str) -> None:
        self._held.add(lease_id)
        self._write()

    def discard(self, lease_id: str) -> None:
        if lease_id in self._held:
            self._held.discard(lease_id)
            self._write()

    def close(self) -> None:
        """The run gave its leases back itself: nothing is left for anyone else to do."""
        self._held.clear()
        self._write()

    def _write(self) -> None:
        if self._broken:
            return
        try:
            if not self._held:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part = self.path.with_suffix(".tmp")
            part.write_text(json.dumps(sorted(self._held)))
            os.replace(part, self.path)  # a reader never sees half a file
        except OSError:
            self._broken = True

    @staticmethod
    def read(path: Path) -> list[str]:
        """The lease ids a ledger file holds (none when it is gone or unreadable)."""
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return [str(lease_id) for lease_id in held] if isinstance(held, list) else []


@dataclass
class _Lease:
    lease_id: str
    taken_at: float  # monotonic
    sent_at: float  # when the request that took or last renewed it was sent
    retry_at: float = 0.0  # after a failed renewal: not before this


UNLIMITED = sys.maxsize


class ServerSlots:
    """The slots one run holds of one server's shared limit.

    The pool reads ``usable`` (requests it may have in flight on the server), calls ``want()``
    when chunks wait, ``request_done()`` after each request and ``trim()`` when idle.
    Everything that talks to the shared limit runs in one asyncio task.
    """

    def __init__(
        self,
        leaser: SlotLeaser,
        server_url: str,
        *,
        wants_more: Callable[[], bool],
        chunks_waiting: Callable[[], bool],
        in_flight: Callable[[], int],
        on_change: Callable[[], None],
        tenure_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.leaser = leaser
        self.url = server_url
        self.tenure_s = tenure_s
        self._wants_more = wants_more
        self._chunks_waiting = chunks_waiting
        self._in_flight = in_flight
        self._on_change = on_change
        self._rng = rng or random.Random()
        self.limit: SharedLimit | None = None
        self.resolved = False  # whether we know if the server has a shared limit
        self.active: list[_Lease] = []  # slots requests may use
        self.retiring: list[_Lease] = []  # handed over: freed when a request on it ends
        self._waiter: _Lease | None = None  # our lease on the server's waiting limit
        self._pause_until = 0.0  # no taking before this (after a hand-over)
        self._next_check = 0.0  # next look at the waiting count
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._warned: set[str] = set()
        self.others_waiting = 0  # at the last look
        self.handed_over = 0
        self.lost = 0

    # -- what the pool reads and calls -----------------------------------------------------------
    @property
    def usable(self) -> int:
        if self.resolved and self.limit is None:
            return UNLIMITED
        return len(self.active)

    @property
    def held(self) -> int:
        return len(self.active) + len(self.retiring)

    def want(self) -> None:
        """Chunks wait for this server: make sure the leasing task is running and awake."""
        if self._closing or (self.resolved and self.limit is None):
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._kick.set()

    def request_done(self) -> None:
        """A request ended: free handed-over slots nobody is using any more, and, while other
        runs wait, idle ones too (rather than after the pool's idle delay)."""
        while self.retiring and self._in_flight() <= self.held - 1:
            lease = self.retiring.pop(0)
            self._give_back(lease)
            self._pause_until = time.monotonic() + self._rng.uniform(1.5, 3.0)
        if self.others_waiting and not self._chunks_waiting():
            while self.active and self.held > self._in_flight():
                self._give_back(self.active.pop())

    def trim(self) -> None:
        """Give back slots nobody here is using, so other runs can have them."""
        self.request_done()
        while self.active and self.held > self._in_flight():
            self._give_back(self.active.pop())

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            # Let a take in progress finish (a lease granted to a cancelled call would hold its
            # slot for nobody until it expires); the task gives it back and ends.
            self._kick.set()
            # asyncio.wait, not wait_for: the leasing task may already be cancelled (a
            # cancelled run: asyncio.run cancels every task at once), and its CancelledError
            # must not skip the give-backs below, or the run's slots stay held until their
            # leases expire, stalling every other run on the server for a minute.
            await asyncio.wait({self._task}, timeout=5.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for lease in [*self.active, *self.retiring, *([self._waiter] if self._waiter else [])]:
            self._give_back(lease)
        self.active, self.retiring, self._waiter = [], [], None
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- the leasing task ----------------------------------------------------------------------
    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.leaser.logger.warning(message, *args)

    def _give_back(self, lease: _Lease) -> None:
        if self.limit is None:
            return
        task = asyncio.create_task(self._quietly(self.limit.give_back(lease.lease_id)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        except Exception as exc:  # the lease expires on its own
            self._warn_once("give-back", "could not give back a slot of %s: %s", self.url, exc)

    async def _run(self) -> None:
        for attempt in itertools.count():
            try:
                self.limit = await self.leaser.shared_limit(self.url)
                break
            except Exception as exc:  # sending without the shared limit could overrun it
                self._warn_once(
                    "resolve", "cannot reach the shared limit of %s (%s); retrying", self.url, exc
                )
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        self.resolved = True
        if self.limit is None:
            self._on_change()  # the server's local limit applies from now on
            return
        limit = self.limit
        failures = 0
        while not self._closing:
            self._kick.clear()  # a want() from here on wakes the wait below at once
            now = time.monotonic()
            await self._renew_due(limit, now)
            await self._hand_over_if_waited_for(limit, now)
            delay = self._until_next_renewal(limit)
            if self._wants_more() and self.held < limit.size:
                if now < self._pause_until:
                    delay = min(delay, self._pause_until - now)
                else:
                    try:
                        got = await self._take(limit)
                        failures = 0
                    except NoSharedLimit:
                        self._warn_once(
                            "gone",
                            "shared limit of %s is gone: keeping to the local limit",
                            self.url,
                        )
                        self.limit, self.active, self.retiring = None, [], []
                        self._on_change()
                        return
                    except Exception as exc:
                        failures += 1
                        self._warn_once(
                            "take",
                            "cannot reach the shared limit of %s (%s); retrying",
                            self.url,
                            exc,
                        )
                        got = False
                        delay = min(delay, 0.5 * 2**failures, limit.lease_s / 6)
                    if got:
                        continue  # take the next one at once while chunks still wait
                    if failures == 0:
                        # Full: ask again in about a second (a hand-over pause is longer).
                        delay = min(delay, self._rng.uniform(0.7, 1.3))
            elif self._waiter is not None:
                waiter, self._waiter = self._waiter, None
                self._give_back(waiter)
            if self.active:  # the next look at who waits
                oldest = min(lease.taken_at for lease in self.active)
                check = max(self._next_check, oldest + self.tenure_s)
                delay = min(delay, max(0.1, check - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(0.01, delay))

    async def _take(self, limit: SharedLimit) -> bool:
        sent = time.monotonic()
        lease_id = await limit.take()
        if lease_id is None:
            if self._waiter is None:
                waiter_id = await limit.announce_waiting()
                if waiter_id is not None:
                    self._waiter = _Lease(waiter_id, sent, sent)
            return False
        if self._closing:
            await limit.give_back(lease_id)
            return False
        self.active.append(_Lease(lease_id, sent, sent))
        self._on_change()
        return True

    def _until_next_renewal(self, limit: SharedLimit) -> float:
        leases = [*self.active, *self.retiring, *([self._waiter] if self._waiter else [])]
        if not leases:
            return 60.0
        due = min(
            min(max(lease.sent_at + limit.lease_s / 3, lease.retry_at), self._deadline(lease))
            for lease in leases
        )
        return max(0.01, due - time.monotonic())

    def _deadline(self, lease: _Lease) -> float:
        """When an unrenewed lease stops being used: a third of its life before it expires."""
        assert self.limit is not None
        return lease.sent_at + 2 * self.limit.lease_s / 3

    async def _renew_due(self, limit: SharedLimit, now: float) -> None:
        for lease in [*self.active, *self.retiring, *([self._waiter] if self._waiter else [])]:
            if now >= self._deadline(lease):
                self._drop(lease)  # stop using it well before it can expire unseen
                continue
            if now - lease.sent_at < limit.lease_s / 3 or now < lease.retry_at:
                continue
            sent = time.monotonic()
            try:
                alive = await limit.renew(lease.lease_id)
            except Exception as exc:
                lease.retry_at = time.monotonic() + min(2.0, limit.lease_s / 10)
                self._warn_once("renew", "cannot renew slots of %s (%s); retrying", self.url, exc)
                continue
            if alive:
                lease.sent_at = sent
            else:
                self._drop(lease)

    def _drop(self, lease: _Lease) -> None:
        """A lease that is (or may be) gone: no new request may count on it."""
        if lease is self._waiter:
            self._waiter = None
            return
        self.lost += 1
        for held in (self.active, self.retiring):
            if lease in held:
                held.remove(lease)
        self.leaser.logger.warning(
            "lost a slot of %s (its lease could not be renewed): sending less", self.url
        )

    async def _hand_over_if_waited_for(self, limit: SharedLimit, now: float) -> None:
        if not self.active or now < self._next_check:
            return
        if now - min(lease.taken_at for lease in self.active) < self.tenure_s:
            return
        self._next_check = now + self.tenure_s / 2
        try:
            others = await limit.waiting() - (1 if self._waiter is not None else 0)
        except Exception:
            return  # the renewals report an unreachable API
        self.others_waiting = others
        if others <= 0:
            return
        fair_share = limit.size // (others + 1)  # 0 when runs outnumber slots: all rotate
        if len(self.active) > fair_share:
            oldest = min(self.active, key=lambda lease: lease.taken_at)
            self.active.remove(oldest)
            self.retiring.append(oldest)
            self.handed_over += 1
            self.request_done()  # at once if the slot is idle, else when its request ends
