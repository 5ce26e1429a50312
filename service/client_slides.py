"""Slides in the batch client: ``unet-segment --output ome-zarr`` (issue 16).

A slide (a tiled OME-TIFF of 20,000–100,000 px a side) is larger than any image ``POST /segment``
or the in-memory local mode takes. Each one becomes what a slide job writes
(``service.routes.slide_jobs``): an OME-Zarr store (probability, ``labels/nuclei``,
``labels/mask``, with a pyramid) and an objects CSV, placed at ``out/<mirrored path>/NAME.ome.zarr/``
and ``NAME.objects.csv``; with ``--geojson`` also the outlines, ``NAME.objects.geojson``.

- **Server mode** (:class:`SlideSegmenter`): ``POST /jobs?output=ome-zarr`` with the file's bytes
  streamed from disk (never held in memory), or with ``{"path": ...}`` under ``--data-root`` (the
  server's ``UNET_DATA_ROOT`` mounted here; the only way to send an OME-Zarr folder); polled like
  any job, then ``GET /jobs/{id}/files.zip``
  streamed to a file and unpacked. The ZIP rather than file by file: it is the one answer that
  lists the store's files (Zarr over HTTP has no listing, and chunks never written are absent, so
  file by file would mean a request per possible chunk), it comes in one request, and each
  member's CRC-32 is checked as it is unpacked. A download cut short is retried whole.
- **Local mode** (:class:`LocalSlideSegmenter`): the service's own runtime (``Runtime.load``, as
  ``python -m service`` starts) and the slide job's own call, ``slide_jobs.run``, in this process:
  the same files from the same code.

Either way the files are built in a hidden folder beside the target and moved into place when
complete, the store last (:func:`install`): a store that exists is whole (with its table, and its
outlines when they were asked for), so a resumed run may skip it, and an interrupted run leaves no
half store behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from service.client import (
    BACKOFF_BASE_S,
    CONTENT_TYPES,
    Config,
    Job,
    Result,
    Segmenter,
    SlideOutput,
    Upload,
    UsageError,
    failed_locally,
    output_kind,
)

#: Bytes read from the slide per chunk of a streamed upload.
UPLOAD_CHUNK = 1 << 20
#: The downloaded archive's name in the staging folder (no result file has this name).
ARCHIVE_NAME = "files.zip"


def data_path(source: Path, root: Path) -> str:
    """``source``'s path under ``root`` (``--data-root``) as the server's ``{"path": ...}`` takes it;
    :class:`UsageError` for a file outside it (the server could not see it)."""
    if not root.is_dir():
        raise UsageError(f"--data-root {root}: no such folder")
    try:
        return source.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UsageError(f"{source} is not under --data-root {root}: the server cannot read it by path "
                         "(move it under the root, or leave out --data-root to upload it)") from None


def file_upload(source: Path) -> Upload:
    """The file's bytes streamed from disk, with its length (the server checks it against its
    room before reading); a new stream for each try."""
    size = source.stat().st_size
    content_type = CONTENT_TYPES.get(source.suffix.lower(), "application/octet-stream")

    def chunks() -> Iterator[bytes]:
        with open(source, "rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                yield chunk

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    return lambda: {"content": chunks(), "headers": headers}


@contextmanager
def staging(store: Path) -> Iterator[Path]:
    """A new hidden folder beside ``store`` to build its files in; removed with whatever is left
    in it (everything, unless :func:`install` moved the files out)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=store.parent, prefix=f".{store.name}.", suffix=".part"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def install(
    folder: Path,
    store_name: str,
    store: Path,
    beside: Sequence[tuple[str, Path]],
    stale: Sequence[Path] = (),
) -> None:
    """Move the finished ``folder/store_name`` to ``store`` and each ``folder/name`` of ``beside``
    (the table, the outlines) to its path, each a rename on one filesystem. The files beside go
    first and the store last, so the store's presence means all are there. ``stale``: files an
    earlier run left beside the store that the new one does not replace (its outlines, when this
    run asks for none), removed before the new store arrives: they would describe the old one. An
    existing store (``--overwrite``) is first moved into ``folder``, which its caller removes (a
    rename cannot replace a folder that has files)."""
    missing = [name for name in (store_name, *(name for name, _ in beside))
               if not (folder / name).exists()]
    if missing or not (folder / store_name).is_dir():
        raise ValueError(f"the job's files are incomplete: {', '.join(missing or [store_name])} missing")
    for name, path in beside:
        os.replace(folder / name, path)
    for path in stale:
        path.unlink(missing_ok=True)
    if store.exists():
        os.replace(store, folder / f"replaced-{store.name}")
    os.replace(folder / store_name, store)


