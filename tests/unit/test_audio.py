from __future__ import annotations

import numpy as np
import pytest

from fishflow.audio import Audio, check_plausible, decode, encode, stitch
from fishflow.errors import BadAudio
from fishflow.testing.emulator import speech_duration_s, synth_samples

RATE = 44_100


def tone(seconds: float, text: str = "x") -> Audio:
    return Audio(synth_samples(text, seconds, None), RATE)


def test_stitch_adds_pauses_and_fades_at_joins_only() -> None:
    parts = [tone(1.0, "a"), tone(0.5, "b"), tone(2.0, "c")]
    out = stitch(parts, pause_ms=250, fade_ms=10)
    assert out.duration_s == pytest.approx(3.5 + 2 * 0.25, abs=1e-4)
    assert out.samples[0] == parts[0].samples[0]  # no fade-in at the very start
    join = RATE  # end of the first part fades to silence
    assert abs(int(out.samples[join - 1])) < 200
    assert not out.samples[join : join + int(0.25 * RATE)].any()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_encode_decode_round_trip(fmt: str) -> None:
    audio = tone(1.5)
    back = decode(encode(audio, fmt))
    assert back.sample_rate == RATE
    assert back.duration_s == pytest.approx(1.5, abs=0.06)


def test_undecodable_body_is_bad_audio() -> None:
    with pytest.raises(BadAudio, match="not decodable"):
        decode(b'{"statusCode": 500}')


def test_plausibility_catches_what_the_server_calls_success() -> None:
    text = "A sentence of ordinary length that takes a few seconds to say aloud."
    good = tone(speech_duration_s(text))
    check_plausible(good, text, sample_rate=RATE, max_new_tokens=1024)
    with pytest.raises(BadAudio, match="far below"):
        check_plausible(
            tone(speech_duration_s(text) / 5), text, sample_rate=RATE, max_new_tokens=1024
        )
    with pytest.raises(BadAudio, match="sample rate"):
        check_plausible(Audio(good.samples, 24_000), text, sample_rate=RATE, max_new_tokens=1024)
    with pytest.raises(BadAudio, match="near-silent"):
        check_plausible(
            Audio(np.zeros_like(good.samples), RATE), text, sample_rate=RATE, max_new_tokens=1024
        )
    long_text = text * 4  # ~20 s of speech, cut by the server at a 10 s token cap
    with pytest.raises(BadAudio, match="token cap"):
        check_plausible(tone(215 / 21.5), long_text, sample_rate=RATE, max_new_tokens=215)


def test_stitch_takes_one_pause_per_join() -> None:
    parts = [tone(1.0, "a"), tone(0.5, "b"), tone(0.5, "c")]
    out = stitch(parts, pause_ms=[300, 1200], fade_ms=10)
    assert out.duration_s == pytest.approx(2.0 + 0.3 + 1.2, abs=1e-4)
    second = RATE + int(0.3 * RATE)  # the second part starts after the first pause
    assert not out.samples[RATE:second].any() and out.samples[second : second + 100].any()
    with pytest.raises(ValueError, match="2 pauses for 1 joins"):
        stitch(parts[:2], pause_ms=[300, 700], fade_ms=10)
