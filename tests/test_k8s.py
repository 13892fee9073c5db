"""deploy/k8s validated offline against the Kubernetes schemas, and checked for consistency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from imagegen.settings import Settings

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
VARIANTS = ["deployment-gpu.yaml", "deployment-cpu.yaml"]


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((MANIFESTS / name).read_text())
    return document


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict[str, Any]) -> dict[str, str]:
    """The variables written in the manifest (not those from a Secret)."""
    return {item["name"]: item["value"] for item in container(deployment)["env"] if "value" in item}


def secrets(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The variables from a Secret: name -> (Secret, key)."""
    return {
        item["name"]: (ref["name"], ref["key"])
        for item in container(deployment)["env"]
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    }


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_manifest_is_valid_kubernetes(name: str) -> None:
    for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_probes_point_at_the_service_health_routes(name: str) -> None:
    probes = container(load(name))
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # room to load a model


@pytest.mark.parametrize("name", VARIANTS)
def test_termination_outlasts_a_generation(name: str) -> None:
    deployment = load(name)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(env(deployment)["IMAGEGEN_TIMEOUT"])


@pytest.mark.parametrize("name", VARIANTS)
def test_settings_in_the_manifest_are_valid_settings(name: str) -> None:
    values = env(load(name))
    fields = {key.removeprefix("IMAGEGEN_").lower(): value for key, value in values.items()}
    Settings.model_validate(fields)


@pytest.mark.parametrize("name", VARIANTS)
def test_keys_come_from_a_secret_and_nothing_secret_is_inline(name: str) -> None:
    deployment = load(name)
    values = env(deployment)
    assert "IMAGEGEN_API_KEYS" not in values
    assert secrets(deployment)["IMAGEGEN_METRICS_KEY"] == ("imagegen-metrics", "key")
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "imagegen-api-keys"
    [mount] = container(deployment)["volumeMounts"]
    assert values["IMAGEGEN_API_KEYS_FILE"].startswith(mount["mountPath"] + "/")


@pytest.mark.parametrize("name", VARIANTS)
def test_runs_as_non_root_without_privileges(name: str) -> None:
    deployment = load(name)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    security = container(deployment)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_only_the_gpu_variant_asks_for_a_gpu() -> None:
    gpu = container(load("deployment-gpu.yaml"))["resources"]
    cpu = container(load("deployment-cpu.yaml"))["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in {**cpu.get("limits", {}), **cpu.get("requests", {})}


@pytest.mark.parametrize("name", VARIANTS)
def test_service_hpa_and_pdb_select_the_deployment(name: str) -> None:
    deployment = load(name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        load("service.yaml")["spec"]["selector"],
        load("pdb.yaml")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ]
    assert all(selector.items() <= pod_labels.items() for selector in selectors)
    assert load("hpa.yaml")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    target = load("service.yaml")["spec"]["ports"][0]["targetPort"]
    assert target in {port["name"] for port in container(deployment)["ports"]}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=30),  # typo
        lambda d: d["spec"].update(replicas="two"),
        lambda d: container(d).update(livenessProbe={"httpGet": {"path": "/livez"}}),  # no port
    ],
)
def test_the_validator_catches_a_broken_deployment(breakage: Any) -> None:
    deployment = load("deployment-gpu.yaml")
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_replicas_share_the_in_cluster_redis_with_its_password(name: str) -> None:
    deployment, _, service, _ = yaml.safe_load_all((MANIFESTS / "redis.yaml").read_text())
    port = service["spec"]["ports"][0]["port"]
    url = env(load(name))["IMAGEGEN_REDIS_URL"]
    assert url == f"redis://:$(REDIS_PASSWORD)@{service['metadata']['name']}:{port}/0"
    password = secrets(load(name))["REDIS_PASSWORD"]
    assert password == secrets(deployment)["REDIS_PASSWORD"] == ("imagegen-redis", "password")
    args = container(deployment)["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_redis_keeps_an_append_only_file_on_a_claim_and_only_the_service_reaches_it() -> None:
    deployment, claim, _, policy = yaml.safe_load_all((MANIFESTS / "redis.yaml").read_text())
    args = container(deployment)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert policy["kind"] == "NetworkPolicy"
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (deployment["spec"]["template"]["metadata"]["labels"])
    )
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    for variant in VARIANTS:
        pods = load(variant)["spec"]["template"]["metadata"]["labels"]
        assert source["podSelector"]["matchLabels"].items() <= pods.items()


def test_the_autoscaler_scales_on_the_queue_metric_the_adapter_serves() -> None:
    [metric] = load("hpa.yaml")["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name == "imagegen_estimated_wait_seconds"  # exported by imagegen/serving/metrics.py
    rules = yaml.safe_load(load("prometheus-adapter-rules.yaml")["data"]["config.yaml"])
    assert [rule["name"]["as"] for rule in rules["rules"]] == [name]
    target = float(metric["pods"]["target"]["averageValue"])
    assert target < Settings().max_queue_wait_s  # scale out before pods start shedding
