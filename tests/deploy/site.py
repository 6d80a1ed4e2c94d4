"""A Prefect site as users run one: a real `prefect server` on PostgreSQL (a fresh database
each time), fishflow's deployments registered by `fishflow deploy`, process workers of this
project's venv. Used by the deployment tests and by `make bench`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = "postgres@127.0.0.1:5432"
HEARTBEAT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://{PG}/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer in 180 s: {log.read_text()[-2000:]}")


@dataclass
class PrefectSite:
    """A Prefect server with fishflow deployed on it, and the processes around it."""

    url: str
    env: dict[str, str]
    home: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def fishflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("fishflow", *args)

    def prefect(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("prefect", *args)

    def _run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / command), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.home,
        )

    def start_worker(self, name: str, *, pool: str = "fishflow",
                     cwd: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        log = open(self.home / f"worker-{name}.log", "wb")  # noqa: SIM115 (lives with the worker)
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its flow-run processes share its group: killable together
            cwd=cwd or self.home,
        )
        self.workers[name] = worker
        return worker

    def stop_worker(self, name: str, sig: int = signal.SIGINT) -> None:
        worker = self.workers.pop(name, None)
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, sig)  # SIGINT: a process worker ignores SIGTERM for a while
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def worker_log(self, name: str) -> str:
        return (self.home / f"worker-{name}.log").read_text(errors="replace")


def client_settings(url: str) -> Any:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url})


def deployments_for(servers: list[str], secret_block: str | None) -> dict[str, Any]:
    """The project's own deployments file, pointed at `servers` (wav output) and a Secret."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        params = d["parameters"]
        params["api_key_secret"] = secret_block
        if "servers" in params:
            params["servers"] = servers
            params["settings"] = {**params.get("settings", {}), "audio_format": "wav"}
    return spec


@contextmanager
def prefect_site(home: Path, servers: list[str], *, limit: int = 2,
                 secret: tuple[str, str] | None = None) -> Iterator[PrefectSite]:  # fmt: skip
    """A server on a new PostgreSQL database with fishflow deployed against `servers` (each
    with a shared limit of `limit`), and `secret` = (block name, value) saved as a Secret."""
    database = f"fishflow_site_{secrets.token_hex(4)}"
    asyncio.run(_pg(f'CREATE DATABASE "{database}"'))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FISHFLOW_"))},
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG}/{database}",
        # Leases in files survive a server restart (in memory, a restart leaked slots).
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
            "prefect.server.concurrency.lease_storage.filesystem"
        ),
        # Workers poll every second: a run starts about a second after it is triggered.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        # A worker hears of a cancel by websocket event, or else by polling every 120 s: poll
        # often, so a cancel reaches the run in seconds even when the events socket drops.
        "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2",
    }
    server_log = home / "server.log"
    with open(server_log, "wb") as log:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    site = PrefectSite(url=url, env=env, home=home)
    try:
        _wait_healthy(url, server, server_log)
        prefect_file = home / "prefect.yaml"
        spec = deployments_for(servers, secret[0] if secret else None)
        prefect_file.write_text(yaml.safe_dump(spec))
        limits = [arg for s in servers for arg in ("--server", f"{s}#limit={limit}")]
        deployed = site.fishflow("deploy", "--prefect-file", str(prefect_file), *limits,
                                 "--heartbeat-s", str(HEARTBEAT_S))  # fmt: skip
        if deployed.returncode != 0:
            raise RuntimeError(f"fishflow deploy failed: {deployed.stderr}")
        if secret:
            with client_settings(url):
                from prefect.blocks.system import Secret

                Secret(value=SecretStr(secret[1])).save(secret[0], overwrite=True)
        yield site
    finally:
        for name in list(site.workers):
            site.stop_worker(name)
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
