"""The Helm chart as shipped renders objects that pass the Kubernetes and CRD schemas (chart.py)
and keep the chart's promises (probes, the key from a Secret, the store on a claim, a locked
down container, references that resolve); a broken template, bad values or a broken promise
are caught."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import (
    AUTOSCALED,
    CHART,
    FULLNAME,
    SERVICE_MONITOR,
    STATEFUL,
    Manifest,
    by_kind,
    notes,
    one,
    render,
    schema_problems,
)


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
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        selected = [
            o["metadata"]["name"]
            for o in by_kind(objects, "Service")
            if all(o["metadata"]["labels"].get(k) == v for k, v in wanted)
        ]
        if selected != [FULLNAME]:  # a pod scraped twice would double the HPA's metric
            problems.append(f"the ServiceMonitor selects Services {selected}, not {FULLNAME}")

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
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    shared = {"persistence": {"accessModes": ["ReadWriteMany"]}}
    assert "strategy" not in one(render(shared), "Deployment")["spec"]
    assert one(render({"strategy": rolling}), "Deployment")["spec"]["strategy"] == rolling


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
    secret = one(render({"apiKey": {"value": "s3cret"}}), "Secret")
    assert base64.b64decode(secret["data"]["api-key"]) == b"s3cret"


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"kind": "DaemonSet"}, "/kind"),
        ({"model": {"pullPolicy": "Sometimes"}}, "/model/pullPolicy"),
        ({"dataParallelSize": 0}, "/dataParallelSize"),
        ({"modle": {"name": "smollm2"}}, "'modle' not allowed"),  # a misspelt key is no default
        ({"engine": {"maxNumSeq": 8}}, "'maxNumSeq' not allowed"),
        ({"replicaCount": "two"}, "/replicaCount"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], problem: str) -> None:
    """values.schema.json refuses them when the chart renders."""
    with pytest.raises(helm.HelmError, match=problem):
        render(values)


def test_the_templates_refuse_bad_values_without_the_schema(tmp_path: Path) -> None:
    """`helm install --skip-schema-validation` still gets a clear error, not a broken object."""
    chart = tmp_path / "heron"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()
    for values, problem in [
        ({"kind": "DaemonSet"}, "kind must be Deployment or StatefulSet"),
        ({"model": {"pullPolicy": "Sometimes"}}, "model.pullPolicy must be"),
        ({"dataParallelSize": 0}, "dataParallelSize must be at least 1"),
    ]:
        with pytest.raises(helm.HelmError, match=problem):
            render(values, chart)


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
