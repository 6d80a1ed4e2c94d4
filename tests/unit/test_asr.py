"""The recognizer check's measure: character error rate between what was sent and what a
recognizer heard, both normalised alike (numbers in words, no case, no punctuation)."""

from __future__ import annotations

import numpy as np
import pytest

from fishflow.asr import character_error_rate, comparable, recognizer
from fishflow.errors import ConfigError


def test_numbers_case_and_punctuation_do_not_count_as_errors() -> None:
    sent = "A mug, 350 ml. Dishwasher safe!"
    heard = "a mug three hundred and fifty millilitres dishwasher safe"
    assert comparable(sent, "en") == comparable(heard, "en")
    assert character_error_rate(sent, heard, "en") == 0.0
    assert character_error_rate("共有5个。", "共有五个", "zh") == 0.0


def test_what_a_wrong_answer_sounds_like_is_a_high_error_rate() -> None:
    sent = "The quick brown fox jumps over the lazy dog."
    assert character_error_rate(sent, "the quick brown fox", "en") > 0.4  # the end swallowed
    repeated = "the quick brown fox jumps over the lazy dog over the lazy dog over the lazy dog"
    assert character_error_rate(sent, repeated, "en") > 0.5  # the end said again
    assert character_error_rate(sent, "", "en") == 1.0  # nothing heard
    assert 0 < character_error_rate(sent, "the quick brown fox jumps over a lazy dog", "en") < 0.1


def test_an_unknown_recognizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="faster-whisper:MODEL"):
        recognizer("whisper-please")


def test_a_recognizer_of_your_own_plugs_in_by_name_and_its_verdict_is_asr() -> None:
    from fishflow.asr import asr_verdict, heard
    from fishflow.qa import Verdict

    silence = np.zeros(4410, dtype=np.int16)
    assert heard(silence, 44_100, "The kettle boils water quickly.", "en",
                 "python:tests.recognizers:HearsTheKettle") == 0.0  # fmt: skip
    passed = Verdict("pass")
    assert asr_verdict(0.1, 0.3, passed) is passed
    suspect = asr_verdict(0.9, 0.3, passed)
    assert suspect.suspect and suspect.check == "asr" and suspect.measure == 0.9
    with pytest.raises(ConfigError, match="no attribute"):
        recognizer("python:tests.recognizers:Nobody")
