"""``cesarctl submit``, ``wait`` and ``result``: jobs in, transcripts out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cesard import config as configmod
from cesard import job as jobmod
from cesard import publish
from cesard.ctl.common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    CtlError,
    denied,
    emit,
    load_json,
    locate,
    open_spool,
    render,
    tty,
    wait_and_print,
    wait_for,
    warn_if_down,
    whoami,
)

# --- submit ------------------------------------------------------------------------

FLAGS = {"speakers": "--speakers", "min_speakers": "--min-speakers",
         "max_speakers": "--max-speakers", "diarize": "--diarize", "model": "--model",
         "language": "--language", "task": "--task",
         "priority": "--priority", "beam_size": "--beam-size",
         "initial_prompt": "--initial-prompt", "formats": "--format", "then": "--then"}


def as_flags(message: str) -> str:
    """An option error as the user typed it: "option 'beam_size'" → "--beam-size"."""
    for key, flag in FLAGS.items():
        message = message.replace(f"option {key!r}", flag)
    return message.replace("command line: ", "")


def check_model(cfg: configmod.Config, options: jobmod.JobOptions, named: bool) -> None:
    """InvalidOption unless the daemon's configuration has the model and it speaks the
    language asked for (what the daemon would refuse later, said now; a job that names
    no model goes where the daemon would send it, :func:`cesard.job.route_language`)."""
    from cesard import models

    dirs = cfg.model_dirs
    if cfg.engine == "faster-whisper" and cfg.language_fallback:
        infos = models.describe(dirs)
        options, _ = jobmod.route_language(
            options, named, {m.name for m in infos if m.english_only}, models.multilingual(infos))
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
    if args.diarize or args.speakers or args.min_speakers or args.max_speakers:
        opts["diarize"] = True
        for key in ("speakers", "min_speakers", "max_speakers"):
            if getattr(args, key) is not None:
                opts[key] = getattr(args, key)
    if args.then:
        opts["then"] = args.then
    try:
        options = jobmod.parse_options(opts, cfg.job_defaults(), where="command line")
        if args.config_ok:
            check_model(cfg, options, "model" in opts)
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
            ids.append(publish.submit(spool, f, opts, whoami()))
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
