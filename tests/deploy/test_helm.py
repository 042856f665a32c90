"""deploy/helm/meshserve: rendered offline by Helm's own SDK, every manifest valid for a current Kubernetes
(kubernetes-validate, strict), KEDA and prometheus-operator objects checked for the shape their controllers
read, and every container's arguments accepted by the real ``meshserve`` command line."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshserve.cli import build_parser
from meshserve.harness import ROOT
from meshserve.settings import BatcherSettings, Limits, WorkerSettings

pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm's Go SDK) is installed on x86-64 only (pyproject.toml)"
)
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from deploy.render_chart import CHART, HEADER, RENDERED, documents, render  # noqa: E402

KUBERNETES_VERSION = "1.37.0"
"""Newest schemas kubernetes-validate ships (pinned in pyproject.toml's test extra)."""
CRDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
SERVICE_METRICS = {
    name
    for path in (ROOT / "gateway" / "metrics.py", ROOT / "batcher" / "metrics.py")
    for name in re.findall(r'= "((?:nv|meshserve)_[a-z_]+)"', path.read_text())
}
"""Metric family names the gateway and the batcher define (their modules spell each once)."""

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "scale-to-zero": {
        "autoscaling": {
            "minReplicas": 0,
            "activationPending": 1,
            "wakeSchedule": {"start": "0 8 * * 1-5", "end": "0 20 * * 1-5"},
        }
    },
    "fixed-replicas": {"autoscaling": {"enabled": False}, "worker": {"replicas": 3}},
    "external-nats-operator": {
        "nats": {"enabled": False, "url": "nats://nats.infra:4222"},
        "prometheus": {"enabled": False},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "autoscaling": {"prometheusAddress": "http://prometheus-operated.monitoring:9090"},
    },
    "secure-nats": {
        "nats": {
            "tls": {"enabled": True, "serverSecret": "nats-server-tls", "clientSecret": "nats-client-tls"},
            "auth": {"token": {"secretName": "nats-token"}},
        }
    },
    "secure-nats-user": {
        "nats": {
            "tls": {
                "enabled": True,
                "serverSecret": "nats-server-tls",
                "clientSecret": "nats-client-tls",
                "verifyClients": False,
            },
            "auth": {"user": {"secretName": "nats-user"}},
        }
    },
    "external-nats-creds": {
        "nats": {
            "enabled": False,
            "url": "tls://nats.infra:4222",
            "tls": {"enabled": True, "clientSecret": "nats-ca", "verifyClients": False},
            "auth": {"creds": {"secretName": "meshserve-creds"}},
        }
    },
}


@functools.cache
def _rendered_text(variant: str) -> str:
    return render(VARIANTS[variant])


def rendered(variant: str) -> list[dict[str, Any]]:
    """Fresh objects each call (tests may change them); the chart is rendered once per variant."""
    return documents(_rendered_text(variant))


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_valid_for_current_kubernetes(variant: str) -> None:
    docs = rendered(variant)
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_invalid_manifest_is_caught_by_the_validator() -> None:
    gateway = by_kind(rendered("defaults"), "Deployment")["meshserve-gateway"]
    container(gateway)["readinessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", ["defaults", "secure-nats", "external-nats-creds"])
