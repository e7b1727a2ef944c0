"""The Helm chart under deploy/helm/heron, rendered and validated as CI can (no cluster, no helm
binary): Helm's own engine renders it (helm-python-sdk, a C library build of Helm 4), every
Kubernetes object is validated against the Kubernetes OpenAPI schemas in strict mode (unknown
fields are errors; kubernetes-validate ships the schemas), and the ServiceMonitor, a CRD that
those schemas lack, against the pydantic models generated from the Prometheus Operator's CRDs
(cloudcoil-models-prometheus-operator), with unknown fields caught by a round trip.

Each check returns the problems it finds, so that the tests at the end can also show that a
broken chart is caught."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "deploy" / "helm" / "heron"
RELEASE, NAMESPACE = "demo", "llm"
FULLNAME = f"{RELEASE}-heron"
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25", "1.37")

SERVICE_MONITOR = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kp"}}}}
AUTOSCALED = {"autoscaling": {"enabled": True, "maxReplicas": 6}}
STATEFUL = {
    "kind": "StatefulSet",
    "dataParallelSize": 2,
    "engine": {"maxNumSeqs": 32, "kvCacheMemoryMb": 2048},
    "model": {"name": "hf.co/org/repo", "servedModelName": "assistant"},
    "apiKey": {"existingSecret": "heron-key", "secretKey": "token"},
    "extraArgs": ["--speculative", "ngram"],
}

Manifest = dict[str, Any]


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[Manifest]:
    """Every object the chart renders with ``values`` (NOTES.txt left out). Raises Helm's
    errors (helm.HelmError) when a template does not render, yaml.YAMLError when it renders
    something that is not YAML."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def service_monitor_problems(obj: Manifest) -> list[str]:
    """A ServiceMonitor against the CRD's generated models: types, required fields and enums
    from validation; a field the CRD does not know is dropped by the model, so a round trip
    that loses something names it."""
    import pydantic
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    try:
        model = ServiceMonitor.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"ServiceMonitor: {exc}"]
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"ServiceMonitor: unknown field {path}" for path in lost_fields(obj, kept)]


def lost_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of ``given``'s mapping keys that ``kept`` lacks."""
    if isinstance(given, dict) and isinstance(kept, dict):
        lost = []
        for key, value in given.items():
            if key not in kept:
                lost.append(f"{path}.{key}")
            else:
                lost.extend(lost_fields(value, kept[key], f"{path}.{key}"))
        return lost
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for p in lost_fields(g, k, f"{path}[{i}]")
        ]
    return []


