"""Two hosts, one spool, on a real GlusterFS volume, faults included (issue 14).

The harness (root only; skipped with the reason otherwise): three network namespaces,
a storage server (glusterd and one brick) and two "hosts" on a bridge; each host
mounts the volume with its own FUSE client started in its namespace (the mount is
visible to all, its traffic is the host's), and runs its own cesard in its namespace
with its own host id. Volume and mount options are the ones docs/shared-storage.md
gives: client caches off, entry/attribute/negative timeouts 0, network.ping-timeout
short so that a cut-off host sees errors in seconds, not 42.

Faults: a host's daemon killed with -9; a host cut off the network (its link down)
while it runs jobs and brought back; the brick killed and restarted mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from glusterlab import MNT, VOL, P, bring_up, gluster, ns, sh, tear_down, why_not
from helpers import Daemon, fake_script, wait_until

pytestmark = pytest.mark.skipif(why_not() is not None, reason=str(why_not()))


@pytest.fixture(scope="module")
def volume() -> Iterator[None]:
    t0 = time.monotonic()
    try:
        bring_up()
    except Exception:
        tear_down()
        raise
    print(f"\n[gluster] volume {VOL} up and mounted twice in {time.monotonic() - t0:.1f} s")
    yield
    tear_down()


Hosts = tuple[Daemon, Daemon]


@pytest.fixture
def hosts(volume: None, make_daemon: Callable[..., Daemon], request: pytest.FixtureRequest
          ) -> Iterator[Callable[..., Hosts]]:
    """start(**config): one cesard per host on a fresh spool in the volume, each through
    its own mount, in its own namespace, with its own host id."""
    name = request.node.name[-40:].replace("[", "_").replace("]", "_")
    made: list[Daemon] = []

    def start(**config: object) -> Hosts:
        out = []
        for h in ("a", "b"):
            d = make_daemon(sub=f"host{h}", watch="poll", poll_interval=0.3,
                            lease_seconds=6, workers=1, **config)
            d.spool = MNT[h] / name / "spool"
            d.start(env={"CESAR_HOST_ID": f"host{h}"}, prefix=("ip", "netns", "exec", f"{P}{h}"))
            made.append(d)
            out.append(d)
        return out[0], out[1]
    yield start
    for d in made:
        d.close()


def drop(d: Daemon, n: int, prefix: str, **script: object) -> list[str]:
    """``n`` jobs through this host's mount, as cesarctl submits them."""
    return [d.submit_bytes(f"{prefix}{i}.wav", fake_script(**script, text=f"{prefix}{i}"))
            for i in range(n)]


def finished(d: Daemon) -> dict[str, list[dict[str, object]]]:
    """Every result in the spool by job id (a list: more than one would be a duplicate)."""
    out: dict[str, list[dict[str, object]]] = {}
    try:
        for state in ("done", "failed"):
            for name in os.listdir(d.spool / state):
                p = d.spool / state / name / "result.json"
                if p.exists():
                    r = json.loads(p.read_text())
                    out.setdefault(str(r["id"]), []).append({**r, "_state": state})
    except OSError:
        return {}  # the storage is away (the brick restarting): the caller polls again
    return out


def assert_once(d: Daemon, ids: list[str]) -> dict[str, dict[str, object]]:
    res = finished(d)
    assert set(res) == set(ids), (set(ids) ^ set(res))
    dups = {i: len(v) for i, v in res.items() if len(v) > 1}
    assert not dups, f"finished more than once: {dups}"
    bad = {i: v[0].get("error") for i, v in res.items() if v[0]["status"] != "done"}
    assert not bad, f"not done: {bad}"
    return {i: v[0] for i, v in res.items()}


def test_jobs_dropped_through_both_mounts_are_each_done_once(hosts: Callable[..., Hosts]
                                                             ) -> None:
    a, b = hosts()
    ids = drop(a, 20, "via-a-", sleep=0.1) + drop(b, 20, "via-b-", sleep=0.1)
    wait_until(lambda: len(finished(a)) >= len(ids), 120, "40 jobs")
    res = assert_once(a, ids)
    by = {str(r["worker"]).split(":")[0] for r in res.values()}
    assert by == {"hosta", "hostb"}, by  # both hosts worked
    for d in (a, b):
        assert d.proc is not None and d.proc.poll() is None


def test_kill_9_of_one_host_the_other_finishes_its_jobs_once(hosts: Callable[..., Hosts]
                                                             ) -> None:
    a, b = hosts()
    b.signal(signal.SIGSTOP)  # a takes them all
    ids = drop(a, 3, "k-", sleep=10)
    wait_until(lambda: len(os.listdir(a.spool / "processing")) >= 1, 30, "a's claims")
    a.kill_all()
    b.signal(signal.SIGCONT)
    wait_until(lambda: len(finished(b)) >= 3, 150, "b to finish a's jobs")
    res = assert_once(b, ids)
    assert all(str(r["worker"]).startswith("hostb:") for r in res.values())


def test_a_host_cut_off_while_running_jobs_loses_them_to_the_other_once(
        hosts: Callable[..., Hosts]) -> None:
    a, b = hosts()
    b.signal(signal.SIGSTOP)
    ids = drop(a, 2, "cut-", sleep=12)
    wait_until(lambda: len(os.listdir(a.spool / "processing")) >= 1, 30, "a's claim")
    b.signal(signal.SIGCONT)
    ns("a", "ip", "link", "set", f"{P}va", "down")  # host a is cut off
    cut = time.monotonic()
    try:
        wait_until(lambda: len(finished(b)) >= 2, 150, "b to reclaim and finish them")
    finally:
        ns("a", "ip", "link", "set", f"{P}va", "up")
    res = assert_once(b, ids)
    assert all(str(r["worker"]).startswith("hostb:") for r in res.values())
    # Host a comes back: its late finishes are fenced, its daemon keeps running.
    wait_until(lambda: "taken over" in a.log() or time.monotonic() - cut > 60, 90,
               "host a to notice")
    assert_once(b, ids)
    assert a.proc is not None and a.proc.poll() is None, a.log()[-2000:]
    later = drop(a, 2, "after-", sleep=0.1)
    wait_until(lambda: all(i in finished(a) for i in later), 90, "a to work again")
    assert_once(a, ids + later)


def test_the_brick_restarting_mid_run_loses_and_fails_nothing(hosts: Callable[..., Hosts]
                                                              ) -> None:
    a, b = hosts()
    ids = drop(a, 10, "brick-a-", sleep=1) + drop(b, 10, "brick-b-", sleep=1)
    wait_until(lambda: len(finished(a)) >= 2, 60, "the first results")
    sh("pkill", "-x", "glusterfsd")  # the brick dies
    time.sleep(3)  # (a fault lasting 3 s, on purpose)
    gluster("volume", "start", VOL, "force")  # and comes back
    wait_until(lambda: len(finished(a)) >= len(ids), 240, "every job after the restart")
    assert_once(a, ids)
    for d in (a, b):
        assert d.proc is not None and d.proc.poll() is None, d.log()[-2000:]
