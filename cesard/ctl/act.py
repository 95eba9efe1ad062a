"""``cesarctl cancel``, ``retry``, ``prune``, ``models`` and ``health``: acting on jobs
and checking the service."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cesard import fsops, publish
from cesard import job as jobmod
from cesard.ctl.common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_NOTHING,
    EX_OK,
    EX_TEMPFAIL,
    CtlError,
    daemon_alive,
    denied,
    emit,
    load_json,
    locate,
    open_spool,
    read_status,
    tty,
    whoami,
)
from cesard.spool import (
    Spool,
)

# --- cancel / retry / prune / health ----------------------------------------------

def _request(spool: Spool, action: str, job_id: str, timeout: float) -> dict[str, Any]:
    """Drop a request and return the daemon's answer; CtlError when refused or unanswered."""
    try:
        name = publish.request(spool, action, job_id, whoami())
    except PermissionError as e:
        raise CtlError(denied(spool, e), EX_NOPERM) from e
    if not daemon_alive(read_status(spool)):
        raise CtlError(f"cesard is not running; the {action} request for {job_id} is queued "
                       "and applies when it starts", EX_TEMPFAIL)
    answer = publish.wait_reply(spool.dir("control"), name, timeout)
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
        raise CtlError(f"{action} of {job_id} refused: {publish.none_to(job_id, action)}",
                       EX_NOPERM) from None


def _act(args: argparse.Namespace, action: str, status: str) -> int:
    """cancel (a queued or running job) or retry (a failed one): exit 1 when there is
    nothing to do, else the daemon's answer."""
    spool, _ = open_spool(args)
    state = locate_to_act(spool, args.id, action)
    if action == "cancel" and state in ("done", "failed"):
        raise CtlError(f"job {args.id} already finished (in {state}/); nothing to cancel",
                       EX_NOTHING)
    if action == "retry" and state != "failed":
        raise CtlError(f"job {args.id} is in {state}/; only failed jobs can be retried",
                       EX_NOTHING)
    _request(spool, action, args.id, args.timeout)
    emit({"id": args.id, "status": status}, args, args.id)
    return EX_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    return _act(args, "cancel", "cancelled")


def cmd_retry(args: argparse.Namespace) -> int:
    return _act(args, "retry", "queued")


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


def cmd_token(args: argparse.Namespace) -> int:
    """``cesarctl token add NAME``: a new bearer token for cesard-http, printed once."""
    from cesard import config as configmod
    from cesard.http.tokens import TokenFileError, add

    path = args.tokens_file
    if not path:
        cfg, _ = configmod.load_for_client(args.config)
        path = str(cfg.http_settings["tokens_file"])
    try:
        token = add(path, args.name)
    except TokenFileError as e:
        raise CtlError(str(e), EX_DATAERR) from e
    except OSError as e:
        raise CtlError(f"{path}: {e.strerror}; the tokens file needs root (or its owner) "
                       "to write", EX_CANTCREAT) from e
    print(token)
    if tty():
        print(f"cesarctl: client {args.name!r} added to {path}; the token above is shown "
              "only now (the file keeps its SHA-256)", file=sys.stderr)
    return EX_OK
