"""``cesarctl status``, ``list`` and ``show``: the queue and its jobs, for people (on a
terminal) and for scripts (TSV, JSON)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cesard import job as jobmod
from cesard.ctl.common import (
    EX_DOWN,
    EX_OK,
    ago,
    colour,
    daemon_alive,
    dumps,
    emit,
    fmt_age,
    load_json,
    local_time,
    locate,
    my_queue,
    open_spool,
    read_status,
    tsv,
    tty,
    whoami,
)
from cesard.entries import is_ignored_name
from cesard.hosts import read_hosts
from cesard.spool import STATES, Spool

# --- status / list / show ------------------------------------------------------

def count(spool: Spool, state: str, st: dict[str, Any] | None) -> int | None:
    """Entries in a state directory; where this user may not list it (incoming/ in
    privacy: owner), the daemon's count from status.json, or None."""
    try:
        return sum(1 for n in spool.scan(state)
                   if not (state == "incoming" and is_ignored_name(n))
                   and not n.startswith(".") and "~" not in n)
    except PermissionError:
        q = (st or {}).get("queue") or {}
        return q.get(state) if isinstance(q.get(state), int) else None


def daemon_count(spool: Spool, state: str, st: dict[str, Any] | None) -> int | None:
    """The running daemon's count of incoming/, done/ or failed/ from status.json, when the
    directory has not changed since the daemon wrote it (it counts its own claims and
    finishes; listing 100,000 names here took most of a second); else None."""
    n = ((st or {}).get("queue") or {}).get(state)
    if not isinstance(n, int) or (state == "incoming" and (st or {}).get("indexing") is not False):
        return None
    try:
        written = os.stat(spool.dir("state") / "status.json").st_mtime_ns
        changed = os.stat(spool.dir(state)).st_mtime_ns
    except OSError:
        return None
    # Both times are the filesystem's: the directory must be older than the file by more
    # than a loop step, so a change the daemon had not read yet is never taken as counted.
    return n if changed < written - 500_000_000 else None