def test_helm_lint_finds_no_error(variant: str) -> None:
    from helm_python import lint

    report = lint(str(CHART), VARIANTS[variant], strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert errors == [], errors


def test_plain_manifests_are_the_chart_rendered_with_defaults() -> None:
    assert RENDERED.read_text() == HEADER + _rendered_text("defaults"), (
        "stale: run `python deploy/render_chart.py`"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_container_arguments_and_environment_are_meshserve_flags(variant: str) -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for deployment in by_kind(rendered(variant), "Deployment").values():
        spec = container(deployment)
        if spec["name"] == "prometheus":
            continue
        args = spec["args"]
        env = {e["name"]: e.get("value", "") for e in spec["env"]}
        flags = {opt for action in subcommands[args[0]]._actions for opt in action.option_strings}
        for name in env:
            if not name.startswith("MESHSERVE_"):  # a Secret's value that a flag's variable expands
                assert any(f"$({name})" in value for value in env.values()), name
                continue
            assert f"--{name.removeprefix('MESHSERVE_').lower().replace('_', '-')}" in flags, name
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value or "10.0.0.1")
            parsed = build_parser().parse_args(args)  # flag defaults come from the environment
        assert parsed.nats_url
        if args[0] in ("gateway", "worker"):
            assert str(parsed.model_repository) == "/models"


def test_probes_use_the_health_endpoints() -> None:
    deployments = by_kind(rendered("defaults"), "Deployment")
    gateway = container(deployments["meshserve-gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    worker = container(deployments["meshserve-worker-simple-v1"])
    assert worker["readinessProbe"]["tcpSocket"]["port"] == "batches"
    assert {"name": "batches", "containerPort": 9000} in worker["ports"]
    batcher = container(deployments["meshserve-batcher"])
    assert batcher["livenessProbe"]["exec"]["command"][-1] == "/opt/meshserve/healthcheck.py"


def test_scale_to_zero_keeps_gateways_in_service_and_adds_the_wake_schedule() -> None:
    docs = rendered("scale-to-zero")
    gateway = container(by_kind(docs, "Deployment")["meshserve-gateway"])
    # a model whose last worker stopped reads "loading", which /v2/health/ready reports as not ready
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/live"
    scaled = by_kind(docs, "ScaledObject")["meshserve-worker-simple-v1"]
    assert scaled["spec"]["minReplicaCount"] == 0
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["prometheus", "prometheus", "cron"]
    assert scaled["spec"]["triggers"][1]["metadata"]["activationThreshold"] == "1"


def test_termination_grace_covers_each_services_drain() -> None:
    deployments = by_kind(rendered("defaults"), "Deployment")
    timeout_s = Limits().request_timeout_s

    def grace(name: str) -> int:
        value: int = deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        return value

    gateway = container(deployments["meshserve-gateway"])
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace("meshserve-gateway") > pre_stop + timeout_s / 10  # gRPC grace in gateway/app.py
    assert grace("meshserve-batcher") > timeout_s / 4  # batcher drain in batcher/app.py
    assert BatcherSettings(nats_url="").limits.request_timeout_s == timeout_s
    worker = WorkerSettings(nats_url="", model_repository=ROOT, model_name="m", model_version=1)
    assert grace("meshserve-worker-simple-v1") > worker.exit_timeout_s + worker.stop_notice_s


def test_gpu_model_asks_for_a_gpu_on_the_gpu_pool() -> None:
    deployment = by_kind(rendered("defaults"), "Deployment")["meshserve-worker-linear-torch-v1"]
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["args"][spec["args"].index("--device") + 1] == "cuda:0"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    cpu = container(by_kind(rendered("defaults"), "Deployment")["meshserve-worker-simple-v1"])
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_has_requests_and_every_mesh_deployment_a_disruption_budget(variant: str) -> None:
    docs = rendered(variant)
    budgets = list(by_kind(docs, "PodDisruptionBudget").values())
    for name, deployment in by_kind(docs, "Deployment").items():
        assert container(deployment)["resources"]["requests"], name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == (0 if name.endswith("-prometheus") else 1), name
    for statefulset in by_kind(docs, "StatefulSet").values():
        assert container(statefulset)["resources"]["requests"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_scaled_objects_have_the_shape_keda_reads(variant: str) -> None:
    docs = rendered(variant)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    scaled = by_kind(docs, "ScaledObject")
    if not VARIANTS[variant].get("autoscaling", {}).get("enabled", True):
        assert scaled == {}
        assert all("replicas" in d["spec"] for n, d in deployments.items() if "-worker-" in n)
        return
    assert set(scaled) == {n for n in deployments if "-worker-" in n}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert set(spec) <= {
            "scaleTargetRef", "pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount",
            "advanced", "triggers", "fallback", "idleReplicaCount",
        }  # fmt: skip
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in deployments[name]["spec"]  # the HPA owns the count
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
            assert isinstance(spec[key], int), key
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert isinstance(behavior["scaleDown"]["stabilizationWindowSeconds"], int)
        for trigger in spec["triggers"]:
            assert trigger["type"] in ("prometheus", "cron")
            # KEDA reads every trigger metadata value as a string
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
        prometheus = [t["metadata"] for t in spec["triggers"] if t["type"] == "prometheus"]
        families = set()
        for prom in prometheus:
            assert set(prom) == {"serverAddress", "query", "threshold", "activationThreshold"}
            float(prom["threshold"]), float(prom["activationThreshold"])
            model = container(deployments[name])["args"]
            assert f'model="{model[model.index("--model-name") + 1]}"' in prom["query"]
            families |= set(re.findall(r"\b(nv_[a-z_]+|meshserve_[a-z_]+)\b", prom["query"]))
            host = prom["serverAddress"].split("//")[1].split(".")[0]
            if VARIANTS[variant].get("prometheus", {}).get("enabled", True):
                assert host in services and services[host]["spec"]["ports"][0]["port"] == 9090
        # the batchers' backlog and the gateways' requests in flight, both exported by the services
        assert families == {"meshserve_queue_depth", "nv_inference_pending_request_count"}
        assert families <= SERVICE_METRICS


def test_bundled_prometheus_scrapes_every_gateway_and_batcher_pod() -> None:
    import yaml

    docs = rendered("defaults")
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["meshserve-prometheus"]["data"]["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"meshserve-gateway", "meshserve-batcher"}
    deployments = by_kind(docs, "Deployment")
    for part in ("gateway", "batcher"):
        (sd,) = jobs[f"meshserve-{part}"]["dns_sd_configs"]
        headless = by_kind(docs, "Service")[f"meshserve-{part}-metrics"]
        assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
        assert sd["names"] == [f"meshserve-{part}-metrics.meshserve.svc.cluster.local"]
        args = container(deployments[f"meshserve-{part}"])["args"]
        assert (
            sd["port"] == headless["spec"]["ports"][0]["port"] == int(args[args.index("--metrics-port") + 1])
        )
        assert (
            headless["spec"]["selector"].items()
            <= deployments[f"meshserve-{part}"]["spec"]["template"]["metadata"]["labels"].items()
        )


def test_service_monitor_selects_the_gateway_metrics_service() -> None:
    docs = rendered("external-nats-operator")
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    services = by_kind(docs, "Service")
    selected = [
        name
        for name, svc in services.items()
        if monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    ]
    assert sorted(selected) == ["meshserve-batcher-metrics", "meshserve-gateway-metrics"]
    for name in selected:
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
            services[name]["spec"]["ports"][0]["name"]
        ]
    assert by_kind(docs, "StatefulSet") == {}  # external NATS: none of ours
    worker = container(by_kind(docs, "Deployment")["meshserve-worker-simple-v1"])
    assert {"name": "MESHSERVE_NATS_URL", "value": "nats://nats.infra:4222"} in worker["env"]


def test_nats_runs_jetstream_with_the_mesh_payload_limit() -> None:
    docs = rendered("defaults")
    nats = container(by_kind(docs, "StatefulSet")["meshserve-nats"])
    assert "-js" in nats["args"]
    conf = by_kind(docs, "ConfigMap")["meshserve-nats"]["data"]["nats.conf"]
    assert f"max_payload: {Limits().max_message_bytes}" in conf


# ---------------------------------------------------------------------------------------------------
# NATS with TLS and credentials (values nats.tls, nats.auth; docs/security.md)

MESH_PODS = ("meshserve-gateway", "meshserve-batcher", "meshserve-worker-simple-v1")


def env_list(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = spec.get("env", [])
    return found


def parsed_flags(spec: dict[str, Any], expanded: dict[str, str]) -> Any:
    """The container's command line as meshserve parses it, with its environment (``$(VAR)`` expanded)."""
    with pytest.MonkeyPatch.context() as patch:
        for e in env_list(spec):
            value = e.get("value", "10.0.0.1")
            for name, secret in expanded.items():
                value = value.replace(f"$({name})", secret)
            patch.setenv(e["name"], value)
        return build_parser().parse_args(spec["args"])


@pytest.mark.parametrize("variant", ["secure-nats", "secure-nats-user", "external-nats-creds"])
def test_every_mesh_pod_mounts_the_nats_client_secrets_and_gets_the_flags(variant: str) -> None:
    values = VARIANTS[variant]["nats"]
    deployments = by_kind(rendered(variant), "Deployment")
    for name in MESH_PODS:
        pod = deployments[name]["spec"]["template"]["spec"]
        spec = container(deployments[name])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in spec["volumeMounts"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == values["tls"]["clientSecret"], name
        assert mounts["nats-tls"]["readOnly"] and mounts["nats-tls"]["mountPath"] == "/etc/meshserve/nats-tls"
        parsed = parsed_flags(spec, {"NATS_TOKEN": "t0ken", "NATS_USER": "u", "NATS_PASSWORD": "p"})
        assert str(parsed.nats_tls_ca) == "/etc/meshserve/nats-tls/ca.crt", name
        verify = values["tls"].get("verifyClients", True)
        assert (parsed.nats_tls_cert is not None, parsed.nats_tls_key is not None) == (verify, verify), name
        assert parsed.nats_url.startswith("tls://"), parsed.nats_url
        names = [e["name"] for e in env_list(spec)]
        if "token" in values["auth"]:
            assert parsed.nats_url.startswith("tls://t0ken@"), parsed.nats_url
            # defined before the URL that expands it (Kubernetes expands only earlier variables)
            assert names.index("NATS_TOKEN") < names.index("MESHSERVE_NATS_URL")
            (token,) = [e for e in env_list(spec) if e["name"] == "NATS_TOKEN"]
            assert token["valueFrom"]["secretKeyRef"] == {"name": "nats-token", "key": "token"}
        elif "user" in values["auth"]:
            assert parsed.nats_url.startswith("tls://u:p@"), parsed.nats_url
            assert names.index("NATS_PASSWORD") < names.index("MESHSERVE_NATS_URL")
        if "creds" in values["auth"]:
            assert volumes["nats-creds"]["secret"]["secretName"] == "meshserve-creds"
            assert str(parsed.nats_creds) == f"{mounts['nats-creds']['mountPath']}/nats.creds"
            assert parsed.nats_url == "tls://nats.infra:4222"


def test_defaults_mount_no_nats_secret_and_dial_plain_nats() -> None:
    for name, deployment in by_kind(rendered("defaults"), "Deployment").items():
        spec = container(deployment)
        assert not any(e["name"].startswith(("NATS_", "MESHSERVE_NATS_TLS")) for e in env_list(spec)), name
        assert "nats-tls" not in {m["name"] for m in spec.get("volumeMounts", [])}, name


def test_secure_nats_server_serves_tls_and_requires_the_token() -> None:
    docs = rendered("secure-nats")
    nats = by_kind(docs, "StatefulSet")["meshserve-nats"]
    pod = nats["spec"]["template"]["spec"]
    spec = container(nats)
    assert {"name": "tls", "secret": {"secretName": "nats-server-tls"}} in pod["volumes"]
    assert {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True} in spec["volumeMounts"]
    (token,) = spec["env"]
    assert token["name"] == "NATS_TOKEN" and token["valueFrom"]["secretKeyRef"]["name"] == "nats-token"
    conf = by_kind(docs, "ConfigMap")["meshserve-nats"]["data"]["nats.conf"]
    assert "cert_file: /etc/nats-tls/tls.crt" in conf and "verify: true" in conf
    assert "token: $NATS_TOKEN" in conf
    # a changed config restarts the pod
    defaults = by_kind(rendered("defaults"), "StatefulSet")["meshserve-nats"]
    checksum = "checksum/config"
    assert (
        nats["spec"]["template"]["metadata"]["annotations"][checksum]
        != defaults["spec"]["template"]["metadata"]["annotations"][checksum]
    )


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"nats": {"tls": {"enabled": True, "serverSecret": "s"}}}, "nats.tls.clientSecret"),
        ({"nats": {"tls": {"enabled": True, "clientSecret": "c"}}}, "nats.tls.serverSecret"),
        ({"nats": {"auth": {"token": {"secretName": "t"}, "user": {"secretName": "u"}}}}, "not both"),
        ({"nats": {"auth": {"creds": {"secretName": "c"}}}}, "operator mode"),
    ],
)
def test_incomplete_nats_security_values_fail_the_render_saying_what_is_missing(
    values: dict[str, Any], says: str
) -> None:
    with pytest.raises(Exception, match=re.escape(says)):
        render(values)


def test_rendered_secure_nats_admits_a_rendered_service_and_refuses_one_without_the_token(
    tmp_path: Path,
) -> None:
    """The chart's nats.conf run by a real nats-server, and the batcher pod's command and environment
    run as a process, with the Secrets' files where the pods mount them (paths mapped to tmp_path)."""
    from deploy.nats.make_secrets import make_secrets
    from meshserve.nats_server import find_nats_server
    from tests.deploy.compose_local import free_port, meshserve_argv, spawn, stop_all, wait_port

    secrets = tmp_path / "secrets"
    make_secrets(secrets, ["localhost", "127.0.0.1"])
    server_dir, client_dir = tmp_path / "server-tls", tmp_path / "client-tls"
    for folder, leaf in ((server_dir, "server"), (client_dir, "client")):
        folder.mkdir()  # the kubernetes.io/tls shape
        (folder / "tls.crt").write_bytes((secrets / f"{leaf}.pem").read_bytes())
        (folder / "tls.key").write_bytes((secrets / f"{leaf}-key.pem").read_bytes())
        (folder / "ca.crt").write_bytes((secrets / "ca.pem").read_bytes())
    docs = rendered("secure-nats")
    conf = by_kind(docs, "ConfigMap")["meshserve-nats"]["data"]["nats.conf"]
    (tmp_path / "nats.conf").write_text(conf.replace("/etc/nats-tls", str(server_dir)))
    port = free_port()
    token = "chart-t0ken"
    nats_args = container(by_kind(docs, "StatefulSet")["meshserve-nats"])["args"]
    nats_args = [
        str(tmp_path / "nats.conf") if a == "/etc/nats/nats.conf" else str(port) if a == "4222" else a
        for a in nats_args
    ]
    nats_args[nats_args.index("-m") + 1] = str(free_port())
    nats_args[nats_args.index("-sd") + 1] = str(tmp_path / "js")
    procs = [
        spawn("nats", [find_nats_server(None), *nats_args, "-a", "127.0.0.1"], {"NATS_TOKEN": token},
              tmp_path / "nats.log", tmp_path)
    ]  # fmt: skip
    try:
        wait_port(port, 20)
        batcher = container(by_kind(docs, "Deployment")["meshserve-batcher"])
        env = dict(os.environ)
        for e in env_list(batcher):
            value = e.get("value", token if e["name"] == "NATS_TOKEN" else "")
            value = value.replace("$(NATS_TOKEN)", token).replace("/etc/meshserve/nats-tls", str(client_dir))
            env[e["name"]] = re.sub(r"@[^/]+:4222$", f"@localhost:{port}", value)
        env["MESHSERVE_NATS_CONNECT_TIMEOUT_SECS"] = "5"
        argv = meshserve_argv([a if a != "0.0.0.0" else "127.0.0.1" for a in batcher["args"]])
        procs.append(spawn("batcher", [*argv, "--metrics-port", "0"], env, tmp_path / "batcher.log", ROOT))
        procs[-1].wait_ready(60)  # connected, subscribed, serving
        # the same pod without the token: refused by NATS, the service stops saying so
        env["MESHSERVE_NATS_URL"] = env["MESHSERVE_NATS_URL"].replace(f"{token}@", "")
        refused = subprocess.run([*argv, "--metrics-port", "0"], env=env, capture_output=True, text=True,
                                 timeout=60, cwd=ROOT)  # fmt: skip
        assert refused.returncode != 0
        assert "Authorization Violation" in refused.stderr, refused.stderr[-2000:]
    finally:
        codes = stop_all(procs)
    assert codes["batcher"] == 0, (tmp_path / "batcher.log").read_text()[-2000:]
