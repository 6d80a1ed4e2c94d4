"""Database tables as sources: PostgreSQL, MariaDB and SQLite, each a real database.

Each test session makes its own databases (random names, dropped at the end): other sessions
use the same servers at the same time. PostgreSQL here trusts every local connection (any
password is accepted), so a wrong password is tried on MariaDB, with a user made for it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fishflow.cli import main
from fishflow.database import PASSWORD_ENV
from fishflow.testing.emulator import Emulator
from tests.flows.helpers import flow_run_messages, latest_run, manifest, run

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
PASSWORD = "pw-" + secrets.token_hex(6)  # searched for in every output afterwards


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"fishflow_test_{secrets.token_hex(4)}"
    admin = _admin(PG_ADMIN)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def mariadb() -> Iterator[tuple[str, str]]:
    """(URL of a fresh database as root, user with PASSWORD and rights on it)."""
    name = f"fishflow_test_{secrets.token_hex(4)}"
    user = f"ff_{secrets.token_hex(4)}"
    admin = _admin(MARIADB_ADMIN)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'"))
        conn.execute(sa.text(f"GRANT SELECT ON `{name}`.* TO '{user}'@'%'"))
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}", user
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database URL, with a fresh table name per test (see `table`)."""
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_url")
    elif request.param == "mariadb":
        yield request.getfixturevalue("mariadb")[0]
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('db')}/catalog.db"


def table(url: str, rows: list[dict[str, Any]], *, primary_key: bool = True) -> str:
    """A new table of `rows` (id, text, language, n) in the database; returns its name."""
    name = f"products_{secrets.token_hex(3)}"
    key = " PRIMARY KEY" if primary_key else ""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id VARCHAR(64){key}, text TEXT, language VARCHAR(8), "
                "n INTEGER)"
            )
        )
        conn.execute(
            sa.text(f"INSERT INTO {name} VALUES (:id, :text, :language, :n)"),
            [{"language": None, "n": 0, **r} for r in rows],
        )
    engine.dispose()
    return name


