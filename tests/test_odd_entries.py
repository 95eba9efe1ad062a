"""No entry a user can make ends the daemon (property-based, against the real daemon).

Hypothesis generates entries for incoming/: names of any bytes the kernel allows, bare
files of fake scripts or junk, job directories whose job.json is generated JSON (any
shape, or a valid one with fields replaced by generated values), FIFOs and links. Each
is published into the running daemon's spool; the daemon must stay up and the entry
must end in done/ or failed/ with a result whose error names what was dropped. At the
end a restart must stay up too, and the log holds no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon, fake_script, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cesard.entries import is_ignored_name

NAME_BYTES = (st.binary(min_size=1, max_size=255) | st.builds(
    lambda n, c, ext: (c * n)[:255 - len(ext)] + ext, st.integers(20, 255),
    st.sampled_from([b"\xff", b"\xe9", "é".encode(), b"a", b"\n"]),
    st.sampled_from([b".wav", b"", b".flac"]))).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
    and not is_ignored_name(os.fsdecode(b)))
TIMES = st.sampled_from(["2026-11-24T03:15:01", "2026-11-24T03:15:01Z", "2026-11-24",
                         "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59", "now",
                         "2026-11-24T03:15:01.123456+05:30"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=12)
FIELDS = ("id", "submitted_at", "submitter", "source_name", "options", "attempts", "errors",
          "not_before", "owner", "schema")
OPTION_KEYS = ("model", "language", "task", "beam_size", "vad_filter", "word_timestamps",
               "initial_prompt", "priority", "formats", "exclusive", "then", "bogus")


@st.composite
def job_json(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:  # any JSON at all
        return json.dumps(draw(JSON)).encode()
    if choice == 1:  # not JSON, or deep, or not UTF-8
        return draw(st.sampled_from([b"{", b"[" * 5000 + b"]" * 5000, b"\xff\xfe{}",
                                     b'{"id": "x", "submitted_at": "\\udcff"}', b""]))
    meta: dict[str, Any] = {"id": "x", "submitted_at": "2026-11-24T03:15:01Z",
                            "options": {}, "source_name": "a.wav"}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        meta[key] = draw(TIMES if key in ("submitted_at", "not_before") and draw(st.booleans())
                         else JSON)
    for key in draw(st.lists(st.sampled_from(OPTION_KEYS), max_size=3)):
        if isinstance(meta.get("options"), dict):
            meta["options"][key] = draw(JSON)
    return json.dumps(meta).encode()


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bare", "bare", "dir", "dir", "dir", "fifo", "link",
                                 "deep"]))
    content = draw(st.sampled_from([fake_script(text="odd but fine"), b"\x00junk" * 10,
                                    fake_script(fail="EngineError")]))
    return {"name": draw(NAME_BYTES), "kind": kind, "content": content,
            "meta": draw(job_json()) if kind in ("dir", "deep") else b"",
            "audio": draw(NAME_BYTES) if kind == "dir" and draw(st.booleans()) else b"a.wav",
            # a directory dropped under the id of a job that exists (done/ or failed/)
            "reuse": draw(st.integers(0, 3)) == 0}


@pytest.fixture(scope="module")
def odd_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("odd"), workers=1, settle_seconds=0.2,
               max_attempts=1, retry_delays=[0.1])
    d.start()
    yield d
    d.close()
    # What failed keeps what was dropped: trees deeper than pytest's own clean-up can take.
    subprocess.run(["rm", "-rf", str(d.tmp)], check=False)


def publish(d: Daemon, entry: dict[str, Any], n: int) -> bytes:
    """Build the entry in tmp/ and rename it into incoming/; its name there."""
    tmp = os.fsencode(d.spool / "tmp") + b"/build%d" % n
    name = entry["name"]
    if entry["kind"] in ("dir", "deep") and entry["reuse"]:
        taken = d.entries("done") + d.entries("failed")
        name = os.fsencode(taken[len(name) % len(taken)]) if taken else name
    final = os.fsencode(d.spool / "incoming") + b"/" + name
    if os.path.lexists(final):
        return b""
    if entry["kind"] == "bare":
        Path(os.fsdecode(tmp)).write_bytes(entry["content"])
    elif entry["kind"] == "fifo":
        os.mkfifo(tmp)
    elif entry["kind"] == "link":
        os.symlink(b"/etc/passwd", tmp)
    else:
        os.mkdir(tmp)
        with open(tmp + b"/job.json", "wb") as f:
            f.write(entry["meta"])
        with open(tmp + b"/" + entry["audio"], "wb") as f:
            f.write(entry["content"])
        if entry["kind"] == "deep":  # a tree deeper than Python's recursion limit
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            for _ in range(1200):
                os.mkdir("d", dir_fd=fd)
                new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = new
            os.close(fd)
    os.rename(tmp, final)
    return name


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(entries(), min_size=1, max_size=4))
@example(batch=[  # what 300 random examples found (each set an entry aside or broke
    # result.json's schema before it was fixed)
    dict(name=b"prio-dict.wav", kind="dir", content=fake_script(text="x"), audio=b"a.wav",
         reuse=False, meta=b'{"id": "x", "submitted_at": "2026-11-24T03:15:01.1+05:30", '
         b'"options": {"priority": {"\\ud976": {}}}, "source_name": "a.wav"}'),
    dict(name=b"year-one", kind="dir", content=fake_script(text="x"), audio=b"a.wav",
         reuse=False, meta=b'{"id": "x", "submitted_at": "0001-01-01T00:00:00+00:00", '
         b'"options": {"initial_prompt": "\\udcff"}, "source_name": "a.wav"}'),
    dict(name=b"reused", kind="dir", content=fake_script(text="x"), audio=b"a.wav",
         reuse=True, meta=b'{"id": "x", "submitted_at": "2026-11-24T03:15:01Z", '
         b'"options": {}, "source_name": "a.wav"}')])
def test_any_entry_ends_alone_and_the_daemon_stays_up(odd_daemon: Daemon,
                                                      batch: list[dict[str, Any]]) -> None:
    d = odd_daemon
    before = len(d.results())
    names = {publish(d, e, i) for i, e in enumerate(batch)} - {b""}
    inc = os.fsencode(d.spool / "incoming")

    def settled() -> bool:
        assert d.proc is not None and d.proc.poll() is None, d.log()[-4000:]
        left = set(os.listdir(inc)) & names
        return not left and len(d.results()) >= before + len(names)

    wait_until(settled, 30, f"{names!r} to end in done/ or failed/")
    for res in d.results():
        if res["status"] == "failed":
            assert res["error"]["message"] and res["source"]["name"], res


def test_the_daemon_restarts_after_the_odd_entries(odd_daemon: Daemon) -> None:
    d = odd_daemon
    assert d.stop() == 0
    d.start()
    job = d.submit_bytes("after.wav", fake_script(text="still here"))
    assert d.wait_result(job)["text"] == "still here"
    assert "Traceback" not in d.log(), d.log()[-6000:]
    assert os.listdir(d.spool / "processing") == []
    failed = len(d.entries("failed"))
    print(f"\nodd entries: {len(d.results())} results, {failed} failed")
