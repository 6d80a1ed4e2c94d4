"""The emulator against ../shared/fish-speech-api.md, over real sockets."""

from __future__ import annotations

import io
import threading
import time

import httpx
import ormsgpack
import pytest
import soundfile as sf

from fishflow.emulator import Emulator, EmulatorConfig, Faults


def post(emu: Emulator, body: bytes, ctype: str = "application/msgpack", **kw) -> httpx.Response:
    return httpx.post(
        f"{emu.url}/v1/tts",
        content=body,
        headers={"Content-Type": ctype, **kw.pop("headers", {})},
        timeout=10,
        **kw,
    )


def test_success_is_chunked_mono_44k_wav_without_content_length(emulator: Emulator) -> None:
    """Row 'Success, non-streaming' of the API reference."""
    r = post(emulator, ormsgpack.packb({"text": "Hello there, friend.", "unknown_field": 1}))
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
    info = sf.info(io.BytesIO(r.content))
    assert (info.samplerate, info.channels, info.subtype) == (44_100, 1, "PCM_16")


def test_media_types_and_malformed_bodies(emulator: Emulator) -> None:
    """Rows '/v1/tts' (415) and 'Malformed JSON -> 400. Malformed msgpack -> 500'."""
    assert post(emulator, b'{"text": "hi"}', "application/json; charset=utf-8").status_code == 200
    r = post(emulator, b"text=hi", "text/plain")
    assert r.status_code == 415 and r.json()["error"] == "Unsupported Media Type"
    assert set(r.json()) == {"statusCode", "message", "error"}
    assert post(emulator, b"{nope", "application/json").status_code == 400
    assert post(emulator, b"\xc1\xc1", "application/msgpack").status_code == 500


def test_strict_fields_answer_a_pydantic_style_422_array(emulator: Emulator) -> None:
    r = post(
        emulator,
        ormsgpack.packb({"text": 5, "top_p": 0.05, "repetition_penalty": 3.0, "format": "ogg"}),
    )
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()}
    assert locs == {
        ("body", "text"),
        ("body", "top_p"),
        ("body", "repetition_penalty"),
        ("body", "format"),
    }
    assert all({"type", "loc", "msg", "input"} <= set(e) for e in r.json())
    # chunk_length is declared 100..300 but not enforced
    assert (
        post(emulator, ormsgpack.packb({"text": "Fine text.", "chunk_length": 5})).status_code
        == 200
    )


def test_unknown_reference_id_is_accepted_and_empty_text_is_a_500(emulator: Emulator) -> None:
    assert (
        post(emulator, ormsgpack.packb({"text": "Hi there.", "reference_id": "nobody"})).status_code
        == 200
    )
    r = post(emulator, ormsgpack.packb({"text": ""}))
    assert r.status_code == 500 and "No audio generated" in r.json()["message"]


def test_audio_is_cut_at_max_new_tokens(emulator: Emulator) -> None:
    text = "This text would take a good many seconds to speak aloud in full. " * 3
    r = post(emulator, ormsgpack.packb({"text": text, "max_new_tokens": 43}))
    info = sf.info(io.BytesIO(r.content))
    assert info.frames / info.samplerate == pytest.approx(2.0, abs=0.01)


def test_routes_methods_and_api_key() -> None:
    with Emulator(EmulatorConfig(api_key="k")) as emu:
        r = httpx.get(f"{emu.url}/v1/health")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(f"{emu.url}/v1/health", headers=auth).json() == {"status": "ok"}
        assert httpx.post(f"{emu.url}/v1/health", headers=auth).status_code == 200
        r = httpx.get(f"{emu.url}/v1/tts", headers=auth)
        assert r.status_code == 405 and r.content == b""
        assert httpx.get(f"{emu.url}/nope", headers=auth).status_code == 404
        r = httpx.post(
            f"{emu.url}/generate", json={"text": "Hallo Welt.", "language": "de"}, headers=auth
        )
        assert r.status_code == 200 and sf.info(io.BytesIO(r.content)).samplerate == 44_100


def test_one_serial_worker_blocks_health_while_it_works() -> None:
    """Row 'While it synthesises ... /v1/health does not answer either'."""
    with Emulator(EmulatorConfig(service_time_s=3.0)) as emu:
        job = threading.Thread(target=post, args=(emu, ormsgpack.packb({"text": "Long job."})))
        job.start()
        while emu.stats["in_flight"] == 0:
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{emu.url}/v1/health", timeout=0.5)
        job.join()
        assert httpx.get(f"{emu.url}/v1/health", timeout=5).status_code == 200


def test_fault_knobs() -> None:
    with Emulator(EmulatorConfig(faults=Faults(busy_rate=1.0, retry_after_s=2))) as emu:
        r = post(emu, ormsgpack.packb({"text": "Hi there."}))
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
    with (
        Emulator(EmulatorConfig(faults=Faults(truncate_rate=1.0))) as emu,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        post(emu, ormsgpack.packb({"text": "Hi there, this is long enough to truncate."}))
    with (
        Emulator(EmulatorConfig(faults=Faults(reset_rate=1.0))) as emu,
        pytest.raises(httpx.TransportError),
    ):
        post(emu, ormsgpack.packb({"text": "Hi there."}))


def test_the_emulator_command_serves_until_stopped() -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fishflow.cli",
            "emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--api-key",
            "k",
            "--tier-limit",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "fishflow emulator on" in proc.stdout.readline()
        r = httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"Authorization": "Bearer k"})
        assert r.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
