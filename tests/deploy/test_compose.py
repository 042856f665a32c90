"""deploy/docker-compose.yml: valid by the Compose spec, and its services serve when run as processes.

No container engine runs here, so the file is proven two ways: the Compose specification's JSON schema
(as vendored by check-jsonschema), and the same commands and environments run as local processes that
serve requests through tritonclient (tests/deploy/compose_local.py says what is substituted).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from meshserve.harness import ROOT
from meshserve.launcher import worker_plan
from meshserve.nats_server import find_nats_server
from meshserve.repository import scan_repository
from tests.deploy.compose_local import (
    Localizer,
    Proc,
    dockerfile_directives,
    image_env,
    load_compose,
    start_services,
    stop_all,
)

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "meshserve.json"
METRIC_NAME = re.compile(r"\b((?:nv|meshserve)_[a-z_]+)\b")


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def meshserve_services(compose: dict[str, Any]) -> list[str]:
    """Services built from deploy/Dockerfile (the meshserve image)."""
    return [
        name
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    ]


def test_compose_file_is_valid_by_the_compose_spec_schema() -> None:
    assert schema_errors(load_compose(COMPOSE)) == []


def test_schema_check_catches_a_broken_service() -> None:
    broken = copy.deepcopy(load_compose(COMPOSE))
    broken["services"]["gateway"]["ports"] = "8000:8000"  # a string, not a list
    broken["services"]["batcher"]["stop_grace_period"] = {"seconds": 30}
    errors = schema_errors(broken)
    assert any(e.startswith("services/gateway/ports") for e in errors), errors
    assert any(e.startswith("services/batcher/stop_grace_period") for e in errors), errors


def test_dockerfile_runs_meshserve_as_non_root_with_a_healthcheck() -> None:
    assert dockerfile_directives(DOCKERFILE, "ENTRYPOINT") == ['["meshserve"]']
    (user,) = dockerfile_directives(DOCKERFILE, "USER")
    assert not user.startswith(("0", "root"))
    (health,) = dockerfile_directives(DOCKERFILE, "HEALTHCHECK")
    assert "/opt/meshserve/healthcheck.py" in health
    copies = " ".join(dockerfile_directives(DOCKERFILE, "COPY"))
    assert "deploy/healthcheck.py /opt/meshserve/healthcheck.py" in copies
    runs = dockerfile_directives(DOCKERFILE, "RUN")
    # installs come from package indexes through pip only
    assert not any(tool in run for run in runs for tool in ("curl ", "wget ", "git clone", "ADD http"))
    assert 'meshserve = "meshserve.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_every_model_of_the_example_repository_has_a_worker_service() -> None:
    compose = load_compose(COMPOSE)
    served: set[tuple[str, int]] = set()
    for name in meshserve_services(compose):
        command = compose["services"][name]["command"]
        if command[0] == "worker":
            served.add(
                (
                    command[command.index("--model-name") + 1],
                    int(command[command.index("--model-version") + 1]),
                )
            )
    # what `meshserve up` starts workers for (an ensemble has none)
    plan = worker_plan(scan_repository(ROOT / "examples" / "model_repository"), gpus=0)
    assert served == {(spec.model, spec.version) for spec in plan}


def defined_metrics() -> set[str]:
    """Metric family names the gateway and the batcher define (their modules spell each once)."""
    sources = [ROOT / "gateway" / "metrics.py", ROOT / "batcher" / "metrics.py"]
    return {
        name for path in sources for name in re.findall(r'= "((?:nv|meshserve)_[a-z_]+)"', path.read_text())
    }


def test_dashboard_queries_only_metric_families_the_services_define() -> None:
    defined = defined_metrics()
    used = set(METRIC_NAME.findall(DASHBOARD.read_text()))
    families = {m if m in defined else re.sub(r"_(sum|count|bucket|total)$", "", m) for m in used}
    assert families and families <= defined, families - defined
    assert {"meshserve_queue_depth", "nv_inference_pending_request_count"} <= families


def test_prometheus_scrapes_the_metrics_port_of_the_gateway_and_every_batcher() -> None:
    import yaml

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = load_compose(COMPOSE)["services"]

    def metrics_port(service: str) -> int:
        command = services[service]["command"]
        return int(command[command.index("--metrics-port") + 1])

    assert jobs["meshserve-gateway"]["static_configs"] == [
        {"targets": [f"gateway:{metrics_port('gateway')}"]}
    ]
    (batchers,) = jobs["meshserve-batcher"]["dns_sd_configs"]
    assert (batchers["names"], batchers["port"]) == (["batcher"], metrics_port("batcher"))
    assert str(metrics_port("batcher")) in services["batcher"]["expose"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


# ---------------------------------------------------------------------------------------------------
# The compose services as local processes: one start for the module, a few requests.


class ComposeMesh:
    def __init__(self, localizer: Localizer, procs: list[Proc]) -> None:
        self.localizer = localizer
        self.procs = procs

    def port(self, service: str, container_port: int) -> int:
        return self.localizer.ports[service][container_port]

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)


@pytest.fixture(scope="module")
def compose_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeMesh]:
    scratch = tmp_path_factory.mktemp("compose")
    compose = load_compose(COMPOSE)
    localizer = Localizer(DEPLOY, compose["services"], scratch, environ={})
    base_env = {**os.environ, **image_env(DOCKERFILE)}
    services = meshserve_services(compose)
    order = ["batcher", "gateway"] + [s for s in services if s not in ("batcher", "gateway")]
    procs = start_services(localizer, order, base_env, find_nats_server(None))
    try:
        yield ComposeMesh(localizer, procs)
    finally:
        codes = stop_all(procs)
    failed = {name: code for name, code in codes.items() if code != 0}
    assert not failed, {n: (scratch / f"{n}.log").read_text()[-2000:] for n in failed}


def test_services_bind_the_ports_the_compose_file_gives_them(compose_mesh: ComposeMesh) -> None:
    gateway = compose_mesh.proc("gateway").ready
    assert (gateway["http_port"], gateway["grpc_port"], gateway["metrics_port"]) == (
        compose_mesh.port("gateway", 8000),
        compose_mesh.port("gateway", 8001),
        compose_mesh.port("gateway", 8002),
    )
    worker = compose_mesh.proc("worker-simple").ready
    assert worker["state"] == "READY"
    assert worker["address"] == f"127.0.0.1:{compose_mesh.port('worker-simple', 9000)}"


def test_grpc_and_http_requests_are_served(compose_mesh: ComposeMesh) -> None:
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{compose_mesh.port('gateway', 8001)}")
    assert grpc.is_server_ready()  # --strict-readiness=true: every model of the repository is READY
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    result = grpc.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - 1)
    grpc.close()

    http = httpclient.InferenceServerClient(f"127.0.0.1:{compose_mesh.port('gateway', 8000)}")
    metadata = http.get_model_metadata("linear_torch")
    (tensor,) = metadata["inputs"]
    x = np.ones([1, *tensor["shape"][1:]], dtype=np.float32)
    request = httpclient.InferInput(tensor["name"], list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    out = http.infer("linear_torch", [request]).as_numpy(metadata["outputs"][0]["name"])
    assert out is not None and out.shape == (1, *metadata["outputs"][0]["shape"][1:])
    http.close()


def test_dashboard_metrics_are_exported_after_requests(compose_mesh: ComposeMesh) -> None:
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{compose_mesh.port('gateway', 8001)}")
    a = np.zeros((1, 16), dtype=np.int32)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    grpc.infer("simple", inputs)
    grpc.close()
    exported = ""
    for service, port in (("gateway", 8002), ("batcher", 8003)):
        url = f"http://127.0.0.1:{compose_mesh.port(service, port)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            exported += response.read().decode()
    samples = {line.split("{")[0].split(" ")[0] for line in exported.splitlines() if not line.startswith("#")}
    used = set(METRIC_NAME.findall(DASHBOARD.read_text()))
    assert used <= samples, used - samples
    assert 'nv_inference_request_success{model="simple",version="1"}' in exported
    assert 'meshserve_queue_depth{model="simple",version="1"}' in exported


def test_image_healthcheck_passes_for_every_service(compose_mesh: ComposeMesh) -> None:
    import subprocess

    for proc in compose_mesh.procs[1:]:
        check = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), "--pid", str(proc.process.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, (proc.name, check.stdout)
        assert check.stdout.strip() == "healthy"


def test_healthcheck_reports_a_batcher_without_its_own_nats_connection(compose_mesh: ComposeMesh) -> None:
    import subprocess

    # the other services are connected to this NATS port, but this process is not
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "batcher"],
        env={"MESHSERVE_NATS_URL": f"nats://127.0.0.1:{compose_mesh.port('nats', 4222)}"},
    )
    try:
        check = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), "--pid", str(fake.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        fake.kill()
        fake.wait()
    assert check.returncode == 1
    assert f"no established connection to NATS port {compose_mesh.port('nats', 4222)}" in check.stdout


def test_healthcheck_reports_a_gateway_that_does_not_answer(tmp_path: Path) -> None:
    import subprocess

    # a process whose command line says "meshserve gateway" on a port where nothing listens
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "gateway", "--http-port", "1"],
    )
    try:
        check = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), "--pid", str(fake.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        fake.kill()
        fake.wait()
    assert check.returncode == 1
    assert "http://127.0.0.1:1/v2/health/live" in check.stdout
