"""Catalog rows from a SQL database: a table or a query, read with a server-side cursor.

A source is a SQLAlchemy URL (``postgresql://``, ``mysql+pymysql://``, ``mariadb+pymysql://``,
``sqlite:///path``) or ``env:NAME``, the URL held by an environment variable. Rows come in
batches from a server-side cursor (``stream_results`` + ``yield_per``), so memory stays flat
at any table size. They are read in order of the id column, so that a row's position
(``source_row``, which ``resume`` and ``retry-errors`` go by) is the same from run to run.

The password never leaves this module: every message names the URL with its password masked
(``***``), driver errors are re-raised without their chain, and the URL recorded for a run is
the masked one: ``mask`` is the one masking function, for run records, Prefect parameters,
tags and logs alike. Secrets are the userinfo password and query parameters such as
``password``, ``sslpassword``, ``secret``, ``token``, ``key``, ``api_key``. A masked URL given
back (by the CLI to its flow, or by ``resume``) takes its secrets from the process's
environment, which Prefect does not store: ``FISHFLOW_SOURCE_URL`` (the whole URL, used when
its masked form is the one given) or ``FISHFLOW_SOURCE_PASSWORD`` (the userinfo password).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fishflow.errors import ConfigError, FishflowError, SourceError
from fishflow.rows import Columns, SourceRow, check_columns

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


PASSWORD_ENV = "FISHFLOW_SOURCE_PASSWORD"
SOURCE_URL_ENV = "FISHFLOW_SOURCE_URL"
MASK = "***"
_SCHEMES = re.compile(r"^(postgresql|postgres|mysql|mariadb|sqlite)(\+[a-z0-9_]+)?://", re.I)
# SQLAlchemy 2.0 maps a bare postgresql:// to psycopg2 and mysql:// to mysqlclient; fishflow's
# extras ship psycopg 3 and PyMySQL.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_EXTRAS = {
    "postgresql": "fishflow[postgres]",
    "mysql": "fishflow[mysql]",
    "mariadb": "fishflow[mysql]",
}
# Query parameters that hold secrets: these names, and any name ending in one of the suffixes
# (`client_secret`, `access_token`, `aws_secret_access_key` end in one; `sslkey`, a file path,
# does not).
_SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "key", "apikey", "api_key", "sslpassword"}
)
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "_key", "apikey")


def _is_secret(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in _SECRET_QUERY_KEYS or name.endswith(_SECRET_SUFFIXES)


def is_database_url(source: str) -> bool:
    return bool(_SCHEMES.match(source))


def resolve_env(source: str) -> str:
    """``env:NAME`` -> the value of environment variable NAME; anything else as it is."""
    if not source.startswith("env:"):
        return source
    name = source.removeprefix("env:")
    value = os.environ.get(name)
    if not value:
        raise SourceError(f"source {source}: environment variable {name} is not set")
    return value


def _parse(url: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The text may hold a password: say what is wrong, not what was given.
        raise ConfigError("source is not a valid database URL (dialect://user@host/db)") from None
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def mask(source: str) -> str:
    """The source as it may be shown and recorded: a database URL without its password."""
    if not is_database_url(source):
        return source
    try:
        parsed = _parse(source)
    except ConfigError:
        return "<invalid database URL>"
    query = {k: MASK if _is_secret(k) else v for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=" + MASK)  # as the password reads (it parses back)


def split_password(source: str) -> tuple[str, str | None]:
    """(the masked URL, its password): for callers that pass the password out of band."""
    if not is_database_url(source):
        return source, None
    password = _parse(source).password
    return (mask(source), password) if password and password != MASK else (source, None)


def split_secrets(source: str) -> tuple[str, str | None]:
    """(the masked source, the source itself when masking hid a secret in it, else None):
    for callers that pass the secrets out of band (the CLI, through ``SOURCE_URL_ENV``)."""
    shown = mask(source)
    return (shown, source) if shown != source and _holds_secret(source) else (source, None)


def _secrets(url: URL) -> list[str]:
    """The secret values a URL holds: its password, its secret query parameters' values."""
    values = [url.password] if url.password else []
    for name, value in url.query.items():
        if _is_secret(name):
            values += [value] if isinstance(value, str) else list(value)  # ?k=a&k=b: a tuple
    return [v for v in values if v]


def _holds_secret(source: str) -> bool:
    return any(v != MASK for v in _secrets(_parse(source)))


def _masked(url: URL) -> bool:
    return MASK in _secrets(url)


