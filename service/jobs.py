"""Jobs: segmentation that outlives a request — a store on disk and a small pool of workers.

Each job is a folder ``<UNET_JOBS_DIR>/<id>/`` holding

- ``input``: the upload, written as it streams in (deleted once the job has run);
- ``status.json``: the job's record (:class:`JobRecord`), replaced atomically (write to a
  temporary file, fsync, ``os.replace``) so a reader or a crash never sees half a file;
- ``result``: the bytes ``POST /segment`` would have answered, once the job succeeded.

Ids are ``uuid4`` hex (122 random bits): unguessable, never derived from user input, and
checked against :data:`_ID` before any path is built from one.

What runs a job is injected (:data:`Execute`): the HTTP layer passes a function that goes
through the same admission and pipeline as ``POST /segment`` (``service.routes.jobs``); this
module only knows folders, records, the queue and cancellation.

Replicas may share one folder (a ``ReadWriteMany`` volume behind a Kubernetes Service): any
replica answers a job's status, result and ``DELETE``; the replica that accepted a job runs it.
Each server process is an *owner* — ``<replica>/<boot id>``, the replica from
``UNET_REPLICA_ID`` (default: the host name, which is the pod's name on Kubernetes) — and

- beats: touches ``.owners/<owner>`` every :data:`WATCH_INTERVAL_S`, and saves its running jobs'
  progress to their ``status.json`` at the same pace (so other replicas show it);
- polls its jobs for a ``cancel`` file, which a ``DELETE`` on another replica writes;
- fails the queued/running jobs of an owner that stopped beating for ``owner_timeout_s`` (a
  replica that died), and at start-up those of its own replica's earlier life.

Restart policy: jobs found ``queued`` or ``running`` when their owner is gone are marked
``failed`` ("the server restarted while the job ran"), not re-queued. A job that was running
when the process died may be what killed it (an image too large for the pod's memory): re-run
at every start it would crash-loop the service and take every other request down with it. The
client resubmits; finished results stay readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from service import durable, uploads

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
FINISHED: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")

RESTART_REASON = "the server restarted while the job ran"

_ID = re.compile(r"^[0-9a-f]{32}$")
_STATUS, _INPUT, _RESULT = "status.json", "input", "result"
#: ``cancel``: written by a DELETE on a replica that does not run the job; ``.owner``: who is
#: receiving the upload of a job that has no status yet.
_CANCEL, _UPLOADER = "cancel", ".owner"
_OWNERS = ".owners"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Seconds between an owner's heartbeats, progress saves and looks for cancel requests.
WATCH_INTERVAL_S = 1.0
#: Every this many beats, the jobs of owners that stopped beating are failed.
_REAP_EVERY = 10


def process_owner(replica: str | None = None) -> str:
    """This server process as a job owner: ``<replica>/<boot id>`` (replica: the host name)."""
    name = _UNSAFE.sub("_", replica or socket.gethostname()).strip("._") or "replica"
    return f"{name}/{uuid.uuid4().hex[:12]}"


def _replica(owner: str) -> str:
    return owner.split("/", 1)[0]


class JobRecord(BaseModel):
    """What ``status.json`` holds; times are Unix seconds (UTC)."""

    id: str
    status: JobState
    created: float
    started: float | None = None
    finished: float | None = None
    options: dict[str, str] = Field(default_factory=dict, description="the query options as sent")
    filename: str | None = Field(None, description="the upload's file name (names the result)")
    stage: str = Field("queued", description="queued · waiting (for admission) · segmenting · done")
    tiles_done: int = 0
    tiles_total: int | None = None
    problem: dict[str, Any] | None = Field(None, description="problem details when the job failed")
    problem_headers: dict[str, str] = Field(default_factory=dict)
    media_type: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="the result's response headers")
    result_bytes: int | None = None
    owner: str | None = Field(None, description="the server process that runs it: <replica>/<boot id>")


class UnknownJob(LookupError):
    """No job with that id (never created, deleted, or swept after its retention)."""


class StoreFull(Exception):
    """No room for another job: ``kind`` is ``jobs`` (count) or ``bytes`` (disk)."""

    def __init__(self, kind: Literal["jobs", "bytes"], message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.kind, self.retry_after_s = kind, retry_after_s


class JobFailed(Exception):
    """The job's work failed with a problem the client can act on (status, body, headers)."""

    def __init__(self, status: int, problem: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(problem.get("detail", ""))
        self.status, self.problem, self.headers = status, problem, dict(headers or {})


@dataclass
class JobResult:
    body: bytes
    media_type: str
    headers: dict[str, str]


@dataclass
class Active:
    """A queued or running job as the worker sees it: the options object, the cancel flag, progress."""

    id: str
    options: Any  # the route's parsed options (kept in memory: jobs are not re-run after a restart)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stage: str = "queued"
    tiles_done: int = 0
    tiles_total: int | None = None
    wants_cancel: bool = False  # another replica asked (a ``cancel`` file)

    def progress(self, done: int, total: int) -> None:
        """Called from the worker thread after each batch of tiles (ints: no lock needed)."""
        self.stage, self.tiles_done, self.tiles_total = "segmenting", done, total


#: ``execute(job, input_path)`` → the result, None when the job was cancelled; raises JobFailed.
Execute = Callable[[Active, Path], Awaitable[JobResult | None]]


class JobStore:
    """Job folders under ``root``, bounded by ``max_jobs`` folders and ``max_bytes`` on disk.

    ``owner``: this process (:func:`process_owner`); ``owner_timeout_s``: how long another
    owner may go without a heartbeat before its unfinished jobs are failed.
    """

    def __init__(
        self, root: Path, max_jobs: int, max_bytes: int, retention_s: float,
        owner: str | None = None, owner_timeout_s: float = 60.0,
    ) -> None:
        self.root = Path(root)
        self.max_jobs, self.max_bytes, self.retention_s = max_jobs, max_bytes, retention_s
        self.owner = owner or process_owner()
        self.owner_timeout_s = owner_timeout_s
        self._receiving: set[str] = set()  # uploads still streaming in: no status.json yet
        # load-modify-save of one record (progress) must not interleave with a save of its end
        self._lock = threading.RLock()

    # --- paths ---------------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        if not _ID.fullmatch(job_id):  # never build a path from anything but our own ids
            raise UnknownJob(job_id)
        return self.root / job_id

    def input_path(self, job_id: str) -> Path:
        return self.folder(job_id) / _INPUT

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / _RESULT

    # --- records -------------------------------------------------------------------------------

    def load(self, job_id: str) -> JobRecord:
        try:
            text = (self.folder(job_id) / _STATUS).read_text()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UnknownJob(job_id) from exc
        return JobRecord.model_validate_json(text)

    def save(self, record: JobRecord) -> None:
        """Replace ``status.json`` atomically; a job deleted meanwhile stays deleted."""
        with self._lock:
            self._save(record)

    def save_progress(self, job_id: str, stage: str, done: int, total: int | None) -> None:
        """Record a running job's progress on disk (for the other replicas); nothing once it ended."""
        with self._lock:
            try:
                record = self.load(job_id)
            except (UnknownJob, ValueError):
                return
            if record.status != "running" or (record.stage, record.tiles_done, record.tiles_total) == (
                stage, done, total,
            ):
                return
            record.stage, record.tiles_done, record.tiles_total = stage, done, total
            self._save(record)

    def _save(self, record: JobRecord) -> None:
        try:
            durable.write_atomic(self.folder(record.id) / _STATUS, record.model_dump_json(indent=1).encode())
        except FileNotFoundError:
            log.info("job %s was deleted before its status could be saved", record.id)

    def write_result(self, job_id: str, body: bytes) -> None:
        """The job's result, and every file the job wrote in its folder (a slide job's store and
        table, a stack job's TIFFs), on disk before the status that says ``succeeded`` is saved
        (:mod:`service.durable`); the input is left out, deleted next."""
        with contextlib.suppress(FileNotFoundError):
            durable.write_atomic(self.result_path(job_id), body)
            durable.sync_tree(self.folder(job_id), skip=(_INPUT, _STATUS, _RESULT))  # the result: just now

    def remove_input(self, job_id: str) -> None:
        self.input_path(job_id).unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # --- owners (replicas sharing the folder) ---------------------------------------------------

    def _heartbeat(self, owner: str) -> Path:
        return self.root / _OWNERS / _UNSAFE.sub("_", owner)

    def beat(self) -> None:
        """This owner is alive (its heartbeat file's time is now)."""
        path = self._heartbeat(self.owner)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def owner_alive(self, owner: str | None) -> bool:
        """Whether ``owner`` still runs its jobs: this process, or another replica that beat within
        ``owner_timeout_s``. An earlier life of this replica (same name, other boot) is gone."""
        if owner == self.owner:
            return True
        if owner is None or _replica(owner) == _replica(self.owner):
            return False
        try:
            age = time.time() - self._heartbeat(owner).stat().st_mtime
        except FileNotFoundError:
            return False
        return age <= self.owner_timeout_s

    def request_cancel(self, job_id: str) -> None:
        """Ask the job's owner (another replica) to cancel it."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder(job_id) / _CANCEL).touch()

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / _CANCEL).exists()

    # --- capacity ------------------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """``(jobs, bytes)`` on disk now."""
        jobs = used = 0
        for folder in self._folders():
            jobs += 1
            used += _bytes_under(folder)
        # Stored uploads (service.uploads) share the folder and its budget.
        return jobs, used + _bytes_under(self.root / uploads.FOLDER)

    def new_job(self, declared_bytes: int | None) -> tuple[str, int]:
        """A new job folder and how many upload bytes it may take; :class:`StoreFull` when there
        is no room (``declared_bytes``: the request's Content-Length, when it sent one)."""
        jobs, used = self.usage()
        if jobs >= self.max_jobs:
            raise StoreFull(
                "jobs",
                f"the server already keeps {jobs} jobs (UNET_JOBS_MAX); delete finished ones or retry "
                "once older ones expire",
                self._retry_after_s(),
            )
        room = self.max_bytes - used
        if room <= 0 or (declared_bytes is not None and declared_bytes > room):
            raise StoreFull(
                "bytes",
                f"the jobs folder has {max(room, 0):,} of {self.max_bytes:,} bytes free (UNET_JOBS_MAX_BYTES)"
                + (f"; this upload has {declared_bytes:,}" if declared_bytes is not None else ""),
                self._retry_after_s(),
            )
        job_id = uuid.uuid4().hex
        self._receiving.add(job_id)
        self.folder(job_id).mkdir()
        (self.folder(job_id) / _UPLOADER).write_text(self.owner)
        return job_id, room

    def received(self, job_id: str) -> None:
        """The upload is in and the job has its status (which names its owner from now on)."""
        self._receiving.discard(job_id)
        with contextlib.suppress(FileNotFoundError):
            (self.folder(job_id) / _UPLOADER).unlink()

    def _retry_after_s(self) -> int:
        """Seconds until the oldest finished job expires (room frees up then), at least 1."""
        now = time.time()
        ends = [r.finished + self.retention_s - now for r in self.records() if r.finished is not None]
        return max(1, int(min(ends, default=60)) + 1)

    # --- housekeeping --------------------------------------------------------------------------

    def _folders(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and _ID.fullmatch(p.name)]

    def records(self) -> list[JobRecord]:
        out = []
        for folder in self._folders():
            with contextlib.suppress(UnknownJob, ValueError):
                out.append(self.load(folder.name))
        return out

    def recover(self) -> int:
        """At start-up: beat, then :meth:`reap` (the unfinished work of this replica's earlier life
        and of replicas that stopped beating). Returns how many jobs were failed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.beat()
        return self.reap()

    def reap(self) -> int:
        """Uploads cut short are removed and jobs left queued/running are failed with
        :data:`RESTART_REASON` (see the module's docstring for why not re-queued) — those whose
        owner is gone (:meth:`owner_alive`); another live replica's are left alone. How many failed."""
        failed = 0
        for folder in self._folders():
            try:
                record = self.load(folder.name)
            except (UnknownJob, ValueError):
                # no (valid) status: an upload that never finished, unless its owner still receives it
                if not self.owner_alive(self._uploader(folder)):
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            if record.status in ACTIVE and not self.owner_alive(record.owner):
                record.status, record.stage, record.finished = "failed", "done", time.time()
                record.problem = interrupted_problem()
                self.save(record)
                self.remove_input(record.id)
                failed += 1
        self._forget_old_owners()
        return failed

    def _forget_old_owners(self) -> None:
        """Heartbeat files of owners long gone (each boot leaves one) are removed."""
        with contextlib.suppress(FileNotFoundError):
            for path in (self.root / _OWNERS).iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - path.stat().st_mtime > 10 * self.owner_timeout_s:
                        path.unlink()

    @staticmethod
    def _uploader(folder: Path) -> str | None:
        try:
            return (folder / _UPLOADER).read_text().strip() or None
        except OSError:
            return None

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete finished jobs whose ``finished`` time is older than the retention; their ids."""
        now = time.time() if now is None else now
        gone = []
        for record in self.records():
            finished = record.finished
            if finished is not None and record.status in FINISHED and now - finished > self.retention_s:
                self.delete(record.id)
                gone.append(record.id)
        return gone


def _bytes_under(folder: Path) -> int:
    """Bytes of the files under ``folder``, recursively (a slide job's result is a folder: an
    OME-Zarr store of many chunks)."""
    used = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                used += os.stat(os.path.join(root, name)).st_size
    return used


def interrupted_problem() -> dict[str, Any]:
    return {
        "type": "/problems/job-interrupted",
        "title": "Job interrupted",
        "status": 503,
        "detail": f"{RESTART_REASON}; submit the image again",
    }


class JobRunner:
    """The queue and ``workers`` asyncio tasks that run jobs through ``execute``, plus the
    retention sweep. Lives on the event loop (started and stopped by the app's lifespan)."""

    def __init__(
        self, store: JobStore, execute: Execute, workers: int = 1,
        stored_uploads: uploads.UploadStore | None = None,
    ) -> None:
        self.store, self.execute, self.workers = store, execute, workers
        #: Stored uploads in the same folder, swept with the jobs (``service.uploads``).
        self.uploads = stored_uploads
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._active: dict[str, Active] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._cancels: set[asyncio.Task[Any]] = set()  # cancels asked for by other replicas
        self._closing = False
        #: Why jobs are off (the jobs folder cannot be used), None when they work.
        self.unavailable: str | None = "the job workers have not started"

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the folder and start the workers; a folder that cannot be used turns jobs off
        (POST /jobs answers 503 with the reason) instead of failing the whole service."""
        try:
            failed = await anyio.to_thread.run_sync(self.store.recover)
        except OSError as exc:
            self.unavailable = f"the jobs folder {self.store.root} cannot be used: {exc}"
            log.error("jobs are off: %s", self.unavailable)
            return
        self.unavailable = None
        if failed:
            log.warning("%d job(s) were queued or running when the server stopped: marked failed", failed)
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{k}") for k in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._sweep(), name="job-sweep"))
        self._tasks.append(asyncio.create_task(self._watch(), name="job-watch"))

    async def stop(self) -> None:
        """Stop computing (running jobs stay ``running`` on disk: the next start fails them)."""
        self._closing = True
        for active in self._active.values():
            active.cancel.set()  # their threads stop at the next batch of tiles
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- requests ------------------------------------------------------------------------------

    def submit(self, record: JobRecord, options: Any) -> None:
        record.owner = self.store.owner
        self.store.save(record)
        self.store.received(record.id)
        self._active[record.id] = Active(record.id, options)
        self._queue.put_nowait(record.id)

    def status(self, job_id: str) -> JobRecord:
        """The record on disk with the live progress of a running job."""
        record = self.store.load(job_id)
        active = self._active.get(job_id)
        if active is not None and record.status == "running":
            record.stage, record.tiles_done, record.tiles_total = (
                active.stage, active.tiles_done, active.tiles_total,
            )
        return record

    async def delete(self, job_id: str, wait_s: float = 60.0) -> JobRecord | None:
        """Cancel a queued/running job (its record stays, ``cancelled``, until the retention
        sweep; input and partial results go) → the record; a finished job is removed → None.

        A job another live replica runs is cancelled by that replica (asked through a ``cancel``
        file); this waits up to ``wait_s`` for it and returns the record as it then is."""
        store = self.store
        record = store.load(job_id)  # UnknownJob → 404
        active = self._active.get(job_id)
        if record.status in ACTIVE and active is None and store.owner_alive(record.owner):
            return await self._delete_elsewhere(job_id, wait_s)
        if active is None or record.status not in ACTIVE:
            await anyio.to_thread.run_sync(store.delete, job_id)
            return None
        return await self._cancel_here(active, wait_s)

    async def _delete_elsewhere(self, job_id: str, wait_s: float) -> JobRecord:
        store = self.store
        await anyio.to_thread.run_sync(store.request_cancel, job_id)
        record = store.load(job_id)
        with anyio.move_on_after(wait_s):
            while record.status in ACTIVE and store.owner_alive(record.owner):
                await anyio.sleep(WATCH_INTERVAL_S / 4)
                record = store.load(job_id)
        if record.status in ACTIVE and not store.owner_alive(record.owner):
            await anyio.to_thread.run_sync(store.reap)  # its owner died meanwhile
            record = store.load(job_id)
        return record

    async def _cancel_here(self, active: Active, wait_s: float) -> JobRecord:
        job_id = active.id
        record = self.store.load(job_id)
        if record.status not in ACTIVE:  # finished meanwhile
            return record
        active.cancel.set()
        if record.status == "running":
            with anyio.move_on_after(wait_s):  # the thread stops at its next batch of tiles
                await active.done.wait()
        self._active.pop(job_id, None)
        record = self.store.load(job_id)
        record.status, record.stage, record.finished = "cancelled", "done", time.time()
        self.store.save(record)
        self.store.remove_input(job_id)
        self.store.result_path(job_id).unlink(missing_ok=True)
        return record

    # --- workers -------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            active = self._active.get(job_id)
            if active is None or active.cancel.is_set():
                continue  # cancelled while queued
            try:
                await self._run(active)
            finally:
                active.done.set()
                if not active.cancel.is_set():
                    self._active.pop(job_id, None)

    async def _run(self, active: Active) -> None:
        store = self.store
        record = store.load(active.id)
        record.status, record.started, record.stage = "running", time.time(), "waiting"
        active.stage = "waiting"
        store.save(record)
        try:
            result = await self.execute(active, store.input_path(active.id))
        except JobFailed as exc:
            record.status, record.problem, record.problem_headers = "failed", exc.problem, exc.headers
        except Exception:  # noqa: BLE001 - one job's bug must not stop the worker
            log.exception("job %s failed unexpectedly", active.id)
            record.status = "failed"
            record.problem = {
                "type": "/problems/internal-error", "title": "Internal server error", "status": 500,
                "detail": "the job failed unexpectedly; quote its id when reporting it",
            }
        else:
            if result is None or active.cancel.is_set():
                return  # cancelled (DELETE records it) or the server is stopping
            await anyio.to_thread.run_sync(store.write_result, active.id, result.body)
            record.status, record.media_type, record.headers = "succeeded", result.media_type, result.headers
            record.result_bytes = len(result.body)
        if active.cancel.is_set() or self._closing:
            return
        record.stage, record.finished = "done", time.time()
        record.tiles_done, record.tiles_total = active.tiles_done, active.tiles_total
        store.save(record)
        store.remove_input(active.id)

    async def _watch(self) -> None:
        """This owner's pulse: heartbeat, progress of running jobs on disk, cancel requests from
        other replicas, and (every few beats) failing the jobs of owners that stopped beating."""
        beats = 0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            beats += 1
            try:
                await anyio.to_thread.run_sync(self._pulse, beats % _REAP_EVERY == 0)
            except Exception:  # noqa: BLE001 - a failed beat is retried at the next interval
                log.exception("the jobs heartbeat failed")
            for active in list(self._active.values()):
                if active.wants_cancel and not active.cancel.is_set():
                    cancel = self._cancel_here(active, 60.0)
                    task = asyncio.create_task(cancel, name=f"job-cancel-{active.id}")
                    self._cancels.add(task)  # the loop keeps only weak references to tasks
                    task.add_done_callback(self._cancels.discard)

    def _pulse(self, reap: bool) -> None:
        store = self.store
        store.beat()
        for active in list(self._active.values()):
            if store.cancel_requested(active.id):
                active.wants_cancel = True
            elif active.stage != "queued":
                store.save_progress(active.id, active.stage, active.tiles_done, active.tiles_total)
        if reap:
            failed = store.reap()
            if failed:
                log.warning("%d job(s) of replicas that stopped were marked failed", failed)

    async def _sweep(self) -> None:
        # Often enough that a job outlives its retention by at most half of it (and 5 minutes).
        interval = min(max(self.store.retention_s / 2, 0.5), 300.0)
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await anyio.to_thread.run_sync(self.store.sweep)
                stale = await anyio.to_thread.run_sync(self.uploads.sweep) if self.uploads else []
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
                log.exception("the jobs retention sweep failed")
                continue
            if gone or stale:
                log.info("retention sweep deleted %d job(s) and %d stored upload(s)", len(gone), len(stale))

