"""Database URLs: which sources are databases, and passwords kept out of sight."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fishflow.database import is_database_url, mask, resolve_env, split_password
from fishflow.errors import ConfigError, SourceError
from fishflow.sources import Columns, read_source


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/cat", "postgresql+psycopg://app:***@db:5432/cat"),
        ("postgres://app:s3cret@db/cat", "postgresql+psycopg://app:***@db/cat"),
        ("mysql://app:s3cret@db/cat", "mysql+pymysql://app:***@db/cat"),
        ("mariadb+pymysql://app@db/cat", "mariadb+pymysql://app@db/cat"),
        ("postgresql://db/cat?password=s3cret&sslmode=require", None),
        ("sqlite:///tmp/c.db", "sqlite:///tmp/c.db"),
        ("s3://bucket/catalog.csv", "s3://bucket/catalog.csv"),
        ("catalog.csv", "catalog.csv"),
    ],
)
def test_mask_hides_every_password(source: str, shown: str | None) -> None:
    masked = mask(source)
    assert "s3cret" not in masked
    if shown is not None:
        assert masked == shown


def test_split_password_and_give_it_back_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert split_password("postgresql://app:s3cret@db/cat") == (
        "postgresql+psycopg://app:***@db/cat",
        "s3cret",
    )
    assert split_password("catalog.csv") == ("catalog.csv", None)
    assert is_database_url("MariaDB+pymysql://x@y/z") and not is_database_url("./sqlite.csv")
    # A masked URL (from a run record) without the password at hand: a clear run-level error.
    monkeypatch.delenv("FISHFLOW_SOURCE_PASSWORD", raising=False)
    with pytest.raises(SourceError, match="FISHFLOW_SOURCE_PASSWORD"):
        list(read_source("postgresql://app:***@127.0.0.1:1/cat", Columns(), 10, table="t"))


def test_env_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, text TEXT, language TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(2, "Two.", "en"), (1, "One.", None)])
    monkeypatch.setenv("CATALOG", f"sqlite:///{db}")
    batches = list(read_source("env:CATALOG", Columns(), 1, table="t"))
    assert [[(r.row, r.item_id, r.text, r.language) for r in b] for b in batches] == [
        [(0, "1", "One.", None)],
        [(1, "2", "Two.", "en")],
    ]
    monkeypatch.delenv("CATALOG")
    with pytest.raises(SourceError, match="CATALOG is not set"):
        resolve_env("env:CATALOG")


def test_table_and_query_need_a_database_and_each_other_not(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("id,text\na,b\n")
    with pytest.raises(ConfigError, match="database URL"):
        read_source(str(csv), Columns(), 10, table="t")
    with pytest.raises(ConfigError, match="--table NAME or --query"):
        list(read_source(f"sqlite:///{tmp_path}/x.db", Columns(), 10))
    with pytest.raises(ConfigError, match="not a valid database URL"):
        list(read_source("postgresql://app:pw@db:notaport/x", Columns(), 10, table="t"))


def test_missing_columns_name_the_ones_there(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (sku TEXT, body TEXT)")
    with pytest.raises(SourceError, match="no column 'id', 'text'; columns are"):
        list(read_source(f"sqlite:///{db}", Columns(), 10, table="t"))


def test_a_query_is_taken_as_written_and_read_in_id_order(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (sku TEXT, body TEXT)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)", [("b", "Ratio 1:2."), ("a", "Time 10:30."), ("c", "x")]
        )
    query = "SELECT sku, body FROM t WHERE body LIKE '%:%' ORDER BY body DESC;"
    got = [
        (r.row, r.item_id, r.text)
        for batch in read_source(f"sqlite:///{db}", Columns("sku", "body"), 10, query=query)
        for r in batch
    ]
    assert got == [(0, "a", "Time 10:30."), (1, "b", "Ratio 1:2.")]


def test_a_password_never_travels_to_a_deployment(tmp_path: Path, capsys) -> None:
    from fishflow.cli import main

    args = ["run", "postgresql://app:s3cret@db/shop", "--table", "t", "--out", str(tmp_path)]
    assert main([*args, "--deployment", "refresh-catalog-audio/manual"]) == 1
    err = capsys.readouterr().err
    assert "secret:NAME" in err and "s3cret" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "query",
    [
        "password=s3cret",
        "sslpassword=s3cret",
        "secret=s3cret",
        "token=s3cret",
        "key=s3cret",
        "api_key=s3cret",
        "client_secret=s3cret",
        "Access-Token=s3cret",
        "password=s3cret&password=s3cret2",
    ],
)
def test_mask_hides_secrets_in_query_parameters(query: str) -> None:
    masked = mask(f"postgresql://app@db/cat?sslmode=require&{query}")
    assert "s3cret" not in masked and "sslmode=require" in masked and "***" in masked


def test_the_whole_url_comes_back_through_the_environment_for_its_masked_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fishflow.database import SOURCE_URL_ENV, _url, split_secrets

    url = "postgresql://app:pw1@db/cat?sslpassword=pw2&application_name=x"
    shown, unmasked = split_secrets(url)
    assert unmasked == url and "pw1" not in shown and "pw2" not in shown
    assert split_secrets("postgresql://app@db/cat?sslmode=require") == (
        "postgresql://app@db/cat?sslmode=require",
        None,
    )
    monkeypatch.delenv("FISHFLOW_SOURCE_PASSWORD", raising=False)
    monkeypatch.setenv(SOURCE_URL_ENV, url)
    restored = _url(shown)
    assert (restored.password, restored.query["sslpassword"]) == ("pw1", "pw2")
    # Another URL's secrets are never lent to this one.
    other = mask("postgresql://app:pw1@otherdb/cat?sslpassword=pw2")
    with pytest.raises(SourceError, match=SOURCE_URL_ENV):
        _url(other)


@pytest.mark.parametrize(
    ("query", "statement"),
    [
        ("SELECT id, text FROM t", "SELECT id, text FROM t"),
        ("  select 'a;b' AS id, text FROM t ; ", "select 'a;b' AS id, text FROM t"),
        ("WITH x AS (SELECT 1) SELECT * FROM x; -- done;", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ('SELECT "odd;name" AS id /* ; */ FROM t', 'SELECT "odd;name" AS id /* ; */ FROM t'),
        ("SELECT $q$;$q$ AS text, 'it''s;' AS id", "SELECT $q$;$q$ AS text, 'it''s;' AS id"),
        ("/* lead */ (SELECT 1 AS id)", "/* lead */ (SELECT 1 AS id)"),
    ],
)
def test_query_of_one_reading_statement(query: str, statement: str) -> None:
    from fishflow.database import check_query

    assert check_query(query) == statement


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("SELECT id, text FROM t; DROP TABLE t", "not 2"),
        ("SELECT 1;;SELECT 2", "not 2"),
        ("-- nothing", "not 0"),
        ("DELETE FROM t RETURNING id, text", "not DELETE"),
        ("/* x */ update t set text = '' returning id, text", "not UPDATE"),
        ("INSERT INTO t VALUES (1, 'a') RETURNING *", "not INSERT"),
    ],
)
def test_query_refused_in_one_line(query: str, says: str) -> None:
    from fishflow.database import check_query

    with pytest.raises(ConfigError, match="one read-only statement") as caught:
        check_query(query)
    assert says in caught.value.message and "\n" not in caught.value.message
