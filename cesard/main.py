"""``cesard``: the daemon's command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cesard import __version__, devices, fsops, models, privacy
from cesard import config as configmod
from cesard.spool import Spool, SpoolError
from cesard.supervisor import RELOAD_ANSWER, Supervisor
from cesard.systemd import Notifier, setup_logging

EX_USAGE, EX_UNAVAILABLE, EX_SOFTWARE, EX_CANTCREAT, EX_CONFIG = 64, 69, 70, 73, 78
log = logging.getLogger("cesard")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cesard", description="Transcription daemon fed through a spool directory.")
    p.add_argument("--config", help="YAML configuration (default: $CESAR_CONFIG, then "
                   "/etc/cesar/cesard.yaml, else built-in defaults)")
    p.add_argument("--spool", help="spool directory (default: $CESAR_SPOOL, then the config, "
                   "else /var/spool/cesar)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print the effective one as JSON, exit")
    p.add_argument("--init", action="store_true",
                   help="create the spool layout and exit: private to this user, or with "
                   "--group shared with that group's members (as root: owned by --user)")
    p.add_argument("--user", help="with --init as root: the daemon's user (default: cesar)")
    p.add_argument("--group", help="with --init: the group whose members submit jobs; the "
                   "spool gets the modes and ACLs of the configured 'privacy'")
    p.add_argument("--drain", action="store_true",
                   help="process everything queued, then exit (non-zero if a job failed)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (without systemd); see --pidfile and --log-file")
    p.add_argument("--pidfile", help="with --detach: write the daemon's pid here")
    p.add_argument("--log-file", help="with --detach: append logs here (default: syslog)")
    p.add_argument("--reload", action="store_true",
                   help="ask the running daemon to re-read its configuration (SIGHUP) and "
                   "wait for its answer: exit 0 when it took the file, 1 when it refused it "
                   "(systemd's ExecReload)")
    p.add_argument("--pid", type=int, help="with --reload: the daemon's pid (default: the "
                   "pid in the spool's state/status.json)")
    p.add_argument("--version", action="version", version=f"cesard {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGHUP re-reads the configuration, also after --detach has changed to /.
    args.config = args.config or os.environ.get("CESAR_CONFIG") or None
    if args.config:
        args.config = os.path.abspath(args.config)
    if args.reload:
        return _reload(args)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"cesard: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    cfg.spool = str(configmod.spool_path(cfg, args.spool))
    if args.check_config:
        print(json.dumps({"source": cfg.source, **cfg.to_dict()}, indent=2))
        return 0
    spool = Spool(cfg.spool)
    if args.init:
        return _init(cfg, spool, args)
    if args.detach:
        from cesard.daemonize import detach
        return detach(lambda fd: _run(cfg, spool, args, fd), args.pidfile, args.log_file,
                      cfg.log_level)
    setup_logging(cfg.log_level)
    return _run(cfg, spool, args)


def _reload(args: argparse.Namespace, timeout: float = 60.0) -> int:
    """``cesard --reload``: SIGHUP to the daemon, then its answer (state/reload.json)."""
    cfg, _problem = configmod.load_for_client(args.config)  # the spool is all it needs
    state = configmod.spool_path(cfg, args.spool) / "state"
    answer_path = state / RELOAD_ANSWER
    before = _read_json(answer_path)
    pid = args.pid or (_read_json(state / "status.json") or {}).get("pid")
    if not isinstance(pid, int) or pid <= 0:
        print(f"cesard: --reload: no daemon pid (give --pid, or start cesard on {state.parent})",
              file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"cesard: --reload: cannot signal pid {pid}: {e.strerror}", file=sys.stderr)
        return EX_UNAVAILABLE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = _read_json(answer_path)
        if answer and answer != before and answer.get("pid") == pid:
            ok = bool(answer.get("ok"))
            print(f"cesard: {answer.get('message')}", file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        time.sleep(0.05)
    print(f"cesard: --reload: pid {pid} did not answer within {timeout:g} s", file=sys.stderr)
    return EX_UNAVAILABLE


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_bytes()[:1 << 20])
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _init(cfg: configmod.Config, spool: Spool, args: argparse.Namespace) -> int:
    """``cesard --init``: a private spool, or with --group the shared layout."""
    try:
        if args.group or args.user:
            uid = os.geteuid()
            if args.user or os.geteuid() == 0:
                name = args.user or "cesar"
                try:
                    uid = pwd.getpwnam(name).pw_uid
                except KeyError:
                    print(f"cesard: --init: user {name!r} does not exist; create it "
                          "(systemd-sysusers, or useradd --system " + name + ")",
                          file=sys.stderr)
                    return EX_CONFIG
            if uid != os.geteuid() and os.geteuid() != 0:
                print("cesard: --init --user needs root (it changes owners)", file=sys.stderr)
                return EX_CONFIG
            gid = privacy.group_id(args.group)
            spool.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if cfg.privacy == "owner":
                privacy.probe(spool.root)
            privacy.apply_layout(spool.root, cfg.privacy, uid, gid,
                                 privacy.group_id(cfg.admin_group))
        else:
            spool.create()
    except privacy.PrivacyError as e:
        print(f"cesard: --init: {e}", file=sys.stderr)
        return EX_CONFIG
    except OSError as e:
        print(f"cesard: cannot create spool {spool.root}: {e.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    print(spool.root)
    return 0


def _wait_writable(spool: Spool, notifier: Notifier, every: float = 1.0) -> bool:
    """Wait while the spool's filesystem is read-only (nothing can be claimed or written,
    and nothing is lost by waiting); False when SIGTERM/SIGINT asked to stop meanwhile.
    systemd's start timeout is extended while it waits."""
    if not fsops.read_only(spool.root):
        return True
    log.error("spool %s is read-only: waiting for it to be writable (remount it read-write; "
              "an ext4 error remounts it read-only: check the disk); every job stays where it "
              "is", spool.root)
    stop: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: stop.append(n))
           for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while fsops.read_only(spool.root) and not stop:
            notifier.send("STATUS=waiting: the spool is read-only",
                          f"EXTEND_TIMEOUT_USEC={int(every * 3e6)}")
            time.sleep(every)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop:
        log.info("stopped while the spool was read-only")
        return False
    log.info("spool %s is writable: starting", spool.root)
    return True


