"""deploy/: the Kubernetes manifests validate offline against the Kubernetes schemas, probe
the health endpoints, and carry a configuration the service accepts; compose uses them too."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aggregator.config import from_dict

DEPLOY = Path(__file__).parent.parent / "deploy"
K8S_VERSION = "1.30.0"


def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s by kind/name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_kustomization_lists_every_manifest() -> None:
    """kubectl apply -k applies every file of deploy/k8s."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("key", sorted(manifests()))
def test_manifest_is_valid_kubernetes(key: str) -> None:
    """Each object is valid (strictly: no unknown fields) for Kubernetes 1.30."""
    kubernetes_validate.validate(manifests()[key], K8S_VERSION, strict=True)


def test_manifests_wire_probes_config_and_secret_together() -> None:
    """The API probes /readyz and /healthz on its port, the Service targets it, every pod reads
    the ConfigMap's config (which loads) and the Secret, and migrate is a Job."""
    m = manifests()
    api = m["Deployment/trs-aggregator-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["args"][-1] == "serve"
    port = next(p for p in api["ports"] if p["name"] == "http")["containerPort"]
    service = m["Service/trs-aggregator"]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    api_labels = m["Deployment/trs-aggregator-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= api_labels.items()
    worker = m["Deployment/trs-aggregator-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][-1] == "worker"
    job = m["Job/trs-aggregator-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][-1] == "migrate"
    config = tomllib.loads(m["ConfigMap/trs-aggregator-config"]["data"]["aggregator.toml"])
    loaded = from_dict(config, {"AGGREGATOR_DATABASE_URL": "postgresql://x@db/aggregator"})
    assert loaded.server.port == port
    secret = m["Secret/trs-aggregator-secrets"]["stringData"]
    assert "AGGREGATOR_DATABASE_URL" in secret
    for upstream in loaded.upstreams:
        assert not upstream.token_env or upstream.token_env in secret
    for container in (api, worker, job):
        assert {"secretRef": {"name": "trs-aggregator-secrets"}} in container["envFrom"]
        assert container["volumeMounts"][0]["mountPath"] == "/etc/trs-aggregator"


def test_compose_waits_on_readiness() -> None:
    """The compose service's healthcheck asks /readyz."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    check = compose["services"]["aggregator"]["healthcheck"]["test"]
    assert any("/readyz" in part for part in check)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """The check above can fail: a probe with a misspelt key is refused."""
    broken = manifests()["Deployment/trs-aggregator-api"]
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
