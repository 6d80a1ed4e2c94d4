"""The emulator against docs/fish-speech-api.md, over real sockets."""

from __future__ import annotations

import io
import threading
import time

import httpx
import ormsgpack
import pytest
import soundfile as sf

from fishflow.testing.emulator import Emulator, EmulatorConfig, Faults


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
    assert locs == {("text",), ("top_p",), ("repetition_penalty",), ("format",)}
    assert all({"type", "loc", "msg", "input", "url"} <= set(e) for e in r.json())
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
        assert proc.stdout is not None  # stdout=PIPE
        assert "fishflow emulator on" in proc.stdout.readline()
        r = httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"Authorization": "Bearer k"})
        assert r.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- "Measured against the authors' own server code" (docs/fish-speech-api.md) -----------


def tts(emu: Emulator, **fields) -> httpx.Response:
    return post(emu, ormsgpack.packb({"text": "Hello there, friend.", **fields}))


def test_invalid_reference_ids_are_a_bare_500_and_older_servers_accept_them(
    emulator: Emulator,
) -> None:
    """Row 'reference_id is validated, as a 500': ids outside ^[a-zA-Z0-9\\-_ ]+$ or over 255
    characters get the generic message on every request; servers before March 2026 take any."""
    for bad in ("narrator.v2", "a/b", "../x", "x" * 256, ""):
        r = tts(emulator, reference_id=bad)
        assert r.status_code == 500, bad
        assert r.json() == {
            "statusCode": 500,
            "message": "Failed to generate speech",
            "error": "Internal Server Error",
        }
    assert tts(emulator, reference_id="Anna the 2nd_-").status_code == 200  # unknown, valid: 200
    with Emulator(EmulatorConfig(check_reference_ids=False)) as old:
        assert tts(old, reference_id="narrator.v2").status_code == 200


def test_every_id_asked_for_leaves_a_folder_that_add_then_finds(emulator: Emulator) -> None:
    """Row 'Every id asked for creates an empty references/<id>/ folder': the id is not
    listed, but adding it afterwards is a 409 and deleting it succeeds."""
    assert tts(emulator, reference_id="ghost").status_code == 200
    listed = httpx.get(f"{emulator.url}/v1/references/list?format=json").json()
    assert listed["reference_ids"] == []
    r = httpx.post(
        f"{emulator.url}/v1/references/add?format=json",
        data={"id": "ghost", "text": "Hi."},
        files={"audio": ("a.wav", b"RIFF....WAVE")},
    )
    assert r.status_code == 409 and r.json()["message"] == "Reference ID 'ghost' already exists"
    r = httpx.request(
        "DELETE", f"{emulator.url}/v1/references/delete?format=json", json={"reference_id": "ghost"}
    )
    assert r.status_code == 200 and r.json()["success"] is True


def test_references_list_add_and_delete_answer_as_the_server_does(emulator: Emulator) -> None:
    """Row '/v1/references/list answers {success, reference_ids, message} ... delete of an
    unknown id -> 404, of an invalid id -> 400 ... add of an existing id -> 409'."""
    base = emulator.url + "/v1/references"
    wav = io.BytesIO()
    sf.write(wav, [0.0] * 4410, 44_100, format="WAV")

    def add(ref_id: str) -> httpx.Response:
        return httpx.post(
            f"{base}/add",
            data={"id": ref_id, "text": "What the sample says."},
            files={"audio": ("sample.wav", wav.getvalue(), "audio/wav")},
            headers={"Accept": "application/json"},
        )

    r = add("anna")
    assert r.status_code == 200
    assert r.json() == {
        "success": True,
        "message": "Reference voice 'anna' added successfully",
        "reference_id": "anna",
    }
    assert add("anna").status_code == 409
    r = add("anna.v2")
    assert r.status_code == 400 and r.json()["success"] is False
    listed = httpx.get(f"{base}/list")  # msgpack unless JSON is asked for
    assert listed.headers["content-type"] == "application/msgpack"
    assert ormsgpack.unpackb(listed.content) == {
        "success": True,
        "reference_ids": ["anna"],
        "message": "Found 1 reference voices",
    }
    assert httpx.get(f"{base}/list", params={"format": "json"}).json()["reference_ids"] == ["anna"]

    def delete(ref_id: str) -> httpx.Response:
        return httpx.request(
            "DELETE", f"{base}/delete?format=json", json={"reference_id": ref_id}, timeout=5
        )

    assert delete("nobody").status_code == 404 and delete("nobody").json()["success"] is False
    assert delete("a/b").status_code == 400
    assert delete("anna").status_code == 200
    assert httpx.get(f"{base}/list?format=json").json()["reference_ids"] == []


