from __future__ import annotations

import itertools
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutagen.id3 import ID3

from fishflow.audio import Audio
from fishflow.captions import MAX_LINE_CHARS, Cue, Placed, cues, srt, webvtt
from fishflow.chunking import Chunk
from fishflow.publish import ItemPublisher
from fishflow.settings import AudioSettings, CaptionSettings
from fishflow.storage import LocalStore
from fishflow.testing.emulator import synth_samples

LONG = (
    "This sentence goes on for a good while, with clause after clause, so that it cannot "
    "possibly fit in a single caption of two lines of forty-two characters each."
)


def test_cues_are_sentences_of_at_most_two_short_lines_timed_inside_their_chunk() -> None:
    placed = [Placed("Short one. " + LONG, 0.0, 10.0), Placed("Next chunk.", 10.25, 1.5)]
    out = cues(placed, "en")
    assert out[0].lines == ("Short one.",)
    long_cues = out[1:-1]
    assert len(long_cues) > 1  # the long sentence is cut into several cues
    assert " ".join(" ".join(c.lines) for c in long_cues) == LONG
    assert all(len(c.lines) <= 2 and all(len(x) <= MAX_LINE_CHARS for x in c.lines) for c in out)
    first_chunk = out[:-1]
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(first_chunk))
    assert out[-2].end_s == 10.0 and out[-1].start_s == 10.25 and out[-1].end_s == 11.75
    # Time is shared by characters: the 10-character cue gets 10/(10+len(LONG)) of the chunk.
    assert abs(out[0].end_s - 10.0 * 10 / (10 + len(LONG))) < 0.1


def test_a_list_number_stays_with_its_sentence() -> None:
    out = cues([Placed("1. Install Python. 2. Run it now.", 0.0, 4.0)], "en")
    assert [c.lines for c in out] == [("1. Install Python.",), ("2. Run it now.",)]


def _columns(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("ja", "パイプラインはデータをソースから宛先へ移動させる仕組みです。" * 3),
        ("zh", "这是一个很长的中文句子，用来测试字幕的换行是否按照全角字符的宽度来计算。" * 2),
        ("ko", "한국어 텍스트는 띄어쓰기를 사용합니다 그래서 단어 사이에서 줄을 바꿉니다."),
    ],
)
def test_full_width_text_counts_two_columns_a_character(language: str, text: str) -> None:
    out = cues([Placed(text, 0.0, 20.0)], language)
    lines = [line for c in out for line in c.lines]
    assert all(_columns(line) <= MAX_LINE_CHARS for line in lines)
    assert max(_columns(line) for line in lines) > MAX_LINE_CHARS - 8  # lines are filled
    assert not any(line[0] in "、。，！？" for line in lines)  # never a line of its own
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize(
    ("text", "whole"),
    [
        ("我们使用" * 4 + "Kubernetes。然后继续", "Kubernetes。"),  # a word is never cut for 。
        ("あ" * 20 + "。」いいいい", "。」"),  # closing marks stay together, off the line start
        ("한국어" * 7 + "입니다 그리고 끝.", "한국어" * 7),  # a word as long as a line, by columns
    ],
)
def test_wrapping_keeps_words_and_closing_marks_whole(text: str, whole: str) -> None:
    lines = [line for cue in cues([Placed(text, 0.0, 5.0)], "zh") for line in cue.lines]
    assert all(0 < _columns(line) <= MAX_LINE_CHARS for line in lines)
    assert any(whole in line for line in lines)
    assert not any(line[0] in "、。，！？」" for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_webvtt_and_srt_render_the_same_cues() -> None:
    out = cues([Placed("Fish & chips <cheap>. Then tea.", 61.5, 3.0)], "en")
    vtt = webvtt(out).decode()
    assert vtt.startswith("WEBVTT\n\n1\n00:01:01.500 --> ")
    assert "Fish &amp; chips &lt;cheap&gt;." in vtt
    text = srt(out).decode()
    # SRT's text is escaped as WebVTT's: players read <i>, <font> and "-->" in it.
    assert text.startswith("1\n00:01:01,500 --> ") and "Fish &amp; chips &lt;cheap&gt;." in text
    assert re.search(r"2\n00:01:0\d,\d{3} --> 00:01:04,500\nThen tea.", text)


# Text as hostile as a catalog can be: cue timings, tags, entities, every kind of line break.
_hostile = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "-->",
                "--",
                ">",
                "<",
                "<b>",
                "</i>",
                "<c.red>",
                "&",
                "&amp;",
                "&lt;",
                "\n",
                "\n\n",
                "\r\n",
                "\r",
                "\u2028",
                "\u2029",
                "\x0b",
                "\x0c",
                "\x85",
                "\x00",
                "\x1b[31m",
                "\t",
                " ",
                "1",
                "00:00:01,000 --> 00:00:02,000",
                "WEBVTT",
                "NOTE",
                "word",
                "汉字",
            ]
        ),
        st.text(max_size=5),
    ),
    max_size=12,
).map("".join)


