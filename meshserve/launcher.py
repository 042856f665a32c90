"""``meshserve up``: the whole mesh on one machine — embedded NATS, a batcher, a gateway, one worker
process per model instance — started in that order, stopped in reverse.

Each service is a child process (``python -m meshserve.cli <service> …``); the launcher waits for
each one's ``MESHSERVE_READY`` line, logs where everything listens, and on SIGINT/SIGTERM stops all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from meshserve.controller import UNLOADED_REASON, Controller
from meshserve.ensemble import is_ensemble, with_step_models
from meshserve.errors import InvalidArgument, ModelNotFound, Unavailable
from meshserve.instance_delta import count_only_change, files_fingerprint, split_plan
from meshserve.lifecycle import close_nats, install_stop_signals
from meshserve.logs import announce_ready, parse_ready_line
from meshserve.messaging import connect_nats, nats_options
from meshserve.model_states import ModelStateStore
from meshserve.nats_server import EmbeddedNats, find_nats_server, start_nats_server
from meshserve.pb import model_config_pb2 as mc
from meshserve.repo_watch import Fingerprint, snapshot
from meshserve.repository import ModelEntry, scan_repository
from meshserve.security_cli import gateway_flags, nats_flags
from meshserve.settings import UpSettings

log = logging.getLogger(__name__)

__all__ = ["WorkerSpec", "run_up", "worker_plan"]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    model: str
    version: int
    instance: int
    device: str
    stage: int = -1
    """``llm`` models: the pipeline stage (``instance`` is then the stage too)."""


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    ready: asyncio.Future[dict[str, Any]]
    reader: asyncio.Task[None] | None = field(default=None)
    spec: WorkerSpec | None = None
    """A worker's place in its model's plan (kept across instance-count-only reloads)."""


def _gpu_count() -> int:
    """GPUs visible to this machine, without importing torch into the launcher."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def worker_plan(entries: list[ModelEntry], gpus: int) -> list[WorkerSpec]:
    """One worker per instance: ``count`` per group (per listed GPU for KIND_GPU), every served version."""
    plan: list[WorkerSpec] = []
    for entry in entries:
        if entry.config is None:
            continue
        if entry.config.backend == "llm":
            plan += _stage_plan(entry, gpus)
            continue
        for version in entry.versions:
            index = 0
            for group in entry.config.instance_group:
                devices = _group_devices(group, gpus)
                for device in devices:
                    for _ in range(max(1, group.count)):
                        plan.append(WorkerSpec(entry.name, version, index, device))
                        index += 1
    return plan


def _stage_plan(entry: ModelEntry, gpus: int) -> list[WorkerSpec]:
    """A sharded language model: one worker per stage (config parameter ``stages``), each on its own GPU
    (round robin over the visible ones) when its instance group wants GPUs, else on the CPU."""
    assert entry.config is not None
    raw = entry.config.parameters["stages"].string_value if "stages" in entry.config.parameters else "1"
    stages = int(raw) if raw.strip().isdigit() and int(raw) > 0 else 1
    group = entry.config.instance_group[0] if entry.config.instance_group else mc.ModelInstanceGroup()
    devices = _group_devices(group, gpus)
    gpu_ids = [d for d in devices if d.startswith("cuda:")]
    if gpu_ids and gpus:
        devices = [f"cuda:{k % gpus}" for k in range(stages)]
    return [
        WorkerSpec(entry.name, version, stage, devices[stage % len(devices)], stage)
        for version in entry.versions
        for stage in range(stages)
    ]


def _group_devices(group: mc.ModelInstanceGroup, gpus: int) -> list[str]:
    wants_gpu = group.kind == mc.ModelInstanceGroup.KIND_GPU or (
        group.kind == mc.ModelInstanceGroup.KIND_AUTO and gpus > 0
    )
    if not wants_gpu or gpus == 0:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            log.warning("instance group '%s' asks for GPUs but none is visible; running on CPU", group.name)
        return ["cpu"]
    ids = list(group.gpus) or ([0] if group.kind == mc.ModelInstanceGroup.KIND_AUTO else list(range(gpus)))
    return [f"cuda:{i}" for i in ids if i < gpus] or ["cpu"]


class Launcher:
    def __init__(self, settings: UpSettings) -> None:
        self._settings = settings
        self._children: list[Child] = []
        self._nats: EmbeddedNats | None = None
        self._model_workers: dict[str, list[Child]] = {}
        self._fingerprints: dict[str, Fingerprint] = {}
        """Model → its files (config excluded) when its workers started (``instance_delta.py``)."""
        self._common: list[str] = []
        self._entries: dict[str, ModelEntry] = {}
        self._controller: Controller | None = None
        self._states_nc: Client | None = None
        self._states: ModelStateStore | None = None

    async def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshserve.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children in order
        )
        child = Child(name, process, asyncio.get_running_loop().create_future())
        child.reader = asyncio.create_task(self._read(child))
        self._children.append(child)
        return child

    @staticmethod
    async def _read(child: Child) -> None:
        assert child.process.stdout is not None
        # read chunks, not readline(): a model that prints one huge line must not stop this reader
        # (a pipe nobody drains would block the child's next print for good)
        pending = b""
        while chunk := await child.process.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > 1024 * 1024:
                pending = b""  # an endless line: drop it, keep draining
            for line in lines:
                ready = parse_ready_line(line.decode(errors="replace"))
                if ready is not None and not child.ready.done():
                    child.ready.set_result(ready)
        if not child.ready.done():
            child.ready.set_exception(
                Unavailable(f"{child.name} exited with code {await child.process.wait()}")
            )

    async def _wait_ready(self, children: list[Child]) -> list[dict[str, Any]]:
        async with asyncio.timeout(self._settings.startup_timeout_s):
            return list(await asyncio.gather(*(c.ready for c in children)))

    async def start(self) -> dict[str, Any]:
        s = self._settings
        nats_url = s.nats_url
        if nats_url is None:
            self._nats = await start_nats_server(
                find_nats_server(s.nats_server_binary), s.nats_port, s.limits.max_message_bytes
            )
            nats_url = self._nats.url
            log.info("embedded nats-server listening on %s", nats_url)
        common = [
            "--nats-url",
            nats_url,
            "--log-verbose",
            str(s.log_verbose),
            "--max-message-bytes",
            str(s.limits.max_message_bytes),
            "--request-timeout-secs",
            str(s.limits.request_timeout_s),
            "--nats-reconnect-wait-secs",
            str(s.limits.nats_reconnect_wait_s),
            "--nats-max-reconnect-attempts",
            str(s.limits.nats_max_reconnect_attempts),
            "--nats-connect-timeout-secs",
            str(s.limits.nats_connect_timeout_s),
            "--batcher-heartbeat-secs",
            str(s.limits.batcher_heartbeat_s),
            "--batcher-timeout-secs",
            str(s.limits.batcher_timeout_s),
            "--exit-with-parent",
            "--event-loop",
            s.event_loop,
            *nats_flags(nats_options()),
        ]
        self._states_nc = await connect_nats(nats_url, "launcher")
        self._states = await ModelStateStore.open(self._states_nc)
        if self._states is not None:
            await self._states.clear()
        batcher = await self._spawn(
            "batcher",
            ["batcher", *common, "--host", s.gateway.host, "--metrics-port", str(s.batcher_metrics_port)],
        )
        (batcher_ready,) = await self._wait_ready([batcher])
        g = s.gateway
        gw = await self._start_gateways(common)
        baseline = snapshot(s.model_repository)  # before the scan: poll mode reacts to what changes after
        entries = scan_repository(s.model_repository)
        for entry in entries:
            if entry.error:
                log.error("model '%s' cannot be served: %s", entry.name, entry.error)
            elif entry.auto_complete:
                log.info("model '%s': its workers complete the config from the model file", entry.name)
        self._common = common
        self._entries = {e.name: e for e in entries}
        explicit = s.model_control_mode == "explicit"
        named = with_step_models(set(s.load_models), {e.name: e.config for e in entries})
        wanted = [e for e in entries if not explicit or "*" in s.load_models or e.name in named]
        models: dict[str, str] = {e.name: "UNAVAILABLE: " + e.error for e in wanted if e.error}
        await self._declare_states(entries, wanted)
        readies = await self._start_workers(wanted)
        for ready in readies:
            key = f"{ready['model']}:{ready['version']}"
            state = ready["state"] if ready["state"] == "READY" else f"{ready['state']}: {ready['reason']}"
            if models.get(key, "READY") == "READY":
                models[key] = state
        await self._record_readies(readies)
        if self._states is not None:  # an ensemble has no worker: loaded once its steps are started
            for e in wanted:
                if not e.error and e.config is not None and is_ensemble(e.config):
                    await self._states.put_versions(e.name, e.versions, "READY")
        if s.model_control_mode in ("explicit", "poll"):
            self._controller = Controller(
                self, nats_url, s.model_control_mode, s.repository_poll_s, self._states, s.model_load_threads
            )
            await self._controller.start(
                [e for e in wanted if not e.error],
                [e for e in entries if (e not in wanted if explicit else bool(e.error))],
                baseline,
            )
        for key, state in sorted(models.items()):
            log.info("model %-30s %s", key, state)
        log.info(
            "%d gateway(s): gRPC %s:%s  HTTP %s:%s  metrics %s",
            s.gateways,
            g.host,
            gw["grpc_port"],
            g.host,
            gw["http_port"],
            " ".join(f"http://{g.host}:{p}/metrics" for p in gw["metrics_ports"]),
        )
        if batcher_ready.get("metrics_port", -1) >= 0:
            log.info(
                "batcher metrics (queue depth): http://%s:%s/metrics", g.host, batcher_ready["metrics_port"]
            )
        return {
            "nats": nats_url,
            "grpc_port": gw["grpc_port"],
            "http_port": gw["http_port"],
            "metrics_port": gw["metrics_port"],
            "metrics_ports": gw["metrics_ports"],
            "batcher_metrics_port": batcher_ready.get("metrics_port", -1),
            "models": models,
        }

    async def _declare_states(self, entries: list[ModelEntry], wanted: list[ModelEntry]) -> None:
        """Every model's state in the KV bucket before its workers start."""
        if self._states is None:
            return
        for e in entries:
            if e.error:
                await self._states.put_versions(e.name, e.versions, "UNAVAILABLE", e.error)
            elif e in wanted:
                await self._states.put_versions(e.name, e.versions, "LOADING")
            else:
                await self._states.put_versions(e.name, e.versions, "UNAVAILABLE", UNLOADED_REASON)

    async def _record_readies(self, readies: list[dict[str, Any]]) -> None:
        """READY when any instance of a version is; else UNAVAILABLE with the first instance's reason."""
        if self._states is None:
            return
        outcome: dict[tuple[str, int], str | None] = {}
        for r in readies:
            key = (str(r["model"]), int(r["version"]))
            if r.get("state") == "READY":
                outcome[key] = None
            elif outcome.get(key, "") == "":
                outcome[key] = str(r.get("reason") or "failed to load")
        for (model, version), reason in outcome.items():
            if reason is None:
                await self._states.put(model, version, "READY")
            else:
                await self._states.put(model, version, "UNAVAILABLE", reason)

    async def _start_workers(self, entries: list[ModelEntry]) -> list[dict[str, Any]]:
        """One worker per instance of every served version of ``entries``; their ready payloads."""
        for entry in entries:
            self._fingerprints[entry.name] = files_fingerprint(entry.path)
        roots = {e.name: e.path.parent for e in entries}
        return await self._start_specs(worker_plan(entries, _gpu_count()), roots)

    async def _start_specs(self, specs: list[WorkerSpec], roots: dict[str, Path]) -> list[dict[str, Any]]:
        common = self._common
        started: list[Child] = []
        for spec in specs:
            env = (
                {"CUDA_VISIBLE_DEVICES": spec.device.split(":")[1]} if spec.device.startswith("cuda:") else {}
            )
            device = "cuda:0" if env else "cpu"
            started.append(
                await self._spawn(
                    f"worker {spec.model} v{spec.version} #{spec.instance}",
                    [
                        "worker",
                        *common,
                        "--model-repository",
                        str(roots[spec.model]),
                        "--model-name",
                        spec.model,
                        "--model-version",
                        str(spec.version),
                        "--instance-index",
                        str(spec.instance),
                        "--device",
                        device,
                        *(["--stage", str(spec.stage)] if spec.stage >= 0 else []),
                    ],
                    env,
                )
            )
            started[-1].spec = spec
            self._model_workers.setdefault(spec.model, []).append(started[-1])
        return await self._wait_ready(started)

    @property
    def repository(self) -> Path:
        return self._settings.model_repository

    def entry(self, name: str) -> ModelEntry | None:
        """The model as loaded now (from the repository or an override directory)."""
        return self._entries.get(name)

    def read_entry(self, name: str, repository: Path | None = None) -> ModelEntry | None:
        """The model as its directory under ``repository`` (default: the model repository) reads now."""
        if not name or "/" in name or "\0" in name or name.startswith("."):
            return None  # never a path outside the repository, never a hidden directory
        model_dir = (repository or self._settings.model_repository) / name
        if not model_dir.is_dir():
            return None
        return next((e for e in scan_repository(model_dir.parent) if e.name == name), None)

    def forget(self, name: str) -> None:
        """The model left the repository."""
        self._entries.pop(name, None)

    async def stop_model(self, name: str) -> None:
        """Stop every worker of one model (they say goodbye first, so the pool shrinks at once)."""
        await self._stop_children(self._model_workers.pop(name, []))

    async def _stop_children(self, children: list[Child]) -> None:
        for child in children:
            if child.process.returncode is None:
                child.process.terminate()
            try:
                async with asyncio.timeout(self._settings.exit_timeout_s):
                    await child.process.wait()
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
            if child.reader is not None:
                child.reader.cancel()
            self._children.remove(child)

    async def start_model(self, name: str, repository: Path | None = None) -> list[dict[str, Any]]:
        """(Re)load one model from its directory (under ``repository``, default the model repository).
        On a reload the new workers start beside the old ones, which stop only once the new ones are
        READY; if the new ones fail, the old keep serving."""
        entry = self.read_entry(name, repository)
        if entry is None:
            raise ModelNotFound(f"failed to load '{name}', failed to poll from model repository")
        if entry.error:
            raise InvalidArgument(f"failed to load '{name}': {entry.error}")
        current = self._entries.get(name)
        if (
            current is not None
            and current.versions == entry.versions
            and count_only_change(current.config, entry.config)
            and self._fingerprints.get(name) == files_fingerprint(entry.path)
            and all(c.spec is not None for c in self._model_workers.get(name, []))
        ):
            return await self._resize(entry)
        old = self._model_workers.pop(name, [])
        readies = await self._start_workers([entry])
        if old and any(r.get("state") != "READY" for r in readies):
            await self._stop_children(self._model_workers.pop(name, []))
            self._model_workers[name] = old
            return readies
        self._entries[name] = entry
        if old:
            # the new workers announced READY on their own NATS connections: give every batcher one
            # heartbeat to route to them before the old ones say goodbye
            await asyncio.sleep(1.0)
        await self._stop_children(old)
        return readies

    async def _resize(self, entry: ModelEntry) -> list[dict[str, Any]]:
        """An instance-count-only change: start the new instances, stop the ones no longer wanted; the
        others keep serving (``meshserve/instance_delta.py``).  If a new one fails, it is stopped and
        the model stays as it was."""
        name = entry.name
        workers = self._model_workers.get(name, [])
        kept, start, stop = split_plan([c.spec for c in workers], worker_plan([entry], _gpu_count()))
        log.info(
            "model '%s': instance count change only: %d kept, %d to start, %d to stop",
            name, len(kept), len(start), len(stop),
        )  # fmt: skip
        before = list(workers)
        readies = await self._start_specs([s for s in start if s is not None], {name: entry.path.parent})
        new = [c for c in self._model_workers.get(name, []) if c not in before]
        if any(r.get("state") != "READY" for r in readies):
            await self._stop_children(new)
            self._model_workers[name] = before
            return readies
        self._entries[name] = entry
        leaving: list[Child] = []
        for spec in stop:
            child = next(c for c in before if c.spec == spec and c not in leaving)
            leaving.append(child)
        self._model_workers[name] = [c for c in before if c not in leaving] + new
        await self._stop_children(leaving)
        staying = [c.ready.result() for c in before if c not in leaving and c.ready.done()]
        return staying + readies

    async def _start_gateways(self, common: list[str]) -> dict[str, Any]:
        """The first gateway binds the ports (0 = free ones); the others join the same ports with
        SO_REUSEPORT.  Each keeps its own metrics port (``--metrics-port`` + i, or a free one)."""
        s, g = self._settings, self._settings.gateway
        shared = ["--reuse-port"] if s.gateways > 1 else []

        def args(http: int, grpc_port: int, metrics: int) -> list[str]:
            return [
                "gateway", *common, "--model-repository", str(s.model_repository), "--host", g.host,
                "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
                f"--strict-readiness={str(g.strict_readiness).lower()}", *shared, *gateway_flags(g),
            ]  # fmt: skip

        first = await self._spawn("gateway 0", args(g.http_port, g.grpc_port, g.metrics_port))
        (ready,) = await self._wait_ready([first])
        others = [
            await self._spawn(
                f"gateway {i}",
                args(ready["http_port"], ready["grpc_port"], g.metrics_port + i if g.metrics_port else 0),
            )
            for i in range(1, s.gateways)
        ]
        extra = await self._wait_ready(others)
        ready["metrics_ports"] = [ready["metrics_port"], *[r["metrics_port"] for r in extra]]
        return ready

    async def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every child (newest first), wait up to ``grace_s`` (default ``exit_timeout_s``) for
        each, kill what is left, then stop the embedded nats-server."""
        grace_s = self._settings.exit_timeout_s if grace_s is None else grace_s
        if self._controller is not None:
            await self._controller.close()
        if self._states_nc is not None:
            await close_nats(self._states_nc)
        for child in reversed(self._children):
            if child.process.returncode is None:
                child.process.terminate()
        for child in reversed(self._children):
            try:
                async with asyncio.timeout(grace_s):
                    await child.process.wait()
            except TimeoutError:
                log.warning("%s did not stop in time; killing it", child.name)
                child.process.kill()
                await child.process.wait()
            if child.reader is not None:
                child.reader.cancel()
        if self._nats is not None:
            await self._nats.stop()


STARTUP_STOP_GRACE_S = 5.0
"""How long a child may take to stop when ``up`` is stopped during start-up (nothing is in flight yet;
a worker still loading its model finishes the load before it sees SIGTERM, so it is killed)."""


async def run_up(settings: UpSettings) -> None:
    stop = install_stop_signals()
    launcher = Launcher(settings)
    starting = asyncio.create_task(launcher.start())
    stopping = asyncio.create_task(stop.wait())
    grace_s: float | None = None
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            # SIGTERM/SIGINT while children start (a model may load for minutes): stop what has started
            log.info("stop signal during start-up; stopping what has started")
            grace_s = min(settings.exit_timeout_s, STARTUP_STOP_GRACE_S)
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return
        announce_ready("up", **starting.result())
        await stopping
        log.info("stopping")
    finally:
        starting.cancel()
        stopping.cancel()
        await launcher.stop(grace_s)
