"""HTTP API (FastAPI): health, metrics, stream control, recent verdicts, uploads, web page.

Runs on uvicorn inside the service's event loop, behind :class:`~streamer.httpguard.HttpGuard`
(host, token, body size and read timeout are checked there, before any body is read).
The API talks to the service through :class:`ApiBackend` and to streams through
:class:`~streamer.control.StreamControl`; the service's typed errors
(:class:`~streamer.errors.Rejected`) become HTTP statuses here and nowhere else
(``STATUS``). Every 4xx carries ``{"error": "<one line saying what is wrong>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamer.config import STREAM_ID, Settings, StreamSpec
from streamer.control import StreamControl
from streamer.errors import (
    BadRequest,
    Busy,
    Conflict,
    Invalid,
    LimitReached,
    NotFound,
    Rejected,
    TooLarge,
    Unsupported,
    UrlRejected,
)
from streamer.evidence import EvidenceWriter
from streamer.httpguard import JSON_MAX_BYTES, HttpGuard
from streamer.metrics import Metrics
from streamer.sources.webrtc import WhipGateway
from streamer.uploads import UploadScanner

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Responses that arrive piece by piece: no caching, no proxy buffering.
STREAMING = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


# The one place a kind of refusal becomes an HTTP status (most specific class first).
STATUS: tuple[tuple[type[Rejected], int], ...] = (
    (UrlRejected, 400),
    (BadRequest, 400),
    (Invalid, 422),
    (NotFound, 404),
    (Conflict, 409),
    (LimitReached, 429),
    (TooLarge, 413),
    (Unsupported, 415),
    (Busy, 503),
    (Rejected, 400),
)


def status_of(exc: Rejected) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


class ApiBackend(Protocol):
    """What the HTTP layer needs of the service (``streamer.service.Service`` is one)."""

    settings: Settings
    version: str
    metrics: Metrics
    closing: asyncio.Event
    evidence: EvidenceWriter | None

    @property
    def control(self) -> StreamControl: ...

    @property
    def whip(self) -> WhipGateway: ...

    @property
    def uploads(self) -> UploadScanner: ...

    @property
    def threshold(self) -> float: ...

    def readiness(self) -> dict[str, bool]: ...

    def health(self) -> list[str]: ...

    def info(self) -> dict[str, Any]: ...


def body_cap(settings: Settings) -> Any:
    """The largest body each route takes, and the setting that says so."""

    def cap(method: str, path: str) -> tuple[int, str]:
        if method == "POST" and path == "/v1/scan":
            return settings.scan_max_bytes, "DFM_SCAN_MAX_BYTES"
        if method == "POST" and path.startswith("/v1/whip/"):
            return settings.whip_max_sdp_bytes, "DFM_WHIP_MAX_SDP_BYTES"
        return JSON_MAX_BYTES, "fixed for JSON calls"

    return cap


class HttpMetrics:
    """ASGI middleware: counts every HTTP answer by method, route template and status, and
    times it to the response's start. The route is the matched template
    (``/v1/streams/{stream_id}``), ``unmatched`` otherwise: random paths add no series."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before it answers

        async def timed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                self.metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
            await send(message)

        method = scope["method"] if scope["method"] in METHODS else "other"  # bounded
        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.http_requests.labels(method, _route(scope), str(status)).inc()


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route(scope: Any) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def guarded_app(service: ApiBackend) -> HttpMetrics:
    """The app as served: :func:`create_app` behind the :class:`HttpGuard`, counted."""
    s = service.settings
    from streamer.config import is_loopback

    guard = HttpGuard(
        create_app(service),
        token=s.api_token,
        check_host=not s.api_token and is_loopback(s.http_host),
        body_cap=body_cap(s),
        read_timeout_s=s.http_read_timeout_s,
        on_reject=lambda label: service.metrics.http_rejected.labels(label).inc(),
    )
    return HttpMetrics(guard, service.metrics)


