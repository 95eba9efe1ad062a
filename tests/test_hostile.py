"""I6/I7 beyond tests/test_bad_input.py: a hostile corpus of more than twenty kinds.

Each entry ends in failed/ with an error naming the file and the problem (a
hard link to a file outside the spool is refused like a symbolic link), nothing
outside the spool is touched, and the daemon keeps
running and still transcribes. The audio kinds need the real engine.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, Daemon, wait_until

MAX_BYTES = 200_000  # the fixtures fit; big.wav does not


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("hostile"), engine="faster-whisper", workers=2,
               settle_seconds=0.5, max_file_bytes=MAX_BYTES, max_audio_seconds=20)
    d.start(wait_ready=False)
    d.wait_ready(timeout=120)
    yield d
    d.close()


def build_dir(d: Daemon, name: str) -> Path:
    build = d.spool / "tmp" / name
    build.mkdir()
    return build


def publish(d: Daemon, build: Path) -> None:
    os.rename(build, d.spool / "incoming" / build.name)


def job_json(job_id: str, **over: Any) -> bytes:
    j: dict[str, Any] = {"id": job_id, "submitted_at": "2026-11-24T03:15:01.123456Z",
                         "options": {}, "source_name": "a.wav"}
    j.update(over)
    return json.dumps(j).encode()


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root: (mode, mtime_ns, content) - to prove nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    st = os.lstat(root)
    out["."] = (st.st_mode, st.st_mtime_ns, b"")
    return out


def test_hostile_corpus(hostile_daemon: Daemon, tmp_path: Path) -> None:
    d = hostile_daemon
    inc = d.spool / "incoming"
    hello = (FIXTURES / "hello.wav").read_bytes()
    garbage = bytes(range(256)) * 40
    # Decoys outside the spool: nothing may read-follow, write, move or delete them.
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "secret.wav").write_bytes(hello)
    (decoy / "victim.json").write_bytes(job_json("victim"))
    (decoy / "sub").mkdir()
    hard_src = tmp_path / "hardlinked.wav"  # same filesystem as the spool (tmp_path)
    hard_src.write_bytes(hello)
    os.utime(hard_src, ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(decoy)
    hard_before = (hard_src.stat().st_mtime_ns, hard_src.read_bytes())

    expected: dict[str, tuple[str, str, str]] = {}  # key -> (type, name needle, problem needle)

    # --- bare entries in incoming/ -------------------------------------------------
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(inc / "sock.wav"))
    s.close()
    expected["sock.wav"] = ("UnsupportedFile", "sock.wav", "socket")
    try:
        os.mknod(inc / "dev.wav", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected["dev.wav"] = ("UnsupportedFile", "dev.wav", "device")
    except PermissionError:
        pass  # no CAP_MKNOD here: the other kinds still make more than twenty
    os.symlink(decoy, inc / "linkdir.wav")
    expected["linkdir.wav"] = ("UnsupportedFile", "linkdir.wav", "symbolic link")
    os.symlink(decoy, inc / "linkdir")  # a symlink to a directory, named like a job dir
    expected["linkdir"] = ("UnsupportedFile", "linkdir", "symbolic link")
    os.symlink(tmp_path / "nowhere", inc / "dangling.wav")
    expected["dangling.wav"] = ("UnsupportedFile", "dangling.wav", "symbolic link")
    (inc / "new\nline.wav").write_bytes(garbage)
    expected["new_line.wav"] = ("UndecodableAudio", "new_line.wav", "could not be decoded")
    (inc / "-rf --no-preserve-root .wav").write_bytes(garbage)
    expected["-rf --no-preserve-root .wav"] = ("UndecodableAudio", "-rf --no-preserve-root .wav",
                                              "could not be decoded")
    (inc / "big.wav").write_bytes(hello * 2)
    expected["big.wav"] = ("FileTooLarge", "big.wav", f"max_file_bytes={MAX_BYTES}")
    (inc / "job.json").write_bytes(garbage)
    expected["audio-job.json"] = ("UndecodableAudio", "audio-job.json", "could not be decoded")
    long_name = "L" * 240 + ".wav"
    (inc / long_name).write_bytes(garbage)
    # Names the daemon makes fit in 200 bytes, the extension kept.
    expected["L" * 196 + ".wav"] = ("UndecodableAudio", "LLLL", "could not be decoded")
    (inc / "long.flac").write_bytes((FIXTURES / "silence30.flac").read_bytes())
    expected["long.flac"] = ("AudioTooLong", "long.flac", "max_audio_seconds=20")
    (inc / "empty.wav").mkdir()  # a directory named like audio
    expected["empty.wav"] = ("InvalidJob", "empty.wav", "no job.json")
    os.link(hard_src, inc / "hardlink.wav")  # refused: see the module docstring

    # --- job directories ------------------------------------------------------------
    d.publish_dir("huge", {"a.wav": hello, "job.json": job_json("huge", submitter="x" * 70000)})
    expected["huge"] = ("InvalidJob", "huge", "larger than")
    d.publish_dir("deep", {"a.wav": hello,
                         "job.json": b'{"id": "deep", "options": {"model": ' + b"[" * 30000 +
                         b"]" * 30000 + b"}}"})
    expected["deep"] = ("InvalidJob", "deep", "nested")
    d.publish_dir("idtype", {"a.wav": hello, "job.json": job_json("x", id=42)})
    expected["idtype"] = ("InvalidJob", "idtype", "'id'")
    d.publish_dir("idescape", {"a.wav": hello, "job.json": job_json("../../decoy/x")})
    expected["idescape"] = ("InvalidJob", "idescape", "'id'")
    d.publish_dir("when", {"a.wav": hello, "job.json": job_json("when", submitted_at=["now"])})
    expected["when"] = ("InvalidJob", "when", "'submitted_at'")
    d.publish_dir("attempts", {"a.wav": hello, "job.json": job_json("attempts", attempts=-1)})
    expected["attempts"] = ("InvalidJob", "attempts", "'attempts'")
    d.publish_dir("optslist", {"a.wav": hello, "job.json": job_json("optslist", options=["x"])})
    expected["optslist"] = ("InvalidJob", "optslist", "'options' must be a mapping")
    d.publish_dir("beamtype", {"a.wav": hello,
                             "job.json": job_json("beamtype", options={"beam_size": "five"})})
    expected["beamtype"] = ("InvalidOption", "beamtype", "'beam_size'")
    d.publish_dir("fmtescape", {"a.wav": hello, "job.json": job_json(
        "fmtescape", options={"formats": ["../../decoy/x"]})})
    expected["fmtescape"] = ("InvalidOption", "fmtescape", "'formats'")
    d.publish_dir("modelpath", {"a.wav": hello, "job.json": job_json(
        "modelpath", options={"model": str(decoy)})})
    expected["modelpath"] = ("UnknownModel", "modelpath", "not configured")
    d.publish_dir("multi", {"x.wav": hello, "y.wav": hello,
                          "job.json": job_json("multi", source_name=None)})
    expected["multi"] = ("InvalidJob", "multi", "candidate audio files")
    b = build_dir(d, "srclink")
    os.symlink(decoy / "secret.wav", b / "a.wav")
    (b / "job.json").write_bytes(job_json("srclink"))
    publish(d, b)
    expected["srclink"] = ("UnsupportedFile", "a.wav", "symbolic link")
    b = build_dir(d, "fifoaudio")
    os.mkfifo(b / "a.wav")
    (b / "job.json").write_bytes(job_json("fifoaudio"))
    publish(d, b)
    expected["fifoaudio"] = ("UnsupportedFile", "a.wav", "FIFO")
    b = build_dir(d, "diraudio")
    (b / "a.wav").mkdir()
    (b / "job.json").write_bytes(job_json("diraudio"))
    publish(d, b)
    expected["diraudio"] = ("UnsupportedFile", "a.wav", "directory")
    b = build_dir(d, "jsonlink")
    (b / "a.wav").write_bytes(hello)
    os.symlink(decoy / "victim.json", b / "job.json")
    publish(d, b)
    expected["jsonlink"] = ("InvalidJob", "jsonlink", "job.json")
    b = build_dir(d, "jsonfifo")
    (b / "a.wav").write_bytes(hello)
    os.mkfifo(b / "job.json")
    publish(d, b)
    expected["jsonfifo"] = ("InvalidJob", "jsonfifo", "not a regular file")
    d.publish_dir("truncflac", {"a.flac": (FIXTURES / "silence30.flac").read_bytes()[:600],
                              "job.json": job_json("truncflac", source_name="a.flac")})
    # Its header still declares 30 s: rejected before decoding (max_audio_seconds=20).
    expected["truncflac"] = ("AudioTooLong", "a.flac", "")

    # --- hostile control requests ------------------------------------------------------
    ctl = d.spool / "control"
    # Ids that walk out of the state directories: to the decoy and to another state.
    to_decoy = os.path.relpath(decoy, d.spool / "incoming")
    to_sub = os.path.relpath(decoy / "sub", d.spool / "failed")
    for i, (action, target) in enumerate([("cancel", to_decoy), ("retry", to_sub),
                                          ("cancel", "../incoming/idtype")]):
        (d.spool / "tmp" / f"c{i}").write_text(json.dumps({"action": action, "id": target}))
        os.rename(d.spool / "tmp" / f"c{i}", ctl / f"{action}.x{i}.json")
    os.symlink(decoy / "victim.json", d.spool / "tmp" / "clink")
    os.rename(d.spool / "tmp" / "clink", ctl / "cancel.link.json")
    os.mkfifo(d.spool / "tmp" / "cfifo")
    os.rename(d.spool / "tmp" / "cfifo", ctl / "cancel.fifo.json")
    (d.spool / "tmp" / "cdeep").write_bytes(b"[" * 4000)
    os.rename(d.spool / "tmp" / "cdeep", ctl / "cancel.deep.json")

    assert len(expected) >= 20

    def failed() -> dict[str, dict[str, Any]]:
        out = {}
        for name in os.listdir(d.spool / "failed"):
            p = d.spool / "failed" / name / "result.json"
            if not p.exists():
                continue
            res = json.loads(p.read_text())
            if name not in expected:  # bare entries get an id: find them by their name
                meta = json.loads((d.spool / "failed" / name / "job.json").read_text())
                name = meta.get("source_name") or name
            out[name] = res
        return out

    got = wait_until(lambda: (lambda f: f if set(expected) <= set(f) else None)(failed()),
                     90, f"every hostile entry to fail: {sorted(expected)}")
    problems = []
    for key, (etype, name_needle, needle) in expected.items():
        res = got[key]
        err = res["error"]
        if res["status"] != "failed" or err["type"] != etype or needle not in err["message"] \
                or name_needle not in err["message"]:
            problems.append((key, etype, needle, err))
    assert not problems, "\n".join(map(str, problems))
    # A hard link (st_nlink > 1) is refused like a symlink; the outside file untouched.
    def hardlink_done() -> list[dict[str, Any]]:
        return [r for r in d.results() if (r["source"] or {}).get("name") == "hardlink.wav"]
    hl = wait_until(hardlink_done, 60, "the hard-linked file to be refused")
    assert hl[0]["status"] == "failed" and hl[0]["error"]["type"] == "UnsupportedFile"
    assert "2 hard links" in hl[0]["error"]["message"], hl[0]["error"]
    assert hl[0]["source"]["type"] == "regular file" and hl[0]["source"]["sha256"] is None
    assert (hard_src.stat().st_mtime_ns, hard_src.read_bytes()) == hard_before
    # Nothing outside the spool touched; control requests consumed; nothing stuck.
    assert snapshot(decoy) == before
    # Requests are consumed; what stays is the daemon's answers (removed after REPLY_TTL_S).
    wait_until(lambda: all(n.startswith(".reply-") for n in os.listdir(ctl)), 10,
               "control/ to be emptied of requests")
    assert os.listdir(inc) == [] and os.listdir(d.spool / "processing") == []
    assert d.proc is not None and d.proc.poll() is None
    log = d.log()
    assert "Traceback" not in log, log
    assert log.count("control request") >= 6, log
    # The daemon still transcribes.
    r = d.ctl("submit", str(FIXTURES / "hello.wav"), "--wait", timeout=60)
    assert r.returncode == 0 and "hello" in r.stdout.lower(), r.stderr
