"""Where a run's source comes from, when it is a Prefect Secret.

``secret:NAME`` names a Prefect Secret block holding the source (a database URL with its
password, typically), so that neither the flow's parameters, nor its logs, nor the run record
ever hold the password: they hold ``secret:NAME``. ``env:NAME`` and literal sources are left to
the core (``fishflow.sources.read_source``), which never imports Prefect.
"""

from __future__ import annotations

from fishflow.errors import SourceError
from fishflow.tasks.prefect_run import secret_value

SECRET_PREFIX = "secret:"


async def resolve_source(source: str) -> str:
    """The source to read: the value of Secret block NAME for ``secret:NAME``, else as is."""
    if not source.startswith(SECRET_PREFIX):
        return source
    name = source.removeprefix(SECRET_PREFIX)
    value = await secret_value(name)
    if value is None:
        raise SourceError(f"source {source}: no Prefect Secret block named {name!r}")
    if not value:
        raise SourceError(f"source {source}: the Secret block does not hold a text value")
    return value
