"""A GlusterFS lab for the two-host tests and bench/gluster.py (root only).

Three network namespaces on a bridge: a storage server (glusterd and one brick, the
only glusterd on the machine) and two "hosts", each mounting the volume with its own
FUSE client started in its namespace (the mount is visible to every process; its
traffic is the host's). Options are those of docs/shared-storage.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers import wait_until

P = f"cg{os.getpid() % 10000}"  # names of this run's namespaces and volume
VOL = f"{P}vol"
SERVER = "10.77.0.1"
BRICK = Path(f"/srv/{P}-brick")
MNT = {h: Path(f"/mnt/{P}-{h}") for h in ("a", "b")}
VOLUME_OPTIONS = {**{f"performance.{o}": "off" for o in (
    "stat-prefetch", "quick-read", "open-behind", "write-behind", "io-cache", "readdir-ahead")},
    "network.ping-timeout": "5"}
MOUNT_OPTIONS = ["--entry-timeout=0", "--attribute-timeout=0", "--negative-timeout=0"]


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, glusterd, FUSE mounts)"
    for tool in ("glusterd", "glusterfs", "gluster", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install glusterfs-server glusterfs-client)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if subprocess.run(["pgrep", "-x", "glusterd"], capture_output=True).returncode == 0:
        return "a glusterd already runs on this machine (only one can)"
    return None


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def ns(name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", f"{P}{name}", *cmd, check=check)


def gluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("gluster", "--mode=script", *args, check=check)


def mount(h: str) -> None:
    MNT[h].mkdir(parents=True, exist_ok=True)
    sh("nsenter", f"--net=/run/netns/{P}{h}", "glusterfs", f"--volfile-server={SERVER}",
       f"--volfile-id={VOL}", *MOUNT_OPTIONS, str(MNT[h]))
    wait_until(lambda: os.path.ismount(MNT[h]), 20, f"the mount of host {h}")


def bring_up() -> None:
    for n in ("srv", "a", "b"):
        sh("ip", "netns", "add", f"{P}{n}")
    ns("srv", "ip", "link", "add", "br0", "type", "bridge")
    ns("srv", "ip", "addr", "add", f"{SERVER}/24", "dev", "br0")
    ns("srv", "ip", "link", "set", "br0", "up")
    ns("srv", "ip", "link", "set", "lo", "up")
    for i, h in enumerate(("a", "b"), start=2):
        sh("ip", "link", "add", f"{P}v{h}", "type", "veth", "peer", "name", f"{P}p{h}")
        sh("ip", "link", "set", f"{P}v{h}", "netns", f"{P}{h}")
        sh("ip", "link", "set", f"{P}p{h}", "netns", f"{P}srv")
        ns("srv", "ip", "link", "set", f"{P}p{h}", "master", "br0")
        ns("srv", "ip", "link", "set", f"{P}p{h}", "up")
        ns(h, "ip", "addr", "add", f"10.77.0.{i}/24", "dev", f"{P}v{h}")
        ns(h, "ip", "link", "set", f"{P}v{h}", "up")
        ns(h, "ip", "link", "set", "lo", "up")
    BRICK.mkdir(parents=True, exist_ok=True)
    ns("srv", "glusterd")
    wait_until(lambda: gluster("volume", "list", check=False).returncode == 0, 20, "glusterd")
    gluster("volume", "create", VOL, f"{SERVER}:{BRICK}", "force")
    for k, v in VOLUME_OPTIONS.items():
        gluster("volume", "set", VOL, k, v)
    gluster("volume", "start", VOL)
    for h in ("a", "b"):
        mount(h)


def tear_down() -> None:
    for m in MNT.values():
        sh("umount", "-l", str(m), check=False)
    gluster("volume", "stop", VOL, "force", check=False)
    gluster("volume", "delete", VOL, check=False)
    for proc in ("glusterfsd", "glusterfs", "glusterd"):
        sh("pkill", "-x", proc, check=False)
    for n in ("srv", "a", "b"):
        sh("ip", "netns", "del", f"{P}{n}", check=False)
    shutil.rmtree(BRICK, ignore_errors=True)
    shutil.rmtree(Path("/var/lib/glusterd/vols") / VOL, ignore_errors=True)
