"""``POST /v1/scan``: one uploaded video, scored window by window while the client waits.

The upload is spooled to a temporary file (at most ``DFM_SCAN_MAX_BYTES``), opened once to
prove it is a video, then run through the same path as ``deepfake-monitor scan`` in a
worker thread. Its backbone and head work goes through the service's :class:`Batcher`, so
uploads share the engine with the live streams instead of competing for it. Events go back
as JSON lines (``application/x-ndjson``), one per line, as they happen:

* ``{"event": "started", "name", "bytes", "fps", "window", "hop", "threshold", "model"}``
* ``{"event": "verdict", "verdict": {...}}`` for each window (verdict v1)
* ``{"event": "done", "label", "windows", "frames", "max_score", "top"}``: the overall
  label is the label of the highest-scoring window (FAKE when any window reaches the
  threshold), ``NO_FACE`` when no window had a face; ``top`` holds that window's face
  crops and, from Grad-CAM, its heat-map contact sheet, as data URLs
* ``{"event": "error", "error": "..."}`` when the scan fails part-way.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from analyzer.errors import AnalyzerError
from streamer.errors import (
    BadRequest,
    Busy,
    FrameTooLarge,
    Rejected,
    StreamerError,
    TooLarge,
    Unsupported,
)
from streamer.scan import ScanOptions, ScanSummary, TopWindow, model_ref, open_frames, scan
from streamer.sources.decode import DecodeLimits
from streamer.verdict import Verdict

if TYPE_CHECKING:
    from starlette.requests import Request

    from streamer.batcher import Batcher
    from streamer.config import Settings
    from streamer.metrics import Metrics

log = logging.getLogger(__name__)

VIDEO_HINT = "upload a video file such as MP4, MOV, MKV or WebM"


class _Cancelled(Exception):
    """The client went away; stop scanning."""


class BatcherEngine:
    """The engine as ``scan`` sees it, each call queued on the service's batcher.

    Called from a worker thread; blocks that thread until the event loop's batcher has
    run the work.
    """

    def __init__(
        self, batcher: Batcher, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        self.batcher = batcher
        self.loop = loop
        self.stop = stop
        self.meta = batcher.engine.meta
        self.sha256 = batcher.engine.sha256
        self.feature_dim = batcher.engine.feature_dim

    def backbone(self, crops: np.ndarray) -> np.ndarray:
        async def run() -> np.ndarray:
            await self.batcher.reserve(len(crops))
            return await self.batcher.backbone(list(crops))

        return self._wait(asyncio.run_coroutine_threadsafe(run(), self.loop))

    def head(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        return self._wait(
            asyncio.run_coroutine_threadsafe(self.batcher.head(list(windows)), self.loop)
        )

    def _wait(self, fut: concurrent.futures.Future[np.ndarray]) -> np.ndarray:
        """The result, or _Cancelled once the upload is stopped (client gone, shutdown)."""
        while True:
            try:
                return fut.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    raise _Cancelled from None


class UploadScanner:
    def __init__(self, settings: Settings, batcher: Batcher, metrics: Metrics) -> None:
        self.settings = settings
        self.batcher = batcher
        self.metrics = metrics
        self._slots = asyncio.Semaphore(settings.scan_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stops: set[threading.Event] = set()
        # Bytes each spooled upload holds on disk, received or still arriving: all of them
        # together stay within DFM_SCAN_SPOOL_MAX_BYTES, so uploads cannot fill the disk.
        self._spool: dict[Path, int] = {}

    @property
    def spooled_bytes(self) -> int:
        return sum(self._spool.values())

    def _reserve(self, path: Path, size: int) -> None:
        quota = self.settings.scan_spool_max_bytes
        if self.spooled_bytes - self._spool.get(path, 0) + size > quota:
            if size > quota:
                raise TooLarge(
                    f"the upload is larger than the spool quota of {quota} bytes "
                    "(DFM_SCAN_SPOOL_MAX_BYTES)"
                )
            raise Busy(
                "other uploads fill the upload spool (DFM_SCAN_SPOOL_MAX_BYTES); "
                "try again in a minute",
                retry_after_s=30,
            )
        self._spool[path] = size

    def _remove(self, path: Path) -> None:
        self._spool.pop(path, None)
        _remove(path)

    async def stop(self) -> None:
        """Service shutdown: stop every scan and wait for it (before the batcher stops)."""
        for event in self._stops:
            event.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def receive(self, request: Request) -> tuple[Path, int]:
        """Spool the request body to a temporary file; 413/400 for a bad upload."""
        limit = self.settings.scan_max_bytes
        shown = f"{limit / (1 << 20):g} MiB" if limit >= 1 << 20 else f"{limit} bytes"
        too_large = (
            f"the video is larger than {shown}, this service's limit (DFM_SCAN_MAX_BYTES); "
            "upload a shorter clip"
        )
        declared = request.headers.get("content-length")
        expected = int(declared) if declared and declared.isdigit() else 0
        if expected > limit:
            raise TooLarge(too_large)
        fd, name = tempfile.mkstemp(prefix="dfm-upload-", suffix=".bin")
        path = Path(name)
        size = 0
        try:
            self._reserve(path, expected)
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(too_large)
                    if size > self._spool[path]:
                        self._reserve(path, size)  # a chunked body: counted as it comes
                    fh.write(chunk)
            if size == 0:
                raise BadRequest(f"the upload is empty; {VIDEO_HINT}")
            self._spool[path] = size
        except BaseException:
            self._remove(path)
            raise
        return path, size

    def check_room(self) -> None:
        """503 with Retry-After while every scan slot is taken (DFM_SCAN_CONCURRENCY)."""
        if self._slots.locked():
            raise Busy(
                "the service is busy scanning other uploads; try again in a minute",
                retry_after_s=30,
            )

    async def events(self, path: Path, name: str, size: int) -> AsyncIterator[bytes]:
        """Start scanning ``path``; returns its NDJSON event stream. Deletes ``path``.

        The scan runs as a task of its own, which releases its slot and the file when it
        ends, whether or not anyone still reads; a reader that goes away stops it.
        """
        try:
            self.check_room()  # another upload may have taken the slot meanwhile
        except Rejected:
            self._remove(path)
            raise
        await self._slots.acquire()
        options = ScanOptions.from_schedule(
            self.settings,
            batch_size=min(32, self.settings.max_batch),
            timeout_s=self.settings.open_timeout_s,
            max_gap_s=self.settings.max_gap_s,
            max_seconds=self.settings.scan_max_seconds,
            limits=DecodeLimits(max_pixels=self.settings.max_frame_pixels),
            keep_top=True,
        )
        try:
            frames = await asyncio.to_thread(open_frames, str(path), options)
        except BaseException as exc:
            self._slots.release()
            self._remove(path)
            if isinstance(exc, FrameTooLarge):
                raise TooLarge(
                    f"{name}: its frames are larger than {self.settings.max_frame_pixels} pixels "
                    "(DFM_MAX_FRAME_PIXELS); upload a smaller video"
                ) from None
            if isinstance(exc, (StreamerError, AnalyzerError, StopIteration, OSError)):
                log.info("upload %s is not a video: %s", name, exc)
                raise Unsupported(
                    f"{name} is not a video this service can decode; {VIDEO_HINT}"
                ) from None
            raise
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        stop = threading.Event()
        self._stops.add(stop)
        task = asyncio.create_task(self._produce(path, name, size, frames, options, lines, stop))
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return self._consume(lines, stop)

    async def _consume(
        self, lines: asyncio.Queue[bytes | None], stop: threading.Event
    ) -> AsyncIterator[bytes]:
        try:
            while (line := await lines.get()) is not None:
                yield line
        finally:
            stop.set()

    async def _produce(
        self,
        path: Path,
        name: str,
        size: int,
        frames: Any,
        options: ScanOptions,
        lines: asyncio.Queue[bytes | None],
        stop: threading.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        engine = BatcherEngine(self.batcher, loop, stop)
        threshold = engine.meta.served_threshold(options.threshold)[0]
        verdicts: list[Verdict] = []

        def emit(verdict: Verdict) -> None:
            verdicts.append(verdict)
            line = _line({"event": "verdict", "verdict": verdict.to_dict()})
            loop.call_soon_threadsafe(lines.put_nowait, line)

        def check() -> None:
            if stop.is_set():
                raise _Cancelled

        def work() -> ScanSummary:
            from analyzer.faces import open_detector

            device = str(self.batcher.engine.device)
            with open_detector(self.settings.detector, device) as detector:
                return scan(
                    frames, engine, detector, emit, options, stream_id="upload", on_frame=check
                )

        self.metrics.uploads_active.inc()
        result = "failed"
        try:
            started = {
                "event": "started",
                "name": name,
                "bytes": size,
                "fps": options.fps,
                "window": options.window,
                "hop": options.hop,
                "threshold": threshold,
                "model": model_ref(engine).model_dump(),
            }
            lines.put_nowait(_line(started))
            try:
                summary = await asyncio.to_thread(work)
            except _Cancelled:
                log.info("upload %s: the client went away; scan stopped", name)
                result = "cancelled"
                return
            except Exception as exc:
                log.warning("upload %s: scan failed: %s", name, exc)
                lines.put_nowait(_line({"event": "error", "error": f"the scan stopped: {exc}"}))
                return
            lines.put_nowait(_line(await self._done(verdicts, summary, threshold)))
            result = "done"
        finally:
            self._stops.discard(stop)
            self.metrics.uploads_active.dec()
            self.metrics.uploads.labels(result).inc()
            lines.put_nowait(None)
            self._slots.release()
            self._remove(path)

    async def _done(
        self, verdicts: list[Verdict], summary: ScanSummary, threshold: float
    ) -> dict[str, Any]:
        scored = [v.score for v in verdicts if v.score is not None]
        if not scored:
            label = "NO_FACE"
        else:
            label = "FAKE" if max(scored) >= threshold else "REAL"
        top = None
        if summary.top is not None and len(summary.top.crops):
            top = await self._top(summary.top)
        return {
            "event": "done",
            "label": label,
            "windows": len(verdicts),
            "frames": summary.frames,
            "max_score": max(scored) if scored else None,
            # Cut at DFM_SCAN_MAX_SECONDS of media time: the rest was not scanned.
            "truncated": summary.truncated,
            "top": top,
        }

    async def _top(self, top: TopWindow) -> dict[str, Any]:
        from analyzer.explain import contact_sheet, grad_cam

        picks = np.linspace(0, len(top.crops) - 1, min(8, len(top.crops))).round().astype(int)
        heatmap = None
        try:
            exp = await self.batcher.call(grad_cam, self.batcher.engine, top.crops)
            heatmap = _data_url(contact_sheet(exp, tiles=8, columns=4), ".png")
        except Exception as exc:  # the verdicts stand without the picture
            log.warning("heat map failed: %s", exc)
        return {
            "seq": top.seq,
            "score": round(top.score, 6),
            "track_id": top.track_id,
            "crops": [_data_url(top.crops[i], ".jpg") for i in picks],
            "heatmap": heatmap,
        }


def _remove(path: Path) -> None:
    """Delete a spooled upload (a local unlink: quick enough for the event loop)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _data_url(rgb: np.ndarray, ext: str) -> str:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image as {ext}")
    mime = "image/png" if ext == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode()}"