def execute(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


ROWS = [
    {"id": f"p{i}", "text": f"Product {i} is a sturdy oak chair, number {i}.", "language": "en"}
    for i in range(6)
] + [{"id": "zh", "text": "这款绿茶产自杭州。每罐250克。", "language": "zh"}]


def test_every_row_once_then_nothing_then_only_the_edited_row(
    database: str, tmp_path: Path, emulator: Emulator
) -> None:
    name = table(database, ROWS)
    out = tmp_path / "out"
    with flow_run_messages() as logged:
        first = run(database, out, [emulator.url], settings_kw={"table": name, "batch_size": 3})
    # The table's rows counted for the progress line (a deployment's run logs it at its start).
    assert f"fishflow: 0 of {len(ROWS)} items (0%), 0 ok, 0 failed; 0 chunks, 0s of audio" in logged
    items = manifest(out, "items", first.run_id)
    assert sorted(items["source_row"]) == list(range(len(ROWS)))
    assert sorted(items["item_id"]) == sorted(r["id"] for r in ROWS)
    assert (items["status"] == "ok").all() and emulator.stats["requests"] == len(ROWS)

    emulator.reset_stats()
    again = run(database, out, [emulator.url], settings_kw={"table": name, "batch_size": 3})
    assert again.skipped == len(ROWS) and emulator.stats["requests"] == 0

    execute(database, f"UPDATE {name} SET text = :t WHERE id = 'p3'", t="Now a walnut chair.")
    third = run(database, out, [emulator.url], settings_kw={"table": name, "batch_size": 3})
    items = manifest(out, "items", third.run_id).set_index("item_id")
    assert emulator.stats["texts"] == {"Now a walnut chair.": 1}
    assert items.loc["p3", "status"] == "ok" and (items.drop("p3")["status"] == "skipped").all()
    # Rows keep their positions (read in order of the id column), whatever the update did.
    assert list(items.sort_values("source_row").index) == sorted(r["id"] for r in ROWS)


def test_a_query_reads_what_it_selects(database: str, tmp_path: Path, emulator: Emulator) -> None:
    name = table(database, ROWS)
    summary = run(
        database,
        tmp_path / "out",
        [emulator.url],
        settings_kw={
            "query": f"SELECT id AS sku, text AS body FROM {name} WHERE language = 'en';",
            "id_column": "sku",
            "text_column": "body",
        },
    )
    items = manifest(tmp_path / "out", "items", summary.run_id)
    assert sorted(items["item_id"]) == [f"p{i}" for i in range(6)]
    assert (items["status"] == "ok").all()


def test_bad_rows_fail_alone_with_their_reason(
    database: str, tmp_path: Path, emulator: Emulator
) -> None:
    rows: list[dict[str, str | None]] = [
        {"id": "a", "text": "A good row says hello."},
        {"id": "b", "text": None},
        {"id": "a", "text": "Same id as the first row."},
        {"id": "c", "text": "Another good row."},
    ]
    name = table(database, rows, primary_key=False)
    out = tmp_path / "out"
    summary = run(database, out, [emulator.url], settings_kw={"table": name})
    items = manifest(out, "items", summary.run_id).sort_values("source_row")
    errors = manifest(out, "errors", summary.run_id)
    assert summary.ok == 2 and summary.failed == 2
    failed = items[items.status == "failed"]
    reasons = dict(zip(failed["source_row"], failed["error"], strict=True))
    assert sorted(reasons.values())[0].startswith("column 'text' is NULL")
    assert any(r.startswith("duplicate id 'a'") for r in reasons.values())
    assert set(errors["source_row"]) == set(failed["source_row"])
    assert (errors["stage"] == "source").all() and not errors["retryable"].any()

    # A column that holds numbers, not text: each row fails with that reason, none is sent.
    emulator.reset_stats()
    summary = run(database, out, [emulator.url], settings_kw={"table": name, "text_column": "n"})
    items = manifest(out, "items", summary.run_id)
    assert emulator.stats["requests"] == 0 and (items["status"] == "failed").all()
    assert set(items.dropna(subset=["error"])["error"]) >= {"column 'n' holds int, not text"}


def test_sqlite_value_of_another_type_fails_its_row_only(
    tmp_path: Path, emulator: Emulator
) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    name = table(url, [{"id": "ok", "text": "Fine words."}, {"id": "x", "text": "placeholder"}])
    # SQLite keeps a value's own type per row: this one is a blob in a TEXT column.
    execute(url, f"UPDATE {name} SET text = :b WHERE id = 'x'", b=b"\x00\x01")
    summary = run(url, tmp_path / "out", [emulator.url], settings_kw={"table": name})
    items = manifest(tmp_path / "out", "items", summary.run_id).set_index("item_id")
    assert items.loc["ok", "status"] == "ok"
    assert items.loc["x", "error"] == "column 'text' holds bytes, not text"


def _files_text(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


def test_wrong_password_is_one_line_that_names_no_secret(
    mariadb: tuple[str, str], tmp_path: Path, emulator: Emulator, capsys, caplog, monkeypatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)  # the CLI puts the password there
    url, user = mariadb
    name = table(url, ROWS)
    wrong = f"mysql+pymysql://{user}:{PASSWORD}-wrong@127.0.0.1:3306/{url.rsplit('/', 1)[1]}"
    out = tmp_path / "out"
    code = main(["run", wrong, "--table", name, "--out", str(out), "--server", emulator.url])
    err = capsys.readouterr().err
    assert code == 1 and emulator.stats["requests"] == 0
    assert err.count("\n") == 1 and "Access denied" in err and f"{user}:***@" in err
    for text in (err, caplog.text, _files_text(out)):
        assert PASSWORD not in text


def test_right_password_on_the_command_line_is_masked_everywhere(
    mariadb: tuple[str, str], tmp_path: Path, emulator: Emulator, capsys, caplog, monkeypatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)  # the CLI puts the password there
    url, user = mariadb
    name = table(url, ROWS)
    db = url.rsplit("/", 1)[1]
    out = tmp_path / "out"
    code = main(
        [
            "run",
            f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1:3306/{db}",
            "--table",
            name,
            "--out",
            str(out),
            "--server",
            emulator.url,
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = (out / "manifests" / f"run={latest_run(out)}" / "run.json").read_text()
    assert f"mysql+pymysql://{user}:***@127.0.0.1:3306/{db}" in record
    parameters = asyncio.run(_flow_run_parameters())
    for text in (capsys.readouterr().err, caplog.text, _files_text(out), *parameters):
        assert PASSWORD not in text


def test_password_in_a_query_parameter_never_reaches_prefect(
    mariadb: tuple[str, str], tmp_path: Path, emulator: Emulator, capsys, caplog, monkeypatch
) -> None:
    """`?password=` is a secret too: the run reads the table (MariaDB checks the password),
    while Prefect's flow runs (parameters, names, tags), artifacts, logs and files hold it
    masked."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url, user = mariadb
    name = table(url, ROWS)
    db = url.rsplit("/", 1)[1]
    out = tmp_path / "out"
    source = f"mysql+pymysql://{user}@127.0.0.1:3306/{db}?charset=utf8mb4&password={PASSWORD}"
    with flow_run_messages() as messages:
        code = main(["run", source, "--table", name, "--out", str(out), "--server", emulator.url])
    assert code == 0, capsys.readouterr().err
    prefect_texts = asyncio.run(_prefect_texts())
    for text in prefect_texts:
        assert PASSWORD not in text
    assert any("password=***" in t for t in prefect_texts)  # the run's parameters, masked
    for text in (capsys.readouterr().err, caplog.text, _files_text(out), *messages):
        assert PASSWORD not in text
    record = (out / "manifests" / f"run={latest_run(out)}" / "run.json").read_text()
    assert "password=***" in record


def test_a_password_given_to_the_flow_itself_reads_the_table_and_is_recorded_masked(
    mariadb: tuple[str, str], tmp_path: Path, emulator: Emulator, caplog, monkeypatch
) -> None:
    """As a deployment's `source` parameter holding a password in plain text: the run warns
    (Prefect keeps its parameters), reads the table with the password (MariaDB checks it) and
    records the source masked."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url, user = mariadb
    name = table(url, ROWS)
    db = url.rsplit("/", 1)[1]
    out = tmp_path / "out"
    source = f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1:3306/{db}"
    summary = run(source, out, [emulator.url], settings_kw={"table": name})
    assert summary.ok == len(ROWS) and summary.failed == 0
    assert "holds a password in plain text" in caplog.text
    record = (out / "manifests" / f"run={summary.run_id}" / "run.json").read_text()
    assert f"mysql+pymysql://{user}:***@127.0.0.1:3306/{db}" in record
    assert PASSWORD not in _files_text(out)


async def _prefect_texts() -> list[str]:
    """What Prefect's database holds of every flow run: parameters, names, tags, artifacts."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        artifacts = await client.read_artifacts()
        return [str((r.parameters, r.name, r.tags)) for r in runs] + [
            str((a.key, a.description, a.data)) for a in artifacts
        ]


async def _flow_run_parameters() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [str(r.parameters) for r in await client.read_flow_runs()]


def test_missing_table_is_one_line(database: str, tmp_path: Path, emulator: Emulator, capsys):
    out = tmp_path / "out"
    args = ["run", database, "--table", "no_such_table", "--out", str(out)]
    code = main([*args, "--server", emulator.url])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "no table 'no_such_table'" in err and "Traceback" not in err
    assert not out.exists()  # a source error creates no run folder


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("DELETE FROM {t} RETURNING id, text", "not DELETE"),
        ("SELECT id, text FROM {t}; DROP TABLE {t}", "not 2"),
    ],
)
def test_query_that_is_not_one_reading_statement_is_a_usage_error(
    postgres_url: str, tmp_path: Path, emulator: Emulator, capsys, query: str, says: str
) -> None:
    name = table(postgres_url, ROWS)
    out = tmp_path / "out"
    args = ["run", postgres_url, "--query", query.format(t=name), "--out", str(out)]
    code = main([*args, "--server", emulator.url])
    err = capsys.readouterr().err
    assert code == 64 and err.count("\n") == 1, err
    assert "--query takes one read-only statement" in err and says in err
    assert not out.exists() and emulator.stats["requests"] == 0
    assert len(_rows(postgres_url, name)) == len(ROWS)  # nothing deleted


def _rows(url: str, name: str) -> list[Any]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(f"SELECT * FROM {name}")))
    engine.dispose()
    return rows


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_query_that_would_write_is_refused_by_the_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, emulator: Emulator, capsys
) -> None:
    """A SELECT that writes (a sequence's next value) is refused by the database itself: the
    query runs in a read-only transaction. One line, exit 1, the sequence untouched."""
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        seq = f"s_{secrets.token_hex(3)}"
        nextval, current = f"nextval('{seq}')::text", f"SELECT last_value FROM {seq}"
    else:
        url = request.getfixturevalue("mariadb")[0]
        seq = f"s_{secrets.token_hex(3)}"
        nextval, current = f"CAST(NEXTVAL({seq}) AS CHAR)", f"SELECT NEXTVAL({seq})"
    execute(url, f"CREATE SEQUENCE {seq}")
    name = table(url, ROWS[:2])
    query = f"SELECT id, text, {nextval} AS n FROM {name}"
    code = main(["run", url, "--query", query, "--out", str(tmp_path / "out"), "--server",
                 emulator.url, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "--query must only read" in err and "read-only transaction" in err.lower()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.execute(sa.text(current)).scalar_one() == 1  # never advanced before
    engine.dispose()


def test_url_from_the_environment_is_recorded_by_name(
    mariadb: tuple[str, str], tmp_path: Path, emulator: Emulator, monkeypatch
) -> None:
    url, user = mariadb
    name = table(url, ROWS)
    monkeypatch.setenv(
        "CATALOG_DB_URL", f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1:3306/{url.rsplit('/')[-1]}"
    )
    out = tmp_path / "out"
    summary = run("env:CATALOG_DB_URL", out, [emulator.url], settings_kw={"table": name})
    assert summary.ok == len(ROWS)
    record = (out / "manifests" / f"run={summary.run_id}" / "run.json").read_text()
    assert '"source": "env:CATALOG_DB_URL"' in record and PASSWORD not in _files_text(out)


def test_url_from_a_prefect_secret_block(
    postgres_url: str, tmp_path: Path, emulator: Emulator
) -> None:
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    name = table(postgres_url, ROWS[:2])
    block = f"catalog-db-{secrets.token_hex(3)}"
    Secret(value=SecretStr(postgres_url)).save(block)
    out = tmp_path / "out"
    summary = run(f"secret:{block}", out, [emulator.url], settings_kw={"table": name})
    assert summary.ok == 2
    record = (out / "manifests" / f"run={summary.run_id}" / "run.json").read_text()
    assert f'"source": "secret:{block}"' in record


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_count_too_slow_for_a_progress_total_gives_none(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fishflow import database

    if backend == "postgresql":
        url, sleep = request.getfixturevalue("postgres_url"), "pg_sleep(1)"
    else:
        url, sleep = request.getfixturevalue("mariadb")[0], "SLEEP(1)"
    name = f"slow_{secrets.token_hex(3)}"  # a view that takes a second to count
    view = f"SELECT 'a' AS id, 'x' AS text FROM (SELECT {sleep} AS z) s"
    execute(url, f"CREATE VIEW {name} AS {view}")
    assert database.count_rows(url, name) == 1  # within the default limit
    monkeypatch.setattr(database, "COUNT_TIMEOUT_S", 0.2)
    assert database.count_rows(url, name) is None  # the server stopped it: no total
