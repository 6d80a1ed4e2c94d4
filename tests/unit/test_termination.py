"""A SIGTERM while a run's batch loop goes on stops that loop, wherever the interpreter was."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from prefect.exceptions import TerminationSignal

from fishflow.tasks.termination import SigtermWatch


def test_a_sigterm_during_another_tasks_work_stops_the_watched_task() -> None:
    """The signal arrives while a batch (another task) computes: the batch is not hit, and the
    loop that entered the watch stops with Prefect's TerminationSignal."""
    before = signal.getsignal(signal.SIGTERM)

    async def batch() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's cancel, mid-computation
        return sum(range(100_000))

    async def main() -> int:
        other = asyncio.create_task(batch())
        with pytest.raises(TerminationSignal):
            async with SigtermWatch() as watch:
                await asyncio.sleep(30)  # the batch loop, waiting for batches
        assert watch.heard
        return await other

    assert asyncio.run(main()) == sum(range(100_000))
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_loop_already_stopping_is_not_cut_short_by_a_sigterm() -> None:
    async def main() -> str:
        async with SigtermWatch() as watch:
            try:
                raise KeyboardInterrupt  # stopped for another reason first
            except KeyboardInterrupt:
                watch.stopping()
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.2)  # tidying: batches in flight end
                return "tidied"

    assert asyncio.run(main()) == "tidied"
