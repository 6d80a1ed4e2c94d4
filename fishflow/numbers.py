"""Numbers, units and symbols in words, per language, as a narrator reads them.

A TTS model reads "3.14", "1-10", "50%" or "10:30" however it guesses, and Fish Speech's own
``normalize`` field is accepted and ignored by the self-hosted server; numbers are also where
its users report repetitions and swallowed words. So fishflow says them in words itself.

``number_spans(text, language)`` finds each construct and returns what is said instead. What
each construct becomes (the README's table "How numbers are read" says the same):

- cardinals, negatives, decimals ("3.14": "three point one four", digits after the point one by
  one), thousands separators of the language ("1,234" in English, "1.234" in German);
- ordinals ("21st", "第3"), years after "in", "since"... ("in 1999": "nineteen ninety-nine"),
  ISO dates ("2026-12-07") and CJK dates ("2026年12月7日"), times ("10:30");
- ranges ("1-10": "one to ten"), fractions ("3/4": "three quarters"), percentages,
  currencies ("$5", "€12.50", "¥300"), units after a number ("5 ms", "2.4GHz", "64 KiB");
- versions ("1.2.3", "v2"), hex ("0x1F") and phone-like numbers ("+1 555 123 4567", "007"):
  digits one by one;
- superscripts ("10⁶", "x²") as powers.

English, German, Chinese (through cn2an) and Japanese read every construct; the other
languages num2words knows read cardinals and decimals (and keep symbols). A number glued to a
Latin letter or an underscore (``u8``, ``i32``, ``ES6``, ``x86_64``, ``3D``) is code or a name,
never read as a number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import regex
from num2words import CONVERTER_CLASSES, num2words

# --- what a construct is said as, per language ---------------------------------------------

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
}

# (singular, plural) per language; zh and ja have no plural.
_UNITS: dict[str, dict[str, tuple[str, str]]] = {
    "ns": {"en": ("nanosecond", "nanoseconds"), "de": ("Nanosekunde", "Nanosekunden"),
           "zh": ("纳秒", "纳秒"), "ja": ("ナノ秒", "ナノ秒")},
    "µs": {"en": ("microsecond", "microseconds"), "de": ("Mikrosekunde", "Mikrosekunden"),
           "zh": ("微秒", "微秒"), "ja": ("マイクロ秒", "マイクロ秒")},
    "ms": {"en": ("millisecond", "milliseconds"), "de": ("Millisekunde", "Millisekunden"),
           "zh": ("毫秒", "毫秒"), "ja": ("ミリ秒", "ミリ秒")},
    "s": {"en": ("second", "seconds"), "de": ("Sekunde", "Sekunden"),
          "zh": ("秒", "秒"), "ja": ("秒", "秒")},
    "min": {"en": ("minute", "minutes"), "de": ("Minute", "Minuten"),
            "zh": ("分钟", "分钟"), "ja": ("分", "分")},
    "h": {"en": ("hour", "hours"), "de": ("Stunde", "Stunden"),
          "zh": ("小时", "小时"), "ja": ("時間", "時間")},
    "B": {"en": ("byte", "bytes"), "de": ("Byte", "Byte"), "zh": ("字节", "字节"),
          "ja": ("バイト", "バイト")},
    "kB": {"en": ("kilobyte", "kilobytes"), "de": ("Kilobyte", "Kilobyte"),
           "zh": ("千字节", "千字节"), "ja": ("キロバイト", "キロバイト")},
    "MB": {"en": ("megabyte", "megabytes"), "de": ("Megabyte", "Megabyte"),
           "zh": ("兆字节", "兆字节"), "ja": ("メガバイト", "メガバイト")},
    "GB": {"en": ("gigabyte", "gigabytes"), "de": ("Gigabyte", "Gigabyte"),
           "zh": ("吉字节", "吉字节"), "ja": ("ギガバイト", "ギガバイト")},
    "TB": {"en": ("terabyte", "terabytes"), "de": ("Terabyte", "Terabyte"),
           "zh": ("太字节", "太字节"), "ja": ("テラバイト", "テラバイト")},
    "KiB": {"en": ("kibibyte", "kibibytes"), "de": ("Kibibyte", "Kibibyte"),
            "zh": ("KiB", "KiB"), "ja": ("キビバイト", "キビバイト")},
    "MiB": {"en": ("mebibyte", "mebibytes"), "de": ("Mebibyte", "Mebibyte"),
            "zh": ("MiB", "MiB"), "ja": ("メビバイト", "メビバイト")},
    "GiB": {"en": ("gibibyte", "gibibytes"), "de": ("Gibibyte", "Gibibyte"),
            "zh": ("GiB", "GiB"), "ja": ("ギビバイト", "ギビバイト")},
    "Hz": {"en": ("hertz", "hertz"), "de": ("Hertz", "Hertz"), "zh": ("赫兹", "赫兹"),
           "ja": ("ヘルツ", "ヘルツ")},
    "kHz": {"en": ("kilohertz", "kilohertz"), "de": ("Kilohertz", "Kilohertz"),
            "zh": ("千赫兹", "千赫兹"), "ja": ("キロヘルツ", "キロヘルツ")},
    "MHz": {"en": ("megahertz", "megahertz"), "de": ("Megahertz", "Megahertz"),
            "zh": ("兆赫兹", "兆赫兹"), "ja": ("メガヘルツ", "メガヘルツ")},
    "GHz": {"en": ("gigahertz", "gigahertz"), "de": ("Gigahertz", "Gigahertz"),
            "zh": ("吉赫兹", "吉赫兹"), "ja": ("ギガヘルツ", "ギガヘルツ")},
    "Mbps": {"en": ("megabit per second", "megabits per second"),
             "de": ("Megabit pro Sekunde", "Megabit pro Sekunde"),
             "zh": ("兆比特每秒", "兆比特每秒"), "ja": ("メガビット毎秒", "メガビット毎秒")},
    "km": {"en": ("kilometre", "kilometres"), "de": ("Kilometer", "Kilometer"),
           "zh": ("公里", "公里"), "ja": ("キロメートル", "キロメートル")},
    "m": {"en": ("metre", "metres"), "de": ("Meter", "Meter"), "zh": ("米", "米"),
          "ja": ("メートル", "メートル")},
    "cm": {"en": ("centimetre", "centimetres"), "de": ("Zentimeter", "Zentimeter"),
           "zh": ("厘米", "厘米"), "ja": ("センチメートル", "センチメートル")},
    "mm": {"en": ("millimetre", "millimetres"), "de": ("Millimeter", "Millimeter"),
           "zh": ("毫米", "毫米"), "ja": ("ミリメートル", "ミリメートル")},
    "ml": {"en": ("millilitre", "millilitres"), "de": ("Milliliter", "Milliliter"),
           "zh": ("毫升", "毫升"), "ja": ("ミリリットル", "ミリリットル")},
    "kg": {"en": ("kilogram", "kilograms"), "de": ("Kilogramm", "Kilogramm"),
           "zh": ("千克", "千克"), "ja": ("キログラム", "キログラム")},
    "g": {"en": ("gram", "grams"), "de": ("Gramm", "Gramm"), "zh": ("克", "克"),
          "ja": ("グラム", "グラム")},
    "°C": {"en": ("degree Celsius", "degrees Celsius"), "de": ("Grad Celsius", "Grad Celsius"),
           "zh": ("摄氏度", "摄氏度"), "ja": ("度", "度")},
    "px": {"en": ("pixel", "pixels"), "de": ("Pixel", "Pixel"), "zh": ("像素", "像素"),
           "ja": ("ピクセル", "ピクセル")},
    "fps": {"en": ("frame per second", "frames per second"),
            "de": ("Bild pro Sekunde", "Bilder pro Sekunde"), "zh": ("帧每秒", "帧每秒"),
            "ja": ("フレーム毎秒", "フレーム毎秒")},
}  # fmt: skip
_UNIT_ALIASES = {
    "mL": "ml",
    "KB": "kB",
    "us": "µs",
    "μs": "µs",
    "sec": "s",
    "mins": "min",
    "hr": "h",
}
_UNIT_NAMES = sorted([*_UNITS, *_UNIT_ALIASES], key=len, reverse=True)

_CURRENCIES = {
    "$": {"en": ("dollar", "dollars", "cent", "cents"), "de": ("Dollar", "Dollar", "Cent", "Cent"),
          "zh": ("美元",), "ja": ("ドル",)},
    "€": {"en": ("euro", "euros", "cent", "cents"), "de": ("Euro", "Euro", "Cent", "Cent"),
          "zh": ("欧元",), "ja": ("ユーロ",)},
    "£": {"en": ("pound", "pounds", "penny", "pence"), "de": ("Pfund", "Pfund", "Penny", "Pence"),
          "zh": ("英镑",), "ja": ("ポンド",)},
    "¥": {"en": ("yen", "yen", "sen", "sen"), "de": ("Yen", "Yen", "Sen", "Sen"),
          "zh": ("元",), "ja": ("円",)},
}  # fmt: skip

_WORDS = {
    # point, percent, to (ranges), power, minus, version, hex
    "en": ("point", "percent", "to", "to the power of", "minus", "version", "hex"),
    "de": ("Komma", "Prozent", "bis", "hoch", "minus", "Version", "hex"),
    "ja": ("点", "パーセント", "から", "乗", "マイナス", "バージョン", "十六進"),
    "zh": ("点", "百分之", "到", "次方", "负", "版本", "十六进制"),
}
_POINTS = {"fr": "virgule", "es": "coma", "it": "virgola", "pt": "vírgula", "nl": "komma",
           "pl": "przecinek", "ru": "запятая", "ko": "점", "uk": "кома", "cs": "celá"}  # fmt: skip
_YEAR_CUES = frozenset(
    [
        "in",
        "since",
        "from",
        "until",
        "till",
        "by",
        "of",
        "year",
        "around",
        "circa",
        "before",
        "after",
        "during",
        "between",
        "and",
        "im",
        "seit",
        "von",
        "bis",
        "jahr",
    ]
)
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")


def _primary(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0]


@functools.lru_cache(maxsize=64)
def _num2words_lang(language: str) -> str | None:
    lang = _primary(language)
    return lang if lang in CONVERTER_CLASSES else None


class _Reader:
    """How one language reads numbers; English by default, others override."""

    lang = "en"

    def word(self, i: int) -> str:
        """point, percent, to, power, minus, version, hex: in this language."""
        return _WORDS.get(self.lang, _WORDS["en"])[i]

    def cardinal(self, n: int) -> str:
        if n < 0:
            return f"{self.word(4)} {self.cardinal(-n)}"
        # num2words puts commas inside long numbers ("one thousand, two hundred"): a TTS
        # model pauses at each one.
        return num2words(n, lang=self.lang).replace(",", "")

    def digits(self, text: str) -> str:
        return " ".join(self.cardinal(int(d)) if d.isdigit() else d for d in text if d.strip())

    def decimal(self, whole: str, frac: str) -> str:
        out = self.cardinal(int(whole or "0"))
        return f"{out} {self.word(0)} {self.digits(frac)}" if frac else out

    def ordinal(self, n: int) -> str:
        return num2words(n, lang=self.lang, to="ordinal")

    def year(self, n: int) -> str:
        return num2words(n, lang=self.lang, to="year").replace(",", "")

    def percent(self, number: str) -> str:
        return f"{number} {self.word(1)}"

    def range(self, a: str, b: str) -> str:
        return f"{a} {self.word(2)} {b}"

    def power(self, base: str, exponent: str) -> str:
        if exponent == self.cardinal(2):
            return f"{base} squared"
        if exponent == self.cardinal(3):
            return f"{base} cubed"
        return f"{base} {self.word(3)} {exponent}".strip()

    def times(self, number: str) -> str:
        return f"{number} times"

    def fraction(self, n: int, d: int) -> str:
        if d == 2:
            return "one half" if n == 1 else f"{self.cardinal(n)} halves"
        if d == 4:
            return "one quarter" if n == 1 else f"{self.cardinal(n)} quarters"
        if d in (0, 1) or d > 100:
            return f"{self.cardinal(n)} over {self.cardinal(d)}"
        ordinal = self.ordinal(d)
        return f"{self.cardinal(n)} {ordinal}{'s' if n != 1 else ''}"

    def unit(self, number: str, value: Decimal, unit: str) -> str:
        one, many = _UNITS[unit].get(self.lang, _UNITS[unit]["en"])
        return f"{number} {one if value == 1 else many}"

    def currency(self, symbol: str, whole: int, cents: int | None) -> str:
        names = _CURRENCIES[symbol].get(self.lang, _CURRENCIES[symbol]["en"])
        one, many, cent, cents_name = (names * 4)[:4]
        out = f"{self.cardinal(whole)} {one if whole == 1 else many}"
        if cents:
            out += f" and {self.cardinal(cents)} {cent if cents == 1 else cents_name}"
        return out

    def time(self, h: int, m: int) -> str:
        if m == 0:
            return f"{self.cardinal(h)} o'clock"
        minutes = self.cardinal(m) if m >= 10 else f"oh {self.cardinal(m)}"
        return f"{self.cardinal(h)} {minutes}"

    def date(self, y: int, m: int, d: int) -> str:
        return f"{_MONTHS['en'].split()[m - 1]} {self.ordinal(d)}, {self.year(y)}"

    def version(self, parts: list[str]) -> str:
        return f" {self.word(0)} ".join(self.cardinal(int(p)) for p in parts)

    def hex(self, digits: str) -> str:
        return f"{self.word(6)} {self.digits(digits.upper())}"


class _German(_Reader):
    lang = "de"

    def year(self, n: int) -> str:
        if 1100 <= n < 2000:  # "neunzehnhundertneunundneunzig"
            return (
                num2words(n // 100, lang="de")
                + "hundert"
                + (num2words(n % 100, lang="de") if n % 100 else "")
            )
        return self.cardinal(n)

    def power(self, base: str, exponent: str) -> str:
        return f"{base} hoch {exponent}".strip()

    def times(self, number: str) -> str:
        return f"{number}-mal"

    def fraction(self, n: int, d: int) -> str:
        if d == 2:
            return "ein halb" if n == 1 else f"{self.cardinal(n)} Halbe"
        return f"{self.cardinal(n)} durch {self.cardinal(d)}"

    def currency(self, symbol: str, whole: int, cents: int | None) -> str:
        names = _CURRENCIES[symbol]["de"]
        out = f"{self.cardinal(whole)} {names[0]}"
        return out + (f" und {self.cardinal(cents)} {names[2]}" if cents else "")

    def time(self, h: int, m: int) -> str:
        return f"{self.cardinal(h)} Uhr" + (f" {self.cardinal(m)}" if m else "")

    def date(self, y: int, m: int, d: int) -> str:
        day = self.ordinal(d)  # "siebte": a date is "der siebte", said alone "siebter"
        return f"{day}r {_MONTHS['de'].split()[m - 1]} {self.year(y)}"


class _Japanese(_Reader):
    lang = "ja"

    def cardinal(self, n: int) -> str:
        return ("マイナス" if n < 0 else "") + num2words(abs(n), lang="ja")

    def digits(self, text: str) -> str:
        return "".join("〇一二三四五六七八九"[int(d)] if d.isdigit() else d for d in text)

    def decimal(self, whole: str, frac: str) -> str:
        out = self.cardinal(int(whole or "0"))
        return f"{out}点{self.digits(frac)}" if frac else out

    def ordinal(self, n: int) -> str:
        return f"{self.cardinal(n)}番目"

    def year(self, n: int) -> str:
        return self.cardinal(n)  # num2words' Japanese "year" is the era name (令和八年)

    def percent(self, number: str) -> str:
        return f"{number}パーセント"

    def range(self, a: str, b: str) -> str:
        return f"{a}から{b}"

    def power(self, base: str, exponent: str) -> str:
        return f"{base}の{exponent}乗"

    def times(self, number: str) -> str:
        return f"{number}倍"

    def fraction(self, n: int, d: int) -> str:
        return f"{self.cardinal(d)}分の{self.cardinal(n)}"

    def unit(self, number: str, value: Decimal, unit: str) -> str:
        return number + _UNITS[unit]["ja"][0]

    def currency(self, symbol: str, whole: int, cents: int | None) -> str:
        out = self.cardinal(whole) + _CURRENCIES[symbol]["ja"][0]
        return out + (f"{self.cardinal(cents)}セント" if cents else "")

    def time(self, h: int, m: int) -> str:
        return f"{self.cardinal(h)}時" + (f"{self.cardinal(m)}分" if m else "")

    def date(self, y: int, m: int, d: int) -> str:
        return f"{self.cardinal(y)}年{self.cardinal(m)}月{self.cardinal(d)}日"

    def version(self, parts: list[str]) -> str:
        return "点".join(self.cardinal(int(p)) for p in parts)

    def hex(self, digits: str) -> str:
        return f"十六進{self.digits(digits.upper())}"


class _Chinese(_Japanese):
    lang = "zh"

    def cardinal(self, n: int) -> str:
        import cn2an

        return str(cn2an.an2cn(str(n)))

    def digits(self, text: str) -> str:
        return "".join("零一二三四五六七八九"[int(d)] if d.isdigit() else d for d in text)

    def ordinal(self, n: int) -> str:
        return f"第{self.cardinal(n)}"

    def year(self, n: int) -> str:
        return self.digits(str(n))  # 2026年: 二零二六年

    def percent(self, number: str) -> str:
        return f"百分之{number}"

    def range(self, a: str, b: str) -> str:
        return f"{a}到{b}"

    def power(self, base: str, exponent: str) -> str:
        return f"{base}的{exponent}次方"

    def fraction(self, n: int, d: int) -> str:
        return f"{self.cardinal(d)}分之{self.cardinal(n)}"

    def times(self, number: str) -> str:
        return f"{number}倍"

    def unit(self, number: str, value: Decimal, unit: str) -> str:
        return number + _UNITS[unit]["zh"][0]

    def currency(self, symbol: str, whole: int, cents: int | None) -> str:
        out = self.cardinal(whole) + _CURRENCIES[symbol]["zh"][0]
        return out + (f"{self.cardinal(cents)}分" if cents else "")

    def time(self, h: int, m: int) -> str:
        return f"{self.cardinal(h)}点" + (f"{self.cardinal(m)}分" if m else "")

    def date(self, y: int, m: int, d: int) -> str:
        return f"{self.year(y)}年{self.cardinal(m)}月{self.cardinal(d)}日"

    def hex(self, digits: str) -> str:
        return f"十六进制{self.digits(digits.upper())}"


class _Other(_Reader):
    """A language num2words knows: cardinals and decimals; symbols kept."""

    def __init__(self, lang: str) -> None:
        self.lang = lang

    def decimal(self, whole: str, frac: str) -> str:
        out = self.cardinal(int(whole or "0"))
        point = _POINTS.get(self.lang, ",")
        return f"{out} {point} {self.digits(frac)}" if frac else out


@functools.lru_cache(maxsize=64)
def _reader(language: str) -> _Reader | None:
    lang = _primary(language)
    if lang == "en":
        return _Reader()
    if lang == "de":
        return _German()
    if lang == "ja":
        return _Japanese()
    if lang == "zh":
        return _Chinese()
    return _Other(lang) if _num2words_lang(lang) else None


def reads_numbers(language: str) -> bool:
    """Whether numbers in this language are said in words (every construct for en, de, zh,
    ja; cardinals and decimals for the other languages num2words knows)."""
    return _reader(language) is not None


# --- finding constructs --------------------------------------------------------------------

# Not glued to a Latin/Greek/Cyrillic letter, a digit or an underscore: u8, ES6, x86_64 and
# 3D are names. Han and kana may touch a number (共有5个).
_BEFORE = r"(?<![\p{Latin}\p{Greek}\p{Cyrillic}\p{N}_.,]|[\p{N}][.,])"
_AFTER = r"(?![\p{Latin}\p{Greek}\p{Cyrillic}\p{N}_]|[.,]\p{N})"
_UNIT_ALT = "|".join(regex.escape(u) for u in _UNIT_NAMES)
_SUPER = "⁰¹²³⁴⁵⁶⁷⁸⁹"


@functools.lru_cache(maxsize=8)
def _pattern(decimal_comma: bool) -> regex.Pattern[str]:
    group, point = (r"\.", ",") if decimal_comma else (",", r"\.")
    num = rf"\d{{1,3}}(?:{group}\d{{3}})+(?:{point}\d+)?|\d+(?:{point}\d+)?"
    return regex.compile(
        rf"""
        (?P<hex>{_BEFORE}0[xX][0-9a-fA-F]+{_AFTER})
      | (?P<phone>{_BEFORE}(?:\+\d{{1,3}}[ \-]?)(?:\(?\d{{2,5}}\)?[ \-]?){{1,4}}\d{{2,5}}{_AFTER}
          | {_BEFORE}\d{{3}}-\d{{3,4}}(?:-\d{{4}})?{_AFTER})
      | (?P<ip>{_BEFORE}(?:\d{{1,3}}\.){{3}}\d{{1,3}}{_AFTER})
      | (?P<date>{_BEFORE}(?P<dy>\d{{4}})-(?P<dm>0[1-9]|1[0-2])-(?P<dd>0[1-9]|[12]\d|3[01]){_AFTER})
      | (?P<cjkdate>(?P<cy>\d{{4}})年(?:(?P<cm>\d{{1,2}})月(?:(?P<cd>\d{{1,2}})日)?)?)
      | (?P<time>{_BEFORE}(?P<th>[01]?\d|2[0-3]):(?P<tm>[0-5]\d)(?::[0-5]\d)?{_AFTER})
      | (?P<version>{_BEFORE}(?:(?P<vp>[vV])(?P<vn>\d+(?:\.\d+)*)
          |(?P<vd>\d+(?:\.\d+){{2,}})){_AFTER})
      | (?P<currency>{_BEFORE}(?P<sym>[$€£¥])\s?(?P<camount>{num}){_AFTER})
      | (?P<currency2>{_BEFORE}(?P<camount2>{num})\s?(?P<sym2>[$€£¥]))
      | (?P<percent>{_BEFORE}(?P<pneg>-)?(?P<pnum>{num})\s?[%％])
      | (?P<range>{_BEFORE}(?P<ra>{num})\s?[\-–—~〜～]\s?(?P<rb>{num})
          (?:\s?(?P<runit>{_UNIT_ALT}))?{_AFTER})
      | (?P<times>{_BEFORE}(?P<tn>{num})[x×](?![\p{{L}}\p{{N}}_]))
      | (?P<fraction>{_BEFORE}(?P<fn>\d{{1,3}})/(?P<fd>\d{{1,3}})(?![/\d\p{{L}}]))
      | (?P<ordinal>{_BEFORE}(?P<on>\d+)(?:st|nd|rd|th)(?![\p{{L}}_]))
      | (?P<cjkordinal>第(?P<con>\d+))
      | (?P<power>(?P<pbase>(?:{_BEFORE}{num})|[\p{{L}}])(?P<pexp>[⁻]?[{_SUPER}]+))
      | (?P<number>(?:(?<=^|[\s(\[（:=])(?P<neg>[\-−]))?{_BEFORE}(?P<nnum>{num})
          (?:\s?(?P<unit>{_UNIT_ALT})(?![\p{{L}}\p{{N}}]))?{_AFTER})
      | (?P<sequence>{_BEFORE}\d+(?:[.,]\d+)+
          (?:\s?(?P<sunit>{_UNIT_ALT})(?![\p{{L}}\p{{N}}]))?{_AFTER})
        """,
        regex.VERBOSE,
    )


def _value(text: str, decimal_comma: bool) -> tuple[str, str]:
    """Whole and fractional digits of a number as written."""
    group, point = (".", ",") if decimal_comma else (",", ".")
    whole, _, frac = text.partition(point)
    return whole.replace(group, ""), frac


@dataclass(frozen=True, slots=True)
class NumberSpan:
    start: int
    end: int
    spoken: str
    rule: str  # which construct: "cardinal", "decimal", "range", "unit", ...


def number_spans(text: str, language: str) -> list[NumberSpan]:
    """Where ``text`` holds numbers, and what is said instead (empty for a language whose
    numbers fishflow does not read)."""
    reader = _reader(language)
    if reader is None or not any(ch.isdigit() or ch in _SUPER for ch in text):
        return []
    decimal_comma = reader.lang in ("de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "cs")
    cjk = reader.lang in ("zh", "ja")
    out = []
    for match in _pattern(decimal_comma).finditer(text):
        try:
            spoken, rule = _say(match, reader, decimal_comma, text)
        except (ValueError, InvalidOperation, OverflowError, NotImplementedError, IndexError):
            continue  # a form num2words cannot say: left as written
        if spoken is None:
            continue
        if not cjk:  # a word glued to a number ("5ms") gets its space
            spoken = spoken.strip()
        out.append(NumberSpan(match.start(), match.end(), spoken, rule))
    return out


def _number(reader: _Reader, text: str, decimal_comma: bool) -> str:
    whole, frac = _value(text, decimal_comma)
    return reader.decimal(whole, frac)


def _say(
    m: regex.Match[str], reader: _Reader, decimal_comma: bool, text: str
) -> tuple[str | None, str]:
    kind = m.lastgroup or ""
    full = m.group(kind)
    if kind == "hex":
        return reader.hex(full[2:]), "hex"
    if kind == "phone":
        groups = [reader.digits(g) for g in regex.findall(r"\d+", full)]
        plus = {"en": "plus ", "de": "plus ", "zh": "加", "ja": "プラス"}.get(reader.lang, "+")
        sep = "，" if reader.lang == "zh" else "、" if reader.lang == "ja" else ", "
        return (plus if full.startswith("+") else "") + sep.join(groups), "digits"
    if kind == "ip":  # 127.0.0.1: its four numbers, "dot" between (never "point")
        dot = {"zh": "点", "ja": "ドット", "de": "Punkt"}.get(reader.lang, "dot")
        joiner = dot if reader.lang in ("zh", "ja") else f" {dot} "
        return joiner.join(reader.cardinal(int(part)) for part in full.split(".")), "digits"
    if kind == "date":
        return reader.date(int(m["dy"]), int(m["dm"]), int(m["dd"])), "date"
    if kind == "cjkdate":
        if reader.lang not in ("zh", "ja"):
            return None, ""
        out = reader.year(int(m["cy"])) + "年"
        if m["cm"]:
            out += reader.cardinal(int(m["cm"])) + "月"
        if m["cd"]:
            out += reader.cardinal(int(m["cd"])) + "日"
        return out, "date"
    if kind == "time":
        return reader.time(int(m["th"]), int(m["tm"])), "time"
    if kind == "version":
        parts = (m["vn"] or m["vd"]).split(".")
        said = reader.version(parts)
        before = text[max(0, m.start() - 9) : m.start()].split()
        if m["vp"] and not (before and before[-1].lower() in ("version", "版本", "バージョン")):
            return f"{reader.word(5)} {said}", "version"
        return said, "version"
    if kind == "currency":
        whole, frac = _value(m["camount"], decimal_comma)
        cents = int((frac + "00")[:2]) if frac else None
        return reader.currency(m["sym"], int(whole), cents), "currency"
    if kind == "currency2":
        whole, frac = _value(m["camount2"], decimal_comma)
        cents = int((frac + "00")[:2]) if frac else None
        return reader.currency(m["sym2"], int(whole), cents), "currency"
    if kind == "percent":
        number = _number(reader, m["pnum"], decimal_comma)
        if m["pneg"]:
            number = f"{reader.word(4)} {number}"
        return reader.percent(number), "percent"
    if kind == "range":
        a, b = _number(reader, m["ra"], decimal_comma), _number(reader, m["rb"], decimal_comma)
        said = reader.range(a, b)
        if m["runit"]:
            unit = _UNIT_ALIASES.get(m["runit"], m["runit"])
            said = reader.range(a, reader.unit(b, Decimal(2), unit))
        return said, "range"
    if kind == "times":
        return reader.times(_number(reader, m["tn"], decimal_comma)), "times"
    if kind == "fraction":
        return reader.fraction(int(m["fn"]), int(m["fd"])), "fraction"
    if kind == "ordinal":
        return reader.ordinal(int(m["on"])), "ordinal"
    if kind == "cjkordinal":
        if reader.lang not in ("zh", "ja"):
            return None, ""
        return "第" + reader.cardinal(int(m["con"])), "ordinal"
    if kind == "power":
        exponent = m["pexp"].translate(_SUPERSCRIPTS)
        base = m["pbase"]
        base_said = _number(reader, base, decimal_comma) if base[0].isdigit() else base
        exp_said = reader.cardinal(int(exponent))
        return reader.power(base_said, exp_said), "power"
    if kind == "sequence":  # "1,2,3"; "3.14" where the decimal mark is a comma
        pieces: list[str] = []
        numeral = full[: len(full) - len(m["sunit"] or "")].rstrip()
        for piece in regex.split(r"([.,])", numeral):
            if piece == ".":
                pieces.append(f" {reader.word(0) if decimal_comma else 'point'} ")
            elif piece == ",":
                pieces.append(
                    "，" if reader.lang == "zh" else "、" if reader.lang == "ja" else ", "
                )
            else:
                pieces.append(reader.cardinal(int(piece)))
        if m["sunit"]:
            unit = _UNIT_ALIASES.get(m["sunit"], m["sunit"])
            return reader.unit("".join(pieces), Decimal(2), unit), "unit"
        return "".join(pieces), "cardinal"
    # a plain number, perhaps negative, perhaps with a unit
    written = m["nnum"]
    whole, frac = _value(written, decimal_comma)
    said = reader.decimal(whole, frac)
    rule = "decimal" if frac else "cardinal"
    if not frac and len(whole) > 1 and whole.startswith("0"):
        said, rule = reader.digits(whole), "digits"  # 007, 0123: said digit by digit
    elif (
        not frac
        and len(whole) == 4
        and 1100 <= int(whole) <= 2099
        and "," not in written
        and "." not in written
        and _year_context(text, m.start(), reader.lang)
    ):
        said, rule = reader.year(int(whole)), "year"
    if m["neg"]:
        said = f"{reader.word(4)} {said}" if reader.lang != "zh" else f"负{said}"
    if m["unit"]:
        unit = _UNIT_ALIASES.get(m["unit"], m["unit"])
        said = reader.unit(said, Decimal(whole + ("." + frac if frac else "")), unit)
        rule = "unit"
    return said, rule


def _year_context(text: str, start: int, lang: str) -> bool:
    """A four-digit number is a year after "in", "since", "from"... (en, de), or before "年"."""
    if lang in ("zh", "ja"):
        return False  # handled by the 年 pattern
    before = text[max(0, start - 12) : start].split()
    return bool(before) and before[-1].strip("(,").lower() in _YEAR_CUES