def _url(source: str) -> URL:
    parsed = _parse(source)
    if not _masked(parsed):
        return parsed
    # The URL with its secrets, from the environment of this process (put there by the CLI,
    # or by a work pool): used only when its masked form is the URL given.
    given = os.environ.get(SOURCE_URL_ENV)
    if given and is_database_url(given) and mask(given) == mask(source):
        return _parse(given)
    password = os.environ.get(PASSWORD_ENV)
    if not password or parsed.password != MASK or _secrets(parsed).count(MASK) > 1:
        raise SourceError(
            f"{mask(source)}: its secrets are not recorded with the run; set "
            f"{SOURCE_URL_ENV} to the whole URL (or {PASSWORD_ENV} to its password), or "
            "name the URL as env:NAME or a Prefect Secret (secret:NAME)"
        )
    return parsed.set(password=password)


def _scrub(message: str, url: URL) -> str:
    """A driver's message, first line only, with the password cut out should it echo it."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    for secret in _secrets(url):
        line = line.replace(secret, MASK)
    return line


def _engine(url: URL) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        connect_args["connect_timeout"] = 15  # an unreachable host fails the run, not hangs it
    try:
        return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(url.get_backend_name(), "its database driver")
        raise SourceError(
            f"{url.render_as_string(hide_password=True)}: driver {exc.name!r} is not installed "
            f"(pip install '{extra}')"
        ) from None


def _value_problem(column: str, value: Any) -> str:
    if value is None:
        return f"column {column!r} is NULL"
    return f"column {column!r} holds {type(value).__name__}, not text"


def _text(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


COUNT_TIMEOUT_S = 5.0  # a progress total is not worth a long scan of a huge table


def count_rows(source: str, table: str) -> int | None:
    """How many rows ``table`` holds (COUNT(*)), or None when that cannot be told within
    ``COUNT_TIMEOUT_S`` (PostgreSQL, MariaDB and MySQL stop the statement; SQLite is local)."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = _engine(_url(source))
    except FishflowError:
        return None
    schema, _, name = table.rpartition(".")
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # for this transaction only
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_S * 1000:.0f}"))
            elif conn.dialect.name in ("mysql", "mariadb"):
                for setting in (  # MariaDB's, in seconds; MySQL's, in ms
                    f"SET SESSION max_statement_time = {COUNT_TIMEOUT_S:g}",
                    f"SET SESSION max_execution_time = {COUNT_TIMEOUT_S * 1000:.0f}",
                ):
                    with contextlib.suppress(SQLAlchemyError):
                        conn.execute(sa.text(setting))
            # sa.table quotes the names itself: nothing the user typed is pasted into SQL.
            counted = sa.select(sa.func.count()).select_from(sa.table(name, schema=schema or None))
            return int(conn.execute(counted).scalar_one())
    except SQLAlchemyError:
        return None  # too slow, or the reader will say what is wrong (password scrubbed)
    finally:
        engine.dispose()


_READING = ("select", "with", "values", "table", "(")  # what a statement that reads begins with


def _statements(sql: str) -> list[str]:
    """``sql`` cut at its semicolons, skipping those in quotes, quoted names, comments and
    PostgreSQL's dollar quotes; statements that are only blanks and comments are left out."""
    found: list[str] = []
    start = i = 0
    code = False  # whether the statement so far holds anything but blanks and comments
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            end = i + 1
            while end < n and not (sql[end] == c and sql[end + 1 : end + 2] != c):
                end += 2 if sql[end] == c or (sql[end] == "\\" and c == "'") else 1
            i, code = end + 1, True
        elif sql.startswith("--", i) or c == "#":
            i = n if (nl := sql.find("\n", i)) < 0 else nl + 1
        elif sql.startswith("/*", i):
            i = n if (close := sql.find("*/", i + 2)) < 0 else close + 2
        elif c == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[i:])):
            close = sql.find(tag.group(), i + len(tag.group()))
            i, code = (n if close < 0 else close + len(tag.group())), True
        elif c == ";":
            if code:
                found.append(sql[start:i].strip())
            start, i, code = i + 1, i + 1, False
        else:
            code = code or not c.isspace()
            i += 1
    if code:
        found.append(sql[start:].strip())
    return found


def check_query(query: str) -> str:
    """The statement of ``--query``, without a trailing semicolon; a ConfigError unless it is
    one statement that reads (SELECT, WITH, VALUES, TABLE). The database has the last word:
    the statement runs in a read-only transaction (see ``_read_only``)."""
    statements = _statements(query)
    if len(statements) != 1:
        raise ConfigError(
            f"--query takes one read-only statement (SELECT ...), not {len(statements)}"
        )
    words = re.sub(r"--[^\n]*|#[^\n]*|/\*.*?\*/", " ", statements[0], flags=re.S).split()
    first = words[0].lower() if words else ""
    if not first.startswith(_READING):
        raise ConfigError(
            f"--query takes one read-only statement (SELECT ...), not {first.upper()} ...: "
            "fishflow only reads a catalog"
        )
    return statements[0]


