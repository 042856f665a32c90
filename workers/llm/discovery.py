"""How stages of one model find each other: announcements on NATS, kept in a table per model version."""

from __future__ import annotations

import time
from dataclasses import dataclass

from meshserve import subjects
from meshserve.pb import mesh_pb2

__all__ = ["StageTable", "announce_subject", "fault_subject", "query_subject"]


def announce_subject() -> str:
    return f"{subjects.PREFIX}.llm.announce"


def query_subject() -> str:
    return f"{subjects.PREFIX}.llm.query"


def fault_subject(model: str, version: int) -> str:
    return f"{subjects.PREFIX}.llm.fault.{subjects.model_token(model)}.{version}"


@dataclass(slots=True)
class Peer:
    announcement: mesh_pb2.StageAnnouncement
    seen: float


class StageTable:
    """The latest announcement of every stage of one model version (a newer instance replaces an older)."""

    def __init__(self, model: str, version: int, stages: int, stale_s: float) -> None:
        self.model, self.version, self.stages, self.stale_s = model, version, stages, stale_s
        self.peers: dict[int, Peer] = {}
        self.failed: dict[int, str] = {}
        """Stages that announced they cannot load, with the reason (stage 0 stops waiting for them)."""

    def update(self, a: mesh_pb2.StageAnnouncement) -> bool:
        """Take an announcement; True when it is one of ours."""
        if a.model_name != self.model or a.model_version != self.version or a.stages != self.stages:
            return False
        if a.state == mesh_pb2.UNAVAILABLE:
            self.failed[a.stage] = a.reason
            self.peers.pop(a.stage, None)
            return True
        self.failed.pop(a.stage, None)
        if a.state == mesh_pb2.STOPPING:
            peer = self.peers.get(a.stage)
            if peer is not None and peer.announcement.instance_id == a.instance_id:
                del self.peers[a.stage]
            return True
        self.peers[a.stage] = Peer(a, time.monotonic())
        return True

    def live(self, stage: int) -> mesh_pb2.StageAnnouncement | None:
        peer = self.peers.get(stage)
        if peer is None or time.monotonic() - peer.seen > self.stale_s:
            return None
        if peer.announcement.state != mesh_pb2.READY:
            return None
        return peer.announcement

    def missing(self) -> list[int]:
        return [k for k in range(self.stages) if self.live(k) is None]
