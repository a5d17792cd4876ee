"""HTTP API (FastAPI): health, metrics, stream control, recent verdicts.

Runs on uvicorn inside the service's event loop. When ``DFM_API_TOKEN`` is set, every
route but ``/healthz``, ``/readyz`` and ``/metrics`` needs ``Authorization: Bearer``.
Every 4xx carries ``{"error": "<one line saying what is wrong>"}``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamer.config import STREAM_ID, StreamSpec
from streamer.manager import StreamRejected
from streamer.sources.webrtc import WhipError

if TYPE_CHECKING:
    from streamer.service import Service

log = logging.getLogger(__name__)


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
