"""The client against httpx.MockTransport: request shape and the error tree."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
from typing import Any

import httpx
import ormsgpack
import pytest

from fishflow.audio import Audio, encode
from fishflow.errors import (
    AuthenticationFailed,
    BadAudio,
    OutOfCredit,
    RequestRejected,
    ServerBusy,
    ServerError,
    ServerUnavailable,
)
from fishflow.fish_speech import ApiKey, ConnectionProblem, FishSpeechClient, proxy_for
from fishflow.settings import Reference, SynthesisOptions
from fishflow.testing.emulator import speech_duration_s, synth_samples

TEXT = "Hello there, this is a test sentence."


def wav(text: str = TEXT) -> bytes:
    return encode(Audio(synth_samples(text, speech_duration_s(text), None), 44_100), "wav")


def call(handler, options: SynthesisOptions | None = None, **client_kw):
    async def go():
        async with FishSpeechClient(
            "http://fish", transport=httpx.MockTransport(handler), **client_kw
        ) as client:
            return await client.synthesize(TEXT, options or SynthesisOptions(), reference_id="v1")

    return asyncio.run(go())


def test_msgpack_request_carries_every_field_and_the_bearer_key() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["headers"] = request.headers
        seen["body"] = ormsgpack.unpackb(request.content)
        return httpx.Response(200, content=wav(), headers={"content-type": "audio/wav"})

    opts = SynthesisOptions(
        seed=7,
        temperature=0.5,
        top_p=0.9,
        repetition_penalty=1.2,
        references=(Reference(audio=b"RIFF", text="ref"),),
    )
    audio = call(handler, opts, api_key="k-1", model="s1")
    assert audio.sample_rate == 44_100
    body = seen["body"]
    assert seen["headers"]["content-type"] == "application/msgpack"
    assert seen["headers"]["authorization"] == "Bearer k-1"
    assert seen["headers"]["model"] == "s1"
    assert body["text"] == TEXT and body["reference_id"] == "v1" and body["format"] == "wav"
    assert (body["seed"], body["temperature"], body["top_p"], body["repetition_penalty"]) == (
        7,
        0.5,
        0.9,
        1.2,
    )
    assert body["references"] == [{"audio": b"RIFF", "text": "ref"}]
    assert {"chunk_length", "max_new_tokens", "normalize", "use_memory_cache"} <= set(body)


def test_json_encoding_sends_references_as_base64() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=wav())

    call(
        handler,
        SynthesisOptions(references=(Reference(audio=b"\x00\x01", text="t"),)),
        encoding="json",
    )
    assert seen["body"]["references"][0]["audio"] == base64.b64encode(b"\x00\x01").decode()


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retryable", "fatal"),
    [
        (401, {"statusCode": 401, "message": "bad key"}, {}, AuthenticationFailed, False, True),
        (402, {"status": 402, "message": "no credit"}, {}, OutOfCredit, False, True),
        (
            429,
            {"status": 429, "message": "slow down"},
            {"retry-after": "3"},
            ServerBusy,
            True,
            False,
        ),
        (503, {"status": 503, "message": "busy"}, {}, ServerBusy, True, False),
        (500, {"statusCode": 500, "message": "Failed"}, {}, ServerError, True, False),
        (
            400,
            {"statusCode": 400, "message": "Text is too long"},
            {},
            RequestRejected,
            False,
            False,
        ),
        (
            422,
            [{"loc": ["body", "top_p"], "msg": "bad", "type": "x"}],
            {},
            RequestRejected,
            False,
            True,
        ),
        (
            422,
            [{"loc": ["body", "text"], "msg": "bad", "type": "x"}],
            {},
            RequestRejected,
            False,
            False,
        ),
    ],
)
def test_status_codes_map_to_the_error_tree(status, body, headers, error, retryable, fatal) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    with pytest.raises(error) as info:
        call(handler, api_key="sk-never-shown")
    assert info.value.retryable is retryable and info.value.fatal is fatal
    assert info.value.http_status == status
    assert "sk-never-shown" not in str(info.value)
    if status == 429:
        assert info.value.retry_after == 3.0


def test_transport_failures_are_retryable_and_say_which_kind() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(ServerUnavailable) as info:
        call(refuse)
    assert info.value.connection_failed and info.value.retryable
    with pytest.raises(ServerUnavailable) as info:
        call(timeout)
    assert info.value.timed_out and not info.value.connection_failed


def test_short_audio_with_200_is_rejected() -> None:
    short = encode(Audio(synth_samples(TEXT, 0.2, None), 44_100), "wav")
    with pytest.raises(BadAudio):
        call(lambda request: httpx.Response(200, content=short))


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_proxy_for_follows_the_environment(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert proxy_for("https://api.fish.audio") is None
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    no_proxy_env.setenv("NO_PROXY", "fish-1.internal")
    assert proxy_for("https://api.fish.audio") == "http://proxy.corp:3128"
    assert proxy_for("http://fish-2.internal:8080") is None  # HTTPS_PROXY only covers https
    assert proxy_for("https://fish-1.internal:8080") is None  # NO_PROXY
    no_proxy_env.setenv("ALL_PROXY", "http://all.corp:3128")
    assert proxy_for("http://fish-2.internal:8080") == "http://all.corp:3128"


def test_synthesis_goes_through_the_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)  # a forward proxy gets the absolute URL
            self.rfile.read(int(self.headers["Content-Length"]))
            body = wav()
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")

        async def go() -> Audio:
            async with FishSpeechClient("http://fish.example:8080") as client:
                return await client.synthesize(TEXT, SynthesisOptions())

        audio = asyncio.run(go())
        proxy.shutdown()
    assert seen == ["http://fish.example:8080/v1/tts"]
    assert audio.duration_s == pytest.approx(speech_duration_s(TEXT), abs=0.05)


def test_the_servers_text_limit_is_told_with_its_number() -> None:
    """Row '--max-text-length N counts characters: longer text -> 400 "Text is too long, max
    length is N"': the error carries N, for the pool to re-chunk below it."""
    from fishflow.errors import TextTooLong

    def handler(request: httpx.Request) -> httpx.Response:
        message = "Text is too long, max length is 150"
        return httpx.Response(400, json={"statusCode": 400, "message": message, "error": "x"})

    with pytest.raises(TextTooLong) as info:
        call(handler)
    assert info.value.limit == 150 and not info.value.retryable


