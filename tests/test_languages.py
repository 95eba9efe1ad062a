"""Devices, models and languages on the CPU: device auto/cuda, the multilingual base model
(assembled offline from its two packages), language detection and translation, English-only
refusals, deterministic decoding, the per-worker model LRU and routing."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import BIN, FIXTURES, Daemon, fake_script, on_terminal, wait_until

from cesard import models


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real faster-whisper daemon with tiny.en and base, device auto (no GPU here)."""
    if models.base_parts() is None:
        pytest.skip("the base model packages are not installed (the base extra)")
    tmp = tmp_path_factory.mktemp("multi")
    d = Daemon(tmp, engine="faster-whisper", workers=1, settle_seconds=0.5, device="auto",
               preload_models=["base"])
    d.env["CESAR_MODEL_CACHE"] = str(tmp / "models")
    d.start(wait_ready=False)
    d.wait_ready(timeout=300)
    yield d
    d.close()


def submit(d: Daemon, fixture: Path | str, *opts: str) -> str:
    r = d.ctl("submit", str(fixture), *opts)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_device_auto_without_a_gpu_runs_on_the_cpu(multi: Daemon) -> None:
    assert "device: auto found no usable GPU" in multi.log()
    st = multi.status()
    assert st is not None and st["device"] == "cpu" and st["compute_type"] == "int8"
    assert {w["device"] for w in st["workers"]} == {"cpu"}
    assert set(st["workers"][0]["models"]) == {"tiny.en", "base"}


@pytest.mark.parametrize(("fixture", "language"), [("german", "de"), ("french", "fr"),
                                                   ("spanish", "es")])
def test_base_detects_the_language(multi: Daemon, fixture: str, language: str) -> None:
    job = submit(multi, FIXTURES / f"{fixture}.wav", "--model", "base", "--language", "auto")
    res = multi.wait_result(job, 120)
    assert res["status"] == "done", res["error"]
    assert res["language"] == language and res["language_probability"] > 0.3, res
    assert res["decoding"]["temperature"] == 0.0
    assert res["decoding"]["condition_on_previous_text"] is False
    # No repetition loop ("pour tous, pour tous, ..." on the French clip before the guard).
    words = re.findall(r"\w+", res["text"].lower())
    assert max(words.count(w) for w in set(words)) <= 3, res["text"]


def test_base_translates_into_english(multi: Daemon) -> None:
    job = submit(multi, FIXTURES / "german.wav", "--model", "base", "--task", "translate")
    res = multi.wait_result(job, 120)
    assert res["status"] == "done" and res["options"]["task"] == "translate"
    assert "morning" in res["text"].lower(), res["text"]


def test_a_job_naming_no_model_goes_to_base_for_another_language(multi: Daemon) -> None:
    """--language de or --task translate without --model: the default tiny.en cannot, so
    the job goes to the configured multilingual model (language_fallback)."""
    de = multi.wait_result(submit(multi, FIXTURES / "german.wav", "--language", "de"), 120)
    assert de["status"] == "done" and de["language"] == "de", de
    assert de["options"]["model"] == "base" and de["engine"]["model"] == "base", de
    tr = multi.wait_result(submit(multi, FIXTURES / "german.wav", "--task", "translate"), 120)
    assert tr["status"] == "done" and tr["options"]["model"] == "base"
    assert "morning" in tr["text"].lower(), tr["text"]


def test_an_english_only_model_named_refuses_other_languages(multi: Daemon) -> None:
    r = multi.ctl("submit", str(FIXTURES / "german.wav"), "--model", "tiny.en",
                  "--language", "de")
    assert r.returncode == 64
    assert "--language" in r.stderr and "English-only" in r.stderr and "base" in r.stderr
    r = multi.ctl("submit", str(FIXTURES / "german.wav"), "--model", "tiny.en",
                  "--task", "translate")
    assert r.returncode == 64 and "--task" in r.stderr
    r = multi.ctl("submit", str(FIXTURES / "hello.wav"), "--beam-size", "50")
    assert r.returncode == 64 and "--beam-size" in r.stderr, r.stderr
    meta = {"id": "handde", "submitted_at": "2026-11-24T03:15:01.123456Z",
            "source_name": "a.wav", "options": {"model": "tiny.en", "language": "de"}}
    multi.publish_dir("handde", {"a.wav": (FIXTURES / "german.wav").read_bytes(),
                                 "job.json": json.dumps(meta).encode()})
    res = multi.wait_result("handde", 60)
    assert res["error"]["type"] == "InvalidOption"
    assert "handde/job.json" in res["error"]["message"]
    assert "English-only" in res["error"]["message"]


