"""Prefect as the CLI's commands see it: imported late and quiet on a user's terminal.

Prefect is imported only by the commands that need it (about 1.6 s), so `fishflow emulator`
starts at once: call `quiet_prefect` before the first import of it.
"""

from __future__ import annotations

import logging
import os

from fishflow.errors import ConfigError


def quiet_prefect() -> None:
    """Keep Prefect's start-up and shutdown noise away from a user's terminal.

    Call before importing Prefect. Its run logs still reach the Prefect API (and its UI) at
    Prefect's own level; only the console is filtered, by `filter_prefect_console`.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # telemetry notices
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # The ephemeral API takes 10-25 s to start here, more on a busy machine; the default
    # 20 s limit turned a slow start into a failed run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class OwnWarningsOnly(logging.Filter):
    """On the console: warnings from fishflow (and other libraries), nothing Prefect says
    itself. A run that fails is reported in one line by `main`; Prefect's engine would
    print its traceback and "Finished in state Failed" first, and its event worker adds
    "Still processing items" at exit. All of it still goes to the Prefect API."""

    def __init__(self, prefect_dir: str) -> None:
        super().__init__()
        self.prefect_dir = prefect_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.pathname.startswith(self.prefect_dir):
            return False
        # Run loggers carry what fishflow's flows and tasks log; other prefect.* and server
        # loggers are Prefect's own, whoever calls them.
        return record.name.startswith(("prefect.flow_runs", "prefect.task_runs")) or (
            not record.name.startswith(("prefect", "uvicorn", "fastapi"))
        )


def filter_prefect_console() -> None:
    """Attach `OwnWarningsOnly` to the handlers Prefect writes to the terminal with."""
    import prefect
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # a no-op once done; later set-ups are incremental and keep filters
    prefect_dir = os.path.dirname(prefect.__file__)
    # The root's console handler, and the one of Prefect's internal machinery (its services
    # log ERROR lines there, e.g. while a concurrency slot is awaited).
    names = ["", "uvicorn", "fastapi", "prefect._internal"]
    handlers = {h for name in names for h in logging.getLogger(name).handlers}
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, OwnWarningsOnly) for f in handler.filters
        ):
            handler.addFilter(OwnWarningsOnly(prefect_dir))


def require_prefect_api(what: str) -> None:
    """Prefect, quiet, and a Prefect API to talk to (`what` says why one is needed)."""
    quiet_prefect()
    from prefect.settings import get_current_settings

    filter_prefect_console()
    if not get_current_settings().api.url:
        raise ConfigError(f"PREFECT_API_URL is not set: {what}")
