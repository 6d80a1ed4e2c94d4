"""Markdown to speech, construct by construct (the README's table "What gets spoken from
Markdown"), and the property that nothing unspeakable ever reaches a server."""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from fishflow.chunking import chunk_blocks
from fishflow.markdown import code_cue, markdown_blocks
from fishflow.spoken import SpeechOptions, speak_blocks
from fishflow.text import Block, blocks_text, detect_language


def spoken(markdown: str, language: str | None = None, **options: object) -> list[str]:
    """What the server is asked to say, block by block, as the pipeline makes it."""
    blocks = markdown_blocks(markdown, language=language, **options)  # type: ignore[arg-type]
    language = language or detect_language(blocks_text(blocks))
    return [b.text for b in speak_blocks(blocks, language, SpeechOptions())]


def test_headings_are_sentences_of_their_own_with_their_scripts_full_stop() -> None:
    blocks = markdown_blocks("# Lesson 3: Sensors\n\n## Ready?\n\nText follows")
    assert blocks == (
        Block("Lesson 3: Sensors.", "heading", 1),
        Block("Ready?", "heading", 2),
        Block("Text follows.", "paragraph"),
    )
    assert spoken("# 第一课：简介\n\n这是一个例子") == ["第一课：简介。", "这是一个例子。"]
    assert spoken("# はじめに\n\n## Python のインストール\n\nこれは例です。") == [
        "はじめに。",
        "Python のインストール。",  # a Latin word last, in a Japanese document: still "。"
        "これは例です。",
    ]
    assert spoken("## Prerequisites:\n\n## Done.") == ["Prerequisites.", "Done."]


def test_a_heading_repeated_by_the_link_under_it_is_said_once() -> None:
    md = "## Pre-lecture quiz\n\n[Pre-lecture quiz](https://quiz.example.net/quiz/1)\n\nNext."
    assert spoken(md) == ["Pre-lecture quiz.", "Next."]
    # A link with other words around it is content, and said.
    md = "## Quiz\n\nTake the [quiz](https://quiz.example.net) now."
    assert spoken(md) == ["Quiz.", "Take the quiz now."]
    # So is an image whose alt text repeats the heading.
    assert spoken("## Diagram\n\n![Diagram](img/diagram.png)\n\nAfter.") == ["Diagram.", "After."]


def test_code_blocks_become_one_cue_in_the_items_language_or_nothing() -> None:
    md = "Run this:\n\n```sh\npip install x\n```\n\n```python\nx = 1\n```\n\n    indented()\n"
    assert spoken(md) == ["Run this.", "Code example."]  # consecutive blocks: one cue
    assert [b.kind for b in markdown_blocks(md)] == ["paragraph", "code"]
    assert spoken(md, code="silent") == ["Run this."]
    assert spoken("运行以下命令：\n\n```\nls\n```") == ["运行以下命令。", "代码示例。"]
    assert spoken("次のコマンドを実行します。\n\n```\nls\n```")[-1] == "コード例。"
    assert spoken("Führen Sie aus:\n\n```\nls\n```", language="de")[-1] == "Codebeispiel."
    assert code_cue("fr-CA") == "Exemple de code." and code_cue("xx") == "Code example."
    assert spoken("<pre><code>x = 1</code></pre>") == ["Code example."]


def test_inline_code_is_said_in_words_never_as_a_placeholder() -> None:
    md = "Use `pandas` and `read_csv()` in `app.py`, `pip install x` or `Ctrl+Shift+P`."
    assert spoken(md) == ["Use pandas and read csv in app dot py, pip install x or Ctrl Shift P."]
    for code, said in (
        ("rm -rf /", "rm dash rf slash"),
        ("data/x.csv", "data slash x dot csv"),
        ("<APP_NAME>", "APP NAME"),
        ("https://x.example.com/a", "x dot example dot com slash a"),
        ("a + b", "a plus b"),
        ("C++", "C plus plus"),
        ("--force", "dash dash force"),
        ("kill -9 1234", "kill dash nine one thousand two hundred and thirty-four"),
        ("$HOME", "dollar HOME"),
        ("x = 1", "x equals one"),
    ):
        assert spoken(f"Do not run `{code}` here.") == [f"Do not run {said} here."], code
    assert spoken("`npm install` を実行し、`cat /etc/hosts` を確認します。") == [
        "npm install を実行し、cat スラッシュ etc スラッシュ hosts を確認します。"
    ]
    assert spoken("Führen Sie `cat /etc/hosts` aus.", language="de") == [
        "Führen Sie cat Schrägstrich etc Schrägstrich hosts aus."
    ]
    # Code blocks set to silent leave inline code alone: it is part of the sentence.
    assert spoken("Do not run `rm -rf /` here.", code="silent") == [
        "Do not run rm dash rf slash here."
    ]
    assert spoken("<p>Run <code>rm -rf /</code> never.</p>") == ["Run rm dash rf slash never."]
    # What the author wrote stays in the block, for captions.
    [block] = markdown_blocks("Call `String::new` now.")
    assert block.text == "Call String::new now." and len(block.marks) == 1


