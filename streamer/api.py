"""HTTP API (FastAPI): health, metrics, stream control, recent verdicts, uploads, web page.

Runs on uvicorn inside the service's event loop. When ``DFM_API_TOKEN`` is set, every
route but ``/healthz``, ``/readyz``, ``/metrics`` and the web page's static files needs
``Authorization: Bearer`` (the page asks for the token and sends it on each call).
Every 4xx carries ``{"error": "<one line saying what is wrong>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamer.config import STREAM_ID, StreamSpec
from streamer.manager import StreamRejected, redact
from streamer.sources.webrtc import WhipError
from streamer.uploads import UploadRejected

if TYPE_CHECKING:
    from streamer.service import Service

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
SPARKLINE_POINTS = 60
# Responses that arrive piece by piece: no caching, no proxy buffering.
STREAMING = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="deepfake-monitor", version=service.version, docs_url="/docs")
    token = service.settings.api_token

    def auth(request: Request) -> None:
        if not token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise ApiError(
                401,
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="deepfake-monitor"'},
            )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, exc.status, headers=exc.headers)

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
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = service.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    secured = [Depends(auth)]

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC:
            raise ApiError(404, f"no static file {name!r}")
        return FileResponse(WEB / name, media_type=STATIC[name])

    @app.get("/v1/info", dependencies=secured)
    async def info() -> dict[str, Any]:
        """The model being served and the settings an uploader needs to know."""
        s = service.settings
        meta = service.engine.meta
        return {
            "version": service.version,
            "model": {
                "name": meta.name,
                "version": meta.version,
                "sha256": service.engine.sha256,
                "training_data": meta.training_data,
            },
            "threshold": s.threshold,
            "window_frames": s.window_frames,
            "hop_frames": s.hop_frames,
            "fps": s.fps,
            "scan_max_bytes": s.scan_max_bytes,
        }

    @app.post("/v1/scan", dependencies=secured)
    async def scan_upload(
        request: Request, name: str = Query("upload", max_length=200)
    ) -> StreamingResponse:
        """Score one uploaded video (the request body); NDJSON events as windows finish."""
        uploads = service.uploads
        try:
            uploads.check_room()  # before reading a body it would turn away
            path, size = await uploads.receive(request)
            events = await uploads.events(path, name, size)
        except UploadRejected as exc:
            service.metrics.uploads.labels("rejected").inc()
            raise ApiError(exc.status, exc.reason, exc.headers) from None
        return StreamingResponse(events, media_type="application/x-ndjson", headers=STREAMING)

    @app.get("/v1/events", dependencies=secured)
    async def events(request: Request) -> StreamingResponse:
        """Server-Sent Events: ``streams`` snapshots (state, last score, recent scores)."""
        return StreamingResponse(
            _snapshots(service, request), media_type="text/event-stream", headers=STREAMING
        )

    @app.get("/v1/streams", dependencies=secured)
    async def list_streams() -> dict[str, Any]:
        return {"streams": [r.status() for r in service.manager.streams.values()]}

    @app.post("/v1/streams", status_code=201, dependencies=secured)
    async def add_stream(spec: StreamSpec) -> JSONResponse:
        try:
            if service.directory is not None:
                # Cluster mode: the replica that owns the id's partition starts it.
                service.manager.check(spec)
                await service.directory.put(spec)
                body = {"id": spec.id, "state": "submitted", "cluster": True}
                return JSONResponse(body, 202, headers={"Location": f"/v1/streams/{spec.id}"})
            runner = await service.manager.add(spec)
        except StreamRejected as exc:
            raise ApiError(exc.status, exc.reason) from None
        return JSONResponse(runner.status(), 201, headers={"Location": f"/v1/streams/{spec.id}"})

    @app.get("/v1/streams/{stream_id}", dependencies=secured)
    async def get_stream(stream_id: str) -> dict[str, Any]:
        return _runner(service, stream_id).status()

    @app.delete("/v1/streams/{stream_id}", status_code=204, dependencies=secured)
    async def delete_stream(stream_id: str) -> Response:
        if service.directory is not None:
            await service.directory.delete(stream_id)
            return Response(status_code=202)
        if not await service.manager.remove(stream_id):
            raise ApiError(404, f"no stream {stream_id!r}")
        return Response(status_code=204)

    @app.get("/v1/streams/{stream_id}/verdicts", dependencies=secured)
    async def verdicts(stream_id: str, limit: int = Query(50, ge=1, le=10000)) -> dict[str, Any]:
        _runner(service, stream_id)
        recent = service.recent.recent(stream_id, limit)
        return {"stream_id": stream_id, "verdicts": [v.model_dump(by_alias=True) for v in recent]}

    @app.options("/v1/whip/{stream_id}")
    async def whip_options(stream_id: str) -> Response:
        headers = {"Accept-Post": "application/sdp", "Allow": "OPTIONS, POST"}
        links = [f'<{i.urls}>; rel="ice-server"' for i in service.settings.whip_ice_servers]
        if links:
            headers["Link"] = ", ".join(links)
        return Response(status_code=204, headers=headers)

    @app.post("/v1/whip/{stream_id}", dependencies=secured)
    async def whip_post(stream_id: str, request: Request) -> Response:
        if not STREAM_ID.match(stream_id):
            raise ApiError(422, "stream id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise ApiError(415, f"WHIP offers are Content-Type application/sdp, not {ctype!r}")
        limit = service.settings.whip_max_sdp_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise ApiError(413, f"SDP offer larger than {limit} bytes (DFM_WHIP_MAX_SDP_BYTES)")
        body = await request.body()
        if len(body) > limit:
            raise ApiError(413, f"SDP offer larger than {limit} bytes (DFM_WHIP_MAX_SDP_BYTES)")
        if not body.strip():
            raise ApiError(400, "empty body: send the SDP offer")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the SDP offer is not UTF-8 text") from None
        try:
            session = await service.whip.offer(stream_id, sdp)
        except (WhipError, StreamRejected) as exc:
            raise ApiError(exc.status, exc.reason) from None
        return Response(
            session.pc.localDescription.sdp,
            201,
            media_type="application/sdp",
            headers={"Location": session.location},
        )

    @app.delete("/v1/whip/{stream_id}/{session_id}", dependencies=secured)
    async def whip_delete(stream_id: str, session_id: str) -> Response:
        if not await service.whip.delete(stream_id, session_id):
            raise ApiError(404, f"no WHIP session {session_id!r} for stream {stream_id!r}")
        return Response(status_code=200)

    return app


def stream_cards(service: Service) -> list[dict[str, Any]]:
    """What the web page shows of each stream, with its recent scores for a sparkline."""
    cards = []
    for runner in service.manager.streams.values():
        last = runner.last_verdict
        recent = service.recent.recent(runner.id, SPARKLINE_POINTS)
        cards.append(
            {
                "id": runner.id,
                "url": redact(runner.spec.url),
                "state": str(runner.source_state),
                "reason": runner.reason,
                "label": last.label if last else None,
                "score": last.score if last else None,
                "smoothed_score": last.smoothed_score if last else None,
                "seq": last.seq if last else None,
                "threshold": service.settings.threshold,
                "scores": [v.smoothed_score for v in recent],
            }
        )
    return cards


async def _snapshots(service: Service, request: Request) -> AsyncIterator[str]:
    interval = service.settings.events_interval_s
    last, sent_at = "", 0.0
    yield "retry: 3000\n\n"
    while not service.closing.is_set() and not await request.is_disconnected():
        snapshot = json.dumps({"streams": stream_cards(service)}, separators=(",", ":"))
        now = time.monotonic()
        if snapshot != last:
            yield f"event: streams\ndata: {snapshot}\n\n"
            last, sent_at = snapshot, now
        elif now - sent_at > 15:
            yield ": keep-alive\n\n"
            sent_at = now
        await asyncio.sleep(interval)


def _runner(service: Service, stream_id: str) -> Any:
    runner = service.manager.streams.get(stream_id)
    if runner is None:
        raise ApiError(404, f"no stream {stream_id!r}")
    return runner


def _jsonable(errors: Any) -> Any:
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
