"""cesard-http's routes (FastAPI): OpenAI's ``/v1/audio/transcriptions``,
``/v1/audio/translations`` and ``/v1/models``, and cesard's async ``/v1/jobs``. Every
request names its client by a bearer token (:mod:`cesard.http.tokens`); every job goes
through the spool like any other (:mod:`cesard.http.gateway`)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cesard import config as configmod
from cesard import job as jobmod
from cesard.http import shapes, upload
from cesard.http.callbacks import Outbox
from cesard.http.gateway import FINISHED, UPLOAD_PART, Found, Gateway
from cesard.http.metrics import HttpMetrics
from cesard.http.tokens import Client, Tokens
from cesard.spool import SEGMENTS

DEFAULT_MODEL_ALIASES = ("whisper-1", "default", "")
# status of a failed job by its error type (anything else: 500)
FAILED_STATUS = {"UndecodableAudio": 415, "InvalidOption": 400, "InvalidJob": 400,
                 "AudioTooLong": 413, "FileTooLarge": 413, "UnknownModel": 400}
FIELDS = {"model": "model", "language": "language", "initial_prompt": "prompt",
          "formats": "response_format", "beam_size": "beam_size", "priority": "priority",
          "word_timestamps": "timestamp_granularities[]", "task": "model",
          "speakers": "speakers", "min_speakers": "min_speakers",
          "max_speakers": "max_speakers"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = shapes.error(message, kind, param, code, **extra)


class Request_:
    """What one transcription request asked for, read from its form."""

    def __init__(self, fields: upload.Upload, task: str, served: list[str],
                 default_model: str) -> None:
        f = fields.one
        self.format = response_format(f("response_format") or "json")
        grains = fields.fields.get("timestamp_granularities[]", []) + \
            fields.fields.get("timestamp_granularities", [])
        for g in grains:
            if g not in ("word", "segment"):
                raise ApiError(400, f"timestamp_granularities: {g!r} is not word or segment",
                               param="timestamp_granularities[]")
        self.words = "word" in grains
        self.segments = "segment" in grains or not grains
        self.stream = (f("stream") or "false").lower() == "true"
        self.callback_url = f("callback_url")
        temperature = f("temperature")
        if temperature is not None:
            try:
                float(temperature)
            except ValueError:
                raise ApiError(400, f"temperature {temperature!r} is not a number",
                               param="temperature") from None
        opts: dict[str, Any] = {}
        model = f("model") or ""
        if model not in DEFAULT_MODEL_ALIASES and model != default_model:
            if model not in served:
                raise ApiError(400, f"model {model!r} is not served here (served: "
                               f"{', '.join(served)}, or whisper-1 for the default); "
                               "GET /v1/models lists them", param="model",
                               code="model_not_found")
            opts["model"] = model
        if f("language"):
            opts["language"] = f("language")
        if f("prompt"):
            opts["initial_prompt"] = f("prompt")
        if f("priority"):
            opts["priority"] = f("priority")
        if task == "translate":
            opts["task"] = "translate"
        if self.words:
            opts["word_timestamps"] = True
        if (f("diarize") or "").lower() in ("true", "1"):  # cesard's: who said what
            opts["diarize"] = True
        for key in ("speakers", "min_speakers", "max_speakers"):
            value = f(key)
            if value is not None:
                if not value.isdigit():
                    raise ApiError(400, f"{key} {value!r} is not a number", param=key)
                opts[key] = int(value)
        if self.format in ("srt", "vtt"):
            opts["formats"] = [self.format]
        self.options = opts


DRAIN_BYTES = 64 << 20  # of a refused upload, read and dropped before the 413


async def drain(request: Request) -> None:
    """Read and drop what is left of a refused upload (up to DRAIN_BYTES), so that the
    client, still sending, reads the 413 instead of a broken pipe; past that the
    connection is closed on it."""
    dropped = 0
    try:
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > DRAIN_BYTES:
                return
    except Exception:  # noqa: BLE001 - the client went away: nothing to tell it
        return


def response_format(fmt: str) -> str:
    """``fmt`` if OpenAI has it, else a 400 naming the field."""
    if fmt not in shapes.FORMATS:
        raise ApiError(400, f"response_format {fmt!r} is not one of "
                       f"{', '.join(shapes.FORMATS)}", param="response_format")
    return fmt


def client_of(tokens: Tokens, request: Request) -> Client:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "no bearer token: send 'Authorization: Bearer TOKEN' (the "
                       "administrator makes one with 'cesarctl token add NAME')",
                       kind="authentication_error", code="invalid_api_key")
    client = tokens.client(token.strip())
    if client is None:
        raise ApiError(401, "the bearer token is not known here (tokens_file)",
                       kind="authentication_error", code="invalid_api_key")
    return client


def create_app(cfg: configmod.Config, tokens: Tokens, outbox: Outbox | None = None,
               metrics: HttpMetrics | None = None) -> FastAPI:
    gw = Gateway(cfg)
    http = cfg.http_settings
    limit = int(float(http["max_upload_mb"]) * 1024 * 1024)
    metrics = metrics or HttpMetrics()
    app = FastAPI(title="cesard-http", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(shapes.error(str(e.detail), code=str(e.status_code)),
                            status_code=e.status_code)

    @app.middleware("http")
    async def timed(request: Request, call_next: Any) -> Response:
        t0 = time.monotonic()
        response: Response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.request(route, request.method, response.status_code, time.monotonic() - t0)
        return response

    def served() -> list[str]:
        return gw.models()

    async def accept(request: Request, task: str,
                     jobs: bool = False) -> tuple[Client, str, Request_]:
        """Authenticate, check the client's limits, stream the upload into tmp/ and
        publish the job; the job id and what was asked."""
        client = client_of(tokens, request)
        per_jobs, per_bytes = cfg.max_queued_per_owner, cfg.max_queued_bytes_per_owner
        if per_jobs or per_bytes:
            count, size = await run_in_threadpool(gw.queued, client)
            if per_jobs and count >= per_jobs:
                raise ApiError(429, f"client {client.name} has {count} jobs queued, the "
                               f"limit (max_queued_per_owner: {per_jobs}); wait for some "
                               "to finish", kind="rate_limit_error", code="too_many_jobs")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
            await drain(request)
            raise ApiError(413, f"the upload is {int(declared)} bytes, over max_upload_mb "
                           f"({http['max_upload_mb']} MB)", code="file_too_large")
        job_id, build = await run_in_threadpool(gw.upload_dir)
        try:
            got = await upload.receive(request.headers.get("content-type", ""),
                                       request.stream(), build / UPLOAD_PART, limit,
                                       float(http["upload_idle_seconds"]))
            asked = Request_(got, task, served(), cfg.job_defaults().model)
            if per_bytes:
                count, size = await run_in_threadpool(gw.queued, client)
                if size + got.size > per_bytes:
                    raise ApiError(429, f"client {client.name} has {size} bytes queued; with "
                                   f"this upload it is over max_queued_bytes_per_owner "
                                   f"({per_bytes})", kind="rate_limit_error",
                                   code="too_many_bytes")
            check_options(cfg, asked.options)
            if asked.callback_url and jobs:
                if outbox is None:
                    raise ApiError(400, "callbacks are off here", param="callback_url")
                try:  # recorded before the job exists: a crash in between loses nothing
                    await run_in_threadpool(outbox.add, job_id, client, asked.callback_url,
                                            asked.format)
                except ValueError as e:
                    raise ApiError(400, str(e), param="callback_url") from None
            try:
                await run_in_threadpool(gw.publish, job_id, build, got.filename or "audio",
                                        asked.options, client)
            except BaseException:
                if outbox is not None:
                    await run_in_threadpool(outbox.remove, job_id)
                raise
        except upload.TooLarge:
            await run_in_threadpool(gw.discard, build)
            await drain(request)
            raise ApiError(413, f"the upload is over max_upload_mb ({http['max_upload_mb']} "
                           "MB)", code="file_too_large") from None
        except upload.Stalled:
            await run_in_threadpool(gw.discard, build)
            raise ApiError(408, f"the upload stalled: nothing came for "
                           f"{http['upload_idle_seconds']} s (upload_idle_seconds)",
                           code="upload_timeout") from None
        except upload.BadUpload as e:
            await run_in_threadpool(gw.discard, build)
            raise ApiError(400, str(e), param="file") from None
        except BaseException:
            await run_in_threadpool(gw.discard, build)
            raise
        metrics.submitted()
        return client, job_id, asked

    async def finished(job_id: str, client: Client, timeout: float,
                       request: Request | None) -> dict[str, Any] | None:
        """The job's result once it is finished; None past ``timeout`` or when the
        client went away (the job goes on)."""
        deadline = time.monotonic() + timeout
        missing = 0.0
        while time.monotonic() < deadline:
            found = await run_in_threadpool(gw.find, job_id, client)
            if found is not None and found.state in FINISHED:
                result = await run_in_threadpool(gw.result, found)
                if result is not None:
                    return result
            if found is None:  # between two renames (recovery), briefly under no name
                missing = missing or time.monotonic()
                if time.monotonic() - missing > 5.0:
                    raise ApiError(404, f"job {job_id} left the spool (pruned or "
                                   "cancelled by an administrator)", code="job_gone")
            else:
                missing = 0.0
            if request is not None and await request.is_disconnected():
                return None
            await asyncio.sleep(0.1)
        return None

    def answer(result: dict[str, Any], asked: Request_) -> Response:
        status = result.get("status")
        if status != "done":
            err = result.get("error") or {}
            code = FAILED_STATUS.get(str(err.get("type")), 500)
            if status == "cancelled":
                code = 409
            raise ApiError(code, f"job {result.get('id')} {status}: {err.get('type')}: "
                           f"{err.get('message')}", kind="invalid_request_error"
                           if code < 500 else "server_error", code=str(err.get("type")),
                           job_id=result.get("id"))
        body = shapes.render(result, asked.format, asked.words, asked.segments)
        return Response(body, media_type=shapes.MEDIA[asked.format],
                        headers={"X-Cesar-Job": str(result.get("id"))})

    async def transcribe(request: Request, task: str) -> Response:
        client, job_id, asked = await accept(request, task)
        if not await run_in_threadpool(gw.up):
            raise ApiError(503, f"cesard is not running; job {job_id} is queued and runs "
                           f"when it starts: GET /v1/jobs/{job_id}", kind="server_error",
                           code="daemon_down", job_id=job_id)
        if asked.stream:
            return StreamingResponse(stream(job_id, client, request),
                                     media_type="text/event-stream",
                                     headers={"X-Cesar-Job": job_id})
        result = await finished(job_id, client, float(http["request_timeout"]), request)
        if result is None:
            raise ApiError(504, f"job {job_id} is not finished after request_timeout "
                           f"({http['request_timeout']} s); it goes on: GET /v1/jobs/{job_id}",
                           kind="server_error", code="timeout", job_id=job_id)
        return answer(result, asked)

    async def stream(job_id: str, client: Client, request: Request) -> AsyncIterator[bytes]:
        """Server-sent events: a text delta per segment as the worker decodes it, then
        the whole text (OpenAI's transcript.text.delta / transcript.text.done)."""
        offset = sent = 0
        deadline = time.monotonic() + float(http["request_timeout"])
        while time.monotonic() < deadline:
            found = await run_in_threadpool(gw.find, job_id, client)
            if found is not None:
                segs, offset = await run_in_threadpool(new_segments, found, offset)
                for seg in segs:
                    yield shapes.sse(shapes.delta((" " if sent else "")
                                                  + str(seg.get("text") or "")))
                    sent += 1
                if found.state in FINISHED:
                    result = await run_in_threadpool(gw.result, found)
                    if result is not None:
                        if result.get("status") == "done":
                            if not sent and result.get("text"):  # finished before we looked
                                yield shapes.sse(shapes.delta(str(result["text"])))
                            yield shapes.sse(shapes.done(str(result.get("text") or "")))
                        else:
                            err = result.get("error") or {}
                            yield shapes.sse({"type": "error", "error": shapes.error(
                                f"job {job_id} {result.get('status')}: {err.get('message')}",
                                code=str(err.get("type")))["error"]})
                        return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.1)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await transcribe(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await transcribe(request, "translate")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        client_of(tokens, request)
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "cesard"}
            for m in ["whisper-1", *served()]]})

    # --- async jobs ---------------------------------------------------------------
    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        client, job_id, asked = await accept(request, "transcribe", jobs=True)
        return JSONResponse({"id": job_id, "object": "transcription.job", "status": "queued",
                             "daemon": "running" if gw.up() else "not running"},
                            status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    async def mine(request: Request, job_id: str) -> tuple[Client, Found]:
        client = client_of(tokens, request)
        found = await run_in_threadpool(gw.find, job_id, client)
        if found is None:
            raise ApiError(404, f"no job {job_id} of yours", code="job_not_found")
        return client, found

    @app.get("/v1/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> Response:
        client, found = await mine(request, job_id)
        fmt = response_format(request.query_params.get("response_format", "json"))
        body: dict[str, Any] = {"id": job_id, "object": "transcription.job"}
        result = await run_in_threadpool(gw.result, found)
        if result is None:
            live = await run_in_threadpool(gw.live, job_id)
            body["status"] = "processing" if live.get("state") == "running" else "queued"
            body["progress"] = live.get("progress", 0.0)
        else:
            body["status"] = result.get("status")
            body["error"] = result.get("error")
            if result.get("status") == "done":
                rendered = shapes.render(result, fmt, True, True)
                body["result"] = json.loads(rendered) if fmt.endswith("json") else rendered
            body["finished_at"] = result.get("finished_at")
        if outbox is not None:
            body["callback"] = await run_in_threadpool(outbox.state, job_id)
        return JSONResponse(body)

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str) -> StreamingResponse:
        client, _ = await mine(request, job_id)
        return StreamingResponse(stream(job_id, client, request),
                                 media_type="text/event-stream")

    @app.delete("/v1/jobs/{job_id}")
    async def delete_job(request: Request, job_id: str) -> JSONResponse:
        client, found = await mine(request, job_id)
        if found.state in FINISHED:
            raise ApiError(409, f"job {job_id} is finished ({found.state}); nothing to cancel",
                           code="job_finished")
        reply = await run_in_threadpool(gw.cancel, job_id, client)
        if not reply.get("ok"):
            raise ApiError(409 if gw.up() else 503, str(reply.get("message")),
                           code="cancel_refused")
        return JSONResponse({"id": job_id, "object": "transcription.job",
                             "status": "cancelled"})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        text, media = metrics.exposition()
        return Response(text, media_type=media)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"daemon": "running" if gw.up() else "not running"},
                            status_code=200 if gw.up() else 503)

    return app


def check_options(cfg: configmod.Config, options: dict[str, Any]) -> None:
    """What the daemon would refuse, said now as a 400 naming the form field."""
    from cesard.ctl.submit import check_model

    try:
        parsed = jobmod.parse_options(options, cfg.job_defaults(), where="request")
        check_model(cfg, parsed, "model" in options)
        cfg.check_then(parsed)
    except jobmod.InvalidOption as e:
        msg = str(e).replace("request: ", "")
        param = next((field for key, field in FIELDS.items() if f"'{key}'" in msg), None)
        for key, field in FIELDS.items():
            msg = msg.replace(f"option {key!r}", field)
        raise ApiError(400, msg, param=param) from None


def new_segments(found: Found, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of the job's segments.jsonl from ``offset``; the new offset."""
    try:
        fd = os.open(found.path / SEGMENTS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return [], offset
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size < offset:
            offset = 0  # a new attempt rewrote it
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        try:
            seg = json.loads(line)
        except ValueError:
            continue
        if isinstance(seg, dict):
            out.append(seg)
    return out, offset + end
