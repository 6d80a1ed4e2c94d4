"""An async client for one Fish Speech server (self-hosted) or the Fish Audio cloud API.

It sends one request per call and never retries: retrying, backoff and choosing a server are the
pool's job (``fishflow.pool``), so attempts never multiply across layers.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import re
import ssl
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import ormsgpack

from fishflow.audio import Audio, check_plausible, decode
from fishflow.errors import (
    AuthenticationFailed,
    BadAudio,
    OutOfCredit,
    RequestRejected,
    ServerBusy,
    ServerError,
    ServerUnavailable,
    SynthesisError,
    TextTooLong,
)
from fishflow.settings import Reference, SynthesisOptions, WireEncoding, reference_id_problem
from fishflow.untrusted import ERROR_BODY_CAP, JSON_BODY_CAP, audio_body_cap, server_words

CLOUD_URL = "https://api.fish.audio"
SAMPLE_RATE = 44_100
# The server's --max-text-length answer; N counts characters.
_TOO_LONG = re.compile(r"Text is too long, max length is (\d+)")
# A whole exchange (connect, send, every byte of the answer) may take this many read timeouts:
# the read timeout alone restarts with each byte, so a server trickling one byte a second held
# a request forever.
DEADLINE_READ_TIMEOUTS = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """Why a server cannot be used, as found before a run (``connection_problem``)."""

    reason: str
    # It answers, as some other web server: a wrong URL, which waiting will not mend.
    wrong_url: bool = False


class ApiKey(str):
    """A server API key that knows where it came from, so that a 401 names the place to fix
    (``source``: ``Prefect Secret block 'name'``). It is the key itself in every other way:
    never print it. A plain ``str`` key is taken to come from ``FISHFLOW_API_KEY``."""

    source: str

    def __new__(cls, value: str, *, source: str) -> ApiKey:
        key = super().__new__(cls, value)
        key.source = source
        return key


def key_source(api_key: str | None) -> str:
    """Where a key came from, as a 401 names it."""
    return api_key.source if isinstance(api_key, ApiKey) else "FISHFLOW_API_KEY"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(body: bytes, reason: str) -> str:
    """The server's own words: `message` of the error body, or the 422 list of field errors."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:400].decode("utf-8", "replace").strip() or reason
    if isinstance(parsed, list):  # pydantic-style validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
            for e in parsed
            if isinstance(e, dict)
        )
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or parsed)[:400]
    return str(parsed)[:400]


