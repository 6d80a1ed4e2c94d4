"""Bounds and scrubbing as plain functions: body caps, server words, terminal escapes, WAV sizes."""

from __future__ import annotations

import pytest

from fishflow.audio import TOKENS_PER_SECOND, decode, wav_shortfall
from fishflow.errors import BadAudio
from fishflow.untrusted import WAV_BYTES_PER_S, audio_body_cap, printable, server_words
from tests.hostile import cut_wav, speech_wav

SHORT = "Hello there."
LONG = "A sentence of some length that goes on. " * 10


def test_the_audio_cap_holds_any_plausible_answer_and_grows_with_the_text() -> None:
    for text in (SHORT, LONG, "这款绿茶产自杭州。"):
        # check_plausible accepts up to 3 x expected + 5 s: the cap holds all of that as WAV.
        assert audio_body_cap(text, 0) > len(speech_wav(text)) * 3
    assert audio_body_cap(LONG, 0) > audio_body_cap(SHORT, 0)


def test_the_audio_cap_never_exceeds_twice_the_token_cap() -> None:
    tokens = 1024
    cap_s = tokens / TOKENS_PER_SECOND
    huge = "word " * 20_000
    assert audio_body_cap(huge, tokens) <= 2 * cap_s * WAV_BYTES_PER_S + 64 * 1024
    # The token cap's whole audio still fits: a chunk cut at the cap is split, not refused.
    assert audio_body_cap(huge, tokens) > cap_s * WAV_BYTES_PER_S
    # max_new_tokens=0 (no cap on the server) still leaves a bound from the text.
    assert audio_body_cap(SHORT, 0) < 10 * 1024 * 1024


def test_server_words_drop_the_key_any_bearer_token_and_every_escape() -> None:
    key = "sk-SECRET-0123456789"
    said = (
        f"\x1b[31mdenied\x1b[0m: Authorization: Bearer {key}\x1b]0;title\x07 "
        "and authorization: bearer other-token-xyz\r\n\x9b2J\u202eevil\x00"
    )
    words = server_words(said, secrets=[key])
    assert key not in words and "other-token-xyz" not in words
    assert "Bearer ***" in words and "denied" in words and "evil" in words
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in words)
    assert "[31m" not in words and "title" not in words


def test_server_words_drop_a_key_split_by_escapes_or_cut_at_the_end() -> None:
    key = "sk-SECRET-0123456789"
    assert key[3:] not in server_words(f"sk-\x1b[1m{key[3:]}", secrets=[key])
    assert "sk-SECRET-01" not in server_words(f"echo: {key[:12]}", secrets=[key])


def test_server_words_are_cut() -> None:
    words = server_words("x" * 10_000, limit=300)
    assert len(words) == 300 and words.endswith("...")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain id-1", "plain id-1"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\nb\rc", "a\\x0ab\\x0dc"),
        ("x\u202eevil", "x\\u202eevil"),
        ("这款绿茶", "这款绿茶"),
    ],
)
def test_printable_shows_control_characters_as_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_a_wav_shorter_than_its_header_is_bad_audio() -> None:
    """docs/fish-speech-api.md, 'Responses and errors': WAV is RIFF PCM 16-bit mono 44.1 kHz."""
    whole = speech_wav(LONG)
    assert wav_shortfall(whole) is None and len(decode(whole).samples) > 0
    with pytest.raises(BadAudio, match="cut short"):
        decode(cut_wav(whole, 1 / 3))
    with pytest.raises(BadAudio, match="cut short"):
        decode(whole[:30])  # not even a whole header


def test_a_wav_whose_sizes_are_unknown_is_read_as_far_as_it_goes() -> None:
    """Streaming writers put 0xFFFFFFFF (or 0) where the length goes: that promises nothing."""
    whole = bytearray(speech_wav(SHORT))
    whole[4:8] = b"\xff\xff\xff\xff"
    whole[40:44] = b"\xff\xff\xff\xff"
    assert wav_shortfall(bytes(whole)) is None
    assert decode(bytes(whole)).duration_s > 0.3