def test_max_text_length_counts_characters() -> None:
    """Row '--max-text-length N counts characters': 40 CJK characters (120 UTF-8 bytes) pass
    a limit of 40; 41 do not."""
    with Emulator(EmulatorConfig(max_text_length=40)) as emu:
        assert post(emu, ormsgpack.packb({"text": "你" * 40})).status_code == 200
        r = post(emu, ormsgpack.packb({"text": "你" * 41}))
        assert r.status_code == 400
        assert r.json()["message"] == "Text is too long, max length is 40"


def test_max_new_tokens_caps_the_audio_and_the_cut_is_a_normal_200(emulator: Emulator) -> None:
    """Row 'max_new_tokens caps each generation (about 21.5 tokens per audio second); a
    cut-off answer is a normal 200', and 'max_new_tokens=0 means no cap'."""
    text = "This text would take a good many seconds to speak aloud in full. " * 3
    r = tts(emulator, text=text, max_new_tokens=43)
    assert r.status_code == 200
    info = sf.info(io.BytesIO(r.content))
    assert info.frames / info.samplerate == pytest.approx(2.0, abs=0.01)
    uncapped = sf.info(io.BytesIO(tts(emulator, text=text, max_new_tokens=0).content))
    assert uncapped.frames / uncapped.samplerate > 10


def test_422_is_pydantics_own_array_without_a_body_prefix(emulator: Emulator) -> None:
    """Row '422 bodies': loc ["text"], pydantic's type/msg/input/ctx/url; top_p=5 -> 'Input
    should be less than or equal to 1'."""
    r = tts(emulator, top_p=5)
    assert r.status_code == 422
    [error] = r.json()
    assert error["loc"] == ["top_p"] and error["type"] == "less_than_equal"
    assert error["msg"] == "Input should be less than or equal to 1"
    assert error["input"] == 5 and error["ctx"] == {"le": 1.0}
    assert error["url"].startswith("https://errors.pydantic.dev/")
    [missing] = post(emulator, ormsgpack.packb({"top_p": 0.5})).json()
    assert missing["loc"] == ["text"] and missing["type"] == "missing"


def test_415_names_what_is_accepted_and_media_types_are_case_sensitive(
    emulator: Emulator,
) -> None:
    """Row '415 for a wrong media type carries message: null and an Accept header; the media
    type is matched case-sensitively; multipart/form-data is accepted'."""
    r = post(emulator, ormsgpack.packb({"text": "Hi there."}), "APPLICATION/MSGPACK")
    assert r.status_code == 415
    assert r.json() == {"statusCode": 415, "message": None, "error": "Unsupported Media Type"}
    assert r.headers["accept"] == "application/msgpack, application/json, multipart/form-data"
    form = httpx.post(
        f"{emulator.url}/v1/tts",
        files={"text": (None, "Hi there."), "max_new_tokens": (None, "200")},
    )
    assert form.status_code == 200 and form.headers["content-type"] == "audio/wav"
    assert emulator.received[-1]["max_new_tokens"] == 200  # lax int, as a form sends it