def placement(
    kind: SlideOutput, store: Path, table_name: str, outlines_name: str | None
) -> tuple[list[tuple[str, Path]], list[Path]]:
    """:func:`install`'s ``beside`` and ``stale`` for the store ``store``: the table, and the
    outlines when ``outlines_name`` (the job wrote them), else the outlines an earlier run left."""
    beside = [(table_name, kind.table(store))]
    if outlines_name is None:
        return beside, [kind.outlines(store)]
    return [*beside, (outlines_name, kind.outlines(store))], []


def unpack(archive: Path, folder: Path, names: Collection[str]) -> None:
    """Extract ``archive`` into ``folder``. Only members under ``names`` (the job's result files)
    are taken, never a path that leads elsewhere; ``zipfile`` checks each member's CRC-32 as it
    is read (``BadZipFile`` on a mismatch)."""
    with zipfile.ZipFile(archive) as files:
        for member in files.infolist():
            parts = PurePosixPath(member.filename).parts
            if (not parts or parts[0] not in names or member.filename.startswith("/")
                    or any(part in (".", "..") or "\\" in part for part in parts)):
                raise ValueError(f"the job's archive holds {member.filename!r}, not a file of its result")
            files.extract(member, folder)


def _file_name(url: Any) -> str:
    """The last part of a result URL (``/jobs/{id}/files/result.ome.zarr`` → ``result.ome.zarr``)."""
    name = PurePosixPath(str(url)).name
    if name in ("", ".", ".."):
        raise ValueError(f"{url!r} names no file")
    return name


class SlideSegmenter(Segmenter):
    """Server mode: every slide is a ``POST /jobs?output=ome-zarr``, retried, polled and deleted
    as :class:`~service.client.Segmenter` does for large images; the result is its files."""

    def __init__(self, config: Config, backoff_base: float = BACKOFF_BASE_S) -> None:
        super().__init__(config, backoff_base)
        self.data_root = config.data_root
        self.slide_kind = output_kind(config)
        assert isinstance(self.slide_kind, SlideOutput)

    def __call__(self, job: Job) -> Result:
        """Segment one slide and write its files; never raises for HTTP or network trouble."""
        result = Result(job, ok=False)
        try:
            if self.data_root is not None:
                body = {"path": data_path(job.source, self.data_root)}
                upload: Upload = lambda: {"json": body}  # noqa: E731
            else:
                upload = file_upload(job.source)
        except OSError as exc:
            result.error = f"cannot read input: {exc}"
            return result
        done = self._via_job(result, upload, self._first_turn())
        if done is None:
            result.error = "the server has no POST /jobs (an older version): slides need a server with jobs"
            return result
        return done

    def _collect(self, result: Result, client: httpx.Client, location: str, data: bytes) -> Result:
        """The job's summary, then its files (one ZIP) unpacked and moved into place."""
        fetched = self._request(result, client, "GET", f"{location}/result", final=(200,))
        if fetched is None:
            return result
        try:
            summary = fetched.json()
            store_name, table_name = _file_name(summary["store_url"]), _file_name(summary["objects_url"])
            zip_url, objects = str(summary["zip_url"]), int(summary["objects"])
            pixels = int(summary["width"]) * int(summary["height"])
            outlines_name = None
            if self.slide_kind.geojson:
                if summary.get("geojson_url") is None:
                    raise ValueError("it has no geojson_url although geojson=true was asked (a server "
                                     "older than --geojson?)")
                outlines_name = _file_name(summary["geojson_url"])
        except (ValueError, KeyError, TypeError) as exc:
            result.error = f"the job's result is not a slide job's summary: {type(exc).__name__}: {exc}"
            return result
        store = result.job.target
        try:
            with staging(store) as folder:
                archive = folder / ARCHIVE_NAME
                if self._request(result, client, "GET", zip_url, final=(200,), save_to=archive) is None:
                    return result
                beside, stale = placement(self.slide_kind, store, table_name, outlines_name)
                unpack(archive, folder, {store_name, *(name for name, _ in beside)})
                archive.unlink()
                install(folder, store_name, store, beside, stale)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:  # BadZipFile: a damaged download
            result.error = f"cannot unpack the job's files: {type(exc).__name__}: {exc}"
            return result
        result.ok, result.error, result.problem = True, None, None
        result.pixels, result.object_count = pixels, objects
        return result


