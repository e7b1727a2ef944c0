"""Render the Helm chart under deploy/helm/heron as CI can (no cluster, no helm binary), and
validate what it renders: Helm's own engine renders it (helm-python-sdk, a C library build of
Helm 4); every Kubernetes object is checked against the Kubernetes OpenAPI schemas in strict
mode (unknown fields are errors; kubernetes-validate ships the schemas); the ServiceMonitor, a
CRD those schemas lack, against the pydantic models generated from the Prometheus Operator's
CRDs (cloudcoil-models-prometheus-operator), with unknown fields caught by a round trip.

The checks return the problems they find, so that tests can also show a broken chart caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
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