def test_links_say_their_text_and_urls_only_their_host() -> None:
    md = (
        "See [the docs](https://docs.python.org/3/) or <https://www.example.com/a/b>. "
        "Deploy to https://<APP_NAME>.azurewebsites.net/api/timer?code=<FUNCTION_KEY>. "
        "Code is at github.com/org/repo, mail <mailto:team@example.com>."
    )
    assert spoken(md) == [
        "See the docs or example.com. Deploy to azurewebsites.net. "
        "Code is at github.com, mail team@example.com."
    ]
    assert spoken("Open your profile: settings.") == ["Open your profile: settings."]


def test_images_read_their_alt_text_unless_skipped() -> None:
    md = "![A diagram of the system](img/a.png)\n\nText with ![an icon](i.png) inside."
    assert spoken(md) == ["A diagram of the system.", "Text with an icon inside."]
    assert spoken(md, images="skip") == ["Text with inside."]
    assert spoken('<img src="x.png" alt="The logo">') == ["The logo."]


def test_tables_are_read_row_by_row_as_header_value_pairs() -> None:
    md = (
        "| Sensor | Kind | Notes |\n|---|---|---|\n"
        "| DHT11 | Digital | Temperature<br>humidity |\n"
        "| Thermistor | Analog | |\n"
        "| a \\| b | `x/y` | ok |\n"
    )
    blocks = markdown_blocks(md)
    assert [b.kind for b in blocks] == ["table_row"] * 3
    # A <br> in a cell is a pause, never glued words; then pairs are parted by semicolons.
    assert [b.text for b in blocks] == [
        "Sensor: DHT11; Kind: Digital; Notes: Temperature, humidity.",
        "Sensor: Thermistor; Kind: Analog.",
        "Sensor: a b; Kind: x/y; Notes: ok.",
    ]
    assert spoken(md)[2] == "Sensor: a b; Kind: x slash y; Notes: ok."
    assert spoken("| a | b |\n|---|---|\n| 1 | 2 |") == ["a: one, b: two."]
    assert spoken("| 名称 | 说明 |\n|---|---|\n| 传感器 | 测量<br>温度 |") == [
        "名称：传感器；说明：测量，温度。"
    ]
    assert spoken(md + "\nAfter.", tables="skip") == ["After."]
    html = "<table><tr><th>A</th><th>B</th></tr><tr><td>x</td><td><p>y</p></td></tr></table>"
    assert spoken(html) == ["A: x, B: y."]


def test_html_text_is_kept_tags_never_spoken_details_read_whole() -> None:
    md = (
        '<div align="center"><b>Lesson 2</b> · about 45 minutes<br>Welcome</div>\n\n'
        "<details>\n<summary>Answer</summary>\n\nThe body is read too.\n\n</details>\n\n"
        "<!-- a comment -->\n\n<script>alert(1)</script>\n\n"
        "Press <kbd>Ctrl</kbd>+<kbd>C</kbd> and see <code>main</code>, not <code>a/b</code>."
    )
    assert spoken(md) == [
        "Lesson two · about forty-five minutes, Welcome.",
        "Answer.",
        "The body is read too.",
        "Press Ctrl+C and see main, not a slash b.",
    ]
    # Inside an HTML block Markdown is not parsed: its emphasis marks are not read either.
    assert spoken("<div>\n**Bold** and __strong__ words\n</div>") == ["Bold and strong words."]
    # "<![" that opens no CDATA section (found by the property test below): a bogus comment,
    # as browsers read it, never a crash.
    md = "<details><summary>S</summary><![alt text](https://img.example/i.png)\n\nAfter."
    assert spoken(md) == ["S.", "After."]


def test_front_matter_gives_only_its_title_said_once() -> None:
    md = '---\ntitle: "Lesson 3"\nauthor: Jane\n---\n# Lesson 3\n\nBody.'
    assert markdown_blocks(md) == (Block("Lesson 3.", "heading", 1), Block("Body."))
    assert spoken("---\nauthor: Jane\n---\nBody.") == ["Body."]
    # Hugo's TOML front matter, the same way.
    md = '+++\ntitle = "Lesson 3"\nauthor = "Jane"\ntags = ["iot"]\n+++\n# Lesson 3\n\nBody.'
    assert markdown_blocks(md) == (Block("Lesson 3.", "heading", 1), Block("Body."))
    assert spoken("+++\ndraft = true\n+++\n\nBody.") == ["Body."]
    assert spoken("+++\n+++\n\nBody.") == ["Body."]  # empty
    assert spoken("+++\ntitle = \"'A' and 'B'\"\n+++\nBody.") == ["'A' and 'B'.", "Body."]


