"""The batcher's Prometheus endpoint: what only the batcher knows — queue depth per model version
(what an autoscaler scales workers on), batches in flight, live instances, and why each batch was
sent.  Each batcher serves its own; with several batchers Prometheus sums them (``sum by (model)``).

Names: ``meshserve_queue_depth`` (gauge, requests waiting), ``meshserve_batcher_inflight_batches``
(gauge), ``meshserve_batcher_instances`` (gauge, instances this batcher routes to),
``meshserve_batches_sent_total`` (counter, label ``reason``: preferred_size, max_batch_size,
queue_delay, no_delay, blocked, not_batching — see ``batcher/policy.py`` ``Reason``),
``meshserve_batcher_cancelled_requests_total`` (counter: requests taken out of the queue because their
client cancelled or went away).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from batcher.policy import Reason
from batcher.scheduler import ModelScheduler

__all__ = ["QUEUE_DEPTH", "BatcherCollector", "start_metrics_server"]

QUEUE_DEPTH = "meshserve_queue_depth"
INFLIGHT = "meshserve_batcher_inflight_batches"
INSTANCES = "meshserve_batcher_instances"
BATCHES_SENT = "meshserve_batches_sent"
CANCELLED = "meshserve_batcher_cancelled_requests"

Schedulers = Callable[[], Iterable[ModelScheduler]]


class BatcherCollector:
    """Reads the schedulers at scrape time (no second book to keep in step)."""

    def __init__(self, schedulers: Schedulers) -> None:
        self._schedulers = schedulers

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        depth = GaugeMetricFamily(QUEUE_DEPTH, "Requests waiting in the batcher's queues", labels=labels)
        inflight = GaugeMetricFamily(INFLIGHT, "Batches sent to workers and not yet done", labels=labels)
        instances = GaugeMetricFamily(INSTANCES, "Worker instances this batcher routes to", labels=labels)
        sent = CounterMetricFamily(
            BATCHES_SENT, "Batches sent, by why they were sent", labels=[*labels, "reason"]
        )
        cancelled = CounterMetricFamily(
            CANCELLED, "Requests taken out of the queue because their client went away", labels=labels
        )
        for scheduler in sorted(self._schedulers(), key=lambda s: (s.model, s.version)):
            key = [scheduler.model, str(scheduler.version)]
            depth.add_metric(key, scheduler.depth)
            inflight.add_metric(key, sum(len(link.inflight) for link in scheduler.links.values()))
            instances.add_metric(key, len(scheduler.links))
            cancelled.add_metric(key, scheduler.cancelled)
            for reason in Reason:
                sent.add_metric([*key, reason.value], scheduler.sent_by_reason.get(reason, 0))
        yield from (depth, inflight, instances, sent, cancelled)


async def start_metrics_server(schedulers: Schedulers, sock: socket.socket) -> web.AppRunner:
    """Serve ``/metrics`` on an already bound socket; the caller cleans the runner up."""
    registry = CollectorRegistry()
    registry.register(BatcherCollector(schedulers))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner
