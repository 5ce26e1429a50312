"""The FastAPI application: wiring only (settings, lifespan, middleware, error handlers, routers).

``uvicorn service.app:app`` serves the module-level :data:`app` built from the environment;
``python -m service`` does the same with graceful-shutdown settings; tests call
:func:`create_app` with their own :class:`~service.settings.Settings`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import log as service_log
from service import metrics, web
from service.errors import PROBLEM_JSON, BodyTooLarge, install, internal_error_body, problem_body
from service.log import REQUEST_ID
from service.routes import batch, health, jobs, model, probe, problems, segment, slide_jobs, uploads
from service.routes.deps import Runtime, require_api_key_for_metrics
from service.settings import Settings, get_settings

log = logging.getLogger("service.access")
errors_log = logging.getLogger("service.errors")

#: The status logged and counted for a request whose client went away before the answer (nginx's
#: convention); it is never sent, there is nobody to send it to.
CLIENT_CLOSED = 499

#: Where the Swagger UI / ReDoc assets of /docs and /redoc are served from.
DOCS_ASSETS_URL = "/static/docs"

#: A client-supplied X-Request-ID is echoed only if it looks like an id (no log injection).
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _stores_an_upload(method: str, path: str) -> bool:
    """``POST /uploads`` (a whole file) and ``PATCH /uploads/{id}`` (a resumable one's bytes)."""
    path = path.rstrip("/")
    return (method == "POST" and path == "/uploads") or (method == "PATCH" and path.startswith("/uploads/"))


class RequestMiddleware:
    """Per request: id, body-size limit, one access log line, metrics, last-resort 500.

    Pure ASGI (not ``BaseHTTPMiddleware``) so the request's ``receive`` channel is untouched:
    routes can still see a client disconnect, and the body is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, stored_upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        #: ``POST /uploads`` stores a file to disk as it streams in, ``PATCH /uploads/{id}`` adds to a
        #: resumable one: their own limit (``UNET_MAX_STORED_UPLOAD_BYTES``), not one request's.
        self.stored_upload_bytes = stored_upload_bytes or max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID_OK.match(supplied) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        state: dict = {"status": 0, "bytes_out": 0, "bytes_in": 0, "started": False}
        storing = _stores_an_upload(scope.get("method", ""), scope["path"])
        limit = self.stored_upload_bytes if storing else self.max_body_bytes
        setting = "UNET_MAX_STORED_UPLOAD_BYTES" if storing else "UNET_MAX_UPLOAD_BYTES"
        metrics.HTTP_IN_FLIGHT.inc()

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["bytes_in"] += len(message.get("body", b""))
                if state["bytes_in"] > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                state["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                # Refuse before reading a byte of a body that is too large anyway.
                await _send_problem(
                    tagged_send,
                    413,
                    "Request body too large",
                    f"the request body has {int(declared)} bytes; at most {limit} are allowed ({setting})"
                    + ("" if storing else "; a larger file can be stored first (POST /uploads) and named "
                       "with upload=<id>"),
                    "payload-too-large",
                )
            else:
                await self.app(scope, counted_receive, tagged_send)
        except ClientDisconnect:
            # The client hung up mid-upload: its problem, not ours — no traceback, no 500.
            state["disconnected_in"] = "upload"
        except Exception:
            errors_log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not state["started"]:
                await tagged_send_problem(tagged_send)
        finally:
            duration = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "static" if scope["path"].startswith("/static/") else "unmatched"
            )
            method = scope.get("method", "")
            if state.get("disconnected_in") and not state["started"]:
                status = CLIENT_CLOSED
            else:
                status = state["status"] or 500
            if status == CLIENT_CLOSED:
                # Routes answer 499 themselves when the client left while its image was segmented.
                stage = state.get("disconnected_in", "processing")
                metrics.CLIENT_DISCONNECTS.labels(route=template, stage=stage).inc()
            metrics.HTTP_IN_FLIGHT.dec()
            metrics.HTTP_REQUESTS.labels(route=template, method=method, status=str(status)).inc()
            metrics.HTTP_LATENCY.labels(route=template, method=method).observe(duration)
            client = scope.get("client")
            log.info(
                "%s %s %d %.1fms",
                method,
                scope["path"],
                status,
                1000 * duration,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(1000 * duration, 1),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "bytes_in": state["bytes_in"],
                    "bytes_out": state["bytes_out"],
                    "user_agent": headers.get("user-agent"),
                },
            )
            REQUEST_ID.reset(token)


async def _send_problem(
    send: Send, status: int, title: str, detail: str, slug: str, body: dict | None = None
) -> None:
    import json

    payload = json.dumps(body or problem_body(status, title, detail, slug=slug)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def tagged_send_problem(send: Send) -> None:
    await _send_problem(send, 500, "", "", "", body=internal_error_body())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: read from the ``UNET_*`` environment)."""
    settings = settings or get_settings()
    service_log.configure(settings.log_json, settings.log_level)
    runtime = Runtime(settings)
    job_runner = jobs.create_runner(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load on a daemon thread, not in the lifespan itself: liveness answers at once, and a
        # shutdown during a slow load does not wait for it.
        threading.Thread(target=runtime.load, name="model-load", daemon=True).start()
        await job_runner.start()
        yield
        await job_runner.stop()  # before the batcher closes: running jobs stop at their next tiles
        runtime.close()

    # /docs and /redoc load Swagger UI and ReDoc from assets installed with fastapi-offline (a
    # FastAPI factory, maintained, that serves them as static files) instead of a CDN: the docs
    # work on an offline microscope PC like the web page does. Under /static/ with the page's own
    # assets (metrics count them as "static"); mounted before /static, so it is matched first.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="U-Net segmentation service",
        version="0.1.0",
        summary="Nuclei segmentation of images of any size: overlapping tiles, ONNX Runtime, PNG masks.",
        description=(
            "Send an image to `POST /segment` (multipart field `file`, or the raw bytes with an `image/*` "
            "Content-Type) and get a PNG of the same height and width back. Errors are RFC 9457 problem "
            "details (`application/problem+json`). When the service runs with `UNET_API_KEY`, send it as "
            "`X-API-Key` or `Authorization: Bearer`; health routes need no key."
        ),
        lifespan=lifespan,
        responses={},
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.jobs = job_runner
    install(app)
    app.include_router(health.router)
    app.include_router(segment.router)
    app.include_router(batch.router)
    app.include_router(jobs.router)
    app.include_router(slide_jobs.router)
    app.include_router(probe.router)
    app.include_router(uploads.router)
    app.include_router(model.router)
    app.include_router(web.router)
    app.include_router(problems.router)
    web.mount_static(app)

    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=[Depends(require_api_key_for_metrics)],
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format",
            }
        },
    )
    def metrics_page() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_upload_bytes,
                       stored_upload_bytes=settings.max_stored_upload_bytes)
    return app


app = create_app()