class LocalSlideSegmenter:
    """Local mode: the slide job's own work (``slide_jobs.run``) on the service's own runtime,
    in this process; the same files, written the same way as :class:`SlideSegmenter` does.

    ``--concurrency`` slides (1 unless given: :func:`~service.client.default_concurrency`) are
    segmented at once, each in its own bounded memory (about 2 GB for a 32768-px-wide slide,
    growing with the width: docs/benchmarks.md §9), their tiles sharing the model's batcher.
    """

    def __init__(self, config: Config) -> None:
        # Imported here: server mode needs neither ONNX Runtime nor NumPy.
        import onnxruntime

        from service import microscopy
        from service.errors import ProblemError
        from service.routes.deps import Runtime
        from service.routes.segment import Output, SegmentOptions, Split, checked_engine
        from service.settings import Settings

        settings = Settings()
        # Only the providers this onnxruntime build has, as service.api does: a CPU-only build asked
        # for CUDA (the default list) would warn on every run about a degradation that is none.
        built = set(onnxruntime.get_available_providers())
        updates: dict[str, Any] = {
            "providers": [p for p in settings.providers if p in built] or ["CPUExecutionProvider"]}
        if config.model is not None:
            updates["model_path"] = config.model
        settings = Settings(**{**settings.model_dump(), **updates})  # built anew: the updates validated
        self.runtime = Runtime(settings)
        self.runtime.load()  # what `python -m service` does at start: precision, checksum, warm-up
        if not self.runtime.ready:
            raise UsageError(f"cannot load the model: {self.runtime.reason}")
        self.kind = output_kind(config)
        assert isinstance(self.kind, SlideOutput)
        plane = microscopy.Selection(channel=config.channel, z=config.z, t=config.t, project=config.project,
                                     pixel_size_um=config.pixel_size, polarity=config.polarity or "bright",
                                     series=config.series, measure=microscopy.measure_choice(config.measure))
        # What POST /jobs?output=ome-zarr makes of the same options (no tile_size, overlap, threshold
        # or bits: the client has no options for them, so the server's defaults hold in both modes).
        self.options = SegmentOptions(
            Output.ome_zarr, None, 8, None, None,
            split=None if config.split is None else Split(config.split), diameter=config.diameter,
            plane=plane, geojson=config.geojson, expand=config.expand, background_ring=config.background_ring,
        )
        try:  # what the server refuses before reading any file (422: --split or --diameter this model lacks)
            checked_engine(self.runtime, self.options)
        except ProblemError as exc:
            raise UsageError(exc.detail) from exc
        self._stop = threading.Event()
        self.progress: Callable[[Job, int | None, int | None], None] | None = None

    def __call__(self, job: Job) -> Result:
        """Segment one slide and write its files; never raises for a bad file."""
        from service import slides
        from service.routes import slide_jobs
        from service.routes.segment import is_cancel

        result = Result(job, ok=False, attempts=1)
        store = job.target

        def progress(done: int, total: int) -> None:
            if self.progress is not None:
                self.progress(job, done, total)

        try:
            with staging(store) as folder:
                slide = slide_jobs.run(self.runtime, job.source, self.options, folder, self._stop.is_set,
                                       progress)
                outlines = slides.GEOJSON_NAME if self.kind.geojson else None
                beside, stale = placement(self.kind, store, slides.TABLE_NAME, outlines)
                install(folder, slides.STORE_NAME, store, beside, stale)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not end the batch
            if is_cancel(exc):
                result.error = "interrupted before the slide was finished"
                return result
            return failed_locally(result, exc)
        finally:
            if self.progress is not None:
                self.progress(job, None, None)
        result.ok, result.pixels, result.object_count = True, slide.width * slide.height, slide.objects
        return result

    def use_diameter(self, diameter: float) -> None:
        """Segment every slide at ``diameter`` from now on (between slides, not during)."""
        self.options = dataclasses.replace(self.options, diameter=diameter)

    def interrupt(self) -> None:
        """Ctrl-C: slides being segmented stop at their next tile; their staging folders go."""
        self._stop.set()

    def close(self) -> None:
        self.runtime.close()