def schema_problems(objects: list[Manifest]) -> list[str]:
    """Every object against its schema: Kubernetes kinds strictly, in each version of
    KUBE_VERSIONS; the ServiceMonitor against its CRD."""
    problems: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if (
            obj.get("apiVersion") == "monitoring.coreos.com/v1"
            and obj.get("kind") == "ServiceMonitor"
        ):
            problems.extend(service_monitor_problems(obj))
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                problems.append(f"{name} (Kubernetes {version}): {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name}: {exc.message}")
    return problems


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Manifest], kind: str) -> Manifest:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def promise_problems(objects: list[Manifest], values: dict[str, Any]) -> list[str]:
    """What the chart promises beyond the schemas: probes, the key from a Secret, the store on
    a claim, a locked-down container, and that every reference between objects resolves."""
    problems: list[str] = []
    workloads = by_kind(objects, "Deployment") + by_kind(objects, "StatefulSet")
    if len(workloads) != 1:
        return [f"expected one Deployment or StatefulSet, got {len(workloads)}"]
    workload = workloads[0]
    pod = workload["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "heron")
    secrets = {o["metadata"]["name"]: o for o in by_kind(objects, "Secret")}
    key_secret = values.get("apiKey", {}).get("existingSecret") or f"{FULLNAME}-api-key"
    secret_key = values.get("apiKey", {}).get("secretKey", "api-key")
    if not values.get("apiKey", {}).get("existingSecret"):
        if secret_key not in secrets.get(key_secret, {}).get("data", {}):
            problems.append(f"no Secret {key_secret} with {secret_key}")

    env = {e["name"]: e for e in server.get("env", [])}
    key_ref = env.get("HERON_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if key_ref != {"name": key_secret, "key": secret_key}:
        problems.append(f"HERON_API_KEY does not come from Secret {key_secret}: {key_ref}")
    if not env.get("HERON_HOST", {}).get("value", "").startswith("0.0.0.0:"):
        problems.append("HERON_HOST does not bind every address")
    if env.get("HERON_MODELS", {}).get("value") != "/data/models":
        problems.append("HERON_MODELS is not the store's mount")

    liveness = server.get("livenessProbe", {}).get("httpGet", {})
    if liveness.get("path") != "/health":
        problems.append(f"liveness does not GET /health: {liveness}")
    readiness = " ".join(server.get("readinessProbe", {}).get("exec", {}).get("command", []))
    if "/ready" not in readiness or "HERON_API_KEY" not in readiness:
        problems.append(f"readiness does not ask /ready with the key: {readiness!r}")

    security = server.get("securityContext", {})
    if not (
        security.get("readOnlyRootFilesystem")
        and security.get("allowPrivilegeEscalation") is False
        and security.get("capabilities", {}).get("drop") == ["ALL"]
    ):
        problems.append(f"the server container is not locked down: {security}")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("the pod may run as root")

    mounts = {m["name"]: m["mountPath"] for m in server.get("volumeMounts", [])}
    if mounts.get("models") != "/data/models":
        problems.append(f"the store is not mounted at /data/models: {mounts}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    templates = [t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])]
    claim = volumes.get("models", {}).get("persistentVolumeClaim", {}).get("claimName")
    if values.get("persistence", {}).get("enabled", True):
        if not (claim in claims or "models" in templates):
            problems.append(f"the store is on no claim: volume {volumes.get('models')}")
    elif "emptyDir" not in volumes.get("models", {}):
        problems.append(f"the store without persistence is not an emptyDir: {volumes}")
    for name in ("cache", "tmp"):
        if "emptyDir" not in volumes.get(name, {}):
            problems.append(f"no writable {name} volume under the read-only root")

    service = next(o for o in by_kind(objects, "Service") if o["metadata"]["name"] == FULLNAME)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], workload["spec"]["selector"]["matchLabels"]):
        if any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append(f"selector {selector} does not select the pods {pod_labels}")
    if workload["kind"] == "StatefulSet":
        services = {o["metadata"]["name"] for o in by_kind(objects, "Service")}
        if workload["spec"]["serviceName"] not in services:
            problems.append(f"no governing Service {workload['spec']['serviceName']}")

    for monitor in by_kind(objects, "ServiceMonitor"):
        endpoint = monitor["spec"]["endpoints"][0]
        if endpoint.get("path") != "/metrics" or endpoint.get("port") != "http":
            problems.append(f"the ServiceMonitor does not scrape http /metrics: {endpoint}")
        credentials = endpoint.get("authorization", {}).get("credentials")
        if credentials != {"name": key_secret, "key": secret_key}:
            problems.append(f"the ServiceMonitor does not send the API key: {credentials}")
        if any(
            service["metadata"]["labels"].get(k) != v
            for k, v in monitor["spec"]["selector"]["matchLabels"].items()
        ):
            problems.append("the ServiceMonitor selects no Service")

    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != (workload["kind"], workload["metadata"]["name"]):
            problems.append(f"the HPA scales {target}, not the workload")
        metric = hpa["spec"]["metrics"][0]
        if (
            metric["type"] != "Pods"
            or metric["pods"]["metric"]["name"] != "heron_num_requests_waiting"
        ):
            problems.append(f"the HPA does not scale on the waiting queue: {metric}")
        if "replicas" in workload["spec"]:
            problems.append("the workload sets replicas although the HPA owns them")
    return problems


# --- the chart as shipped -------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        SERVICE_MONITOR | AUTOSCALED,
        STATEFUL | SERVICE_MONITOR | AUTOSCALED,
        {"persistence": {"enabled": False}},
    ],
    ids=["defaults", "servicemonitor-hpa", "statefulset-dp2-hpa", "no-persistence"],
)
def test_chart_renders_valid_objects(values: dict[str, Any]) -> None:
    objects = render(values)
    assert schema_problems(objects) == []
    assert promise_problems(objects, values) == []


def test_defaults_render_the_basic_objects() -> None:
    kinds = sorted(o["kind"] for o in render())
    assert kinds == ["Deployment", "PersistentVolumeClaim", "Secret", "Service", "ServiceAccount"]
    deployment = one(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["pull-model"]
    assert pod["containers"][0]["args"] == ["serve", "smollm2", "--shutdown-timeout", "30"]
    # One ReadWriteOnce store: a rolling update would leave the new pod waiting for it.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_overrides_reach_the_command_line_and_the_monitoring_objects() -> None:
    objects = render(STATEFUL | SERVICE_MONITOR | AUTOSCALED)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "HorizontalPodAutoscaler",
        "Service",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ]  # no Secret (an existing one), no PVC (a claim per pod)
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "serve",
        "hf.co/org/repo",
        "--served-model-name",
        "assistant",
        "--data-parallel-size",
        "2",
        "--kv-cache-memory-mb",
        "2048",
        "--max-num-seqs",
        "32",
        "--shutdown-timeout",
        "30",
        "--speculative",
        "ngram",
    ]
    assert one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == "kp"
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    assert "kubectl get --raw" in notes(STATEFUL | AUTOSCALED)


