"""``cesarctl follow``: a job's segments as they are decoded, then its result."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cesard import job as jobmod
from cesard.ctl.common import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    CtlError,
    daemon_alive,
    load_json,
    locate,
    open_spool,
    read_status,
    warn_if_down,
)
from cesard.spool import (
    CHECKPOINT,
    SEGMENTS,
    read_small,
)

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
