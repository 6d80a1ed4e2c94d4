"""The client against hostile servers on loopback: it keeps its memory, its time and its secrets.

Each server answers as no Fish Speech server does (tests/hostile.py); the client must turn each
answer into a retryable error of the tree, never an ``ok`` chunk, never an unbounded read.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fishflow.audio import Audio
from fishflow.errors import BadAudio, ServerError, ServerUnavailable, SynthesisError
from fishflow.fish_speech import FishSpeechClient
from fishflow.settings import SynthesisOptions
from fishflow.untrusted import audio_body_cap
from tests.hostile import HostileServer

TEXT = "Hello there, this is a test sentence."
KEY = "sk-SECRET-abcdef123456"


def synthesize(
    url: str,
    *,
    read_timeout_s: float = 10.0,
    body_timeout_s: float | None = None,
    api_key: str | None = None,
) -> Audio:
    async def go() -> Audio:
        async with FishSpeechClient(url, api_key=api_key) as client:
            return await client.synthesize(
                TEXT,
                SynthesisOptions(),
                read_timeout_s=read_timeout_s,
                body_timeout_s=body_timeout_s,
            )

    return asyncio.run(go())


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_an_endless_body_is_cut_at_the_cap_and_memory_stays_flat() -> None:
    # The peak resident size since now (Linux: writing 5 to clear_refs resets VmHWM).
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    with HostileServer("endless", endless_bytes=400 << 20) as server:
        with pytest.raises(BadAudio, match="runs over") as caught:
            synthesize(server.url)
        sent = server.sent
    growth_mb = (_status_kb("VmHWM") - before) / 1024
    assert caught.value.retryable and not caught.value.fatal
    # It stopped reading at the cap and dropped the connection: the server could not get its
    # 400 MB out (what it did send is the cap plus what the sockets' buffers took).
    cap = audio_body_cap(TEXT, SynthesisOptions().max_new_tokens)
    assert sent < cap + (64 << 20)
    assert growth_mb < 3 * cap / (1 << 20) + 40


@pytest.mark.parametrize("status", [500, 503])
def test_an_endless_error_body_is_read_only_as_far_as_its_first_words(status: int) -> None:
    with HostileServer("endless", endless_bytes=200 << 20, status=status) as server:
        with pytest.raises(SynthesisError) as caught:
            synthesize(server.url)
        sent = server.sent
    assert caught.value.http_status == status and caught.value.retryable
    assert len(caught.value.message) < 400 and "\x00" not in caught.value.message
    assert sent < 64 << 20  # the socket buffers' worth, not the 200 MB


def test_a_trickling_server_times_out_as_a_whole(tmp_path: Path) -> None:
    """One byte every 0.1 s never trips a 1 s read timeout; the body's own deadline does (a
    server error, retried a bounded number of times), and the whole exchange's deadline
    bounds the rest."""
    with HostileServer("trickle", trickle_s=0.1) as server:
        with pytest.raises(ServerError) as caught:
            synthesize(server.url, read_timeout_s=1.0)
        sent = server.sent
    assert caught.value.retryable
    assert "trickled: its body did not arrive within 1 s of its headers" in caught.value.message
    assert 0 < sent < 100  # it did trickle, and the client hung up long before the end
    with (
        HostileServer("trickle", trickle_s=0.1) as server,
        pytest.raises(ServerUnavailable) as whole,
    ):
        synthesize(server.url, read_timeout_s=1.0, body_timeout_s=60)
    assert whole.value.timed_out and "no whole answer within 2 s" in whole.value.message


def test_a_wav_cut_to_a_third_with_a_matching_length_is_never_ok() -> None:
    with HostileServer("short_wav") as server, pytest.raises(BadAudio) as caught:
        synthesize(server.url)
    assert caught.value.retryable and "cut short" in caught.value.message


def test_an_error_body_echoing_the_key_is_scrubbed_before_it_is_an_error() -> None:
    with HostileServer("echo") as server, pytest.raises(ServerError) as caught:
        synthesize(server.url, api_key=KEY)
    error: SynthesisError = caught.value
    text = f"{error} {error.message} {error!r}"
    assert error.retryable and "bad request" in text
    assert KEY not in text and "\x1b" not in text and "\x07" not in text
