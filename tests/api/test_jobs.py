"""``/jobs`` on real servers: submit → poll → result equal to ``POST /segment``; cancel; restart;
retention; a full store. Jobs run on the slow model (~20 ms per tile) so that one can be caught
running; every wait is a poll on the job's state under a generous overall bound."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.api import _images as im
from tests.api.test_auth_metrics import metric
from tests.server import Server

RAW = {"Content-Type": "image/png"}
SMALL = im.png(im.blobs(128, 128, seed=3))
#: Hundreds of tiles on the slow model: still running when the test acts on it.
BIG = im.png(im.blobs(1024, 1024, seed=5))
POLL_LIMIT_S = 300  # an overall bound for a loaded machine, not a performance claim


def wait_until(client: httpx.Client, job_id: str, done, limit_s: float = POLL_LIMIT_S) -> dict:
    """Poll GET /jobs/{id} until ``done(status)``; the last status."""
    deadline = time.monotonic() + limit_s
    while True:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        status = r.json()
        if done(status):
            return status
        assert time.monotonic() < deadline, f"job never reached the state: {status}"
        time.sleep(0.05)


def finished(status: dict) -> bool:
    return status["status"] in ("succeeded", "failed", "cancelled")


def running_with_tiles(status: dict) -> bool:
    assert status["status"] in ("queued", "running"), status
    return status["status"] == "running" and status["tiles_done"] > 0


def submit(client: httpx.Client, body: bytes = SMALL, params: dict | None = None, **kwargs) -> str:
    r = client.post("/jobs", content=body, headers=RAW, params=params or {}, **kwargs)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["Location"] == f"/jobs/{job_id}" == r.json()["status_url"]
    return job_id


def job_env(model: Path, jobs_dir: Path, **extra: str) -> dict[str, str]:
    return {"UNET_MODEL_PATH": str(model), "UNET_JOBS_DIR": str(jobs_dir), **extra}


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def jobs_server(start_server, slow_model: Path, jobs_dir: Path) -> Server:
    return start_server(job_env(slow_model, jobs_dir, UNET_MAX_BATCH_SIZE="1")).wait_ready()


@pytest.mark.parametrize("output", ["mask", "labels", "objects"])
def test_a_jobs_result_is_what_post_segment_answers(jobs_server: Server, output: str) -> None:
    client = jobs_server.client
    r = client.post("/jobs", params={"output": output}, files={"file": ("cells.png", SMALL, "image/png")})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "queued" and accepted["options"] == {"output": output}
    status = wait_until(client, accepted["id"], finished)
    assert status["status"] == "succeeded", status
    assert status["tiles_total"] > 0 and status["tiles_done"] == status["tiles_total"]
    assert status["created"] <= status["started"] <= status["finished"]
    assert status["result_url"] == f"/jobs/{accepted['id']}/result" and status["problem"] is None

    job = client.get(status["result_url"])
    direct = client.post("/segment", params={"output": output},
                         files={"file": ("cells.png", SMALL, "image/png")})
    assert job.status_code == direct.status_code == 200
    assert job.content == direct.content  # byte-identical
    for header in ("content-type", "content-disposition", "x-tiles", "x-object-count", "x-model-version",
                   "x-image-pixels"):
        assert job.headers.get(header) == direct.headers.get(header), header
    assert job.headers["content-disposition"].startswith('attachment; filename="cells_')


def test_a_job_goes_through_admission_like_a_request(jobs_server: Server) -> None:
    client = jobs_server.client
    before = metric(client.get("/metrics").text, "unet_admitted_requests_total")
    assert wait_until(client, submit(client), finished)["status"] == "succeeded"
    after = metric(client.get("/metrics").text, "unet_admitted_requests_total")
    assert after - before == 1  # charged against the same pixel budget as POST /segment


def test_a_client_that_hangs_up_after_submitting_does_not_lose_its_job(jobs_server: Server) -> None:
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(SMALL)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", jobs_server.port)) as sock:
        sock.sendall(head + SMALL)
        answer = sock.recv(65536).decode("latin-1")  # the 202's head, then the client is gone
    assert answer.startswith("HTTP/1.1 202")
    location = re.search(r"(?im)^location: (/jobs/[0-9a-f]+)", answer)
    assert location is not None, answer
    job_id = location.group(1).rsplit("/", 1)[1]
    assert wait_until(jobs_server.client, job_id, finished)["status"] == "succeeded"
    assert jobs_server.client.get(f"/jobs/{job_id}/result").status_code == 200


def test_unknown_ids_are_404_problems_and_ids_are_never_paths(jobs_server: Server) -> None:
    client = jobs_server.client
    for path in (f"/jobs/{uuid.uuid4().hex}", f"/jobs/{uuid.uuid4().hex}/result", "/jobs/..%2F..%2Fetc",
                 "/jobs/status.json", "/jobs/" + "a" * 31 + "G"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"/jobs/{uuid.uuid4().hex}").json()["type"] == "/problems/job-not-found"
    assert client.delete(f"/jobs/{uuid.uuid4().hex}").status_code == 404


def test_bad_input_is_refused_at_submission_and_leaves_nothing_on_disk(
    jobs_server: Server, jobs_dir: Path
) -> None:
    client = jobs_server.client
    before = set(jobs_dir.iterdir())
    bad = client.post("/jobs", content=b"not an image at all", headers=RAW)
    assert bad.status_code in (400, 415) and bad.json()["type"].startswith("/problems/")
    unknown = client.post("/jobs", params={"treshold": "0.3"}, content=SMALL, headers=RAW)
    assert unknown.status_code == 422 and unknown.json()["type"] == "/problems/invalid-options"
    wrong_type = client.post("/jobs", content=b"cells", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    untyped = client.post("/jobs", content=SMALL)  # an image without a Content-Type: say which
    assert untyped.status_code == 415 and untyped.json()["type"] == "/problems/unsupported-media-type"
    empty = client.post("/jobs", content=b"", headers=RAW)
    assert empty.status_code == 400 and empty.json()["type"] == "/problems/no-image"
    # JSON names a file on the server's volume: off here (no UNET_DATA_ROOT; tests/api/test_jobs_data_root.py)
    by_path = client.post("/jobs", json={"path": "cells.png"})
    assert by_path.status_code == 403 and by_path.json()["type"] == "/problems/data-root-off"
    assert set(jobs_dir.iterdir()) == before


def test_delete_cancels_queued_and_running_jobs_and_stops_their_tiles(
    jobs_server: Server, jobs_dir: Path
) -> None:
    client = jobs_server.client
    tiles_before = metric(client.get("/metrics").text, "unet_tiles_total")
    running = submit(client, BIG)
    queued = submit(client, BIG)  # one worker: waits behind the first
    status = wait_until(client, running, running_with_tiles)
    assert client.get(f"/jobs/{queued}").json()["status"] == "queued"
    assert client.get(f"/jobs/{running}/result").status_code == 409

    r = client.delete(f"/jobs/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.delete(f"/jobs/{running}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    tiles_after_cancel = metric(client.get("/metrics").text, "unet_tiles_total")
    assert tiles_after_cancel - tiles_before < status["tiles_total"], "the cancelled job ran to its end"
    for job_id in (running, queued):
        assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        assert client.get(f"/jobs/{job_id}/result").status_code == 409
        assert [p.name for p in (jobs_dir / job_id).iterdir()] == ["status.json"]  # upload deleted

    # Nothing of either cancelled job runs after DELETE answered: the next job's tiles are all
    # the model computes.
    small = wait_until(client, submit(client), finished)
    assert small["status"] == "succeeded"
    tiles_now = metric(client.get("/metrics").text, "unet_tiles_total")
    assert tiles_now - tiles_after_cancel == small["tiles_total"]

    # Deleting a finished job removes it and its files.
    assert client.delete(f"/jobs/{small['id']}").status_code == 204
    assert client.get(f"/jobs/{small['id']}").status_code == 404
    assert not (jobs_dir / small["id"]).exists()


def test_a_restart_fails_the_running_job_with_the_reason_and_keeps_finished_results(
    slow_model: Path, tmp_path: Path
) -> None:
    env = job_env(slow_model, tmp_path / "jobs", UNET_MAX_BATCH_SIZE="1")
    first = Server(env, tmp_path / "first.log").wait_ready()
    try:
        done = wait_until(first.client, submit(first.client), finished)
        assert done["status"] == "succeeded"
        result = first.client.get(done["result_url"]).content
        interrupted = submit(first.client, BIG)
        wait_until(first.client, interrupted, running_with_tiles)
    finally:
        first.proc.kill()  # a crash (OOM kill): no shutdown code runs
        first.stop()
    second = Server(env, tmp_path / "second.log").wait_ready()
    try:
        status = second.client.get(f"/jobs/{interrupted}").json()
        assert status["status"] == "failed" and status["finished"] is not None
        assert status["problem"]["type"] == "/problems/job-interrupted"
        assert "the server restarted while the job ran" in status["problem"]["detail"]
        answer = second.client.get(f"/jobs/{interrupted}/result")
        assert answer.status_code == 503 and answer.json()["type"] == "/problems/job-interrupted"
        assert not (tmp_path / "jobs" / interrupted / "input").exists()
        kept = second.client.get(f"/jobs/{done['id']}/result")
        assert kept.status_code == 200 and kept.content == result
    finally:
        second.stop()


def test_the_retention_sweep_deletes_finished_jobs(start_server, conv_model: Path, tmp_path: Path) -> None:
    server = start_server(job_env(conv_model, tmp_path, UNET_JOBS_RETENTION_S="1")).wait_ready()
    job_id = submit(server.client)
    assert wait_until(server.client, job_id, finished)["status"] == "succeeded"
    deadline = time.monotonic() + POLL_LIMIT_S
    while server.client.get(f"/jobs/{job_id}").status_code == 200:
        assert time.monotonic() < deadline, "the finished job was never swept"
        time.sleep(0.1)
    assert server.client.get(f"/jobs/{job_id}").json()["type"] == "/problems/job-not-found"
    assert not (tmp_path / job_id).exists()


def _noise_png(side: int) -> bytes:
    return im.png(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8))


def test_a_full_store_refuses_new_jobs(start_server, conv_model: Path, tmp_path: Path) -> None:
    server = start_server(
        job_env(conv_model, tmp_path, UNET_JOBS_MAX="1", UNET_JOBS_MAX_BYTES="60000")
    ).wait_ready()
    client = server.client
    first = submit(client)
    full = client.post("/jobs", content=SMALL, headers=RAW)
    assert full.status_code == 503 and full.json()["type"] == "/problems/jobs-full"
    assert int(full.headers["Retry-After"]) >= 1
    assert wait_until(client, first, finished)["status"] == "succeeded"
    assert client.delete(f"/jobs/{first}").status_code == 204

    large = _noise_png(300)
    assert len(large) > 60000
    declared = client.post("/jobs", content=large, headers=RAW)  # Content-Length says it all
    assert declared.status_code == 507 and declared.json()["type"] == "/problems/insufficient-storage"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming in
        for k in range(0, len(large), 8192):
            yield large[k:k + 8192]

    streamed = client.post("/jobs", content=chunks(), headers=RAW)
    assert streamed.status_code == 507 and streamed.json()["type"] == "/problems/insufficient-storage"
    # nothing half-written left behind (.owners holds the replicas' heartbeats, not jobs)
    assert [p.name for p in tmp_path.iterdir()] == [".owners"]
    assert submit(client)  # room again for an image that fits
