"""What the routes depend on: the process's :class:`Runtime` (model, batcher, readiness) and
request-level guards (API key, readiness, admission, allowed query options).

The runtime is created by ``service.app.create_app`` and hangs off ``app.state``; routes get it
through :func:`get_runtime`, so tests and the lifespan control it, never a module global.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Literal

import anyio
from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service import metrics
from service.admission import Admission, Limits, Rejected, Ticket
from service.batcher import DynamicBatcher
from service.engine import Engine, ModelLoadError
from service.errors import InvalidOptions, ProblemError, ServiceUnavailable, Unauthorized
from service.model_metadata import ModelMetadata
from service.prediction_cache import PredictionCache
from service.segment import Cancelled
from service.settings import Settings
from service.tile_options import Tiling, TilingError
from service.tile_options import resolve as resolve_tiling

log = logging.getLogger(__name__)

#: How often a request waiting for admission checks its client and its deadline, seconds.
_DISCONNECT_POLL_S = 0.1

State = Literal["loading", "ready", "failed", "stopping"]


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
        self.admission = Admission(admission_limits(settings))
        # Recent planes and predictions (another output of the same upload skips the model).
        self.prediction_cache = PredictionCache(settings.prediction_cache_mb * 1024 * 1024)
        self._finished: set[int] = set()  # tickets whose work completed (for the throughput)
        metrics.watch_admission(self.admission.snapshot, {"small": settings.admission_small_lane_pixels,
                                                          "large": settings.admission_pixels})

    # --- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load, warm up, start the batcher; never raises (failures become the not-ready reason)."""
        s = self.settings
        try:
            providers = ", ".join(s.providers)
            log.info("loading model %s (providers %s, precision %s)", s.model_path, providers, s.precision)
            engine = Engine.load_with_precision(
                s.model_path,
                s.precision,
                s.providers,
                s.intra_op_threads,
                s.inter_op_threads,
                require_checksum=s.require_model_checksum,
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
                # Admitted requests never overflow the tile queue (each has at most one chunk of
                # max_batch_size tiles queued, and each of the two admission lanes admits at most
                # max_concurrent_requests): work that was admitted is not thrown away half-done.
                max_queue_tiles=max(s.max_queue_tiles, 2 * s.max_concurrent_requests * s.max_batch_size),
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
                "model %s %s (%s, %s) ready on %s (warm-up %.0f ms; %s)",
                md.name,
                md.version,
                md.precision,
                engine.path.name,
                engine.providers[0],
                1000 * self.warmup_s,
                f"checksum {engine.checksum} verified" if engine.checksum else "no checksum",
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

    # --- admission (service/admission.py): every route that touches pixels ------------------------

    @asynccontextmanager
    async def admitted(
        self,
        pixels: int,
        *,
        measure: bool = True,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
        max_wait_s: float | None = None,
    ) -> AsyncIterator[Ticket]:
        """Hold ``pixels`` of the admission budget for the block, waiting (without a thread) up to
        ``max_wait_s`` (default UNET_ADMISSION_MAX_WAIT_S) for room; 503 + Retry-After when refused.

        ``measure``: the block's work counts toward the measured throughput (segmentation; not
        previews). ``disconnected``: polled while waiting, a client gone leaves the queue (499).
        On leaving the block the pixels are freed; :meth:`finished` marks the work as complete.
        """
        loop = asyncio.get_running_loop()
        granted = asyncio.Event()
        limit = self.settings.admission_max_wait_s if max_wait_s is None else max_wait_s
        try:
            ticket = self.admission.request(
                pixels, lambda: loop.call_soon_threadsafe(granted.set), measure=measure, max_wait_s=limit
            )
        except Rejected as exc:
            raise _overloaded(exc) from exc
        try:
            if not ticket.admitted:
                await self._wait_for_admission(ticket, granted, limit, disconnected)
            _count_admitted(ticket)
            yield ticket
        finally:
            self._release(ticket)

    def finished(self, ticket: Ticket) -> None:
        """The ticket's work ran to the end: its pixels count toward the measured throughput."""
        self._finished.add(ticket.id)

    def _release(self, ticket: Ticket) -> None:
        """The block is over: the ticket's pixels are free (a ticket still waiting is withdrawn)."""
        self.admission.release(ticket, completed=ticket.id in self._finished)
        self._finished.discard(ticket.id)

    @contextmanager
    def admitted_waiting(
        self, pixels: int, should_stop: Callable[[], bool], waiting: Callable[[], None] = lambda: None
    ) -> Iterator[Ticket]:
        """Blocking (worker thread): :meth:`admitted` for work nobody holds a connection open for
        (a stack job's slices, each admitted in turn): it waits for room as long as it takes, and
        asks again after a refusal (a full queue) once its ``Retry-After`` has passed.
        :class:`Cancelled` when ``should_stop`` says so while it waits. ``waiting()`` is called
        once when there is no room at once (a job's status says so)."""
        granted = threading.Event()
        while True:
            try:
                ticket = self.admission.request(pixels, granted.set, measure=True, max_wait_s=math.inf)
                break
            except Rejected as exc:
                deadline = time.monotonic() + exc.retry_after_s
                while time.monotonic() < deadline:
                    if should_stop():
                        raise Cancelled("the job was cancelled while it waited for admission") from exc
                    time.sleep(_DISCONNECT_POLL_S)
        try:
            if not ticket.admitted:
                waiting()
            while not ticket.admitted and not granted.wait(_DISCONNECT_POLL_S):
                if should_stop() and self.admission.withdraw(ticket):
                    raise Cancelled("the job was cancelled while it waited for admission")
            _count_admitted(ticket)
            yield ticket
        finally:
            self._release(ticket)

    async def _wait_for_admission(
        self,
        ticket: Ticket,
        granted: asyncio.Event,
        limit: float,
        disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        deadline = time.monotonic() + limit
        while not granted.is_set():
            remaining = deadline - time.monotonic()
            with anyio.move_on_after(max(0.0, min(remaining, _DISCONNECT_POLL_S))):
                await granted.wait()
            if granted.is_set():
                return
            if disconnected is not None and await disconnected():
                if self.admission.withdraw(ticket):
                    raise ClientGone("the client went away while its request waited for admission")
                return
            if time.monotonic() >= deadline and self.admission.withdraw(ticket):
                raise _overloaded(
                    Rejected(
                        "wait_timeout",
                        self.admission.retry_after_s(ticket.pixels),
                        f"no room for this image ({ticket.pixels:,} pixels) within {limit:g} s "
                        "(UNET_ADMISSION_MAX_WAIT_S); retry later",
                    )
                )

    def grow(self, ticket: Ticket, pixels: int, should_stop: Callable[[], bool]) -> None:
        """Blocking (worker thread): raise ``ticket`` to ``pixels`` once the request's scale is known;
        waits ahead of new requests up to UNET_ADMISSION_MAX_WAIT_S, then 503 + Retry-After."""
        event = threading.Event()
        ticket.wake = event.set
        if self.admission.grow(ticket, pixels):
            return
        deadline = time.monotonic() + self.settings.admission_max_wait_s
        while not event.wait(_DISCONNECT_POLL_S):
            if should_stop():
                if self.admission.withdraw_grow(ticket):
                    raise Cancelled("the request was cancelled while it waited for room to grow")
                return
            if time.monotonic() >= deadline and self.admission.withdraw_grow(ticket):
                raise _overloaded(
                    Rejected(
                        "wait_timeout",
                        self.admission.retry_after_s(pixels),
                        f"this image needs {pixels:,} pixels at its nucleus scale and there was no room "
                        f"for them within {self.settings.admission_max_wait_s:g} s; retry later",
                    )
                )

    def tiling(
        self, metadata: ModelMetadata, tile_size: int | None = None, overlap: int | None = None
    ) -> Tiling:
        """Tile size and overlap: request option, else setting, else the model's metadata
        (``service.tile_options``); raises 422 for values outside the limits."""
        try:
            return resolve_tiling(self.settings, metadata, tile_size, overlap)
        except TilingError as exc:
            raise InvalidOptions(
                str(exc), errors=[{"loc": ["query", exc.param], "msg": "out of range", "type": "value_error"}]
            ) from exc


class ClientGone(ProblemError):
    """The client disconnected while its request waited for admission (nginx's 499; never received)."""

    status, slug, title = 499, "client-closed-request", "Client closed request"


def _count_admitted(ticket: Ticket) -> None:
    metrics.ADMITTED.labels(lane=ticket.charged_lane or ticket.lane).inc()
    metrics.ADMISSION_WAIT_SECONDS.observe((ticket.admitted_at or ticket.enqueued_at) - ticket.enqueued_at)


def _overloaded(exc: Rejected) -> ServiceUnavailable:
    metrics.REJECTED.labels(reason=exc.reason).inc()
    return ServiceUnavailable(
        str(exc), retry_after_s=exc.retry_after_s, slug="overloaded", title="Overloaded"
    )


def admission_limits(settings: Settings) -> Limits:
    """The admission policy from the settings (docker/README.md: how the defaults were derived)."""
    return Limits(
        budget=settings.admission_pixels,
        small_pixels=settings.admission_small_pixels,
        small_budget=settings.admission_small_lane_pixels,
        max_requests=settings.max_concurrent_requests,
        max_queued=settings.admission_max_queued,
        max_wait_s=settings.admission_max_wait_s,
        throughput=settings.admission_throughput_mps * 1e6,
    )


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
    """Dependency factory: 422 for query parameters the route does not know, or given twice.

    A misspelt option (``?treshold=0.3``) silently ignored would give the caller a result
    computed with the default — worse than an error naming the allowed options. Every option
    takes one value: ``?channel=1&channel=2`` would otherwise use one of them without a word.
    """
    allowed_set = frozenset(allowed)

    def check(request: Request) -> None:
        names = [name for name, _ in request.query_params.multi_items()]
        unknown = sorted(set(names) - allowed_set)
        if unknown:
            raise InvalidOptions(
                f"unknown query option(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed_set))}",
                errors=[
                    {"loc": ["query", name], "msg": "unknown query option", "type": "extra_forbidden"}
                    for name in unknown
                ],
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidOptions(
                f"query option(s) given more than once: {', '.join(repeated)}; each takes one value",
                errors=[
                    {"loc": ["query", name], "msg": "given more than once", "type": "value_error"}
                    for name in repeated
                ],
            )

    return check
