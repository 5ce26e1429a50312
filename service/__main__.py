"""``python -m service`` (or ``unet-serve``): run the API under uvicorn with the UNET_* settings.

SIGTERM (what Kubernetes and ``docker stop`` send) drains: readiness turns 503 at once so load
balancers stop sending, uvicorn stops accepting connections, requests in flight finish within
``UNET_DRAIN_TIMEOUT_S`` (uvicorn's ``timeout_graceful_shutdown``), then the batcher shuts down.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import uvicorn

from service.settings import get_settings

#: Largest request line + header section accepted (the body has its own limit, UNET_MAX_UPLOAD_BYTES).
MAX_HEADER_BYTES = 64 * 1024


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that flips readiness off as soon as a shutdown signal arrives."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        # Walk the middleware wrappers down to the FastAPI app that holds the runtime.
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None and sig in (signal.SIGTERM, signal.SIGINT):
            runtime.begin_drain()
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="unet-serve",
        description="Serve the U-Net segmentation API. Every option is also a UNET_* environment variable.",
    )
    settings = get_settings()
    parser.add_argument("--host", default=settings.host, help="bind address (UNET_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="bind port (UNET_PORT)")
    args = parser.parse_args(argv)

    config = uvicorn.Config(
        "service.app:app",
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=int(round(settings.drain_timeout_s)) or None,
        access_log=False,  # the service logs each request once itself, with its request id
        log_config=None,  # keep the service's own logging setup (plain or JSON)
        proxy_headers=True,
        server_header=False,
        # h11, not httptools: uvicorn's httptools parser buffers a request's header section
        # without any bound (an endless header line grew RSS by 240 MB in 20 s, before any
        # route or API key check could run); h11 answers 400 past MAX_HEADER_BYTES.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    server = _DrainingServer(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
