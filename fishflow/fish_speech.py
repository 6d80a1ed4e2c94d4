"""An async client for one Fish Speech server (self-hosted) or the Fish Audio cloud API.

It sends one request per call and never retries: retrying, backoff and choosing a server are the
pool's job (``fishflow.pool``), so attempts never multiply across layers.
"""

from __future__ import annotations

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
    OutOfCredit,
    RequestRejected,
    ServerBusy,
    ServerError,
    ServerUnavailable,
    SynthesisError,
    TextTooLong,
)
from fishflow.settings import Reference, SynthesisOptions, WireEncoding, reference_id_problem

CLOUD_URL = "https://api.fish.audio"
SAMPLE_RATE = 44_100
# The server's --max-text-length answer; N counts characters.
_TOO_LONG = re.compile(r"Text is too long, max length is (\d+)")


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """Why a server cannot be used, as found before a run (``connection_problem``)."""

    reason: str
    # It answers, as some other web server: a wrong URL, which waiting will not mend.
    wrong_url: bool = False


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


def _error_detail(response: httpx.Response) -> str:
    """The server's own words: `message` of the error body, or the 422 list of field errors."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, list):  # pydantic-style validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
            for e in body
            if isinstance(e, dict)
        )
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(body)[:200]


def _raise_for_status(response: httpx.Response, server: str) -> None:
    status = response.status_code
    if status == 200:
        return
    detail = f"HTTP {status} from {server}: {_error_detail(response)}"
    if status in (401, 403):
        raise AuthenticationFailed(
            f"{detail} (check the API key: FISHFLOW_API_KEY)", server=server, http_status=status
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
    fatal = status == 422 and "text" not in _error_detail(response).split(":", 1)[0]
    raise RequestRejected(detail, server=server, http_status=status, fatal=fatal)


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

    async def _post_tts(self, body: bytes, read_timeout_s: float) -> tuple[httpx.Response, bytes]:
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
            return response, await response.aread()
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
        validate: bool = True,
    ) -> Audio:
        """Synthesise one chunk and return its decoded, validated audio. ``reference_id``,
        ``references`` and ``seed`` override the options' own for this request."""
        fields = options.request_fields(text, reference_id, references=references, seed=seed)
        body = self._body(fields)
        try:
            response, content = await self._post_tts(body, read_timeout_s)
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
            raise ServerUnavailable(
                f"{type(exc).__name__} from {self.base_url}: {exc}", server=self.base_url
            ) from exc
        _raise_for_status(response, self.base_url)
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

    async def reference_ids(self) -> set[str] | None:
        """Voice ids the server knows, or None when it cannot say (older servers, the cloud)."""
        try:
            response = await self._client.get(
                "/v1/references/list",
                params={"format": "json"},
                headers={"Accept": "application/json"},
                timeout=10,
            )
            if response.status_code != 200:
                return None
            body = response.json()
        except (httpx.HTTPError, ValueError):
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
            response = await self._client.request(
                method,
                "/v1/references/" + path,
                params={"format": "json"},
                headers=headers,
                timeout=60,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise ServerUnavailable(
                f"cannot {what} on {self.base_url}: {type(exc).__name__}", server=self.base_url
            ) from exc
        if response.status_code == 404 and path == "list":
            raise RequestRejected(
                f"{self.base_url} has no /v1/references API (servers before late 2025)",
                server=self.base_url,
                http_status=404,
            )
        _raise_for_status(response, self.base_url)
        try:
            body = response.json()
        except ValueError as exc:
            raise ServerError(
                f"{self.base_url} answered {what} with a body that is not JSON",
                server=self.base_url,
                http_status=response.status_code,
            ) from exc
        return body if isinstance(body, dict) else {}

    async def list_references(self) -> list[str]:
        """The voice ids the server holds (``/v1/references/list``)."""
        body = await self._references_call("GET", "list", what="list voices")
        ids = body.get("reference_ids")
        return sorted(str(i) for i in ids) if isinstance(ids, list) else []

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
        return str(body.get("message") or f"voice {reference_id!r} added")

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
        return str(body.get("message") or f"voice {reference_id!r} deleted")

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
            response = await self._client.get(
                "/v1/health", timeout=httpx.Timeout(timeout_s, read=1.0)
            )
        except httpx.ConnectTimeout:
            return ConnectionProblem(f"no connection within {timeout_s:.0f} s")
        except httpx.ConnectError as exc:
            return ConnectionProblem(str(exc) or type(exc).__name__)
        except httpx.HTTPError:
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
                response = await self._client.request(method, "/v1/health", timeout=timeout_s)
            except httpx.HTTPError:
                return False
            if response.status_code == 200:
                return True
            if response.status_code != 405:
                return False
        return False
