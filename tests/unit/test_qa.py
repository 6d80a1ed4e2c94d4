"""The answer check (fishflow.qa) on synthetic signals: what passes, what is trimmed, and which
check fires for each way a model gets an answer wrong."""

from __future__ import annotations

import numpy as np
import pytest

from fishflow.qa import RateStats, SpeechRates, check, retry_seed
from fishflow.settings import QaSettings
from fishflow.testing.emulator import (
    BAD_MODES,
    SAMPLE_RATE,
    misbehave,
    speech_duration_s,
    synth_samples,
)
from fishflow.testing.speech import speak

TEXT = (
    "The kettle holds one and a half litres and boils in under three minutes, "
    "then keeps the water warm for an hour."
)
SETTINGS = QaSettings()
LEARNED = RateStats(ratio=1.0, spread=0.02, count=100)  # a voice whose rate the run knows
RATE = SAMPLE_RATE


def tone(text: str = TEXT, seconds: float | None = None) -> np.ndarray:
    """The emulator's good answer: a tone as long as the text takes to say."""
    return synth_samples(text, seconds or speech_duration_s(text), "id:anna")


def noise(seconds: float, level: float = 0.05, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, level * 32767, int(seconds * RATE)).clip(-32768, 32767).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def test_a_good_answer_passes_whole() -> None:
    samples = tone()
    verdict = check(samples, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.outcome == "pass" and verdict.check is None
    assert (verdict.start, verdict.end) == (0, len(samples))
    assert verdict.ratio == pytest.approx(1.0, abs=0.1)  # the emulator speaks at the rough rate


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("repeat_end", "rate_long"),
        ("drop_end", "rate_short"),
        ("trail_noise", "trail_noise"),
        ("babble", "babble"),
    ],
)
@pytest.mark.parametrize("x", [0.0, 0.5, 0.999])
def test_each_bad_answer_of_the_emulator_is_suspect_by_its_check(
    mode: str, expected: str, x: float
) -> None:
    assert mode in BAD_MODES
    verdict = check(misbehave(tone(), mode, x, "k"), RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.suspect and verdict.check == expected, verdict
    assert verdict.severity >= 1.0 and verdict.measure is not None


def test_white_noise_instead_of_speech_is_suspect() -> None:
    verdict = check(noise(6.0, 0.2), RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.suspect and verdict.check in ("babble", "noise")


def test_trailing_silence_apart_from_the_speech_is_trimmed_to_a_short_pad() -> None:
    speech = tone()
    samples = np.concatenate([speech, silence(2.5)])
    verdict = check(samples, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.outcome == "trim" and verdict.end is not None
    kept_tail_s = (verdict.end - len(speech)) / RATE
    assert verdict.start == 0 and 0 <= kept_tail_s <= SETTINGS.edge_pad_s + 0.05


def test_leading_silence_and_a_quiet_breath_after_a_gap_are_trimmed() -> None:
    speech = tone()
    breath = noise(1.0, 0.004)  # -48 dBFS: far below the speech
    samples = np.concatenate([silence(1.5), speech, silence(0.4), breath])
    verdict = check(samples, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.outcome == "trim"
    assert verdict.start / RATE == pytest.approx(1.5 - SETTINGS.edge_pad_s, abs=0.06)
    assert verdict.end is not None and verdict.end < len(samples) - RATE  # the breath is cut


def test_loud_noise_after_a_gap_is_trimmed_but_running_into_the_speech_is_suspect() -> None:
    speech = tone()
    apart = np.concatenate([speech, silence(0.5), noise(2.0)])
    assert check(apart, RATE, TEXT, LEARNED, SETTINGS).outcome == "trim"
    joined = np.concatenate([speech, noise(2.0)])
    verdict = check(joined, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.check == "trail_noise" and verdict.measure == pytest.approx(1.7, abs=0.15)
    lead = check(np.concatenate([noise(2.0), speech]), RATE, TEXT, LEARNED, SETTINGS)
    assert lead.check == "lead_noise"


def test_a_short_edge_is_left_alone() -> None:
    samples = np.concatenate([silence(0.3), tone(), silence(0.3)])
    assert check(samples, RATE, TEXT, LEARNED, SETTINGS).outcome == "pass"


def test_clipping_and_dc_offset_are_suspect() -> None:
    loud = (tone().astype(np.int32) * 6).clip(-32768, 32767).astype(np.int16)
    verdict = check(loud, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.check == "clipping"
    assert verdict.measure is not None and verdict.measure > SETTINGS.max_clipped
    shifted = (tone().astype(np.int32) + 4000).astype(np.int16)
    verdict = check(shifted, RATE, TEXT, LEARNED, SETTINGS)
    assert verdict.check == "dc_offset" and verdict.measure == pytest.approx(4000 / 32768, 0.05)


def test_the_rate_is_judged_at_the_voice_s_learned_rate() -> None:
    slow_voice = RateStats(ratio=1.6, spread=0.03, count=50)  # this voice takes 1.6x as long
    samples = tone(seconds=1.6 * speech_duration_s(TEXT))
    assert check(samples, RATE, TEXT, slow_voice, SETTINGS).outcome == "pass"
    assert check(samples, RATE, TEXT, LEARNED, SETTINGS).check == "rate_long"
    assert check(tone(), RATE, TEXT, slow_voice, SETTINGS).check == "rate_short"


def test_before_warmup_the_rough_rate_is_used_with_the_rough_bounds() -> None:
    cold = RateStats()  # no answer of this voice yet: a slow or fast voice must not be marked
    seconds = speech_duration_s(TEXT)
    for factor in (0.5, 1.6, 2.5):
        assert check(tone(seconds=factor * seconds), RATE, TEXT, cold, SETTINGS).outcome == "pass"
    verdict = check(tone(seconds=4 * seconds), RATE, TEXT, cold, SETTINGS)  # over 3x + 5 s
    assert verdict.check == "rate_long" and verdict.ratio == pytest.approx(4, rel=0.1)
    assert check(tone(seconds=0.3 * seconds), RATE, TEXT, cold, SETTINGS).check == "rate_short"


def test_a_voice_slower_than_the_rough_rate_is_learned_in_a_few_answers() -> None:
    rates = SpeechRates()
    slow = tone(seconds=2.2 * speech_duration_s(TEXT))
    for _ in range(SETTINGS.rate_warmup):
        verdict = check(slow, RATE, TEXT, rates.expected("anna", "en"), SETTINGS)
        assert verdict.outcome == "pass" and verdict.ratio is not None
        rates.add("anna", "en", verdict.ratio)
    assert check(slow, RATE, TEXT, rates.expected("anna", "en"), SETTINGS).outcome == "pass"
    twice = tone(seconds=2 * 2.2 * speech_duration_s(TEXT))  # said twice, at this voice's rate
    assert check(twice, RATE, TEXT, rates.expected("anna", "en"), SETTINGS).check == "rate_long"


def test_a_noisy_voice_widens_its_own_bounds() -> None:
    wobbly = RateStats(ratio=1.0, spread=0.12, count=50)  # 4 x 0.12 = 0.48 in log: x1.6
    samples = tone(seconds=1.5 * speech_duration_s(TEXT))
    assert check(samples, RATE, TEXT, LEARNED, SETTINGS).check == "rate_long"
    assert check(samples, RATE, TEXT, wobbly, SETTINGS).outcome == "pass"


def test_speech_rates_are_robust_medians_per_voice_and_language() -> None:
    rates = SpeechRates()
    for ratio in [1.2] * 20 + [5.0, 0.1]:  # two outliers do not move a median
        rates.add("anna", "en", ratio)
    stats = rates.expected("anna", "en")
    assert stats.count == 22 and stats.ratio == pytest.approx(1.2)
    assert stats.spread == pytest.approx(0.0)
    assert rates.expected("anna", "de") == RateStats()  # another language: the prior
    rates.add("anna", "en", float("nan"))
    assert rates.expected("anna", "en").count == 22


def test_the_check_is_pure() -> None:
    samples = misbehave(tone(), "repeat_end", 0.3, "k")
    assert check(samples, RATE, TEXT, LEARNED, SETTINGS) == check(
        samples, RATE, TEXT, LEARNED, SETTINGS
    )


def test_retry_seeds_are_stable_distinct_and_in_range() -> None:
    seeds = [retry_seed(None, TEXT, attempt) for attempt in (1, 2, 3)]
    assert seeds == [retry_seed(None, TEXT, attempt) for attempt in (1, 2, 3)]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**31 for s in seeds)
    assert retry_seed(7, TEXT, 1) != seeds[0]


def test_checks_can_be_loosened_by_settings() -> None:
    joined = np.concatenate([tone(), noise(2.0)])
    lenient = SETTINGS.model_copy(update={"max_edge_s": 5.0})
    assert check(joined, RATE, TEXT, LEARNED, SETTINGS).suspect
    assert check(joined, RATE, TEXT, LEARNED, lenient).check != "trail_noise"


SPOKEN = [
    "The kettle holds one and a half litres and boils in under three minutes.",
    "Every part comes apart for cleaning, and the base turns so either hand can pour.",
    "This lesson explains how a small model learns to read and speak, one idea at a time.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Numbers such as 350 millilitres or 249 euros are read out in full by the voice.",
    "A short one.",
]


def test_real_speech_passes_and_teaches_its_rate() -> None:
    """espeak-ng's words (voiced and unvoiced sounds, pauses, consonants at the ends) are
    speech to every check, in several languages and pitches."""
    rates = SpeechRates()
    for round_ in range(3):
        for i, text in enumerate(SPOKEN):
            samples = speak(text, pitch=20 + 25 * (i % 3))
            verdict = check(samples, RATE, text, rates.expected("e", "en"), SETTINGS)
            assert verdict.outcome in ("pass", "trim"), (round_, text, verdict)
            assert verdict.ratio is not None
            rates.add("e", "en", verdict.ratio)
    assert rates.expected("e", "en").count == 3 * len(SPOKEN)
    for language, text in [
        ("de", "Ein Stuhl aus Eiche für das Esszimmer, gebaut für viele Jahre."),
        ("zh", "这款绿茶产自杭州，香气清高，每罐二百五十克。"),
    ]:
        verdict = check(speak(text, language=language), RATE, text, RateStats(), SETTINGS)
        assert verdict.outcome in ("pass", "trim"), (language, verdict)


@pytest.mark.parametrize("mode", sorted(BAD_MODES))
def test_each_fault_on_real_speech_is_suspect_or_cut_away(mode: str) -> None:
    rates = SpeechRates()
    for text in SPOKEN[:4] * 2:
        verdict = check(speak(text), RATE, text, rates.expected("e", "en"), SETTINGS)
        rates.add("e", "en", verdict.ratio or 1.0)
    text = SPOKEN[2]
    good = speak(text)
    verdict = check(
        misbehave(good, mode, 0.3, "k"), RATE, text, rates.expected("e", "en"), SETTINGS
    )
    if mode == "trail_noise" and verdict.outcome == "trim":
        # espeak ends in silence, so the noise is apart from the speech: it is cut, all of it.
        assert verdict.end is not None and verdict.end <= len(good)
    else:
        assert verdict.suspect, verdict


def test_marked_items_are_counted_in_the_totals_the_summary_and_its_artifact() -> None:
    from datetime import UTC, datetime

    from fishflow.manifest import ItemRow
    from fishflow.outcomes import ItemOutcome
    from fishflow.run import RunTotals
    from fishflow.tasks.reporting import summary_markdown

    def row(i: int, status: str, qa: str | None) -> ItemRow:
        now = datetime.now(UTC)
        return ItemRow(
            run_id="r", item_id=f"i{i}", source_row=i, status=status, created_at=now, qa=qa
        )

    rows = [
        row(0, "ok", "marked"),
        row(1, "ok", "pass"),
        row(2, "ok", None),
        row(3, "failed", None),
    ]
    totals = RunTotals()
    totals.add([ItemOutcome(r) for r in rows])
    assert (totals.ok, totals.failed, totals.marked) == (3, 1, 1)
    read_back = [{name: getattr(r, name) for name in r.__slots__} for r in rows]
    assert RunTotals.from_items(read_back).marked == 1
    summary = totals.summary("r", wall_s=1.0, qa_on_marked="fail")
    assert summary.marked == 1 and summary.exit_code == 2
    assert "1 item(s) published marked" in summary_markdown(summary)
    assert "published marked" not in summary_markdown(RunTotals(ok=2).summary("r", wall_s=1.0))
