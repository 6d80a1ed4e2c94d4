"""One writer per output: a leased lock kept in the output itself.

Two runs on the same ``out`` would synthesise the same items twice (each decides what to do from
the manifests before the other has written any), so a run takes ``<out>/.fishflow/lock`` before
it writes anything and holds it until it ends. The lock is a small JSON record (holder, run id,
host, pid, expiry) that the holder renews every ``ttl_s / 3``; a holder that crashed stops
renewing, and its lock is free once ``expires_at`` has passed. On the same machine a lock whose
process is gone is free at once (checked by pid, within the same pid namespace only).

Atomicity comes from the store: S3 conditional writes (``If-None-Match: *`` to create,
``If-Match: <etag>`` to renew, take over or release), and on a local disk an exclusive
``flock`` around each read-decide-write. Expiry compares wall clocks, so machines sharing an S3
output need clocks in step (NTP) to well within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from fishflow.errors import FishflowError, OutputInUse
from fishflow.storage import Store

LOCK_KEY = ".fishflow/lock"
logger = logging.getLogger("fishflow.lock")


def _pid_namespace() -> str | None:
    """Pids mean the same process only inside one pid namespace (containers have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class LockRecord:
    holder: str  # unique per lock taken: two runs in one process hold different ones
    run_id: str
    host: str
    pid: int
    pid_namespace: str | None
    acquired_at: float  # epoch seconds
    expires_at: float  # epoch seconds; 0 once released

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockRecord | None:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None  # unreadable: treated as free, like an expired lock

    def free(self, now: float) -> bool:
        """Released, expired, or held by a process of this machine that no longer exists."""
        if self.expires_at <= now:
            return True
        ns = _pid_namespace()
        if ns is None or self.host != socket.gethostname() or self.pid_namespace != ns:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires_at, UTC).strftime("%H:%M:%S UTC")
        return f"run {self.run_id} (host {self.host}, pid {self.pid}; lock valid until {until})"


class OutputLock:
    """The lock of one output, for one run. Blocking calls: run them in a thread."""

    def __init__(self, store: Store, *, run_id: str, ttl_s: float = 180.0) -> None:
        self.store = store
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self._record_store = store.versioned(LOCK_KEY, "application/json")
        self._tag: str | None = None
        self._held: LockRecord | None = None  # the version `_tag` names
        self._acquired_at = 0.0
        self.took_over: LockRecord | None = None  # the stale lock this one replaced, if any

    def _record(self, now: float) -> bytes:
        self._held = LockRecord(
            holder=self.holder,
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_namespace=_pid_namespace(),
            acquired_at=self._acquired_at or now,
            expires_at=now + self.ttl_s,
        )
        return self._held.to_bytes()

    def acquire(self, *, wait_s: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lock, waiting up to `wait_s` for its holder; OutputInUse if it stays held."""
        deadline = time.monotonic() + wait_s
        while True:
            now = time.time()
            current = self._record_store.read()
            if current is None:
                self._tag = self._record_store.create(self._record(now))
            else:
                record = LockRecord.from_bytes(current[0])
                if record is None or record.free(now):
                    self._tag = self._record_store.replace(self._record(now), current[1])
                    if self._tag is not None and record is not None and record.expires_at > 0:
                        self.took_over = record
                elif time.monotonic() >= deadline:
                    where = self.store.root
                    hint = " (or pass --wait-for-lock SECONDS)" if wait_s == 0 else ""
                    raise OutputInUse(
                        f"output {where} is being written by {record.describe()}; "
                        f"run again when it has finished{hint}",
                        holder_run_id=record.run_id,
                    )
                else:
                    left = deadline - time.monotonic()
                    sleep(max(0.2, min(5.0, left, record.expires_at - now)))
                    continue
            if self._tag is not None:
                self._acquired_at = now
                return
            # Lost a race to another run: look again at once.

    def renew(self) -> bool:
        """Extend the lock by ttl_s; False if it is no longer ours (it expired and was taken)."""
        if self._tag is None:
            return False
        self._tag = self._record_store.replace(self._record(time.time()), self._tag)
        return self._tag is not None

    def release(self) -> None:
        if self._tag is not None and self._held is not None:
            tag, self._tag = self._tag, None
            # Where only a write is atomic (S3), the lock is left released: expired at once.
            released = LockRecord(**{**asdict(self._held), "expires_at": 0.0})
            self._record_store.remove(tag, tombstone=released.to_bytes())


@contextlib.asynccontextmanager
async def held_output_lock(
    store: Store,
    *,
    run_id: str,
    ttl_s: float,
    wait_s: float,
    on_lost: Callable[[FishflowError], None],
) -> AsyncIterator[OutputLock]:
    """Hold the output's lock for the block, renewing it every ttl_s / 3.

    `on_lost` is called once if the lock cannot be kept (another run took it after this one
    failed to renew in time): the run must stop writing.
    """
    lock = OutputLock(store, run_id=run_id, ttl_s=ttl_s)
    await asyncio.to_thread(lock.acquire, wait_s=wait_s)
    if lock.took_over is not None:
        logger.warning("took over the expired output lock of %s", lock.took_over.describe())

    async def keep() -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                if not await asyncio.to_thread(lock.renew):
                    break
                renewed = time.monotonic()
            except FishflowError:
                if time.monotonic() - renewed < ttl_s * 2 / 3:
                    continue  # the store hiccuped: the lock still holds for a while
                break
        on_lost(OutputInUse(f"lost the lock of output {store.root}: another run may be writing it"))

    keeper = asyncio.create_task(keep())
    try:
        yield lock
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        with contextlib.suppress(FishflowError):
            await asyncio.to_thread(lock.release)
