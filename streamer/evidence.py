"""Evidence: what the model saw when a stream turned FAKE, kept where an alert can link to.

Each stream keeps a small ring of JPEG-compressed face crops (:class:`CropRing`: one crop
every ``window / 16`` frames per face, about 16 JPEGs of 3-5 kB, so some 60 kB a face
beside its 0.62 MB feature ring) and, with ``DFM_EVIDENCE=full``, the latest frame that
had a face, as a JPEG made in the source's thread. When a window's label turns FAKE the
stream allocates the record's id, links it from the verdict
(``evidence: {"id", "url"}``) and hands the JPEGs to the :class:`EvidenceWriter`, one
loop task that builds the record off the hot path:

- 8 evenly spaced crops of each face at or above the threshold (the top face at least),
- their Grad-CAM heat maps (``analyzer/explain.py``), run in the engine's thread only when
  the engine has nothing queued, at most ``DFM_EVIDENCE_PER_MIN`` a minute; a heat map
  not made (rate, a busy engine, an error) is counted and the record says why,
- a contact sheet of both, the context frame with the face boxes drawn,
- a manifest (``manifest.json``): the verdict, the model's name, version and sha256,
  and every picture's URL.

The :class:`EvidenceStore` writes each record as a folder under ``DFM_EVIDENCE_DIR``
(written aside, then renamed into place) and removes the oldest records once the folder
holds more than ``DFM_EVIDENCE_MAX_MB``. ``GET /v1/evidence/{id}`` serves the manifest and
``GET /v1/evidence/{id}/{name}.jpg`` its pictures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from analyzer.faces import FrameFaces, host_crop
from streamer.batcher import Batcher
from streamer.config import Settings
from streamer.metrics import Metrics
from streamer.verdict import EvidenceLink, Verdict, utc_now_iso

log = logging.getLogger(__name__)

SHEET_CROPS = 8  # crops of each face on the contact sheet
RING_CROPS = 16  # JPEG crops each face keeps over one window
JPEG_QUALITY = 85
CONTEXT_SIDE = 640  # the context frame's longer side, at most
NAME = re.compile(r"^[a-z0-9-]{1,64}\.jpg$")
RECORD_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def evidence_link(record_id: str) -> EvidenceLink:
    """Where a record is served (the verdict's ``evidence``)."""
    return EvidenceLink(id=record_id, url=f"/v1/evidence/{record_id}")


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])  # fmt: skip
    if not ok:
        raise ValueError("cannot encode a JPEG")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def context_jpeg(rgb: np.ndarray) -> bytes:
    """The frame around the faces, its longer side at most ``CONTEXT_SIDE``."""
    h, w = rgb.shape[:2]
    scale = CONTEXT_SIDE / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return encode_jpeg(rgb, 80)


