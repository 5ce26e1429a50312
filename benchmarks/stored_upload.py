"""What a large file costs the server when it is stored once (``POST /uploads``) and named with
``upload=<id>``, against the same requests each sending the file (as the web page did).

    .venv/bin/python benchmarks/stored_upload.py [--images 8] [--slices 10] [--size 1024]

Writes a LAS X-style project (``tests/lif_files.py``: ``--images`` images of 2 channels ×
``--slices`` z-slices × size², uint16) and starts two real servers (``python -m service``, the
bundled model, upload limit raised above the project for the "sent" side). On each, the web page's
four requests for one image — ``/probe``, ``/ui/preview``, ``/segment`` (probability) and
``/segment`` (GeoJSON) of the last image's channel 1, middle slice — are made once by sending the
file each time, and once by storing it first and naming it. Per side: bytes sent, wall time, and
the server's peak resident memory (``VmHWM``; each side has its own fresh server, so the peaks do
not mix). Loopback: the time to send is that of a copy, not of a network; on a real link the
bytes sent are what count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lif_files import Image, lif_bytes  # noqa: E402
from tests.server import Server  # noqa: E402


def peak_rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def requests_for_one_image(client: httpx.Client, send: dict, plane: dict) -> None:
    """The web page's four requests for the image shown (``send``: the body, or upload=)."""
    params = send.get("params", {})
    body = {k: v for k, v in send.items() if k != "params"}
    for path, extra in (("/probe", {"series": plane["series"]}), ("/ui/preview", plane),
                        ("/segment", {**plane, "output": "probability", "bits": "8"}),
                        ("/segment", {**plane, "output": "geojson"})):
        r = client.post(path, params={**params, **extra}, **body)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "session.lif"
        images = []
        for k in range(args.images):
            stack = rng.integers(0, 4096, (args.slices, 2, args.size, args.size), dtype=np.uint16)
            images.append(Image(f"Series{k + 1:03d}", stack, "ZCYX", ("Green", "Blue"), 0.3, z_um=1.0))
        path.write_bytes(lif_bytes(images))
        del images
        size = path.stat().st_size
        plane = {"series": str(args.images - 1), "channel": "1", "z": str(args.slices // 2), "diameter": "20"}
        env = {"UNET_MAX_UPLOAD_BYTES": str(size + 1), "UNET_INTRA_OP_THREADS": "2",
               "UNET_PREDICTION_CACHE_MB": "256"}
        rows = []
        for side in ("sent each time", "stored once"):
            server = Server({**env, "UNET_JOBS_DIR": str(Path(folder) / f"jobs-{len(rows)}")},
                            Path(folder) / f"server-{len(rows)}.log").wait_ready()
            try:
                client = httpx.Client(base_url=server.url, timeout=600)
                idle = peak_rss_mib(server)
                data = path.read_bytes()
                started = time.perf_counter()
                if side == "stored once":
                    stored = client.post("/uploads", content=data,
                                         headers={"Content-Type": "application/octet-stream"})
                    assert stored.status_code == 201, stored.text
                    sent = size
                    requests_for_one_image(client, {"params": {"upload": stored.json()["id"]}}, plane)
                else:
                    sent = 4 * size
                    requests_for_one_image(client, {"content": data, "headers": {
                        "Content-Type": "application/octet-stream"}}, plane)
                seconds = time.perf_counter() - started
                rows.append((side, sent / 2**20, seconds, idle, peak_rss_mib(server)))
                client.close()
            finally:
                server.stop()
    print(f"project: {size / 2**20:.0f} MiB ({args.images} images × 2 ch × {args.slices} z × {args.size}²)\n")
    print("| the page's 4 requests for one image | MiB sent | s | server RSS idle → peak (MiB) |")
    print("|---|---|---|---|")
    for side, mib, seconds, idle, peak in rows:
        print(f"| {side} | {mib:.0f} | {seconds:.1f} | {idle:.0f} → {peak:.0f} |")


if __name__ == "__main__":
    main()
