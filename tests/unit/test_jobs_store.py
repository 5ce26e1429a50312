"""service.jobs.JobStore: job folders on a real disk — ids, atomic status, recovery, retention, room."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.jobs import RESTART_REASON, JobRecord, JobStore, StoreFull, UnknownJob


def store(
    tmp_path: Path, max_jobs: int = 10, max_bytes: int = 1_000_000, retention_s: float = 60
) -> JobStore:
    s = JobStore(tmp_path / "jobs", max_jobs, max_bytes, retention_s)
    s.recover()  # creates the folder, as the runner's start does
    return s


def new(
    s: JobStore, status: str = "queued", payload: bytes = b"x" * 100, finished: float | None = None
) -> str:
    job_id, _ = s.new_job(len(payload))
    s.input_path(job_id).write_bytes(payload)
    s.save(JobRecord(id=job_id, status=status, created=time.time(), finished=finished))  # type: ignore[arg-type]
    s.received(job_id)
    return job_id


def test_ids_are_random_hex_and_nothing_else_is_ever_a_path(tmp_path: Path) -> None:
    s = store(tmp_path)
    a, b = new(s), new(s)
    assert a != b and len(a) == 32 and int(a, 16) >= 0
    for bad in ("../etc", "..", "status.json", a.upper(), a + "/x", "", a[:-1]):
        with pytest.raises(UnknownJob):
            s.folder(bad)
    with pytest.raises(UnknownJob):
        s.load("0" * 32)  # well-formed, never created


def test_status_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    s = store(tmp_path)
    job_id = new(s)
    record = s.load(job_id)
    record.status, record.tiles_done = "running", 7
    s.save(record)
    assert s.load(job_id).tiles_done == 7
    assert sorted(p.name for p in s.folder(job_id).iterdir()) == ["input", "status.json"]


def test_saving_a_deleted_job_does_not_bring_it_back(tmp_path: Path) -> None:
    s = store(tmp_path)
    job_id = new(s)
    record = s.load(job_id)
    s.delete(job_id)
    s.save(record)
    s.write_result(job_id, b"late result")
    assert not s.folder(job_id).exists()


def test_recovery_fails_interrupted_jobs_keeps_finished_ones_and_drops_partial_uploads(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    queued, running = new(s, "queued"), new(s, "running")
    done = new(s, "succeeded", finished=time.time())
    s.write_result(done, b"result")
    partial, _ = s.new_job(None)  # an upload the crash cut short: no status.json
    s.input_path(partial).write_bytes(b"half")

    restarted = JobStore(s.root, 10, 1_000_000, 60)
    assert restarted.recover() == 2
    for job_id in (queued, running):
        record = restarted.load(job_id)
        assert record.status == "failed" and record.finished is not None
        assert RESTART_REASON in record.problem["detail"]
        assert not restarted.input_path(job_id).exists()
    assert restarted.load(done).status == "succeeded"
    assert restarted.result_path(done).read_bytes() == b"result"
    assert not (s.root / partial).exists()


def test_the_sweep_deletes_only_finished_jobs_past_the_retention(tmp_path: Path) -> None:
    s = store(tmp_path, retention_s=60)
    now = time.time()
    old = new(s, "succeeded", finished=now - 61)
    old_failed = new(s, "failed", finished=now - 3600)
    recent = new(s, "succeeded", finished=now - 59)
    running = new(s, "running")
    assert sorted(s.sweep(now)) == sorted([old, old_failed])
    assert {r.id for r in s.records()} == {recent, running}


def test_a_full_store_refuses_by_count_and_by_bytes(tmp_path: Path) -> None:
    s = store(tmp_path, max_jobs=2, max_bytes=5000, retention_s=60)
    new(s, "succeeded", payload=b"x" * 300, finished=time.time())
    with pytest.raises(StoreFull) as too_big:
        s.new_job(50_000)  # the declared length alone does not fit
    assert too_big.value.kind == "bytes"
    new(s, payload=b"x" * 300)
    with pytest.raises(StoreFull) as too_many:
        s.new_job(10)
    assert too_many.value.kind == "jobs"
    # Room frees when the finished job expires: in about the retention, never less than 1 s.
    assert 1 <= too_many.value.retry_after_s <= 62
