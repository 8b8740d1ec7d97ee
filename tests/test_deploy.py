"""Static checks of the deploy files: the Kubernetes manifests and the Dockerfile.

The manifests are validated against the Kubernetes API schemas shipped with kubernetes-validate
(offline), then checked for what the serving process needs: probes on the right routes and port,
settings the server knows, a grace period longer than the drain, resources an autoscaler can use,
and selectors that reach the pods. The Dockerfile is checked against the legacy builder's limits
and the image's contract (non-root, /tmp writable, health check, no training code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release with every field used here


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((K8S / name).read_text())
    assert isinstance(document, dict)
    return document


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``512Mi``) as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2], 1.0)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return load("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load("kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"])
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    validator = pytest.importorskip("kubernetes_validate")
    validator.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_misspelt_field(deployment: dict[str, Any]) -> None:
    validator = pytest.importorskip("kubernetes_validate")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, KUBERNETES_VERSION, strict=True)


def test_probes_use_the_server_routes_and_port(container: dict[str, Any]) -> None:
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    assert int(env_of(container)["NEXTWORD_PORT"]) == port_names["http"]


def test_environment_is_settings_the_server_accepts(container: dict[str, Any]) -> None:
    env = env_of(container)
    fields = {f"NEXTWORD_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    values: dict[str, Any] = {key.removeprefix("NEXTWORD_").lower(): v for key, v in env.items()}
    settings = Settings(**values)
    assert settings.host == "0.0.0.0"  # reachable through the pod IP, not loopback only


def test_grace_period_outlasts_the_drain(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + float(env_of(container)["NEXTWORD_GRACEFUL_SHUTDOWN_S"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + 5


def test_resources_have_requests_within_limits(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        request = quantity(resources["requests"][kind])
        limit = quantity(resources["limits"][kind])
        assert 0 < request <= limit, kind
    # The request threads and onnxruntime's thread want at least one core of their own.
    assert quantity(resources["requests"]["cpu"]) >= 1


def test_pods_run_as_the_image_user_with_a_read_only_root(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile(), re.MULTILINE)
    assert user
    assert pod["securityContext"]["runAsUser"] == int(user[1])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the image keeps every cache under /tmp


def test_selectors_reach_the_pods(deployment: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        load("service.yaml")["spec"]["selector"],
        load("pdb.yaml")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()


def test_service_targets_the_named_port(container: dict[str, Any]) -> None:
    names = {port["name"] for port in container["ports"]}
    assert {p["targetPort"] for p in load("service.yaml")["spec"]["ports"]} <= names


def test_autoscaler_scales_the_deployment_on_cpu(deployment: dict[str, Any]) -> None:
    spec = load("hpa.yaml")["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in spec["metrics"]}
    assert 0 < metrics["cpu"]["averageUtilization"] <= 100


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def instructions() -> list[str]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile())
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_builds_with_the_legacy_builder() -> None:
    text = dockerfile()
    assert not text.startswith("# syntax=")
    assert "<<" not in text
    assert not any(i.startswith("RUN --mount") for i in instructions())
    assert not any(re.match(r"COPY .*--(chmod|link)", i) for i in instructions())


def test_dockerfile_contract() -> None:
    steps = instructions()
    assert "ARG BASE_IMAGE=python:3.11-slim" in steps
    assert any(s.startswith("HEALTHCHECK") and "/healthz" in s for s in steps)
    users = [s for s in steps if s.startswith("USER ")]
    assert users
    assert all(re.fullmatch(r"USER \d+:\d+", s) for s in users)
    copied = [s.split()[-2] for s in steps if s.startswith("COPY") and "--from" not in s]
    assert copied == ["${WHEELS}/", "service/", "${BUNDLE}/"]  # nothing of the training side
    assert "pip install --no-index" in dockerfile()  # wheels only: builds offline
    env = " ".join(s for s in steps if s.startswith("ENV "))
    assert "NUMBA_CACHE_DIR=/tmp/" in env
    assert "NEXTWORD_BUNDLE=/bundle" in env


def test_dockerignore_keeps_the_context_to_the_image_inputs() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} >= {"!service/", "!.whl/", "!bundles/"}
    assert not any("model_export" in line or "tests" in line for line in lines)
