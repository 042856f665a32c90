"""The batcher service: NATS in (queue group), dynamic batches out to worker instances over gRPC."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from batcher.link import InFlight, InstanceLink
from batcher.metrics import start_metrics_server
from batcher.model_rules import rules_from_announcement, signature_of
from batcher.policy import Pending
from batcher.scheduler import ModelScheduler, Queued
from meshserve import custody, subjects
from meshserve.errors import MeshError, Unavailable
from meshserve.lifecycle import close_nats, install_stop_signals
from meshserve.listen import bind_listener
from meshserve.logs import announce_ready
from meshserve.messaging import NatsEvents, connect_service
from meshserve.pb import mesh_pb2
from meshserve.settings import BatcherSettings
from meshserve.settings_follow import start_following

log = logging.getLogger(__name__)

__all__ = ["Batcher", "run"]

ModelKey = tuple[str, int]


class Batcher:
    def __init__(self, settings: BatcherSettings, nc: Client, tg: asyncio.TaskGroup) -> None:
        self._settings = settings
        self._nc = nc
        self._tg = tg
        self._schedulers: dict[ModelKey, ModelScheduler] = {}
        self._last_seen: dict[str, tuple[ModelKey, float]] = {}
        self._intake: Subscription | None = None
        self._stopping = False
        self._drained = asyncio.Event()
        """Set, while stopping, when the last batch in flight is done."""
        self.id = uuid.uuid4().hex[:16]
        """This batcher's name in its heartbeats and custody acknowledgements (meshserve/custody.py)."""
        self._acks: dict[str, list[str]] = {}
        """Acknowledgement subject → tokens of the requests taken since the last flush."""

    def schedulers(self) -> list[ModelScheduler]:
        """Every model version's scheduler (the metrics endpoint reads them)."""
        return list(self._schedulers.values())

    async def start(self) -> None:
        await self._nc.subscribe(subjects.worker_announce(), cb=self._on_announce)
        self._intake = await self._nc.subscribe(
            subjects.infer_all(), queue=subjects.BATCHER_QUEUE_GROUP, cb=self._on_request
        )
        await self._nc.subscribe(subjects.cancel_all(), cb=self._on_cancel)
        await self._nc.publish(subjects.worker_query(), b"")
        self._tg.create_task(self._reap_stale())
        self._tg.create_task(self._heartbeat())
        self._tg.create_task(self._flush_acks())

    # -- custody (meshserve/custody.py): who holds which request, and that this batcher lives -------
    async def _heartbeat(self) -> None:
        while True:
            await self._publish_quietly(subjects.batcher_announce(), custody.encode_heartbeat(self.id))
            await asyncio.sleep(self._settings.limits.batcher_heartbeat_s)

    async def _flush_acks(self) -> None:
        while True:
            await asyncio.sleep(custody.ACK_FLUSH_S)
            await self.send_acks()

    def _custody_note(self, items: list[Queued], with_worker: bool) -> None:
        """Queue the acknowledgements: taken (or back in a queue for a retry), or sent to a worker."""
        mark = custody.WITH_WORKER if with_worker else ""
        for item in items:
            if item.ack_to and item.reply_to:
                self._acks.setdefault(item.ack_to, []).append(mark + item.reply_to.rsplit(".", 1)[-1])

    async def send_acks(self) -> None:
        acks, self._acks = self._acks, {}
        for subject, tokens in acks.items():
            await self._publish_quietly(subject, custody.encode_held(self.id, tokens))

    async def say_goodbye(self) -> None:
        """After the hand-off and the batches in flight: the gateways stop watching this batcher."""
        await self.send_acks()
        await self._publish_quietly(
            subjects.batcher_announce(), custody.encode_heartbeat(self.id, alive=False)
        )

    async def _publish_quietly(self, subject: str, data: bytes) -> None:
        try:
            await self._nc.publish(subject, data)
        except Exception as exc:  # NATS down: the next beat or flush tries again
            log.debug("cannot publish on %s: %s", subject, exc)

    # -- requests ---------------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        request = mesh_pb2.InferRequest()
        try:
            request.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable request on %s dropped", msg.subject)
            return
        scheduler = self._schedulers.get((request.model_name, request.model_version))
        if scheduler is None and request.model_version <= 0:
            scheduler = self._latest(request.model_name)
        ragged = scheduler.rules.ragged_inputs if scheduler is not None else frozenset()
        item = Queued(
            pending=Pending(time.monotonic(), _rows(request, scheduler), signature_of(request, ragged)),
            raw=msg.data,
            reply_to=msg.reply,
            request_id=request.request_id,
            model_name=request.model_name,
            model_version=request.model_version,
            deadline_s=_monotonic_deadline(request.deadline_unix_ns),
            priority=request.priority,
            timeout_s=request.timeout_us / 1e6,
            ack_to=(msg.headers or {}).get(custody.ACK_HEADER, ""),
        )
        if scheduler is None:
            # a gateway answers it straight to its requester, whatever happens to this batcher
            self._custody_note([item], with_worker=True)
            await self._pass_to_gateways(item)
            return
        self._custody_note([item], with_worker=False)
        error = scheduler.admit(item)
        if error is not None:
            await self.reply_error(item, error)

    async def _pass_to_gateways(self, item: Queued) -> None:
        """No instance of this model: it may be an ensemble (a BLS call to one), whose pipeline a
        gateway runs.  The request goes on unchanged with its reply subject; a gateway answers it,
        with "not served" when it is no ensemble either (``gateway/mesh_ensembles.py``)."""
        error: MeshError
        if item.model_version <= 0:
            error = Unavailable(f"model '{item.model_name}' is not served: no live instance of any version")
        else:
            error = Unavailable(
                f"model '{item.model_name}' version {item.model_version} has no live instance"
            )
        if not item.reply_to:
            return
        try:
            await self._nc.publish(
                subjects.ensemble(item.model_name, item.model_version), item.raw, reply=item.reply_to
            )
        except Exception as exc:
            log.debug("cannot pass request %r on to the gateways: %s", item.request_id, exc)
            await self.reply_error(item, error)

    async def _on_cancel(self, msg: Msg) -> None:
        """A gateway's requester went away: its request leaves whichever queue holds it."""
        reply_to = msg.data.decode(errors="replace")
        for scheduler in self._schedulers.values():
            if scheduler.cancel(reply_to):
                log.debug("request for %s dropped from the queue of %s: cancelled", reply_to, scheduler.model)
                return

    def _latest(self, model: str) -> ModelScheduler | None:
        """Version 0 (a python model's BLS request with ``model_version=-1``): the highest version
        with a live instance.  Gateways always resolve the version themselves."""
        live = [
            s
            for (name, _), s in self._schedulers.items()
            if name == model and any(link.accepting for link in s.links.values())
        ]
        return max(live, key=lambda s: s.version, default=None)

    async def reply_error(self, item: Queued, error: MeshError) -> None:
        if not item.reply_to:
            return
        response = mesh_pb2.InferResponse(
            request_id=item.request_id,
            model_name=item.model_name,
            model_version=item.model_version,
            error=mesh_pb2.Error(code=error.code, message=error.message),
        )
        try:
            await self._nc.publish(item.reply_to, response.SerializeToString())
        except Exception as exc:
            log.warning("cannot answer request %r: %s", item.request_id, exc)

    # -- instances --------------------------------------------------------------------------------
    async def _on_announce(self, msg: Msg) -> None:
        ann = mesh_pb2.WorkerAnnouncement()
        try:
            ann.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable worker announcement dropped")
            return
        key = (ann.model_name, ann.model_version)
        if ann.state != mesh_pb2.READY:
            await self._remove_instance(key, ann.instance_id)
            return
        self._last_seen[ann.instance_id] = (key, time.monotonic())
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = ModelScheduler(
                ann.model_name,
                ann.model_version,
                rules_from_announcement(ann),
                self._settings.max_queue_size,
                self.reply_error,
                max_batch_bytes=self._settings.limits.frame_bytes - 1024 * 1024,
                on_custody=self._custody_note,
            )
            self._schedulers[key] = scheduler
            self._tg.create_task(scheduler.run())
        if ann.instance_id not in scheduler.links:
            if ann.model_config:
                scheduler.update_rules(rules_from_announcement(ann))  # a reload may bring a new config
            link = InstanceLink(
                ann.instance_id,
                ann.address,
                min(ann.max_inflight_batches or 1, self._settings.inflight_batches_per_instance),
                self._settings.limits.frame_bytes,
                on_done=functools.partial(self._on_done, scheduler),
                on_lost=functools.partial(self._on_lost, scheduler),
            )
            scheduler.add_link(link)
            self._tg.create_task(link.run())
            log.info("instance %s of %s v%d joined at %s", ann.instance_id, *key, ann.address)

    def _on_done(self, scheduler: ModelScheduler, link: InstanceLink, flight: InFlight | None) -> None:
        scheduler.notify()
        if self._stopping:
            if not any(lk.inflight for s in self._schedulers.values() for lk in s.links.values()):
                self._drained.set()
        elif not link.accepting and not link.inflight:  # a leaving worker finished its last batch
            self._spawn(link.close())

    def _on_lost(
        self, scheduler: ModelScheduler, link: InstanceLink, flights: list[InFlight], reason: str
    ) -> None:
        """A link ended.  It leaves the pool (a later heartbeat of a live worker opens a fresh one),
        and the batches it held are retried or answered."""
        if scheduler.links.get(link.instance_id) is link:
            scheduler.remove_link(link.instance_id)
        if flights:
            log.warning(
                "instance %s lost with %d batches in flight: %s", link.instance_id, len(flights), reason
            )
            self._spawn(scheduler.fail_lost(flights, reason))
        else:
            log.info("link to instance %s ended: %s", link.instance_id, reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task in the service's group, unless the group is already shutting down."""
        try:
            self._tg.create_task(coro)
        except RuntimeError:  # the TaskGroup is finishing
            coro.close()

    async def _remove_instance(self, key: ModelKey, instance_id: str, silent: bool = False) -> None:
        self._last_seen.pop(instance_id, None)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            return
        link = scheduler.remove_link(instance_id)
        if link is None:
            return
        link.accepting = False
        if silent:  # hung, stopped or cut off: its batch in flight will not finish
            link.abandon(f"worker {instance_id} at {link.address} went silent")
            return
        log.info("instance %s of %s v%d left", instance_id, *key)
        # it said goodbye: let its batch in flight finish; the reader closes the link when the stream ends
        if not link.inflight:
            await link.close()

    async def _reap_stale(self) -> None:
        while True:
            await asyncio.sleep(self._settings.instance_stale_after_s / 2)
            cutoff = time.monotonic() - self._settings.instance_stale_after_s
            for instance_id, (key, seen) in list(self._last_seen.items()):
                if seen < cutoff:
                    log.warning("instance %s went silent; dropping it", instance_id)
                    await self._remove_instance(key, instance_id, silent=True)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking requests, hand the queued ones to the other batchers, let batches in flight
        finish (bounded: their workers answer them), then close the links without reporting them lost."""
        self._stopping = True
        if self._intake is not None:
            # drain, not unsubscribe: unsubscribe discards requests already delivered to this process
            # but not yet read, which would then wait for their deadline
            try:
                async with asyncio.timeout(timeout_s):
                    await self._intake.drain()  # type: ignore[no-untyped-call]
            except Exception as exc:
                log.warning("draining the request subscription failed: %s", exc)
        handed = 0
        for scheduler in self._schedulers.values():
            for item in scheduler.take_all():
                await self._hand_off(item)
                handed += 1
        if handed:
            log.info("handed %d queued requests to the other batchers", handed)
        links = [link for scheduler in self._schedulers.values() for link in scheduler.links.values()]
        if any(link.inflight for link in links):
            try:
                async with asyncio.timeout(timeout_s):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("batches still in flight after %.1f s; closing anyway", timeout_s)
        for link in links:
            link.retire()
            await link.close()

    async def _hand_off(self, item: Queued) -> None:
        """Publish a queued request again, as its gateway did (same bytes, same reply subject): another
        batcher takes it.  With none left, nats-server answers the reply subject "no responders" and the
        gateway answers UNAVAILABLE; our own subscription is already gone, so it never comes back here."""
        if not item.reply_to:
            return
        try:
            await self._nc.publish(
                subjects.infer(item.model_name, item.model_version),
                item.raw,
                reply=item.reply_to,
                headers={custody.ACK_HEADER: item.ack_to} if item.ack_to else None,
            )
        except Exception as exc:
            log.warning("cannot hand request %r to another batcher: %s", item.request_id, exc)
            await self.reply_error(item, Unavailable("batcher is shutting down"))


def _rows(request: mesh_pb2.InferRequest, scheduler: ModelScheduler | None) -> int:
    """Rows the request takes in a batch.  Gateways set ``batch_size``; a BLS request from a python
    model leaves it 0, and then a batching model's rows are its first input's first dimension."""
    if request.batch_size > 0:
        return request.batch_size
    if scheduler is not None and scheduler.rules.batching.max_batch_size > 0 and request.inputs:
        shape = request.inputs[0].shape
        if shape and shape[0] > 0:
            return int(shape[0])
    return 1


def _monotonic_deadline(deadline_unix_ns: int) -> float | None:
    if deadline_unix_ns <= 0:
        return None
    return time.monotonic() + (deadline_unix_ns - time.time_ns()) / 1e9


async def run(settings: BatcherSettings) -> None:
    stop = install_stop_signals(settings.exit_with_parent)
    nc = await connect_service(settings.nats_url, "batcher", settings.limits, NatsEvents(gave_up=[stop.set]))
    follow = start_following(nc, "batcher")  # LogSettings / TraceSetting of the mesh
    metrics: web.AppRunner | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            batcher = Batcher(settings, nc, tg)
            await batcher.start()
            metrics_port = -1
            if settings.metrics_port >= 0:
                sock = bind_listener("batcher metrics", settings.host, settings.metrics_port)
                metrics = await start_metrics_server(batcher.schedulers, sock)
                metrics_port = sock.getsockname()[1]
            announce_ready("batcher", nats=settings.nats_url, metrics_port=metrics_port)
            await stop.wait()
            await batcher.drain(settings.limits.request_timeout_s / 4)
            await batcher.say_goodbye()
            raise _Stop
    except* _Stop:
        pass
    finally:
        follow.cancel()
        if metrics is not None:
            await metrics.cleanup()
        await close_nats(nc)


class _Stop(Exception):
    """Raised inside the TaskGroup to cancel its long-lived loops on shutdown."""