def _read_only(conn: Any) -> None:
    """Make the connection's transaction read-only, by the database's own means: a statement
    that would write (a data-changing function, nextval) is refused by the database."""
    import sqlalchemy as sa

    dialect = conn.dialect.name
    if dialect == "postgresql":  # the first statement of the transaction SQLAlchemy begins
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
    elif dialect in ("mysql", "mariadb"):
        conn.execute(sa.text("START TRANSACTION READ ONLY"))
    elif dialect == "sqlite":
        conn.exec_driver_sql("PRAGMA query_only = ON")


def _refused_write(message: str) -> bool:
    text = message.lower()
    return (
        "read-only transaction" in text
        or "read only transaction" in text
        or ("readonly database" in text)
    )


def _statement(conn: Any, cols: Columns, table: str | None, query: str | None, where: str) -> Any:
    """The SELECT that reads the source's rows in order of the id column."""
    import sqlalchemy as sa

    if table:
        schema, _, name = table.rpartition(".")
        # Reflection quotes the names itself: nothing the user typed is pasted into SQL.
        found = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
        check_columns(list(found.columns.keys()), cols, where)
        wanted = (cols.id, cols.text, cols.language, cols.voice)
        return sa.select(*(found.c[c] for c in wanted if c in found.c)).order_by(found.c[cols.id])
    assert query is not None
    # The user's own SQL, read in order of the id column for stable row positions.
    # Every colon is literal (text() would take ':x' in 'a:x' for a parameter).
    sql = check_query(query).replace(":", "\\:") + "\n"  # a closing -- comment stays shut
    inner = sa.text(sql).columns().subquery("fishflow_rows")
    return (
        sa.select(sa.text("*"))
        .select_from(inner)
        .order_by(sa.literal_column(conn.dialect.identifier_preparer.quote(cols.id)))
    )


def _source_error(exc: Exception, url: URL, where: str, table: str | None) -> FishflowError:
    """A driver's or SQLAlchemy's error as the one line fishflow says (password scrubbed)."""
    from sqlalchemy.exc import NoSuchTableError

    if isinstance(exc, NoSuchTableError):
        return SourceError(f"{url.render_as_string(hide_password=True)}: no table {table!r}")
    cause = str(getattr(exc, "orig", None) or exc)
    if _refused_write(cause):
        return SourceError(
            f"{where}: --query must only read; the database refused it in a read-only "
            f"transaction: {_scrub(cause, url)}"
        )
    return SourceError(f"{where}: {_scrub(cause, url)}")


def check_database(source: str, cols: Columns, *, table: str | None, query: str | None) -> None:
    """Raise now what reading would raise at its start (no such table, a bad query or
    column, a wrong password), before a run writes anything: the statement is run with
    LIMIT 0, so no row is fetched."""
    from sqlalchemy.exc import SQLAlchemyError

    if bool(table) == bool(query):
        raise ConfigError(f"{mask(source)}: give a database source --table NAME or --query SQL")
    url = _url(source)
    shown = url.render_as_string(hide_password=True)
    where = f"{shown} table {table}" if table else f"{shown} query"
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            _read_only(conn)
            names = list(conn.execute(_statement(conn, cols, table, query, where).limit(0)).keys())
            check_columns(names, cols, where)
    except SQLAlchemyError as exc:
        raise _source_error(exc, url, where, table) from None
    finally:
        engine.dispose()


def read_database(
    source: str, cols: Columns, batch_rows: int, *, table: str | None, query: str | None
) -> Iterator[list[SourceRow]]:
    """Batches of rows of ``table`` or of ``query``, in order of the id column, read in a
    read-only transaction."""
    from sqlalchemy.exc import SQLAlchemyError

    if bool(table) == bool(query):
        raise ConfigError(f"{mask(source)}: give a database source --table NAME or --query SQL")
    url = _url(source)
    shown = url.render_as_string(hide_password=True)
    engine = _engine(url)
    where = f"{shown} table {table}" if table else f"{shown} query"
    try:
        with engine.connect() as conn:
            _read_only(conn)
            stmt = _statement(conn, cols, table, query, where)
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(stmt)
            names = list(result.keys())
            check_columns(names, cols, where)
            i_id, i_text = names.index(cols.id), names.index(cols.text)
            i_lang = names.index(cols.language) if cols.language in names else None
            i_voice = names.index(cols.voice) if cols.voice in names else None
            start = 0
            for partition in result.partitions():
                batch = []
                for offset, r in enumerate(partition):
                    text = r[i_text]
                    batch.append(
                        SourceRow(
                            start + offset,
                            _text(r[i_id]),
                            text if type(text) is str else None,
                            _text(r[i_lang]) if i_lang is not None else None,
                            _text(r[i_voice]) if i_voice is not None else None,
                            None if type(text) is str else _value_problem(cols.text, text),
                        )
                    )
                start += len(batch)
                yield batch
    except SQLAlchemyError as exc:
        raise _source_error(exc, url, where, table) from None
    finally:
        engine.dispose()
