"""A member can neither read another's recording nor stop the service (issue 19).

Real users (tests/userbox.py), the daemon as its own user on a spool made by
``cesard --init``. Bob is the hostile member; alice is the victim. Every attack runs
as bob's uid; every assertion is about alice's jobs (done once, under their ids, with
her text), files outside the spool, and the daemon (alive, no traceback in its log).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, fake_script, wait_until
from userbox import Box, needs_users, user_box

pytestmark = needs_users

# Bob's racer: exchange two of his entries in incoming/ as fast as it can
# (renameat2 RENAME_EXCHANGE; the sticky bit allows it on entries he owns) until one of
# them is claimed. Both start hidden (a leading dot) and are revealed together.
RACER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
inc, a, b, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pa, pb = os.path.join(inc, a).encode(), os.path.join(inc, b).encode()
os.rename(os.path.join(inc, "." + a), pa)
os.rename(os.path.join(inc, "." + b), pb)
end, n = time.monotonic() + secs, 0
while time.monotonic() < end:
    if libc.renameat2(-100, pa, -100, pb, 2) != 0:
        break  # one of them was claimed
    n += 1
print(n)
"""

DEEP = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for _ in range(int(sys.argv[2])):
    os.mkdir("d", dir_fd=fd)
    new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = new
open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w").write("x")
"""


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    with user_box("m", workers=1, retry_delays=[4], max_attempts=2, lease_seconds=5,
                  shutdown_grace=1) as b:
        yield b


def as_bob(box: Box, code: str, *args: str, timeout: float = 60) -> str:
    r = box.run(box.bob, [str(BIN / "python"), "-c", code, *args])
    assert r.returncode == 0, r.stderr
    return r.stdout


def bob_dir(box: Box, name: str, meta: dict[str, Any] | bytes, files: dict[str, bytes],
            mode: int = 0o770) -> Path:
    """A job directory bob makes right in incoming/ (hidden until it is complete)."""
    inc = box.d.spool / "incoming"
    data = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    code = ("import os, sys, json\n"
            "inc, name, mode = sys.argv[1], sys.argv[2], int(sys.argv[3], 8)\n"
            "files = json.loads(sys.stdin.read())\n"
            "tmp = os.path.join(inc, '.' + name)\n"
            "os.mkdir(tmp)\n"
            "for f, text in files.items():\n"
            "    open(os.path.join(tmp, f), 'wb').write(text.encode('latin-1'))\n"
            "os.chmod(tmp, mode)\n"
            "os.rename(tmp, os.path.join(inc, name))\n")
    blobs = {"job.json": data, **files}
    r = box.run(box.bob, [str(BIN / "python"), "-c", code, str(inc), name, f"{mode:o}"],
                input=json.dumps({k: v.decode("latin-1") for k, v in blobs.items()}))
    assert r.returncode == 0, r.stderr
    return inc / name


def meta_of(job_id: str, **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"id": job_id, "submitted_at": "2026-11-24T03:15:01.123456Z",
                         "options": {}, "source_name": "a.wav"}
    m.update(over)
    return m


def bobs_results(box: Box) -> list[dict[str, Any]]:
    return [r for r in box.d.results() if (r.get("owner") or {}).get("uid") == box.bob.uid]


def assert_alive_and_clean(box: Box) -> None:
    d = box.d
    assert d.proc is not None and d.proc.poll() is None, d.log()
    assert "Traceback" not in d.log(), d.log()
    job = box.submit(box.alice, "ping.wav", fake_script(text="still serving alice"))
    res = d.wait_result(job, 30)
    assert res["status"] == "done" and res["text"] == "still serving alice"


def restart(box: Box) -> None:
    d = box.d
    assert d.stop() == 0, d.log()
    d.start(user=(box.daemon.uid, box.daemon.gid))


# --- 1. the claim race ---------------------------------------------------------------------

def test_exchanging_a_job_for_a_link_never_makes_the_daemon_follow_it(box: Box) -> None:
    d, alice, bob = box.d, box.alice, box.bob
    victim = box.submit(alice, "secret.wav", fake_script(text="alice's secret meeting"))
    assert d.wait_result(victim)["status"] == "done"
    victim_dir = d.spool / "done" / victim
    victim_audio = (victim_dir / "secret.wav").read_bytes()
    # A file of the daemon's own outside the spool, and the job.json that old claims read.
    private = box.base / "daemon-private"
    private.mkdir()
    (private / "key.wav").write_bytes(fake_script(text="the daemon's private file"))
    (private / "job.json").write_text(json.dumps(meta_of("private", source_name="key.wav")))
    for p in (private, private / "key.wav", private / "job.json"):
        os.chown(p, box.daemon.uid, box.daemon.gid)
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    pairs = 10
    racers = []
    for i in range(pairs):
        target = victim_dir if i % 2 == 0 else private
        bob_dir(box, f".bjob{i}", meta_of(f"bjob{i}"),
                {"a.wav": fake_script(text=f"bob {i}")})
        r = box.run(bob, ["ln", "-s", str(target), str(d.spool / "incoming" / f".blink{i}")])
        assert r.returncode == 0, r.stderr
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box.base)}
    for i in range(pairs):
        racers.append(subprocess.Popen(
            [str(BIN / "python"), "-c", RACER, str(d.spool / "incoming"), f"bjob{i}",
             f"blink{i}", "20"], user=bob.uid, group=bob.gid, extra_groups=bob.groups,
            env=env, cwd=box.base, stdout=subprocess.PIPE, text=True))
    for p in racers:
        p.wait(60)
    try:
        wait_until(lambda: len(bobs_results(box)) >= 2 * pairs, 60,
                   "every entry of bob's to end")
    except AssertionError as e:
        raise AssertionError(f"{e}: incoming {os.listdir(d.spool / 'incoming')}, processing "
                             f"{os.listdir(d.spool / 'processing')}, "
                             f"{len(bobs_results(box))} ended\n{d.log()[-3000:]}") from None
    results = bobs_results(box)
    texts = [r["text"] for r in results]
    assert not any("alice" in t or "private" in t for t in texts), texts
    # Alice's finished job and the daemon's private file are untouched, and stay closed.
    assert (victim_dir / "secret.wav").read_bytes() == victim_audio
    assert sorted(os.listdir(private)) == ["job.json", "key.wav"]
    assert box.attempt(bob, "read", private / "key.wav") == "EACCES"
    assert box.attempt(bob, "read", victim_dir / "secret.wav") == "EACCES"
    # The race was run: some claims found a link (refused: never followed) or an entry
    # replaced between the check and the rename.
    refused = [r["error"]["message"] for r in results if r["status"] == "failed"]
    assert len(refused) >= pairs, refused
    assert all("symbolic link" in m or "replaced by another entry" in m for m in refused)
    done = sorted(r["text"] for r in results if r["status"] == "done")
    assert all(t.startswith("bob ") for t in done), done
    assert_alive_and_clean(box)


# --- 2. entries that crashed the daemon ----------------------------------------------------

def test_entries_that_crashed_the_daemon_fail_alone_and_a_restart_stays_up(box: Box) -> None:
    d = box.d
    inc = d.spool / "incoming"
    deep_json = b'{"id": "deep", "options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    # Kept in incoming/ by its mode: the daemon may not move a directory it cannot write.
    bob_dir(box, "deepjson", deep_json, {"a.wav": fake_script(text="x")}, mode=0o555)
    bob_dir(box, "naive", meta_of("naive", submitted_at="2026-11-24T03:15:01"),
            {"a.wav": fake_script(text="naive time")})
    # Names that are not UTF-8, one of them 255 bytes (each bad byte is four characters).
    code = ("import os, sys\n"
            "inc = os.fsencode(sys.argv[1])\n"
            "for name, text in ((b'\\xff\\xfebad.wav', b'not utf-8'),"
            " (b'\\xfe' * 251 + b'.wav', b'255 bytes')):\n"
            "    tmp = os.path.join(inc, b'.' + name[:200])\n"
            "    open(tmp, 'wb').write(b'#cesard-fake\\ntext: ' + text + b'\\n')\n"
            "    os.chmod(tmp, 0o644)\n"
            "    os.rename(tmp, os.path.join(inc, name))\n")
    as_bob(box, code, str(inc))
    wait_until(lambda: len([r for r in bobs_results(box)
                            if r["text"] in ("not utf-8", "255 bytes")]) == 2, 30,
               "the two odd names to be transcribed")
    names = [r["source"]["name"] for r in bobs_results(box)]
    assert all(len(n.encode()) <= 255 for n in names), names
    naive = d.wait_result("naive", 30)
    assert naive["status"] == "failed" and naive["error"]["type"] == "InvalidJob", naive
    assert "'submitted_at'" in naive["error"]["message"], naive["error"]
    assert "time zone" in naive["error"]["message"], naive["error"]
    # The daemon writes its own submitted_at (when the entry was published), with a zone.
    assert naive["submitted_at"].endswith("Z") and naive["submitted_at"] > "2026-12"
    assert "deepjson" in os.listdir(inc)  # cannot be moved: stays, said once in the log
    # A tree 1,500 directories deep inside a job, and one left in tmp/.
    tree2 = bob_dir(box, ".tree2", meta_of("tree2"), {"a.wav": fake_script(text="tree two")})
    as_bob(box, DEEP, str(tree2), "1500")
    os.rename(tree2, inc / "tree2")  # (root reveals it: bob's rename needs no help)
    tmpjunk = d.spool / "tmp" / "junk"
    as_bob(box, "import os, sys; os.mkdir(sys.argv[1])", str(tmpjunk))
    as_bob(box, DEEP, str(tmpjunk), "1500")
    assert d.wait_result("tree2", 30)["text"] == "tree two"
    restart(box)
    assert_alive_and_clean(box)
    restart(box)
    assert_alive_and_clean(box)
    assert not os.path.lexists(tmpjunk) or os.listdir(tmpjunk)  # (a day old: not yet)


def test_a_tree_of_any_depth_in_tmp_is_cleaned_without_recursion(tmp_path: Path) -> None:
    from cesard.spool import Spool

    s = Spool(tmp_path / "spool")
    s.create()
    fd = os.open(s.dir("tmp"), os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir("old", dir_fd=fd)
    for _ in range(3000):
        new = os.open("old", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd) if _ == 0 else None
        if new is None:
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    try:
        removed = s.clean_tmp(time.time() + 3 * 86400)
        assert removed == ["old"] and os.listdir(s.dir("tmp")) == []
    finally:  # pytest's own clean-up of old temporary folders recurses
        subprocess.run(["rm", "-rf", str(s.dir("tmp") / "old")], check=False)


# --- 3. ids are the daemon's ---------------------------------------------------------------

def test_a_planted_id_never_takes_a_job_nor_its_attempts(box: Box) -> None:
    d, alice = box.d, box.alice
    inc = d.spool / "incoming"

    def plant_file(job_id: str) -> None:
        as_bob(box, "import os, sys; p = sys.argv[1]; open(p, 'wb').write(b'#cesard-fake\\n"
               "text: planted by bob\\n'); os.chmod(p, 0o644)", str(inc / job_id))

    # a) A deferred job (its worker crashed; retry in 4 s): bob plants a file and a
    # directory under its id. It comes back under its own id, with its own attempts.
    crashy = box.submit(alice, "crashy.wav", fake_script(crash="true"))
    wait_until(lambda: (d.spool / "deferred" / crashy).exists(), 30, "the retry to wait")
    plant_file(crashy)
    res = d.wait_result(crashy, 30)
    assert res["status"] == "failed" and res["attempts"] == 2, res
    assert res["owner"]["uid"] == alice.uid
    assert [e["type"] for e in res["errors"]] == ["WorkerCrashed", "WorkerCrashed"]
    wait_until(lambda: any(r["text"] == "planted by bob" for r in bobs_results(box)), 30,
               "bob's planted file to run as bob's own job")
    # b) A directory dropped under the id of a deferred job takes a new id.
    crashy2 = box.submit(alice, "crashy2.wav", fake_script(crash="true"))
    wait_until(lambda: (d.spool / "deferred" / crashy2).exists(), 30, "the retry to wait")
    bob_dir(box, crashy2, meta_of(crashy2), {"a.wav": fake_script(text="squatter dir")})
    wait_until(lambda: any(r["text"] == "squatter dir" for r in bobs_results(box)), 30,
               "bob's directory to run under a new id")
    squat = next(r for r in bobs_results(box) if r["text"] == "squatter dir")
    assert squat["id"] != crashy2
    r = box.ctl(alice, "show", crashy2)
    assert r.returncode == 0, r.stderr
    assert d.wait_result(crashy2, 30)["owner"]["uid"] == alice.uid
    # c) A running job: bob plants a file at its id, then the daemon stops (SIGTERM
    # requeues it) and later dies (kill -9: recovery). It runs to the end once, under
    # its id, with its text; only the attempt that really ran is counted.
    slow = box.submit(alice, "slow.wav", fake_script(sleep=3, text="alice slow"))
    wait_until(lambda: (d.spool / "processing" / slow).exists(), 30, "the job to run")
    plant_file(slow)
    assert d.stop() == 0
    assert (inc / slow).is_dir() and (inc / slow / "job.json").exists()
    d.start(user=(box.daemon.uid, box.daemon.gid))
    wait_until(lambda: (d.spool / "processing" / slow).exists(), 30, "the job to run again")
    plant_file(slow)
    d.kill_all()
    d.start(user=(box.daemon.uid, box.daemon.gid))
    res = d.wait_result(slow, 30)
    assert res["status"] == "done" and res["text"] == "alice slow", res
    assert res["attempts"] == 2 and res["owner"]["uid"] == alice.uid, res
    assert [r["id"] for r in d.results()].count(slow) == 1
    wait_until(lambda: sum(r["text"] == "planted by bob" for r in bobs_results(box)) >= 3,
               30, "bob's planted files to run as his")
    assert_alive_and_clean(box)


# --- 5. stalls ------------------------------------------------------------------------------

def test_a_members_junk_costs_his_turns_not_another_members_wait(box: Box) -> None:
    d, alice = box.d, box.alice
    inc = d.spool / "incoming"
    # Three 2 GiB sparse files with a bad option (refused before a worker: their sha256
    # is computed for result.json), then 3,000 FIFOs.
    for i in range(3):
        bob_dir(box, f".sparse{i}", meta_of(f"sparse{i}", options={"beam_size": "x"}), {})
        as_bob(box, "import os, sys; f = os.path.join(sys.argv[1], 'a.wav'); "
               "open(f, 'wb').truncate((2 << 30) - 1); os.chmod(f, 0o644); "
               "os.rename(sys.argv[1], sys.argv[2])",
               str(inc / f".sparse{i}"), str(inc / f"sparse{i}"))
    as_bob(box, "import os, sys\nfor i in range(3000): os.mkfifo(os.path.join(sys.argv[1], "
           "f'fifo{i}.wav'), 0o644)", str(inc))
    t0 = time.monotonic()
    job = box.submit(alice, "quick.wav", fake_script(text="quick"))
    submitted = time.monotonic() - t0
    res = d.wait_result(job, 60)
    waited = time.monotonic() - t0
    print(f"\nalice's 1-job wait behind bob's junk: {waited:.2f} s")
    lines = [line for line in d.log().splitlines() if job in line]
    assert res["status"] == "done" and waited < 6.0, (waited, submitted, lines)
    for i in range(3):
        r = d.wait_result(f"sparse{i}", 120)
        assert r["error"]["type"] == "InvalidOption" and len(r["source"]["sha256"]) == 64
    wait_until(lambda: not [n for n in os.listdir(inc) if n.startswith("fifo")], 180,
               "every FIFO to be refused")
    assert_alive_and_clean(box)


def test_the_fake_engine_is_refused_on_a_shared_spool(box: Box) -> None:
    env = {k: v for k, v in box.d.env.items() if k != "CESARD_TEST_FAKE_ENGINE"}
    r = subprocess.run([str(BIN / "cesard"), "--config", str(box.d.config_path), "--spool",
                        str(box.d.spool)], env=env, capture_output=True, text=True, timeout=60,
                       user=box.daemon.uid, group=box.daemon.gid, extra_groups=[])
    assert r.returncode == 78, r.stderr
    assert "engine: fake is refused on shared spool" in r.stderr


def test_metrics_textfile_never_follows_a_planted_link(tmp_path: Path) -> None:
    from cesard.metrics import write_textfile

    target = tmp_path / "victim"
    target.write_text("untouched")
    out = tmp_path / "cesard.prom"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the names it used to write
        os.symlink(target, tmp_path / f".cesard.prom.{pid}.tmp")
    write_textfile(str(out), "cesard_up 1\n")
    assert out.read_text() == "cesard_up 1\n" and target.read_text() == "untouched"
    assert not out.is_symlink()


def test_names_the_daemon_makes_fit_in_255_bytes() -> None:
    """Names the daemon makes fit in 255 bytes whatever bytes a member used."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cesard import job as jobmod

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=255).filter(lambda b: b"/" not in b and b"\0" not in b))
    def check(raw: bytes) -> None:
        name = jobmod.safe_name(os.fsdecode(raw))
        assert 0 < len(name.encode()) <= jobmod.MAX_NAME_BYTES
        assert name.encode().decode() == name and "/" not in name

    check()