def _raise_for_status(
    response: httpx.Response,
    body: bytes,
    server: str,
    secrets: tuple[str, ...] = (),
    key_from: str = "FISHFLOW_API_KEY",
) -> None:
    """Map a status to the error tree. `body` is the (capped) body read so far; what the
    server says in it is cut and scrubbed (``server_words``) before it joins a message."""
    status = response.status_code
    if status == 200:
        return
    words = server_words(_error_detail(body, response.reason_phrase), secrets=secrets)
    detail = f"HTTP {status} from {server}: {words}"
    if status in (401, 403):
        raise AuthenticationFailed(
            f"{detail} (check the API key: {key_from})", server=server, http_status=status
        )
    if status == 402:
        raise OutOfCredit(
            f"{detail} (the account is out of credit)", server=server, http_status=402
        )
    if status in (429, 503):
        raise ServerBusy(
            detail,
            server=server,
            http_status=status,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    if status >= 500:
        raise ServerError(detail, server=server, http_status=status)
    if status == 400 and (match := _TOO_LONG.search(detail)):
        raise TextTooLong(detail, limit=int(match.group(1)), server=server, http_status=400)
    # An invalid field that is not the text fails every chunk alike: stop the run.
    fatal = status == 422 and "text" not in words.split(":", 1)[0]
    raise RequestRejected(detail, server=server, http_status=status, fatal=fatal)


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The body as it streams in, up to `cap` bytes; True when there was more. The rest is
    never read: closing the response then drops the connection."""
    parts: list[bytes] = []
    got = 0
    async for block in response.aiter_bytes():
        parts.append(block)
        got += len(block)
        if got > cap:
            return b"".join(parts)[:cap], True
    return b"".join(parts), False


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, ALL_PROXY, NO_PROXY...) sets for `url`."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class FishSpeechClient:
    """One server. ``async with FishSpeechClient(url) as fish: await fish.synthesize(...)``.

    Synthesis requests go straight to the connection pool (httpx's transport): the client
    layer around it (auth flow, redirects, cookies, hooks) cost ~0.25 ms of the ~0.85 ms of
    CPU a request took here, for features a Fish Speech call never uses. Health and voice
    lookups keep the client; both share one pool and one proxy decision.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        encoding: WireEncoding = "msgpack",
        connect_timeout_s: float = 5.0,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.encoding = encoding
        self.connect_timeout_s = connect_timeout_s
        headers = {"Accept": "audio/wav, application/json"}
        # Scrubbed from whatever a server says back (an error body may echo the request).
        self._secrets: tuple[str, ...] = (api_key,) if api_key else ()
        self._key_from = key_source(api_key)  # what a 401 tells the user to check
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if model:
            headers["model"] = model
        self._tts_url = httpx.URL(self.base_url + "/v1/tts")
        self._tts_headers = {
            "msgpack": httpx.Headers({**headers, "Content-Type": "application/msgpack"}),
            "json": httpx.Headers({**headers, "Content-Type": "application/json"}),
        }
        self._transport = transport or httpx.AsyncHTTPTransport(
            verify=verify,
            proxy=proxy_for(self.base_url),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            transport=self._transport,
            trust_env=False,  # proxy_for decided already
            timeout=httpx.Timeout(120.0, connect=connect_timeout_s),
        )

    async def __aenter__(self) -> FishSpeechClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _body(self, fields: dict[str, Any]) -> bytes:
        if self.encoding == "json":
            # JSON carries reference audio as base64 (servers 1.5+).
            refs = [
                {"audio": base64.b64encode(r["audio"]).decode(), "text": r["text"]}
                for r in fields["references"]
            ]
            return json.dumps({**fields, "references": refs}).encode()
        return ormsgpack.packb(fields)

    async def _post_tts(
        self, body: bytes, read_timeout_s: float, cap: int, body_timeout_s: float
    ) -> tuple[httpx.Response, bytes]:
        """POST /v1/tts; the answer's status and body, its body read up to `cap` bytes for
        audio and ERROR_BODY_CAP for anything else. An audio body over its cap is BadAudio; one
        that takes longer than `body_timeout_s` after its headers is a ServerError."""
        request = httpx.Request(
            "POST",
            self._tts_url,
            content=body,
            headers=self._tts_headers[self.encoding],
            extensions={
                "timeout": {
                    "connect": self.connect_timeout_s,
                    "read": read_timeout_s,
                    "write": read_timeout_s,
                    "pool": read_timeout_s,
                }
            },
        )
        response = await self._transport.handle_async_request(request)
        try:
            if response.status_code != 200:
                return response, (await _read_capped(response, ERROR_BODY_CAP))[0]
            declared = _declared_length(response)
            content, over = b"", declared is not None and declared > cap
            if not over:
                # A Fish Speech server sends its headers once the audio is made: the body then
                # comes at network speed. One trickling in is a broken server, not a slow model.
                try:
                    async with asyncio.timeout(body_timeout_s):
                        content, over = await _read_capped(response, cap)
                except TimeoutError:
                    raise ServerError(
                        f"answer from {self.base_url} trickled: its body did not arrive within "
                        f"{body_timeout_s:.0f} s of its headers",
                        server=self.base_url,
                    ) from None
            if over:
                raise BadAudio(
                    f"answer from {self.base_url} runs over {cap:,} bytes, more than the longest "
                    "plausible audio for its text: not read further",
                    server=self.base_url,
                )
            return response, content
        finally:
            await response.aclose()

    async def synthesize(
        self,
        text: str,
        options: SynthesisOptions,
        *,
        reference_id: str | None = None,
        references: tuple[Reference, ...] = (),
        seed: int | None = None,
        read_timeout_s: float = 120.0,
        body_timeout_s: float | None = None,
        validate: bool = True,
    ) -> Audio:
        """Synthesise one chunk and return its decoded, validated audio. ``reference_id``,
        ``references`` and ``seed`` override the options' own for this request.

        Bounded: the body is read up to ``audio_body_cap`` (BadAudio beyond), within
        ``body_timeout_s`` of the headers (a ServerError: retried a bounded number of times;
        default `read_timeout_s`), and the whole exchange ends within
        ``DEADLINE_READ_TIMEOUTS`` x `read_timeout_s` (ServerUnavailable, timed out), however
        slowly the server sends."""
        fields = options.request_fields(text, reference_id, references=references, seed=seed)
        body = self._body(fields)
        cap = audio_body_cap(text, options.max_new_tokens)
        deadline_s = DEADLINE_READ_TIMEOUTS * read_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                response, content = await self._post_tts(
                    body, read_timeout_s, cap, body_timeout_s or read_timeout_s
                )
        except TimeoutError as exc:
            raise ServerUnavailable(
                f"no whole answer within {deadline_s:.0f} s from {self.base_url}",
                server=self.base_url,
                timed_out=True,
            ) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnavailable(
                f"cannot connect to {self.base_url}: {type(exc).__name__}",
                server=self.base_url,
                connection_failed=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(
                f"{type(exc).__name__} after {read_timeout_s:.0f} s from {self.base_url}",
                server=self.base_url,
                timed_out=True,
            ) from exc
        except httpx.TransportError as exc:  # reset, truncated body, protocol error
            said = server_words(str(exc), secrets=self._secrets)
            raise ServerUnavailable(
                f"{type(exc).__name__} from {self.base_url}: {said}", server=self.base_url
            ) from exc
        _raise_for_status(response, content, self.base_url, self._secrets, self._key_from)
        try:
            audio = decode(content)
            if validate:
                check_plausible(
                    audio, text, sample_rate=SAMPLE_RATE, max_new_tokens=options.max_new_tokens
                )
        except SynthesisError as exc:
            exc.server = self.base_url
            raise
        return audio

    async def _request(
        self, method: str, path: str, *, timeout: httpx.Timeout | float, **kwargs: Any
    ) -> tuple[httpx.Response, bytes]:
        """A request through the client, bounded like a synthesis: its body read up to
        JSON_BODY_CAP (ERROR_BODY_CAP for an error), the whole exchange within
        DEADLINE_READ_TIMEOUTS read timeouts (TimeoutError)."""
        read_s = timeout if isinstance(timeout, int | float) else (timeout.read or 60.0)
        async with asyncio.timeout(DEADLINE_READ_TIMEOUTS * read_s + self.connect_timeout_s):
            async with self._client.stream(method, path, timeout=timeout, **kwargs) as response:
                cap = JSON_BODY_CAP if response.status_code == 200 else ERROR_BODY_CAP
                content, _ = await _read_capped(response, cap)
        return response, content

    async def reference_ids(self) -> set[str] | None:
        """Voice ids the server knows, or None when it cannot say (older servers, the cloud)."""
        try:
            response, content = await self._request(
                "GET",
                "/v1/references/list",
                params={"format": "json"},
                headers={"Accept": "application/json"},
                timeout=10,
            )
            if response.status_code != 200:
                return None
            body = json.loads(content)
        except (httpx.HTTPError, ValueError, TimeoutError):
            return None
        ids = body.get("reference_ids") if isinstance(body, dict) else None
        return {str(i) for i in ids} if isinstance(ids, list) else None

    # -- voices held by the server (/v1/references/*, servers from late 2025 on) ---------------
    async def _references_call(
        self, method: str, path: str, *, what: str, json_body: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            kwargs["content"] = json.dumps(json_body).encode()
        try:
            response, content = await self._request(
                method,
                "/v1/references/" + path,
                params={"format": "json"},
                headers=headers,
                timeout=60,
                **kwargs,
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise ServerUnavailable(
                f"cannot {what} on {self.base_url}: {type(exc).__name__}", server=self.base_url
            ) from exc
        if response.status_code == 404 and path == "list":
            raise RequestRejected(
                f"{self.base_url} has no /v1/references API (servers before late 2025)",
                server=self.base_url,
                http_status=404,
            )
        _raise_for_status(response, content, self.base_url, self._secrets, self._key_from)
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise ServerError(
                f"{self.base_url} answered {what} with a body that is not JSON",
                server=self.base_url,
                http_status=response.status_code,
            ) from exc
        return body if isinstance(body, dict) else {}

    def _words(self, value: Any) -> str:
        return server_words(str(value), secrets=self._secrets)

    async def list_references(self) -> list[str]:
        """The voice ids the server holds (``/v1/references/list``)."""
        body = await self._references_call("GET", "list", what="list voices")
        ids = body.get("reference_ids")
        return sorted(self._words(i) for i in ids) if isinstance(ids, list) else []

    async def add_reference(
        self, reference_id: str, *, audio: bytes, text: str, filename: str = "sample.wav"
    ) -> str:
        """Store a voice on the server: a recording and its transcript. Returns its message.
        An id the server would refuse is refused here, before the upload."""
        if problem := reference_id_problem(reference_id):
            raise RequestRejected(problem, server=self.base_url)
        body = await self._references_call(
            "POST",
            "add",
            what=f"add voice {reference_id!r}",
            data={"id": reference_id, "text": text},
            files={"audio": (filename, audio, "application/octet-stream")},
        )
        return self._words(body.get("message") or f"voice {reference_id!r} added")

    async def delete_reference(self, reference_id: str) -> str:
        """Remove a voice from the server. Returns its message."""
        if problem := reference_id_problem(reference_id):
            raise RequestRejected(problem, server=self.base_url)
        body = await self._references_call(
            "DELETE",
            "delete",
            what=f"delete voice {reference_id!r}",
            json_body={"reference_id": reference_id},
        )
        return self._words(body.get("message") or f"voice {reference_id!r} deleted")

    async def connection_problem(self, timeout_s: float = 3.0) -> ConnectionProblem | None:
        """Why the server cannot be used (refused, timed out, not a Fish Speech server), or
        None when it took the connection: any answer counts but a 404 for /v1/health (every
        Fish Speech server has it: 200, 405 before 1.5.1, 401 with --api-key), and so does
        none in time (a busy serial server answers /v1/health only when its generation ends).
        The cloud API is not asked: it has no /v1/health; nor can a proxy that passes only
        /v1/tts be used."""
        if httpx.URL(self.base_url).host == httpx.URL(CLOUD_URL).host:
            return None
        try:
            response, _ = await self._request(
                "GET", "/v1/health", timeout=httpx.Timeout(timeout_s, read=1.0)
            )
        except httpx.ConnectTimeout:
            return ConnectionProblem(f"no connection within {timeout_s:.0f} s")
        except httpx.ConnectError as exc:
            return ConnectionProblem(str(exc) or type(exc).__name__)
        except (httpx.HTTPError, TimeoutError):
            return None
        if response.status_code == 404:
            return ConnectionProblem(
                "it answers, but not as a Fish Speech server (GET /v1/health: HTTP 404); "
                "is the URL the server's root?",
                wrong_url=True,
            )
        return None

    async def health(self, timeout_s: float = 5.0) -> bool:
        """True when the server answers /v1/health (GET, then POST for servers before 1.5.1)."""
        for method in ("GET", "POST"):
            try:
                response, _ = await self._request(method, "/v1/health", timeout=timeout_s)
            except (httpx.HTTPError, TimeoutError):
                return False
            if response.status_code == 200:
                return True
            if response.status_code != 405:
                return False
        return False