def test_401_has_two_forms_and_comes_before_routing() -> None:
    """Row '401: missing key -> WWW-Authenticate: Bearer, message null; wrong key -> "Invalid
    token" without that header. Auth runs before routing (GET /v1/tts -> 401, not 405)'."""
    with Emulator(EmulatorConfig(api_key="k")) as emu:
        missing = httpx.post(f"{emu.url}/v1/tts", json={"text": "Hi."})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json() == {"statusCode": 401, "message": None, "error": "Unauthorized"}
        wrong = httpx.post(
            f"{emu.url}/v1/tts", json={"text": "Hi."}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and "www-authenticate" not in wrong.headers
        assert wrong.json()["message"] == "Invalid token"
        assert httpx.get(f"{emu.url}/v1/tts").status_code == 401
        r = httpx.get(f"{emu.url}/v1/tts", headers={"Authorization": "Bearer k"})
        assert r.status_code == 405


def test_msgpack_errors_lax_bools_head_and_options(emulator: Emulator) -> None:
    """Row 'Malformed msgpack -> 500 whose message is the decoder's error text.
    normalize="yes" is accepted (lax bool) ... HEAD on health -> 405; OPTIONS -> 200'."""
    r = post(emulator, b"\xc1\xc1", "application/msgpack")
    assert r.status_code == 500 and r.json()["message"] not in (None, "", "Internal Server Error")
    assert tts(emulator, normalize="yes").status_code == 200
    assert tts(emulator, normalize="perhaps").status_code == 422
    assert httpx.head(f"{emulator.url}/v1/health").status_code == 405
    assert httpx.options(f"{emulator.url}/v1/tts").status_code == 200


def test_head_is_405_before_the_key_is_looked_at_and_unknown_paths_keep_the_connection() -> None:
    """Issue 19: HEAD /v1/health with a wrong or no key -> 405 (the server answers it before
    auth); an unknown path -> 404 with the JSON error body, on a connection that stays usable."""
    with Emulator(EmulatorConfig(api_key="k")) as emu, httpx.Client(base_url=emu.url) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer k"}):
            r = client.head("/v1/health", headers=headers)
            assert r.status_code == 405 and r.content == b""
        for method in ("GET", "HEAD", "POST"):
            r = client.request(method, "/v1/nowhere")
            assert r.status_code == 404
            if method != "HEAD":
                assert r.json() == {"statusCode": 404, "message": "Not Found", "error": "Not Found"}
        # All on one connection: nothing was left unread or closed in between.
        assert client.get("/v1/health", headers={"Authorization": "Bearer k"}).status_code == 200
        assert emu.stats["requests"] == 0


def test_bad_answers_are_drawn_from_text_and_seed_and_logged() -> None:
    """Issue 19: a share of answers is 200 with the wrong speech, the same for the same
    request, usually good with another seed; each is logged with its mode."""
    config = EmulatorConfig(bad_answers=0.3, seed=1)
    texts = [f"Sentence number {i} of a catalog that is long enough to say." for i in range(40)]
    with Emulator(config) as emu:

        def duration(text: str, seed: int) -> float:
            r = tts(emu, text=text, seed=seed)
            info = sf.info(io.BytesIO(r.content))
            return info.frames / info.samplerate

        first = [duration(t, 1) for t in texts]
        made_bad = emu.bad_answers
        assert [duration(t, 1) for t in texts] == first  # the same request, the same answer
        bad = emu.bad_answers
        assert bad == made_bad + made_bad and 4 <= len(made_bad) <= 20  # about 30% of 40
        assert {b["mode"] for b in bad} <= {"repeat_end", "drop_end", "trail_noise", "babble"}
        assert emu.stats["bad"] and sum(emu.stats["bad"].values()) == len(bad)
        once = {b["text"] for b in bad}
        # Another seed: most of the bad ones come out right.
        before = len(emu.bad_answers)
        for text in once:
            duration(text, 2)
        assert len(emu.bad_answers) - before <= len(once) // 2


def test_the_emulator_command_takes_bad_answers() -> None:
    from fishflow.cli import app

    _, bound, _ = app.parse_args(["emulator", "--bad-answers", "0.08"])
    assert bound.arguments["bad_answers"] == 0.08
