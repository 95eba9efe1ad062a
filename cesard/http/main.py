"""``cesard-http --config FILE``: the HTTP front door of a spool (its ``http:`` section).

A separate process from the daemon and a client of the spool like cesarctl: OpenAI's
audio API and cesard's async jobs over HTTP (uvicorn serving :mod:`cesard.http.app`),
callbacks from a durable outbox, and Wyoming ASR for Home Assistant when
``wyoming_listen`` is set. It tells systemd READY=1 once it listens; SIGTERM stops it
(a request in flight loses nothing: its job stays in the spool)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from cesard import config as configmod
from cesard.systemd import Notifier, setup_logging

EX_CONFIG = 78
log = logging.getLogger("cesard-http")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cesard-http",
        description="OpenAI-compatible and Wyoming front door to a cesard spool.")
    p.add_argument("--config", help="configuration file (default: $CESAR_CONFIG, else "
                   "/etc/cesar/cesard.yaml); its http: section")
    p.add_argument("--spool", help="the spool (default: the configuration's)")
    p.add_argument("--listen", help="HOST:PORT to serve on (default: http.listen)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"cesard-http: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    cfg.spool = str(configmod.spool_path(cfg, args.spool))
    if args.listen:
        problem = configmod.http_problem({"listen": args.listen})
        if problem:
            print(f"cesard-http: --listen: {problem}", file=sys.stderr)
            return EX_CONFIG
        cfg.http = {**cfg.http, "listen": args.listen}
    setup_logging(cfg.log_level, name="cesard-http")
    from cesard.http.tokens import TokenFileError, Tokens

    http = cfg.http_settings
    try:
        tokens = Tokens(str(http["tokens_file"]))
    except TokenFileError as e:
        print(f"cesard-http: {e}", file=sys.stderr)
        return EX_CONFIG
    if not os.path.isdir(os.path.join(cfg.spool, "incoming")):
        print(f"cesard-http: spool {cfg.spool} has no incoming/; run 'cesard --init' or "
              "start the daemon once", file=sys.stderr)
        return EX_CONFIG
    return serve(cfg, tokens)


def serve(cfg: configmod.Config, tokens: Any) -> int:
    import uvicorn

    from cesard.http.app import create_app
    from cesard.http.callbacks import Outbox
    from cesard.http.gateway import Gateway

    http = cfg.http_settings
    gateway = Gateway(cfg)
    try:
        outbox = Outbox(str(http["state_dir"]), gateway, list(http["callback_allow"]),
                        float(http["callback_retry_seconds"]))
    except OSError as e:
        print(f"cesard-http: http.state_dir {http['state_dir']}: {e.strerror}; it holds the "
              "pending callbacks (StateDirectory=cesard-http in the unit)", file=sys.stderr)
        return EX_CONFIG
    if not len(tokens):
        log.warning("no client in %s yet: every request gets 401; add one with "
                    "'cesarctl token add NAME --tokens-file %s'", http["tokens_file"],
                    http["tokens_file"])
    notifier = Notifier()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(deliver(outbox, gateway))]
        if http["wyoming_listen"]:
            from cesard.http.wyoming_asr import serve as wyoming

            tasks.append(asyncio.create_task(wyoming(
                f"tcp://{http['wyoming_listen']}", gateway, float(http["request_timeout"]))))
        host, port = str(http["listen"]).rsplit(":", 1)
        log.info("serving spool %s on http://%s:%s%s", cfg.spool, host, port,
                 f", Wyoming on tcp://{http['wyoming_listen']}" if http["wyoming_listen"]
                 else "")
        notifier.ready(f"listening on {http['listen']}")
        yield
        notifier.send("STOPPING=1")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app = create_app(cfg, tokens, outbox)
    app.router.lifespan_context = lifespan
    host, port = str(http["listen"]).rsplit(":", 1)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)
    return 0


async def deliver(outbox: Any, gateway: Any) -> None:
    """Deliver due callbacks, twice a second, and forget pruned jobs' records every ten
    minutes, until cancelled."""
    swept = 0.0
    while True:
        try:
            await asyncio.to_thread(outbox.run_once, time.time())
            if time.monotonic() - swept > 600:
                swept = time.monotonic()
                await asyncio.to_thread(gateway.sweep, time.time())
        except Exception:  # noqa: BLE001 - the next round tries again
            log.warning("callback delivery failed", exc_info=True)
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