def cmd_status(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    st = read_status(spool)
    alive = daemon_alive(st)
    counts: dict[str, int | None] = {}
    for state in STATES:
        n = (daemon_count(spool, state, st) if alive and state in ("incoming", "done", "failed")
             else None)
        counts[state] = n if n is not None else count(spool, state, st)
    data: dict[str, Any] = {"spool": str(spool.root),
                            # "starting", "running" or "stopping" (after SIGTERM), as it says
                            "daemon": str((st or {}).get("state") or "running") if alive
                            else "not running",
                            "queue": counts, "status": st}
    if alive and st:
        try:
            started = jobmod.parse_iso(str(st["started_at"])).timestamp()
            data["uptime_s"] = round(time.time() - started, 1)
        except (KeyError, ValueError):
            pass
    # Every daemon on the spool (several hosts on shared storage), each its own status.
    hosts: list[dict[str, Any]] = [{"host": h.get("host"), "pid": h.get("pid"),
              "state": str(h.get("state") or "running") if daemon_alive(h) else "not running",
              "updated_at": h.get("updated_at"), "workers": len(h.get("workers") or []),
              "running": [r.get("id") for r in h.get("running") or []]}
             for h in read_hosts(spool.dir("state"))]
    data["hosts"] = hosts
    if args.json or not tty():
        if args.json:
            emit(data, args)
        else:
            print(f"daemon {data['daemon']}")
            for s in STATES:
                print(f"{s} {'-' if counts[s] is None else counts[s]}")
        return EX_OK if alive else EX_DOWN
    lines = [f"spool:   {spool.root}"]
    if alive and st:
        started = jobmod.parse_iso(st["started_at"]).timestamp()
        lines.append(f"daemon:  {data['daemon']}, pid {st['pid']} on {st['host']}, up "
                     f"{fmt_age(time.time() - started)}, engine {st['engine']} "
                     f"({st['model']}), {len(st['workers'])} worker(s)")
    else:
        lines.append("daemon:  not running")
    if alive and st:
        for w in st.get("workers", []):
            lines.append(f"worker:  {w['pid']} on {w.get('device', 'cpu')}, models "
                         f"{', '.join(w.get('models') or []) or '-'}"
                         + (f", running {w['job']}" if w.get("job") else ""))
    if len(hosts) > 1 or (hosts and not alive):
        for h in hosts:
            lines.append(f"host:    {h['host']}: {h['state']}, pid {h['pid']}, "
                         f"{h['workers']} worker(s), {len(h['running'])} running, status "
                         f"{ago(h['updated_at'], time.time())}")
    lines.append("queue:   " + ", ".join(
        f"{'?' if counts[s] is None else counts[s]} {s}" for s in STATES))
    if st and alive:
        if st.get("oldest_queued_age_s") is not None:
            lines.append(f"oldest:  queued {fmt_age(st['oldest_queued_age_s'])} ago")
        for r in st.get("running", []):
            eta = f", ETA {fmt_age(r['eta_s'])}" if r.get("eta_s") is not None else ""
            file = f" {r['file']}" if r.get("file") else ""
            lines.append(f"running: {r['id']}{file} {r['progress'] * 100:.0f}%{eta}")
        for r in st.get("waiting", []):
            file = f" {r['file']}" if r.get("file") else ""
            lines.append(f"waiting: {r['id']}{file} for worker {r['worker']}, busy with "
                         f"another job ({fmt_age(r['waited_s'])})")
    print("\n".join(lines))
    return EX_OK if alive else EX_DOWN


def cmd_list(args: argparse.Namespace) -> int:
    from cesard import catalog

    spool, _ = open_spool(args)
    states = [args.state] if args.state else list(STATES)
    # Rows the daemon keeps (cesard/catalog.py), used only for names listed below in the
    # same state; readable by those who may see every job (the daemon's user, root, the
    # group in privacy: group).
    known = catalog.read(spool, args.state, full=args.json or tty())
    rows: list[dict[str, Any] | tuple[Any, ...]] = []
    hidden = []
    for state in states:
        try:
            names = sorted(spool.scan(state))
        except PermissionError:
            hidden.append(state)  # incoming/ in privacy: owner: members may not list it
            continue
        for name in names:
            row = known.get(name)  # (the catalogue holds no name skipped just below)
            if row is not None and row[catalog.STATE] == state:
                rows.append(row)  # the daemon's catalogue, for a name found in this state
                continue
            if "~" in name or (state == "incoming" and is_ignored_name(name)):
                continue
            path = spool.dir(state) / name
            if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
                continue  # another user's job (privacy: owner)
            try:
                rows.append(catalog.describe(spool, state, name))
            except FileNotFoundError:
                continue  # moved on while we looked
    if "incoming" in hidden:
        # privacy: owner: the daemon's view of this member's own queued entries
        mine = my_queue(spool)
        if mine is not None:
            hidden.remove("incoming")
            listed = {r[1] if isinstance(r, tuple) else r.get("id") for r in rows}
            rows[:0] = [{"id": e.get("id"), "state": "incoming", "status": e.get("state"),
                         "file": e.get("name"), "owner": whoami(),
                         "submitted_at": e.get("submitted_at"),
                         "priority": e.get("priority"), "waiting": e.get("why")}
                        for e in mine if e.get("id") is None or e.get("id") not in listed]
    if hidden and tty() and not daemon_alive(read_status(spool)):
        print(f"cesarctl: {', '.join(hidden)}/ cannot be listed by {whoami()} (privacy: "
              "owner) and the daemon, which shows you your queued jobs, is not running; "
              "'cesarctl show ID' finds a queued job of yours", file=sys.stderr)
    if args.json or tty():
        dicts = [r if isinstance(r, dict) else catalog.as_dict(r) for r in rows]
        if args.json:
            emit(dicts, args)
            return EX_OK
        st = read_status(spool) or {}
        running = {r["id"]: r for r in st.get("running", [])}
        running.update({r["id"]: dict(r, waiting=True) for r in st.get("waiting", [])})
        print(table(dicts, running) if dicts else "no jobs")
        for r in dicts:
            if r.get("waiting"):
                print(f"\n{r.get('file')} waits: {r['waiting']}")
        return EX_OK
    if rows:
        print("\n".join(tsv(r) for r in rows))
    return EX_OK


def table(rows: list[dict[str, Any]], running: dict[str, dict[str, Any]]) -> str:
    """``cesarctl list`` for people: id, state, owner, name, audio, age, progress
    (tabulate: a maintained table formatter)."""
    from tabulate import tabulate

    now = time.time()
    out = []
    for r in rows:
        state = r.get("status") or r["state"]
        live = running.get(r["id"] or "", {})
        prog = live.get("progress")
        if live.get("waiting"):
            state = "waiting"  # claimed for a worker that is busy with another job
        out.append([r["id"] or "-", colour(state, state), r.get("owner") or "-",
                    r.get("file") or "-",
                    f"{r['duration']:.0f} s" if r.get("duration") else "-",
                    ago(r.get("finished_at") or r.get("submitted_at"), now),
                    f"{prog * 100:.0f}%" if prog is not None else
                    ("100%" if state == "done" else "")])
    return str(tabulate(out, headers=["ID", "STATE", "OWNER", "NAME", "AUDIO", "AGE",
                                      "PROGRESS"], tablefmt="plain"))


def cmd_show(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    state, path = locate(spool, args.id)
    data: dict[str, Any] = {"id": args.id, "state": state, "path": str(path),
                            "job": load_json(path / "job.json")}
    result = load_json(path / "result.json")
    if result is not None:
        data["result"] = {k: v for k, v in result.items() if k not in ("segments",)}
    if state == "processing":
        st = read_status(spool) or {}
        for r in st.get("running", []):
            if r["id"] == args.id:
                data["progress"] = r
        for r in st.get("waiting", []):
            if r["id"] == args.id:
                data["waiting"] = r
    if args.json or not tty():
        print(dumps(data))  # what scripts read
    else:
        print(show_text(data))
    return EX_OK


def show_text(data: dict[str, Any]) -> str:
    """``cesarctl show`` for a person: the facts that matter, one per line."""
    job = data.get("job") or {}
    res = data.get("result") or {}
    opts = res.get("options") or job.get("options") or {}
    owner = (res.get("owner") or {}).get("name") or job.get("submitter") or "-"
    status = res.get("status")
    rows = [("job", data["id"]), ("state", data["state"] + (
        f" ({status})" if status and status != data["state"] else "")),
        ("owner", owner), ("file", (res.get("source") or {}).get("name")
                           or job.get("source_name") or "-"),
        ("submitted", local_time(job.get("submitted_at")))]
    if opts:
        rows.append(("options", ", ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in opts.items()
            if v not in (None, False, []))))
    if "progress" in data:
        p = data["progress"]
        rows.append(("progress", f"{p.get('progress', 0) * 100:.0f}%"))
    if "waiting" in data:
        rows.append(("progress", f"waiting for worker {data['waiting']['worker']}, busy "
                                 "with another job"))
    if res.get("finished_at"):
        rows.append(("finished", local_time(res["finished_at"])))
    if res.get("duration"):
        rows.append(("audio", f"{res['duration']:.1f} s, language {res.get('language')}"))
    if res.get("speakers"):
        rows.append(("speakers", ", ".join(
            f"{str(sp['id']).replace('SPEAKER_', 'Speaker ')} {sp['talk_s']:.0f} s"
            for sp in res["speakers"])))
    if (res.get("diarization") or {}).get("error"):
        rows.append(("speakers", f"diarization failed: {res['diarization']['error']}"))
    if res.get("language_fallback"):
        fb = res["language_fallback"]
        rows.append(("model", f"{fb['to']}: {fb['from']} knows only English and "
                              f"{fb['to']} heard language {fb['detected']!r}"))
    if (res.get("language_warning") or {}).get("message"):
        rows.append(("warning", res["language_warning"]["message"]))
    if res.get("error"):
        rows.append(("error", f"{res['error'].get('type')}: {res['error'].get('message')}"))
    if res.get("text"):
        text = res["text"]
        rows.append(("text", text if len(text) <= 200 else text[:197] + "..."))
    rows.append(("path", data["path"]))
    return "\n".join(f"{k + ':':<11}{v}" for k, v in rows)
