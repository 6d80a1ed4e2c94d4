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
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fishflow.errors import FishflowError, OutputInUse, StorageError
from fishflow.storage import LocalStore, S3Store, Store, wrap_s3_error

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


class _Backend(Protocol):
    """Where the record lives. A tag identifies one version of it."""

    def read(self) -> tuple[bytes, str] | None: ...
    def create(self, data: bytes) -> str | None:
        """The new tag, or None if a record exists."""
        ...

    def replace(self, data: bytes, tag: str) -> str | None:
        """The new tag, or None if the record is no longer the version `tag`."""
        ...

    def release(self, tag: str) -> None:
        """Remove the record if it is still the version `tag`."""
        ...


class _LocalBackend:
    def __init__(self, store: LocalStore) -> None:
        self.path = store.uri(LOCK_KEY)
        self.guard = self.path + ".guard"

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.path}: {exc.strerror}", fatal=True) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds: read, decide, write
            yield
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror}", fatal=True) from None
        finally:
            os.close(fd)

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
        return hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        with self._guarded():
            return self._read()

    def create(self, data: bytes) -> str | None:
        with self._guarded():
            return None if self._read() is not None else self._write(data)

    def replace(self, data: bytes, tag: str) -> str | None:
        with self._guarded():
            current = self._read()
            return self._write(data) if current is not None and current[1] == tag else None

    def release(self, tag: str) -> None:
        with self._guarded():
            current = self._read()
            if current is not None and current[1] == tag:
                os.unlink(self.path)


class _S3Backend:
    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.key = store._key(LOCK_KEY)

    def _put(self, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        extra: dict[str, Any] = {"ServerSideEncryption": self.store.sse} if self.store.sse else {}
        try:
            response = self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Body=data,
                ContentType="application/json",
                **extra,
                **condition,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            # 412: not the version we expected; 409: a concurrent conditional write won;
            # 404 on If-Match: the record was removed meanwhile.
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412"):
                return None
            raise wrap_s3_error(exc, self.store.uri(LOCK_KEY)) from None
        except Exception as exc:
            raise wrap_s3_error(exc, self.store.uri(LOCK_KEY)) from None
        return str(response["ETag"])

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise wrap_s3_error(exc, self.store.uri(LOCK_KEY)) from None
        except Exception as exc:
            raise wrap_s3_error(exc, self.store.uri(LOCK_KEY)) from None
        return obj["Body"].read(), str(obj["ETag"])

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, tag: str) -> str | None:
        return self._put(data, IfMatch=tag)

    def release(self, tag: str) -> None:
        # Overwritten as released rather than deleted: a conditional put is atomic on every S3.
        current = self.read()
        if current is None or current[1] != tag:
            return
        record = LockRecord.from_bytes(current[0])
        if record is not None:
            self._put(LockRecord(**{**asdict(record), "expires_at": 0.0}).to_bytes(), IfMatch=tag)


def _backend(store: Store) -> _Backend:
    if isinstance(store, S3Store):
        return _S3Backend(store)
    if isinstance(store, LocalStore):
        return _LocalBackend(store)
    raise TypeError(f"no lock for {type(store).__name__}")


class OutputLock:
    """The lock of one output, for one run. Blocking calls: run them in a thread."""

    def __init__(self, store: Store, *, run_id: str, ttl_s: float = 180.0) -> None:
        self.store = store
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self._backend = _backend(store)
        self._tag: str | None = None
        self._acquired_at = 0.0
        self.took_over: LockRecord | None = None  # the stale lock this one replaced, if any

    def _record(self, now: float) -> bytes:
        return LockRecord(
            holder=self.holder,
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_namespace=_pid_namespace(),
            acquired_at=self._acquired_at or now,
            expires_at=now + self.ttl_s,
        ).to_bytes()

    def acquire(self, *, wait_s: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lock, waiting up to `wait_s` for its holder; OutputInUse if it stays held."""
        deadline = time.monotonic() + wait_s
        while True:
            now = time.time()
            current = self._backend.read()
            if current is None:
                self._tag = self._backend.create(self._record(now))
            else:
                record = LockRecord.from_bytes(current[0])
                if record is None or record.free(now):
                    self._tag = self._backend.replace(self._record(now), current[1])
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
        self._tag = self._backend.replace(self._record(time.time()), self._tag)
        return self._tag is not None

    def release(self) -> None:
        if self._tag is not None:
            tag, self._tag = self._tag, None
            self._backend.release(tag)


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
