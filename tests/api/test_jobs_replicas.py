"""Replicas sharing one jobs folder (a ReadWriteMany volume behind a Kubernetes Service): any
replica answers a job's status, result and DELETE; a replica that starts leaves the running jobs of
live ones alone; the jobs of a replica that died are failed once it stops beating. Two real servers
on one folder, the slow model so that a job can be caught running."""

from __future__ import annotations

from pathlib import Path

from tests.api import _images as im
from tests.api.test_jobs import SMALL, finished, job_env, running_with_tiles, submit, wait_until
from tests.server import Server

#: Nine times test_jobs' BIG in tiles. The job this test cancels must outlast a second replica's
#: start-up and a small job on it; BIG (1024²) once finished first on a fast CPU, so the DELETE
#: found it succeeded. The job is cancelled or killed part-way, so its size costs no test time.
LONG = im.png(im.blobs(3072, 3072, seed=5))


def _replica(name: str, model: Path, jobs_dir: Path, log: Path) -> Server:
    env = job_env(model, jobs_dir, UNET_MAX_BATCH_SIZE="1", UNET_REPLICA_ID=name,
                  UNET_JOBS_OWNER_TIMEOUT_S="3")
    return Server(env, log)


def test_replicas_sharing_a_jobs_folder_serve_each_others_jobs(slow_model: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    a = _replica("a", slow_model, jobs_dir, tmp_path / "a.log").wait_ready()
    b = None
    try:
        running = submit(a.client, LONG)
        wait_until(a.client, running, running_with_tiles)
        # B starts while A runs a job: A is alive, so B's start-up must not fail it.
        b = _replica("b", slow_model, jobs_dir, tmp_path / "b.log").wait_ready()
        seen_on_b = wait_until(b.client, running, lambda s: s["status"] == "running" and s["tiles_done"] > 0)
        assert seen_on_b["tiles_total"] > seen_on_b["tiles_done"] > 0  # A's progress, saved for B

        # A result made on B is served by A, byte for byte.
        small = submit(b.client, SMALL)
        assert wait_until(b.client, small, finished)["status"] == "succeeded"
        from_b = b.client.get(f"/jobs/{small}/result")
        from_a = a.client.get(f"/jobs/{small}/result")
        assert from_b.status_code == from_a.status_code == 200
        assert from_a.content == from_b.content and from_a.headers["X-Object-Count"]

        # DELETE on B cancels the job A runs: A stops it and records it cancelled.
        cancelled = b.client.delete(f"/jobs/{running}")
        assert cancelled.status_code == 200, cancelled.text
        record = cancelled.json()
        assert record["status"] == "cancelled" and record["tiles_done"] < record["tiles_total"]
        assert a.client.get(f"/jobs/{running}").json()["status"] == "cancelled"
        assert not (jobs_dir / running / "input").exists()

        # A dies while running a job: B fails it once A has not beaten for the owner timeout.
        orphan = submit(a.client, LONG)
        wait_until(a.client, orphan, running_with_tiles)
        a.proc.kill()  # no shutdown code runs
        a.stop()
        failed = wait_until(b.client, orphan, finished)
        assert failed["status"] == "failed"
        assert failed["problem"]["type"] == "/problems/job-interrupted"
        # ... and what A finished stays readable.
        assert b.client.get(f"/jobs/{small}/result").content == from_b.content
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_a_file_stored_on_one_replica_is_read_and_deleted_through_another(
    conv_model: Path, tmp_path: Path
) -> None:
    """Behind a Service, the web page's requests for one stored file land on any replica: with a
    shared jobs folder each reads what another stored (and a DELETE on one frees it for all)."""
    jobs_dir = tmp_path / "jobs"
    a = _replica("a", conv_model, jobs_dir, tmp_path / "a.log").wait_ready()
    b = _replica("b", conv_model, jobs_dir, tmp_path / "b.log").wait_ready()
    try:
        stored = a.client.post("/uploads", content=SMALL, headers={"Content-Type": "image/png"})
        assert stored.status_code == 201, stored.text
        upload = stored.json()["id"]
        on_b = b.client.post("/segment", params={"upload": upload, "output": "labels"})
        direct = a.client.post("/segment", params={"output": "labels"}, content=SMALL,
                               headers={"Content-Type": "image/png"})
        assert on_b.status_code == direct.status_code == 200, on_b.text
        assert on_b.content == direct.content
        assert b.client.get(f"/uploads/{upload}").json() == stored.json()
        assert b.client.delete(f"/uploads/{upload}").status_code == 204
        assert a.client.post("/probe", params={"upload": upload}).status_code == 404
    finally:
        a.stop()
        b.stop()
