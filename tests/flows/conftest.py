from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session: it takes ~20 s to start here."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _no_shared_limits_left(prefect_harness: None) -> Iterator[None]:
    """Shared limits a test made are gone after it: a run on a server without one, while the
    Prefect server has limits for others, stops (see test_shared_limits)."""
    yield
    import asyncio

    from prefect.client.orchestration import get_client

    async def drop() -> None:
        async with get_client() as client:
            for limit in await client.read_global_concurrency_limits(limit=200):
                if limit.name.startswith("fishflow-server-"):
                    await client.delete_global_concurrency_limit_by_name(limit.name)

    asyncio.run(drop())
