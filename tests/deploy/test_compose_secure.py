"""deploy/docker-compose.secure.yml over deploy/docker-compose.yml: NATS with TLS and client-certificate
authentication.  Both files and their merge are valid by the Compose spec; the merged services, run as
local processes (tests/deploy/compose_local.py) against a real nats-server with the secure config and
certificates from deploy/nats/make_secrets.py, serve tritonclient; a service with the wrong
certificate stops, in bounded time, saying why."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import trustme

from deploy.nats.make_secrets import CLIENT_USER, make_secrets
from meshserve.logs import READY_MARKER
from meshserve.nats_server import find_nats_server
from tests.deploy.compose_local import (
    Localizer,
    Proc,
    image_env,
    load_compose,
    merge_compose,
    meshserve_argv,
    mount_target,
    start_services,
    stop_all,
)
from tests.deploy.test_compose import COMPOSE, DEPLOY, DOCKERFILE, meshserve_services, schema_errors

SECURE = DEPLOY / "docker-compose.secure.yml"
CONNECT_TIMEOUT_S = 6


def merged() -> dict[str, Any]:
    return merge_compose(load_compose(COMPOSE), load_compose(SECURE))


def test_override_and_merge_are_valid_by_the_compose_spec_schema() -> None:
    assert schema_errors(load_compose(SECURE)) == []
    assert schema_errors(merged()) == []


def test_every_meshserve_service_dials_nats_with_tls_and_a_client_certificate() -> None:
    compose = merged()
    names = meshserve_services(compose)
    assert set(names) == set(meshserve_services(load_compose(COMPOSE)))
    for name in names:
        service = compose["services"][name]
        env = service["environment"]
        assert env["MESHSERVE_NATS_URL"] == "tls://nats:4222", name
        mounted = {mount_target(v) for v in service["volumes"]}
        for key in ("MESHSERVE_NATS_TLS_CA", "MESHSERVE_NATS_TLS_CERT", "MESHSERVE_NATS_TLS_KEY"):
            assert env[key] in mounted, (name, key)
        # never the CA's or the server's key
        assert not any("ca-key" in str(v) or "server-key" in str(v) for v in service["volumes"]), name
    nats = compose["services"]["nats"]
    assert "./nats/nats-secure.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert "./nats/nats.conf:/etc/nats/nats.conf:ro" not in nats["volumes"]  # replaced by container path


def test_merge_follows_the_compose_rules() -> None:
    base = {"services": {"a": {"command": ["x", "1"], "environment": {"A": "1", "B": "2"},
                               "volumes": ["./a:/a:ro", "v:/data"], "expose": ["1"]}}}  # fmt: skip
    over = {"x-anchor": {}, "services": {"a": {"command": ["y"], "environment": {"B": "3"},
                                               "volumes": ["./b:/a:ro"], "expose": ["2"]}}}  # fmt: skip
    service = merge_compose(base, over)["services"]["a"]
    assert service == {
        "command": ["y"],
        "environment": {"A": "1", "B": "3"},
        "volumes": ["./b:/a:ro", "v:/data"],
        "expose": ["1", "2"],
    }
    assert "x-anchor" not in merge_compose(base, over)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nats-secrets")
    make_secrets(out, ["nats", "localhost", "127.0.0.1"])
    return out


@pytest.fixture(scope="module")
def secure_mesh(
    tmp_path_factory: pytest.TempPathFactory, secrets: Path
) -> Iterator[tuple[Localizer, list[Proc]]]:
    scratch = tmp_path_factory.mktemp("compose-secure")
    localizer = Localizer(
        DEPLOY, merged()["services"], scratch, environ={"MESHSERVE_NATS_SECRETS": str(secrets)}
    )
    base_env = {**os.environ, **image_env(DOCKERFILE)}
    # the batcher, the gateway and one model's worker: every kind of service, on 2 shared cores
    procs = start_services(
        localizer, ["batcher", "gateway", "worker-simple"], base_env, find_nats_server(None)
    )
    try:
        yield localizer, procs
    finally:
        codes = stop_all(procs)
    failed = {name: code for name, code in codes.items() if code != 0}
    assert not failed, {n: (scratch / f"{n}.log").read_text()[-2000:] for n in failed}


def test_secure_services_serve_tritonclient(secure_mesh: tuple[Localizer, list[Proc]]) -> None:
    localizer, _ = secure_mesh
    nats_log = (localizer.scratch / "nats.log").read_text()
    assert "TLS required for client connections" in nats_log, nats_log[-2000:]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{localizer.ports['gateway'][8001]}")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    result = client.infer("simple", inputs, client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
    client.close()


def _stranger(base: Path, common: str, *, same_ca: Path | None = None) -> tuple[Path, Path]:
    """A client certificate NATS must refuse: another CA's (trustme), or ours for another name."""
    if same_ca is None:
        leaf = trustme.CA().issue_cert(common)
        cert, key = base / "stranger.pem", base / "stranger-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key
    other = base / "other-user"
    other.mkdir(exist_ok=True)
    for name in ("ca.pem", "ca-key.pem"):
        (other / name).write_bytes((same_ca / name).read_bytes())
    make_secrets(other, ["nats"], client_user=common, reuse_ca=True)
    return other / "client.pem", other / "client-key.pem"


