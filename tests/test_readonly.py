"""A spool whose filesystem turns read-only (issue 20): the daemon stays up and loses nothing.

A real fault: the spool is a loop-mounted ext4 with ``errors=remount-ro``, and
``/sys/fs/ext4/DEV/trigger_fs_error`` makes the kernel remount it read-only as a disk
error would. The daemon pauses (its running job's result waits), says so (journal,
``cesarctl health``), and goes on once the administrator has checked the filesystem
and mounted it again. A start on a read-only spool waits instead of exiting. Needs root
and loop devices; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until

from cesard.fsops import read_only

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
    reason="needs root and mkfs.ext4 (e2fsprogs) to mount a loop ext4")


class LoopFS:
    def __init__(self, base: Path) -> None:
        self.image = base / "spool.img"
        self.mnt = base / "fs"

    def make(self) -> None:
        with open(self.image, "wb") as f:
            f.truncate(128 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        self.mnt.mkdir()
        self.mount()

    def mount(self, *opts: str) -> None:
        r = subprocess.run(["mount", "-o", ",".join(["loop", "errors=remount-ro", *opts]),
                            str(self.image), str(self.mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a loop ext4 here: {r.stderr.strip()}")

    def device(self) -> str:
        src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mnt)],
                             capture_output=True, text=True, check=True).stdout.strip()
        return Path(src).name

    def fail(self) -> None:
        """A disk error: ext4 remounts itself read-only (errors=remount-ro)."""
        Path(f"/sys/fs/ext4/{self.device()}/trigger_fs_error").write_text("1")

    def repair(self) -> None:
        """What an administrator does once the daemon let go of it: unmount, fsck, mount.
        (While anything holds the filesystem, ext4 keeps it read-only: a new mount of the
        same device gets the same superblock.)"""
        subprocess.run(["umount", str(self.mnt)], check=True)
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True)
        self.mount()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[LoopFS]:
    fs = LoopFS(tmp_path)
    fs.make()
    try:
        yield fs
    finally:
        fs.close()


def test_a_spool_turned_read_only_keeps_the_daemon_up_and_loses_nothing(
        make_daemon: Callable[..., Daemon], loopfs: LoopFS) -> None:
    d = make_daemon(workers=1)
    d.spool = loopfs.mnt / "spool"
    d.start()
    first = d.submit_bytes("first.wav", fake_script(text="before the fault"))
    assert d.wait_result(first)["status"] == "done"
    running = d.submit_bytes("running.wav", fake_script(sleep=3, text="finished meanwhile"))
    wait_until(lambda: (d.spool / "processing" / running).exists(), 10, "the job to run")
    loopfs.fail()
    assert read_only(loopfs.mnt)  # (ext4: emergency_ro; the mount still says rw)
    wait_until(lambda: "read-only" in d.log(), 20, "the daemon to say the spool is read-only")
    h = d.ctl("health")
    assert h.returncode == 2 and "read-only" in h.stdout, (h.stdout, h.stderr)
    # It stays up while the job's result cannot be written, and says so once.
    wait_until(lambda: "its result waits" in d.log(), 20, "the finished job's result to wait")
    assert d.proc is not None and d.proc.poll() is None
    assert d.log().count("filesystem is read-only") == 1, d.log()
    assert "claiming resumed" not in d.log()
    # The administrator stops it (it exits 0), repairs the filesystem, starts it again:
    # the job whose result could not be written runs again, once.
    assert d.stop() == 0, d.log()
    loopfs.repair()
    d.start()
    res = d.wait_result(running, 60)
    assert res["status"] == "done" and res["text"] == "finished meanwhile"
    after = d.submit_bytes("after.wav", fake_script(text="after the repair"))
    assert d.wait_result(after, 30)["text"] == "after the repair"
    assert [r["id"] for r in d.results()].count(running) == 1
    assert d.wait_result(first)["text"] == "before the fault"
    assert "Traceback" not in d.log(), d.log()


def test_a_start_on_a_read_only_spool_waits(make_daemon: Callable[..., Daemon],
                                           loopfs: LoopFS) -> None:
    d = make_daemon(workers=1)
    d.spool = loopfs.mnt / "spool"
    d.start()
    queued = d.spool / "incoming" / "queued.wav"
    assert d.stop() == 0
    queued.write_bytes(fake_script(text="queued while read-only"))
    subprocess.run(["mount", "-o", "remount,ro", str(loopfs.mnt)], check=True)
    d.start(wait_ready=False)
    wait_until(lambda: "waiting for it to be writable" in d.log(), 20, "the daemon to wait")
    assert d.proc is not None and d.proc.poll() is None
    subprocess.run(["mount", "-o", "remount,rw", str(loopfs.mnt)], check=True)
    d.wait_ready()
    wait_until(lambda: [r for r in d.results() if r["text"] == "queued while read-only"], 30,
               "the queued job to run")
    assert d.stop() == 0 and "Traceback" not in d.log()
