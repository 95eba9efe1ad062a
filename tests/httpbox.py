"""cesard-http as the tests run it: a real process on a free port, in front of a real
cesard (tests/helpers.py Daemon), with tokens made by ``cesarctl token add``."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from helpers import BIN, Daemon, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """A cesard-http process for daemon ``d`` (its config file gets the http: section)."""

    def __init__(self, d: Daemon, **http: Any) -> None:
        self.d = d
        self.port = free_port()
        self.tokens_file = d.tmp / "http-tokens"
        self.state_dir = d.tmp / "http-state"
        d.config["http"] = {"listen": f"127.0.0.1:{self.port}",
                            "tokens_file": str(self.tokens_file),
                            "state_dir": str(self.state_dir), **http}
        d.write_config()
        self.log_path = d.tmp / "cesard-http.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def token(self, name: str) -> str:
        r = subprocess.run([str(BIN / "cesarctl"), "token", "add", name, "--config",
                            str(self.d.config_path)], capture_output=True, text=True,
                           env=self.d.env, check=True)
        return r.stdout.strip()

    def start(self) -> Gateway:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "cesard-http"), "--config",
                                      str(self.d.config_path), "--spool", str(self.d.spool)],
                                     stdout=log,
                                     stderr=subprocess.STDOUT, env=self.d.env)
        log.close()
        wait_until(self.listening, 30, f"cesard-http to listen ({self.log()[-2000:]})")
        return self

    def listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"cesard-http exited {self.proc.returncode}: "
                                 f"{self.log()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def call(self, method: str, path: str, token: str | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def json(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        status, _, body = self.call(method, path, token)
        return status, json.loads(body)


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "cesardtestboundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
             .encode() for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 .encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


class Receiver:
    """A local HTTP server that records the callbacks it gets."""

    def __init__(self, fail_first: int = 0) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first  # answer 503 to this many posts first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length", "0"))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(n)))
                self.send_response(503 if len(outer.got) <= outer.fail_first else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def key_of(token: str) -> str:
    """What a client signs with: the SHA-256 hex of its token."""
    return hashlib.sha256(token.encode()).hexdigest()


def leftovers(spool: Path) -> list[str]:
    return sorted(os.listdir(spool / "tmp"))
