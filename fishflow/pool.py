"""A pool of Fish Speech servers that keeps every server busy and never more than busy.

Each server has an in-flight limit (about 2 for a serial self-hosted server, the tier's limit on
the Fish Audio cloud). Work goes to the least-loaded live server. A server that refuses
connections or times out repeatedly leaves the rotation and is probed on ``/v1/health`` until it
answers again. 429/503 halve the server's limit, successes raise it again slowly (AIMD).

Retries live here and only here: the client sends once, the pipeline calls ``synthesize`` once
per distinct chunk, Prefect does not retry batch tasks. A chunk is retried on another attempt
(possibly another server) with exponential backoff and jitter, honouring Retry-After. Two
answers are not retried but handed back for the pipeline to split the chunk: audio cut at the
token cap, and the server's text-length limit (which the pool remembers, so later chunks are
sized below it). A voice whose requests all fail alike is given up after a few (``VoiceRefused``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from fishflow.audio import Audio
from fishflow.errors import (
    AllServersDown,
    ConfigError,
    FishflowError,
    RequestRejected,
    ServerBusy,
    ServerError,
    ServerUnavailable,
    SynthesisError,
    TextTooLong,
    VoiceRefused,
)
from fishflow.fish_speech import ConnectionProblem, FishSpeechClient
from fishflow.qa import Checked
from fishflow.settings import (
    Reference,
    RetryPolicy,
    ServerConfig,
    SynthesisOptions,
    WireEncoding,
)
from fishflow.slots import ServerSlots, SlotLeaser

__all__ = ["ServerPool", "ServerState", "SlotLeaser", "Synthesized", "limit_name"]


@dataclass
class ServerState:
    config: ServerConfig
    client: FishSpeechClient
    limit: float
    in_flight: int = 0
    up: bool = True
    failures: int = 0  # consecutive connection failures
    last_decrease: float = 0.0
    requests: int = 0
    busy_s: float = 0.0  # seconds with at least one request in flight
    _busy_since: float | None = None
    probe: asyncio.Task[None] | None = field(default=None, repr=False)
    # Slots of a limit shared with other runs (None: this run's own limit only).
    shared: ServerSlots | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def capacity(self) -> int:
        return max(1, int(self.limit))

    @property
    def usable(self) -> int:
        """Requests this run may have in flight now: its limit, within the slots it leased."""
        return self.capacity if self.shared is None else min(self.capacity, self.shared.usable)


@functools.lru_cache(maxsize=256)
def _resolved(host: str, port: int) -> str:
    """A host's address (IPv4 first), so that every name of one server is one server; the
    name itself when it does not resolve here."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return host.lower()
    addresses = sorted({str(info[4][0]) for info in infos}, key=lambda a: (":" in a, a))
    return addresses[0] if addresses else host.lower()


