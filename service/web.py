"""The web viewer: ``GET /`` serves a static page that segments one image in the browser.

The page (``service/static/``: plain HTML/CSS/JS, no build step, no CDN, so it works offline)
talks to the public API (``POST /segment``, ``POST /jobs``, ``GET /v1/model``) like any other
client. What it needs from the server that the API does not give:

- a picture the browser can show: browsers cannot display TIFF or 16-bit images, so
  ``POST /ui/preview`` renders an 8-bit RGB PNG of the upload with the service's own imaging code;
- ``GET /ui/config``: whether jobs are on and above how many pixels the page uses them
  (``UNET_WEB_JOB_ABOVE_PIXELS``) instead of holding one ``POST /segment`` open for minutes; the
  upload limits, and whether files may be stored once (``POST /uploads``) and named by id.

Wiring (two lines in the app factory)::

    app.include_router(web.router)
    web.mount_static(app)
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from service import imaging, microscopy
from service.errors import PayloadTooLarge, problem_responses
from service.routes import stored as stored_uploads
from service.routes.deps import Runtime, get_runtime, require_api_key
from service.routes.jobs import get_jobs
from service.routes.segment import plane_selection, upload_pixels
from service.routes.segment import problem_for as problem_for_domain_error
from service.structure import Limits

#: The page and its assets.
STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(tags=["web viewer"])


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The viewer page. No API key: the page itself asks for one when the API answers 401."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/ui/config", summary="What the web page needs to know about this server",
            include_in_schema=False)
def config(request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, object]:
    """No API key, like the page itself: it says nothing about the model or the images."""
    jobs = get_jobs(request)
    return {
        "jobs": jobs.unavailable is None,
        "job_above_pixels": runtime.settings.web_job_above_pixels,
        # A file past max_upload_bytes is stored first (POST /uploads) and named by its id.
        "max_upload_bytes": runtime.settings.max_upload_bytes,
        "stored_uploads": jobs.unavailable is None and jobs.uploads is not None,
        "max_stored_upload_bytes": runtime.settings.max_stored_upload_bytes,
    }


def render_preview(
    data: bytes,
    max_pixels: int,
    selection: microscopy.Selection | None = None,
    limits: Limits | int = Limits(),  # noqa: B008 - frozen, so one shared default is safe
) -> tuple[bytes, int, int]:
    """Upload bytes → ``(PNG bytes of an (H, W, 3) uint8 display image, width, height)``.

    Same reader and pixel limit as ``POST /segment``, so the preview is pixel-aligned with the
    masks (same size, EXIF orientation ignored); ``selection`` picks the channel / plane shown
    (what it leaves open defaults for display: a composite in colour, the first plane);
    ``limits`` bound the file's structure (``service.structure``).

    Raises:
        imaging.ImageError subclasses (undecodable, unsupported, too large, too complex);
        microscopy.SelectionError (a channel or plane the image lacks).
    """
    plane = microscopy.preview_plane(data, selection or microscopy.Selection(), max_pixels, limits)
    rgb = imaging.to_display_rgb(plane.image)
    return imaging.encode_png(rgb), int(rgb.shape[1]), int(rgb.shape[0])


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body has {int(declared)} bytes; at most {limit} are allowed "
                              "(UNET_MAX_UPLOAD_BYTES)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the request body exceeds the limit of {limit} bytes (UNET_MAX_UPLOAD_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/ui/preview",
    summary="Display preview of an image (for the web viewer)",
    response_class=Response,
    dependencies=[Depends(require_api_key)],
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
              "description": "8-bit RGB PNG of the input, same width and height, contrast-stretched"},
        **problem_responses(400, 401, 413, 415, 422, 503),
        **stored_uploads.UNKNOWN_UPLOAD_RESPONSE,
    },
    openapi_extra={"requestBody": {"required": True, "description": "the raw image bytes (any Content-Type)",
                                   "content": {"application/octet-stream": {
                                       "schema": {"type": "string", "format": "binary"}}}}},
)
async def preview(
    request: Request,
    runtime: Runtime = Depends(get_runtime),
    selection: microscopy.Selection = Depends(plane_selection),
    upload: str | None = stored_uploads.UPLOAD_QUERY,
) -> Response:
    settings = runtime.settings
    if upload is not None:
        data = await stored_uploads.open_stored(request, upload)
    else:
        data = await _read_body(request, settings.max_upload_bytes)
    # Decoding is where a preview spends its memory: it is admitted by its pixels like a
    # segmentation (its quick work does not count toward the measured throughput).
    pixels = await upload_pixels(runtime, data)
    async with runtime.admitted(pixels, measure=False, disconnected=request.is_disconnected):
        try:
            # Decoding a large TIFF takes a while: keep the event loop free.
            png, width, height = await anyio.to_thread.run_sync(
                render_preview, data, settings.max_pixels, selection, settings.decode_limits()
            )
        except (imaging.ImageError, microscopy.SelectionError) as exc:
            problem = problem_for_domain_error(exc)
            if problem is None:  # pragma: no cover - every ImageError maps to a problem
                raise
            raise problem from exc
    return Response(png, media_type="image/png", headers={
        "X-Image-Width": str(width),
        "X-Image-Height": str(height),
        "Cache-Control": "no-store",
    })


def mount_static(app: FastAPI) -> None:
    """Serve the page's assets under ``/static/``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
