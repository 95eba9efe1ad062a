"""Callbacks of async jobs: when a job a client created with ``callback_url`` finishes,
its result is POSTed there, signed as Stripe and GitHub sign webhooks:

    X-Cesar-Timestamp: UNIX-SECONDS
    X-Cesar-Signature: sha256=HEX(HMAC-SHA256(key, "TIMESTAMP." + BODY))

keyed with the SHA-256 hex of the client's token (what tokens_file holds; the client
computes it from its token). Delivery is durable: each pending callback is a file in
``http.state_dir``/callbacks/ (written before the 202 answers), so a restart of the
gateway or the daemon loses none; failures are retried with a growing delay (1 s, 2 s,
4 s … at most 10 min) for ``callback_retry_seconds`` after the job finished.

Only hosts the administrator allows are called: by default any public address, never a
loopback, link-local, private or otherwise special one (``http.callback_allow`` names
host names or CIDRs allowed besides)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cesard.fsops import write_atomic
from cesard.http import shapes
from cesard.http.gateway import FINISHED, Gateway
from cesard.http.tokens import Client

log = logging.getLogger("cesard-http")
MAX_DELAY = 600.0
TIMEOUT = 10.0


def sign(key: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Outbox:
    """Verbs: add, remove, state, run_once. Fields: the directory of pending callbacks."""

    def __init__(self, state_dir: str, gateway: Gateway, allow: list[str],
                 retry_seconds: float) -> None:
        self.dir = Path(state_dir) / "callbacks"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.gateway = gateway
        self.hosts = {a.lower() for a in allow if not _network(a)}
        self.nets = [n for n in (_network(a) for a in allow) if n is not None]
        self.retry_seconds = retry_seconds

    # --- verbs ----------------------------------------------------------------------
    def add(self, job_id: str, client: Client, url: str, fmt: str) -> None:
        """Record a callback for ``job_id`` (ValueError naming what is wrong with url)."""
        self.check(url)
        rec = {"id": job_id, "client": client.name, "key": client.key, "url": url,
               "format": fmt, "state": "pending", "attempts": 0, "next_at": 0.0,
               "finished_seen": None, "last_error": None, "delivered_at": None}
        self._write(rec)

    def remove(self, job_id: str) -> None:
        try:
            (self.dir / f"{job_id}.json").unlink()
        except FileNotFoundError:
            pass

    def state(self, job_id: str) -> dict[str, Any] | None:
        rec = self._read(self.dir / f"{job_id}.json")
        if rec is None:
            return None
        return {k: rec[k] for k in ("url", "state", "attempts", "last_error", "delivered_at")}

    def run_once(self, now: float) -> int:
        """Deliver what is due; the number of callbacks tried."""
        tried = 0
        for path in sorted(self.dir.glob("*.json")):
            rec = self._read(path)
            if rec is None or rec["state"] != "pending" or rec["next_at"] > now:
                continue
            client = Client(str(rec["client"]), str(rec["key"]))
            found = self.gateway.find(str(rec["id"]), client)
            if found is None or found.state not in FINISHED:
                continue
            result = self.gateway.result(found)
            if result is None:
                continue
            tried += 1
            rec["finished_seen"] = rec["finished_seen"] or now
            self.deliver(rec, result, now)
            self._write(rec)
        return tried

    # --- the parts ------------------------------------------------------------------
    def deliver(self, rec: dict[str, Any], result: dict[str, Any], now: float) -> None:
        body = json.dumps(payload(rec, result), ensure_ascii=False).encode()
        ts = int(time.time())
        req = urllib.request.Request(str(rec["url"]), data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "cesard-http",
            "X-Cesar-Timestamp": str(ts), "X-Cesar-Signature": sign(str(rec["key"]), ts, body),
            "X-Cesar-Job": str(rec["id"])})
        rec["attempts"] += 1
        try:
            self.check(str(rec["url"]))  # again: the name may resolve elsewhere now
            with _opener().open(req, timeout=TIMEOUT) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status, error = e.code, f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            status, error = 0, f"{type(e).__name__}: {e}"
        if 200 <= status < 300:
            rec.update(state="delivered", delivered_at=time.time(), last_error=None)
            log.info("job=%s callback delivered to %s", rec["id"], _host(rec["url"]))
            return
        if status:
            error = f"HTTP {status}"
        rec["last_error"] = error
        if now - float(rec["finished_seen"] or now) >= self.retry_seconds:
            rec["state"] = "failed"
            log.warning("job=%s callback to %s given up after %d attempts: %s", rec["id"],
                        _host(rec["url"]), rec["attempts"], error)
            return
        rec["next_at"] = now + min(MAX_DELAY, 2.0 ** (rec["attempts"] - 1))
        log.info("job=%s callback to %s failed (%s); retried in %.0f s", rec["id"],
                 _host(rec["url"]), error, rec["next_at"] - now)

    def check(self, url: str) -> None:
        """ValueError unless ``url`` is http(s) to a host the allow-list lets through."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"callback_url {url!r} must be an http:// or https:// URL")
        host = parts.hostname.lower()
        if host in self.hosts:
            return
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as e:
            raise ValueError(f"callback_url host {host!r} does not resolve: {e}") from None
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if any(addr in n for n in self.nets):
                continue
            if not addr.is_global or addr.is_multicast:
                raise ValueError(
                    f"callback_url host {host!r} is {addr}, a loopback, private or "
                    "link-local address: the administrator may allow it in "
                    "http.callback_allow")

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            rec = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def _write(self, rec: dict[str, Any]) -> None:
        write_atomic(self.dir, f"{rec['id']}.json", json.dumps(rec).encode(), mode=0o600)


def payload(rec: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """What a callback POSTs: the job's id, status, error and result in its format."""
    out: dict[str, Any] = {"id": rec["id"], "object": "transcription.job",
                           "status": result.get("status"), "error": result.get("error")}
    if result.get("status") == "done":
        fmt = str(rec.get("format") or "json")
        rendered = shapes.render(result, fmt, True, True)
        out["result"] = json.loads(rendered) if fmt.endswith("json") else rendered
    return out


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _host(url: Any) -> str:
    return urllib.parse.urlsplit(str(url)).hostname or "?"


def _opener() -> urllib.request.OpenerDirector:
    """No redirects (a redirect could lead past the allow-list), no proxies."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