def test_language_fallback_false_refuses_as_before(tmp_path: Path) -> None:
    """An admin who wants every job on the default model says language_fallback: false."""
    if models.base_parts() is None:
        pytest.skip("the base model packages are not installed (the base extra)")
    d = Daemon(tmp_path, engine="faster-whisper", language_fallback=False)
    d.write_config()
    subprocess.run([str(BIN / "cesard"), "--init", "--spool", str(d.spool)], check=True,
                   env=d.env, capture_output=True)
    r = d.ctl("submit", str(FIXTURES / "german.wav"), "--language", "de")
    assert r.returncode == 64 and "English-only" in r.stderr, r.stderr


def concat_60s() -> bytes:
    """The repo's three English fixtures concatenated and repeated to 60 s (WAV)."""
    frames = b""
    for name in ("hello", "numbers", "weather"):
        with wave.open(str(FIXTURES / f"{name}.wav")) as w:
            params = w.getparams()
            frames += w.readframes(w.getnframes())
    need = 60 * params.framerate * params.sampwidth
    data = (frames * (need // len(frames) + 1))[:need]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(data)
    return out.getvalue()


def test_same_input_same_transcript_complete_and_without_loops(multi: Daemon,
                                                                tmp_path: Path) -> None:
    audio = tmp_path / "concat60.wav"
    audio.write_bytes(concat_60s())
    jobs = [submit(multi, audio) for _ in range(3)]
    results = [multi.wait_result(j, 180) for j in jobs]
    texts = [r["text"] for r in results]
    # The decoding settings are recorded; a loop in the first pass is retried with a
    # repetition penalty, and the result says so.
    d = results[0]["decoding"]
    assert (d["temperature"], d["condition_on_previous_text"]) == (0.0, False)
    if "loop_guard" in d:
        assert d["loop_guard"]["retry_repeats"] < d["loop_guard"]["repeats"]
    assert len(set(texts)) == 1, texts
    words = re.findall(r"\w+", texts[0].lower())
    # 60 s hold about five and a half rounds of 32 words: no speech dropped...
    assert len(words) >= 150, texts[0]
    assert words.count("breeze") >= 5 and words.count("transcription") >= 5, texts[0]
    # ... and no loop ("8-8-8-..."): no word repeated more than 3 times in a row.
    run = longest = 1
    for a, b in zip(words, words[1:], strict=False):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    assert longest <= 3, texts[0]


def test_cesarctl_models_lists_languages_sizes_paths_and_holders(multi: Daemon) -> None:
    r = multi.ctl("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    st = multi.status()
    assert st is not None
    pid = st["workers"][0]["pid"]
    assert rows["tiny.en"]["languages"] == "English only"
    assert rows["base"]["languages"] == "multilingual"
    assert rows["base"]["bytes"] > 140_000_000 and os.path.isdir(rows["base"]["path"])
    assert pid in rows["base"]["workers"] and pid in rows["tiny.en"]["workers"]


def test_base_is_assembled_once_atomically_and_repaired_when_broken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if models.base_parts() is None:
        pytest.skip("the base model packages are not installed (the base extra)")
    monkeypatch.setenv("CESAR_MODEL_CACHE", str(tmp_path / "cache"))
    target = models.assemble_base()
    assert target is not None and (target / ".complete").exists()
    assert sorted(os.listdir(target.parent)) == [target.name]  # no temporary left
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert models.assemble_base() == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # not assembled again
    with open(target / "model.bin", "r+b") as f:  # a torn copy: the size is wrong
        f.truncate(1000)
    assert models.assemble_base() == target
    p1, p2 = models.base_parts()  # type: ignore[misc]
    assert (target / "model.bin").stat().st_size == (
        (p1 / "model.bin.part1").stat().st_size + (p2 / "model.bin.part2").stat().st_size)


# --- without a real model --------------------------------------------------------------

def test_device_cuda_without_a_gpu_exits_78_naming_the_missing_piece(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(device="cuda")
    d.start(wait_ready=False)
    assert d.wait_exit(60) == 78
    log = d.log()
    assert "device: cuda, but no usable GPU" in log, log
    assert "driver" in log or "gpu.conf" in log or "gpu extra" in log, log
    assert len([line for line in log.splitlines() if "no usable GPU" in line]) == 1


def test_workers_keep_models_warm_with_an_lru_and_jobs_go_where_their_model_is(
        make_daemon: Callable[..., Daemon]) -> None:
    extra = {"m1": "/nonexistent/m1", "m2": "/nonexistent/m2"}
    d = make_daemon(workers=1, max_loaded_models=2, models=extra).start()
    for m in ("m1", "m2"):
        d.wait_result(d.submit_bytes(f"{m}.wav", fake_script(text=m), "--model", m))
    wait_until(lambda: (d.status() or {}).get("workers", [{}])[0].get("models")
               == ["tiny.en", "m2"], 10, "tiny.en (preloaded) and m2 held, m1 dropped")
    d.stop()
    d2 = make_daemon("two", workers=2, max_loaded_models=3, models=extra).start()
    blocker = d2.submit_bytes("block.wav", fake_script(sleep=2, text="block"))
    wait_until(lambda: (d2.status() or {}).get("running"), 10, "the blocker to run")
    first = d2.wait_result(d2.submit_bytes("a.wav", fake_script(text="a"), "--model", "m1"))
    d2.wait_result(blocker)
    wait_until(lambda: all(w["job"] is None for w in (d2.status() or {})["workers"]), 10,
               "both workers idle")
    again = d2.wait_result(d2.submit_bytes("b.wav", fake_script(text="b"), "--model", "m1"))
    assert again["engine"]["pid"] == first["engine"]["pid"]  # the worker that holds m1


@pytest.mark.parametrize("fixture,language", [("french.wav", "fr"), ("german.wav", "de")])
def test_speech_in_another_language_comes_back_in_that_language(
        multi: Daemon, fixture: str, language: str) -> None:
    """Submitted plainly (no model, no language), French speech is not English nonsense:
    tiny.en (the default) is unsure of it, base hears French and decodes it again; the
    result says so (language_fallback). English speech costs nothing more."""
    res = multi.wait_result(submit(multi, FIXTURES / fixture), 300)
    assert res["status"] == "done"
    fb = res["language_fallback"]
    assert fb is not None and fb["from"] == "tiny.en" and fb["to"] == "base", \
        (res["language_warning"], res["engine"], res["options"])
    assert fb["detected"] == language and fb["mean_logprob"] < -0.9, fb
    assert res["language"] == language and res["engine"]["model"] == "base", res
    assert res["language_warning"] is None
    if language == "fr":
        assert "il fait beau" in res["text"].lower() and "soleil" in res["text"].lower(), \
            res["text"]
    _, shown = on_terminal(multi, "show", res["id"])
    assert "heard language 'fr'" in shown or "heard language 'de'" in shown, shown
    hello = multi.wait_result(submit(multi, FIXTURES / "hello.wav"), 300)
    assert hello["language_warning"] is None and hello["language_fallback"] is None
    assert "hello" in hello["text"].lower() and hello["engine"]["model"] == "tiny.en"


def test_an_english_only_model_named_says_when_the_speech_is_another_language(
        multi: Daemon) -> None:
    """--model tiny.en named: no fallback; the result says what base heard and what to
    do, instead of passing the English nonsense off as a transcript."""
    res = multi.wait_result(submit(multi, FIXTURES / "french.wav", "--model", "tiny.en"), 300)
    assert res["status"] == "done" and res["language_fallback"] is None
    w = res["language_warning"]
    assert w is not None and w["detected"] == "fr" and w["probability"] > 0.2, w
    assert w["mean_logprob"] < -0.9 and "--model base" in w["message"], w
    shown = multi.ctl("show", res["id"])
    assert "--model base" in shown.stdout, shown.stdout
