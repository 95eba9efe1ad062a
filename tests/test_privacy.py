"""privacy: owner on a shared spool, tried by real users against the real daemon.

The test (root) makes users with ``useradd`` under a unique prefix and removes
them afterwards: the daemon's user (primary group = the submitters' group, as
sysusers.d makes ``cesar``), two members alice and bob, an admin, and a
non-member. The daemon runs as its user on a spool made by ``cesard --init``.
Every attack runs as the attacking uid and asserts the kernel's answer
(EACCES/EPERM), not only what cesarctl shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, Daemon, fake_script, wait_until
from userbox import Box, needs_users, user_box

pytestmark = needs_users


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    with user_box() as b:
        yield b


def done_result(box: Box, job_id: str, timeout: float = 30) -> dict[str, Any]:
    return box.d.wait_result(job_id, timeout)


# --- queued and finished jobs ---------------------------------------------------------

def test_another_member_can_neither_list_read_change_nor_remove_a_job(box: Box) -> None:
    d, alice, bob = box.d, box.alice, box.bob
    inc, tmp = d.spool / "incoming", d.spool / "tmp"
    # A queued job: hold the worker with a slow job of alice's own first.
    blocker = box.submit(alice, "slow.wav", fake_script(sleep=3, text="blocker"))
    wait_until(lambda: d.entries("processing"), 10, "the blocker to run")
    job = box.submit(alice, "secret.wav", fake_script(text="alice's secret meeting"))
    assert (inc / job).is_dir()
    audio = inc / job / "secret.wav"
    assert box.attempt(bob, "listdir", inc) == "EACCES"
    assert box.attempt(bob, "listdir", tmp) == "EACCES"
    assert box.attempt(bob, "listdir", inc / job) == "EACCES"
    assert box.attempt(bob, "read", audio) == "EACCES"
    assert box.attempt(bob, "read", inc / job / "job.json") == "EACCES"
    assert box.attempt(bob, "write", audio) == "EACCES"  # "FORGED BY BOB" cannot get in
    assert box.attempt(bob, "unlink", audio) == "EACCES"
    assert box.attempt(bob, "create", inc / job / "other.wav") == "EACCES"
    assert box.attempt(bob, "rename", inc / job, inc / "mine") == "EPERM"  # sticky bit
    assert box.attempt(bob, "rename", inc / job, tmp / "mine") == "EPERM"
    assert box.attempt(bob, "rmdir", inc / job) == "EPERM"
    # cesarctl says so too, and the daemon refuses bob's cancel (answered, logged).
    assert box.ctl(bob, "show", job).returncode == 77
    r = box.ctl(bob, "cancel", job)
    assert r.returncode == 77 and "no job you may cancel" in r.stderr, r.stderr
    # The denial tells neither the owner nor whether a guessed id exists.
    assert alice.name not in r.stderr
    guessed = job[:-4] + ("0000" if not job.endswith("0000") else "1111")
    r2 = box.ctl(bob, "cancel", guessed)
    assert (r2.returncode, r2.stderr.replace(guessed, job)) == (r.returncode, r.stderr)
    assert "refused" in d.log()
    # The running job's directory: nobody but the daemon writes there, its owner included.
    running = wait_until(lambda: [n for n in d.entries("processing") if n != blocker] or
                         d.entries("processing"), 10, "a running job")[0]
    proc = d.spool / "processing" / running
    for who in (bob, alice):
        assert box.attempt(who, "write", proc / "claim.json") == "EACCES"
        assert box.attempt(who, "create", proc / "claim.json.new") == "EACCES"
        assert box.attempt(who, "mkdir", proc / "result.json") == "EACCES"
    assert box.attempt(bob, "listdir", proc) == "EACCES"
    # Finished: only alice (and the admin) read it.
    res = done_result(box, job)
    assert res["status"] == "done" and res["text"] == "alice's secret meeting"
    assert res["owner"] == {"uid": alice.uid, "name": alice.name}
    assert res["submitter"] == alice.name
    done = d.spool / "done" / job
    for name in ("result.json", "transcript.txt", "job.json", "secret.wav"):
        assert box.attempt(bob, "read", done / name) == "EACCES", name
        assert box.attempt(alice, "read", done / name) == "OK", name
        # Admins read what the daemon wrote; the recording stays its owner's (and root's).
        assert box.attempt(box.admin, "read", done / name) == (
            "EACCES" if name == "secret.wav" else "OK"), name
        assert box.attempt(alice, "write", done / name) in ("EACCES", "EPERM") or \
            name == "secret.wav"  # her own audio file stays hers
    assert box.attempt(bob, "listdir", done / job) == "EACCES"
    assert box.attempt(bob, "rename", done, done.parent / "x") == "EACCES"
    assert box.attempt(alice, "create", done / "x") == "EACCES"
    assert box.attempt(alice, "create", done / "result.json.forged") == "EACCES"
    # cesarctl: alice sees hers, bob does not, the admin sees all with an owner column.
    assert box.ctl(alice, "result", job).stdout.strip() == "alice's secret meeting"
    r = box.ctl(bob, "result", job)
    assert r.returncode == 77 and "another user" in r.stderr
    assert box.ctl(bob, "wait", job, "--timeout", "2s").returncode == 77
    assert job not in box.ctl(bob, "list").stdout
    assert job in box.ctl(alice, "list").stdout
    rows = [line.split("\t") for line in box.ctl(box.admin, "list").stdout.splitlines()]
    assert [job, "done", "done", "secret.wav", alice.name] in rows
    # Queue counts stay visible to every member (like lpq).
    r = box.ctl(bob, "status", "--json")
    assert json.loads(r.stdout)["queue"]["done"] >= 2


def test_the_list_catalogue_is_the_daemons_alone(box: Box) -> None:
    """state/catalog.sqlite holds every user's file names: in privacy: owner the kernel
    refuses it to members and admins alike; their cesarctl list reads the job
    directories they may open instead."""
    job = box.submit(box.alice, "catalogued.wav", fake_script(text="in the catalogue"))
    done_result(box, job)
    cat = box.d.spool / "state" / "catalog.sqlite"
    wait_until(cat.exists, 30, "the catalogue")
    for who in (box.alice, box.bob, box.admin):
        assert box.attempt(who, "read", cat) == "EACCES", who.name
    assert job in box.ctl(box.alice, "list").stdout
    assert job not in box.ctl(box.bob, "list").stdout


def test_plain_cp_is_private_and_owned_by_the_copier(box: Box) -> None:
    d, alice, bob = box.d, box.alice, box.bob
    src = box.own_file(alice, "dictation.wav", fake_script(text="cp by alice", sleep=1))
    r = box.run(alice, ["cp", str(src), str(d.spool / "incoming" / "dictation.wav")])
    assert r.returncode == 0, r.stderr
    assert box.attempt(bob, "read", d.spool / "incoming" / "dictation.wav") in ("EACCES",
                                                                                 "ENOENT")
    res = wait_until(lambda: [x for x in d.results() if x["source"]["name"] == "dictation.wav"],
                     30, "the copied file's result")[0]
    assert res["status"] == "done" and res["owner"]["uid"] == alice.uid
    assert box.attempt(bob, "read", d.spool / "done" / res["id"] / "result.json") == "EACCES"


def test_submitter_comes_from_the_filesystem_never_from_job_json(box: Box) -> None:
    d, alice, bob = box.d, box.alice, box.bob
    h = box.home(bob)
    build = d.spool / "tmp" / "bobjob"
    meta = {"id": "bobjob", "submitted_at": "2026-11-24T03:15:01.123456Z",
            "submitter": alice.name, "owner": alice.uid, "source_name": "a.wav", "options": {}}
    (h / "job.json").write_text(json.dumps(meta))
    (h / "a.wav").write_bytes(fake_script(text="bob pretends to be alice"))
    for f in ("job.json", "a.wav"):
        os.chown(h / f, bob.uid, bob.gid)
    script = (f"mkdir {build} && cp {h}/job.json {h}/a.wav {build}/ && "
              f"mv {build} {d.spool}/incoming/bobjob")
    r = box.run(bob, ["sh", "-c", script])
    assert r.returncode == 0, r.stderr
    res = done_result(box, "bobjob")
    assert res["owner"] == {"uid": bob.uid, "name": bob.name}
    assert res["submitter"] == bob.name
    assert box.attempt(alice, "read", d.spool / "done" / "bobjob" / "result.json") == "EACCES"


def test_requests_act_only_for_the_owner_root_or_an_admin(box: Box) -> None:
    d, alice, bob = box.d, box.alice, box.bob
    failed = box.submit(alice, "bad.wav", fake_script(fail="EngineError"))
    assert done_result(box, failed)["status"] == "failed"
    r = box.ctl(bob, "retry", failed)
    assert r.returncode == 77 and "no job you may retry" in r.stderr, r.stderr
    assert (d.spool / "failed" / failed).is_dir()
    # A request bob writes by hand is refused the same way (the file's owner is the sender).
    name = f"retry.{failed}.beef.json"
    r = box.run(bob, ["sh", "-c", f"printf '%s' '{{\"action\": \"retry\", \"id\": \"{failed}\", "
                      f"\"by\": \"{alice.name}\"}}' > {d.spool}/control/{name}"])
    assert r.returncode == 0, r.stderr
    reply = d.spool / "control" / f".reply-{name}"
    answer = wait_until(lambda: reply.exists() and json.loads(reply.read_text()), 10, "reply")
    assert answer["ok"] is False and answer["denied"] is True
    assert box.attempt(alice, "read", reply) == "EACCES"  # the answer is bob's alone
    assert (d.spool / "failed" / failed).is_dir()
    # The owner may; so may an admin.
    r = box.ctl(alice, "retry", failed)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: (d.spool / "failed" / failed / "result.json").exists(), 10, "fail again")
    r = box.ctl(box.admin, "retry", failed)
    assert r.returncode == 0, r.stderr
    # Cancel: bob may not, alice may.
    blocker = box.submit(alice, "slow2.wav", fake_script(sleep=2, text="x"))
    queued = box.submit(alice, "q.wav", fake_script(text="never"))
    assert box.ctl(bob, "cancel", queued).returncode == 77
    r = box.ctl(alice, "cancel", queued)
    assert r.returncode == 0, r.stderr
    res = done_result(box, queued)
    assert res["status"] == "cancelled" and res["owner"]["uid"] == alice.uid
    assert done_result(box, blocker)["status"] == "done"


def test_a_non_member_is_told_how_to_join(box: Box) -> None:
    src = box.own_file(box.outsider, "x.wav", b"RIFF")
    r = box.ctl(box.outsider, "submit", str(src))
    assert r.returncode == 77
    assert f"usermod -aG {box.group} {box.outsider.name}" in r.stderr, r.stderr
    assert box.attempt(box.outsider, "listdir", box.d.spool) == "EACCES"
    assert box.attempt(box.outsider, "create", box.d.spool / "incoming" / "x") == "EACCES"


def test_hard_links_are_refused(box: Box) -> None:
    d, alice = box.d, box.alice
    src = box.own_file(alice, "linked.wav", fake_script(text="linked"))
    r = box.run(alice, ["ln", str(src), str(d.spool / "incoming" / "linked.wav")])
    assert r.returncode == 0, r.stderr
    res = wait_until(lambda: [x for x in d.results() if x["source"]["name"] == "linked.wav"],
                     30, "the hard link's result")[0]
    assert res["status"] == "failed" and res["error"]["type"] == "UnsupportedFile"
    assert "hard links" in res["error"]["message"]
    assert res["owner"]["uid"] == alice.uid
    assert src.read_bytes() == fake_script(text="linked")


def test_mkdir_and_mv_under_umask_022_is_claimed(box: Box) -> None:
    d, alice = box.d, box.alice
    build = d.spool / "tmp" / "handmade"
    meta = json.dumps({"id": "handmade", "submitted_at": "2026-11-24T03:15:01.123456Z",
                       "source_name": "a.wav", "options": {}})
    script = (f"mkdir {build} && printf '%s' '{meta}' > {build}/job.json && "
              f"printf '#cesard-fake\\ntext: hand made\\n' > {build}/a.wav && "
              f"mv {build} {d.spool}/incoming/handmade")
    r = box.run(alice, ["sh", "-c", script], umask=0o022)
    assert r.returncode == 0, r.stderr
    res = done_result(box, "handmade")
    assert res["status"] == "done" and res["text"] == "hand made", res
    assert "Traceback" not in d.log()


def test_cp_of_a_0600_file_waits_for_chmod_then_runs(box: Box) -> None:
    d, alice = box.d, box.alice
    src = box.own_file(alice, "private.wav", fake_script(text="was 0600"), mode=0o600)
    target = d.spool / "incoming" / "private.wav"
    r = box.run(alice, ["cp", str(src), str(target)])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "private.wav (owner" in d.log(), 10, "the daemon to say what to do")
    assert "chmod g+r" in d.log()
    assert os.path.lexists(target)  # not taken, not failed
    assert box.attempt(box.bob, "read", target) == "EACCES"
    r = box.run(alice, ["chmod", "g+r", str(target)])
    assert r.returncode == 0, r.stderr
    assert box.attempt(box.bob, "read", target) == "EACCES"  # g+r opens the mask, not bob
    res = wait_until(lambda: [x for x in d.results() if x["source"]["name"] == "private.wav"],
                     30, "the file to run after chmod")[0]
    assert res["status"] == "done" and res["text"] == "was 0600"


def test_dedupe_reuses_only_what_the_owner_may_read(box: Box) -> None:
    """dedupe: true (reloaded): bob's copy of alice's recording is transcribed for bob,
    never answered from alice's job; an admin's may reuse either."""
    import signal

    d, alice, bob = box.d, box.alice, box.bob
    d.config["dedupe"] = True
    d.write_config()
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.log().count("configuration reloaded") >= 1, 10, "the reload")
    try:
        same = fake_script(sleep=0.5, text="the board meeting")
        mine = box.submit(alice, "board.wav", same)
        assert done_result(box, mine)["deduplicated_from"] is None
        again = box.submit(alice, "board-again.wav", same)
        assert done_result(box, again)["deduplicated_from"] == mine
        bobs = box.submit(bob, "board.wav", same)
        r = done_result(box, bobs)
        assert r["deduplicated_from"] is None and r["owner"]["name"] == bob.name
        assert done_result(box, box.submit(bob, "b2.wav", same))["deduplicated_from"] == bobs
        admins = box.submit(box.admin, "board.wav", same)
        assert done_result(box, admins)["deduplicated_from"] in (mine, bobs)
        # The copy is the new owner's alone, as any result.
        copy = d.spool / "done" / again / "transcript.txt"
        assert box.attempt(bob, "read", copy) == "EACCES"
        assert box.attempt(alice, "read", copy) == "OK"
    finally:
        d.config["dedupe"] = False
        d.write_config()
        d.signal(signal.SIGHUP)
        wait_until(lambda: d.log().count("configuration reloaded") >= 2, 10, "the reload")


def test_the_daemon_survived_every_attack(box: Box) -> None:
    assert box.d.proc is not None and box.d.proc.poll() is None
    assert "Traceback" not in box.d.log(), box.d.log()


# --- layout ---------------------------------------------------------------------------

def test_init_and_tmpfiles_make_the_same_owners_modes_and_acls(box: Box) -> None:
    if shutil.which("systemd-tmpfiles") is None or shutil.which("getfacl") is None:
        pytest.skip("needs systemd-tmpfiles and getfacl (Debian packages systemd, acl)")
    repo = Path(__file__).resolve().parent.parent
    text = (repo / "contrib" / "systemd" / "cesard.tmpfiles").read_text()
    by_tmpfiles = box.base / "tmpfiles-spool"
    by_init = box.base / "init-spool"
    conf = box.base / "cesard-test.conf"
    conf.write_text(text.replace("/var/spool/cesar", str(by_tmpfiles))
                    .replace("cesar cesar", f"{box.daemon.name} {box.group}")
                    .replace("u:cesar:", f"u:{box.daemon.name}:"))
    r = subprocess.run(["systemd-tmpfiles", "--create", str(conf)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(BIN / "cesard"), "--config", str(box.d.config_path), "--spool",
                        str(by_init), "--init", "--user", box.daemon.name, "--group", box.group],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def acls(root: Path) -> str:
        out = subprocess.run(["getfacl", "-R", "-p", root.name], cwd=root.parent,
                             capture_output=True, text=True, check=True).stdout
        return out.replace(root.name, "SPOOL")
    assert acls(by_tmpfiles) == acls(by_init)
    assert "default:user:" + box.daemon.name + ":rwx" in acls(by_init)


# --- without users: fair share, limits, junk, a filesystem without ACLs -------------------

def test_fair_share_one_users_backlog_does_not_starve_another(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1)
    d.spool.mkdir()
    for sub in ("tmp", "incoming"):
        (d.spool / sub).mkdir()
    alice, bob = 61001, 61002
    for i in range(200):
        p = d.spool / "incoming" / f"a{i:03d}.wav"
        p.write_bytes(fake_script(text=f"alice {i}"))
        os.chown(p, alice, alice)
        os.utime(p, (1.7e9 + i, 1.7e9 + i))
    p = d.spool / "incoming" / "b.wav"
    p.write_bytes(fake_script(text="bob"))
    os.chown(p, bob, bob)
    os.utime(p, (1.7e9 + 500, 1.7e9 + 500))  # submitted after all of alice's
    d.start()
    wait_until(lambda: len(d.entries("done")) == 201, 120, "all 201 jobs")
    order = sorted(d.results(), key=lambda r: r["started_at"])
    bob_started = next(r["started_at"] for r in order if r["source"]["name"] == "b.wav")
    # (jobs of one batch start together: count alice's that started strictly before)
    before_bob = sum(1 for r in order if r["started_at"] < bob_started)
    print(f"\nfair share: bob's single job started after {before_bob} of alice's 200 queued")
    assert before_bob <= 1
    assert order[-1]["owner"]["uid"] == alice


def test_per_owner_queue_limit_refuses_the_excess_clearly(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, max_queued_per_owner=3)
    d.spool.mkdir()
    (d.spool / "incoming").mkdir()
    for i in range(5):
        p = d.spool / "incoming" / f"q{i}.wav"
        p.write_bytes(fake_script(text=f"q{i}"))
        os.chown(p, 61003, 61003)
    d.start()
    wait_until(lambda: len(d.results()) == 5, 30, "five results")
    refused = [r for r in d.results() if r["status"] == "failed"]
    assert len(refused) == 2, d.results()
    for r in refused:
        assert r["error"]["type"] == "QuotaExceeded"
        assert "max_queued_per_owner=3" in r["error"]["message"]
        assert r["source"]["sha256"] and (d.spool / "failed" / r["id"] / r["source"]["name"]
                                          ).exists()  # nothing lost


def test_prune_is_not_stopped_by_junk_in_tmp(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    job = d.submit_bytes("a.wav", fake_script(text="old"))
    d.wait_result(job)
    (d.spool / "tmp" / f".prune-{job}" / "y").mkdir(parents=True)
    old = time.time() - 40 * 86400
    os.utime(d.spool / "done" / job, (old, old))
    r = d.ctl("prune", "--older-than", "0s")
    assert r.returncode == 0, r.stderr
    assert not (d.spool / "done" / job).exists()


def test_owner_mode_refuses_a_shared_spool_without_acls(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # ramfs stores no extended attributes, so no POSIX ACLs (like some NFS mounts).
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a ramfs (a filesystem without ACLs) here: {r.stderr.strip()}")
    try:
        spool = mnt / "spool"
        spool.mkdir()
        os.chmod(spool, 0o755)  # shared
        d = make_daemon("noacl", privacy="owner")
        d.spool = spool
        d.start(wait_ready=False)
        assert d.wait_exit(30) == 78
        log = d.log()
        assert str(spool) in log and "does not support POSIX ACLs" in log, log
        assert "privacy: group" in log and "acl" in log
        d2 = make_daemon("noacl2", privacy="group")
        d2.spool = spool
        d2.start()
        assert d2.stop() == 0
        os.chmod(spool, 0o700)  # private: nobody else enters, no ACLs needed
        d3 = make_daemon("noacl3", privacy="owner")
        d3.spool = spool
        d3.start()
        assert d3.stop() == 0
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_junk_where_a_result_goes_never_stops_the_daemon(
        make_daemon: Callable[..., Daemon]) -> None:
    """`mkdir processing/ID/result.json` then cancel ended the daemon (IsADirectoryError).
    A member cannot make it any more (the directory is the daemon's); as root here."""
    d = make_daemon().start()
    job = d.submit_bytes("r.wav", fake_script(sleep=60))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    (d.spool / "processing" / job / "result.json" / "deeper").mkdir(parents=True)
    r = d.ctl("cancel", job)
    assert r.returncode == 0, r.stderr
    res = d.wait_result(job)
    assert res["status"] == "cancelled"
    assert d.proc is not None and d.proc.poll() is None
    assert "Traceback" not in d.log(), d.log()


@needs_users
def test_a_member_sees_every_queued_job_of_hers_and_why_one_waits() -> None:
    """incoming/ may not be listed by members (privacy: owner): the daemon's view of her
    own entries (state/owners/UID.json, readable by her alone) lets `list` show them all,
    and say why a 0600 file she copied in with cp -p waits."""
    with user_box("v", workers=1) as box:
        alice, bob = box.alice, box.bob
        blocker = box.submit(alice, "slow.wav", fake_script(sleep=8, text="blocker"))
        wait_until(lambda: (box.d.spool / "processing" / blocker).exists(), 20,
                   "the blocker to run")
        ids = [box.submit(alice, f"q{i}.wav", fake_script(text=f"q{i}")) for i in range(3)]
        secret = box.own_file(alice, "private.wav", fake_script(text="p"), mode=0o600)
        r = box.run(alice, ["cp", "-p", str(secret), str(box.d.spool / "incoming")])
        assert r.returncode == 0, r.stderr

        def rows(u: Any) -> list[dict[str, Any]]:
            r = box.ctl(u, "list", "--json")
            assert r.returncode == 0, r.stderr
            return list(json.loads(r.stdout))

        def queued() -> bool:
            got = {r.get("id") or r.get("file"): r for r in rows(alice)}
            return all(got.get(i, {}).get("state") == "incoming" for i in ids) and \
                "private.wav" in got
        wait_until(queued, 10, "alice's list to show her queued jobs")
        theirs = json.dumps(rows(bob))
        assert not any(i in theirs for i in ids) and "private.wav" not in theirs
        view = box.d.spool / "state" / "owners" / f"{alice.uid}.json"
        assert box.attempt(bob, "read", view) == "EACCES"
        assert box.attempt(bob, "listdir", view.parent) == "EACCES"
        assert box.attempt(alice, "read", view) == "OK"

        def waits() -> dict[str, Any] | None:
            return next((r for r in rows(alice) if r.get("file") == "private.wav"
                         and r.get("status") == "waiting"), None)
        row = wait_until(waits, 30, "the unreadable file to be shown as waiting")
        assert "chmod g+r" in row["waiting"] and "cesarctl submit" in row["waiting"]
        for i in ids:
            assert box.d.wait_result(i, 30)["status"] == "done"
