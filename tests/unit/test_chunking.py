from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fishflow.chunking import chunk_text
from fishflow.text import normalize


def texts(normalized: str, lang: str = "en", budget: int = 200) -> list[str]:
    return [c.text for c in chunk_text(normalized, lang, budget)]


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    text = "Dr. Smith paid 3.50 dollars for it, e.g. the blue one. It weighs 2.5 kg! Really?"
    assert texts(text, budget=60) == [
        "Dr. Smith paid 3.50 dollars for it, e.g. the blue one.",
        "It weighs 2.5 kg! Really?",
    ]


def test_cjk_sentences_keep_closing_quotes_and_count_three_bytes() -> None:
    text = "这是第一句。“这是引用！”他说。价格是3.5元？好的。"
    chunks = chunk_text(text, "zh", max_bytes=30)
    assert all(c.utf8_bytes <= 30 for c in chunks)
    assert "“这是引用！”他说。" in [c.text for c in chunks]
    assert not any(c.text.startswith("”") for c in chunks)


def test_japanese_brackets_stay_with_their_sentence() -> None:
    chunks = texts("これは最初の文です。「本当ですか？」と彼は言った。", "ja", budget=50)
    assert chunks == ["これは最初の文です。", "「本当ですか？」と彼は言った。"]


def test_long_sentence_falls_back_to_clauses_then_words_then_hard_cut() -> None:
    clause = "one clause here, another clause there, and a third clause too"
    assert texts(clause, budget=40) == [
        "one clause here, another clause there,",
        "and a third clause too",
    ]
    words = "word " * 30
    assert all(len(t) <= 40 for t in texts(normalize(words), budget=40))
    assert texts("x" * 95, budget=40) == ["x" * 40, "x" * 40, "x" * 15]


def test_offsets_point_into_the_normalised_text() -> None:
    text = normalize("First paragraph here.   Second   sentence.\n\n\tNext paragraph starts.")
    for c in chunk_text(text, "en", 30):
        assert " ".join(text[c.start : c.end].split()) == c.text


def test_short_heading_joins_the_next_paragraph_and_repeats_chunk_identically() -> None:
    shared = "Free shipping on all orders over fifty euros. Returns are free."
    a = chunk_text(normalize(f"Intro to product A is here.\n\n{shared}"), "en", 200)
    b = chunk_text(normalize(f"Something else entirely about B.\n\n{shared}"), "en", 200)
    assert a[-1].text == b[-1].text == shared
    heading = chunk_text(normalize("Welcome\n\nThis course is short."), "en", 200)
    assert [c.text for c in heading] == ["Welcome This course is short."]


_alphabet = st.sampled_from(list("abc xyz.,!?;:。！？、“”「」中文日本語äöü 12.5\n\t"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(_alphabet, max_size=600),
    st.integers(20, 300),
    st.sampled_from(["en", "zh", "ja", "de"]),
)
def test_chunking_properties(raw: str, budget: int, lang: str) -> None:
    text = normalize(raw)
    chunks = chunk_text(text, lang, budget)
    assert chunks == chunk_text(text, lang, budget)  # deterministic
    for c in chunks:
        assert c.utf8_bytes <= budget or len(c.text) == 1
        assert c.text == c.text.strip() and c.text
        assert not re.search(r"\s\s|[\n\t]", c.text)
    # Joined, the chunks give back the normalised text (whitespace aside), in order.
    assert "".join(c.text for c in chunks).replace(" ", "") == re.sub(r"\s", "", text)
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.end <= nxt.start and not text[prev.end : nxt.start].strip()
