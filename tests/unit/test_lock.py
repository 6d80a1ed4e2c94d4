"""One writer per output: the leased lock in the output store, on a local disk and on S3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fishflow.errors import OutputInUse
from fishflow.lock import LOCK_KEY, OutputLock
from fishflow.storage import LocalStore, S3Store, Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(str(tmp_path / "out"))
    bucket = request.getfixturevalue("bucket")
    return S3Store(f"s3://{bucket}/catalog")


def test_a_second_holder_is_refused_with_the_holders_run_named(store: Store) -> None:
    first = OutputLock(store, run_id="run-a", ttl_s=120)
    first.acquire()
    with pytest.raises(OutputInUse) as refused:
        OutputLock(store, run_id="run-b", ttl_s=120).acquire()
    assert "run run-a" in refused.value.message and store.root in refused.value.message
    assert "--wait-for-lock" in refused.value.message
    assert refused.value.holder_run_id == "run-a" and refused.value.fatal
    assert "\n" not in refused.value.message
    # The record says who holds it and until when.
    record = json.loads(store.get(LOCK_KEY))
    assert record["run_id"] == "run-a" and record["expires_at"] > record["acquired_at"]


def test_release_frees_it_and_renewal_keeps_it(store: Store) -> None:
    first = OutputLock(store, run_id="run-a", ttl_s=60)
    first.acquire()
    assert first.renew() and first.renew()
    first.release()
    second = OutputLock(store, run_id="run-b", ttl_s=60)
    second.acquire()
    assert second.took_over is None  # a released lock is simply free
    assert not first.renew()  # released: renewing cannot bring it back


def test_an_expired_lock_is_taken_over_and_its_old_holder_knows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = OutputLock(store, run_id="run-a", ttl_s=60)
    crashed.acquire()  # ... and never renewed: the process died on another machine
    import fishflow.lock as lock_module

    real_time = lock_module.time.time
    monkeypatch.setattr(lock_module.time, "time", lambda: real_time() + 61)
    resumed = OutputLock(store, run_id="run-a", ttl_s=60)
    resumed.acquire()
    assert resumed.took_over is not None and resumed.took_over.holder == crashed.holder
    assert not crashed.renew()  # the old holder, if it comes back, must stop writing
    assert resumed.renew()


def test_waiting_gives_up_after_wait_s_and_takes_it_when_it_frees(store: Store) -> None:
    holder = OutputLock(store, run_id="run-a", ttl_s=120)
    holder.acquire()
    slept: list[float] = []
    with pytest.raises(OutputInUse):
        OutputLock(store, run_id="run-b").acquire(wait_s=0.5, sleep=slept.append)
    assert slept  # it did wait before giving up

    def release_while_waiting(seconds: float) -> None:
        holder.release()

    waiter = OutputLock(store, run_id="run-b")
    waiter.acquire(wait_s=600, sleep=release_while_waiting)
    assert json.loads(store.get(LOCK_KEY))["run_id"] == "run-b"


def test_a_lock_whose_process_died_on_this_machine_is_free_at_once(tmp_path) -> None:
    """No need to wait for the expiry after a kill -9 on the same machine."""
    out = tmp_path / "out"
    code = (
        "from fishflow.lock import OutputLock; from fishflow.storage import LocalStore; "
        f"OutputLock(LocalStore({str(out)!r}), run_id='killed', ttl_s=3600).acquire()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without releasing
    resumed = OutputLock(LocalStore(str(out)), run_id="killed", ttl_s=60)
    resumed.acquire()
    assert resumed.took_over is not None and resumed.took_over.run_id == "killed"