class CropRing:
    """Each face's crops of the last window, one every ``window // RING_CROPS`` frames, as
    JPEGs; bounded: at most ``RING_CROPS`` a face. A crop cut on the engine's device
    (``DFM_CROP=device``) is kept there as it is and made a JPEG only when a record asks
    for it (:meth:`window`): copying it back at once would wait on the device, in the event
    loop, for every ninth frame of every face."""

    def __init__(self, window: int) -> None:
        self.every = max(1, window // RING_CROPS)
        self.faces: dict[int, deque[tuple[int, Any]]] = {}  # (frame, JPEG or device crop)
        self.context: tuple[int, bytes] | None = None  # (frame, JPEG) of the latest context

    def add(self, frame: int, faces: FrameFaces, context: bytes | None = None) -> None:
        for track_id in faces.ended:
            self.faces.pop(track_id, None)
        if context is not None:
            self.context = (frame, context)
        if frame % self.every:
            return
        for face in faces.crops:
            ring = self.faces.setdefault(face.track_id, deque(maxlen=RING_CROPS))
            crop = face.crop
            # A device crop is a view of its frame's crops: a copy keeps only its own.
            kept = encode_jpeg(crop) if isinstance(crop, np.ndarray) else crop.clone()
            ring.append((frame, kept))

    def restart(self) -> None:
        self.faces.clear()
        self.context = None

    def context_since(self, frame: int) -> bytes | None:
        """The latest context JPEG, if it was taken at ``frame`` or later."""
        if self.context is None or self.context[0] < frame:
            return None
        return self.context[1]

    def window(self, track_id: int, first: int, last: int) -> list[tuple[int, bytes]]:
        return [
            (f, j if isinstance(j, bytes) else encode_jpeg(host_crop(j)))
            for f, j in self.faces.get(track_id, ())
            if first <= f <= last
        ]

    @property
    def nbytes(self) -> int:
        """Bytes held: the JPEGs, and device crops as their pixels (in device memory)."""
        held = sum(
            len(j) if isinstance(j, bytes) else j.nbytes
            for ring in self.faces.values()
            for _, j in ring
        )
        return held + (len(self.context[1]) if self.context else 0)


@dataclass
class EvidenceJob:
    """What a stream hands the writer for one FAKE window (all of it already JPEG)."""

    link: EvidenceLink
    verdict: Verdict
    first_frame: int
    last_frame: int
    faces: dict[int, list[tuple[int, bytes]]]  # track -> (frame, JPEG) of suspicious faces
    context: bytes | None


class EvidenceStore:
    """Records as folders under ``folder``, the oldest removed past ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        for old in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime):
            if old.name.endswith(".part"):
                shutil.rmtree(old, ignore_errors=True)  # a write the last run did not finish
            elif old.is_dir() and RECORD_ID.match(old.name):
                self._sizes[old.name] = sum(f.stat().st_size for f in old.iterdir())
        self.removed = 0
        self._trim()

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._sizes

    def put(self, record_id: str, files: dict[str, bytes]) -> None:
        if not RECORD_ID.match(record_id):
            raise ValueError(f"bad evidence id {record_id!r}")
        part = self.folder / f"{record_id}.part"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for name, data in files.items():
            (part / name).write_bytes(data)
        final = self.folder / record_id
        shutil.rmtree(final, ignore_errors=True)
        self._sizes.pop(record_id, None)
        size = sum(len(d) for d in files.values())
        self._trim(room=size)  # first: the kept records never exceed the cap
        part.rename(final)
        self._sizes[record_id] = size

    def read(self, record_id: str, name: str) -> bytes | None:
        """One file of a record, or None (unknown id or name)."""
        if record_id not in self._sizes or not (name == "manifest.json" or NAME.match(name)):
            return None
        try:
            return (self.folder / record_id / name).read_bytes()
        except FileNotFoundError:
            return None

    def _trim(self, room: int = 0) -> None:
        while self._sizes and self.nbytes + room > self.max_bytes:
            oldest, _ = self._sizes.popitem(last=False)
            shutil.rmtree(self.folder / oldest, ignore_errors=True)
            self.removed += 1


class RateLimit:
    """A token bucket: ``per_min`` a minute, at most ``per_min`` at once."""

    def __init__(self, per_min: int) -> None:
        self.capacity = float(per_min)
        self.tokens = float(per_min)
        self.rate = per_min / 60.0
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class EvidenceTopic:
    """Records on Kafka (``DFM_KAFKA_EVIDENCE_TOPIC``), key = stream id: per record one
    message per file, the manifest (``application/json``) first, then ``sheet.jpg`` and
    ``context.jpg`` (``image/jpeg``), each with headers ``evidence-id``, ``name`` and
    ``content-type``. Each is a few tens of kB, far under the broker's 1 MB default. A
    record Kafka does not take within ``timeout_s`` is counted
    (``deepfake_evidence_skipped_total{what="kafka"}``) and stays in the local store."""

    SENT = ("manifest.json", "sheet.jpg", "context.jpg")

    def __init__(self, settings: Settings, metrics: Metrics, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._producer: Any = None
        metrics.evidence_skipped.labels("kafka", "error")

    async def send(self, stream_id: str, record_id: str, files: dict[str, bytes]) -> bool:
        try:
            await asyncio.wait_for(self._send(stream_id, record_id, files), self.timeout_s)
        except Exception as exc:
            self.metrics.evidence_skipped.labels("kafka", "error").inc()
            log.warning("evidence %s not sent to Kafka: %r", record_id, exc)
            return False
        return True

    async def _send(self, stream_id: str, record_id: str, files: dict[str, bytes]) -> None:
        from aiokafka import AIOKafkaProducer

        from streamer.kafka_common import client_options, ensure_topic

        s = self.settings
        if self._producer is None:
            await ensure_topic(s, s.kafka_evidence_topic, partitions=s.kafka_sources_partitions)
            producer = AIOKafkaProducer(**client_options(s), acks="all", enable_idempotence=True)
            await producer.start()
            self._producer = producer
        for name in self.SENT:
            if name not in files:
                continue
            kind = "application/json" if name.endswith(".json") else "image/jpeg"
            headers = [("evidence-id", record_id.encode()), ("name", name.encode()),
                       ("content-type", kind.encode())]  # fmt: skip
            await self._producer.send_and_wait(
                s.kafka_evidence_topic, files[name], key=stream_id.encode(), headers=headers
            )

    async def stop(self) -> None:
        if self._producer is not None:
            from streamer.kafka_common import stop_client

            await stop_client(self._producer)
            self._producer = None


class EvidenceWriter:
    """Builds and stores evidence records, one at a time, in a loop task of its own."""

    def __init__(
        self,
        store: EvidenceStore,
        batcher: Batcher,
        metrics: Metrics,
        *,
        per_min: int,
        context: bool,
        queue: int = 16,
        idle_wait_s: float = 2.0,
        topic: EvidenceTopic | None = None,
    ) -> None:
        self.topic = topic
        self.store = store
        self.batcher = batcher
        self.metrics = metrics
        self.context = context
        self.limit = RateLimit(per_min)
        self.idle_wait_s = idle_wait_s
        self._queue: asyncio.Queue[EvidenceJob] = asyncio.Queue(queue)
        self.pending: set[str] = set()
        self.latest: dict[str, str] = {}  # stream id -> its newest record still kept
        metrics.evidence_bytes.set(store.nbytes)
        for what in ("record", "heatmap"):
            for reason in ("queue_full", "rate", "busy", "error", "stopped"):
                metrics.evidence_skipped.labels(what, reason)

    def newest(self, stream_id: str) -> str | None:
        """The id of the stream's newest record still kept here, if any."""
        return self.latest.get(stream_id)

    def count_unwritten(self) -> int:
        """At shutdown, after the writer task was cancelled: the records it will never
        write (their links answer 404) are counted and logged, not lost silently."""
        lost = len(self.pending)
        if lost:
            self.metrics.evidence_skipped.labels("record", "stopped").inc(lost)
            log.warning("%d evidence record(s) not written: the service stopped first", lost)
        self.pending.clear()
        return lost

    def submit(self, job: EvidenceJob) -> bool:
        """Queue a record; False (counted) when the writer is that far behind."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.evidence_skipped.labels("record", "queue_full").inc()
            log.warning("evidence %s not kept: the writer is %d records behind",
                        job.link.id, self._queue.qsize())  # fmt: skip
            return False
        self.pending.add(job.link.id)
        return True

    async def run(self) -> None:
        while True:
            job = await self._queue.get()
            # A cancellation (shutdown) leaves the job pending: count_unwritten counts it.
            try:
                files = await self._build(job)
                await asyncio.to_thread(self.store.put, job.link.id, files)
            except Exception:
                self.pending.discard(job.link.id)
                self.metrics.evidence_skipped.labels("record", "error").inc()
                log.exception("evidence %s could not be written", job.link.id)
                continue
            self.pending.discard(job.link.id)
            self.metrics.evidence_records.inc()
            self.metrics.evidence_bytes.set(self.store.nbytes)
            self.latest[job.verdict.stream_id] = job.link.id
            self.latest = {s: r for s, r in self.latest.items() if r in self.store}
            if self.topic is not None:
                await self.topic.send(job.verdict.stream_id, job.link.id, files)

    async def _build(self, job: EvidenceJob) -> dict[str, bytes]:
        from analyzer.explain import overlay

        files: dict[str, bytes] = {}
        faces_out: list[dict[str, Any]] = []
        rows: list[tuple[str, list[np.ndarray], list[np.ndarray], list[int]]] = []
        scores = {f.track_id: f for f in job.verdict.faces}
        for track_id, frames in job.faces.items():
            picks = _spaced(frames, SHEET_CROPS)
            crops = [decode_jpeg(j) for _, j in picks]
            entry: dict[str, Any] = {
                "track_id": track_id,
                "score": scores[track_id].score if track_id in scores else None,
                "box": scores[track_id].box if track_id in scores else None,
                "frames": [f for f, _ in picks],
                "crops": [],
                "heatmaps": [],
                "heatmap_skipped": None,
            }
            for n, (_, jpeg) in enumerate(picks):
                files[f"face-{track_id}-crop-{n}.jpg"] = jpeg
                entry["crops"].append(f"{job.link.url}/face-{track_id}-crop-{n}.jpg")
            overlays: list[np.ndarray] = []
            marked: list[int] = []
            cams, why = await self._heatmaps(np.stack(crops)) if crops else (None, "error")
            if cams is None:
                entry["heatmap_skipped"] = why
            else:
                entry["heat_score"] = round(cams[1], 6)
                for n, (crop, cam) in enumerate(zip(crops, cams[0], strict=True)):
                    overlays.append(overlay(crop, cam))
                    files[f"face-{track_id}-heat-{n}.jpg"] = encode_jpeg(overlays[-1])
                    entry["heatmaps"].append(f"{job.link.url}/face-{track_id}-heat-{n}.jpg")
                # The most suspicious frames: where the heat (scaled over the window) is.
                heat = cams[0].reshape(len(crops), -1).mean(axis=1)
                marked = [int(i) for i in np.argsort(-heat)[:2]]
                entry["most_suspicious"] = [picks[i][0] for i in marked]
            faces_out.append(entry)
            score = entry["score"]
            caption = f"face {track_id}" + (f"  P(FAKE) {score:.3f}" if score is not None else "")
            rows.append((caption, crops, overlays, marked))
        context_url = None
        if self.context and job.context is not None:
            files["context.jpg"] = _with_boxes(job.context, job.verdict)
            context_url = f"{job.link.url}/context.jpg"
        files["sheet.jpg"] = encode_jpeg(await asyncio.to_thread(_sheet, job.verdict, rows))
        manifest = {
            "id": job.link.id,
            "stream_id": job.verdict.stream_id,
            "created_at": utc_now_iso(),
            "verdict": job.verdict.to_dict(),
            "model": job.verdict.model.model_dump(mode="json"),
            "window": {"first_frame": job.first_frame, "last_frame": job.last_frame},
            "sheet": f"{job.link.url}/sheet.jpg",
            "context": context_url,
            "faces": faces_out,
        }
        files["manifest.json"] = json.dumps(manifest, indent=2).encode()
        return files

    async def _heatmaps(self, crops: np.ndarray) -> tuple[tuple[np.ndarray, float] | None, str]:
        """Grad-CAM maps of ``crops`` (and the score of them as one sequence), or why not."""
        from analyzer.explain import grad_cam

        if not self.limit.take():
            self.metrics.evidence_skipped.labels("heatmap", "rate").inc()
            return None, "rate"
        deadline = time.monotonic() + self.idle_wait_s
        while not self.batcher.idle:
            if time.monotonic() > deadline:
                self.metrics.evidence_skipped.labels("heatmap", "busy").inc()
                return None, "busy"
            await asyncio.sleep(0.02)
        try:
            exp = await self.batcher.call(grad_cam, self.batcher.engine, crops)
        except Exception as exc:
            log.warning("evidence heat map failed: %s", exc)
            self.metrics.evidence_skipped.labels("heatmap", "error").inc()
            return None, "error"
        return (exp.cams, exp.score), ""


def _spaced(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def _sheet(
    verdict: Verdict,
    rows: Iterable[tuple[str, list[np.ndarray], list[np.ndarray], list[int]]],
) -> np.ndarray:
    """Per face a caption, a row of its crops and a row of their heat maps, the most
    suspicious frames' heat maps framed in red."""
    rows = list(rows)
    size = 112
    band = 22
    width = SHEET_CROPS * size
    blocks: list[np.ndarray] = []
    title = np.full((30, width, 3), 255, np.uint8)
    text = (
        f"{verdict.stream_id}  seq {verdict.seq}  {verdict.label}  score {verdict.score or 0:.3f}"
    )
    cv2.putText(title, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    blocks.append(title)
    for caption, crops, overlays, marked in rows:
        head = np.full((band, width, 3), 255, np.uint8)
        cv2.putText(
            head, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
        blocks.append(head)
        for pictures in (crops, overlays):
            if not pictures:
                continue
            strip = np.full((size, width, 3), 255, np.uint8)
            for n, pic in enumerate(pictures[:SHEET_CROPS]):
                strip[:, n * size : (n + 1) * size] = cv2.resize(pic, (size, size))
                if pictures is overlays and n in marked:
                    cv2.rectangle(strip, (n * size + 1, 1), ((n + 1) * size - 2, size - 2),
                                  (230, 30, 30), 3)  # fmt: skip
            blocks.append(strip)
    return np.concatenate(blocks, axis=0)


def _with_boxes(context: bytes, verdict: Verdict) -> bytes:
    """The context frame with each face's box, red at or above the threshold."""
    rgb = decode_jpeg(context)
    h, w = rgb.shape[:2]
    for face in verdict.faces:
        x, y, bw, bh = face.box
        colour = (230, 30, 30) if face.score >= verdict.threshold else (40, 200, 40)
        p0 = (round(x * w), round(y * h))
        p1 = (round((x + bw) * w), round((y + bh) * h))
        cv2.rectangle(rgb, p0, p1, colour, 2)
        cv2.putText(rgb, f"{face.track_id}: {face.score:.2f}", (p0[0], max(12, p0[1] - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)  # fmt: skip
    return encode_jpeg(rgb, 80)
