"""``service.uploads``: stored uploads on disk — ids, maps, expiry, and the budget they share with jobs."""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from pathlib import Path

import pytest

from service.jobs import JobStore
from service.uploads import (
    OffsetMismatch,
    StoredImage,
    UnknownUpload,
    UploadBusy,
    UploadIncomplete,
    UploadsFull,
    UploadStore,
    UploadTooLarge,
)

DAY = 24 * 3600.0


def stores(root: Path, max_bytes: int = 10_000, max_uploads: int = 10) -> tuple[UploadStore, JobStore]:
    jobs = JobStore(root, 100, max_bytes, DAY)
    uploads = UploadStore(root, max_bytes, max_uploads, DAY, room=lambda: jobs.max_bytes - jobs.usage()[1])
    return uploads, jobs


def put(store: UploadStore, data: bytes, name: str | None = "a.tif") -> str:
    upload_id, room = store.new(len(data))
    assert room >= len(data)
    store.data_path(upload_id).write_bytes(data)
    store.finish(upload_id, name, len(data), hashlib.sha256(data).hexdigest())
    return upload_id


def test_a_stored_upload_opens_as_a_read_only_map_of_its_bytes(tmp_path: Path) -> None:
    store, _ = stores(tmp_path)
    data = bytes(range(256)) * 10
    upload_id = put(store, data, "cells.lif")
    stored = store.open(upload_id)
    assert isinstance(stored, StoredImage) and isinstance(stored, mmap.mmap)
    assert stored[:] == data and len(stored) == len(data)
    assert (stored.sha256, stored.filename) == (hashlib.sha256(data).hexdigest(), "cells.lif")
    with pytest.raises(TypeError):
        stored[0] = 1  # read-only: nothing that reads it can change the stored file


def test_ids_that_are_not_ours_never_become_paths(tmp_path: Path) -> None:
    store, _ = stores(tmp_path)
    (tmp_path / "secret").write_bytes(b"II*\x00")
    for bad in ("../secret", "..", "", "A" * 32, "0" * 31, "0" * 32 + "/"):
        with pytest.raises(UnknownUpload):
            store.open(bad)
        with pytest.raises(UnknownUpload):
            store.delete(bad)


def test_an_upload_still_arriving_cannot_be_opened(tmp_path: Path) -> None:
    store, _ = stores(tmp_path)
    upload_id, _ = store.new(None)
    store.data_path(upload_id).write_bytes(b"II*\x00 half a file")
    with pytest.raises(UnknownUpload):  # no info yet: its bytes are not all in
        store.open(upload_id)


def test_stored_uploads_count_in_the_jobs_folder_budget(tmp_path: Path) -> None:
    store, jobs = stores(tmp_path, max_bytes=10_000)
    upload_id = put(store, bytes(6_000))
    info_bytes = (store.folder(upload_id) / "info.json").stat().st_size
    used = 6_000 + info_bytes
    assert jobs.usage() == (0, used)
    with pytest.raises(UploadsFull):
        store.new(10_000 - used + 1)  # declared past the bytes left
    _, room = store.new(None)
    assert room == 10_000 - used
    _, job_room = jobs.new_job(None)
    assert job_room == 10_000 - used  # the jobs see the same budget


def test_the_number_of_stored_uploads_is_bounded(tmp_path: Path) -> None:
    store, _ = stores(tmp_path, max_uploads=2)
    put(store, b"x")
    store.new(None)  # one arriving counts too
    with pytest.raises(UploadsFull):
        store.new(None)


def test_uploads_unused_for_the_retention_are_swept_and_each_use_renews_one(tmp_path: Path) -> None:
    store, _ = stores(tmp_path)
    used, idle = put(store, b"used"), put(store, b"idle")
    cut_short, _ = store.new(None)
    store.data_path(cut_short).write_bytes(b"II*\x00")
    now = time.time()
    for folder in (used, idle, cut_short):  # all last touched two days ago
        for path in store.folder(folder).iterdir():
            os.utime(path, (now - 2 * DAY, now - 2 * DAY))
    store.open(used)  # a request named it: renewed
    assert sorted(store.sweep(now=now + 60)) == sorted([idle, cut_short])
    assert store.open(used)[:] == b"used"
    for gone in (idle, cut_short):
        assert not store.folder(gone).exists()


def test_delete_removes_the_files_and_an_open_map_keeps_reading(tmp_path: Path) -> None:
    store, _ = stores(tmp_path)
    upload_id = put(store, b"II*\x00 the bytes")
    stored = store.open(upload_id)
    store.delete(upload_id)
    assert not store.folder(upload_id).exists()
    assert stored[:] == b"II*\x00 the bytes"  # unlinked, not cut short: no SIGBUS for a reader
    with pytest.raises(UnknownUpload):
        store.delete(upload_id)


def test_a_resumable_upload_grows_at_its_offset_one_writer_at_a_time_and_completes_hashed(
    tmp_path: Path
) -> None:
    store, jobs = stores(tmp_path)
    data = b"II*\x00" + bytes(range(256)) * 20
    pending = store.create(len(data), "cells.tif")
    upload_id = pending.id
    assert store.progress(upload_id) == (0, len(data))
    with pytest.raises(UploadIncomplete) as incomplete:  # not a file to read yet
        store.open(upload_id)
    assert (incomplete.value.offset, incomplete.value.length) == (0, len(data))
    with store.appending(upload_id, 0) as (out, _):
        out.write(data[:1000])
        with pytest.raises(UploadBusy), store.appending(upload_id, 0):  # another request adding bytes
            pass
    assert store.progress(upload_id) == (1000, len(data))
    assert jobs.usage()[1] >= 1000  # counted in the folder's budget as it grows
    with pytest.raises(OffsetMismatch) as mismatch, store.appending(upload_id, 0):  # a client that lost track
        pass
    assert mismatch.value.offset == 1000
    with store.appending(upload_id, 1000) as (out, _):
        out.write(data[1000:])
    info = store.complete(upload_id)
    assert (info.size, info.filename) == (len(data), "cells.tif")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.open(upload_id)[:] == data and store.progress(upload_id) == (len(data), len(data))
    with pytest.raises(UnknownUpload), store.appending(upload_id, len(data)):  # complete: nothing to add
        pass


def test_a_resumable_upload_is_bounded_deletable_part_way_and_swept_when_abandoned(tmp_path: Path) -> None:
    store, _ = stores(tmp_path, max_bytes=5_000)
    with pytest.raises(UploadTooLarge):
        store.create(5_001, None)
    kept, abandoned = store.create(100, None).id, store.create(100, None).id
    store.delete(kept)  # tus termination, part-way
    with pytest.raises(UnknownUpload):
        store.progress(kept)
    with store.appending(abandoned, 0) as (out, _):
        out.write(b"II*\x00")
    past = os.stat(store.data_path(abandoned)).st_mtime - DAY - 1
    os.utime(store.data_path(abandoned), (past, past))  # no byte written for longer than the retention
    assert store.sweep() == [abandoned] and not store.folder(abandoned).exists()
