"""The command line's flags as cyclopts makes them: every RunSettings field, usage errors."""

from __future__ import annotations

import types
import typing

import pytest

from fishflow.cli import app, main
from fishflow.cli.flags import given
from fishflow.settings import RunSettings


def parsed(*args: str) -> dict[str, typing.Any]:
    _, bound, _ = app.parse_args(list(args), exit_on_error=False, print_error=False)
    return dict(bound.arguments)


def a_value(name: str) -> tuple[str, object]:
    """A flag value for a RunSettings field other than its default, and what it parses to
    (a value starting with -- is a flag of its own: --x or --no-x for a bool)."""
    info = RunSettings.model_fields[name]
    kind = info.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        [kind] = [k for k in typing.get_args(kind) if k is not type(None)]
    if kind is bool:
        return ("--no-" if info.default else "--") + name.replace("_", "-"), not info.default
    if typing.get_origin(kind) is typing.Literal:
        choice = next(c for c in typing.get_args(kind) if c != info.default)
        return choice, choice
    if kind is int:  # one above the default, or above the lower bound
        low = next((m.ge for m in info.metadata if hasattr(m, "ge")), 0)
        return str((info.default or low) + 1), (info.default or low) + 1
    if kind is float:  # all within bounds, negative ones too (--loudness-target -15.84)
        number = round(info.default * 0.99, 4) if info.default else 1.0
        return str(number), number
    return "x", "x"


@pytest.mark.parametrize(
    "command",
    [["run", "c.csv", "--out", "o"], ["plan", "c.csv", "--out", "o"], ["preview", "c.csv"]],
)
def test_every_run_setting_is_a_flag_and_only_given_ones_are_set(command: list[str]) -> None:
    for name in RunSettings.model_fields:
        value, expected = a_value(name)
        flag = value if value.startswith("--") else "--" + name.replace("_", "-")
        args = [flag] if value.startswith("--") else [flag, value]
        settings = parsed(*command, *args)["settings"]
        if isinstance(expected, float):
            assert getattr(settings, name) == pytest.approx(expected), args
        else:
            assert getattr(settings, name) == expected, args
        # What `run --deployment` sends: the flags given, not the defaults.
        assert given(settings) == {name: getattr(settings, name)}
    assert "settings" not in parsed(*command)  # no flag given: the defaults, decided later


def test_a_settings_flags_help_is_its_description(capsys) -> None:
    assert main(["run", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for name in ("batch_size", "qa_on_marked", "state_in_output"):
        flag = "--" + name.replace("_", "-")
        assert flag in help_text
        words = (RunSettings.model_fields[name].description or "").split()[:4]
        assert " ".join(words) in help_text


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["preview", "c.md", "--text-format", "markdwn"],
            "fishflow preview: error: --text-format: Input should be 'auto', 'plain' or "
            "'markdown': did you mean markdown? (see: fishflow preview --help)",
        ),
        (
            ["gc", "o", "--dryrun"],
            "fishflow gc: error: unrecognized option --dryrun: did you mean --dry-run? "
            "(see: fishflow gc --help)",
        ),
        (
            ["plan", "c.csv", "--out", "o", "--batch-size", "0"],
            "fishflow plan: error: --batch-size: Input should be greater than or equal to 1 "
            "(see: fishflow plan --help)",
        ),
        (
            ["limits", "create", "--server", "http://x", "--max-in-flight", "0"],
            "fishflow limits: error: --max-in-flight: Input should be greater than or equal "
            "to 1 (see: fishflow limits --help)",
        ),
        ([], "fishflow: error: a command is required (see: fishflow --help)"),
    ],
)
def test_usage_errors_are_one_line_exit_64(capsys, args: list[str], line: str) -> None:
    assert main(args) == 64
    assert capsys.readouterr().err == line + "\n"


def test_an_option_given_twice_counts_its_last_value_and_server_repeats() -> None:
    """As with argparse: a wrapper script's default, overridden by what its caller adds."""
    args = parsed(
        *["run", "c.csv", "--out", "a", "--out", "b", "--batch-size", "3", "--batch-size", "4"],
        *["--server", "http://x", "--server", "http://y", "--captions", "off", "--captions", "on"],
    )
    assert (args["out"], args["servers"]) == ("b", ["http://x", "http://y"])
    assert (args["settings"].batch_size, args["settings"].captions) == (4, "on")
    flags = parsed("plan", "c.csv", "--out", "o", "--qa-accept-marked", "--no-qa-accept-marked")
    assert flags["settings"].qa_accept_marked is False
