"""The deployment path as users run it: a real `prefect server` on PostgreSQL (a fresh database
per test session), `fishflow deploy`, process workers of this project's venv, and the emulator.

Everything Prefect-side runs in subprocesses, as on a user's machines; the tests talk to the
server through Prefect's client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fishflow.testing.emulator import Emulator, EmulatorConfig
from tests.deploy.site import PrefectSite, client_settings, prefect_site

API_KEY = "emulator-key-never-logged-7f3a"
SECRET_BLOCK = "fish-speech-test-key"


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The Fish Speech emulator every deployment run talks to; it wants a key."""
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.05, api_key=API_KEY)) as emu:
        yield emu


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> Iterator[PrefectSite]:
    home = tmp_path_factory.mktemp("prefect-site")
    with prefect_site(home, [emulator.url], limit=2, secret=(SECRET_BLOCK, API_KEY)) as site:
        yield site


@pytest.fixture(autouse=True)
def _talk_to_site(site: PrefectSite) -> Iterator[None]:
    with client_settings(site.url):
        yield
