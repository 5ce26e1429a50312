"""The batch client sends large images through ``POST /jobs``: the real service on loopback, the
real client, real PNGs; which path each image took is read from the server's own counters."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import client
from tests.api import _images as im
from tests.api._images import write_slow_model
from tests.api.test_auth_metrics import metric
from tests.client.conftest import Reply, Request, png_bytes, png_size, segment_like_the_service, write_png
from tests.models import write_conv_model
from tests.server import REPO, Server

ARGS = ["--no-progress", "--retries", "3"]
#: 128² = 16,384 px is over it, 48² = 2,304 px under it.
THRESHOLD = "10000"


def segment(*args: str | Path) -> int:
    return client.main([str(a) for a in args] + ARGS)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("jobs-client")
    model = write_conv_model(folder / "conv.onnx")
    service = Server({"UNET_MODEL_PATH": str(model)}, folder / "service.log")
    try:
        yield service.wait_ready(180)
    finally:
        service.stop()


def counts(server: Server) -> tuple[float, float, float]:
    """POST /segment 200s, POST /jobs 202s, DELETE /jobs/{id} answers so far."""
    text = server.client.get("/metrics").text

    def count(route: str, method: str, status: str | None = None) -> float:
        labels = {"route": route, "method": method} | ({"status": status} if status else {})
        try:
            return metric(text, "unet_http_requests_total", **labels)
        except AssertionError:  # never requested yet: no sample
            return 0.0

    return (count("/segment", "POST", "200"), count("/jobs", "POST", "202"),
            count("/jobs/{job_id}", "DELETE"))


def job_folders(server: Server) -> list[Path]:
    """The job folders the server keeps (not ``.owners``, the replicas' heartbeats)."""
    return _jobs_in(server.log_path.parent / f"{server.log_path.stem}-jobs")


def _jobs_in(jobs_dir: Path) -> list[Path]:
    if not jobs_dir.exists():
        return []
    return [p for p in jobs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.parametrize("output", ["labels", "objects"])
def test_the_large_image_goes_through_jobs_with_the_same_outputs_and_the_job_is_deleted(
    server: Server, tmp_path: Path, output: str
) -> None:
    images = tmp_path / "in"
    write_png(images / "large.png", 128, 128)
    write_png(images / "sub" / "small.png", 48, 48)

    before = counts(server)
    direct = tmp_path / "direct"
    assert segment(images, "--out", direct, "--url", server.url, "--output", output,
                   "--job-above", "never") == 0
    after_direct = counts(server)
    assert after_direct[0] - before[0] == 2 and after_direct[1] == before[1]

    via_jobs = tmp_path / "jobs"
    assert segment(images, "--out", via_jobs, "--url", server.url, "--output", output,
                   "--job-above", THRESHOLD) == 0
    after = counts(server)
    assert after[0] - after_direct[0] == 1, "the small image goes to /segment"
    assert after[1] - after_direct[1] == 1, "the large image goes to /jobs"
    assert after[2] - after_direct[2] == 1, "its job is deleted once the result is saved"
    assert job_folders(server) == []

    # Same names, same bytes (summary.csv included, for objects).
    written, expected = files_under(via_jobs), files_under(direct)
    assert sorted(written) == sorted(expected)
    for name, data in expected.items():
        assert written[name] == data, name

    # Resume: nothing missing, nothing sent.
    assert segment(images, "--out", via_jobs, "--url", server.url, "--output", output,
                   "--job-above", "0") == 0
    assert counts(server) == after


def corrupt_png(width: int, height: int) -> bytes:
    """A PNG whose header and chunk structure are sound (so it passes submission) but whose
    compressed pixels are garbage: it fails only when the job decodes it."""
    good = png_bytes(width, height, value=128)
    garbage = bytes(range(256)) * 8
    idat = b"IDAT" + garbage
    chunk = struct.pack(">I", len(garbage)) + idat + struct.pack(">I", zlib.crc32(idat))
    end = b"\x00\x00\x00\x00IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return good[:33] + chunk + end  # signature (8) + IHDR chunk (25)


def test_a_job_that_fails_is_in_the_failure_report_and_deleted(server: Server, tmp_path: Path) -> None:
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    (images / "broken.png").write_bytes(corrupt_png(128, 128))
    write_png(images / "fine.png", 128, 128)
    before = counts(server)

    assert segment(images, "--out", out, "--url", server.url, "--job-above", "0") == 1

    after = counts(server)
    assert after[1] - before[1] == 2, "both were accepted as jobs (the header is sound)"
    assert after[2] - before[2] == 2, "the failed job is deleted too"
    assert after[0] == before[0], "no fallback to /segment"
    assert job_folders(server) == []
    assert sorted(files_under(out)) == ["failures.jsonl", "fine.png"]
    (record,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert record["file"] == str(images / "broken.png")
    assert record["status"] == 400
    assert record["type"].endswith("/problems/undecodable-image"), record
    assert "job failed" in record["error"]


def test_a_server_without_jobs_gets_segment(standin, tmp_path: Path) -> None:
    """An older server answers 404 to POST /jobs: the image goes to /segment on the same run."""
    old = standin("old")

    def without_jobs(request: Request) -> Reply:
        if request.path == "/jobs":
            return Reply(404, {"Content-Type": "application/json"}, b'{"detail": "Not Found"}')
        return segment_like_the_service(request)

    old.behaviour = without_jobs
    write_png(tmp_path / "in" / "large.png", 40, 30)
    out = tmp_path / "out"
    assert segment(tmp_path / "in", "--out", out, "--url", old.url, "--job-above", "0") == 0
    assert [r.path for r in old.requests] == ["/jobs", "/segment"]
    assert png_size((out / "large.png").read_bytes()) == (40, 30)


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("16777216", 4096 * 4096), ("4096x4096", 4096 * 4096), ("never", None), ("NEVER", None),
])
def test_job_above_accepts_pixels_sizes_and_never(value: str, expected: int | None, tmp_path: Path) -> None:
    config = client.parse_config(["x.png", "--out", str(tmp_path), "--url", "http://h",
                                  "--job-above", value])
    assert config.job_above == expected


@pytest.mark.parametrize("value", ["-1", "big", "4096x", "10MB"])
def test_a_bad_job_above_is_a_usage_error(value: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        client.parse_config(["x.png", "--out", str(tmp_path), "--url", "http://h", "--job-above", value])
    assert exc.value.code == 2


def test_the_default_sends_only_images_over_4096_squared_as_jobs(tmp_path: Path) -> None:
    config = client.parse_config(["x.png", "--out", str(tmp_path), "--url", "http://h"])
    segmenter = client.Segmenter(config)
    try:
        header_only = png_bytes(1, 1)[:8] + struct.pack(">I", 13) + b"IHDR"
        assert not segmenter.wants_job(header_only + struct.pack(">II", 4096, 4096))
        assert segmenter.wants_job(header_only + struct.pack(">II", 4097, 4096))
        # A header the client cannot read is judged by the file's size.
        assert not segmenter.wants_job(b"II+\x00" + bytes(100))
        assert segmenter.wants_job(b"II+\x00" + bytes(4096 * 4096))
    finally:
        segmenter.close()


# --- on the slow model: a job long enough to watch and to interrupt --------------------------------

POLL_LIMIT_S = 300  # an overall bound for a loaded machine, not a performance claim


def test_a_jobs_tiles_are_reported_as_they_are_done(tmp_path: Path) -> None:
    slow = write_slow_model(tmp_path / "slow.onnx")
    server = Server({"UNET_MODEL_PATH": str(slow), "UNET_MAX_BATCH_SIZE": "1"}, tmp_path / "s.log")
    try:
        server.wait_ready(180)
        source = tmp_path / "big.png"
        source.write_bytes(im.png(im.blobs(512, 512, seed=5)))
        config = client.parse_config([str(source), "--out", str(tmp_path / "out"), "--url", server.url,
                                      "--job-above", "0"])
        segmenter = client.Segmenter(config)
        seen: list[tuple[int | None, int | None]] = []
        segmenter.progress = lambda job, done, total: seen.append((done, total))
        try:
            result = segmenter(client.Job(source, tmp_path / "out" / "big.png"))
        finally:
            segmenter.close()
    finally:
        server.stop()
    assert result.ok, result.error
    assert seen[-1] == (None, None), "the bar forgets the job once it is over"
    reports = seen[:-1]
    total = reports[-1][1]
    assert total is not None and total > 1 and reports[-1][0] == total
    assert any(done < total or known is None for done, known in reports), "seen before it finished"
    dones = [done for done, _ in reports]
    assert dones == sorted(dones)
    assert {known for _, known in reports} <= {None, total}


def test_a_job_cut_short_by_a_server_restart_is_submitted_again(tmp_path: Path) -> None:
    slow = write_slow_model(tmp_path / "slow.onnx")
    env = {"UNET_MODEL_PATH": str(slow), "UNET_MAX_BATCH_SIZE": "1",
           "UNET_JOBS_DIR": str(tmp_path / "jobs")}  # one folder for both: the restart fails the job
    first = Server(env, tmp_path / "first.log").wait_ready(180)
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    #: Hundreds of tiles on the slow model: still running when the server is killed.
    (images / "big.png").write_bytes(im.png(im.blobs(1024, 1024, seed=5)))
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(client.main(
        [str(images), "--out", str(out), "--url", first.url, "--job-above", "0", "--no-progress",
         "--retry-for", str(POLL_LIMIT_S)])))
    runner.start()
    second = None
    try:
        jobs_dir = tmp_path / "jobs"
        wait_running(first, jobs_dir)
        first.proc.kill()  # a crash: the job is left "running" on disk
        first.stop()
        second = Server(env, tmp_path / "second.log", port=first.port).wait_ready(180)
        runner.join(POLL_LIMIT_S)
        assert not runner.is_alive()
        assert codes == [0]
        assert (out / "big.png").is_file() and not (out / "failures.jsonl").exists()
        assert _jobs_in(jobs_dir) == [], \
            "the interrupted job and the second one are both deleted"
        text = second.client.get("/metrics").text
        assert metric(text, "unet_http_requests_total", route="/jobs", method="POST", status="202") == 1
    finally:
        if second is not None:
            second.stop()
        first.stop()
        runner.join(10)


def wait_running(server: Server, jobs_dir: Path) -> str:
    """The id of the first job (its folder's name) once the server says it has tiles done."""
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        for folder in jobs_dir.iterdir() if jobs_dir.exists() else ():
            status = server.client.get(f"/jobs/{folder.name}")
            if status.status_code == 200:
                record = status.json()
                assert record["status"] in ("queued", "running"), record
                if record["status"] == "running" and record["tiles_done"] > 0:
                    return record["id"]
        time.sleep(0.05)
    raise AssertionError("no job started running")


def ctrl_c_reaches_python() -> None:
    """``preexec_fn`` for a child that is sent Ctrl-C: SIGINT back to its default, so Python turns it
    into KeyboardInterrupt. A shell starts background jobs (``pytest … &``) with SIGINT ignored, the
    children inherit that, and Python then leaves it ignored: the client ran on to the end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_cancels_the_job_on_the_server(tmp_path: Path) -> None:
    slow = write_slow_model(tmp_path / "slow.onnx")
    jobs_dir = tmp_path / "jobs"
    server = Server({"UNET_MODEL_PATH": str(slow), "UNET_MAX_BATCH_SIZE": "1",
                     "UNET_JOBS_DIR": str(jobs_dir)}, tmp_path / "s.log").wait_ready(180)
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    (images / "big.png").write_bytes(im.png(im.blobs(1024, 1024, seed=5)))
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.client", str(images), "--out", str(out), "--url", server.url,
         "--job-above", "0", "--no-progress"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_python,
    )
    try:
        job_id = wait_running(server, jobs_dir)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=POLL_LIMIT_S)
        assert proc.returncode == 130, stderr
        status = server.client.get(f"/jobs/{job_id}").json()
        assert status["status"] == "cancelled", status
        assert not (out / "big.png").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
