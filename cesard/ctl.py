"""``cesarctl``: submit audio to a cesard spool and read the results.

When stdout is not a terminal it prints only what a script needs (ids,
transcripts, JSON); on a terminal it adds progress bars and tables. Exit
codes follow sysexits.h; ``health`` follows the monitoring-plugin convention.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import sys
import time
from pathlib import Path
from typing import Any

from cesard import __version__, fsops, outputs
from cesard import config as configmod
from cesard import job as jobmod
from cesard.spool import (
    CHECKPOINT,
    SEGMENTS,
    STATES,
    Spool,
    SpoolError,
    is_ignored_name,
    read_hosts,
    read_small,
)

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE = 0, 64, 65, 66, 69
EX_SOFTWARE, EX_CANTCREAT, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 70, 73, 75, 77, 78
STALE_STATUS_S = 30.0


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def tty() -> bool:
    return sys.stdout.isatty()


def emit(data: Any, args: argparse.Namespace, text: str | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2 if tty() else None, ensure_ascii=False))
    elif text is not None:
        if text:
            print(text)


def whoami() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# --- spool and daemon ------------------------------------------------------------

def open_spool(args: argparse.Namespace) -> tuple[Spool, configmod.Config]:
    """The spool and the configuration. A broken configuration file is the daemon's
    administrator's to fix: cesarctl warns and goes on with the spool it can still tell
    (``--spool``, ``$CESAR_SPOOL``, the file's ``spool``, the default); the daemon checks
    every option itself (``args.config_ok`` is False then)."""
    cfg, problem = configmod.load_for_client(args.config)
    args.config_ok = problem is None
    if problem is not None:
        print(f"cesarctl: warning: the configuration cannot be read ({problem}); going on "
              "with the built-in defaults and the spool it names, the daemon checks your "
              "options itself; tell the administrator", file=sys.stderr)
    spool = Spool(configmod.spool_path(cfg, args.spool))
    if not spool.root.exists():
        raise CtlError(f"spool {spool.root} does not exist; start cesard (it creates the "
                       "spool) or pass --spool / set CESAR_SPOOL", EX_UNAVAILABLE)
    if not os.access(spool.root, os.X_OK):
        raise CtlError(not_member(spool), EX_NOPERM)
    try:
        spool.check()
    except SpoolError as e:
        raise CtlError(str(e), EX_UNAVAILABLE) from e
    return spool, cfg


def spool_group(spool: Spool) -> str:
    try:
        return grp.getgrgid(spool.root.stat().st_gid).gr_name
    except (KeyError, OSError):
        return "cesar"


def not_member(spool: Spool) -> str:
    group = spool_group(spool)
    return (f"permission denied: {whoami()} is not a member of group '{group}', which may use "
            f"the spool {spool.root}; an administrator adds you with "
            f"'usermod -aG {group} {whoami()}' (then log in again)")


def denied(spool: Spool, e: OSError) -> str:
    """Why a write into the spool was refused: not a member, or something else."""
    try:
        gid = spool.root.stat().st_gid
    except OSError:
        gid = -1
    if gid not in (os.getegid(), *os.getgroups()):
        return not_member(spool)
    return (f"permission denied: {e.filename}: {e.strerror}; ask the administrator to check "
            f"the spool's modes and ACLs (cesard --init, or systemd-tmpfiles --create)")


def read_status(spool: Spool) -> dict[str, Any] | None:
    try:
        d = json.loads(read_small(spool.dir("state") / "status.json", 1 << 20))
        return d if isinstance(d, dict) else None
    except (OSError, ValueError, jobmod.JobError):
        return None


def daemon_alive(st: dict[str, Any] | None) -> bool:
    """The daemon wrote its status recently and is not stopped."""
    if not st or st.get("state") == "stopped":
        return False
    try:
        age = time.time() - jobmod.parse_iso(str(st["updated_at"])).timestamp()
    except (KeyError, ValueError):
        return False
    if st.get("host") == jobmod.hostname() and isinstance(st.get("pid"), int):
        if not Path(f"/proc/{st['pid']}").exists():
            return False
    return age < STALE_STATUS_S


def warn_if_down(spool: Spool) -> None:
    if not daemon_alive(read_status(spool)):
        print(f"cesarctl: warning: cesard is not running on spool {spool.root}; the job is "
              "queued and runs when the daemon starts", file=sys.stderr)


def load_json(path: Path) -> dict[str, Any] | None:
    """A job's JSON file (:func:`cesard.catalog.load_json`)."""
    from cesard import catalog  # sqlite3 and logging: only what needs them pays for them

    return catalog.load_json(path)


def locate(spool: Spool, job_id: str, mine: bool = True) -> tuple[str, Path]:
    """The job's state and directory. With ``mine``, CtlError(77) unless the kernel lets
    this user into it (its owner, an admin, root; every member in privacy: group)."""
    if not jobmod.valid_id(job_id):
        raise CtlError(f"invalid job id {job_id!r}: ids use only [A-Za-z0-9._-]", EX_USAGE)
    found = spool.locate(job_id)
    if found is None:
        raise CtlError(f"no job {job_id} in spool {spool.root}; 'cesarctl list' shows the "
                       "jobs", EX_NOINPUT)
    state, path = found
    if mine and path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise CtlError(f"job {job_id} belongs to another user; only its owner, root and "
                       "members of the daemon's admin_group may see it", EX_NOPERM)
    return found


# --- submit ------------------------------------------------------------------------

FLAGS = {"model": "--model", "language": "--language", "task": "--task",
         "priority": "--priority", "beam_size": "--beam-size",
         "initial_prompt": "--initial-prompt", "formats": "--format", "then": "--then"}


def as_flags(message: str) -> str:
    """An option error as the user typed it: "option 'beam_size'" → "--beam-size"."""
    for key, flag in FLAGS.items():
        message = message.replace(f"option {key!r}", flag)
    return message.replace("command line: ", "")


def check_model(cfg: configmod.Config, options: jobmod.JobOptions) -> None:
    """InvalidOption unless the daemon's configuration has the model and it speaks the
    language asked for (what the daemon would refuse later, said now)."""
    from cesard import models

    dirs = cfg.model_dirs
    if cfg.engine == "faster-whisper" and options.model not in dirs:
        raise jobmod.InvalidOption(
            f"option 'model': {options.model!r} is not configured (configured: "
            f"{', '.join(dirs)}); 'cesarctl models' lists them")
    jobmod.check_language(options, models.english_only(options.model, dirs.get(options.model)))

def cmd_submit(args: argparse.Namespace) -> int:
    spool, cfg = open_spool(args)
    opts: dict[str, Any] = {}
    for key in ("model", "language", "task", "priority", "beam_size", "initial_prompt"):
        v = getattr(args, key)
        if v is not None:
            opts[key] = v
    if args.format:
        fmts = [f for part in args.format for f in part.split(",") if f]
        opts["formats"] = [f for f in fmts if f != "json"]
    if args.word_timestamps:
        opts["word_timestamps"] = True
    if args.no_vad:
        opts["vad_filter"] = False
    if args.exclusive:
        opts["exclusive"] = True
    if args.then:
        opts["then"] = args.then
    try:
        options = jobmod.parse_options(opts, cfg.job_defaults(), where="command line")
        if args.config_ok:
            check_model(cfg, options)
            cfg.check_then(options)
    except jobmod.InvalidOption as e:
        raise CtlError(as_flags(str(e)), EX_USAGE) from e
    files = [Path(f) for f in args.files]
    for f in files:
        if not f.exists():
            raise CtlError(f"{f}: no such file", EX_NOINPUT)
        if not f.is_file():
            raise CtlError(f"{f}: not a regular file", EX_DATAERR)
        if not os.access(f, os.R_OK):
            raise CtlError(f"{f}: not readable", EX_NOINPUT)
    ids = []
    for f in files:
        try:
            ids.append(spool.submit(f, opts, whoami()))
        except PermissionError as e:
            raise CtlError(denied(spool, e), EX_NOPERM) from e
        except OSError as e:
            raise CtlError(f"cannot submit {f}: {e.strerror}", EX_CANTCREAT) from e
    if not args.wait:
        warn_if_down(spool)
        emit({"ids": ids}, args, "\n".join(ids))
        return EX_OK
    if tty():
        print("\n".join(ids), file=sys.stderr)
    fmt = "json" if args.json else (args.format[-1].split(",")[-1] if args.format else "txt")
    return wait_and_print(spool, ids, args.timeout, fmt)


# --- wait / result -----------------------------------------------------------------

def finished(spool: Spool, job_id: str) -> tuple[str, Path] | None:
    for state in ("done", "failed"):
        p = spool.dir(state) / job_id
        if (p / "result.json").exists():
            return state, p
    return None


def wait_for(spool: Spool, ids: list[str], timeout: float | None) -> dict[str, tuple[str, Path]]:
    """Poll until every job is in done/ or failed/; CtlError(75) past the timeout."""
    deadline = time.monotonic() + timeout if timeout else None
    # Warn once if nothing moves for a while and no daemon is there (it may be starting).
    warn_at: float | None = time.monotonic() + (
        5.0 if daemon_alive(read_status(spool)) else 0.0)
    results: dict[str, tuple[str, Path]] = {}
    bar = None
    if tty():
        try:
            from tqdm import tqdm
            bar = tqdm(total=100 * len(ids), unit="%", file=sys.stderr, leave=False,
                       # percent of all jobs, and elapsed time only: an ETA from the
                       # bar's own rate climbs while a job waits in the queue
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]")
        except ImportError:
            bar = None
    try:
        while True:
            for job_id in ids:
                if job_id not in results:
                    f = finished(spool, job_id)
                    if f:
                        results[job_id] = f
            if len(results) == len(ids):
                return results
            if bar is not None:
                st = read_status(spool) or {}
                prog = {r["id"]: r.get("progress", 0) for r in st.get("running", [])}
                total = sum(100 if i in results else 100 * prog.get(i, 0) for i in ids)
                bar.n = total
                running = [i for i in ids if i in prog]
                bar.set_description(f"{len(results)}/{len(ids)} done"
                                    + (f", running {running[0]}" if running else ""))
                bar.refresh()
            if warn_at is not None and time.monotonic() > warn_at:
                warn_at = None
                warn_if_down(spool)
            if deadline is not None and time.monotonic() > deadline:
                missing = [i for i in ids if i not in results]
                raise CtlError(f"timed out waiting for {', '.join(missing)}; the jobs stay "
                               "queued", EX_TEMPFAIL)
            time.sleep(0.05)
    finally:
        if bar is not None:
            bar.close()


def render(result: dict[str, Any], fmt: str) -> str:
    out = outputs.RENDER[fmt](result)
    return out[:-1] if out.endswith("\n") else out


def wait_and_print(spool: Spool, ids: list[str], timeout: float | None, fmt: str) -> int:
    code = EX_OK
    done = wait_for(spool, ids, timeout)
    for job_id in ids:
        state, path = done[job_id]
        result = load_json(path / "result.json") or {}
        if state != "done":
            code = EX_DATAERR
            err = result.get("error") or {}
            print(f"cesarctl: job {job_id} {result.get('status', 'failed')}: "
                  f"{err.get('type')}: {err.get('message')}", file=sys.stderr)
            if fmt == "json":
                print(json.dumps(result, ensure_ascii=False))
            continue
        print(render(result, fmt))
    return code


def cmd_wait(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    for job_id in args.ids:
        locate(spool, job_id)
    done = wait_for(spool, args.ids, args.timeout)
    code = EX_OK
    rows = []
    for job_id in args.ids:
        state, path = done[job_id]
        result = load_json(path / "result.json") or {}
        rows.append({"id": job_id, "status": result.get("status", state)})
        if state != "done":
            code = EX_DATAERR
    emit(rows, args, "\n".join(f"{r['id']} {r['status']}" for r in rows))
    return code


def cmd_result(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    state, path = locate(spool, args.id)
    if state not in ("done", "failed"):
        raise CtlError(f"job {args.id} is not finished (it is in {state}/); "
                       f"'cesarctl wait {args.id}' waits for it", EX_TEMPFAIL)
    result = load_json(path / "result.json")
    if result is None:
        raise CtlError(f"{path}/result.json is missing or unreadable", EX_SOFTWARE)
    fmt = "json" if args.json else args.format
    if state != "done":
        err = result.get("error") or {}
        print(f"cesarctl: job {args.id} {result.get('status')}: {err.get('type')}: "
              f"{err.get('message')}", file=sys.stderr)
        if fmt == "json":
            print(json.dumps(result, ensure_ascii=False))
        return EX_DATAERR
    print(render(result, fmt))
    return EX_OK


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
        return EX_OK if alive else 3
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
    print("\n".join(lines))
    return EX_OK if alive else 3


def fmt_age(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


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
    if hidden and tty():
        print(f"cesarctl: {', '.join(hidden)}/ cannot be listed by {whoami()} (privacy: "
              "owner); 'cesarctl show ID' finds a queued job of yours", file=sys.stderr)
    if args.json or tty():
        dicts = [r if isinstance(r, dict) else catalog.as_dict(r) for r in rows]
        if args.json:
            emit(dicts, args)
            return EX_OK
        running = {r["id"]: r for r in (read_status(spool) or {}).get("running", [])}
        print(table(dicts, running) if dicts else "no jobs")
        return EX_OK
    if rows:
        print("\n".join(tsv(r) for r in rows))
    return EX_OK


def tsv(r: dict[str, Any] | tuple[Any, ...]) -> str:
    """One line of ``cesarctl list`` for scripts: id, state, status, file, owner. A
    catalogue row starts with state, id, status, file, owner (cesard.catalog.COLUMNS)."""
    state, job_id, status, file, owner = (
        r[:5] if isinstance(r, tuple)
        else (r["state"], r["id"], r.get("status"), r.get("file"), r.get("owner")))
    return f"{job_id or '-'}\t{state}\t{status or ''}\t{file or ''}\t{owner or ''}"


COLOURS = {"done": "32", "failed": "31", "cancelled": "33", "processing": "36",
           "deferred": "35"}


def colour(text: str, state: str) -> str:
    """ANSI colour on a terminal, never when NO_COLOR is set."""
    code = COLOURS.get(state)
    if not code or os.environ.get("NO_COLOR") or not tty():
        return text
    return f"\033[{code}m{text}\033[0m"


def ago(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    try:
        return fmt_age(max(0.0, now - jobmod.parse_iso(iso).timestamp())) + " ago"
    except ValueError:
        return "-"


def table(rows: list[dict[str, Any]], running: dict[str, dict[str, Any]]) -> str:
    """``cesarctl list`` for people: id, state, owner, name, audio, age, progress
    (tabulate: a maintained table formatter)."""
    from tabulate import tabulate

    now = time.time()
    out = []
    for r in rows:
        state = r.get("status") or r["state"]
        prog = running.get(r["id"] or "", {}).get("progress")
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
    if args.json or not tty():
        print(json.dumps(data, indent=2, ensure_ascii=False))  # what scripts read
    else:
        print(show_text(data))
    return EX_OK


def local_time(iso: str | None) -> str:
    """An ISO 8601 UTC time in the user's zone (terminals only; scripts get UTC)."""
    if not iso:
        return "-"
    try:
        return jobmod.parse_iso(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return iso


def show_text(data: dict[str, Any]) -> str:
    """``cesarctl show`` for a person: the facts that matter, one per line."""
    job = data.get("job") or {}
    res = data.get("result") or {}
    opts = res.get("options") or job.get("options") or {}
    owner = (res.get("owner") or {}).get("name") or job.get("submitter") or "-"
    rows = [("job", data["id"]), ("state", data["state"] + (
        f" ({res['status']})" if res.get("status") else "")),
        ("owner", owner), ("file", (res.get("source") or {}).get("name")
                           or job.get("source_name") or "-"),
        ("submitted", local_time(job.get("submitted_at")))]
    if opts:
        rows.append(("options", ", ".join(f"{k}={v}" for k, v in opts.items()
                                          if v not in (None, False, []))))
    if "progress" in data:
        p = data["progress"]
        rows.append(("progress", f"{p.get('progress', 0) * 100:.0f}%"))
    if res.get("finished_at"):
        rows.append(("finished", local_time(res["finished_at"])))
    if res.get("duration"):
        rows.append(("audio", f"{res['duration']:.1f} s, language {res.get('language')}"))
    if res.get("error"):
        rows.append(("error", f"{res['error'].get('type')}: {res['error'].get('message')}"))
    if res.get("text"):
        text = res["text"]
        rows.append(("text", text if len(text) <= 200 else text[:197] + "..."))
    rows.append(("path", data["path"]))
    return "\n".join(f"{k + ':':<11}{v}" for k, v in rows)


# --- follow ----------------------------------------------------------------------

def fmt_ts(t: float) -> str:
    return f"{int(t // 60):02d}:{t % 60:04.1f}"


def print_segment(seg: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(seg, ensure_ascii=False), flush=True)
    else:
        print(f"[{fmt_ts(seg['start'])} -> {fmt_ts(seg['end'])}] {seg['text']}", flush=True)


def cmd_follow(args: argparse.Namespace) -> int:
    """Print a job's segments as the worker decodes them, then its final state.

    The worker appends them to ``segments.jsonl`` in the job's directory; this reads
    that file from where it left off whenever inotify says the directory changed (and
    twice a second regardless, as the directory moves between states).
    """
    from inotify_simple import INotify
    from inotify_simple import flags as F

    spool, _ = open_spool(args)
    locate(spool, args.id)  # 66 unknown, 77 another user's
    deadline = time.monotonic() + args.timeout if args.timeout else None
    offset = printed = 0
    watched: Path | None = None
    ino = INotify()
    wd = -1
    warned = False
    missing_since: float | None = None
    try:
        while True:
            found = spool.locate(args.id)
            if found is None:
                # Between two renames (recovery passes through processing/ID~rTOKEN) a
                # job is briefly under no name of its own; gone for 2 s means gone.
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > 2.0:
                    raise CtlError(f"job {args.id} left the spool (pruned?)", EX_NOINPUT)
                time.sleep(0.05)
                continue
            missing_since = None
            state, path = found
            if path != watched:
                if wd >= 0:
                    try:
                        ino.rm_watch(wd)
                    except OSError:
                        pass
                try:
                    wd = ino.add_watch(path, F.MODIFY | F.CREATE | F.MOVED_TO | F.MOVE_SELF)
                except OSError:
                    wd = -1
                watched = path
            offset, printed = _follow_read(path / SEGMENTS, offset, printed, args.json)
            if state in ("done", "failed") and (path / "result.json").exists():
                return _follow_end(args, load_json(path / "result.json") or {}, printed)
            if not warned and state == "incoming" and not daemon_alive(read_status(spool)):
                warn_if_down(spool)
                warned = True
            if deadline is not None and time.monotonic() > deadline:
                raise CtlError(f"timed out following {args.id} (it is in {state}/)",
                               EX_TEMPFAIL)
            ino.read(timeout=500)
    finally:
        ino.close()


def _follow_read(path: Path, offset: int, printed: int, as_json: bool) -> tuple[int, int]:
    """Print the complete new lines of ``segments.jsonl``; the new offset and count."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return offset, printed
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < offset:  # a new attempt: resumed from its checkpoint, or from the start
            kept = _checkpoint_kept(path.parent, size)
            if kept:
                print(f"cesarctl: job resumed at {kept[2]:.1f} s (a new attempt keeps the "
                      "segments before it)", file=sys.stderr)
                offset, printed = kept[0], kept[1]
            else:
                print("cesarctl: job restarted (attempt after a failure or a restart)",
                      file=sys.stderr)
                offset, printed = 0, 0
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            seg = json.loads(line)
        except ValueError:
            continue
        print_segment(seg, as_json)
        printed += 1
    return offset + end, printed


def _checkpoint_kept(job_dir: Path, size: int) -> tuple[int, int, float] | None:
    """(bytes, segments, seconds) of segments.jsonl a resumed attempt kept, if any."""
    try:
        ck = json.loads(read_small(job_dir / CHECKPOINT, 1 << 16))
        kept = int(ck["bytes"]), int(ck["segments"]), float(ck["resume_at"])
    except (OSError, ValueError, KeyError, TypeError, jobmod.JobError):
        return None
    return kept if 0 < kept[0] <= size else None


def _follow_end(args: argparse.Namespace, result: dict[str, Any], printed: int) -> int:
    segments = result.get("segments") or []
    if printed == 0:  # finished before we looked (or no live file): print them all
        for seg in segments:
            print_segment(seg, args.json)
    elif printed != len(segments):
        print(f"cesarctl: the final transcript differs from the live segments; "
              f"'cesarctl result {args.id}' prints it", file=sys.stderr)
    status = str(result.get("status") or "failed")
    err = result.get("error") or {}
    if args.json:
        print(json.dumps({"id": args.id, "status": status, "error": err or None}))
    else:
        tail = f": {err.get('type')}: {err.get('message')}" if err else ""
        print(f"cesarctl: job {args.id} {status}{tail}", file=sys.stderr)
    return EX_OK if status == "done" else EX_DATAERR


# --- cancel / retry / prune / health ----------------------------------------------

def _request(spool: Spool, action: str, job_id: str, timeout: float) -> dict[str, Any]:
    """Drop a request and return the daemon's answer; CtlError when refused or unanswered."""
    from cesard import control

    try:
        name = spool.request(action, job_id, whoami())
    except PermissionError as e:
        raise CtlError(denied(spool, e), EX_NOPERM) from e
    if not daemon_alive(read_status(spool)):
        raise CtlError(f"cesard is not running; the {action} request for {job_id} is queued "
                       "and applies when it starts", EX_TEMPFAIL)
    answer = control.wait_reply(spool.dir("control"), name, timeout)
    if answer is None:
        raise CtlError(f"{action} of {job_id} requested; the daemon has not answered within "
                       f"{timeout:g} s", EX_TEMPFAIL)
    if not answer.get("ok"):
        code = EX_NOPERM if answer.get("denied") else EX_DATAERR
        raise CtlError(f"{action} of {job_id} refused: {answer.get('message')}", code)
    return answer


def locate_to_act(spool: Spool, job_id: str, action: str) -> str:
    """The state of a job to cancel or retry; the daemon decides who may. A job that is
    not there gets the daemon's answer for a job that is not one's own (exit 77): a guessed
    id tells nothing."""
    try:
        return locate(spool, job_id, mine=False)[0]
    except CtlError as e:
        if e.code != EX_NOINPUT:
            raise
        from cesard import control

        raise CtlError(f"{action} of {job_id} refused: {control.none_to(job_id, action)}",
                       EX_NOPERM) from None


def cmd_cancel(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    state = locate_to_act(spool, args.id, "cancel")
    if state in ("done", "failed"):
        raise CtlError(f"job {args.id} already finished (in {state}/); nothing to cancel",
                       EX_DATAERR)
    _request(spool, "cancel", args.id, args.timeout)
    emit({"id": args.id, "status": "cancelled"}, args, args.id)
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    state = locate_to_act(spool, args.id, "retry")
    if state != "failed":
        raise CtlError(f"job {args.id} is in {state}/; only failed jobs can be retried",
                       EX_DATAERR)
    _request(spool, "retry", args.id, args.timeout)
    emit({"id": args.id, "status": "queued"}, args, args.id)
    return EX_OK


DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w, such as 30d")
    return float(m.group(1)) * UNIT_S[m.group(2)]


def cmd_prune(args: argparse.Namespace) -> int:
    spool, _ = open_spool(args)
    cutoff = time.time() - args.older_than
    states = [args.state] if args.state else ["done", "failed"]
    removed = []
    for state in states:
        for name in list(spool.scan(state)):
            path = spool.dir(state) / name
            try:
                mtime = path.lstat().st_mtime
            except FileNotFoundError:
                continue
            res = load_json(path / "result.json") if path.is_dir() else None
            when = mtime
            if res and res.get("finished_at"):
                try:
                    when = jobmod.parse_iso(str(res["finished_at"])).timestamp()
                except ValueError:
                    pass
            if when >= cutoff:
                continue
            removed.append({"id": name, "state": state})
            if args.dry_run:
                continue
            # Rename out of the state first so no half-deleted entry is ever visible.
            trash = spool.dir("tmp") / f".prune-{name}-{os.getpid()}-{time.monotonic_ns()}"
            try:
                os.rename(path, trash)
            except PermissionError as e:
                raise CtlError(f"permission denied removing {path}: run prune as the daemon's "
                               "user (cesar) or root", EX_NOPERM) from e
            except FileNotFoundError:
                continue
            fsops.remove_tree(trash)  # any depth, never following a link
    ids = "\n".join(f"{r['id']}" for r in removed)
    emit(removed, args, ids if not tty() else "\n".join(filter(None, [
        ids, f"{'would remove' if args.dry_run else 'removed'} {len(removed)} job(s)"])))
    return EX_OK


def cmd_models(args: argparse.Namespace) -> int:
    """The daemon's models (from its status), else those of the configuration."""
    from cesard import models

    spool, cfg = open_spool(args)
    st = read_status(spool)
    rows: list[dict[str, Any]]
    if daemon_alive(st) and st and isinstance(st.get("models"), list):
        rows = st["models"]
    else:
        rows = [dict(m.to_dict(), workers=[]) for m in models.describe(cfg.model_dirs)]
    if args.json or not tty():
        if args.json:
            emit(rows, args)
        else:
            for r in rows:
                print(f"{r['name']}\t{r['languages']}\t{r.get('bytes') or ''}\t{r['path']}\t"
                      + ",".join(map(str, r.get("workers") or [])))
        return EX_OK
    for r in rows:
        size = f"{r['bytes'] / 1e6:.0f} MB" if r.get("bytes") else "not built yet"
        held = ", ".join(map(str, r.get("workers") or [])) or "-"
        print(f"{r['name']:<12} {r['languages']:<13} {size:>13}  workers: {held}\n"
              f"{'':<12} {r['path']}")
    return EX_OK


def health(args: argparse.Namespace) -> tuple[int, str]:
    """The monitoring-plugin verdict: its exit code and its one line."""
    try:
        spool, cfg = open_spool(args)
    except CtlError as e:
        return 3, f"CESARD UNKNOWN - {e}"
    if fsops.read_only(spool.root):
        return 2, (f"CESARD CRITICAL - spool {spool.root} is read-only: cesard pauses every "
                   "claim and result until it is writable again (remount it read-write; an "
                   "ext4 error remounts it read-only: check the disk)")
    st = read_status(spool)
    if st is None:
        return 2, f"CESARD CRITICAL - no status in {spool.root}/state; is cesard running?"
    if not daemon_alive(st):
        return 2, ("CESARD CRITICAL - cesard is not running or stopped updating its status "
                   f"(last update {st.get('updated_at')})")
    q = st.get("queue", {})
    backlog = int(q.get("incoming", 0)) + int(q.get("deferred", 0))
    cap = int(st.get("queue_capacity") or cfg.queue_capacity)
    fin = st.get("finished_since_start", {})
    done, failed = int(fin.get("done", 0)), int(fin.get("failed", 0))
    rate = failed / (done + failed) if done + failed else 0.0
    perf = (f"| backlog={backlog};{int(cap * 0.8)};{cap};0 done={done}c failed={failed}c "
            f"failure_rate={rate:.3f}")
    msg = f"backlog {backlog}/{cap}, {done} done, {failed} failed since start"
    if backlog >= cap or st.get("disk_full"):
        full = ", spool full" if st.get("disk_full") else ""
        return 2, f"CESARD CRITICAL - {msg}{full} {perf}"
    if backlog >= 0.8 * cap or (done + failed >= 10 and rate > 0.5):
        return 1, f"CESARD WARNING - {msg} {perf}"
    return 0, f"CESARD OK - {msg} {perf}"


HEALTH = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def cmd_health(args: argparse.Namespace) -> int:
    code, line = health(args)
    if args.json:
        print(json.dumps({"status": HEALTH[code], "code": code, "message": line}))
    else:
        print(line)
    return code


# --- argument parsing ------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: these may stand before or after the subcommand without one hiding the other.
    common.add_argument("--spool", default=argparse.SUPPRESS,
                        help="spool directory (default: $CESAR_SPOOL, the config, "
                        "/var/spool/cesar)")
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="cesard configuration to read the spool from")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")
    p = argparse.ArgumentParser(prog="cesarctl", description="Client for the cesard spool.",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"cesarctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", parents=[common], help="queue audio files; print job ids")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--model", help="a model the daemon has ('cesarctl models'); default: "
                   "the configuration's")
    s.add_argument("--language", help="language code (de, fr, ...), or auto to detect "
                   "(multilingual models)")
    s.add_argument("--task", choices=jobmod.TASKS,
                   help="translate: into English (multilingual models)")
    s.add_argument("--priority", choices=jobmod.PRIORITIES,
                   help="claim order: high before normal before low (default normal)")
    s.add_argument("--format", action="append",
                   help="also write srt/vtt; with --wait, the format printed (txt, srt, vtt, "
                   "json)")
    s.add_argument("--word-timestamps", action="store_true",
                   help="a start and end time for every word in result.json")
    s.add_argument("--beam-size", type=int, dest="beam_size", metavar="N",
                   help="beam search width, 1 to 20 (default 5)")
    s.add_argument("--initial-prompt", dest="initial_prompt", metavar="TEXT",
                   help="text that primes the vocabulary (names, jargon)")
    s.add_argument("--no-vad", action="store_true", help="do not filter silence")
    s.add_argument("--exclusive", action="store_true", help="run with no other job beside it")
    s.add_argument("--then", action="append", metavar="HOOK",
                   help="run this named hook (hooks.named in the configuration) when the job "
                   "is done; repeatable")
    s.add_argument("--wait", action="store_true", help="wait and print the transcript")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="with --wait: give up after this long (30s, 10m, 2h; a bare number "
                   "is seconds); the job stays queued")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("status", parents=[common], help="daemon and queue status")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("list", parents=[common], help="list jobs")
    s.add_argument("--state", choices=STATES)
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[common], help="a job's details")
    s.add_argument("id")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("result", parents=[common], help="print a finished job's transcript")
    s.add_argument("id")
    s.add_argument("--format", choices=outputs.RENDER, default="txt")
    s.set_defaults(func=cmd_result)
    s = sub.add_parser("follow", parents=[common],
                       help="print a job's segments as they are transcribed, then its state "
                       "(exit 0 done, 65 failed)")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="give up after this long (default: follow until it ends)")
    s.set_defaults(func=cmd_follow)
    s = sub.add_parser("wait", parents=[common], help="wait until jobs finish")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="give up after this long (30s, 10m, 2h; default: wait for ever)")
    s.set_defaults(func=cmd_wait)
    s = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, default=10.0, metavar="DURATION",
                   help="how long to wait for the daemon's answer (default 10s)")
    s.set_defaults(func=cmd_cancel)
    s = sub.add_parser("retry", parents=[common], help="queue a failed job again")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, default=10.0, metavar="DURATION",
                   help="how long to wait for the daemon's answer (default 10s)")
    s.set_defaults(func=cmd_retry)
    s = sub.add_parser("prune", parents=[common], help="remove old finished jobs")
    s.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    s.add_argument("--state", choices=("done", "failed"))
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(func=cmd_prune)
    s = sub.add_parser("models", parents=[common],
                       help="models: name, languages, size on disk, path, workers holding it")
    s.set_defaults(func=cmd_models)
    s = sub.add_parser("health", parents=[common],
                       help="one line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    s.set_defaults(func=cmd_health)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code == 2 else int(e.code or 0)
    for key, default in (("spool", None), ("config", None), ("json", False)):
        if not hasattr(args, key):
            setattr(args, key, default)
    try:
        code: int = args.func(args)
        return code
    except CtlError as e:
        print(f"cesarctl: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `cesarctl list --json | head`: the reader left. Point stdout at /dev/null so
        # that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
