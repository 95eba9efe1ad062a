"""Configuration: YAML read with ``yaml.safe_load``, validated, unknown keys rejected.

Lookup (README, Configuration): ``--config``, then ``$CESAR_CONFIG``, then
``/etc/cesar/cesard.yaml`` if it exists, else built-in defaults. The spool:
``--spool``, then ``$CESAR_SPOOL``, then the config's ``spool``, else
``/var/spool/cesar``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cesard import job as jobmod

DEFAULT_CONFIG = Path("/etc/cesar/cesard.yaml")
DEFAULT_SPOOL = Path("/var/spool/cesar")
ENGINES = ("faster-whisper", "fake")
WATCH_MODES = ("auto", "inotify", "poll")
COMPUTE_TYPES = ("auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(Exception):
    """A bad configuration; the message names the file and key."""


def bundled_models() -> dict[str, str]:
    """Models installed offline by packages (tiny.en; base with the 'base' extra)."""
    from cesard import models

    return models.bundled()


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass
class Config:
    """The effective configuration. Field docs are the configuration reference."""

    spool: str = str(DEFAULT_SPOOL)
    engine: str = "faster-whisper"
    workers: int = 0  # 0: one per CPU, or one per GPU on cuda
    cpu_threads: int = 1
    device: str = "auto"  # auto: the GPUs if CTranslate2 sees any, else the CPU
    device_index: list[int] = field(default_factory=list)  # GPUs to use; []: all
    compute_type: str = "auto"  # auto: float16 on a GPU, int8 on the CPU
    models: dict[str, str] = field(default_factory=dict)
    preload_models: list[str] = field(default_factory=list)
    max_loaded_models: int = 2  # models a worker holds at once (preloaded ones stay)
    defaults: dict[str, Any] = field(default_factory=dict)
    watch: str = "auto"
    poll_interval: float = 1.0
    rescan_interval: float = 30.0
    settle_seconds: float = 2.0
    shutdown_grace: float = 30.0
    max_attempts: int = 3
    retry_delays: list[float] = field(default_factory=lambda: [10.0, 20.0, 40.0])
    job_timeout: float = 0.0  # 0: max(120 s, 3 x audio duration)
    keep_audio: bool = True
    lease_seconds: float = 60.0
    max_file_bytes: int = 2 * 1024**3
    max_audio_seconds: float = 6 * 3600.0
    batch_size: int = 0  # batched decoding of long audio; 0: 4 on the CPU, 16 on a GPU
    batch_min_seconds: float = 300.0  # audio at least this long is decoded in batches; 0: never
    batch_max_seconds: float = 30.0  # jobs up to this long are batched across jobs; 0: never
    batch_wait_ms: int = 0  # how long a short batch may wait for more jobs
    max_jobs_per_worker: int = 0  # 0: never recycle
    # bytes of address space per worker; 0: no limit; auto: what the loaded worker holds
    # plus what the longest allowed audio needs, on the CPU (cesard/worker.py); none on a GPU
    worker_memory_limit: int | str = "auto"
    queue_capacity: int = 1000
    privacy: str = "owner"  # owner: each job its owner's alone; group: every member reads all
    admin_group: str | None = None  # members see, cancel and retry every job
    max_queued_per_owner: int = 0  # queued entries per owner; 0: no limit
    max_queued_bytes_per_owner: int = 0  # bytes queued per owner; 0: no limit
    hooks: dict[str, Any] = field(default_factory=dict)  # done, failed: argv lists; named
    hook_timeout: float = 300.0  # seconds a hook may run before it is killed
    max_running_hooks: int = 4  # hooks running at once (more wait their turn)
    language_fallback: bool = True  # jobs naming no model may go to a multilingual one
    http: dict[str, Any] = field(default_factory=dict)  # cesard-http (HTTP_DEFAULTS)
    dedupe: bool = False  # reuse the result of a done job with the same audio and options
    metrics_textfile: str | None = None
    log_level: str = "info"
    source: str = "built-in defaults"
    set_keys: tuple[str, ...] = ()  # the keys the file set (a reload compares them)

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()

    @property
    def model_dirs(self) -> dict[str, str]:
        """Model name → local directory: the bundled ones, then the config's."""
        return {**bundled_models(), **self.models}

    @property
    def http_settings(self) -> dict[str, Any]:
        """The ``http`` section over its defaults (:data:`HTTP_DEFAULTS`)."""
        return {**HTTP_DEFAULTS, **self.http}

    @property
    def named_hooks(self) -> dict[str, list[str]]:
        return dict(self.hooks.get("named") or {})

    def check_then(self, options: jobmod.JobOptions) -> None:
        """InvalidOption naming the first hook ``options.then`` asks for that is not under
        ``hooks.named`` (cesarctl, the daemon and ``defaults`` say the same)."""
        unknown = [n for n in options.then if n not in self.named_hooks]
        if unknown:
            raise jobmod.InvalidOption(
                f"option 'then': hook {unknown[0]!r} is not configured (configured: "
                f"{', '.join(self.named_hooks) or 'none'}); an administrator adds it under "
                "'hooks.named' in the configuration, or submit without it")

    def job_defaults(self) -> jobmod.JobOptions:
        return jobmod.parse_options(self.defaults, where=f"{self.source}: key 'defaults'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        d.pop("set_keys")
        d["models"] = self.model_dirs
        d["defaults"] = self.job_defaults().to_dict()
        d["http"] = self.http_settings
        return d


def _num(lo: float, hi: float | None = None, integer: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type:
            return "must be an integer" if integer else "must be a number"
        if v < lo or (hi is not None and v > hi):
            return f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}"
        return None
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _check_models(v: Any) -> str | None:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(p, str)
                                          for k, p in v.items()):
        return "must map model names to directories (name: /path/to/model)"
    return None


def _check_delays(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v):
        return "must be a non-empty list of seconds, such as [10, 20, 40]"
    return None


HOOK_NAME = jobmod.HOOK_NAME


def _check_argv(v: Any, key: str) -> str | None:
    """None, or what is wrong with one hook's argv (naming ``key``)."""
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        return (f"key {key!r} must be a command as a list of strings, such as "
                f"[\"/usr/lib/cesar/hooks/mail-owner\", \"--failed\"] (no shell), got {v!r}")
    prog = v[0]
    if not os.path.isabs(prog):
        return f"key {key!r}: {prog!r} is not an absolute path; give the program's full path"
    if not os.path.isfile(prog) or not os.access(prog, os.X_OK):
        return (f"key {key!r}: {prog} is not an executable file; install it, make it "
                "executable (chmod +x) or remove the hook")
    return None


HTTP_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:8000", "tokens_file": "/etc/cesar/http-tokens",
    "max_upload_mb": 500, "request_timeout": 3600, "upload_idle_seconds": 60,
    "wyoming_listen": None,
    "callback_allow": [], "callback_retry_seconds": 86400,
    "state_dir": "/var/lib/cesard-http"}


def http_problem(v: Any) -> str | None:
    """None, or the first problem of the ``http`` mapping, naming its key."""
    if not isinstance(v, dict):
        return "key 'http' must be a mapping (listen, tokens_file, max_upload_mb, ...)"
    for k, val in v.items():
        if k not in HTTP_DEFAULTS:
            return (f"key 'http' has unknown key {k!r}; known keys: "
                    f"{', '.join(HTTP_DEFAULTS)}")
        where = f"key 'http.{k}'"
        if k in ("listen", "wyoming_listen"):
            if val is None and k == "wyoming_listen":
                continue
            host, _, port = str(val).rpartition(":")
            if not isinstance(val, str) or not host or not port.isdigit() or \
                    not 0 < int(port) < 65536:
                return f"{where} must be HOST:PORT, such as 127.0.0.1:8000 (got {val!r})"
        elif k in ("tokens_file", "state_dir") and not (isinstance(val, str) and val):
            return f"{where} must be a file path (got {val!r})"
        elif k in ("max_upload_mb", "request_timeout", "callback_retry_seconds",
                   "upload_idle_seconds") and (
                isinstance(val, bool) or not isinstance(val, (int, float)) or val <= 0):
            return f"{where} must be a positive number (got {val!r})"
        elif k == "callback_allow" and not (isinstance(val, list) and all(
                isinstance(h, str) and h for h in val)):
            return f"{where} must be a list of host names or CIDRs (got {val!r})"
    return None


