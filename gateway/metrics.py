"""Prometheus metrics with Triton's names on the metrics port (``--metrics-port``, ``GET /metrics``).

Nothing is counted twice: a custom collector reads the gateway's :class:`StatsBook` (the same
numbers ``ModelStatistics`` serves) and the model table at scrape time, into its own
``CollectorRegistry``.  Triton's counters carry no ``_total`` suffix, which prometheus_client would
add to a ``Counter``; so their samples are written under Triton's exact names and :func:`render`
gives their ``# HELP`` / ``# TYPE`` lines the same names.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from gateway.stats import FailureReason, ModelStats, StatsBook

__all__ = [
    "BATCH_SIZE",
    "BATCH_SIZE_BUCKETS",
    "COMPUTE_INFER_DURATION",
    "COMPUTE_INPUT_DURATION",
    "COMPUTE_OUTPUT_DURATION",
    "EXEC_COUNT",
    "INFERENCE_COUNT",
    "LIVE_INSTANCES",
    "METRICS_PATH",
    "PENDING_REQUEST_COUNT",
    "QUEUE_DURATION",
    "REQUEST_DURATION",
    "REQUEST_FAILURE",
    "REQUEST_SUCCESS",
    "TRITON_COUNTERS",
    "InstanceCounts",
    "MeshCollector",
    "build_metrics_app",
    "build_registry",
    "render",
    "start_metrics_server",
]

METRICS_PATH = "/metrics"

# Triton's names (docs/user_guide/metrics.md); labels model, version (+ reason on failures).
REQUEST_SUCCESS = "nv_inference_request_success"
REQUEST_FAILURE = "nv_inference_request_failure"
INFERENCE_COUNT = "nv_inference_count"
EXEC_COUNT = "nv_inference_exec_count"
REQUEST_DURATION = "nv_inference_request_duration_us"
QUEUE_DURATION = "nv_inference_queue_duration_us"
COMPUTE_INPUT_DURATION = "nv_inference_compute_input_duration_us"
COMPUTE_INFER_DURATION = "nv_inference_compute_infer_duration_us"
COMPUTE_OUTPUT_DURATION = "nv_inference_compute_output_duration_us"
PENDING_REQUEST_COUNT = "nv_inference_pending_request_count"
# meshserve's own.
BATCH_SIZE = "meshserve_batch_size"
LIVE_INSTANCES = "meshserve_live_instances"

TRITON_COUNTERS = (
    REQUEST_SUCCESS,
    REQUEST_FAILURE,
    INFERENCE_COUNT,
    EXEC_COUNT,
    REQUEST_DURATION,
    QUEUE_DURATION,
    COMPUTE_INPUT_DURATION,
    COMPUTE_INFER_DURATION,
    COMPUTE_OUTPUT_DURATION,
)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds (rows) of ``meshserve_batch_size``; ``+Inf`` follows."""

InstanceCounts = Callable[[], Iterable[tuple[str, int, int]]]
"""(model, version, live instances) for every model version the gateway knows."""

_LABELS = ("model", "version")


class _Counter(Metric):
    """A counter whose samples keep the family's name (no ``_total``), as Triton writes them."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = _LABELS) -> None:
        super().__init__(name, documentation, "counter")
        self._labelnames = labels

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.samples.append(Sample(self.name, dict(zip(self._labelnames, labels, strict=True)), value))


_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    (REQUEST_SUCCESS, "Number of successful inference requests, all batch sizes", lambda s: s.success.count),
    (
        INFERENCE_COUNT,
        "Number of inferences performed (a batch-N request counts N)",
        lambda s: s.inference_count,
    ),
    (EXEC_COUNT, "Number of model executions performed (batches)", lambda s: s.execution_count),
    (
        REQUEST_DURATION,
        "Cumulative end-to-end inference request handling time at the gateway (successes)",
        lambda s: s.success.ns // 1000,
    ),
    (
        QUEUE_DURATION,
        "Cumulative time requests spend waiting in the batcher's queue",
        lambda s: s.queue.ns // 1000,
    ),
    (
        COMPUTE_INPUT_DURATION,
        "Cumulative time requests spend processing inference inputs (worker)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        COMPUTE_INFER_DURATION,
        "Cumulative time requests spend executing the inference model (worker)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        COMPUTE_OUTPUT_DURATION,
        "Cumulative time requests spend processing inference outputs (worker)",
        lambda s: s.compute_output.ns // 1000,
    ),
)


class MeshCollector:
    """Reads the statistics book and the live-instance counts at each scrape."""

    def __init__(self, stats: StatsBook, instances: InstanceCounts) -> None:
        self._stats = stats
        self._instances = instances

    def collect(self) -> Iterator[Metric]:
        live = {(name, version): count for name, version, count in self._instances()}
        keys = sorted(set(live) | {key for key, _ in self._stats.items()})
        rows = [((name, str(version)), self._stats.get(name, version)) for name, version in keys]

        for name, doc, value in _COUNTERS:
            counter = _Counter(name, doc)
            for labels, stats in rows:
                counter.add(labels, value(stats))
            yield counter
            if name == REQUEST_SUCCESS:
                yield self._failures(rows)

        pending = GaugeMetricFamily(
            PENDING_REQUEST_COUNT,
            "Instantaneous number of requests in flight at this gateway",
            labels=_LABELS,
        )
        for labels, stats in rows:
            pending.add_metric(labels, stats.pending)
        yield pending

        batch_size = HistogramMetricFamily(
            BATCH_SIZE, "Rows in each executed batch (Triton's batch size)", labels=_LABELS
        )
        for labels, stats in rows:
            buckets = _batch_buckets({size: b.count for size, b in stats.batches.items()})
            total = sum(size * b.count for size, b in stats.batches.items())
            batch_size.add_metric(labels, buckets, total)
        yield batch_size

        instances = GaugeMetricFamily(
            LIVE_INSTANCES, "Worker instances of the model version that are live and ready", labels=_LABELS
        )
        for (name, version), count in sorted(live.items()):
            instances.add_metric((name, str(version)), count)
        yield instances

    @staticmethod
    def _failures(rows: list[tuple[tuple[str, str], ModelStats]]) -> Metric:
        failures = _Counter(
            REQUEST_FAILURE, "Number of failed inference requests, all batch sizes", (*_LABELS, "reason")
        )
        for labels, stats in rows:
            for reason in FailureReason:
                failures.add((*labels, reason.value), stats.failures[reason])
        return failures


def _batch_buckets(counts: dict[int, int]) -> list[tuple[str, float]]:
    """Cumulative bucket counts of batch sizes, ``+Inf`` last."""
    buckets: list[tuple[str, float]] = []
    for bound in BATCH_SIZE_BUCKETS:
        buckets.append((str(float(bound)), sum(n for size, n in counts.items() if size <= bound)))
    buckets.append(("+Inf", sum(counts.values())))
    return buckets


def build_registry(stats: StatsBook, instances: InstanceCounts) -> CollectorRegistry:
    """A registry of its own (never prometheus_client's global one), holding the mesh collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(stats, instances))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Text exposition (format 0.0.4) with Triton's counter names in ``# HELP`` / ``# TYPE`` too."""
    renamed = {f"{name}_total": name for name in TRITON_COUNTERS}
    lines = generate_latest(registry).decode().split("\n")
    for index, line in enumerate(lines):
        if line.startswith(("# HELP ", "# TYPE ")):
            hash_, keyword, name, rest = line.split(" ", 3)
            if name in renamed:
                lines[index] = f"{hash_} {keyword} {renamed[name]} {rest}"
    return "\n".join(lines).encode()


def build_metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics)
    return app


async def start_metrics_server(registry: CollectorRegistry, sock: socket.socket) -> web.AppRunner:
    """Serve ``/metrics`` on an already bound socket; the caller cleans the runner up."""
    runner = web.AppRunner(build_metrics_app(registry), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner
