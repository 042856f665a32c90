"""Run docker-compose services as local processes: the same command and environment each container gets,
with only what a container engine would provide substituted (no engine runs on CI machines).

Substitutions, and nothing else:
- ``${VAR:-default}`` interpolation, as compose does it;
- the image's ``ENV`` (from ``deploy/Dockerfile``) under the service's ``environment``;
- ``ENTRYPOINT ["meshserve"]`` becomes ``python -m meshserve.cli`` (the same ``main``, see pyproject.toml);
- a container path of a bind mount becomes the host path; a named volume becomes a fresh directory;
- each port a service declares (``ports``, ``expose``) becomes a free port of this machine, also where
  another service dials it as ``<service>:<port>``; ``0.0.0.0`` binds become ``127.0.0.1``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshserve.logs import READY_MARKER

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_SERVICE_PORT = re.compile(r"\b([a-z][a-z0-9_-]*):(\d+)\b")


def interpolate(value: str, environ: dict[str, str]) -> str:
    return _INTERPOLATION.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)


def load_compose(path: Path) -> dict[str, Any]:
    """The compose file as compose sees it (YAML merge keys resolved by the safe loader)."""
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


_REPLACED = {"command", "entrypoint"}
_BY_TARGET = {"volumes", "devices"}


def mount_target(entry: Any) -> str:
    """The container path of a volume entry (short syntax may hold ``${VAR:-default}``)."""
    if isinstance(entry, dict):
        return str(entry["target"])
    return _INTERPOLATION.sub("_", str(entry)).split(":")[1]


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        if key in _BY_TARGET:
            kept = {mount_target(e): e for e in base}
            kept.update({mount_target(e): e for e in override})
            return list(kept.values())
        return base + [e for e in override if e not in base]
    return override


def merge_compose(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """``docker compose -f base -f override ...`` as the Compose spec merges files: mappings (environment,
    healthcheck, ...) by key, ``volumes`` by container path, ``command``/``entrypoint`` replaced, other
    sequences appended.  Top-level ``x-`` extensions of an override are its own."""
    merged = base
    for override in overrides:
        merged = _merge(merged, {k: v for k, v in override.items() if not k.startswith("x-")})
    return merged


def dockerfile_directives(path: Path, name: str) -> list[str]:
    """The argument text of each ``name`` directive (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]


def image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for directive in dockerfile_directives(dockerfile, "ENV"):
        for item in shlex.split(directive):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _declared_ports(service: dict[str, Any]) -> list[int]:
    ports = [int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])]
    return ports + [int(p) for p in service.get("expose", [])]


@dataclass
class Localizer:
    """Maps container-side names to this machine for one compose project."""

    compose_dir: Path
    services: dict[str, Any]
    scratch: Path
    environ: dict[str, str] = field(default_factory=dict)
    ports: dict[str, dict[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, service in self.services.items():
            self.ports[name] = {port: free_port() for port in _declared_ports(service)}

    def mounts(self, service: str) -> dict[str, str]:
        """Container path → host path for the service's volumes."""
        found: dict[str, str] = {}
        for volume in self.services[service].get("volumes", []):
            source, target = interpolate(volume, self.environ).split(":")[:2]
            if source.startswith((".", "/")):
                found[target] = str((self.compose_dir / source).resolve())
            else:
                named = self.scratch / f"volume-{source}"
                named.mkdir(parents=True, exist_ok=True)
                found[target] = str(named)
        return found

    def value(self, service: str, value: str) -> str:
        text = interpolate(str(value), self.environ)
        if text == "0.0.0.0":
            return "127.0.0.1"
        own = self.ports[service]
        if text.isdigit() and int(text) in own:
            return str(own[int(text)])

        def dial(m: re.Match[str]) -> str:
            target, port = m.group(1), int(m.group(2))
            if target in self.ports and port in self.ports[target]:
                return f"127.0.0.1:{self.ports[target][port]}"
            return m.group(0)

        text = _SERVICE_PORT.sub(dial, text)
        for container, host in sorted(self.mounts(service).items(), key=lambda kv: -len(kv[0])):
            if text == container or text.startswith(container + "/"):
                return host + text[len(container) :]
        return text

    def command(self, service: str) -> list[str]:
        return [self.value(service, arg) for arg in self.services[service].get("command", [])]

    def environment(self, service: str, base: dict[str, str]) -> dict[str, str]:
        declared = self.services[service].get("environment", {})
        if isinstance(declared, list):
            declared = dict(item.split("=", 1) for item in declared)
        merged = {**base, **{k: str(v) for k, v in declared.items()}}
        return {k: self.value(service, v) for k, v in merged.items()}


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[str]
    ready: dict[str, Any] = field(default_factory=dict)
    got_ready: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith(READY_MARKER) and not self.ready:
                    self.ready.update(json.loads(line[len(READY_MARKER) :]))
                    self.got_ready.set()
            self.got_ready.set()

        threading.Thread(target=read, daemon=True).start()

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        if not self.got_ready.wait(timeout_s) or not self.ready:
            raise RuntimeError(
                f"{self.name} did not become ready in {timeout_s}s (exit {self.process.poll()})"
            )
        return self.ready


def spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> Proc:
    log_file = log_path.open("w")
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=cwd, start_new_session=True
    )
    proc = Proc(name, process)
    proc.watch()
    return proc


def meshserve_argv(command: list[str]) -> list[str]:
    return [sys.executable, "-m", "meshserve.cli", *command]


def wait_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s}s")


def stop_all(procs: list[Proc], timeout_s: float = 30.0) -> dict[str, int]:
    """Stop as ``docker compose down`` does, dependents before what they depend on: SIGTERM every
    meshserve service at once, wait, then NATS (``procs[0]``); kill what does not stop.  Exit codes."""
    codes: dict[str, int] = {}
    for group in (procs[1:], procs[:1]):
        for proc in group:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in group:
            try:
                codes[proc.name] = proc.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.process.pid, signal.SIGKILL)
                codes[proc.name] = proc.process.wait(10)
    return codes


def start_services(
    localizer: Localizer,
    names: list[str],
    base_env: dict[str, str],
    nats_server: str,
    extra_args: dict[str, list[str]] | None = None,
) -> list[Proc]:
    """``nats`` first (nats-server with the service's arguments), then ``names`` in order, as
    ``python -m meshserve.cli <command>``; waits for each one's ready line.  ``extra_args`` appends
    arguments to a service's command (what an override file would do).  On failure stops what started."""
    scratch = localizer.scratch
    procs: list[Proc] = []
    try:
        nats = [nats_server, *localizer.command("nats")]
        nats_env = localizer.environment("nats", {})  # a config file may read its paths from it
        procs.append(spawn("nats", nats, nats_env, scratch / "nats.log", Path.cwd()))
        wait_port(localizer.ports["nats"][4222], 20)
        for name in names:
            argv = meshserve_argv([*localizer.command(name), *(extra_args or {}).get(name, [])])
            env = localizer.environment(name, base_env)
            procs.append(spawn(name, argv, env, scratch / f"{name}.log", Path.cwd()))
        for proc in procs[1:]:
            proc.wait_ready(180)
    except BaseException:
        stop_all(procs)
        raise
    return procs