def hook_problem(v: Any) -> str | None:
    """None, or the first problem of a ``hooks`` mapping, naming its key."""
    if not isinstance(v, dict):
        return "key 'hooks' must be a mapping with done, failed and named"
    for k in v:
        if k not in ("done", "failed", "named"):
            return f"key 'hooks' has unknown key {k!r}; known keys: done, failed, named"
    for event in ("done", "failed"):
        cmds = v.get(event) or []
        if not isinstance(cmds, list):
            return f"key 'hooks.{event}' must be a list of commands (each a list of strings)"
        for i, argv in enumerate(cmds):
            problem = _check_argv(argv, f"hooks.{event}[{i}]")
            if problem:
                return problem
    named = v.get("named") or {}
    if not isinstance(named, dict):
        return "key 'hooks.named' must map hook names to commands (each a list of strings)"
    for name, argv in named.items():
        if not isinstance(name, str) or not HOOK_NAME.match(name):
            return (f"key 'hooks.named': {name!r} is not a hook name (lower-case letters, "
                    "digits, - and _)")
        problem = _check_argv(argv, f"hooks.named.{name}")
        if problem:
            return problem
    return None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "spool": lambda v: None if isinstance(v, str) and v else "must be a directory path",
    "engine": _choice(ENGINES),
    "workers": _num(0, 256, integer=True),
    "cpu_threads": _num(1, 256, integer=True),
    "compute_type": _choice(COMPUTE_TYPES),
    "device": _choice(DEVICES),
    "device_index": lambda v: None if isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) else
    "must be a list of GPU indexes, such as [0, 1]",
    "max_loaded_models": _num(1, 64, integer=True),
    "models": _check_models,
    "preload_models": lambda v: None if isinstance(v, list) and all(
        isinstance(x, str) for x in v) else "must be a list of model names",
    "defaults": lambda v: None if isinstance(v, dict) else "must be a mapping of job options",
    "watch": _choice(WATCH_MODES),
    "poll_interval": _num(0.01, 3600),
    "rescan_interval": _num(0.1, 86400),
    "settle_seconds": _num(0, 3600),
    "shutdown_grace": _num(0, 86400),
    "max_attempts": _num(1, 100, integer=True),
    "retry_delays": _check_delays,
    "job_timeout": _num(0),
    "keep_audio": lambda v: None if isinstance(v, bool) else "must be true or false",
    "lease_seconds": _num(1),
    "max_file_bytes": _num(0, integer=True),
    "max_audio_seconds": _num(0),
    "batch_size": _num(0, 256, integer=True),
    "batch_min_seconds": _num(0),
    "batch_max_seconds": _num(0, 30),
    "batch_wait_ms": _num(0, 60000, integer=True),
    "max_jobs_per_worker": _num(0, integer=True),
    "worker_memory_limit": lambda v: None if v == "auto" else (
        _num(0, integer=True)(v) and "must be auto or a number of bytes (0: no limit)"),
    "queue_capacity": _num(1, integer=True),
    "privacy": _choice(("owner", "group")),
    "admin_group": lambda v: None if v is None or (isinstance(v, str) and v) else
    "must be a group name or null",
    "max_queued_per_owner": _num(0, integer=True),
    "max_queued_bytes_per_owner": _num(0, integer=True),
    "hooks": hook_problem,
    "hook_timeout": _num(1, 86400),
    "max_running_hooks": _num(1, 256, integer=True),
    "dedupe": lambda v: None if isinstance(v, bool) else "must be true or false",
    "http": http_problem,
    "language_fallback": lambda v: None if isinstance(v, bool) else "must be true or false",
    "metrics_textfile": lambda v: None if v is None or (isinstance(v, str) and v) else
    "must be a file path or null",
    "log_level": _choice(("debug", "info", "warning", "error")),
}
KEYS = tuple(f.name for f in fields(Config) if f.name not in ("source", "set_keys"))


