"""Flags shared by the commands, and usage errors (exit 64) said in one line naming the flag.

Every `RunSettings` field is a flag of `run`, `plan` and `preview` (`Settings`): cyclopts
makes them from the model, its descriptions their help, and pydantic checks their values.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, TypeVar

from cyclopts import Group, Parameter
from cyclopts.exceptions import (
    CycloptsError,
    UnknownCommandError,
    UnknownOptionError,
)
from pydantic import BaseModel, ValidationError

from fishflow.errors import ConfigError
from fishflow.settings import RunSettings, ServerConfig, problems

DEFAULT_SERVER = "http://127.0.0.1:8080"
EX_USAGE = 64  # sysexits.h: the command was used incorrectly (2 means "some items failed")

SETTINGS = Group("Run settings (also the flow's settings parameter)", sort_key=1)

# Every RunSettings field, as --field-name (--x/--no-x for a bool); None when none is given.
Settings = Annotated[RunSettings | None, Parameter(name="*", group=SETTINGS)]
# Repeatable: --server A --server B.
Servers = Annotated[list[str] | None, Parameter(name="--server", metavar="URL", negative=())]
# An option that is on when given (no --no-x).
Switch = Annotated[bool, Parameter(negative=(), show_default=False)]


class UsageError(Exception):
    """A flag's value out of range or malformed: a usage error (exit 64), naming the flag."""


def given(settings: RunSettings | None) -> dict[str, Any]:
    """The settings flags given on the command line, by field name."""
    return settings.model_dump(include=settings.model_fields_set) if settings else {}


_Model = TypeVar("_Model", bound=BaseModel)


def from_flags(model_class: type[_Model], /, **values: object) -> _Model:
    """A settings model from flags; ``server=`` stands for ServerConfig's url (--server)."""
    if "server" in values:
        values["url"] = values.pop("server")
    try:
        return model_class(**values)
    except ValidationError as exc:
        raise UsageError(problems(exc, _flag)) from None


def _flag(loc: tuple[Any, ...]) -> str:
    """The flag an error's location stands for ("" for the model as a whole)."""
    if not loc:
        return ""
    return "--server" if loc[0] == "url" else "--" + str(loc[0]).replace("_", "-")


def check_server_flags(urls: list[str]) -> None:
    """Each `--server` value's URL (before any #limit=N) is one a server can have."""
    for url in urls:
        from_flags(ServerConfig, server=url.partition("#")[0])


def server_configs(settings: RunSettings, urls: list[str]) -> list[ServerConfig]:
    """`--server` values as server configs; a malformed one is a usage error."""
    check_server_flags(urls)
    try:
        return settings.server_configs(urls)
    except ConfigError as exc:  # URL#limit=N with a bad N
        raise UsageError(f"--server: {exc.message}") from None


def usage_message(exc: CycloptsError) -> str:
    """One line for what cyclopts found wrong on the command line, with the closest option,
    command or choice when one was mistyped."""
    if isinstance(exc, UnknownOptionError):
        option = (exc.token.keyword or exc.token.value).split("=", 1)[0]
        known = [n for a in exc.argument_collection for n in a.names if n.startswith("--")]
        return f"unrecognized option {option}{_closest(option, known)}"
    if isinstance(exc, UnknownCommandError) and exc.unused_tokens:
        commands = [name for name in exc.app or () if not name.startswith("-")]
        word = exc.unused_tokens[0]
        return f"unknown command {word!r}{_closest(word, commands)}"
    if isinstance(exc.__cause__, ValidationError):  # pydantic's, for a settings flag
        return "; ".join(_value_problem(err) for err in exc.__cause__.errors())
    return " ".join(str(exc).split())


def _value_problem(err: Any) -> str:
    said = err["msg"].removeprefix("Value error, ")
    message = f"{where}: {said}" if (where := _flag(err["loc"])) else said
    if err["type"] == "literal_error":  # expected: "'wav', 'flac' or 'mp3'"
        choices = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        message += _closest(str(err["input"]), choices)
    return message


def _closest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f": did you mean {close[0]}?" if close else ""
