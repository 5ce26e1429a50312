# syntax=docker/dockerfile:1.7
#
# U-Net segmentation service: FastAPI + ONNX Runtime, no PyTorch.
#
#   GPU image (default; CUDA 13 + cuDNN 9, onnxruntime-gpu):
#       docker build -t unet-segmentation-service:0.1.0-gpu .
#   CPU image (python slim, CPU onnxruntime, ~5x smaller):
#       docker build --build-arg VARIANT=cpu -t unet-segmentation-service:0.1.0-cpu .
#
# Both variants run the same code and the same bundled model; UNET_MODEL_PATH points at a
# mounted file to serve another one. Dependency pins live in docker/requirements-{gpu,cpu}.txt
# (generated from pyproject.toml by docker/lock.py; tests/deploy checks they agree).

# onnxruntime-gpu 1.31.1 is built against CUDA 13.0 and cuDNN 9: keep this base on CUDA 13.x.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# Same Python minor as the CUDA image's (Ubuntu 24.04: 3.12), so both images share one set of pins.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
# gpu | cpu: picks the base-* and build-* stages below.
ARG VARIANT=gpu

# --- base images: an interpreter and nothing else ------------------------------------------

FROM ${PYTHON_IMAGE} AS base-cpu
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"
# The CPU onnxruntime has no CUDA provider; don't ask for one.
ENV UNET_PROVIDERS=CPUExecutionProvider

FROM ${CUDA_IMAGE} AS base-gpu
ARG CUDA_IMAGE
LABEL org.opencontainers.image.base.name="docker.io/${CUDA_IMAGE}"
ENV UNET_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
# Ubuntu 24.04's python3 is 3.12; the lock docker/requirements-gpu.txt is resolved for it.
# DL3008 (pin apt versions) is ignored here and in build-gpu: the base tag is pinned, and
# Ubuntu's archive drops superseded package versions, so exact apt pins would break rebuilds
# within weeks and block security fixes; the Python packages are pinned exactly in the lock.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

# --- build stages: the locked runtime dependencies in a virtual environment ----------------

FROM base-cpu AS build-cpu
RUN python -m venv /opt/venv
COPY docker/requirements-cpu.txt /tmp/requirements.txt

FROM base-gpu AS build-gpu
# DL3008 ignored for the reason given in base-gpu (pinned base, Ubuntu drops old versions).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY docker/requirements-gpu.txt /tmp/requirements.txt

# --no-deps + pip check: the lock is the complete dependency set, nothing is resolved here,
# so the image gets exactly the versions that were tested (and never torch).
# DL3006 (untagged image) is a false positive on both `FROM *-${VARIANT}` lines: they name
# stages of this file (build-cpu/build-gpu, base-cpu/base-gpu), never a registry image.
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --only-binary=:all: -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

# --- runtime --------------------------------------------------------------------------------

# DL3006 false positive again: base-${VARIANT} is a stage of this file (see above).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="unet-segmentation-service" \
      org.opencontainers.image.description="U-Net nuclei segmentation over HTTP: FastAPI + ONNX Runtime, any image size by blended tiles" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it (docker/k8s uses 10001).
RUN groupadd --system --gid 10001 unet \
    && useradd --system --uid 10001 --gid unet --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin unet

COPY --from=build /opt/venv /opt/venv

# The service is run from its source tree, not installed: service/settings.py finds the
# default model at <parent of service/>/models/nuclei-unet.onnx, i.e. /app/models here. Its int8
# copy (2.3 MB) is served instead when the session runs on the CPU (UNET_PRECISION=auto).
WORKDIR /app
COPY --chown=root:root service/ /app/service/
COPY --chown=root:root models/nuclei-unet.onnx /app/models/nuclei-unet.onnx
COPY --chown=root:root models/nuclei-unet.int8.onnx /app/models/nuclei-unet.int8.onnx

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UNET_HOST=0.0.0.0 \
    UNET_PORT=8000 \
    UNET_MODEL_PATH=/app/models/nuclei-unet.onnx \
    UNET_LOG_JSON=true \
    UNET_DRAIN_TIMEOUT_S=30

# Byte-compile as root at build time: the non-root, read-only container never writes .pyc.
# /data/jobs: the jobs folder (POST /jobs), owned by the service user so that a named volume
# mounted there starts writable; mount a volume on it, the root filesystem is read-only.
RUN python -m compileall -q /app/service \
    && mkdir -p /data/jobs && chown 10001:10001 /data/jobs
ENV UNET_JOBS_DIR=/data/jobs

USER 10001:10001
EXPOSE 8000

# Liveness only (the process answers); readiness (/readyz, after model warm-up) is for the
# orchestrator's routing: see docker-compose.yml and docker/k8s. No curl in these images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UNET_PORT', '8000') + '/livez', timeout=4)"]

# Exec form: python is PID 1 and receives SIGTERM itself; uvicorn then stops accepting,
# drains in-flight requests for up to UNET_DRAIN_TIMEOUT_S and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
