"""The job catalogue behind ``cesarctl list`` (issue 13): a cache the daemon keeps in
state/catalog.sqlite, used only for names found in the same state directory."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable

from helpers import Daemon, fake_script, wait_until


def rows(d: Daemon) -> dict[str, tuple[str, str]]:
    path = d.spool / "state" / "catalog.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        return {n: (s, f) for n, s, f in db.execute("SELECT name, state, file FROM jobs")}
    except sqlite3.Error:
        return {}
    finally:
        db.close()


def listed(d: Daemon) -> dict[str, dict[str, object]]:
    r = d.ctl("list", "--json")
    assert r.returncode == 0, r.stderr
    return {str(x["id"]): x for x in json.loads(r.stdout)}


def test_list_takes_rows_from_the_catalogue_only_where_the_directories_agree(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    ids = [d.submit_bytes(f"c{i}.wav", fake_script(text=f"c{i}")) for i in range(3)]
    for i in ids:
        d.wait_result(i)
    wait_until(lambda: all(rows(d).get(i, ("",))[0] == "done" for i in ids), 20,
               "the catalogue rows")
    mode = stat.S_IMODE((d.spool / "state" / "catalog.sqlite").stat().st_mode)
    assert mode == 0o600  # privacy: owner: file names of every user are in it
    before = listed(d)
    assert {i: before[i]["file"] for i in ids} == {i: f"c{n}.wav" for n, i in enumerate(ids)}
    # The row is what list shows for a name in the same state (a marked row proves it)...
    db = sqlite3.connect(d.spool / "state" / "catalog.sqlite")
    with db:
        db.execute("UPDATE jobs SET file = 'from-the-catalogue' WHERE name = ?", (ids[0],))
    db.close()
    assert listed(d)[ids[0]]["file"] == "from-the-catalogue"
    # ...never for a job that moved (read from its files) or is gone (not shown).
    os.rename(d.spool / "done" / ids[0], d.spool / "failed" / ids[0])
    shutil.rmtree(d.spool / "done" / ids[1])
    now = listed(d)
    assert now[ids[0]]["state"] == "failed" and now[ids[0]]["file"] == "c0.wav"
    assert ids[1] not in now and now[ids[2]]["state"] == "done"
    # A catalogue that cannot be read costs speed, never a row.
    (d.spool / "state" / "catalog.sqlite").write_bytes(b"not a database")
    assert set(listed(d)) == {ids[0], ids[2]}


def test_status_counts_stay_true_when_jobs_are_pruned(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    ids = [d.submit_bytes(f"p{i}.wav", fake_script()) for i in range(2)]
    for i in ids:
        d.wait_result(i)

    def done_count() -> object:
        r = d.ctl("status", "--json")
        return json.loads(r.stdout)["queue"]["done"]
    wait_until(lambda: done_count() == 2, 10, "status to count 2 done")
    shutil.rmtree(d.spool / "done" / ids[0])  # what 'cesarctl prune' does
    assert done_count() == 1  # at once: the daemon's count is used only while done/ is unchanged
