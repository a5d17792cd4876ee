"""Stream control as the API sees it: one interface, a local and a cluster implementation.

The HTTP layer talks to a :class:`StreamControl` only; it never reaches into the
manager, the directory or the verdict ring. Failures are raised as the typed
:class:`~streamer.errors.Rejected` errors, which ``api.py`` alone maps to HTTP statuses.

* :class:`LocalControl`: this replica starts and stops the stream itself.
* :class:`ClusterControl`: the stream spec goes to ``deepfake.sources``; the replica that
  owns the id's partition starts it (the answer says ``accepted``, not ``started``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from streamer.config import StreamSpec
from streamer.errors import NotFound
from streamer.evidence import evidence_link

if TYPE_CHECKING:
    from streamer.cluster import SourceDirectory
    from streamer.manager import StreamManager
    from streamer.pipeline import StreamRunner
    from streamer.sinks.stdout import RecentVerdicts

SPARKLINE_POINTS = 60


@dataclass(frozen=True)
class Outcome:
    """What a control call did: done here and now, or accepted for another replica."""

    status: dict[str, Any]
    accepted: bool = False


class StreamControl(Protocol):
    def streams(self) -> list[dict[str, Any]]: ...

    def get(self, stream_id: str) -> dict[str, Any]: ...

    def verdicts(self, stream_id: str, limit: int) -> list[dict[str, Any]]: ...

    def cards(self, threshold: float) -> list[dict[str, Any]]: ...

    async def add(self, spec: StreamSpec) -> Outcome: ...

    async def remove(self, stream_id: str) -> Outcome: ...

    def request_evidence(self, stream_id: str) -> dict[str, Any]: ...


class LocalControl:
    """Streams of this replica (also what the cluster variant reads from)."""

    def __init__(self, manager: StreamManager, recent: RecentVerdicts) -> None:
        self.manager = manager
        self.recent = recent

    def _runner(self, stream_id: str) -> StreamRunner:
        runner = self.manager.streams.get(stream_id)
        if runner is None:
            raise NotFound(f"no stream {stream_id!r}")
        return runner

    def streams(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.manager.streams.values()]

    def get(self, stream_id: str) -> dict[str, Any]:
        return self._runner(stream_id).status()

    def verdicts(self, stream_id: str, limit: int) -> list[dict[str, Any]]:
        self._runner(stream_id)
        return [v.to_dict() for v in self.recent.recent(stream_id, limit)]

    def request_evidence(self, stream_id: str) -> dict[str, Any]:
        runner = self._runner(stream_id)
        if runner.evidence is None:
            raise NotFound("evidence is off on this replica (DFM_EVIDENCE=off)")
        runner.request_evidence()
        return {"stream_id": stream_id, "evidence": "the next window's verdict links it"}

    def cards(self, threshold: float) -> list[dict[str, Any]]:
        """What the web page shows of each stream, with recent scores for a sparkline."""
        cards = []
        for runner in self.manager.streams.values():
            last = runner.last_verdict
            recent = self.recent.recent(runner.id, SPARKLINE_POINTS)
            cards.append(
                {
                    "id": runner.id,
                    "url": runner.url,
                    "state": str(runner.source_state),
                    "reason": runner.reason,
                    "label": last.label if last else None,
                    "score": last.score if last else None,
                    "smoothed_score": last.smoothed_score if last else None,
                    "seq": last.seq if last else None,
                    "threshold": threshold,
                    "scores": [v.smoothed_score for v in recent],
                    "evidence": _evidence_url(runner) if last and last.label == "FAKE" else None,
                }
            )
        return cards

    async def add(self, spec: StreamSpec) -> Outcome:
        runner = await self.manager.add(spec)
        return Outcome(runner.status())

    async def remove(self, stream_id: str) -> Outcome:
        if not await self.manager.remove(stream_id):
            raise NotFound(f"no stream {stream_id!r}")
        return Outcome({"id": stream_id, "state": "removed"})


class ClusterControl(LocalControl):
    """Writes go to ``deepfake.sources``; reads show the streams this replica runs."""

    def __init__(
        self, manager: StreamManager, recent: RecentVerdicts, directory: SourceDirectory
    ) -> None:
        super().__init__(manager, recent)
        self.directory = directory

    async def add(self, spec: StreamSpec) -> Outcome:
        self.manager.check(spec)  # refuse here what no replica could run
        await self.directory.put(spec)
        return Outcome({"id": spec.id, "state": "submitted", "cluster": True}, accepted=True)

    async def remove(self, stream_id: str) -> Outcome:
        await self.directory.delete(stream_id)
        return Outcome({"id": stream_id, "state": "submitted", "cluster": True}, accepted=True)


def _evidence_url(runner: StreamRunner) -> str | None:
    """The stream's newest evidence record, while the stream is FAKE."""
    record = runner.evidence.newest(runner.id) if runner.evidence is not None else None
    return evidence_link(record).url if record else None
