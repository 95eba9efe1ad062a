"""cesard-http (issue 24) with real clients and real processes: the official ``openai``
package and plain HTTP against a running cesard + cesard-http (the fake engine, which
obeys the uploaded script, for speed and faults; the real model in test_http_real.py)."""

from __future__ import annotations

import hmac
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from helpers import Daemon, fake_script, wait_until
from httpbox import Gateway, Receiver, key_of, leftovers, multipart


@pytest.fixture
def box(make_daemon: Callable[..., Daemon]) -> Iterator[tuple[Daemon, Gateway, str, str]]:
    d = make_daemon(workers=1)
    gw = Gateway(d, max_upload_mb=1, callback_allow=["127.0.0.1"])
    alice, bob = gw.token("alice"), gw.token("bob")
    d.start()
    gw.start()
    yield d, gw, alice, bob
    gw.stop()


def sdk(gw: Gateway, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=120)


def script_file(tmp: Path, name: str, **keys: object) -> Path:
    p = tmp / name
    p.write_bytes(fake_script(**keys))
    return p


def test_each_response_format_through_the_openai_sdk(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    c = sdk(gw, alice)
    f = script_file(d.tmp, "v.wav", text="hello over http", duration=3, segments=2)
    r = c.audio.transcriptions.create(model="whisper-1", file=f.open("rb"))
    assert r.text == "hello over http 1 hello over http 2"
    text = c.audio.transcriptions.create(model="whisper-1", file=f.open("rb"),
                                         response_format="text")
    assert str(text).strip() == "hello over http 1 hello over http 2"
    srt = str(c.audio.transcriptions.create(model="whisper-1", file=f.open("rb"),
                                            response_format="srt"))
    assert "00:00:00,000 --> 00:00:01,500" in srt and "hello over http 2" in srt, srt
    vtt = str(c.audio.transcriptions.create(model="whisper-1", file=f.open("rb"),
                                            response_format="vtt"))
    assert vtt.startswith("WEBVTT") and "00:00:01.500 --> 00:00:03.000" in vtt, vtt
    v = c.audio.transcriptions.create(model="whisper-1", file=f.open("rb"),
                                      response_format="verbose_json", language="en")
    assert v.language == "english" and v.duration == 3
    assert [s.text for s in v.segments or []] == ["hello over http 1", "hello over http 2"]
    models = [m.id for m in c.models.list()]
    assert "whisper-1" in models and "tiny.en" in models


def test_streaming_sends_a_delta_per_segment_then_done(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    f = script_file(d.tmp, "s.wav", text="part", sleep=1.5, segments=3, duration=6)
    events = list(sdk(gw, alice).audio.transcriptions.create(
        model="whisper-1", file=f.open("rb"), stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["transcript.text.delta"] * 3 + ["transcript.text.done"], kinds
    assert "".join(e.delta for e in events[:3]) == "part 1 part 2 part 3"  # type: ignore
    assert events[-1].text == "part 1 part 2 part 3"  # type: ignore[union-attr]


def test_errors_in_openais_shape_with_the_right_status(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    f = script_file(d.tmp, "e.wav", text="x")
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "nope").audio.transcriptions.create(model="whisper-1", file=f.open("rb"))
    status, body = gw.json("GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as e:
        sdk(gw, alice).audio.transcriptions.create(model="large-v9", file=f.open("rb"))
    assert e.value.status_code == 400 and "large-v9" in e.value.message
    assert e.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        sdk(gw, alice).audio.transcriptions.create(model="whisper-1", file=f.open("rb"),
                                                   response_format="docx")  # type: ignore
    assert e.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as e:  # the daemon could not decode it
        sdk(gw, alice).audio.transcriptions.create(
            model="whisper-1", file=script_file(d.tmp, "bad.wav", fail="UndecodableAudio")
            .open("rb"))
    assert e.value.status_code == 415 and "UndecodableAudio" in e.value.message
    body, ctype = multipart({"model": "whisper-1"}, "big.wav", b"\0" * (3 << 20))
    status, _, raw = gw.call("POST", "/v1/audio/transcriptions", alice, body,
                             {"Content-Type": ctype})
    assert status == 413 and json.loads(raw)["error"]["code"] == "file_too_large"
    # streamed without Content-Length (chunked): stopped at the limit just the same
    status, _, raw = gw.call("POST", "/v1/audio/transcriptions", alice,
                             iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                             {"Content-Type": ctype})
    assert status == 413, raw
    assert leftovers(d.spool) == []  # nothing of the refused uploads stays in tmp/


def test_two_tokens_cannot_see_each_others_jobs_nor_a_members(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, bob = box
    body, ctype = multipart({"model": "whisper-1"}, "a.wav", fake_script(text="alice's"))
    status, _, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
    assert status == 202, raw
    job = json.loads(raw)["id"]
    wait_until(lambda: gw.json("GET", f"/v1/jobs/{job}", alice)[1]["status"] == "done", 30,
               "alice's job")
    assert gw.json("GET", f"/v1/jobs/{job}", alice)[1]["result"]["text"] == "alice's"
    for method, path in (("GET", f"/v1/jobs/{job}"), ("DELETE", f"/v1/jobs/{job}"),
                         ("GET", f"/v1/jobs/{job}/events")):
        status, body_ = gw.json(method, path, bob)
        assert status == 404 and body_["error"]["code"] == "job_not_found", (path, body_)
    member = d.submit_bytes("m.wav", fake_script(text="a member's"))
    d.wait_result(member)
    assert gw.json("GET", f"/v1/jobs/{member}", alice)[0] == 404
    status, body_ = gw.json("GET", "/v1/jobs/nonexistent-id", alice)
    assert status == 404


def test_async_job_progress_cancel_and_events(box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    body, ctype = multipart({"model": "whisper-1"}, "long.wav",
                            fake_script(text="long", sleep=30, duration=60))
    status, headers, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
    job = json.loads(raw)["id"]
    assert status == 202 and headers["location"] == f"/v1/jobs/{job}"
    wait_until(lambda: gw.json("GET", f"/v1/jobs/{job}", alice)[1]["progress"] > 0, 20,
               "progress")
    assert gw.json("GET", f"/v1/jobs/{job}", alice)[1]["status"] == "processing"
    status, out = gw.json("DELETE", f"/v1/jobs/{job}", alice)
    assert status == 200 and out["status"] == "cancelled", out
    wait_until(lambda: gw.json("GET", f"/v1/jobs/{job}", alice)[1]["status"] == "cancelled",
               20, "the cancel")
    status, out = gw.json("DELETE", f"/v1/jobs/{job}", alice)
    assert status == 409


def test_a_daemon_restart_during_a_synchronous_request_still_answers(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    f = script_file(d.tmp, "r.wav", text="after the restart", sleep=2)
    import threading

    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(sdk(gw, alice).audio.transcriptions.create(
        model="whisper-1", file=f.open("rb"))))
    t.start()
    wait_until(lambda: (d.status() or {}).get("running"), 20, "the job to run")
    assert d.stop() == 0  # SIGTERM: the job goes back to incoming/
    d.start()
    t.join(60)
    assert got and got[0].text == "after the restart", got  # type: ignore[attr-defined]


def test_daemon_down_is_503_with_the_queued_jobs_id(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    d.stop()
    with pytest.raises(openai.APIStatusError) as e:
        sdk(gw, alice).audio.transcriptions.create(
            model="whisper-1", file=script_file(d.tmp, "q.wav", text="queued").open("rb"))
    assert e.value.status_code == 503
    job = e.value.body["job_id"]  # type: ignore[index]
    assert (d.spool / "incoming" / job).is_dir()
    d.start()
    assert d.wait_result(job)["text"] == "queued"


def test_per_token_queue_limit_is_429(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, max_queued_per_owner=1)
    gw = Gateway(d)
    alice = gw.token("alice")
    d.start()
    d.stop()  # the spool is made; the daemon is not running: jobs stay queued
    gw.start()
    try:
        body, ctype = multipart({"model": "whisper-1"}, "a.wav", fake_script(text="1"))
        assert gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})[0] == 202
        status, _, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
        assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error", raw
    finally:
        gw.stop()


def test_callback_reaches_the_client_signed_after_a_gateway_restart(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    rx = Receiver()
    try:
        d.signal(signal.SIGSTOP)  # the job waits while the gateway restarts
        body, ctype = multipart({"model": "whisper-1", "callback_url": rx.url,
                                 "response_format": "verbose_json"}, "cb.wav",
                                fake_script(text="called back"))
        status, _, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
        assert status == 202, raw
        job = json.loads(raw)["id"]
        assert gw.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once shut down
        d.signal(signal.SIGCONT)
        d.wait_result(job)
        assert rx.got == []  # the gateway is down: nobody could have called
        gw.start()
        wait_until(lambda: rx.got, 30, "the callback")
        headers, payload = rx.got[0]
        ts = headers["x-cesar-timestamp"]
        want = "sha256=" + hmac.new(key_of(alice).encode(), f"{ts}.".encode() + payload,
                                    "sha256").hexdigest()
        assert hmac.compare_digest(headers["x-cesar-signature"], want)
        data = json.loads(payload)
        assert data["id"] == job and data["status"] == "done"
        assert data["result"]["text"] == "called back"
        wait_until(lambda: (gw.json("GET", f"/v1/jobs/{job}", alice)[1].get("callback") or {})
                   .get("state") == "delivered", 10, "the delivery recorded")
        assert len(rx.got) == 1
    finally:
        rx.close()


def test_a_callback_to_a_private_address_is_refused_unless_allowed(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1)
    gw = Gateway(d)  # no callback_allow: no loopback, private or link-local address
    alice = gw.token("alice")
    d.start()
    gw.start()
    try:
        for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/x",
                    "file:///etc/passwd"):
            body, ctype = multipart({"callback_url": url}, "a.wav", fake_script(text="x"))
            status, _, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
            assert status == 400 and json.loads(raw)["error"]["param"] == "callback_url", raw
        assert leftovers(d.spool) == []
    finally:
        gw.stop()


def test_the_curl_examples_in_the_docs_work(box: tuple[Daemon, Gateway, str, str],
                                            tmp_path: Path) -> None:
    import re
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    d, gw, alice, _ = box
    blocks = re.findall(r"```sh\n(.*?)\n```", (Path(__file__).parents[1] / "docs" / "http.md")
                        .read_text(), re.S)
    assert len(blocks) >= 4
    (tmp_path / "hello.wav").write_bytes(fake_script(text="hello from curl", duration=2))
    for block in blocks:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "CESAR_URL": gw.url, "TOKEN": alice})
        assert r.returncode == 0, (block, r.stdout, r.stderr)
        assert "hello from curl" in r.stdout or "whisper-1" in r.stdout, (block, r.stdout)


def test_a_stalled_upload_is_given_up_and_leaves_nothing(
        make_daemon: Callable[..., Daemon]) -> None:
    """A client that stops sending mid-upload (slowloris) gets 408 after
    upload_idle_seconds; its partial file is removed from tmp/."""
    import socket

    d = make_daemon(workers=1)
    gw = Gateway(d, upload_idle_seconds=1)
    alice = gw.token("alice")
    d.start()
    gw.start()
    try:
        body, ctype = multipart({"model": "whisper-1"}, "slow.wav", b"\0" * 100_000)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            s.sendall((f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: Bearer {alice}\r\nContent-Type: {ctype}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:50_000])
            answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        wait_until(lambda: leftovers(d.spool) == [], 10, "tmp/ to be empty")
    finally:
        gw.stop()


def test_a_large_upload_streams_to_disk_not_into_memory(
        make_daemon: Callable[..., Daemon]) -> None:
    """60 MB through the gateway: its peak memory grows by far less than the upload."""
    d = make_daemon(workers=1)
    gw = Gateway(d, max_upload_mb=64)
    alice = gw.token("alice")
    d.start()
    gw.start()

    def peak_kib() -> int:
        assert gw.proc is not None
        for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    try:
        small, ctype = multipart({"model": "whisper-1"}, "s.wav", fake_script(text="warm"))
        assert gw.call("POST", "/v1/audio/transcriptions", alice, small,
                       {"Content-Type": ctype})[0] == 200
        before = peak_kib()
        data = fake_script(text="big") + b"\0" * (60 << 20)
        body, ctype = multipart({"model": "whisper-1"}, "big.wav", data)
        status, _, raw = gw.call("POST", "/v1/audio/transcriptions", alice,
                                 iter([body[i:i + (1 << 20)] for i in range(0, len(body),
                                                                            1 << 20)]),
                                 {"Content-Type": ctype})
        assert status == 200 and json.loads(raw)["text"] == "big", raw[:300]
        grew = peak_kib() - before
        assert grew < 20 * 1024, f"the gateway's peak memory grew by {grew} KiB"
    finally:
        gw.stop()


def test_a_bad_http_section_is_refused_naming_the_key(make_daemon: Callable[..., Daemon]) -> None:
    """cesard and cesard-http refuse a wrong http: key with exit 78, naming it."""
    import subprocess

    from helpers import BIN

    d = make_daemon()
    for http, says in (({"listen": "localhost"}, "http.listen"),
                       ({"max_upload_mb": -1}, "http.max_upload_mb"),
                       ({"callback_allow": "10.0.0.0/8"}, "http.callback_allow"),
                       ({"listne": "127.0.0.1:1"}, "'listne'")):
        d.config["http"] = http
        d.write_config()
        for prog in ("cesard", "cesard-http"):
            r = subprocess.run([str(BIN / prog), "--config", str(d.config_path), "--spool",
                                str(d.spool), *(["--check-config"] if prog == "cesard"
                                                else [])],
                               capture_output=True, text=True, env=d.env, timeout=60)
            assert r.returncode == 78 and says in r.stderr, (prog, http, r.stderr)


def test_a_failing_callback_is_retried_with_backoff_until_delivered(
        box: tuple[Daemon, Gateway, str, str]) -> None:
    d, gw, alice, _ = box
    rx = Receiver(fail_first=2)
    try:
        body, ctype = multipart({"callback_url": rx.url}, "r.wav", fake_script(text="again"))
        status, _, raw = gw.call("POST", "/v1/jobs", alice, body, {"Content-Type": ctype})
        job = json.loads(raw)["id"]
        wait_until(lambda: (gw.json("GET", f"/v1/jobs/{job}", alice)[1].get("callback") or {})
                   .get("state") == "delivered", 30, "the third attempt to succeed")
        cb = gw.json("GET", f"/v1/jobs/{job}", alice)[1]["callback"]
        assert cb["attempts"] == 3 and cb["last_error"] is None, cb
        assert len(rx.got) == 3
        first, last = (float(h["x-cesar-timestamp"]) for h, _ in (rx.got[0], rx.got[2]))
        assert last - first >= 2, "retried after 1 s, then 2 s"
    finally:
        rx.close()


def test_records_of_pruned_jobs_are_forgotten_young_ones_kept(tmp_path: Path) -> None:
    import os
    import time as _time

    from cesard import config as configmod
    from cesard.http.gateway import Gateway as SpoolSide
    from cesard.spool import Spool

    Spool(tmp_path / "spool").create()
    cfg = configmod.parse({"spool": str(tmp_path / "spool"),
                           "http": {"state_dir": str(tmp_path / "state")}}, "test")
    gw = SpoolSide(cfg)
    mine = tmp_path / "state" / "jobs" / "app"
    mine.mkdir(parents=True)
    for name in ("pruned", "uploading", "queued"):
        (mine / name).write_bytes(b"")
    (tmp_path / "spool" / "incoming" / "queued").mkdir()
    old = _time.time() - 7200
    for name in ("pruned", "queued"):
        os.utime(mine / name, (old, old))
    assert gw.sweep(_time.time()) == 1
    assert sorted(os.listdir(mine)) == ["queued", "uploading"]