def test_emoji_and_pictographs_are_never_kept() -> None:
    md = "## 🚀 Challenge\n\n✅ Do it 👍🏽 now! 🇩🇪\n\n- 🧠 a processor"
    assert spoken(md) == ["Challenge.", "Do it now!", "a processor."]
    assert spoken("🎉🎉") == []
    # GitHub's shortcodes for them too, and nothing is glued where they were.
    assert spoken("Ship it :rocket: today :+1:") == ["Ship it today."]
    written = [b.text for b in markdown_blocks("At 10:30:45 the ratio is 1:2:3.")]
    assert written == ["At 10:30:45 the ratio is 1:2:3."]
    written = [b.text for b in markdown_blocks("Take x[:2:] here.")]
    assert written == ["Take x[:2:] here."]  # a slice, not a shortcode


def test_a_path_in_prose_keeps_the_space_before_it() -> None:
    assert spoken("See ./docs/setup.md for more .") == ["See ./docs/setup.md for more."]
    assert spoken("「ここにある .」と言った", language="ja") == ["「ここにある.」と言った。"]


def test_lists_keep_their_numbers_and_drop_bullets_and_boxes() -> None:
    md = "1. Install Python\n2. Create a venv\n   - nested bullet\n\n- [ ] todo\n- [x] done"
    assert markdown_blocks(md) == (
        Block("1. Install Python.", "list_item"),
        Block("2. Create a venv.", "list_item"),
        Block("nested bullet.", "list_item"),
        Block("todo.", "list_item"),
        Block("done.", "list_item"),
    )
    assert spoken("3) Third\n4) Fourth") == ["three. Third.", "four. Fourth."]
    # Numbered as rendered: from the first item's number, whatever later items say.
    written = [
        b.text for b in markdown_blocks("1. Open\n1. Edit\n1. Save\n\nThen\n\n7. Go\n7. Stop")
    ]
    assert written == ["1. Open.", "2. Edit.", "3. Save.", "Then.", "7. Go.", "8. Stop."]


def test_footnotes_and_alert_markers_are_dropped() -> None:
    md = "One in six[^1] people.\n\n> [!NOTE]\n> Keep it secret.\n\n[^1]: WHO, https://who.int."
    assert spoken(md) == ["One in six people.", "Keep it secret."]


def test_breaks_and_definition_lists() -> None:
    assert spoken("Line one  \nline two\nline three") == ["Line one, line two line three."]
    assert spoken("Term\n: The definition") == ["Term.", "The definition."]


# --- the property: nothing unspeakable reaches a server --------------------------------------

_URL_IN_OUTPUT = regex.compile(r"://|www\.|https?:|mailto:", regex.IGNORECASE)
_TAG = regex.compile(r"</?[A-Za-z!?][^<>]*>")
_EMOJI = regex.compile(r"\p{Extended_Pictographic}|\p{Regional_Indicator}")

_fragments = st.sampled_from(
    [
        "https://example.com/a?b=c",
        "http://<APP_NAME>.azurewebsites.net/api",
        "<https://x.example.org/p>",
        "www.example.com",
        "[link](https://l.example.net)",
        "[https://t.example](https://t.example)",
        "![alt text](https://img.example/i.png)",
        "`code`",
        "`a/b`",
        "``x ` y``",
        "`",
        "|",
        " | a | b |",
        "<b>",
        "</div>",
        "<br>",
        "<img src=x alt='pic'>",
        "<details><summary>S</summary>",
        "<!-- c -->",
        "<APP_NAME>",
        "&lt;span&gt;",
        "🎉",
        "👨‍👩‍👧",
        "🇩🇪",
        "1️⃣",
        "©",
        "# ",
        "## Heading",
        "\n\n",
        "\n",
        "\n```\nprint(1)\n```\n",
        "\n~~~\ncode\n",
        "\n| h1 | h2 |\n|---|---|\n| c1<br>x | c2 |\n",
        "\n---\ntitle: T\n---\n",
        "[^1]",
        "\n[^1]: note https://n.example\n",
        "- item ",
        "1. first ",
        "> quote ",
        "*em* ",
        "**strong** ",
        "word ",
        "汉字。",
        "かな、",
        ". ",
        ", ",
        ": ",
        "<",
        ">",
        "&amp;",
        "\\",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_fragments, max_size=30).map("".join), st.sampled_from([60, 200, 381]))
def test_no_url_backtick_pipe_tag_or_emoji_ever_reaches_a_server(md: str, budget: int) -> None:
    blocks = speak_blocks(markdown_blocks(md), "en", SpeechOptions())
    for chunk in chunk_blocks(blocks, "en", budget):
        text = chunk.text
        assert not _URL_IN_OUTPUT.search(text), text
        assert "`" not in text and "|" not in text, text
        assert not _TAG.search(text), text
        assert not _EMOJI.search(text), text
        assert text == text.strip() and "\n" not in text
