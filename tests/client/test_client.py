"""The batch client against stand-in servers: what it sends, retries, skips, writes and reports."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from service import client
from tests.client.conftest import (
    Reply,
    Request,
    png_bytes,
    png_size,
    problem,
    segment_like_the_service,
    write_png,
)

ARGS = ["--no-progress", "--retries", "3"]


def segment(*args: str | Path) -> int:
    return client.main([str(a) for a in args] + ARGS)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """in/a.png (20×10), in/sub/a.png (30×15), in/sub/deeper/b.png (8×8), in/notes.txt."""
    folder = tmp_path / "in"
    write_png(folder / "a.png", 20, 10)
    write_png(folder / "sub" / "a.png", 30, 15)
    write_png(folder / "sub" / "deeper" / "b.png", 8, 8)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_in_masks_out_mirroring_subfolders(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url) == 0
    assert files_under(out) == ["a.png", "sub/a.png", "sub/deeper/b.png"]
    assert png_size((out / "sub" / "a.png").read_bytes()) == (30, 15)
    assert len(server.requests) == 3
    for request in server.requests:
        assert request.path == "/segment"
        assert request.query == {"output": ["mask"]}
        assert request.headers["content-type"] == "image/png"
        assert "x-api-key" not in request.headers


def test_resume_skips_existing_outputs_without_any_request(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url) == 0
    assert len(server.requests) == 3
    (out / "sub" / "a.png").unlink()  # as if the first run had been interrupted before this one

    assert segment(images, "--out", out, "--url", server.url) == 0
    assert len(server.requests) == 4
    assert png_size(server.requests[-1].body) == (30, 15)

    assert segment(images, "--out", out, "--url", server.url) == 0
    assert len(server.requests) == 4

    assert segment(images, "--out", out, "--url", server.url, "--overwrite") == 0
    assert len(server.requests) == 7


@pytest.mark.parametrize("status", [503, 429])
def test_transient_refusal_is_retried_after_retry_after(standin, images: Path, tmp_path: Path,
                                                         status: int) -> None:
    server = standin("a")
    seen: Counter[bytes] = Counter()

    def refuse_each_image_once(request: Request) -> Reply:
        seen[request.body] += 1
        if seen[request.body] == 1:
            reply = problem(status, "Service Unavailable", "model warming up")
            reply.headers["Retry-After"] = "1"
            return reply
        return segment_like_the_service(request)

    server.behaviour = refuse_each_image_once
    out = tmp_path / "out"
    start = time.monotonic()
    assert segment(images, "--out", out, "--url", server.url, "--concurrency", "3") == 0
    assert time.monotonic() - start >= 0.95, "Retry-After: 1 was not honoured"
    assert len(server.requests) == 6
    assert files_under(out) == ["a.png", "sub/a.png", "sub/deeper/b.png"]


def test_bad_file_is_reported_once_and_the_rest_succeed(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    (images / "broken.png").write_bytes(b"this is not a PNG")
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    assert segment(images, "--out", out, "--url", server.url, "--report", report) == 1
    assert files_under(out) == ["a.png", "sub/a.png", "sub/deeper/b.png"]
    assert len(server.requests) == 4, "a permanent 415 must not be retried"
    [record] = [json.loads(line) for line in report.read_text().splitlines()]
    assert record["file"] == str(images / "broken.png")
    assert record["status"] == 415
    assert record["attempts"] == 1
    assert record["detail"] == "the body is not a PNG, TIFF, JPEG or BMP image"
    assert record["title"] == "Unsupported Media Type"

    # Fixed input: the rerun sends only that file, succeeds, and the stale report goes away.
    write_png(images / "broken.png", 5, 5)
    assert segment(images, "--out", out, "--url", server.url, "--report", report) == 0
    assert len(server.requests) == 5
    assert not report.exists()


def test_default_report_lands_in_the_output_folder(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    server.behaviour = lambda request: problem(422, "Unprocessable Content", "output: bad option")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url) == 1
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert files_under(out) == ["failures.jsonl"]


def test_truncated_response_is_retried_and_never_leaves_a_partial_file(standin, images: Path,
                                                                        tmp_path: Path) -> None:
    server = standin("a")

    def cut_off(request: Request) -> Reply:
        reply = segment_like_the_service(request)
        reply.truncate_to = 20
        return reply

    server.behaviour = cut_off
    out = tmp_path / "out"
    assert client.main([str(images), "--out", str(out), "--url", server.url, "--no-progress",
                        "--retries", "1"]) == 1
    assert len(server.requests) == 6  # each image tried twice
    assert files_under(out) == ["failures.jsonl"]  # no mask, no temp file
    record = json.loads((out / "failures.jsonl").read_text().splitlines()[0])
    assert record["status"] is None and "RemoteProtocolError" in record["error"]


def test_atomic_write_leaves_no_temp_file_and_keeps_the_old_output_on_failure(tmp_path: Path,
                                                                              monkeypatch) -> None:
    target = tmp_path / "deep" / "x.png"
    client.write_atomic(target, b"first")
    assert target.read_bytes() == b"first"

    def fail_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(client.os, "replace", fail_replace)
    with pytest.raises(OSError):
        client.write_atomic(target, b"second")
    assert target.read_bytes() == b"first"
    assert files_under(tmp_path) == ["deep/x.png"]


def test_timeout_is_retried(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    slow_once: set[bytes] = set()

    def slow_first_time(request: Request) -> Reply:
        reply = segment_like_the_service(request)
        if request.body not in slow_once:
            slow_once.add(request.body)
            reply.delay_s = 1.0
        return reply

    server.behaviour = slow_first_time
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url, "--timeout", "0.3", "--concurrency", "3") == 0
    assert len(server.requests) == 6


def test_round_robin_uses_every_replica(standin, tmp_path: Path) -> None:
    first, second = standin("a"), standin("b")
    folder = tmp_path / "in"
    for i in range(8):
        write_png(folder / f"img{i}.png", 10 + i, 10)
    out = tmp_path / "out"
    assert segment(folder, "--out", out, "--url", first.url, "--url", second.url, "--concurrency", "2") == 0
    assert len(first.requests) == 4 and len(second.requests) == 4
    assert len(files_under(out)) == 8


def test_a_dead_replica_is_routed_around(standin, tmp_path: Path) -> None:
    alive = standin("a")
    dead = standin("b")
    dead.close()  # its port now refuses connections
    folder = tmp_path / "in"
    for i in range(4):
        write_png(folder / f"img{i}.png", 10 + i, 10)
    assert segment(folder, "--out", tmp_path / "out", "--url", dead.url, "--url", alive.url) == 0
    assert len(alive.requests) == 4


def test_unreachable_service_fails_every_image_with_exit_1(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    server.close()
    out = tmp_path / "out"
    assert client.main([str(images), "--out", str(out), "--url", server.url, "--no-progress",
                        "--retries", "0"]) == 1
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all(r["status"] is None and "ConnectError" in r["error"] for r in records)


def test_api_key_from_environment_is_sent(standin, images: Path, tmp_path: Path, monkeypatch) -> None:
    server = standin("a")
    monkeypatch.setenv("UNET_API_KEY", "s3cret")
    assert segment(images, "--out", tmp_path / "out", "--url", server.url) == 0
    assert {r.headers.get("x-api-key") for r in server.requests} == {"s3cret"}


@pytest.mark.parametrize("kind", ["probability", "overlay", "mask"])
def test_output_kind_is_the_query_value(standin, images: Path, tmp_path: Path, kind: str) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url, "--output", kind) == 0
    assert {r.query["output"][0] for r in server.requests} == {kind}
    assert files_under(out) == ["a.png", "sub/a.png", "sub/deeper/b.png"]


def test_split_is_sent_only_when_asked_for(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    assert segment(images, "--out", tmp_path / "default", "--url", server.url, "--output", "labels") == 0
    assert all("split" not in r.query for r in server.requests)  # the model's own method
    server.requests.clear()
    out = tmp_path / "centre"
    assert segment(images, "--out", out, "--url", server.url, "--output", "labels", "--split", "center") == 0
    assert {r.query["split"][0] for r in server.requests} == {"center"}


def test_labels_in_tiff_are_kept_as_tif_and_count_as_done(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url, "--output", "labels") == 0
    assert files_under(out) == ["a.png", "sub/a.tif", "sub/deeper/b.png"]  # sub/a.png is 30×15 > 400 px
    assert segment(images, "--out", out, "--url", server.url, "--output", "labels") == 0
    assert len(server.requests) == 3, "an output in the alternate format must count as done"


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as f:
        return {row["output"]: row for row in csv.DictReader(f)}


def test_objects_table_per_image_and_folder_summary(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url, "--output", "objects") == 0
    assert {r.query["output"][0] for r in server.requests} == {"objects"}
    assert files_under(out) == ["a.csv", "sub/a.csv", "sub/deeper/b.csv", "summary.csv"]
    summary = read_summary(out)
    assert summary["sub/a.csv"] == {"file": str(images / "sub" / "a.png"), "output": "sub/a.csv",
                                    "count": "2", "mean_area_px": "22.5", "total_area_px": "45.0",
                                    "min_area_px": "15.0", "max_area_px": "30.0"}

    # A resumed run (one new image, nothing else re-sent) still summarises the whole folder.
    write_png(images / "new.png", 6, 4)
    assert segment(images, "--out", out, "--url", server.url, "--output", "objects") == 0
    assert len(server.requests) == 4
    assert sorted(read_summary(out)) == ["a.csv", "new.csv", "sub/a.csv", "sub/deeper/b.csv"]


def test_geojson_per_image_and_summary_areas(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(images, "--out", out, "--url", server.url, "--output", "geojson") == 0
    assert files_under(out) == ["a.geojson", "sub/a.geojson", "sub/deeper/b.geojson", "summary.csv"]
    row = read_summary(out)["a.geojson"]
    assert (row["count"], row["mean_area_px"]) == ("2", "10.0")  # measured 4 and shoelace 16


def test_an_image_named_like_the_summary_is_a_usage_error(standin, tmp_path: Path) -> None:
    server = standin("a")
    write_png(tmp_path / "in" / "summary.png", 4, 4)
    code = segment(tmp_path / "in", "--out", tmp_path / "out", "--url", server.url, "--output", "objects")
    assert code == 2
    assert server.requests == []


def test_glob_mirrors_below_its_fixed_folders(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    out = tmp_path / "out"
    assert segment(f"{images}/sub/**/*.png", "--out", out, "--url", server.url) == 0
    assert files_under(out) == ["a.png", "deeper/b.png"]


def test_colliding_outputs_are_a_usage_error_before_any_request(standin, images: Path,
                                                                tmp_path: Path, capsys) -> None:
    server = standin("a")
    code = segment(images / "a.png", images / "sub" / "a.png", "--out", tmp_path / "out", "--url", server.url)
    assert code == 2
    assert "would both be written to" in capsys.readouterr().err
    assert server.requests == []
    # The same file named twice is not a collision: it is sent once.
    assert segment(images / "a.png", images / "a.png", "--out", tmp_path / "out", "--url", server.url) == 0
    assert len(server.requests) == 1


@pytest.mark.parametrize("argv", [
    ["missing-folder", "--out", "o", "--url", "http://127.0.0.1:9"],
    ["{images}/notes.txt", "--out", "o", "--url", "http://127.0.0.1:9"],
    ["{images}/*.jpg", "--out", "o", "--url", "http://127.0.0.1:9"],
])
def test_inputs_without_images_are_a_usage_error(images: Path, argv: list[str], capsys) -> None:
    assert client.main([a.format(images=images) for a in argv]) == 2
    assert "unet-segment: error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["x.png", "--url", "http://h"],  # no --out (without --url is local mode, not an error)
    ["x.png", "--out", "o", "--url", "localhost:8000"],  # no scheme
    ["x.png", "--out", "o", "--url", "http://h", "--concurrency", "0"],
    ["x.png", "--out", "o", "--url", "http://h", "--output", "bogus"],
    ["x.png", "--out", "o", "--url", "http://h", "--diameter", "twice"],
    ["x.png", "--out", "o", "--url", "http://h", "--diameter", "-3"],
    ["x.tif", "--out", "o", "--url", "http://h", "--output", "ome-zarr", "--diameter", "once"],
])
def test_malformed_command_line_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client.main(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
def test_image_size_is_read_from_the_header(ext: str) -> None:
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    ok, encoded = cv2.imencode(ext, np.zeros((53, 37, 3), np.uint8))
    assert ok
    assert client.image_size(encoded.tobytes()) == (37, 53)
    assert client.image_size(b"not an image") is None


def test_retry_delay_honours_retry_after_and_grows_with_jitter() -> None:
    assert client.retry_delay(1, retry_after=7.0) >= 7.0
    assert client.retry_delay(1, retry_after=10_000.0) == client.RETRY_AFTER_CAP_S
    delays = [client.retry_delay(4, None, base=1.0) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays) and max(delays) > 4.0 and len(set(delays)) > 100
    assert client.parse_retry_after("3") == 3.0
    assert client.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert client.parse_retry_after("soon") is None


def test_importing_the_client_loads_no_inference_stack() -> None:
    heavy = ("onnxruntime", "numpy", "cv2", "torch", "PIL", "fastapi")
    code = f"import sys, service.client; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    assert out.strip() == "[]"


def test_console_script_and_module_both_run(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    script = Path(sys.executable).with_name("unet-segment")
    for i, command in enumerate([[str(script)], [sys.executable, "-m", "service.client"]]):
        out = tmp_path / f"out{i}"
        proc = subprocess.run([*command, str(images), "--out", str(out), "--url", server.url],
                              capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
                              env={**os.environ, "UNET_API_KEY": ""})
        assert proc.returncode == 0, proc.stderr
        assert "3 written, 0 skipped" in proc.stderr
        assert len(files_under(out)) == 3


def test_concurrency_keeps_that_many_requests_in_flight(standin, tmp_path: Path) -> None:
    server = standin("a")
    in_flight, peak, lock = 0, 0, threading.Lock()

    def slow(request: Request) -> Reply:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.2)
        with lock:
            in_flight -= 1
        return segment_like_the_service(request)

    server.behaviour = slow
    folder = tmp_path / "in"
    for i in range(8):
        write_png(folder / f"img{i}.png", 10 + i, 10)
    assert segment(folder, "--out", tmp_path / "out", "--url", server.url, "--concurrency", "4") == 0
    assert peak == 4


def test_diameter_is_sent_only_when_asked_for(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    assert segment(images, "--out", tmp_path / "default", "--url", server.url) == 0
    assert all("diameter" not in r.query for r in server.requests)  # the service estimates per image
    server.requests.clear()
    assert segment(images, "--out", tmp_path / "d", "--url", server.url, "--diameter", "32.5") == 0
    assert {r.query["diameter"][0] for r in server.requests} == {"32.5"}
    with pytest.raises(SystemExit):
        segment(images, "--out", tmp_path / "bad", "--url", server.url, "--diameter", "-3")


def test_plane_options_are_sent_only_when_asked_for(standin, images: Path, tmp_path: Path) -> None:
    server = standin("a")
    assert segment(images, "--out", tmp_path / "default", "--url", server.url) == 0
    chosen_names = {"channel", "z", "t", "project", "pixel_size", "polarity"}
    assert all(not chosen_names & set(r.query) for r in server.requests)
    server.requests.clear()
    out = tmp_path / "chosen"
    assert segment(images, "--out", out, "--url", server.url, "--channel", "DAPI", "--t", "2",
                   "--project", "max", "--pixel-size", "0.65", "--polarity", "dark") == 0
    sent = {(k, v[0]) for r in server.requests for k, v in r.query.items() if k != "output"}
    assert sent == {("channel", "DAPI"), ("t", "2"), ("project", "max"), ("pixel_size", "0.65"),
                    ("polarity", "dark")}


def test_retries_go_on_for_the_retry_window_then_fail(standin, tmp_path: Path) -> None:
    server = standin("a")
    times: list[float] = []

    def always_unavailable(request: Request) -> Reply:
        times.append(time.monotonic())
        return problem(503, "Service Unavailable", "restarting")

    server.behaviour = always_unavailable
    write_png(tmp_path / "in" / "a.png", 8, 8)
    out = tmp_path / "out"
    assert client.main([str(tmp_path / "in"), "--out", str(out), "--url", server.url, "--no-progress",
                        "--retry-for", "1.5"]) == 1
    # No count limit by default: tries go on until the window has passed; the last one is at its end.
    assert len(times) >= 3
    assert times[-1] - times[0] >= 1.5
    record = json.loads((out / "failures.jsonl").read_text())
    assert record["status"] == 503 and record["attempts"] == len(times)


def test_the_retry_window_defaults_to_60_s_and_follows_the_environment(monkeypatch) -> None:
    argv = ["in", "--out", "out", "--url", "http://127.0.0.1:1"]
    monkeypatch.delenv("UNET_RETRY_FOR_S", raising=False)
    config = client.parse_config(argv)
    assert config.retry_for_s == client.RETRY_FOR_S == 60.0 and config.retries is None
    monkeypatch.setenv("UNET_RETRY_FOR_S", "90")
    assert client.parse_config(argv).retry_for_s == 90.0
    assert client.parse_config([*argv, "--retry-for", "5"]).retry_for_s == 5.0
    monkeypatch.setenv("UNET_RETRY_FOR_S", "soon")
    with pytest.raises(SystemExit) as info:
        client.parse_config(argv)
    assert info.value.code == 2


def test_backoff_is_capped_and_never_overflows() -> None:
    delays = [client.retry_delay(attempt, None) for attempt in range(1, 2000)]
    assert all(0.0 <= d <= client.BACKOFF_CAP_S for d in delays)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--url", "http://h"], client.DEFAULT_CONCURRENCY),  # requests in flight
    (["--url", "http://h", "--output", "ome-zarr"], client.DEFAULT_CONCURRENCY),  # jobs on the server
    ([], client.DEFAULT_CONCURRENCY),  # local mode, images in memory
    (["--output", "ome-zarr"], 1),  # local slides: each holds ~2 GB here
    (["--output", "ome-zarr", "--concurrency", "3"], 3),  # unless asked for
])
def test_local_slide_mode_segments_one_slide_at_a_time_unless_told(argv: list[str], expected: int) -> None:
    assert client.parse_config(["in", "--out", "out", *argv]).concurrency == expected


def test_geojson_is_for_slides_and_is_asked_of_the_server(capsys) -> None:
    argv = ["in", "--out", "out", "--url", "http://h"]
    with pytest.raises(SystemExit) as exc:
        client.parse_config([*argv, "--output", "labels", "--geojson"])
    assert exc.value.code == client.EXIT_USAGE and "--output ome-zarr" in capsys.readouterr().err
    config = client.parse_config([*argv, "--output", "ome-zarr", "--geojson"])
    assert config.geojson and client.Segmenter(config).params["geojson"] == "true"
    assert "geojson" not in client.Segmenter(client.parse_config([*argv, "--output", "ome-zarr"])).params


def estimating(diameters: dict[int, str]) -> Callable[[Request], Reply]:
    """The service's size answers: an image without ``diameter=`` is estimated (``diameters`` by
    its width; a width not listed has no nuclei: model scale), one with it is segmented at it."""

    def behaviour(request: Request) -> Reply:
        reply = segment_like_the_service(request)
        sent = request.query.get("diameter")
        width, _ = png_size(request.body)
        if sent:
            extra = {"X-Diameter-Source": "request", "X-Nucleus-Diameter": sent[0]}
        elif width in diameters:
            extra = {"X-Diameter-Source": "estimated", "X-Nucleus-Diameter": diameters[width]}
        else:
            extra = {"X-Diameter-Source": "model-scale"}
        return replace(reply, headers={**reply.headers, **extra})

    return behaviour


def test_diameter_once_sends_the_median_of_the_first_estimates_with_the_rest(standin, tmp_path: Path,
                                                                            capsys) -> None:
    folder = tmp_path / "in"
    for name, width in (("a", 11), ("b", 12), ("c", 13), ("d", 14), ("e", 15)):
        write_png(folder / f"{name}.png", width, 9)
    server = standin("a")
    server.behaviour = estimating({11: "21.5", 12: "9.0", 13: "14.2", 14: "30.0", 15: "30.0"})
    out = tmp_path / "out"
    assert segment(folder, "--out", out, "--url", server.url, "--diameter", "once", "--concurrency", "4") == 0
    by_width = {png_size(r.body)[0]: r.query.get("diameter") for r in server.requests}
    # a, b, c (the first three in output order) are estimated; d and e get their median, 14.2 px
    assert by_width == {11: None, 12: None, 13: None, 14: ["14.2"], 15: ["14.2"]}
    assert [png_size(r.body)[0] for r in server.requests][3:] in ([14, 15], [15, 14])  # after the three
    err = capsys.readouterr().err
    assert "nucleus diameter 14.2 px for the batch (estimated on a.png, b.png, c.png)" in err
    assert "5 written" in err and "--diameter 14.2 reuses it" in err


def test_diameter_once_without_any_estimate_leaves_every_image_its_own(standin, tmp_path: Path,
                                                                      capsys) -> None:
    folder = tmp_path / "in"
    for name, width in (("a", 11), ("b", 12), ("c", 13), ("d", 14)):
        write_png(folder / f"{name}.png", width, 9)
    server = standin("a")
    server.behaviour = estimating({14: "20.0"})  # the first three are empty fields
    assert segment(folder, "--out", tmp_path / "out", "--url", server.url, "--diameter", "once") == 0
    assert all("diameter" not in r.query for r in server.requests) and len(server.requests) == 4
    err = capsys.readouterr().err
    assert "no nucleus diameter was estimated on the first 3 image(s)" in err
    assert "for the batch" not in err
    # Resumed with everything written: nothing to estimate on, nothing said about it.
    assert segment(folder, "--out", tmp_path / "out", "--url", server.url, "--diameter", "once") == 0
    err = capsys.readouterr().err
    assert len(server.requests) == 4 and "0 written, 4 skipped" in err and "diameter" not in err


def write_movie(path: Path, frames: int) -> Path:
    """An ImageJ TIFF movie (T, Y, X) of 16-bit frames, each of its own brightness."""
    import numpy as np
    import tifffile

    movie = np.stack([np.full((6, 9), 1000 * (k + 1), np.uint16) for k in range(frames)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX"})
    return path


def test_t_all_sends_each_time_point_of_a_movie_and_names_its_outputs(standin, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_movie(folder / "movie.tif", 11)
    write_png(folder / "still.png", 20, 10)  # one time point: sent and named as without --t all
    server = standin("a")

    def answer(request: Request) -> Reply:  # the stand-in reads PNGs only: a mask for a frame
        if request.body.startswith(b"II*"):
            return Reply(200, {"Content-Type": "image/png", "X-Object-Count": "1"}, png_bytes(9, 6, 255))
        return segment_like_the_service(request)

    server.behaviour = answer
    out = tmp_path / "out"
    assert segment(folder, "--out", out, "--url", server.url, "--t", "all", "--channel", "0") == 0
    sent = sorted((r.body[:3], r.query.get("t", [None])[0], r.query["channel"][0]) for r in server.requests)
    assert sent == sorted([(b"II*", str(k), "0") for k in range(11)] + [(b"\x89PN", None, "0")])
    # Each frame's request carries that frame's page alone (service.frames), read by the service's
    # own reader at the t= sent, as the movie would be.
    from service import microscopy

    for request in server.requests:
        if request.body.startswith(b"II*"):
            t = int(request.query["t"][0])
            assert microscopy.count_tiff_pages(request.body, 100) == 1
            frame = microscopy.select(request.body, microscopy.Selection(channel="0", t=t), 10**6, 100)
            assert (frame.image == 1000 * (t + 1)).all() and frame.layout.planes == {"T": 11}
    assert files_under(out) == [f"movie_t{k:02d}.png" for k in range(11)] + ["still.png"]
    # a rerun finds every plane written: nothing is sent again
    server.requests.clear()
    assert segment(folder, "--out", out, "--url", server.url, "--t", "all", "--channel", "0") == 0
    assert server.requests == []


def test_a_failed_frame_is_reported_with_its_time_point(standin, tmp_path: Path, capsys) -> None:
    write_movie(tmp_path / "in" / "movie.tif", 3)
    server = standin("a")

    def answer(request: Request) -> Reply:
        if request.query["t"][0] == "1":
            return problem(422, "Invalid options", "a frame this server refuses")
        return Reply(200, {"Content-Type": "image/png", "X-Object-Count": "1"}, png_bytes(9, 6, 255))

    server.behaviour = answer
    out = tmp_path / "out"
    assert segment(tmp_path / "in", "--out", out, "--url", server.url, "--t", "all") == 1
    assert "movie.tif t=1: HTTP 422" in capsys.readouterr().err
    (record,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert (Path(record["file"]).name, record["t"], record["status"]) == ("movie.tif", 1, 422)
    assert files_under(out) == ["failures.jsonl", "movie_t0.png", "movie_t2.png"]


def test_z_all_makes_a_job_per_slice_that_sharding_splits(tmp_path: Path) -> None:
    kind = client.OUTPUT_KINDS["mask"]
    found = [(tmp_path / "stack.tif", Path("plate/stack.tif")), (tmp_path / "one.tif", Path("one.tif"))]
    planes = {"stack.tif": 3, "one.tif": 1}
    jobs = client.plan_jobs(found, tmp_path / "out", kind, "z", lambda source, axis: planes[source.name])
    assert [(j.target.relative_to(tmp_path / "out").as_posix(), j.plane) for j in jobs] == [
        ("plate/stack_z0.png", (("z", 0),)), ("plate/stack_z1.png", (("z", 1),)),
        ("plate/stack_z2.png", (("z", 2),)), ("one.png", ()),
    ]
    halves = [client.shard_jobs(jobs, tmp_path / "out", client.Shard(i, 2)) for i in range(2)]
    assert sorted(j.target for half in halves for j in half) == sorted(j.target for j in jobs)
    # a plane's name that another file already has is a collision, as for any two files
    clash = [*found, (tmp_path / "x.png", Path("plate/stack_z1.png"))]
    with pytest.raises(client.UsageError, match="would both be written"):
        client.plan_jobs(clash, tmp_path / "out", kind, "z", lambda source, axis: planes.get(source.name, 1))


def test_count_planes_reads_the_header_as_the_service_does(tmp_path: Path) -> None:
    movie = write_movie(tmp_path / "movie.tif", 4)
    assert client.count_planes(movie, "t") == 4 and client.count_planes(movie, "z") == 1
    assert client.count_planes(write_png(tmp_path / "a.png", 5, 5), "t") == 1
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really")
    assert client.count_planes(broken, "t") == 1  # it fails as one job, with the service's reason


def test_count_planes_counts_the_chosen_image_of_a_file_holding_several(tmp_path: Path) -> None:
    """``--series 1 --t all``: the time points of image 1, not of the first image."""
    import numpy as np

    from tests.lif_files import Image, lif_bytes

    project = tmp_path / "session.lif"
    project.write_bytes(lif_bytes([Image("overview", np.zeros((8, 8), np.uint8)),
                                   Image("movie", np.zeros((3, 8, 8), np.uint8), "TYX")]))
    assert client.count_planes(project, "t") == 1
    assert client.count_planes(project, "t", series=1) == 3
    assert client.count_planes(project, "series") == client.count_planes(project, "series", series=1) == 2
    assert client.count_planes(project, "t", series=2) == 1  # no such image: one job, the service says why


@pytest.mark.parametrize("argv", [
    ["--t", "all", "--z", "all"],
    ["--z", "all", "--project", "max"],
    ["--t", "all", "--output", "ome-zarr"],
    ["--t", "every"],
])
def test_all_planes_options_that_contradict_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client.parse_config(["x.tif", "--out", "o", *argv])
    assert exc.value.code == 2


def test_all_planes_config_sends_no_index_for_that_axis() -> None:
    config = client.parse_config(["x.tif", "--out", "o", "--t", "all", "--z", "3"])
    assert (config.every_plane, config.t, config.z) == ("t", None, 3)


def test_the_summary_averages_each_measured_channel_over_an_images_objects(tmp_path: Path) -> None:
    table = (b"id,area,mean_intensity,mean_intensity_GFP,integrated_intensity_GFP,"
             b"mean_intensity_cytoplasm_GFP\n1,10,5,100,1000,20\n2,30,7,300,9000,\n")
    values = client._csv_values(table)
    assert values.areas == [10.0, 30.0]
    # the segmented channel's own mean is not a measured one; a cell without cytoplasm is left out
    assert values.measured == {"mean_intensity_GFP": [100.0, 300.0], "mean_intensity_cytoplasm_GFP": [20.0]}
    geojson = json.dumps({"features": [
        {"geometry": None, "properties": {"measurements": {"Area px^2": 4, "mean_intensity_c1": 2.5}}},
        {"geometry": None, "properties": {"measurements": {"Area px^2": 6, "mean_intensity_c1": 3.5}}},
    ]}).encode()
    expected = client.ObjectValues([4.0, 6.0], {"mean_intensity_c1": [2.5, 3.5]})
    assert client._geojson_values(geojson) == expected

    jobs = [client.Job(tmp_path / f"{name}.tif", tmp_path / "out" / f"{name}.csv") for name in ("a", "b")]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.csv").write_bytes(table)
    (tmp_path / "out" / "b.csv").write_bytes(b"id,area,mean_intensity\n1,8,3\n")  # nothing measured
    rows = client.object_summary(jobs, client.OUTPUT_KINDS["objects"], tmp_path / "out")
    client.write_object_summary(tmp_path / "out" / "summary.csv", rows)
    summary = read_summary(tmp_path / "out")
    assert (summary["a.csv"]["mean_intensity_GFP"], summary["a.csv"]["mean_intensity_cytoplasm_GFP"]) == (
        "200.0", "20.0")
    assert summary["b.csv"]["mean_intensity_GFP"] == "" and summary["b.csv"]["count"] == "1"


def test_project_sum_and_the_measure_options_reach_the_config(tmp_path: Path) -> None:
    argv = [str(tmp_path), "--out", str(tmp_path / "out"), "--url", "http://127.0.0.1:9"]
    config = client.parse_config([*argv, "--output", "objects", "--project", "max", "--measure", "GFP,2",
                                  "--measure-project", "sum", "--expand", "4"])
    assert (config.project, config.measure, config.expand) == ("max", "GFP,2", 4.0)
    assert config.measure_project == "sum"
    stitched = client.parse_config([*argv, "--output", "labels", "--z", "all", "--stitch-z", "--expand", "4"])
    assert stitched.expand == 4.0 and stitched.stitch_z is not None  # grown in 3-D when linking
    for refused in (["--measure-project", "sum"],  # nothing measured
                    ["--output", "ome-zarr", "--measure", "1", "--measure-project", "sum"],  # a slide
                    ["--output", "labels", "--expand", "4"],  # cells need a table, or 3-D labels
                    ["--output", "mask", "--expand", "4"]):
        with pytest.raises(SystemExit):
            client.parse_config([*argv, *refused])
    with pytest.raises(SystemExit):
        client.parse_config([*argv, "--project", "mean"])


def test_background_ring_reaches_the_request_and_needs_measured_channels_in_a_table(tmp_path: Path) -> None:
    argv = [str(tmp_path), "--out", str(tmp_path / "out"), "--url", "http://127.0.0.1:9"]
    for kind in ("objects", "geojson", "ome-zarr"):
        config = client.parse_config([*argv, "--output", kind, "--measure", "GFP", "--background-ring", "6"])
        assert config.background_ring == 6.0
        assert client.Segmenter(config).params["background_ring"] == "6"
    plain = client.parse_config([*argv, "--output", "objects", "--measure", "GFP"])
    assert "background_ring" not in client.Segmenter(plain).params
    for refused in (["--output", "objects", "--background-ring", "6"],  # nothing measured
                    ["--output", "ome-zarr", "--background-ring", "6"],  # a slide with nothing measured
                    ["--output", "labels", "--measure", "1", "--background-ring", "6"],  # no table
                    ["--output", "labels", "--z", "all", "--stitch-z", "--measure", "1",  # 3-D
                     "--background-ring", "6"],
                    ["--output", "objects", "--measure", "1", "--background-ring", "0"],
                    ["--output", "objects", "--measure", "1", "--background-ring", "501"]):
        with pytest.raises(SystemExit):
            client.parse_config([*argv, *refused])


def test_what_screening_instruments_write_beside_the_images_is_left_out(tmp_path: Path) -> None:
    # MetaXpress writes an 80x64 squashed thumbnail beside each image, and a Yokogawa CellVoyager
    # its dark-current and shading-correction frames in the measurement folder (real plates of
    # both, from faim-ipa's test data: 96 of 192 "images" were thumbnails, counted as nuclei).
    plate = tmp_path / "plate"
    cv = tmp_path / "cv8000"
    other = tmp_path / "other"
    for folder in (plate, cv, other):
        folder.mkdir()
    for name in ("P_E07_s1_w1E94C24BD-45E4-450A-9919-257C714278F7.tif",
                 "P_E07_s1_w1_thumb4BFD4018-E675-475E-B5AB-2E959E6B6DA1.tif"):
        (plate / name).write_bytes(b"II*\x00")
    for name in ("W_B02_T0001F001L01A01Z01C01.tif", "DC_DCAM#1_CAM3.tif", "SC_BP445-45_20x v2_M01_CH01.tif"):
        (cv / name).write_bytes(b"II*\x00")
    (cv / "MeasurementDetail.mrf").write_text("<bts:MeasurementDetail/>")
    (other / "DC_current.tif").write_bytes(b"II*\x00")  # no CellVoyager folder: an image like any
    left_out: dict[str, int] = {}
    found = client.find_images([str(tmp_path)], left_out=left_out)
    assert sorted(relative.name for _, relative in found) == [
        "DC_current.tif", "P_E07_s1_w1E94C24BD-45E4-450A-9919-257C714278F7.tif",
        "W_B02_T0001F001L01A01Z01C01.tif",
    ]
    assert sorted(left_out.values()) == [1, 2] and any("thumbnail" in k for k in left_out)
    thumbnail = plate / "P_E07_s1_w1_thumb4BFD4018-E675-475E-B5AB-2E959E6B6DA1.tif"
    assert [source for source, _ in client.find_images([str(thumbnail)])] == [thumbnail]  # named: taken


def test_only_a_named_channel_missing_from_images_naming_others_leaves_them_alone() -> None:
    job = client.Job(Path("w2.tif"), Path("out/w2.png"))

    def refused(channels: list, loc: list | None = None) -> client.Result:
        problem = {"type": "/problems/invalid-options", "errors": [{"loc": loc or ["query", "channel"]}],
                   "choices": {"channels": channels}}
        return client.Result(job, ok=False, status=422, problem=problem)

    assert client.of_other_channels(refused([{"index": 0, "name": "FITC"}]), "DAPI")
    assert not client.of_other_channels(refused([{"index": 0, "name": None}]), "DAPI")  # unnamed: a typo?
    assert not client.of_other_channels(refused([{"index": 0, "name": "FITC"}]), "3")  # an index
    assert not client.of_other_channels(refused([{"index": 0, "name": "FITC"}], ["query", "z"]), "DAPI")
    assert not client.of_other_channels(refused([{"index": 0, "name": "FITC"}]), None)


def test_a_shard_of_other_channels_only_leaves_them_alone_not_failed() -> None:
    # A shard's share of a plate may hold only FITC files (s1_w1, s1_w2 sort side by side and every
    # second one is taken): no image there has DAPI, and that is no typo to fail on.
    job = client.Job(Path("s1_w2.tif"), Path("out/s1_w2.png"))
    problem = {"type": "/problems/invalid-options", "errors": [{"loc": ["query", "channel"]}],
               "choices": {"channels": [{"index": 0, "name": "FITC"}]}}
    refused = client.Result(job, ok=False, status=422, problem=problem, error="no channel 'DAPI'")

    class Bar:
        def write(self, text: str, file=None) -> None:
            said.append(text)

    for sharded, failed in ((True, 0), (False, 1)):
        said: list[str] = []
        summary = client.Summary(other_channels=[refused])
        client.settle_other_channels(summary, Bar(), sharded=sharded)
        assert len(summary.failures) == failed and len(summary.other_channels) == 1 - failed, said