def _refused(localizer: Localizer, env_changes: dict[str, str | None], log: Path) -> tuple[int, str, float]:
    """The batcher's compose command and environment with ``env_changes``; (exit code, stderr, seconds)."""
    env = localizer.environment("batcher", {**os.environ, **image_env(DOCKERFILE)})
    env["MESHSERVE_NATS_CONNECT_TIMEOUT_SECS"] = str(CONNECT_TIMEOUT_S)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    started = time.monotonic()
    with log.open("w") as err:
        done = subprocess.run(
            meshserve_argv(localizer.command("batcher")), env=env, stdout=subprocess.PIPE,
            stderr=err, text=True, timeout=CONNECT_TIMEOUT_S + 60,
        )  # fmt: skip
    assert READY_MARKER not in done.stdout
    return done.returncode, log.read_text(), time.monotonic() - started


@pytest.mark.parametrize("case", ["other-ca", "other-user", "no-certificate"])
def test_a_service_with_the_wrong_certificate_stops_in_bounded_time_saying_why(
    secure_mesh: tuple[Localizer, list[Proc]], secrets: Path, case: str
) -> None:
    localizer, _ = secure_mesh
    base = localizer.scratch
    if case == "other-ca":
        cert, key = _stranger(base, CLIENT_USER)
        changes: dict[str, str | None] = {
            "MESHSERVE_NATS_TLS_CERT": str(cert),
            "MESHSERVE_NATS_TLS_KEY": str(key),
        }
        nats_says, service_says = "certificate signed by unknown authority", "unknown ca"
    elif case == "other-user":
        cert, key = _stranger(base, "intruder@mesh.local", same_ca=secrets)
        changes = {"MESHSERVE_NATS_TLS_CERT": str(cert), "MESHSERVE_NATS_TLS_KEY": str(key)}
        nats_says, service_says = "authentication error", "Authorization Violation"
    else:
        changes = {"MESHSERVE_NATS_TLS_CERT": None, "MESHSERVE_NATS_TLS_KEY": None}
        nats_says, service_says = "client didn't provide a certificate", "certificate required"
    code, stderr, took = _refused(localizer, changes, base / f"refused-{case}.log")
    assert code != 0, stderr[-2000:]
    assert took < CONNECT_TIMEOUT_S + 30, took
    assert "cannot connect to NATS at tls://127.0.0.1:" in stderr, stderr[-2000:]
    assert service_says in stderr, stderr[-2000:]  # each attempt's reason, logged
    nats_log = (base / "nats.log").read_text().lower()
    assert nats_says.lower() in nats_log, nats_log[-2000:]
