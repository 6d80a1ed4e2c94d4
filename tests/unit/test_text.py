from __future__ import annotations

from fishflow.text import detect_language, is_speakable, normalize


def test_normalize_collapses_whitespace_and_drops_control_characters() -> None:
    assert normalize("  a\t\tb \x00c\r\n\r\n\r\nd  e ") == "a b c\n\nd e"


def test_emoji_and_pictographs_are_never_kept_but_joiners_in_scripts_are() -> None:
    text = "Ready 🎉 set 👍🏽 go 👨‍👩‍👧 🇩🇪 ✅ 1️⃣ done ©. क्‍ष stays."
    assert normalize(text) == "Ready set go 1 done . क्‍ष stays."


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