def _blocks(text: str) -> list[list[str]]:
    return [block.split("\n") for block in text.strip("\n").split("\n\n") if block]


def _visible(text: str) -> str:
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)


def _unescape(line: str) -> str:
    return line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_hostile, min_size=1, max_size=3), max_size=6))
def test_caption_text_never_breaks_a_cue_in_webvtt_or_srt(texts: list[list[str]]) -> None:
    cue_list = [Cue(i * 2.0, i * 2.0 + 1.5, tuple(lines)) for i, lines in enumerate(texts)]
    # What a viewer should see: each line's words, controls and line breaks read as spaces.
    shown = [[" ".join(_visible(raw).split()) for raw in c.lines] for c in cue_list]
    shown = [[line for line in lines if line] for lines in shown]
    expected = [lines for lines in shown if lines]
    vtt = webvtt(cue_list).decode()
    assert vtt.startswith("WEBVTT\n")
    for rendered, sep in ((vtt.removeprefix("WEBVTT\n"), "."), (srt(cue_list).decode(), ",")):
        blocks = _blocks(rendered)
        assert len(blocks) == len(expected)  # one block per cue with text: none split, none lost
        for number, (block, lines) in enumerate(zip(blocks, expected, strict=True), 1):
            assert block[0] == str(number)
            assert re.fullmatch(
                rf"\d\d:\d\d:\d\d\{sep}\d{{3}} --> \d\d:\d\d:\d\d\{sep}\d{{3}}", block[1]
            )
            text = block[2:]
            assert all(line.strip() for line in text)  # no blank line inside a cue
            assert not any("-->" in line or "<" in line or ">" in line for line in text)
            assert not any(unicodedata.category(ch) == "Cc" for line in text for ch in line)
            assert [" ".join(_unescape(line).split()) for line in text] == lines


def test_chapters_from_headings_in_webvtt_and_id3_frames(tmp_path: Path) -> None:
    texts = [(1, "Intro."), (0, "Welcome to the course, more words."), (2, "Setup.")]
    publisher = ItemPublisher(
        store=LocalStore(str(tmp_path)),
        key="audio/course.mp3",
        audio=AudioSettings(format="mp3"),
        captions=CaptionSettings(),
        language="en",
        chunk_count=3,
        sample_rate=44_100,
    )
    published = None
    for i, (heading, text) in enumerate(texts):  # 2 s each, sentence pauses between
        samples = synth_samples(text, 2.0, None)
        chunk = Chunk(i, text, 0, 1, boundary="sentence", heading_level=heading)
        _, published = publisher.add(chunk, Audio(samples, 44_100))
    assert published is not None and published.chapters_uri is not None
    chapters = (tmp_path / "audio/course.chapters.vtt").read_text()
    assert "00:00:00.000 --> 00:00:04.600\nIntro" in chapters
    assert "00:00:04.600 --> 00:00:06.600\nSetup" in chapters
    tags = ID3(tmp_path / "audio/course.mp3")
    frames = sorted(tags.getall("CHAP"), key=lambda f: f.start_time)
    assert [(f.start_time, f.end_time, str(f.sub_frames["TIT2"])) for f in frames] == [
        (0, 4600, "Intro"),
        (4600, 6600, "Setup"),
    ]
    assert tags.getall("CTOC")[0].child_element_ids == [f.element_id for f in frames]
    assert (tmp_path / "audio/course.vtt").exists() and (tmp_path / "audio/course.srt").exists()
    assert published.duration_s > 6.5  # mp3 adds encoder padding, never removes audio
    assert np.isclose(published.duration_s, 6.6, atol=0.1)


def test_srt_carries_no_cue_timing_or_tag_from_the_text() -> None:
    out = cues([Placed("Run a --> b now. Then <i>lean</i> <font color=red>in</font>.", 0, 4)], "en")
    text = srt(out).decode()
    lines = text.splitlines()
    assert sum("-->" in line for line in lines) == len(out) == 2  # the timings, nothing else
    assert "a --&gt; b" in text and "&lt;i&gt;lean&lt;/i&gt;" in text and "<" not in text