def test_the_api_key_given_is_the_one_stored() -> None:
    import base64

    secret = one(render({"apiKey": {"value": "s3cret"}}), "Secret")
    assert base64.b64decode(secret["data"]["api-key"]) == b"s3cret"


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize(
    "values",
    [{"kind": "DaemonSet"}, {"model": {"pullPolicy": "Sometimes"}}, {"dataParallelSize": 0}],
)
def test_bad_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(values)


# --- a broken chart is caught ---------------------------------------------------------------


def broken_copy(tmp_path: Path, template: str, old: str, new: str) -> Path:
    chart = tmp_path / "heron"
    shutil.copytree(CHART, chart)
    path = chart / "templates" / template
    text = path.read_text()
    assert old in text, f"{old!r} not in {template}"
    path.write_text(text.replace(old, new, 1))
    return chart


@pytest.mark.parametrize(
    ("template", "old", "new", "problem"),
    [
        # A misspelt field: the strict schemas know no containerPorts.
        ("workload.yaml", "containerPort: {{", "containerPorts: {{", "containerPort"),
        # A value of the wrong type.
        ("service.yaml", "port: {{ .Values.service.port }}", "port: http-port", "port"),
        # A field one level too deep (a wrong nindent).
        (
            "workload.yaml",
            "      terminationGracePeriodSeconds:",
            "        terminationGracePeriodSeconds:",
            "terminationGracePeriodSeconds",
        ),
        # The CRD: a misspelt endpoint field, and a field of the wrong type.
        ("servicemonitor.yaml", "      scrapeTimeout:", "      scrapeTimeOut:", "scrapeTimeOut"),
        ("servicemonitor.yaml", "type: Bearer", "type: [Bearer]", "ServiceMonitor"),
        # The HPA's metric source in the wrong place.
        ("hpa.yaml", "    - type: Pods\n      pods:", "    - type: Pods\n      pod:", "pod"),
    ],
)
def test_a_broken_template_is_caught(
    tmp_path: Path, template: str, old: str, new: str, problem: str
) -> None:
    chart = broken_copy(tmp_path, template, old, new)
    problems = schema_problems(render(SERVICE_MONITOR | AUTOSCALED, chart))
    assert any(problem in p for p in problems), problems


def test_a_template_that_does_not_render_is_caught(tmp_path: Path) -> None:
    chart = broken_copy(
        tmp_path, "service.yaml", "{{ .Values.service.type }}", "{{ .Values.service.type"
    )
    with pytest.raises(helm.HelmError):
        render({}, chart)


def test_a_broken_promise_is_caught() -> None:
    objects = render(SERVICE_MONITOR)
    server = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    server["readinessProbe"] = {"httpGet": {"path": "/ready", "port": "http"}}
    server["securityContext"]["readOnlyRootFilesystem"] = False
    one(objects, "ServiceMonitor")["spec"]["endpoints"][0].pop("authorization")
    problems = promise_problems(objects, SERVICE_MONITOR)
    assert len(problems) == 3, problems


# --- the rendered commands against a real `heron serve` ---------------------------------------


def pod_spec(values: dict[str, Any]) -> Manifest:
    spec: Manifest = one(render(values), "Deployment")["spec"]["template"]["spec"]
    return spec


def test_the_readiness_probe_asks_a_real_server_with_the_key() -> None:
    from tests.server.conftest import running_server

    with running_server(model=None, api_key="k-chart") as server:
        server_spec = pod_spec({"containerPort": server.port})["containers"][0]
        command = server_spec["readinessProbe"]["exec"]["command"]
        assert command[0] == "python"
        probe = [sys.executable, *command[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
        assert subprocess.run(probe, env=env | {"HERON_API_KEY": "k-chart"}).returncode == 0
        refused = subprocess.run(probe, env=env | {"HERON_API_KEY": "wrong"}, capture_output=True)
        assert refused.returncode != 0 and b"401" in refused.stderr
        # The liveness and startup probes send no key: /health must not need one.
        path = server_spec["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(f"{server.base_url}{path}", timeout=5).status_code == 200


def test_the_pull_init_container_fails_on_a_model_it_cannot_pull(tmp_path: Path) -> None:
    """The init container's script, run as written: it starts a loopback server, the pull of a
    name the catalog does not know fails, and the script exits non-zero with that server gone."""
    from tests.server.conftest import free_port

    init = pod_spec({"model": {"name": "no-such-model-xyz"}})["initContainers"][0]
    shell, flag, script = init["command"]
    port = free_port()
    script = script.replace("127.0.0.1:11435", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    env |= {e["name"]: e["value"] for e in init["env"] if "value" in e}
    env |= {
        "HERON_API_KEY": "k-chart",
        "HERON_MODELS": str(tmp_path / "models"),
        "TMPDIR": str(tmp_path),
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run([shell, flag, script], env=env, capture_output=True, timeout=180)
    assert done.returncode != 0
    assert b"no-such-model-xyz" in done.stderr, done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the loopback server let go of its port
