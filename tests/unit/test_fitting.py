"""Chunks that fit the server: the budget from max_new_tokens and a server's text limit, and
the split of a chunk the server could not take whole. Voice ids, seeds and reference paths."""

from __future__ import annotations

import os

import pytest

from fishflow.chunking import DEFAULT_CHUNK_BYTES, chunk_budget, split_at_clause, split_in_two
from fishflow.settings import reference_id_problem
from fishflow.text import normalize
from fishflow.voices import item_seed, resolve


def test_chunk_budget_keeps_a_text_within_the_servers_text_limit() -> None:
    """A server's character limit becomes bytes at the text's narrowest character
    (docs/fish-speech-api.md '--max-text-length N counts characters'): the pieces of a text split
    at that budget each hold at most N characters, in one script or mixed."""
    english = "The long lesson explains one more idea, slowly and in detail. " * 10
    chinese = "这款绿茶产自杭州，香气清高，口感鲜爽，每罐二百五十克。" * 10
    mixed = "绿茶 green tea, 口感鲜爽. " * 10
    assert chunk_budget(max_new_tokens=1024, chunk_bytes=400, max_chars=40, text=chinese) == 120
    assert chunk_budget(max_new_tokens=1024, chunk_bytes=400, max_chars=120, text=english) == 120
    assert chunk_budget(max_new_tokens=1024, chunk_bytes=400, max_chars=50, text=mixed) == 50
    assert chunk_budget(max_new_tokens=1024, max_chars=1000, text=english) == DEFAULT_CHUNK_BYTES
    for text, lang, limit in ((english, "en", 120), (chinese, "zh", 40), (mixed, "zh", 50)):
        budget = chunk_budget(max_new_tokens=1024, chunk_bytes=400, max_chars=limit, text=text)
        pieces = split_at_clause(normalize(text), budget, language=lang)
        assert len(pieces) > 1
        assert all(0 < len(p) <= limit for p in pieces)


@pytest.mark.parametrize(
    ("text", "halves"),
    [
        (
            "The first sentence is here. The second one, with a clause, is longer than that.",
            ("The first sentence is here.", "The second one, with a clause, is longer than that."),
        ),
        (
            "One long sentence, with a clause in its middle, and words on either side of it",
            ("One long sentence, with a clause in its middle,", "and words on either side of it"),
        ),
        (
            "这款绿茶产自杭州，香气清高，每罐二百五十克，另有礼盒",
            ("这款绿茶产自杭州，香气清高，", "每罐二百五十克，另有礼盒"),
        ),
        ("abcdefgh", ("abcd", "efgh")),
    ],
)
def test_split_in_two_cuts_near_the_middle_at_the_most_natural_boundary(
    text: str, halves: tuple[str, str]
) -> None:
    assert split_in_two(text) == halves
    assert "".join(split_in_two(text) or ()).replace(" ", "") == text.replace(" ", "")


def test_split_in_two_gives_up_on_a_single_character() -> None:
    assert split_in_two("字") is None and split_in_two(" a ") is None


def test_reference_ids_follow_the_servers_pattern() -> None:
    """Row 'reference_id is validated, as a 500': ^[a-zA-Z0-9\\-_ ]+$, at most 255."""
    for good in ("anna", "Anna the 2nd", "narrator_v2-b", "x" * 255):
        assert reference_id_problem(good) is None
    for bad in ("narrator.v2", "a/b", "../x", "", "zoë", "x" * 256, "anna\n"):
        assert reference_id_problem(bad) is not None, bad


def test_item_seeds_are_stable_per_id_and_fit_every_rng() -> None:
    assert item_seed("sku-1") == item_seed("sku-1") != item_seed("sku-2")
    assert all(0 <= item_seed(f"i{i}") < 2**31 for i in range(100))


def test_reference_paths_are_relative_to_the_source(tmp_path) -> None:
    source = tmp_path / "catalog.csv"
    assert resolve("voices/a.wav", str(source)) == str(tmp_path / "voices" / "a.wav")
    assert resolve("/abs/a.wav", str(source)) == "/abs/a.wav"
    assert resolve("v/a.wav", "s3://bucket/exports/c.csv") == "s3://bucket/exports/v/a.wav"
    assert resolve("s3://b/a.wav", str(source)) == "s3://b/a.wav"
    # a database source has no folder: relative to where the run starts
    assert resolve("v/a.wav", "postgresql://db/catalog") == os.path.abspath("v/a.wav")


def test_audio_at_the_cap_is_a_text_too_long_for_one_generation_or_babble() -> None:
    """Row 'max_new_tokens caps each generation ... a cut-off answer is a normal 200': a long
    text cut at the cap is split (CutAtTokenCap, not retried); a short text that ran to the cap
    is babble, retried like other bad audio."""
    import numpy as np

    from fishflow.audio import Audio, check_plausible
    from fishflow.errors import BadAudio, CutAtTokenCap

    cap_tokens = 215  # 10 s
    at_cap = Audio((3000 * np.sin(np.arange(441_000) / 5)).astype(np.int16), 44_100)
    long_text = "This sentence takes a few seconds to say out loud. " * 6
    with pytest.raises(CutAtTokenCap) as cut:
        check_plausible(at_cap, long_text, sample_rate=44_100, max_new_tokens=cap_tokens)
    assert not cut.value.retryable
    with pytest.raises(BadAudio) as babble:
        check_plausible(at_cap, "Hi.", sample_rate=44_100, max_new_tokens=cap_tokens)
    assert babble.type is BadAudio and babble.value.retryable
