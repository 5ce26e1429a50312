"""Prometheus metrics: one registry for the process, served at ``GET /metrics``.

The registry is our own (not prometheus-client's global one) so that nothing imported by
accident shows up on the page; process and platform collectors are added explicitly, since
resident memory and CPU seconds are what a leak or saturation alert watches.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from service.admission import Snapshot

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: Latency buckets from a 1-tile image on a GPU (~ms) to an 8192² image on a CPU (~minute).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "unet_http_requests",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "unet_http_request_duration_seconds",
    "Time from request start to the end of the response, by route template",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CLIENT_DISCONNECTS = Counter(
    "unet_client_disconnects",
    "Requests whose client went away before the answer (also counted as status 499 in "
    "unet_http_requests), by route and stage: upload (mid-body) or processing (while segmented)",
    ["route", "stage"],
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge("unet_http_requests_in_flight", "HTTP requests being handled now", registry=REGISTRY)
IMAGES = Counter(
    "unet_images", "Images segmented, by output kind and outcome", ["output", "outcome"], registry=REGISTRY
)
PIXELS = Counter("unet_pixels", "Input image pixels segmented", registry=REGISTRY)
TILES = Counter("unet_tiles", "Tiles run through the model (overlap included)", registry=REGISTRY)
PREDICTION_CACHE = Counter(
    "unet_prediction_cache",
    "Requests whose in-memory prediction was reused (hit: the model did not run) or made (miss)",
    ["outcome"],
    registry=REGISTRY,
)
SEGMENT_SECONDS = Histogram(
    "unet_segment_duration_seconds",
    "Time per image inside the service by stage (decode, infer, encode)",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

BATCH_SIZE = Histogram(
    "unet_batch_size",
    "Tiles per engine run (dynamic batching)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
    registry=REGISTRY,
)
BATCH_RUN_SECONDS = Histogram(
    "unet_batch_run_seconds", "Engine time per batch", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
QUEUE_WAIT_SECONDS = Histogram(
    "unet_queue_wait_seconds",
    "Time a tile waited in the queue before its batch started",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("unet_queue_depth", "Tiles waiting for the engine", registry=REGISTRY)
QUEUE_REJECTED = Counter(
    "unet_queue_rejected_tiles", "Tiles refused because the queue was full (503)", registry=REGISTRY
)
REJECTED = Counter(
    "unet_rejected_requests",
    "Requests refused before work started, by reason: queue_full / wait_estimate / wait_timeout "
    "(admission), tile_queue_full (the batcher's tile queue)",
    ["reason"],
    registry=REGISTRY,
)
ADMITTED = Counter(
    "unet_admitted_requests",
    "Requests admitted to work on pixels, by lane (service/admission.py)",
    ["lane"],
    registry=REGISTRY,
)
ADMISSION_WAIT_SECONDS = Histogram(
    "unet_admission_wait_seconds",
    "Time an admitted request waited for room in the pixel budget",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
ADMISSION_PIXELS = Gauge(
    "unet_admission_pixels_in_flight",
    "Pixels of admitted requests not yet finished, by lane",
    ["lane"],
    registry=REGISTRY,
)
ADMISSION_BUDGET = Gauge(
    "unet_admission_budget_pixels", "The pixel budget of each lane", ["lane"], registry=REGISTRY
)
ADMISSION_QUEUED = Gauge(
    "unet_admission_queued_requests", "Requests waiting for admission, by lane", ["lane"], registry=REGISTRY
)
ADMISSION_QUEUED_PIXELS = Gauge(
    "unet_admission_queued_pixels", "Pixels of the requests waiting for admission, by lane", ["lane"],
    registry=REGISTRY,
)
ADMISSION_THROUGHPUT = Gauge(
    "unet_admission_throughput_pixels_per_second",
    "Work rate the wait estimates use: measured from finished requests (assumed until then)",
    registry=REGISTRY,
)
CANCELLED_TILES = Counter(
    "unet_cancelled_tiles",
    "Queued tiles dropped because their request was cancelled (client gone, timeout)",
    registry=REGISTRY,
)

MODEL_INFO = Info("unet_model", "The loaded model and the active execution provider", registry=REGISTRY)
MODEL_READY = Gauge("unet_model_ready", "1 when the model is loaded and warmed up", registry=REGISTRY)
ACTIVE_PROVIDER = Gauge(
    "unet_active_provider",
    "1 for the execution provider the session actually runs on",
    ["provider"],
    registry=REGISTRY,
)


class PrometheusBatchObserver:
    """Feeds the batcher's events into the metrics above (see ``service.batcher.BatchObserver``)."""

    def batch_run(self, size: int, run_s: float, queue_waits_s: list[float]) -> None:
        BATCH_SIZE.observe(size)
        BATCH_RUN_SECONDS.observe(run_s)
        TILES.inc(size)
        for wait in queue_waits_s:
            QUEUE_WAIT_SECONDS.observe(wait)

    def queue_depth(self, tiles: int) -> None:
        QUEUE_DEPTH.set(tiles)

    def rejected(self, tiles: int) -> None:
        QUEUE_REJECTED.inc(tiles)

    def cancelled(self, tiles: int) -> None:
        CANCELLED_TILES.inc(tiles)


# Every label value exists from the start (at 0): a rate() over a counter that appears only at
# its first event misses that event, and dashboards show the reason before it happens.
for _reason in ("queue_full", "wait_estimate", "wait_timeout", "tile_queue_full"):
    REJECTED.labels(reason=_reason)
for _lane in ("small", "large"):
    ADMITTED.labels(lane=_lane)


def watch_admission(snapshot: Callable[[], Snapshot], budgets: dict[str, int]) -> None:
    """Publish the admission controller's state, read at each scrape (no bookkeeping per request)."""
    for lane, budget in budgets.items():
        ADMISSION_BUDGET.labels(lane=lane).set(budget)
        ADMISSION_PIXELS.labels(lane=lane).set_function(lambda lane=lane: snapshot().in_flight_pixels[lane])
        ADMISSION_QUEUED.labels(lane=lane).set_function(lambda lane=lane: snapshot().queued_requests[lane])
        ADMISSION_QUEUED_PIXELS.labels(lane=lane).set_function(
            lambda lane=lane: snapshot().queued_pixels[lane]
        )
    ADMISSION_THROUGHPUT.set_function(lambda: snapshot().throughput)


def set_model(name: str, version: str, file: str, providers: list[str]) -> None:
    """Publish the loaded model and its active providers (the first one does the work)."""
    MODEL_INFO.info(
        {"name": name, "version": version, "file": file, "provider": providers[0] if providers else ""}
    )
    for provider in providers[:1]:
        ACTIVE_PROVIDER.labels(provider=provider).set(1)


def render() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
