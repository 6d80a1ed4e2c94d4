from __future__ import annotations

from fishflow.text import detect_language, is_speakable, markdown_to_text, normalize


def test_normalize_collapses_whitespace_and_drops_control_characters() -> None:
    assert normalize("  a\t\tb \x00c\r\n\r\n\r\nd  e ") == "a b c\n\nd e"


def test_markdown_is_reduced_to_speakable_text() -> None:
    md = (
        "# Title\n\nSome *bold* [link](http://x.io) text.\n\n"
        "- one\n- two\n\n```\ncode()\n```\n\n![i](a.png)"
    )
    assert markdown_to_text(md) == "Title.\n\nSome bold link text.\n\none.\n\ntwo."


def test_detect_language_from_script() -> None:
    assert detect_language("これは日本語の文です") == "ja"
    assert detect_language("漢字だけ、かな") == "ja"
    assert detect_language("这是中文") == "zh"
    assert detect_language("안녕하세요") == "ko"
    assert detect_language("Привет") == "ru"
    assert detect_language("Grüße aus Berlin") == "en"


def test_emoji_and_punctuation_alone_are_not_speakable() -> None:
    assert not is_speakable("🎉🎉 !!! ...")
    assert is_speakable("🎉 ok")