def test_an_items_references_and_seed_override_the_runs_and_drop_the_id() -> None:
    """Row 'reference_id ... wins': a request with inline references carries no reference_id,
    or the server would speak the id's voice instead."""
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = ormsgpack.unpackb(request.content)
        return httpx.Response(200, content=wav())

    async def go():
        async with FishSpeechClient("http://fish", transport=httpx.MockTransport(handler)) as c:
            await c.synthesize(
                TEXT,
                SynthesisOptions(reference_id="narrator", seed=1),
                references=(Reference(audio=b"RIFF-anna", text="I am Anna."),),
                seed=42,
            )

    asyncio.run(go())
    body = seen["body"]
    assert body["reference_id"] is None and body["seed"] == 42
    assert body["references"] == [{"audio": b"RIFF-anna", "text": "I am Anna."}]


@pytest.mark.parametrize(
    ("status", "usable"),
    [
        (200, True),  # GET /v1/health from 1.5.1: 200 {"status": "ok"}
        (405, True),  # before 1.5.1 the route is POST only
        (401, True),  # started with --api-key: every route, health included, needs the key
        (404, False),  # no such route: some other web server, or not the server's root
    ],
)
def test_the_preflight_knows_a_fish_speech_server_by_its_health_route(
    status: int, usable: bool
) -> None:
    """Rows `/v1/health` and `--api-key` of docs/fish-speech-api.md."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        return httpx.Response(status, json={"status": "ok"} if status == 200 else {})

    async def problem(url: str) -> ConnectionProblem | None:
        async with FishSpeechClient(url, transport=httpx.MockTransport(handler)) as client:
            return await client.connection_problem(1.0)

    found = asyncio.run(problem("http://fish"))
    assert (found is None) == usable and asked == ["GET /v1/health"]
    if not usable:
        assert found is not None and found.wrong_url
        assert "not as a Fish Speech server" in found.reason
    # The cloud API has no /v1/health: it is not asked, however its URL is spelled.
    assert asyncio.run(problem("https://API.fish.audio:443")) is None and len(asked) == 1


def test_use_memory_cache_is_on_for_requests_that_carry_a_voice() -> None:
    """Issue 19: the server encodes reference audio again on every request unless asked to keep
    it; asking changes no audio, so no content key either."""
    ref = Reference(audio=b"RIFF....", text="Hello.")
    auto = SynthesisOptions()
    assert auto.request_fields("Hi.")["use_memory_cache"] == "off"  # a seed voice: nothing to keep
    assert auto.request_fields("Hi.", "anna")["use_memory_cache"] == "on"
    assert auto.request_fields("Hi.", references=(ref,))["use_memory_cache"] == "on"
    assert SynthesisOptions(reference_id="anna").request_fields("Hi.")["use_memory_cache"] == "on"
    off = SynthesisOptions(use_memory_cache="off")
    assert off.request_fields("Hi.", "anna")["use_memory_cache"] == "off"
    # The keys of runs from before: the same fingerprints, whatever the setting.
    assert {SynthesisOptions(use_memory_cache=v).fingerprint() for v in ("auto", "on", "off")} == {
        "66e516c25069e0cf"
    }
    assert SynthesisOptions(reference_id="anna", seed=3).fingerprint() == "61c77aa4e1f7d570"


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("sk-never-shown", "FISHFLOW_API_KEY"),
        (
            ApiKey("sk-never-shown", source="Prefect Secret block 'fish'"),
            "Prefect Secret block 'fish'",
        ),
    ],
)
def test_a_401_names_where_the_key_came_from(key: str, named: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-never-shown"
        return httpx.Response(401, json={"statusCode": 401, "message": "Invalid token"})

    with pytest.raises(AuthenticationFailed) as info:
        call(handler, api_key=key)
    assert f"(check the API key: {named})" in str(info.value)
    assert "sk-never-shown" not in str(info.value)