def parse(raw: Any, source: str) -> Config:
    """Validate a loaded YAML document; raise ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, "
                          f"got {type(raw).__name__}")
    for key, value in raw.items():
        if key not in CHECKS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}; {hint}known keys: "
                              f"{', '.join(KEYS)}")
        problem = CHECKS[key](value)
        if problem and problem.startswith("key "):
            raise ConfigError(f"{source}: {problem}")
        if problem:
            raise ConfigError(f"{source}: key {key!r} {problem} (got {value!r})")
    values = dict(raw)
    for key in ("poll_interval", "rescan_interval", "settle_seconds", "shutdown_grace",
                "job_timeout", "lease_seconds", "max_audio_seconds", "batch_min_seconds",
                "batch_max_seconds",
                "hook_timeout"):
        if key in values:
            values[key] = float(values[key])
    cfg = Config(**values, source=source, set_keys=tuple(values))
    try:
        cfg.job_defaults()
    except jobmod.InvalidOption as e:
        raise ConfigError(str(e)) from e
    try:
        cfg.check_then(cfg.job_defaults())
    except jobmod.InvalidOption as e:
        raise ConfigError(f"{source}: key 'defaults': {e}") from e
    if cfg.job_defaults().model not in cfg.model_dirs and cfg.engine == "faster-whisper":
        raise ConfigError(f"{source}: key 'defaults': model {cfg.job_defaults().model!r} is not "
                          f"in 'models' (configured: {', '.join(cfg.model_dirs) or 'none'})")
    return cfg


def load(path: str | None = None) -> Config:
    """Find and load the configuration (see the module docstring)."""
    chosen = path or os.environ.get("CESAR_CONFIG")
    if not chosen:
        if not DEFAULT_CONFIG.exists():
            return parse({}, "built-in defaults")
        chosen = str(DEFAULT_CONFIG)
    try:
        text = Path(chosen).read_text()
    except OSError as e:
        raise ConfigError(f"{chosen}: cannot read the configuration: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{chosen}: not valid YAML: {e}") from e
    return parse(raw, chosen)


# Keys whose silent fall-back to the default changes which jobs run and how: a reload
# that drops one of them (an emptied or truncated file) is refused.
RELOAD_KEPT = ("spool", "engine", "models", "defaults", "device", "device_index", "privacy",
               "admin_group", "hooks", "max_file_bytes", "max_audio_seconds")


def reload_problem(running: Config, new: Config) -> str | None:
    """Why ``new`` may not replace ``running`` on a reload (SIGHUP), or None. An empty file,
    or one that no longer sets keys the running configuration set (all of them, half of
    them or more, or any of :data:`RELOAD_KEPT`) is a file cut short, not an intent:
    a restart takes such a file as it is."""
    lost = [k for k in running.set_keys if k not in new.set_keys]
    if not lost:
        return None
    if not new.set_keys:
        why = "is empty"
    elif len(lost) * 2 >= len(running.set_keys) or any(k in RELOAD_KEPT for k in lost):
        why = "no longer sets " + ", ".join(repr(k) for k in lost)
    else:
        return None
    return (f"{new.source} {why} (the running configuration sets them): a file cut short "
            "is not taken; put the keys back (or set them to the values you want), or "
            "restart the daemon to start from this file as it is")


def load_for_client(path: str | None = None) -> tuple[Config, str | None]:
    """The configuration as a client (cesarctl) reads it: a broken file gives the built-in
    defaults with the file's ``spool`` (when that key can still be read) and the error to
    warn about, never a refusal: a client needs only the spool to queue work, and the
    daemon checks every option itself."""
    try:
        return load(path), None
    except ConfigError as e:
        chosen = path or os.environ.get("CESAR_CONFIG") or str(DEFAULT_CONFIG)
        spool: Any = None
        try:
            raw = yaml.safe_load(Path(chosen).read_text())
            spool = raw.get("spool") if isinstance(raw, dict) else None
        except (OSError, yaml.YAMLError, ValueError):
            pass
        cfg = Config(source="built-in defaults")
        if isinstance(spool, str) and spool:
            cfg.spool = spool
        return cfg, str(e)


def spool_path(cfg: Config, cli: str | None = None) -> Path:
    """The spool: --spool, then $CESAR_SPOOL, then the config."""
    return Path(cli or os.environ.get("CESAR_SPOOL") or cfg.spool).absolute()