def place(cfg: configmod.Config) -> devices.Placement:
    """Where the workers run (DeviceError for an unusable 'device: cuda'). The fake engine
    stays on the CPU under 'auto' without asking CTranslate2."""
    if cfg.engine == "fake" and cfg.device == "auto":
        return devices.resolve("cpu", [], cfg.compute_type)
    return devices.resolve(cfg.device, cfg.device_index, cfg.compute_type)


def _run(cfg: configmod.Config, spool: Spool, args: argparse.Namespace,
         ready_fd: int | None = None) -> int:
    try:
        spool.create()
    except OSError as e:
        log.error("cannot create spool %s: %s; create it or fix its permissions",
                  spool.root, e.strerror)
        return EX_CANTCREAT
    notifier = Notifier(ready_fd)
    if not _wait_writable(spool, notifier):
        return 0
    try:
        line, spool.guard = privacy.prepare(spool.root, cfg.privacy, cfg.admin_group)
    except privacy.PrivacyError as e:
        log.error("%s", e)
        return EX_CONFIG
    except OSError as e:
        log.error("cannot set up spool %s for privacy: %s: %s; fix its owner and permissions",
                  spool.root, cfg.privacy, e)
        return EX_CANTCREAT
    if cfg.privacy == "group":
        spool.job_dir_mode = 0o2750
    log.info("%s", line)
    refusal = privacy.fake_engine_refusal(cfg.engine, spool.root)
    if refusal:
        log.error("%s", refusal)
        return EX_CONFIG
    try:
        placement = place(cfg)
        if cfg.engine == "faster-whisper":
            built = models.assemble_base()
            if built is not None:
                log.debug("model base ready in %s", built)
    except (devices.DeviceError, models.ModelError) as e:
        log.error("%s", e)
        return EX_CONFIG
    log.info("%s; compute_type %s", placement.note, placement.compute_type)
    # args.config already holds $CESAR_CONFIG (see main).
    config_path = args.config or (
        str(configmod.DEFAULT_CONFIG) if Path(configmod.DEFAULT_CONFIG).exists() else None)
    sup = Supervisor(cfg, spool, config_path, notifier=notifier, drain=args.drain,
                     placement=placement)
    try:
        return sup.run()
    except SpoolError as e:
        log.error("%s", e)
        return EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
