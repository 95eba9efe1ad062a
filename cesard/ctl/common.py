"""What every cesarctl command shares: exit codes, output for people and for scripts,
the spool and the daemon's status, finding a job, waiting for results."""

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

from cesard import config as configmod
from cesard import job as jobmod
from cesard.spool import (
    STATES,
    Spool,
    SpoolError,
    read_small,
)

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE = 0, 64, 65, 66, 69
EX_SOFTWARE, EX_CANTCREAT, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 70, 73, 75, 77, 78
EX_NOTHING = 1  # nothing to do: cancel of a finished job, retry of one that did not fail
EX_DOWN = 3  # status: the daemon is not running (as systemctl status says of a stopped unit)
# The one table of exit codes: --help, the man page and the README show it as it is here.
EXIT_CODES = """\
exit codes (sysexits.h where one fits):
   0  success
   1  nothing to do: cancel of a finished job, retry of a job that did not fail
   3  status: the daemon is not running (jobs still queue)
  64  usage error
  65  the job failed or was cancelled (submit --wait, wait, result, follow)
  66  no such file or job
  69  the spool does not exist
  70  internal error in cesarctl (a bug: please report it)
  73  the job could not be created in the spool
  75  not finished yet, or no answer in time: try again later
  77  permission denied (not in the spool's group, or another user's job)
  78  configuration error
health: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the monitoring-plugin convention)"""
STALE_STATUS_S = 30.0


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def tty() -> bool:
    return sys.stdout.isatty()


def emit(data: Any, args: argparse.Namespace, text: str | None = None) -> None:
    if args.json:
        print(dumps(data))
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


def my_queue(spool: Spool) -> list[dict[str, Any]] | None:
    """This user's entries of incoming/ as the daemon lists them (cesard.owners), where
    the spool lets members see only their own: None when there is no such view (the
    directory is listable, the daemon is not running, or nothing of this user waits)."""
    from cesard.hosts import view_path

    data = load_json(view_path(spool.dir("state"), os.geteuid()))
    if data is None:
        return [] if daemon_alive(read_status(spool)) else None
    entries = data.get("entries")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


MIN_ABBREV = 4  # characters of an id that may stand for it (a prefix or a suffix)


def resolve_id(spool: Spool, given: str) -> str:
    """The full id of a job named by its id, or by a unique prefix or suffix of it
    (``cesarctl show 5d7a``), as git and docker take abbreviations. CtlError(64) when
    several jobs match, naming them."""
    if not jobmod.valid_id(given) or len(given) < MIN_ABBREV or spool.locate(given):
        return given
    matches: set[str] = set()
    for state in STATES:
        try:
            with os.scandir(spool.dir(state)) as it:
                matches |= {e.name for e in it
                            if (e.name.startswith(given) or e.name.endswith(given))
                            and not e.name.startswith(".") and jobmod.valid_id(e.name)}
        except OSError:
            continue  # a state this user may not list (incoming/ in privacy: owner)
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
        raise CtlError(f"{given!r} names {len(matches)} jobs ({shown}); give more of the id",
                       EX_USAGE)
    return matches.pop() if matches else given


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
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]",
                       desc=f"0/{len(ids)} done, queued")
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
                                    + (f", running {running[0]}" if running
                                       else ", queued"))
                bar.refresh()
            if warn_at is not None and time.monotonic() > warn_at:
                warn_at = None
                if bar is not None:
                    with bar.external_write_mode():  # a line of its own, not into the bar
                        warn_if_down(spool)
                else:
                    warn_if_down(spool)
            if deadline is not None and time.monotonic() > deadline:
                missing = [i for i in ids if i not in results]
                raise CtlError(f"timed out waiting for {', '.join(missing)}; the jobs stay "
                               "queued", EX_TEMPFAIL)
            time.sleep(0.05)
    finally:
        if bar is not None:
            bar.close()


def dumps(data: Any) -> str:
    """JSON as cesarctl prints it: indented on a terminal, one line into a pipe (one
    document a line, for jq and scripts)."""
    return json.dumps(data, indent=2 if tty() else None, ensure_ascii=False)


def render(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return dumps(result)
    from cesard import outputs

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
                print(dumps(result))
            continue
        warning = (result.get("language_warning") or {}).get("message")
        if warning:
            print(f"cesarctl: job {job_id}: {warning}", file=sys.stderr)
        print(render(result, fmt))
    return code


def fmt_age(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def tsv(r: dict[str, Any] | tuple[Any, ...]) -> str:
    """One line of ``cesarctl list`` for scripts: id, state, status, file, owner. A
    catalogue row starts with state, id, status, file, owner (cesard.catalog.COLUMNS)."""
    state, job_id, status, file, owner = (
        r[:5] if isinstance(r, tuple)
        else (r["state"], r["id"], r.get("status"), r.get("file"), r.get("owner")))
    status = status or STATE_STATUS.get(state, state)
    return f"{job_id or '-'}\t{state}\t{status}\t{file or ''}\t{owner or ''}"


# What a job in a state without a result is doing (the STATUS column of 'cesarctl list').
STATE_STATUS = {"incoming": "queued", "processing": "running", "deferred": "retrying"}


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


def local_time(iso: str | None) -> str:
    """An ISO 8601 UTC time in the user's zone (terminals only; scripts get UTC)."""
    if not iso:
        return "-"
    try:
        return jobmod.parse_iso(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return iso


DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w, such as 30d")
    return float(m.group(1)) * UNIT_S[m.group(2)]
