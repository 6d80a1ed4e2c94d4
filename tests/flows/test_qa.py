"""Listening before publishing, end to end: the emulator answers some requests badly (the end
said again, the end swallowed, a noise tail, babble) and the run must catch them, ask again with
another seed, and publish only good answers, counting what it could not mend."""

from __future__ import annotations

import collections
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fishflow.cli import main
from fishflow.testing.emulator import Emulator, EmulatorConfig
from fishflow.voices import item_seed
from tests.flows.helpers import as_text, latest_run, manifest, run

PROSE = (
    "the kettle holds water and boils it quickly while a small light shows when ready for tea "
    "coffee or soup handle stays cool lid opens with one press every part comes apart cleaning "
    "base turns so either hand can pour"
)
WORDS = PROSE.split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(9, 22))]
    return " ".join(words).capitalize() + "."


def catalog(tmp_path: Path, count: int, *, sentences: tuple[int, int] = (1, 2), seed: int = 0):
    rng = random.Random(seed)
    rows = [
        {
            "id": f"item-{i:04d}",
            "text": " ".join(sentence(rng) for _ in range(rng.randint(*sentences))),
        }
        for i in range(count)
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path, rows


@dataclass
class Tally:
    """What became of the emulator's answers, counted from what it was asked and what it
    spoiled: a bad answer is caught when the same text was asked for again after it (or it was
    the last of a chunk whose every answer was bad: marked)."""

    bad: int = 0
    caught: int = 0
    good: int = 0
    good_made_again: int = 0
    chunks: int = 0
    made_again: int = 0  # chunks asked for more than once
    published_bad: int = 0  # chunks whose every answer was bad: the least bad is published

    @classmethod
    def of(cls, emu: Emulator) -> Tally:
        asked: dict[str, list[Any]] = collections.defaultdict(list)
        for request in emu.received:
            asked[request["text"]].append(request["seed"])
        bad = {(b["text"], b["seed"]) for b in emu.bad_answers}
        t = cls(bad=len(emu.bad_answers), chunks=len(asked))
        for text, seeds in asked.items():
            for i, seed in enumerate(seeds):
                again = i + 1 < len(seeds)
                if (text, seed) in bad:
                    t.caught += again
                else:
                    t.good += 1
                    t.good_made_again += again
            t.made_again += len(seeds) > 1
            if all((text, s) in bad for s in seeds):
                t.published_bad += 1
                t.caught += 1  # its last answer, found bad too: the item is marked
        return t


def test_bad_answers_are_caught_and_made_again_in_the_same_voice(tmp_path: Path) -> None:
    path, rows = catalog(tmp_path, 300)
    config = EmulatorConfig(workers=3, reference_ids=("anna",), bad_answers=0.08, seed=3)
    with Emulator(config) as emu:
        out = tmp_path / "out"
        summary = run(
            path,
            out,
            [f"{emu.url}#limit=3"],
            settings_kw={"reference_id": "anna", "captions": "off"},
        )
        t = Tally.of(emu)
    assert all(r["reference_id"] == "anna" for r in emu.received)  # one voice throughout
    assert all(r["use_memory_cache"] == "on" for r in emu.received)  # encoded once, kept
    print(t)
    assert t.bad >= 20  # enough to measure by
    assert t.caught >= 0.95 * t.bad
    assert t.good_made_again <= 0.03 * t.good
    assert t.published_bad <= 0.005 * t.chunks
    published_bad, made_again = t.published_bad, t.made_again

    # Every item accounted, the manifests say what was tried.
    items = manifest(out, "items", summary.run_id)
    chunks = manifest(out, "chunks", summary.run_id)
    assert len(items) == len(rows) and set(items["status"]) == {"ok"}
    assert summary.ok == len(rows) and summary.marked == published_bad
    assert set(items["qa"]) <= {"pass", "marked"}
    assert (items["qa"] == "marked").sum() == published_bad
    tried = chunks[chunks["qa_attempts"] > 1]
    assert len(tried) == made_again
    assert chunks["qa_attempts"].notna().all() and (chunks["qa_attempts"] <= 3).all()
    assert items["qa_attempts"].max() <= 3


def test_a_marked_item_is_published_counted_and_made_again_next_run(tmp_path: Path, capsys) -> None:
    rows = [
        {"id": "noisy", "text": "This answer always ends in a long hiss of noise."},
        {"id": "hiss", "text": "And this one as well, whatever seed it is asked with."},
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    config = EmulatorConfig(reference_ids=("anna",), bad_answers=1.0, bad_modes=("trail_noise",))
    with Emulator(config) as emu:
        args = ["run", str(path), "--out", str(out), "--server", emu.url, "--reference-id", "anna"]
        code = main(args)
        printed = capsys.readouterr()
        assert code == 0, printed.err  # warn (the default): exit 0, the count shown
        assert "2 ok, 0 skipped, 0 failed, 2 marked" in printed.out
        assert "marked: 2 item(s)" in printed.err
        first = latest_run(out)
        items = manifest(out, "items", first).set_index("item_id")
        assert (items["status"] == "ok").all() and (items["qa"] == "marked").all()
        # A long hiss after a short text: the tail, or noise over most of the answer.
        assert set(items["qa_check"]) <= {"trail_noise", "noise"}
        assert (items["qa_attempts"] == 3).all() and (items["qa_measure"] > 0.4).all()
        chunks = manifest(out, "chunks", first)
        assert chunks["qa_check"].notna().all() and (chunks["qa_attempts"] == 3).all()
        assert len(emu.received) == 6  # three answers each, all suspect
        assert Path(as_text(items.loc["noisy", "audio_uri"])).exists()  # the best one is published

        # --qa-on-marked fail: the same, exit 2.
        assert main([*args, "--qa-on-marked", "fail"]) == 2

        # The model behaves now: the marked items are made again, not skipped.
        emu.config.bad_answers = 0.0
        emu.reset_stats()
        assert main(args) == 0
        again = manifest(out, "items", latest_run(out)).set_index("item_id")
        assert (again["status"] == "ok").all() and (again["qa"] == "pass").all()
        assert emu.stats["requests"] == 2
        # And once they pass they are done.
        emu.reset_stats()
        assert main(args) == 0
        assert (manifest(out, "items", latest_run(out))["status"] == "skipped").all()
        assert emu.stats["requests"] == 0


def test_a_marked_item_can_be_accepted_as_done(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Always babble, whatever the seed."}))
    out = tmp_path / "out"
    config = EmulatorConfig(reference_ids=("anna",), bad_answers=1.0, bad_modes=("babble",))
    with Emulator(config) as emu:
        kw = {"reference_id": "anna", "qa_accept_marked": True}
        first = run(path, out, [emu.url], settings_kw=kw)
        assert first.marked == 1
        second = run(path, out, [emu.url], settings_kw=kw)
        assert second.skipped == 1 and len(emu.received) == 3


def test_a_seed_voice_is_made_again_whole_and_a_rerun_keeps_that_voice(tmp_path: Path) -> None:
    """Without a reference voice the voice is the seed's: a suspect answer makes the whole item
    again with another seed (all its chunks in that one voice), and the seed is recorded so
    that a later run of the item keeps it."""
    rng = random.Random(5)
    rows = [{"id": f"s{i}", "text": " ".join(sentence(rng) for _ in range(6))} for i in range(8)]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    settings = {"chunk_bytes": 160, "captions": "off"}
    with Emulator(EmulatorConfig(workers=2, bad_answers=0.12, seed=11)) as emu:
        summary = run(path, out, [f"{emu.url}#limit=2"], settings_kw=settings)
        items = manifest(out, "items", summary.run_id).set_index("item_id")
        chunks = manifest(out, "chunks", summary.run_id)
        received = emu.received
        bad = {(b["text"], b["seed"]) for b in emu.bad_answers}
        redone = [i for i in items.index if items.loc[i, "seed"] != item_seed(i)]
        assert redone, "no item drew a bad answer: pick another emulator seed"
        assert (items["status"] == "ok").all()
        assert all(r["use_memory_cache"] == "off" for r in received)  # no reference to keep
        for item_id in items.index:
            seed = int(items.loc[item_id, "seed"])
            texts = {r["text"] for r in received if r["seed"] == seed}
            own = chunks[chunks["item_id"] == item_id]
            assert len(own) == items.loc[item_id, "chunk_count"] > 1
            # Every chunk of the published audio was asked for in the one recorded seed.
            spoken = [t for t in texts if t in rows[int(item_id[1:])]["text"]]
            assert len(spoken) == len(own)
            if items.loc[item_id, "qa"] == "pass":
                assert not any((t, seed) in bad for t in spoken)
        assert (items.loc[redone, "qa_attempts"] >= 2).all()

        # The text of a redone item changes in its last sentence: the next run keeps its seed,
        # so only the changed chunk is asked for.
        target = redone[0]
        index = int(target[1:])
        rows[index]["text"] += " One more sentence for the end."
        path.write_text("\n".join(json.dumps(r) for r in rows))
        emu.config.bad_answers = 0.0
        before = len(emu.received)
        again = run(path, out, [emu.url], settings_kw=settings)
        after = manifest(out, "items", again.run_id).set_index("item_id")
        assert after.loc[target, "status"] == "ok"
        assert after.loc[target, "seed"] == items.loc[target, "seed"]
        new_requests = emu.received[before:]
        assert new_requests and all(r["seed"] == items.loc[target, "seed"] for r in new_requests)
        assert len(new_requests) < items.loc[target, "chunk_count"]


@pytest.mark.parametrize("qa", ["on", "off"])
def test_the_check_can_be_turned_off(tmp_path: Path, qa: str) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Babble instead of speech, every time."}))
    config = EmulatorConfig(reference_ids=("anna",), bad_answers=1.0, bad_modes=("babble",))
    with Emulator(config) as emu:
        kw = {"reference_id": "anna", "qa": qa}
        summary = run(path, tmp_path / "out", [emu.url], settings_kw=kw)
        items = manifest(tmp_path / "out", "items", summary.run_id)
        assert len(emu.received) == (3 if qa == "on" else 1)
    if qa == "on":
        assert items["qa"].tolist() == ["marked"] and items["qa_check"].tolist() == ["babble"]
    else:
        assert items[["qa", "qa_check", "qa_attempts"]].isna().all(axis=None)


def test_real_words_with_bad_answers(tmp_path: Path) -> None:
    """The emulator speaking (espeak-ng) rather than humming: the checks hold on speech."""
    path, rows = catalog(tmp_path, 40, seed=2)
    config = EmulatorConfig(
        workers=2,
        reference_ids=("anna",),
        bad_answers=0.15,
        # Not trail_noise: after espeak's own silence the noise is apart from the speech, so
        # it is trimmed rather than asked for again (tests/unit/test_qa.py).
        bad_modes=("repeat_end", "drop_end", "babble"),
        seed=3,  # no bad answer among a voice's first five, judged by the rough bounds
        speak=True,
    )
    with Emulator(config) as emu:
        summary = run(
            path, tmp_path / "out", [f"{emu.url}#limit=2"], settings_kw={"reference_id": "anna"}
        )
        t = Tally.of(emu)
    print(t)
    assert t.bad >= 4 and t.caught == t.bad
    assert t.good_made_again <= 1
    items = manifest(tmp_path / "out", "items", summary.run_id)
    assert len(items) == len(rows) and set(items["status"]) == {"ok"}
    assert (items["qa"] == "marked").sum() == t.published_bad


def test_a_recognizer_behind_the_interface_checks_every_answer(
    tmp_path: Path,
) -> None:
    """`qa_asr`: each answer that passed the signal checks is transcribed and compared with
    its text (CER). Heard as sent: nothing is made again. Heard as nothing: each chunk is
    made again up to the bound, then published marked `asr` with its error rate."""
    # One sentence, its punctuation varied: distinct chunks, one comparable text.
    texts = [f"The kettle boils water quickly{p}" for p in (".", "!", "?", "...", "!!", ".!")]
    source = tmp_path / "kettle.jsonl"
    source.write_text(
        "\n".join(json.dumps({"id": f"k{i}", "text": t}) for i, t in enumerate(texts))
    )
    from fishflow.settings import RunSettings

    with Emulator(EmulatorConfig(workers=2)) as emu:
        heard = RunSettings(qa_asr="python:tests.recognizers:HearsTheKettle", reference_id=None)
        summary = run(source, tmp_path / "a", [emu.url], settings=heard)
        assert summary.ok == len(texts) and summary.marked == 0
        assert emu.stats["requests"] == len(texts)
        items = manifest(tmp_path / "a", "items", summary.run_id)
        assert (items["qa"] == "pass").all() and (items["qa_attempts"] == 1).all()

        emu.reset_stats()
        deaf = heard.model_copy(update={"qa_asr": "python:tests.recognizers:Deaf"})
        summary = run(source, tmp_path / "b", [emu.url], settings=deaf)
        items = manifest(tmp_path / "b", "items", summary.run_id)
        assert summary.ok == len(texts) and summary.marked == len(texts)
        assert (items["qa"] == "marked").all() and (items["qa_check"] == "asr").all()
        assert (items["qa_measure"] == 1.0).all()  # nothing heard: every character missed
        # A seed voice is made again whole, with another seed, up to the bound (2 more).
        assert (items["qa_attempts"] == 3).all()
        assert emu.stats["requests"] == 3 * len(texts)