def create_app(service: ApiBackend) -> FastAPI:
    app = FastAPI(title="deepfake-monitor", version=service.version, docs_url="/docs")
    sse_clients = 0

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return JSONResponse({"error": exc.reason}, status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        reason = f"{loc}: {first['msg']}" if loc else str(first["msg"])
        return JSONResponse({"error": reason, "detail": _jsonable(errors)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: fails when the engine is stalled or a supervised task died."""
        problems = service.health()
        if problems:
            return JSONResponse({"status": "unhealthy", "problems": problems}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = service.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(WEB / name, media_type=STATIC[name])

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        """The model being served and the settings an uploader needs to know."""
        return service.info()

    @app.post("/v1/scan")
    async def scan_upload(
        request: Request, name: str = Query("upload", max_length=200)
    ) -> StreamingResponse:
        """Score one uploaded video (the request body); NDJSON events as windows finish."""
        uploads = service.uploads
        intake_open()
        try:
            uploads.check_room()  # before reading a body it would turn away
            path, size = await uploads.receive(request)
            events = await uploads.events(path, name, size)
        except Rejected:
            service.metrics.uploads.labels("rejected").inc()
            raise
        return StreamingResponse(events, media_type="application/x-ndjson", headers=STREAMING)

    async def event_slot() -> AsyncIterator[None]:
        """One of ``DFM_EVENTS_MAX_CLIENTS`` event streams, held while it is open."""
        nonlocal sse_clients
        if sse_clients >= service.settings.events_max_clients:
            raise Busy(
                f"{sse_clients} event streams are open already (DFM_EVENTS_MAX_CLIENTS)",
                retry_after_s=10,
            )
        sse_clients += 1
        try:
            yield
        finally:
            sse_clients -= 1

    @app.get("/v1/events", response_class=EventSourceResponse, dependencies=[Depends(event_slot)])
    async def events(request: Request) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events: ``streams`` snapshots (state, last score, recent scores),
        sent when they change; FastAPI frames them and keeps an idle stream alive."""
        yield ServerSentEvent(retry=3000)
        last = ""
        while not service.closing.is_set() and not await request.is_disconnected():
            cards = service.control.cards(service.threshold)
            snapshot = json.dumps({"streams": cards}, separators=(",", ":"))
            if snapshot != last:
                yield ServerSentEvent(event="streams", raw_data=snapshot)
                last = snapshot
            await asyncio.sleep(service.settings.events_interval_s)

    @app.get("/v1/streams")
    async def list_streams() -> dict[str, Any]:
        return {"streams": service.control.streams()}

    def intake_open() -> None:
        if service.closing.is_set():
            raise Busy("this replica is shutting down; send the request again", retry_after_s=5)

    @app.post("/v1/streams", status_code=201)
    async def add_stream(spec: StreamSpec) -> JSONResponse:
        intake_open()
        done = await service.control.add(spec)
        headers = {"Location": f"/v1/streams/{spec.id}"}
        return JSONResponse(done.status, 202 if done.accepted else 201, headers=headers)

    @app.get("/v1/streams/{stream_id}")
    async def get_stream(stream_id: str) -> dict[str, Any]:
        return service.control.get(stream_id)

    @app.delete("/v1/streams/{stream_id}", status_code=204)
    async def delete_stream(stream_id: str) -> Response:
        done = await service.control.remove(stream_id)
        return Response(status_code=202 if done.accepted else 204)

    async def evidence_file(record_id: str, name: str) -> bytes:
        writer = service.evidence
        if writer is None:
            raise NotFound("evidence is off on this replica (DFM_EVIDENCE=off)")
        if record_id in writer.pending:
            raise NotFound(f"evidence {record_id} is still being made; ask again in a second",
                           retry_after_s=1)  # fmt: skip
        data = await asyncio.to_thread(writer.store.read, record_id, name)
        if data is None:
            raise NotFound(
                f"no evidence {record_id}/{name}: never made on this replica, or removed "
                "to keep DFM_EVIDENCE_MAX_MB"
            )
        return data

    @app.get("/v1/evidence/{record_id}")
    async def evidence_manifest(record_id: str) -> Response:
        """An evidence record's manifest: the verdict, the model, every picture's URL."""
        data = await evidence_file(record_id, "manifest.json")
        return Response(data, media_type="application/json")

    @app.get("/v1/evidence/{record_id}/{name}")
    async def evidence_picture(record_id: str, name: str) -> Response:
        """A picture of an evidence record: sheet.jpg, context.jpg, face-N-crop-K.jpg..."""
        data = await evidence_file(record_id, name)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip

    def latest_evidence(stream_id: str) -> str:
        writer = service.evidence
        record = writer.newest(stream_id) if writer is not None else None
        if record is None:
            raise NotFound(f"no evidence of stream {stream_id} on this replica (it has not "
                           "turned FAKE here, or DFM_EVIDENCE=off)")  # fmt: skip
        return record

    @app.get("/v1/streams/{stream_id}/evidence")
    async def stream_evidence(stream_id: str) -> Response:
        """The newest evidence record of a stream (what an alert links to)."""
        return await evidence_manifest(latest_evidence(stream_id))

    @app.post("/v1/streams/{stream_id}/evidence", status_code=202)
    async def request_evidence(stream_id: str) -> dict[str, Any]:
        """Keep evidence of the stream's next window, whatever its label."""
        return service.control.request_evidence(stream_id)

    @app.get("/v1/streams/{stream_id}/evidence/sheet.jpg")
    async def stream_evidence_sheet(stream_id: str) -> Response:
        return await evidence_picture(latest_evidence(stream_id), "sheet.jpg")

    @app.get("/v1/streams/{stream_id}/verdicts")
    async def verdicts(stream_id: str, limit: int = Query(50, ge=1, le=10000)) -> dict[str, Any]:
        return {"stream_id": stream_id, "verdicts": service.control.verdicts(stream_id, limit)}

    @app.options("/v1/whip/{stream_id}")
    async def whip_options(stream_id: str) -> Response:
        headers = {"Accept-Post": "application/sdp", "Allow": "OPTIONS, POST"}
        links = [f'<{i.urls}>; rel="ice-server"' for i in service.settings.whip_ice_servers]
        if links:
            headers["Link"] = ", ".join(links)
        return Response(status_code=204, headers=headers)

    @app.post("/v1/whip/{stream_id}")
    async def whip_post(stream_id: str, request: Request) -> Response:
        if not STREAM_ID.match(stream_id):
            raise Invalid("stream id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        intake_open()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise Unsupported(f"WHIP offers are Content-Type application/sdp, not {ctype!r}")
        body = await request.body()  # at most DFM_WHIP_MAX_SDP_BYTES: HttpGuard cut it there
        if not body.strip():
            raise BadRequest("empty body: send the SDP offer")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the SDP offer is not UTF-8 text") from None
        session = await service.whip.offer(stream_id, sdp)
        return Response(
            session.pc.localDescription.sdp,
            201,
            media_type="application/sdp",
            headers={"Location": session.location},
        )

    @app.delete("/v1/whip/{stream_id}/{session_id}")
    async def whip_delete(stream_id: str, session_id: str) -> Response:
        if not await service.whip.delete(stream_id, session_id):
            raise NotFound(f"no WHIP session {session_id!r} for stream {stream_id!r}")
        return Response(status_code=200)

    return app


def _jsonable(errors: Any) -> Any:
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