def limit_name(server_url: str) -> str:
    """The name of a server's shared in-flight limit, `fishflow-server-<address>-<port>`: keyed
    by the server's identity (resolved host and port), so `http://localhost:8090` and
    `http://127.0.0.1:8090` share one limit."""
    url = httpx.URL(server_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    host = _resolved(url.host, port)
    return f"fishflow-server-{host}-{port}".replace(".", "-").replace(":", "-")


async def check_servers(
    servers: list[ServerConfig], *, timeout_s: float = 3.0, unreachable_ok: bool = False
) -> None:
    """Stop a run before it starts when its servers cannot be used, naming each and why.

    A URL that answers as some other web server is a mistake in the server list, whatever the
    others do: ConfigError, since chunks sent there would only fail. AllServersDown when no
    server takes a connection, unless `unreachable_ok` (a flow, whose pool waits a while for
    servers that are not up yet). One request per server, so a wrong URL or a server not
    started is reported in seconds; a run's pool then copes with servers that come and go.
    """

    async def problem(config: ServerConfig) -> ConnectionProblem | None:
        async with FishSpeechClient(config.url) as client:
            return await client.connection_problem(timeout_s)

    found = list(zip(servers, await asyncio.gather(*(problem(s) for s in servers)), strict=True))
    if wrong := [f"{s.url}: {p.reason}" for s, p in found if p and p.wrong_url]:
        raise ConfigError(f"wrong server URL {'; '.join(wrong)}")
    if not unreachable_ok and all(p for _, p in found):
        where = "; ".join(f"{s.url}: {p.reason}" for s, p in found if p)
        raise AllServersDown(
            f"no Fish Speech server answers ({where}): "
            "check that they are running and the --server URLs"
        )


@dataclass
class _VoiceRecord:
    """What the run has seen of one voice: a success, or a streak of identical failures."""

    succeeded: bool = False
    signature: tuple[int | None, str] | None = None
    failures: int = 0
    texts: set[str] = field(default_factory=set)
    refused: str | None = None  # why it was given up


@dataclass(frozen=True, slots=True)
class Synthesized:
    audio: Audio
    server: str
    attempts: int
    latency_s: float
    checked: Checked | None = None  # what the answer check made of it (None: not checked)


class ServerPool:
    """``async with ServerPool(servers) as pool: await pool.synthesize(text, options)``."""

    def __init__(
        self,
        servers: list[ServerConfig],
        *,
        api_key: str | None = None,
        encoding: WireEncoding = "msgpack",
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        probe_interval_s: float = 1.0,
        leaser: SlotLeaser | None = None,
        lease_idle_s: float = 2.0,
        slot_tenure_s: float = 10.0,
    ) -> None:
        if not servers:
            raise ValueError("a pool needs at least one server")
        self.retry = retry or RetryPolicy()
        self.probe_interval_s = probe_interval_s
        tls = ssl.create_default_context()  # ~20 ms each: one for the whole pool
        self.servers = [
            ServerState(
                config=s,
                limit=float(s.max_in_flight),
                client=FishSpeechClient(
                    s.url,
                    api_key=api_key,
                    model=s.model,
                    encoding=encoding,
                    max_connections=s.max_in_flight * 2,
                    transport=transport,
                    verify=tls,
                ),
            )
            for s in servers
        ]
        # FIFO of chunks waiting for a slot; a freed slot is handed to exactly one waiter
        # (a Condition's notify_all woke every waiter on every release: a thundering herd).
        self._waiters: collections.deque[asyncio.Future[ServerState]] = collections.deque()
        self._stopped: FishflowError | None = None
        self.leaser = leaser
        self.lease_idle_s = lease_idle_s
        self._closing = False
        self._trim: asyncio.TimerHandle | None = None
        if leaser is not None:
            for server in self.servers:
                server.shared = ServerSlots(
                    leaser,
                    server.url,
                    wants_more=functools.partial(self._wants_slots, server),
                    chunks_waiting=lambda: bool(self._waiters),
                    in_flight=functools.partial(getattr, server, "in_flight"),
                    on_change=self._wake,
                    tenure_s=slot_tenure_s,
                )
        self._watchdog: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._voices: dict[str, _VoiceRecord] = {}
        # The smallest --max-text-length a server has told us (characters), once one has.
        self.max_text_chars: int | None = None
        # Whether any server has answered in this run (a response of any kind, or a probe):
        # until one has, every server being down means a wrong URL or nothing started, and
        # waiting the full grace period only delays saying so.
        self._answered = False

    async def __aenter__(self) -> ServerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        for task in [s.probe for s in self.servers] + [self._watchdog]:
            if task is not None:
                task.cancel()
        if self._trim is not None:
            self._trim.cancel()
        for s in self.servers:
            if s.shared is not None:
                await s.shared.aclose()  # gives every slot back
            await s.client.aclose()
        if self.leaser is not None:
            await self.leaser.aclose()

    @property
    def capacity(self) -> int:
        return sum(s.config.max_in_flight for s in self.servers)

    # -- choosing a server --------------------------------------------------------------------
    def _pick(self) -> ServerState | None:
        best: ServerState | None = None
        for s in self.servers:
            if (
                s.up
                and s.in_flight < s.usable
                and (best is None or s.in_flight * best.capacity < best.in_flight * s.capacity)
            ):
                best = s
        return best

    def _take(self, server: ServerState) -> ServerState:
        if server.in_flight == 0:
            server._busy_since = time.monotonic()
        server.in_flight += 1
        return server

    def _release(self, server: ServerState) -> None:
        server.in_flight -= 1
        if server.in_flight == 0 and server._busy_since is not None:
            server.busy_s += time.monotonic() - server._busy_since
            server._busy_since = None
        if server.shared is not None:
            server.shared.request_done()
        self._wake()
        if self.leaser is not None and not self._waiters and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(self.lease_idle_s, self._trim_leases)

    # -- slots shared with other runs -----------------------------------------------------------
    def _want_leases(self) -> None:
        if self.leaser is None or self._closing:
            return
        for s in self.servers:
            if s.shared is not None:
                s.shared.want()

    def _wants_slots(self, server: ServerState) -> bool:
        """Whether `server`'s leasing task should take another slot now."""
        return (
            not self._closing
            and bool(self._waiters)
            and server.up
            and server.shared is not None
            and server.shared.held < server.capacity
        )

    def _trim_leases(self) -> None:
        """Give back slots nobody here is using, so other runs on the server can have them."""
        self._trim = None
        if self._waiters:
            return
        for s in self.servers:
            if s.shared is not None:
                s.shared.trim()

    def _wake(self) -> None:
        while self._waiters:
            if self._waiters[0].done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            server = self._pick()
            if server is None:
                return
            self._waiters.popleft().set_result(self._take(server))

    async def _acquire(self) -> ServerState:
        if self._stopped is not None:
            raise self._stopped
        if not self._waiters and (server := self._pick()) is not None:
            return self._take(server)
        waiter: asyncio.Future[ServerState] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._want_leases()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a slot just as we were cancelled
            raise

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[ServerState]:
        server = await self._acquire()
        try:
            yield server
        finally:
            self._release(server)

    def stop(self, exc: FishflowError) -> None:
        """Refuse all further work with `exc` (a run-stopping error): waiting chunks get it
        at once instead of each sending a request that must fail the same way."""
        if self._stopped is None:
            self._stopped = exc
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._stopped)

    def _all_down_grace_s(self) -> float:
        if self._answered:
            return self.retry.all_down_grace_s
        return min(self.retry.start_grace_s, self.retry.all_down_grace_s)

    async def _watch_all_down(self) -> None:
        """While no server is up: after the grace period, fail every waiting chunk."""
        since = time.monotonic()
        while not any(s.up for s in self.servers):
            grace = self._all_down_grace_s()
            if time.monotonic() - since > grace:
                urls = ", ".join(s.url for s in self.servers)
                if self._answered:
                    message = f"no Fish Speech server answered for {grace:.0f} s ({urls})"
                else:
                    message = (
                        f"no Fish Speech server answers at {urls}: "
                        "check that they are running and the --server URLs"
                    )
                self.stop(AllServersDown(message))
                return
            await asyncio.sleep(min(0.5, grace / 4 + 0.01))
        self._watchdog = None

    # -- health and limits ----------------------------------------------------------------------
    def _on_success(self, server: ServerState) -> None:
        self._answered = True
        server.failures = 0
        server.requests += 1
        # Additive increase, slowly: +1 per two full windows, and only while the limit is used.
        if server.limit < server.config.max_in_flight and server.in_flight >= server.capacity:
            before = server.capacity
            server.limit = min(server.config.max_in_flight, server.limit + 0.5 / server.capacity)
            if server.capacity > before:
                self._wake()

    def _on_failure(self, server: ServerState, exc: SynthesisError, sent_at: float) -> None:
        server.requests += 1
        if not (isinstance(exc, ServerUnavailable) and exc.connection_failed):
            self._answered = True  # it took the connection, whatever it then said
        if isinstance(exc, ServerBusy):
            # Multiplicative decrease, once per window: a 429 for a request sent before the
            # last decrease says nothing about the new limit.
            if sent_at >= server.last_decrease:
                server.limit = max(1.0, min(server.limit, server.in_flight) / 2)
                server.last_decrease = time.monotonic()
        elif isinstance(exc, ServerUnavailable) and (exc.connection_failed or exc.timed_out):
            server.failures += 1
            if server.up and server.failures >= self.retry.down_after_failures:
                server.up = False
                server.probe = asyncio.create_task(self._probe(server))
                if self._watchdog is None and not any(s.up for s in self.servers):
                    self._watchdog = asyncio.create_task(self._watch_all_down())

    async def _probe(self, server: ServerState) -> None:
        delay = self.probe_interval_s
        while not await server.client.health(timeout_s=max(2.0, delay)):
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 10.0)
        server.up, server.failures, server.probe = True, 0, None
        self._answered = True
        self._wake()

    def _backoff(self, attempt: int, exc: SynthesisError) -> float:
        if isinstance(exc, ServerBusy) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry.max_backoff_s) + self._rng.random() * 0.1
        base = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
        return base * (1 - self.retry.jitter * self._rng.random())

    # -- the one place that retries ---------------------------------------------------------------
    def _voice_failed(
        self, voice: str, record: _VoiceRecord, text: str, exc: SynthesisError
    ) -> None:
        """Count a failure against a voice that never worked; give it up after a streak.

        Current servers refuse some voices (an id outside their pattern, a reference they cannot
        load) with the same bare 500 on every request, which looks like a flaky server: retried
        per chunk it cost 189 requests for 20 items. A streak of identical answers over at least
        two different texts, with no success of that voice, is the voice's problem."""
        if record.succeeded or record.refused:
            return
        if not isinstance(exc, ServerError | RequestRejected) or isinstance(exc, TextTooLong):
            return  # connection trouble, busy servers and bad audio say nothing about the voice
        detail = exc.message.replace(exc.server or "", "").split(": ", 1)[-1]
        signature = (exc.http_status, detail)
        if signature != record.signature:
            record.signature, record.failures, record.texts = signature, 0, set()
        record.failures += 1
        if len(record.texts) < 2:
            record.texts.add(text)
        if record.failures >= self.retry.voice_refused_after and len(record.texts) >= 2:
            record.refused = (
                f"voice {voice!r} given up: its {record.failures} requests all failed with "
                f"HTTP {exc.http_status} {detail!r} and none succeeded (a server refuses ids "
                "outside letters, digits, '-', '_' and spaces, and reference audio it cannot "
                "load, this way)"
            )

    def _refused(self, voice: str, record: _VoiceRecord, attempts: int) -> VoiceRefused:
        assert record.refused is not None
        error = VoiceRefused(
            record.refused,
            voice=voice,
            http_status=record.signature[0] if record.signature else None,
        )
        error.attempts = attempts
        return error

    # -- the one place that retries ---------------------------------------------------------------
    async def synthesize(
        self,
        text: str,
        options: SynthesisOptions,
        *,
        reference_id: str | None = None,
        references: tuple[Reference, ...] = (),
        seed: int | None = None,
        voice: str | None = None,
    ) -> Synthesized:
        """Synthesise one chunk on the best server, retrying what can succeed.

        ``voice`` names the voice in messages and in the watch for refused voices (default: the
        reference id). Raises the last SynthesisError (with ``attempts`` set) when retrying
        cannot help or the budget is spent; CutAtTokenCap and TextTooLong at once, for the caller
        to split the text; VoiceRefused once the voice has been given up; AllServersDown when no
        server answered for the grace period (``start_grace_s`` while none has answered yet in
        this run, else ``all_down_grace_s``).
        """
        voice = voice or reference_id or options.reference_id
        record = self._voices.setdefault(voice, _VoiceRecord()) if voice else None
        attempts = server_errors = refused = 0
        while True:
            if record is not None and record.refused:
                raise self._refused(voice or "", record, attempts)
            async with self.slot() as server:
                if record is not None and record.refused:  # given up while this chunk waited
                    raise self._refused(voice or "", record, attempts)
                if self.max_text_chars is not None and len(text) > self.max_text_chars:
                    error: SynthesisError = TextTooLong(
                        f"text of {len(text)} characters is over the servers' limit of "
                        f"{self.max_text_chars}",
                        limit=self.max_text_chars,
                        http_status=400,
                    )
                    error.attempts = attempts
                    raise error
                started = time.monotonic()
                # A serial server answers in queue order: allow one generation per request ahead.
                timeout = self.retry.request_timeout_s * server.in_flight
                try:
                    audio = await server.client.synthesize(
                        text,
                        options,
                        reference_id=reference_id,
                        references=references,
                        seed=seed,
                        read_timeout_s=timeout,
                        body_timeout_s=self.retry.request_timeout_s,
                    )
                except SynthesisError as exc:
                    self._on_failure(server, exc, started)
                    error = exc
                    if record is not None:
                        self._voice_failed(voice or "", record, text, exc)
                else:
                    self._on_success(server)
                    if record is not None:
                        record.succeeded = True
                    return Synthesized(audio, server.url, attempts + 1, time.monotonic() - started)
            if isinstance(error, ServerUnavailable) and error.connection_failed and refused < 100:
                # A refused connection cost no generation: the pool ejects the server after a
                # few, and the chunk goes to another one (or waits out the grace period).
                refused += 1
                await asyncio.sleep(0.05)
                continue
            attempts += 1
            error.attempts = attempts
            if isinstance(error, TextTooLong):
                limit = error.limit
                self.max_text_chars = min(self.max_text_chars or limit, limit)
            if record is not None and record.refused:
                raise self._refused(voice or "", record, attempts)
            if error.fatal:
                self.stop(error)
            if isinstance(error, ServerError):
                server_errors += 1
            if (
                not error.retryable
                or error.fatal
                or attempts >= self.retry.max_attempts
                or server_errors >= self.retry.max_server_errors
            ):
                raise error
            await asyncio.sleep(self._backoff(attempts, error))

    def utilisation(self, wall_s: float) -> dict[str, float]:
        return {s.url: (s.busy_s / wall_s if wall_s > 0 else 0.0) for s in self.servers}
