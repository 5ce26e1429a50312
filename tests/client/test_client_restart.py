"""A replica restart loses nothing: ``unet-segment`` against a real service that is killed mid-run
and started again on the same port a few seconds later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.api import _images as im
from tests.server import REPO, Server

IMAGES = 10


def test_a_server_killed_mid_run_and_restarted_loses_no_image(tmp_path: Path) -> None:
    cv2 = __import__("cv2")
    np = __import__("numpy")
    model = im.write_slow_model(tmp_path / "slow.onnx")  # ~12 ms per 64-px tile: requests last a while
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(IMAGES):
        (folder / f"img{i:02d}.png").write_bytes(im.png(im.blobs(192, 192, seed=i)))
    env = {"UNET_MODEL_PATH": str(model), "UNET_MAX_BATCH_SIZE": "1"}
    first = Server(env, tmp_path / "first.log").wait_ready()
    client_env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    # The default window (60 s) outlasts a restart on an idle machine; a loaded test machine may
    # take longer to start a Python process, and this test is about the mechanism, not the number.
    client_env["UNET_RETRY_FOR_S"] = "300"
    run = subprocess.Popen(
        [sys.executable, "-m", "service.client", str(folder), "--out", str(out), "--url", first.url,
         "--no-progress", "--concurrency", "2"],
        cwd=REPO, env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    second = None
    try:
        while not list(out.glob("*.png")) and run.poll() is None:
            time.sleep(0.02)
        first.proc.send_signal(signal.SIGKILL)  # no drain: in-flight requests die with it
        first.proc.wait()
        done_at_kill = len(list(out.glob("*.png")))
        assert 0 < done_at_kill < IMAGES, f"{done_at_kill} of {IMAGES} done when the server was killed"
        time.sleep(3)
        second = Server(env, tmp_path / "second.log", port=first.port).wait_ready()
        stdout, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        first.stop()
        if second is not None:
            second.stop()
    assert run.returncode == 0, stderr
    assert f"{IMAGES} written, 0 skipped (already there), 0 failed" in stderr, stderr
    assert not (out / "failures.jsonl").exists()
    assert sorted(p.name for p in out.iterdir()) == [f"img{i:02d}.png" for i in range(IMAGES)]
    for path in out.iterdir():
        mask = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (192, 192), path.name
    # The images not finished before the kill were segmented by the restarted process.
    assert second.log().count("POST /segment 200") >= IMAGES - done_at_kill
