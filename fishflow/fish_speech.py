"""An async client for one Fish Speech server (self-hosted) or the Fish Audio cloud API.

It sends one request per call and never retries: retrying, backoff and choosing a server are the
pool's job (``fishflow.pool``), so attempts never multiply across layers.
"""

from __future__ import annotations

import base64
import email.utils
import json
import ssl
import time
import urllib.parse
import urllib.request
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
)
from fishflow.settings import SynthesisOptions, WireEncoding

CLOUD_URL = "https://api.fish.audio"
SAMPLE_RATE = 44_100


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
        read_timeout_s: float = 120.0,
        validate: bool = True,
    ) -> Audio:
        """Synthesise one chunk and return its decoded, validated audio."""
        body = self._body(options.request_fields(text, reference_id))
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

    async def connection_problem(self, timeout_s: float = 3.0) -> str | None:
        """Why the server cannot be reached (refused, timed out), or None when it took the
        connection: any answer counts, and so does none in time (a busy serial server answers
        /v1/health only when its generation ends)."""
        try:
            await self._client.get("/v1/health", timeout=httpx.Timeout(timeout_s, read=1.0))
        except httpx.ConnectTimeout:
            return f"no connection within {timeout_s:.0f} s"
        except httpx.ConnectError as exc:
            return str(exc) or type(exc).__name__
        except httpx.HTTPError:
            pass
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
