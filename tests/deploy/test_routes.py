"""Every path the deployment files probe or scrape is a real route of ``service.app``."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.helpers import (
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    DOCKERFILE,
    K8S_VARIANTS,
    PROMETHEUS_CONFIG,
    ROOT,
    Dockerfile,
    compose_model,
    k8s_objects,
)


def probed_paths() -> dict[str, str]:
    """``{path: where it is used}`` for every HTTP GET the deployment files make."""
    out: dict[str, str] = {}
    for variant in ({}, {"VARIANT": "cpu"}):
        df = Dockerfile.parse(DOCKERFILE.read_text(), variant)
        for ins in df.final.all("HEALTHCHECK"):
            for path in re.findall(r"/(?:livez|readyz|v2/health/\w+|metrics)\b", ins.args):
                out[path] = "Dockerfile HEALTHCHECK"
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_GPU_FILE)):
        test = " ".join(compose_model(*files)["services"]["unet"]["healthcheck"]["test"])
        for path in re.findall(r"127\.0\.0\.1:\d+(/[\w/]+)", test):
            out[path] = "docker-compose.yml healthcheck"
    for variant in K8S_VARIANTS:
        (c,) = k8s_objects(variant)["Deployment"]["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            out[c[probe]["httpGet"]["path"]] = f"k8s {variant} {probe}"
        annotations = k8s_objects(variant)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        out[annotations["prometheus.io/path"]] = "k8s prometheus.io/path"
    for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]:
        out[job["metrics_path"]] = "docker/prometheus.yml"
    return out


def test_the_deployment_files_probe_liveness_readiness_and_metrics() -> None:
    assert {"/livez", "/readyz", "/metrics"} <= set(probed_paths())


@pytest.fixture(scope="module")
def client():
    if not (ROOT / "service" / "app.py").exists():
        pytest.skip("service/app.py is not written yet: no routes to check the probes against")
    from fastapi.testclient import TestClient

    from service.app import app

    # No `with`: the lifespan (model load) does not run. A route that exists answers something
    # other than 404/405 even so (e.g. /readyz says 503 while no model is loaded).
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("path", sorted(probed_paths()))
def test_probed_path_is_a_get_route_of_the_app(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code not in (404, 405), (
        f"{path} (used by {probed_paths()[path]}) is not a GET route of service.app: {response.status_code}"
    )


def test_readiness_is_not_liveness(client) -> None:
    # Without a loaded model the process is alive but must not take traffic.
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
