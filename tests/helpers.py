"""Drive the real cesard and cesarctl like a user: processes, files, signals."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

FIXTURES = Path(__file__).parent / "fixtures"
BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 20.0, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll ``pred`` until it returns something truthy; fail the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "result.schema.json").read_text())


def checked(result: dict[str, Any]) -> dict[str, Any]:
    """A result.json, validated against docs/result.schema.json (every test reads it so)."""
    import jsonschema

    jsonschema.Draft202012Validator(SCHEMA).validate(result)
    return result


def fake_script(**keys: Any) -> bytes:
    """An input file that drives the fake engine."""
    lines = ["#cesard-fake"] + [f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                                for k, v in keys.items()]
    return ("\n".join(lines) + "\n").encode()


class Daemon:
    """A cesard process on a temporary spool."""

    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.spool = tmp / "spool"
        self.config_path = tmp / "cesard.yaml"
        self.log_path = tmp / "cesard.log"
        self.config: dict[str, Any] = {"engine": "fake", "workers": 1, "settle_seconds": 0.5,
                                       "retry_delays": [0.2], "lease_seconds": 5}
        self.config.update(config)
        self.proc: subprocess.Popen[bytes] | None = None
        # CESARD_TEST_FAKE_ENGINE: the fake engine may run on the shared spools of the tests
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "CESARD_TEST_FAKE_ENGINE": "1"}
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("CESAR_SPOOL", None)
        self.env.pop("CESAR_CONFIG", None)

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None,
              args: tuple[str, ...] = (), user: tuple[int, int] | None = None,
              prefix: tuple[str, ...] = ()) -> Daemon:
        """Start cesard; ``user`` (uid, gid) runs it as that user (the test is root);
        ``prefix`` runs it through another command (``ip netns exec NS``, which execs it:
        the pid stays cesard's)."""
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        ids: dict[str, Any] = {}
        if user is not None:
            ids = {"user": user[0], "group": user[1], "extra_groups": []}
        self.proc = subprocess.Popen(
            [*prefix, str(BIN / "cesard"), "--config", str(self.config_path), "--spool",
             str(self.spool), *args], stdout=log, stderr=log, env={**self.env, **(env or {})},
            start_new_session=True, **ids)
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.spool / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"cesard exited with {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return bool(st and st["pid"] == self.proc.pid and st["state"] == "running")
        wait_until(ready, timeout, "cesard to be ready")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_all(self) -> None:
        """kill -9 of the whole daemon: supervisor and workers (its session)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def ctl(self, *args: str, timeout: float = 120.0, check: bool = False,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        # cesarctl reads the daemon's configuration, as it reads /etc/cesar/cesard.yaml.
        conf = ["--config", str(self.config_path)] if self.config_path.exists() else []
        r = subprocess.run([str(BIN / "cesarctl"), "--spool", str(self.spool), *conf, *args],
                           capture_output=True, text=True, timeout=timeout, env=self.env,
                           input=input.decode() if input else None)
        if check and r.returncode != 0:
            raise AssertionError(f"cesarctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def submit_bytes(self, name: str, data: bytes, *opts: str) -> str:
        src = self.tmp / "src"
        src.mkdir(exist_ok=True)
        (src / name).write_bytes(data)
        return self.ctl("submit", str(src / name), *opts, check=True).stdout.strip()

    def publish_dir(self, name: str, files: dict[str, bytes]) -> Path:
        """Publish a hand-made job directory the right way: build in tmp/, then rename."""
        build = self.spool / "tmp" / name
        build.mkdir()
        for fname, data in files.items():
            (build / fname).write_bytes(data)
        os.rename(build, self.spool / "incoming" / name)
        return self.spool / "incoming" / name

    def entries(self, state: str) -> list[str]:
        return sorted(os.listdir(self.spool / state))

    def result(self, job_id: str) -> dict[str, Any] | None:
        for state in ("done", "failed"):
            p = self.spool / state / job_id / "result.json"
            if p.exists():
                return checked(json.loads(p.read_text()))
        return None

    def wait_result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_until(lambda: self.result(job_id), timeout, f"result of {job_id}")

    def results(self) -> list[dict[str, Any]]:
        out = []
        for state in ("done", "failed"):
            for name in os.listdir(self.spool / state):
                p = self.spool / state / name / "result.json"
                if p.exists():
                    out.append(checked(json.loads(p.read_text())))
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_all()


def on_terminal(d: Daemon, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run cesarctl with stdout on a pseudo-terminal (as a person sees it)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([str(BIN / "cesarctl"), "--spool", str(d.spool), *args],
                         stdout=slave, stderr=subprocess.PIPE,
                         env={**d.env, "COLUMNS": "200", **(env or {})})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    code = p.wait(30)
    return code, out.decode().replace("\r\n", "\n")
