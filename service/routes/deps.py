"""What the routes depend on: the process's :class:`Runtime` (model, batcher, readiness) and
request-level guards (API key, readiness, admission, allowed query options).

The runtime is created by ``service.app.create_app`` and hangs off ``app.state``; routes get it
through :func:`get_runtime`, so tests and the lifespan control it, never a module global.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service import metrics
from service.batcher import DynamicBatcher
from service.engine import Engine, ModelLoadError
from service.errors import InvalidOptions, ServiceUnavailable, Unauthorized
from service.model_metadata import ModelMetadata
from service.settings import Settings

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "stopping"]


@dataclass(frozen=True)
class Tiling:
    tile_size: int
    overlap: int
    source: str  # where the values came from: request | settings | model


class Runtime:
    """The model, its batcher and the readiness state machine: loading → ready | failed → stopping.

    ``load`` runs on a background thread started by the lifespan, so liveness answers at once
    and a missing or corrupt model leaves the process up (readiness 503 with the reason)
    instead of crash-looping under an orchestrator.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "loading"
        self.reason = "the model is loading"
        self.engine: Engine | None = None
        self.batcher: DynamicBatcher | None = None
        self.warmup_s: float | None = None
        self._lock = threading.Lock()
        self._active = 0  # segment requests admitted and not finished

    # --- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load, warm up, start the batcher; never raises (failures become the not-ready reason)."""
        s = self.settings
        try:
            providers = ", ".join(s.providers)
            log.info("loading model %s (providers %s, precision %s)", s.model_path, providers, s.precision)
            engine = Engine.load_with_precision(
                s.model_path, s.precision, s.providers, s.intra_op_threads, s.inter_op_threads
            )
            self.reason = "the model is warming up"
            md = engine.metadata
            tile = s.tile_size or md.tile_size
            started = time.perf_counter()
            # On a GPU, warm up at the real tile size so kernels are selected for it; on a CPU the
            # engine's small default is enough and a big warm-up only delays readiness.
            engine.warmup(size=None if engine.providers[0] == "CPUExecutionProvider" else tile)
            self.warmup_s = time.perf_counter() - started
            batcher = DynamicBatcher(
                engine.run,
                max_batch_size=s.max_batch_size,
                max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
                max_queue_tiles=s.max_queue_tiles,
                max_batch_pixels=s.max_batch_pixels,
                observer=metrics.PrometheusBatchObserver(),
                name="inference",
            )
            if s.warmup_delay_s:
                time.sleep(s.warmup_delay_s)
            with self._lock:
                if self.state == "stopping":
                    batcher.close()
                    return
                self.engine, self.batcher = engine, batcher
                self.state, self.reason = "ready", "ready"
            metrics.set_model(md.name, md.version, engine.path.name, engine.providers)
            metrics.MODEL_READY.set(1)
            log.info(
                "model %s %s (%s, %s) ready on %s (warm-up %.0f ms)",
                md.name,
                md.version,
                md.precision,
                engine.path.name,
                engine.providers[0],
                1000 * self.warmup_s,
            )
        except ModelLoadError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. a warm-up that fails on a broken graph
            log.exception("model start-up failed")
            self._fail(f"model start-up failed: {type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> None:
        log.error("model not available: %s", reason)
        with self._lock:
            if self.state != "stopping":
                self.state, self.reason = "failed", reason

    def begin_drain(self) -> None:
        """Turn readiness off (SIGTERM received): load balancers stop sending; in-flight requests finish."""
        with self._lock:
            self.state, self.reason = "stopping", "the service is shutting down"
        metrics.MODEL_READY.set(0)

    def close(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            self.batcher.close()

    # --- request side --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def provider(self) -> str | None:
        return self.engine.providers[0] if self.engine else None

    def require_ready(self) -> tuple[Engine, DynamicBatcher]:
        """The engine and batcher, or 503 with the reason and a retry hint."""
        engine, batcher = self.engine, self.batcher
        if self.state != "ready" or engine is None or batcher is None:
            retry = 5 if self.state == "loading" else 30
            raise ServiceUnavailable(
                f"the model is not ready: {self.reason}",
                retry_after_s=retry,
                slug="not-ready",
                title="Model not ready",
            )
        return engine, batcher

    def components(self) -> tuple[Engine, DynamicBatcher]:
        """The engine and batcher for an ALREADY admitted request: still usable while draining."""
        engine, batcher = self.engine, self.batcher
        if engine is None or batcher is None:
            return self.require_ready()
        return engine, batcher

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_concurrent_requests`` segmentation slots, or 503 at once."""
        with self._lock:
            if self._active >= self.settings.max_concurrent_requests:
                full = True
            else:
                full = False
                self._active += 1
        if full:
            metrics.REJECTED.labels(reason="concurrency").inc()
            retry = self.batcher.retry_after_s() if self.batcher else 1
            raise ServiceUnavailable(
                f"{self.settings.max_concurrent_requests} images are being segmented already "
                "(UNET_MAX_CONCURRENT_REQUESTS); retry later",
                retry_after_s=retry,
                slug="overloaded",
                title="Overloaded",
            )
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def tiling(
        self, metadata: ModelMetadata, tile_size: int | None = None, overlap: int | None = None
    ) -> Tiling:
        """Tile size and overlap: request option, else setting, else the model's metadata.

        The one place the three sources are resolved; raises 422 for values outside the limits.
        """
        s = self.settings
        # The model's recommendation yields to the operator's cap (a 2048-px model on a server
        # capped at 1024 runs 1024-px tiles); an explicit request or setting is checked instead.
        tile = tile_size or s.tile_size or min(metadata.tile_size, s.max_tile_size)
        if overlap is not None:
            ovl = overlap
        elif s.tile_overlap is not None:
            ovl = s.tile_overlap
        else:
            ovl = metadata.tile_overlap
        low = max(16, metadata.size_divisor)
        if not low <= tile <= s.max_tile_size:
            raise InvalidOptions(
                f"tile_size {tile} is outside {low}..{s.max_tile_size} (UNET_MAX_TILE_SIZE)",
                errors=[{"loc": ["query", "tile_size"], "msg": "out of range", "type": "value_error"}],
            )
        if not 0 <= 2 * ovl < tile:
            raise InvalidOptions(
                f"overlap {ovl} must be ≥ 0 and less than half the tile size {tile}",
                errors=[{"loc": ["query", "overlap"], "msg": "out of range", "type": "value_error"}],
            )
        source = (
            "request"
            if tile_size or overlap is not None
            else ("settings" if s.tile_size or s.tile_overlap is not None else "model")
        )
        return Tiling(tile_size=tile, overlap=ovl, source=source)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# --- API key -------------------------------------------------------------------------------------

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
_bearer = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")


def _check_key(runtime: Runtime, header_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> None:
    expected = runtime.settings.api_key
    if expected is None:
        return
    supplied = header_key if header_key is not None else (bearer.credentials if bearer else None)
    if supplied is None:
        raise Unauthorized("this service requires an API key: send it as X-API-Key or Authorization: Bearer")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if not hmac.compare_digest(supplied.encode("utf-8"), expected.get_secret_value().encode("utf-8")):
        raise Unauthorized("the API key is not valid")


def require_api_key(
    request: Request,
    header_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """Dependency: the API key when one is configured (UNET_API_KEY)."""
    _check_key(get_runtime(request), header_key, bearer)


def require_api_key_for_metrics(
    request: Request,
    header_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """Dependency: like :func:`require_api_key` unless UNET_AUTH_EXEMPT_METRICS (the default)."""
    runtime = get_runtime(request)
    if not runtime.settings.auth_exempt_metrics:
        _check_key(runtime, header_key, bearer)


# --- query options -------------------------------------------------------------------------------


def only_query_params(*allowed: str) -> Callable[[Request], None]:
    """Dependency factory: 422 for query parameters the route does not know.

    A misspelt option (``?treshold=0.3``) silently ignored would give the caller a result
    computed with the default — worse than an error naming the allowed options.
    """
    allowed_set = frozenset(allowed)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params.keys()) - allowed_set)
        if unknown:
            raise InvalidOptions(
                f"unknown query option(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed_set))}",
                errors=[
                    {"loc": ["query", name], "msg": "unknown query option", "type": "extra_forbidden"}
                    for name in unknown
                ],
            )

    return check
