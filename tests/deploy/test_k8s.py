"""docker/k8s: schema-valid for pinned Kubernetes versions, and consistent with the service."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from service.settings import Settings
from tests.deploy.helpers import K8S_DIR, K8S_VARIANTS, k8s_objects, kustomize_resources

#: Oldest and newest Kubernetes minor we promise the manifests for (kubernetes-validate bundles
#: the schemas; strict mode rejects misspelled and unknown fields).
K8S_VERSIONS = ("1.30.0", "1.37.0")
SETTING_NAMES = {f"UNET_{name.upper()}" for name in Settings.model_fields}


def container(variant: str) -> dict[str, Any]:
    (c,) = k8s_objects(variant)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def config(variant: str) -> dict[str, str]:
    return k8s_objects(variant)["ConfigMap"]["data"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_rendered_manifests_validate_strictly(variant: str, version: str) -> None:
    resources = kustomize_resources(K8S_DIR / variant)
    assert {obj["kind"] for _, obj in resources} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}
    for path, obj in resources:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.relative_to(K8S_DIR)} ({obj['kind']}) invalid for {version}: {e.message}")


def test_strict_validation_catches_a_misspelled_field() -> None:
    deployment = copy.deepcopy(k8s_objects("cpu")["Deployment"])
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    probe["failureTreshold"] = probe.pop("failureThreshold")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_probes_hit_the_service_routes_on_its_port(variant: str) -> None:
    c = container(variant)
    (port,) = c["ports"]
    assert port["name"] == "http" and port["containerPort"] == int(config(variant)["UNET_PORT"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The startup probe waits for the process (liveness), not the model: a pod whose model is
    # missing or corrupt stays up and not ready with the reason, instead of a restart loop.
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/livez", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] <= 60


#: Measured on the 2-core CPU with the bundled model (benchmarks/admission_memory.py, docker/README.md):
#: peak RSS ≈ FIXED (idle process + one 2048² model run) + PER_PIXEL × pixels admitted at once.
FIXED_BYTES = 2.45e9
PER_PIXEL_BYTES = 48
GIB = 2**30


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def test_the_cpu_pod_holds_what_admission_lets_in_including_a_max_size_image() -> None:
    settings = Settings(**{k[5:].lower(): v for k, v in config("cpu").items()})
    c = container("cpu")
    limit = _quantity(c["resources"]["limits"]["memory"])
    # Large lane: its budget, or one max-size image alone; plus the small lane.
    admitted = max(settings.admission_pixels, settings.max_pixels) + settings.admission_small_lane_pixels
    # ... and the prediction cache, resident beside whatever is admitted (service/prediction_cache.py).
    peak = FIXED_BYTES + PER_PIXEL_BYTES * admitted + settings.prediction_cache_mb * 2**20
    assert settings.max_batch_pixels <= 2048 * 2048, "FIXED_BYTES holds one 2048² run, no more"
    assert peak <= 0.8 * limit, f"peak {peak / GIB:.1f} GiB vs limit {limit / GIB:.1f} GiB: keep 20 %"
    assert _quantity(c["resources"]["requests"]["memory"]) >= peak * 0.95


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_termination_grace_covers_prestop_and_drain(variant: str) -> None:
    pod = k8s_objects(variant)["Deployment"]["spec"]["template"]["spec"]
    c = container(variant)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = float(config(variant)["UNET_DRAIN_TIMEOUT_S"])
    assert pre_stop >= 3, "endpoint removal needs a few seconds to reach kube-proxy/ingress"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_environment_names_are_real_settings(variant: str) -> None:
    c = container(variant)
    names = set(config(variant)) | {e["name"] for e in c["env"]}
    unknown = {n for n in names if n.startswith("UNET_")} - SETTING_NAMES
    assert not unknown, f"not settings of service.settings.Settings (typo?): {sorted(unknown)}"
    plain = {**config(variant), **{e["name"]: e["value"] for e in c["env"] if "value" in e}}
    Settings(**{k[5:].lower(): v for k, v in plain.items()})  # the values parse, too
    assert plain["UNET_MODEL_PATH"] == "/app/models/nuclei-unet.onnx"


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_service_hpa_pdb_select_the_deployment(variant: str) -> None:
    objs = k8s_objects(variant)
    deployment = objs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2, "the PDB needs > 1 replica to let a node drain"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    refs = [e["configMapRef"]["name"] for e in container(variant)["envFrom"]]
    assert refs == [objs["ConfigMap"]["metadata"]["name"]]


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_pod_runs_as_the_image_user_read_only(variant: str) -> None:
    pod = k8s_objects(variant)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    sc = container(variant)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/tmp" for m in container(variant)["volumeMounts"])


def test_only_the_gpu_variant_asks_for_a_gpu() -> None:
    gpu, cpu = container("gpu"), container("cpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in cpu["resources"].get("requests", {})
    cpu_pod = k8s_objects("cpu")["Deployment"]["spec"]["template"]["spec"]
    assert "tolerations" not in cpu_pod, "CPU pods should not land on (tainted) GPU nodes"
    assert gpu["image"].endswith("-gpu") and cpu["image"].endswith("-cpu")
    env = {e["name"]: e.get("value") for e in gpu["env"]}
    assert env["UNET_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
    assert {e["name"]: e.get("value") for e in cpu["env"]}["UNET_PROVIDERS"] == "CPUExecutionProvider"


def test_variants_differ_only_where_intended() -> None:
    """The GPU Deployment is a copy of the CPU one with a few fields changed: catch drift."""

    def scrub(variant: str) -> dict[str, Any]:
        d = copy.deepcopy(k8s_objects(variant)["Deployment"])
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        del d["spec"]["strategy"]["rollingUpdate"]  # GPU: no surge (no spare GPU needed)
        pod.pop("tolerations", None)  # GPU: tolerate the nvidia.com/gpu node taint
        for key in ("image", "resources"):
            del c[key]
        c["env"] = [e for e in c["env"] if e["name"] not in ("UNET_PROVIDERS", "UNET_INTRA_OP_THREADS")]
        return d

    assert scrub("cpu") == scrub("gpu")
