"""``cesarctl``: submit audio to a cesard spool and read the results.

One module per family of commands (``submit``, ``view``, ``follow``, ``act``), what
they share in ``common``; here the parser and ``main``.

When stdout is not a terminal it prints only what a script needs (ids,
transcripts, JSON); on a terminal it adds progress bars and tables. Exit
codes follow sysexits.h; ``health`` follows the monitoring-plugin convention.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from cesard import __version__
from cesard import job as jobmod
from cesard.ctl.common import (
    EX_SOFTWARE,
    EX_USAGE,
    EXIT_CODES,
    CtlError,
    open_spool,
    parse_duration,
    resolve_id,
)
from cesard.spool import STATES

FORMATS = ("txt", "srt", "vtt", "json")  # cesard.outputs.RENDER (a test keeps them equal)


def command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command, imported when it runs: 'cesarctl status' does not pay for submit's."""
    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"cesard.ctl.{module}"), name)
        return func(args)
    return run


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
                                parents=[common], epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    s.add_argument("--diarize", action="store_true",
                   help="who said what: a speaker on every segment and word (offline)")
    s.add_argument("--speakers", type=int, metavar="N",
                   help="with --diarize: the number of speakers, when known")
    s.add_argument("--min-speakers", type=int, dest="min_speakers", metavar="N",
                   help="with --diarize: at least N speakers")
    s.add_argument("--max-speakers", type=int, dest="max_speakers", metavar="N",
                   help="with --diarize: at most N speakers")
    s.add_argument("--then", action="append", metavar="HOOK",
                   help="run this named hook (hooks.named in the configuration) when the job "
                   "is done; repeatable")
    s.add_argument("--wait", action="store_true", help="wait and print the transcript")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="with --wait: give up after this long (30s, 10m, 2h; a bare number "
                   "is seconds); the job stays queued")
    s.set_defaults(func=command("submit", "cmd_submit"))

    s = sub.add_parser("status", parents=[common], help="daemon and queue status")
    s.set_defaults(func=command("view", "cmd_status"))
    s = sub.add_parser("list", parents=[common], help="list jobs",
                       description="List jobs. On a terminal, a table; into a pipe, one job "
                       "a line, tab-separated: ID STATE STATUS FILE OWNER (STATUS: queued, "
                       "settling, waiting, running, retrying, done, failed or cancelled; ID "
                       "'-' for a bare file not yet claimed); --json: a JSON list.")
    s.add_argument("--state", choices=STATES)
    s.set_defaults(func=command("view", "cmd_list"))
    s = sub.add_parser("show", parents=[common], help="a job's details")
    s.add_argument("id")
    s.set_defaults(func=command("view", "cmd_show"))
    s = sub.add_parser("result", parents=[common], help="print a finished job's transcript")
    s.add_argument("id")
    s.add_argument("--format", choices=FORMATS, default="txt")
    s.set_defaults(func=command("submit", "cmd_result"))
    s = sub.add_parser("follow", parents=[common],
                       help="print a job's segments as they are transcribed, then its state "
                       "(exit 0 done, 65 failed)")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="give up after this long (default: follow until it ends)")
    s.set_defaults(func=command("follow", "cmd_follow"))
    s = sub.add_parser("wait", parents=[common], help="wait until jobs finish")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                   help="give up after this long (30s, 10m, 2h; default: wait for ever)")
    s.set_defaults(func=command("submit", "cmd_wait"))
    s = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, default=10.0, metavar="DURATION",
                   help="how long to wait for the daemon's answer (default 10s)")
    s.set_defaults(func=command("act", "cmd_cancel"))
    s = sub.add_parser("retry", parents=[common], help="queue a failed job again")
    s.add_argument("id")
    s.add_argument("--timeout", type=parse_duration, default=10.0, metavar="DURATION",
                   help="how long to wait for the daemon's answer (default 10s)")
    s.set_defaults(func=command("act", "cmd_retry"))
    s = sub.add_parser("prune", parents=[common], help="remove old finished jobs")
    s.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    s.add_argument("--state", choices=("done", "failed"))
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(func=command("act", "cmd_prune"))
    s = sub.add_parser("models", parents=[common],
                       help="models: name, languages, size on disk, path, workers holding it")
    s.set_defaults(func=command("act", "cmd_models"))
    s = sub.add_parser("health", parents=[common],
                       help="one line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    s.set_defaults(func=command("act", "cmd_health"))
    s = sub.add_parser("token", help="cesard-http's clients: 'token add NAME' prints a new "
                       "bearer token once and appends its SHA-256 to http.tokens_file")
    s.add_argument("action", choices=("add",))
    s.add_argument("name", help="the client's name (letters, digits, . _ -)")
    s.add_argument("--config", help="configuration file (its http.tokens_file)")
    s.add_argument("--tokens-file", help="the tokens file (default: http.tokens_file)")
    s.set_defaults(func=command("act", "cmd_token"))
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
        if getattr(args, "id", None) or getattr(args, "ids", None):
            spool, _ = open_spool(args)
            if getattr(args, "id", None):
                args.id = resolve_id(spool, args.id)
            if getattr(args, "ids", None):
                args.ids = [resolve_id(spool, i) for i in args.ids]
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
    except Exception:  # noqa: BLE001 - a bug: said as one, never exit 1 ("nothing to do")
        import traceback

        traceback.print_exc()
        print("cesarctl: internal error (the lines above say where); please report it",
              file=sys.stderr)
        return EX_SOFTWARE

