"""docker/k8s/batch/job.yaml: an indexed Job whose pods segment a folder on a shared volume, each
its own shard. Schema-valid (strict) for the Kubernetes versions we promise, and consistent with
the batch client (its real parser reads the pod's arguments), the image and the service's
settings. The sharding itself is tested end to end in tests/client/test_client_shard.py."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service import client
from service.settings import Settings
from tests.deploy.helpers import DOCKERFILE, K8S_DIR, Dockerfile, k8s_objects
from tests.deploy.test_k8s import GIB, K8S_VERSIONS, SETTING_NAMES, _quantity

JOB_FILE = K8S_DIR / "batch" / "job.yaml"

MIB = 2**20
#: A slide job's peak memory (docs/benchmarks.md §9): 1822 MiB at 32768 px wide; of it, the
#: process (~240 MiB) and one tile's ONNX Runtime working set (~350 MiB) do not grow with the
#: slide, the rest (a tile row's open rows, input strip and store buffers) grows with its width.
SLIDE_PEAK_BYTES, SLIDE_PEAK_WIDTH = 1822 * MIB, 32768
PROCESS_BYTES, TILE_RUN_BYTES = 240 * MIB, 350 * MIB
#: The widest slide the Job's memory is sized for (the manifest's comment says so): the upper end
#: of the slides issue #16 names (20,000–100,000 px a side).
WIDEST_SLIDE_PX = 100_000


def slide_peak_bytes(width: int, concurrency: int) -> float:
    """Peak memory of ``concurrency`` slides of ``width`` px segmented at once in one process."""
    per_column = (SLIDE_PEAK_BYTES - PROCESS_BYTES - TILE_RUN_BYTES) / SLIDE_PEAK_WIDTH
    return PROCESS_BYTES + concurrency * (TILE_RUN_BYTES + per_column * width)


def job() -> dict[str, Any]:
    (obj,) = [d for d in yaml.safe_load_all(JOB_FILE.read_text()) if d is not None]
    return obj


def pod() -> dict[str, Any]:
    return job()["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (c,) = pod()["containers"]
    return c


def pod_config(index: int, monkeypatch: pytest.MonkeyPatch) -> client.Config:
    """What the batch client makes of the container's arguments in the pod with this index."""
    monkeypatch.setenv(client.SHARD_INDEX_ENV, str(index))  # as the Job controller sets it
    return client.parse_config(container()["args"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_job_validates_strictly(version: str) -> None:
    try:
        kubernetes_validate.validate(job(), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{JOB_FILE.relative_to(K8S_DIR)} invalid for {version}: {e.message}")


def test_strict_validation_catches_a_misspelled_job_field() -> None:
    broken = copy.deepcopy(job())
    broken["spec"]["completionsMode"] = broken["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_each_pod_takes_its_own_shard_of_as_many_as_there_are_completions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = job()["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    shards = [pod_config(index, monkeypatch).shard for index in range(spec["completions"])]
    assert shards == [client.Shard(index, spec["completions"]) for index in range(spec["completions"])]


def test_pods_run_the_client_in_local_mode_on_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    c = container()
    config = pod_config(0, monkeypatch)
    assert c["command"] == ["python", "-m", "service.client"]
    assert config.urls == (), "local mode: the pods segment in-process (the manifest says why)"
    assert config.kind == "ome-zarr", "slides: read by region and written as OME-Zarr, whatever their size"
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod()["volumes"]}
    assert "persistentVolumeClaim" in volumes["slides"]
    for path in (*config.inputs, str(config.out)):
        assert PurePosixPath(path).is_relative_to(mounts["slides"]), path
    assert not PurePosixPath(config.out).is_relative_to(PurePosixPath(config.inputs[0])), \
        "outputs inside the input folder would be read as inputs by the next run"


def test_the_image_and_the_module_it_runs_come_from_the_dockerfile() -> None:
    deployment = k8s_objects("cpu")["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container()["image"] == deployment["image"]
    runtime = Dockerfile.parse(DOCKERFILE.read_text()).stages[-1]
    workdir = runtime.all("WORKDIR")[-1].args
    copied = {shlex.split(i.args)[-1].rstrip("/") for i in runtime.all("COPY")}
    assert f"{workdir}/service" in copied and Path("service/client.py").exists()


def test_a_failed_shard_is_retried_alone_and_a_usage_error_is_not() -> None:
    spec = job()["spec"]
    assert pod()["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert spec["backoffLimitPerIndex"] >= 1
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex"
    assert rule["onExitCodes"] == {"containerName": container()["name"], "operator": "In",
                                   "values": [client.EXIT_USAGE]}


def test_environment_names_are_real_settings() -> None:
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert set(env) <= SETTING_NAMES
    Settings(**{k[5:].lower(): v for k, v in env.items()})


def test_the_pod_holds_the_widest_slide_it_is_sized_for(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {e["name"]: e["value"] for e in container()["env"]}
    config = pod_config(0, monkeypatch)
    resources = container()["resources"]
    limit, request = _quantity(resources["limits"]["memory"]), _quantity(resources["requests"]["memory"])
    peak = slide_peak_bytes(WIDEST_SLIDE_PX, config.concurrency)
    assert peak <= 0.8 * limit, f"peak {peak / GIB:.1f} GiB vs limit {limit / GIB:.1f} GiB: keep 20 %"
    assert request >= 0.95 * peak, "the scheduler must place the pod where its slide fits"
    assert f"{WIDEST_SLIDE_PX:,} px wide" in JOB_FILE.read_text(), "the manifest says what it is sized for"
    assert slide_peak_bytes(SLIDE_PEAK_WIDTH, 1) == pytest.approx(SLIDE_PEAK_BYTES)  # holds the measurement
    assert env["UNET_INTRA_OP_THREADS"] == str(resources["requests"]["cpu"])


def test_pod_runs_as_the_image_user_read_only() -> None:
    security = pod()["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["fsGroup"] == 10001, "the volume must be writable by the image's user"
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/tmp" for m in container()["volumeMounts"])
