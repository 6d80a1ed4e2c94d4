"""The server pool against emulators over sockets: limits, retries, ejection."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fishflow.errors import AllServersDown, RequestRejected, ServerError
from fishflow.pool import ServerPool, check_servers
from fishflow.settings import RetryPolicy, ServerConfig, SynthesisOptions
from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults

FAST = RetryPolicy(backoff_s=0.01, max_backoff_s=0.05, all_down_grace_s=1.0)


def texts(n: int) -> list[str]:
    return [f"Sentence number {i} is here to be spoken." for i in range(n)]


async def synth_all(pool: ServerPool, items: list[str], options=None):
    return await asyncio.gather(*(pool.synthesize(t, options or SynthesisOptions()) for t in items))


def test_least_loaded_dispatch_keeps_each_server_within_its_limit() -> None:
    with (
        Emulator(EmulatorConfig(service_time_s=0.02)) as a,
        Emulator(EmulatorConfig(service_time_s=0.02, workers=3)) as b,
    ):
        servers = [
            ServerConfig(url=a.url, max_in_flight=2),
            ServerConfig(url=b.url, max_in_flight=3),
        ]

        async def go():
            async with ServerPool(servers, retry=FAST) as pool:
                return await synth_all(pool, texts(50))

        results = asyncio.run(go())
        assert len(results) == 50
        assert a.stats["max_in_flight"] == 2 and b.stats["max_in_flight"] == 3
        assert a.stats["requests"] + b.stats["requests"] == 50
        assert b.stats["requests"] > a.stats["requests"]


def test_retryable_faults_are_retried_and_429_lowers_the_limit() -> None:
    config = EmulatorConfig(
        faults=Faults(
            busy_rate=0.2,
            error_rate=0.1,
            truncate_rate=0.1,
            short_audio_rate=0.1,
            retry_after_s=0.01,
        ),
        seed=3,
    )
    with Emulator(config) as emu:

        async def go():
            async with ServerPool(
                [ServerConfig(url=emu.url, max_in_flight=4)],
                retry=RetryPolicy(backoff_s=0.01, max_attempts=12, max_server_errors=12),
            ) as pool:
                results = await synth_all(pool, texts(40))
                return results, pool.servers[0]

        results, _state = asyncio.run(go())
        assert len(results) == 40 and max(r.attempts for r in results) > 1
        assert sum(emu.stats["faults"].values()) == sum(r.attempts - 1 for r in results)
        assert emu.stats["faults"]["busy"] > 0


def test_non_retryable_errors_are_sent_once() -> None:
    with Emulator(EmulatorConfig(max_text_length=5)) as emu:

        async def go():
            async with ServerPool([ServerConfig(url=emu.url)], retry=FAST) as pool:
                await pool.synthesize("Far too long a text.", SynthesisOptions())

        with pytest.raises(RequestRejected, match="too long"):
            asyncio.run(go())
        assert emu.stats["requests"] == 1


def test_plain_500s_are_retried_a_bounded_number_of_times() -> None:
    with Emulator(EmulatorConfig(faults=Faults(error_rate=1.0))) as emu:

        async def go():
            async with ServerPool(
                [ServerConfig(url=emu.url)], retry=RetryPolicy(backoff_s=0.01, max_server_errors=3)
            ) as pool:
                await pool.synthesize("Hello there.", SynthesisOptions())

        with pytest.raises(ServerError) as info:
            asyncio.run(go())
        assert emu.stats["requests"] == 3 and info.value.attempts == 3


def test_a_dead_server_leaves_rotation_and_work_goes_to_the_live_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with Emulator() as live:

        async def go():
            async with ServerPool(
                [ServerConfig(url=dead), ServerConfig(url=live.url)], retry=FAST
            ) as pool:
                results = await synth_all(pool, texts(20))
                return results, pool.servers[0].up

        results, dead_up = asyncio.run(go())
        assert all(r.server == live.url for r in results) and not dead_up
        assert live.stats["requests"] == 20


def test_every_server_down_past_the_grace_period_stops() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def go():
        async with ServerPool([ServerConfig(url=dead)], retry=FAST, probe_interval_s=0.1) as pool:
            await pool.synthesize("Hello.", SynthesisOptions())

    with pytest.raises(AllServersDown, match="no Fish Speech server answers at"):
        asyncio.run(go())


def test_a_server_that_comes_back_rejoins() -> None:
    emu = Emulator()
    port = emu.port
    emu.stop()

    async def go():
        async with ServerPool(
            [ServerConfig(url=f"http://127.0.0.1:{port}")],
            retry=RetryPolicy(all_down_grace_s=30),
            probe_interval_s=0.1,
        ) as pool:
            task = asyncio.create_task(pool.synthesize("Hello there.", SynthesisOptions()))
            while pool.servers[0].up:
                await asyncio.sleep(0.01)
            back = Emulator(port=port).start()
            try:
                return await task
            finally:
                back.stop()

    result = asyncio.run(go())
    assert result.audio.duration_s > 0


def test_aimd_settles_at_a_cloud_tiers_limit_without_a_storm_of_429s() -> None:
    """Cloud row 'Limits are on requests in flight ... Exceeding them gives 429'."""
    with Emulator(EmulatorConfig(workers=8, service_time_s=0.02, tier_limit=5)) as emu:

        async def go():
            retry = RetryPolicy(backoff_s=0.02, max_attempts=20)
            async with ServerPool(
                [ServerConfig(url=emu.url, max_in_flight=8)], retry=retry
            ) as pool:
                results = await synth_all(pool, texts(300))
                return results, pool.servers[0].limit

        results, limit = asyncio.run(go())
        assert len(results) == 300
        rejected = emu.stats["faults"]["tier"]
        assert rejected < 0.1 * 300  # the limit came down instead of hammering the tier
        assert limit < 8  # it came down from the configured 8 and stayed near the tier


def test_a_voice_the_server_refuses_is_given_up_after_a_few_requests() -> None:
    """Row 'reference_id is validated, as a 500 ... treat the same 500 on every chunk of one
    voice as that voice's problem': an old-style id on a current server."""
    from fishflow.errors import VoiceRefused

    with Emulator() as emu:

        async def go():
            async with ServerPool([ServerConfig(url=emu.url)], retry=FAST) as pool:
                calls = [
                    pool.synthesize(t, SynthesisOptions(), reference_id="narrator.v2")
                    for t in texts(20)
                ]
                ok = await pool.synthesize("And the default voice.", SynthesisOptions())
                return await asyncio.gather(*calls, return_exceptions=True), ok

        results, ok = asyncio.run(go())
        assert all(isinstance(r, VoiceRefused) for r in results)
        assert "voice 'narrator.v2' given up" in results[0].message
        assert "HTTP 500 'Failed to generate speech'" in results[0].message
        assert emu.stats["requests"] <= 1 + 6 and ok.attempts == 1


def test_the_pool_learns_a_servers_text_limit_and_sends_nothing_over_it() -> None:
    from fishflow.errors import TextTooLong

    with Emulator(EmulatorConfig(max_text_length=12)) as emu:

        async def go():
            async with ServerPool([ServerConfig(url=emu.url)], retry=FAST) as pool:
                for text in ("Far too long a text.", "Also far too long."):
                    with pytest.raises(TextTooLong):
                        await pool.synthesize(text, SynthesisOptions())
                await pool.synthesize("Short text.", SynthesisOptions())
                return pool.max_text_chars

        assert asyncio.run(go()) == 12
        assert emu.stats["requests"] == 2  # the second long text was never sent


def test_servers_that_never_answered_stop_the_run_after_the_short_start_grace() -> None:
    """A wrong URL or a server not started: the run is told in seconds, not after the full
    grace period meant for servers lost mid-run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    policy = RetryPolicy(all_down_grace_s=300, start_grace_s=0.2)

    async def go():
        async with ServerPool([ServerConfig(url=dead)], retry=policy, probe_interval_s=0.1) as p:
            # A bound far below all_down_grace_s: only the start grace can end it in time.
            await asyncio.wait_for(p.synthesize("Hello.", SynthesisOptions()), timeout=60)

    with pytest.raises(AllServersDown, match=f"no Fish Speech server answers at {dead}"):
        asyncio.run(go())


def test_a_server_lost_mid_run_gets_the_full_grace_period() -> None:
    emu = Emulator().start()
    policy = RetryPolicy(
        backoff_s=0.01, max_backoff_s=0.05, all_down_grace_s=0.5, start_grace_s=0.0
    )

    async def go():
        async with ServerPool(
            [ServerConfig(url=emu.url)], retry=policy, probe_interval_s=0.1
        ) as pool:
            await pool.synthesize("Hello there.", SynthesisOptions())
            emu.stop()
            await pool.synthesize("Hello again.", SynthesisOptions())

    with pytest.raises(AllServersDown, match=r"no Fish Speech server answered for 0 s"):
        asyncio.run(go())


def test_check_servers_names_each_server_that_refuses() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    dead = [ServerConfig(url=f"http://127.0.0.1:{p}") for p in ports]
    with pytest.raises(AllServersDown) as info:
        asyncio.run(check_servers(dead))
    assert all(f"127.0.0.1:{p}" in info.value.message for p in ports)
    assert "--server" in info.value.message
    with Emulator(EmulatorConfig(api_key="sk-key")) as live:  # a 401 is an answer too
        asyncio.run(check_servers([*dead, ServerConfig(url=live.url)]))
