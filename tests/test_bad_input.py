"""I6: bad input never stops the daemon; each entry ends in failed/ with a clear error."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from helpers import FIXTURES, Daemon, checked, wait_until


def job_json(**over: object) -> bytes:
    d = {"id": "x", "submitted_at": "2026-11-24T03:15:01.123456Z", "options": {}}
    d.update(over)
    return json.dumps(d).encode()


def test_hostile_entries_fail_clearly_and_daemon_keeps_running(
        whisper_daemon: Daemon, tmp_path: Path) -> None:
    d = whisper_daemon
    inc = d.spool / "incoming"
    outside = tmp_path / "outside.wav"
    outside.write_bytes((FIXTURES / "hello.wav").read_bytes())
    before = outside.stat()
    rnd = random.Random(7)
    wav_header = (FIXTURES / "hello.wav").read_bytes()[:44]

    (inc / "zero.wav").write_bytes(b"")
    (inc / "noise.mp3").write_bytes(bytes(rnd.randrange(256) for _ in range(20000)))
    (inc / "header-only.wav").write_bytes(wav_header)
    os.mkfifo(inc / "pipe.wav")
    os.symlink(outside, inc / "link.wav")
    (inc / os.fsdecode(b"caf\xe9-latin1.wav")).write_bytes(b"\x00" * 3000)
    d.publish_dir("nojobjson", {"a.wav": b"RIFF"})
    d.publish_dir("badjson", {"a.wav": b"RIFF", "job.json": b"{not json"})
    d.publish_dir("unknownopt", {"a.wav": (FIXTURES / "hello.wav").read_bytes(),
                               "job.json": job_json(id="unknownopt",
                                                    options={"colour": "blue"})})
    d.publish_dir("traversal", {"a.wav": b"RIFF",
                              "job.json": job_json(id="traversal",
                                                   source_name="../../etc/passwd")})
    expected = {
        "zero.wav": ("EmptyFile", "0 bytes"),
        "noise.mp3": ("UndecodableAudio", "noise.mp3"),
        "header-only.wav": ("UndecodableAudio", "no audio samples"),
        "pipe.wav": ("UnsupportedFile", "FIFO"),
        "link.wav": ("UnsupportedFile", "symbolic link"),
        "caf\\xe9-latin1.wav": ("UndecodableAudio", "caf\\xe9-latin1.wav"),
        "nojobjson": ("InvalidJob", "no job.json"),
        "badjson": ("InvalidJob", "not valid JSON"),
        "unknownopt": ("InvalidOption", "'colour'"),
        "traversal": ("InvalidJob", "source_name"),
    }

    def failed() -> dict[str, dict[str, object]]:
        out = {}
        for name in os.listdir(d.spool / "failed"):
            p = d.spool / "failed" / name / "result.json"
            if p.exists():
                res = checked(json.loads(p.read_text()))
                if name not in expected:  # bare files get an id: find them by file name
                    meta = json.loads((d.spool / "failed" / name / "job.json").read_text())
                    name = (res["source"] or {}).get("name") or meta["source_name"]
                out[name] = res
        return out

    got = wait_until(lambda: (lambda f: f if len(f) >= len(expected) else None)(failed()),
                     60, "every hostile entry to fail")
    for name, (etype, needle) in expected.items():
        assert name in got, f"{name} missing from failed/: {sorted(got)}"
        err = got[name]["error"]
        assert got[name]["status"] == "failed"
        assert err["type"] == etype, (name, err)
        assert needle in err["message"], (name, err["message"])
        assert "Errno" not in err["message"], (name, err["message"])  # no decoder internals
        assert got[name]["source"]["name"], got[name]["source"]  # source is never null
    # Each failure is logged once, by the supervisor, naming the file (never "file=-").
    for res in got.values():
        lines = [ln for ln in d.log().splitlines() if f"job={res['id']} failed" in ln]
        assert len(lines) == 1 and "file=-" not in lines[0], lines
    # Nothing outside the spool was touched; the daemon still transcribes.
    assert outside.stat().st_mtime_ns == before.st_mtime_ns
    assert outside.read_bytes() == (FIXTURES / "hello.wav").read_bytes()
    assert d.proc is not None and d.proc.poll() is None
    assert os.listdir(inc) == [] and os.listdir(d.spool / "processing") == []
    r = d.ctl("submit", str(FIXTURES / "hello.wav"), "--wait")
    assert r.returncode == 0 and "hello" in r.stdout.lower()
    # journald priorities aside, each failure was logged as an error naming the job.
    assert d.log().count(" ERROR: job=") >= len(expected)
