"""Stack jobs on a real server: ``POST /jobs?output=labels3d`` on a calibrated ImageJ z-stack →
the 3-D labels and per-nucleus table ``Segmenter.segment_stack`` gives for the same file, served as
files and as one ZIP; and the refusals around it (at submission, not as failed jobs)."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.segmentation import expand_labels

from model_export.synth_stack import StackConfig, synth_stack
from service.api import Segmenter
from service.settings import DEFAULT_MODEL_PATH
from tests.api import _images as im
from tests.api.test_admission import BUDGET, holding_the_large_lane
from tests.api.test_auth_metrics import metric, metric_or_zero
from tests.api.test_jobs import finished, wait_until
from tests.server import Server
from tests.unit.test_segment import synthetic_nuclei

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the bundled model is not here")

CONFIG = StackConfig(depth=12, size=128, nuclei=10)
XY_UM, Z_UM = 0.5, 1.5
TIFF = {"Content-Type": "image/tiff"}


def imagej_bytes(image: np.ndarray, axes: str = "ZYX") -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, resolution=(1 / XY_UM, 1 / XY_UM),
                     metadata={"axes": axes, "spacing": Z_UM, "unit": "um"})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack_tiff() -> bytes:
    image, _ = synth_stack(5, CONFIG)
    return imagej_bytes(image)


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack-jobs")


@pytest.fixture(scope="module")
def stack_server(start_server, jobs_dir: Path, stack_tiff: bytes, tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("data-root")
    (root / "stacks").mkdir()
    (root / "stacks" / "cells.tif").write_bytes(stack_tiff)
    (root / "stacks" / "flat.png").write_bytes(im.png(synthetic_nuclei(96, 96, seed=4)))
    for position, data in enumerate(_positions(stack_tiff)):  # a Micro-Manager acquisition, a file a position
        (root / "stacks" / f"cells_MMStack_Pos{position}.ome.tif").write_bytes(data)
    env = {"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_JOBS_DIR": str(jobs_dir),
           "UNET_DATA_ROOT": str(root)}
    return start_server(env).wait_ready()


def _positions(stack_tiff: bytes) -> list[bytes]:
    """Two stage positions of a Micro-Manager z-stack acquisition (``tests.vendor_tiffs.mmstack_bytes``):
    the ImageJ stack's slices, and the same slices mirrored left to right."""
    from tests.vendor_tiffs import mmstack_bytes

    stack = tifffile.imread(io.BytesIO(stack_tiff)).astype(np.uint16)
    summary = {"Prefix": "cells", "MicroManagerVersion": "2.0.0", "Channels": 1, "Slices": len(stack),
               "Frames": 1, "Positions": 2, "PixelSize_um": XY_UM, "z-step_um": Z_UM,
               "StagePositions": [{"Label": "Pos0"}, {"Label": "Pos1"}]}
    return [mmstack_bytes({(0, z, 0): plane for z, plane in enumerate(slices)}, position, summary)
            for position, slices in enumerate((stack, stack[:, :, ::-1]))]


def run_job(server: Server, body: bytes, params: dict[str, str]) -> tuple[str, dict]:
    query = {"output": "labels3d", **params}
    submitted = server.client.post("/jobs", content=body, headers=TIFF, params=query)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    return job_id, wait_until(server.client, job_id, finished)


def uploaded_and_by_path(server: Server, body: bytes, path: str, params: dict[str, str]) -> tuple[str, str]:
    """The ids of two stack jobs that succeeded on the same stack: ``body`` uploaded, and the file at
    ``path`` under the server's data root."""
    uploaded, status = run_job(server, body, params)
    assert status["status"] == "succeeded", status
    by_path = server.client.post("/jobs", json={"path": path, "output": "labels3d", **params})
    assert by_path.status_code == 202, by_path.text
    assert wait_until(server.client, by_path.json()["id"], finished)["status"] == "succeeded"
    return uploaded, by_path.json()["id"]


def test_a_stack_job_gives_the_3d_nuclei_the_python_api_finds(
    stack_server: Server, stack_tiff: bytes, jobs_dir: Path
) -> None:
    client = stack_server.client
    job_id, status = run_job(stack_server, stack_tiff, {"tile_size": "512"})
    assert status["status"] == "succeeded", status
    # Progress counts the whole stack's tiles, every slice's: one tile a slice here.
    assert status["tiles_done"] == status["tiles_total"] == CONFIG.depth

    result = client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200 and result.headers["content-type"].startswith("application/json")
    summary = result.json()
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        expected = segmenter.segment_stack(stack_tiff, tile_size=512)
    assert (summary["depth"], summary["height"], summary["width"]) == (CONFIG.depth, CONFIG.size, CONFIG.size)
    assert summary["objects"] == expected.object_count == int(result.headers["X-Object-Count"])
    assert 5 <= summary["objects"] <= 15  # ten nuclei, once each (per slice they would be ~100 objects)
    assert summary["voxel_size_um"] == {"x": XY_UM, "y": XY_UM, "z": Z_UM}
    assert summary["diameter_source"] == "estimated" == result.headers["X-Diameter-Source"]
    assert summary["nucleus_diameter"] == pytest.approx(expected.diameter, abs=0.01)
    assert summary["min_iou"] == 0.25
    assert summary["objects_reaching_stack_ends"] == sum(r["touches_stack_end"] for r in expected.objects)

    labels = client.get(summary["labels_url"])
    assert labels.status_code == 200 and labels.headers["content-type"] == "image/tiff"
    with tifffile.TiffFile(io.BytesIO(labels.content)) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.imagej_metadata["spacing"] == pytest.approx(Z_UM)
        stacked = tif.asarray()
    assert stacked.dtype == np.uint16
    np.testing.assert_array_equal(stacked, expected.labels)

    table = client.get(summary["objects_url"])
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    assert table.text == expected.objects_csv()
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert float(rows[0]["volume_um3"]) == pytest.approx(int(rows[0]["volume_voxels"]) * XY_UM * XY_UM * Z_UM,
                                                         rel=1e-3)

    archive = client.get(summary["zip_url"])
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        assert sorted(zipped.namelist()) == ["labels3d.tif", "objects3d.csv"]
        assert zipped.read("objects3d.csv").decode() == table.text
        assert zipped.read("labels3d.tif") == labels.content
    # Only the two results are served; the job's folder holds nothing else of the run.
    assert client.get(f"/jobs/{job_id}/files/status.json").status_code == 404
    folder = jobs_dir / job_id
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("status")) == [
        "labels3d.tif", "objects3d.csv", "result"]


def test_the_given_diameter_and_min_iou_are_used(stack_server: Server, stack_tiff: bytes) -> None:
    job_id, status = run_job(stack_server, stack_tiff, {"diameter": "16", "min_iou": "0.9"})
    assert status["status"] == "succeeded", status
    summary = stack_server.client.get(f"/jobs/{job_id}/result").json()
    assert summary["nucleus_diameter"] == 16 and summary["min_iou"] == 0.9
    assert summary["diameter_source"] == "request"
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        strict = segmenter.segment_stack(stack_tiff, diameter=16, min_iou=0.9)
        usual = segmenter.segment_stack(stack_tiff, diameter=16)
    # A link needing 90 % overlap breaks most nuclei into pieces: more objects, as the API counts.
    assert summary["objects"] == strict.object_count > usual.object_count


def test_a_stack_under_the_data_root_is_read_by_path(stack_server: Server, stack_tiff: bytes) -> None:
    client = stack_server.client
    by_path = client.post("/jobs", json={"path": "stacks/cells.tif", "output": "labels3d", "diameter": 16})
    assert by_path.status_code == 202, by_path.text
    status = wait_until(client, by_path.json()["id"], finished)
    assert status["status"] == "succeeded", status
    assert status["options"]["output"] == "labels3d" and status["options"]["path"] == "stacks/cells.tif"
    uploaded_id, _ = run_job(stack_server, stack_tiff, {"diameter": "16"})
    jobs = (by_path.json()["id"], uploaded_id)
    files = [client.get(f"/jobs/{job}/files/objects3d.csv").text for job in jobs]
    assert files[0] == files[1] and files[0].count("\n") > 5
    refused = client.post("/jobs", json={"path": "stacks/cells.tif", "output": "labels3d", "z": 2})
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"][-1] == "z"
    # A PNG is no file to read slice by slice: read whole, as an upload, a stack of one slice.
    flat = client.post("/jobs", json={"path": "stacks/flat.png", "output": "labels3d"})
    assert flat.status_code == 202, flat.text
    assert wait_until(client, flat.json()["id"], finished)["status"] == "succeeded"
    assert client.get(f"/jobs/{flat.json()['id']}/result").json()["depth"] == 1


def test_a_micro_manager_positions_stack_is_read_by_path_at_its_own_position_or_the_one_chosen(
    stack_server: Server, stack_tiff: bytes
) -> None:
    """Each file of a multi-position acquisition is a position; tifffile reads the files beside it as
    well, which made every one of them a 415 by path ("an axis 'R'")."""
    params = {"diameter": "16"}
    tables = {}
    for position, data in enumerate(_positions(stack_tiff)):
        uploaded, _ = run_job(stack_server, data, params)  # an upload is its own position
        tables[position] = stack_server.client.get(f"/jobs/{uploaded}/files/objects3d.csv").text
    assert tables[0] != tables[1] and tables[0].count("\n") > 5
    for path, series, expected in (("cells_MMStack_Pos1.ome.tif", None, 1),
                                   ("cells_MMStack_Pos1.ome.tif", 0, 0)):
        body = {"path": f"stacks/{path}", "output": "labels3d", **params}
        if series is not None:
            body["series"] = series
        submitted = stack_server.client.post("/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        assert wait_until(stack_server.client, submitted.json()["id"], finished)["status"] == "succeeded"
        table = stack_server.client.get(f"/jobs/{submitted.json()['id']}/files/objects3d.csv").text
        assert table == tables[expected]


def test_a_stored_stack_is_read_where_it_is_stored(stack_server: Server, stack_tiff: bytes) -> None:
    """A stack stored once (POST /uploads) and named by upload=: the same 3-D nuclei as uploaded."""
    client = stack_server.client
    stored = client.post("/uploads", content=stack_tiff, headers=TIFF)
    assert stored.status_code == 201, stored.text
    job = client.post("/jobs", params={"upload": stored.json()["id"], "output": "labels3d", "diameter": "16"})
    assert job.status_code == 202, job.text
    assert wait_until(client, job.json()["id"], finished)["status"] == "succeeded"
    uploaded_id, _ = run_job(stack_server, stack_tiff, {"diameter": "16"})
    files = [client.get(f"/jobs/{j}/files/objects3d.csv").text for j in (job.json()["id"], uploaded_id)]
    assert files[0] == files[1] and files[0].count("\n") > 5
    refused = client.post("/jobs", params={"upload": stored.json()["id"], "output": "labels3d", "z": 2})
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"][-1] == "z"


def test_an_image_without_z_is_a_stack_of_one_slice(stack_server: Server) -> None:
    job_id, status = run_job(stack_server, im.png(synthetic_nuclei(96, 96, seed=4)), {})
    assert status["status"] == "succeeded", status
    summary = stack_server.client.get(f"/jobs/{job_id}/result").json()
    assert summary["depth"] == 1 and summary["objects"] > 0
    assert summary["objects_reaching_stack_ends"] == summary["objects"]
    assert summary["voxel_size_um"] is None


def test_what_a_stack_job_cannot_do_is_refused_at_submission(stack_server: Server, stack_tiff: bytes) -> None:
    client = stack_server.client
    for query, named in (({"z": "3"}, ["z"]), ({"project": "max"}, ["project"])):
        r = client.post("/jobs", content=stack_tiff, headers=TIFF, params={"output": "labels3d", **query})
        assert r.status_code == 422, r.text
        assert [e["loc"][-1] for e in r.json()["errors"]] == named
        assert "segments every z-slice" in r.json()["detail"]
    r = client.post("/segment", content=stack_tiff, headers=TIFF, params={"z": "3", "min_iou": "0.5"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "min_iou"]
    r = client.post("/segment", content=stack_tiff, headers=TIFF, params={"output": "labels3d"})
    assert r.status_code == 422 and "POST /jobs?output=labels3d" in r.json()["detail"]
    # Two channels and none chosen: the choice is asked for now, with the choices, not as a failed job.
    image, _ = synth_stack(5, StackConfig(depth=4, size=64, nuclei=3))
    two_channels = imagej_bytes(np.stack([image, image // 2], axis=1), axes="ZCYX")
    r = client.post("/jobs", content=two_channels, headers=TIFF, params={"output": "labels3d"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "channel"] and r.json()["choices"]["channels"]
    chosen = {"output": "labels3d", "channel": "1"}
    r = client.post("/jobs", content=two_channels, headers=TIFF, params=chosen)
    assert r.status_code == 202
    status = wait_until(client, r.json()["id"], finished)
    assert status["status"] == "succeeded", status


def test_a_stack_sent_for_one_plane_is_told_of_the_stack_job(stack_server: Server, stack_tiff: bytes) -> None:
    r = stack_server.client.post("/segment", content=stack_tiff, headers=TIFF)
    assert r.status_code == 422 and "POST /jobs?output=labels3d" in r.json()["detail"]


def test_a_stack_whose_slices_the_jobs_folder_has_no_room_for_is_refused_at_submission(
    start_server, stack_tiff: bytes, tmp_path: Path
) -> None:
    """The stitched slices wait in a scratch file (4 bytes a voxel: 786,432 here) while the job
    runs: a folder with room for the upload but not for that is a 507 now, not a failed job."""
    jobs = tmp_path / "jobs"
    server = start_server({"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_JOBS_DIR": str(jobs),
                           "UNET_JOBS_MAX_BYTES": str(len(stack_tiff) + 300_000)}).wait_ready()
    r = server.client.post("/jobs", content=stack_tiff, headers=TIFF, params={"output": "labels3d"})
    assert r.status_code == 507, r.text
    assert "786,432 bytes" in r.json()["detail"] and r.headers["Retry-After"]
    assert [p for p in jobs.iterdir() if not p.name.startswith(".")] == []  # nothing kept
    # The same file for one plane needs no scratch: accepted.
    r = server.client.post("/jobs", content=stack_tiff, headers=TIFF, params={"z": "3"})
    assert r.status_code == 202, r.text


def test_a_slice_that_cannot_be_decoded_fails_the_job_naming_it_and_leaves_no_file(
    stack_server: Server, jobs_dir: Path
) -> None:
    """The header is sound (accepted), slice 4's compressed data is not: the job fails with the
    400 POST /segment would give for that slice, and nothing of the slices done before is left."""
    image, _ = synth_stack(5, StackConfig(depth=6, size=64, nuclei=3))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, metadata={"axes": "ZYX"}, compression="zlib")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start, length = tif.pages[4].dataoffsets[0], tif.pages[4].databytecounts[0]
    data[start:start + length] = bytes(length)
    job_id, status = run_job(stack_server, bytes(data), {"diameter": "16"})
    assert status["status"] == "failed", status
    problem = status["problem"]
    assert problem["status"] == 400 and problem["detail"].startswith("z-slice 4 of 6: "), problem
    assert stack_server.client.get(f"/jobs/{job_id}/result").status_code == 400
    assert stack_server.client.get(f"/jobs/{job_id}/files/labels3d.tif").status_code == 409
    left = sorted(p.name for p in (jobs_dir / job_id).iterdir())
    assert not [name for name in left if "labels3d" in name or "objects3d" in name], left


@pytest.fixture(scope="module")
def budget_server(start_server, slow_model: Path) -> Server:
    """The slow model and a budget that holds one 192² stack slice (×1.5) and nothing beside it."""
    return start_server({"UNET_MODEL_PATH": str(slow_model), "UNET_ADMISSION_MAX_WAIT_S": "600",
                         "UNET_PREDICTION_CACHE_MB": "0", **BUDGET}).wait_ready()


def test_each_slice_is_admitted_in_its_turn_so_a_request_gets_in_between_slices(
    budget_server: Server,
) -> None:
    """A request sent while the job runs is admitted after the slice in progress, not after the
    whole stack."""
    server = budget_server
    depth = 8
    stack = imagej_bytes(np.stack([im.blobs(192, 192, seed=k, dtype=np.uint16) for k in range(depth)]))
    before = metric_or_zero(server.client.get("/metrics").text, "unet_admitted_requests_total")
    submitted = server.client.post("/jobs", content=stack, headers=TIFF, params={"output": "labels3d"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    wait_until(server.client, job_id, lambda s: s["status"] == "running" and s["tiles_done"] > 0)
    # 192² + a slice's 1.5 × 192² are more than the 256² budget: the two never run side by side.
    answer = server.client.post("/segment", content=im.png(im.blobs(192, 192, seed=99)),
                                headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    during = server.client.get(f"/jobs/{job_id}").json()
    assert during["status"] == "running" and during["tiles_done"] < during["tiles_total"], during
    status = wait_until(server.client, job_id, finished)
    assert status["status"] == "succeeded", status
    after = metric_or_zero(server.client.get("/metrics").text, "unet_admitted_requests_total")
    assert after - before == depth + 1  # every slice admitted on its own, and the request


def test_a_stack_job_cancelled_while_its_slice_waits_for_admission_leaves_the_queue(
    budget_server: Server,
) -> None:
    server = budget_server
    stack = imagej_bytes(np.stack([im.blobs(192, 192, seed=k, dtype=np.uint16) for k in range(3)]))
    with holding_the_large_lane(server):
        submitted = server.client.post("/jobs", content=stack, headers=TIFF, params={"output": "labels3d"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        for _ in range(1200):  # its first slice (the middle one) queues behind the image holding the lane
            if metric(server.client.get("/metrics").text, "unet_admission_queued_requests", lane="large"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the stack job's slice never queued for admission")
        waiting = server.client.get(f"/jobs/{job_id}").json()
        assert (waiting["status"], waiting["stage"], waiting["tiles_done"]) == ("running", "waiting", 0)
        assert server.client.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
        text = server.client.get("/metrics").text
        assert metric(text, "unet_admission_queued_requests", lane="large") == 0
    assert server.client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_stack_by_path_is_read_slice_by_slice_so_it_may_be_larger_than_an_upload(
    start_server, stack_tiff: bytes, tmp_path: Path
) -> None:
    """With uploads capped below the stack's size, the same file by path under the data root is
    read a slice at a time from disk (a TIFF, and the same stack as an OME-Zarr folder, as a Leica
    LIF project's image, as a Nikon ND2, as an Olympus OIB and OIF, and as an Imaris file, its slices in
    chunks of eight): the labels and table are those of the stack read whole."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from tests.ims_files import ims_bytes
    from tests.lif_files import Image, lif_bytes
    from tests.nd2_files import Nd2, write_nd2
    from tests.oib_files import Oib, write_oib, write_oif

    root = tmp_path / "root"
    root.mkdir()
    (root / "big.tif").write_bytes(stack_tiff)
    image = tifffile.imread(io.BytesIO(stack_tiff))
    write_image(image, zarr.open_group(root / "big.ome.zarr", mode="w", zarr_format=2), fmt=FormatV04(),
                scale_factors=(), axes="zyx", storage_options={"chunks": (1, 64, 64)})
    (root / "big.lif").write_bytes(lif_bytes([Image("stack", image, "ZYX", pixel_um=None)]))
    (root / "big.nd2").write_bytes(write_nd2(Nd2(image, "ZYX", pixel_um=None)))
    (root / "big.oib").write_bytes(write_oib(Oib(image, "ZYX", pixel_um=None)))
    (root / "big.ims").write_bytes(ims_bytes(image[None, None], voxel_um=None, chunks=(8, 64, 64)))
    write_oif(Oib(image, "ZYX", pixel_um=None, name="big"), root)  # big.oif and its big.oif.files folder
    server = start_server({"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_DATA_ROOT": str(root),
                           "UNET_MAX_UPLOAD_BYTES": str(len(stack_tiff) // 2)}).wait_ready()
    client = server.client
    refused = client.post("/jobs", content=stack_tiff, headers=TIFF, params={"output": "labels3d"})
    assert refused.status_code == 413, refused.text  # the cap holds for uploads
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        expected = segmenter.segment_stack(stack_tiff, diameter=16)
    volumes = [row["volume_voxels"] for row in expected.objects]
    for name in ("big.tif", "big.ome.zarr", "big.lif", "big.nd2", "big.oib", "big.ims", "big.oif"):
        r = client.post("/jobs", json={"path": name, "output": "labels3d", "diameter": 16})
        assert r.status_code == 202, (name, r.text)
        files = f"/jobs/{r.json()['id']}/files"
        status = wait_until(client, r.json()["id"], finished)
        assert status["status"] == "succeeded", (name, status)
        labels = tifffile.imread(io.BytesIO(client.get(f"{files}/labels3d.tif").content))
        np.testing.assert_array_equal(labels, expected.labels, err_msg=name)
        table = client.get(f"{files}/objects3d.csv").text
        if name.endswith(".tif"):  # calibrated as the upload: the same table to the letter
            assert table == expected.objects_csv()
        assert [int(row["volume_voxels"]) for row in csv.DictReader(io.StringIO(table))] == volumes


def test_a_stack_job_measures_other_channels_over_each_nuclei_voxels(start_server, tmp_path: Path) -> None:
    """measure= on a two-channel stack, uploaded and by path (read slice by slice): each nucleus's
    mean and sum of the marker over its voxels of labels3d.tif, the table the Python API gives."""
    nuclei, _ = synth_stack(7, StackConfig(depth=6, size=96, nuclei=6))
    marker = np.random.default_rng(3).integers(0, 3000, nuclei.shape).astype(nuclei.dtype)
    body = imagej_bytes(np.stack([marker, nuclei], axis=1), axes="ZCYX")  # Z C Y X
    root = tmp_path / "root"
    root.mkdir()
    (root / "two.tif").write_bytes(body)
    env = {"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_DATA_ROOT": str(root)}
    server = start_server(env).wait_ready()
    params = {"channel": "1", "measure": "0", "diameter": "16"}
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        expected = segmenter.segment_stack(body, channel=1, measure="0", diameter=16)
    assert expected.object_count > 2
    for row in expected.objects:
        inside = expected.labels == row["id"]
        assert row["mean_intensity_c0"] == pytest.approx(marker[inside].mean(), abs=1e-3)
        assert row["integrated_intensity_c0"] == pytest.approx(float(marker[inside].sum()), abs=1e-2)

    jobs_done = uploaded_and_by_path(server, body, "two.tif", params)
    for job_id in jobs_done:
        table = server.client.get(f"/jobs/{job_id}/files/objects3d.csv").text
        assert table == expected.objects_csv(), job_id
    refused = server.client.post("/jobs", content=body, headers=TIFF,
                                 params={"output": "labels3d", "channel": "1", "measure": "GFP"})
    assert refused.status_code == 422 and "measure" in refused.json()["detail"], refused.text


def test_a_stack_job_grows_cells_in_3d_and_measures_their_cytoplasm(start_server, tmp_path: Path) -> None:
    """expand= on a two-channel stack, uploaded and by path: cells3d.tif holds each nucleus grown in
    3-D (z in the z-step's proportion), the table each cell's volume and the marker over its
    cytoplasm; the Python API gives the same, and no scratch file is left."""
    nuclei, _ = synth_stack(8, StackConfig(depth=8, size=96, nuclei=6))
    marker = np.random.default_rng(5).integers(0, 3000, nuclei.shape).astype(nuclei.dtype)
    body = imagej_bytes(np.stack([nuclei, marker], axis=1), axes="ZCYX")
    root, jobs = tmp_path / "root", tmp_path / "jobs"
    root.mkdir()
    (root / "two.tif").write_bytes(body)
    env = {"UNET_MODEL_PATH": str(DEFAULT_MODEL_PATH), "UNET_DATA_ROOT": str(root),
           "UNET_JOBS_DIR": str(jobs)}
    server = start_server(env).wait_ready()
    params = {"channel": "0", "measure": "1", "diameter": "16", "expand": "3"}
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        expected = segmenter.segment_stack(body, channel=0, measure="1", diameter=16, expand=3)
    assert expected.cells is not None and expected.object_count > 2 and not expected.warnings
    # The z-step is 3 pixel widths: 3 px reach one slice up and down.
    np.testing.assert_array_equal(
        expected.cells, expand_labels(expected.labels, distance=3, spacing=(Z_UM / XY_UM, 1.0, 1.0)))
    for row in expected.objects:
        cell = expected.cells == row["id"]
        cytoplasm = cell & (expected.labels == 0)
        assert (row["cell_volume_voxels"], row["cytoplasm_volume_voxels"]) == (cell.sum(), cytoplasm.sum())
        assert row["cell_volume_um3"] == pytest.approx(cell.sum() * XY_UM * XY_UM * Z_UM, abs=1e-3)
        assert row["mean_intensity_cytoplasm_c1"] == pytest.approx(marker[cytoplasm].mean(), abs=1e-3)
    assert sum(row["cytoplasm_volume_voxels"] > 0 for row in expected.objects) > 2

    jobs_done = uploaded_and_by_path(server, body, "two.tif", params)
    for job_id in jobs_done:
        summary = server.client.get(f"/jobs/{job_id}/result").json()
        assert summary["expand"] == 3 and summary["warnings"] == [] and "cells3d.tif" in summary["layout"]
        assert server.client.get(summary["objects_url"]).text == expected.objects_csv(), job_id
        cells = server.client.get(summary["cells_url"])
        assert cells.status_code == 200 and cells.headers["content-type"] == "image/tiff"
        with tifffile.TiffFile(io.BytesIO(cells.content)) as tif:
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
            np.testing.assert_array_equal(tif.asarray(), expected.cells)
        with zipfile.ZipFile(io.BytesIO(server.client.get(summary["zip_url"]).content)) as zipped:
            assert sorted(zipped.namelist()) == ["cells3d.tif", "labels3d.tif", "objects3d.csv"]
        assert sorted(p.name for p in (jobs / job_id).iterdir() if not p.name.startswith("status")) == [
            "cells3d.tif", "labels3d.tif", "objects3d.csv", "result"]

    # Cells reaching 200 px (67 slices) around each voxel of a deep stack would be blocks of mostly
    # margin: refused at submission, uploaded and by path, naming the largest expand that fits.
    deep = imagej_bytes(np.zeros((64, 512, 512), np.uint8))
    (root / "deep.tif").write_bytes(deep)
    too_far = {"output": "labels3d", "expand": "200"}
    for answer in (server.client.post("/jobs", params=too_far, content=deep, headers=TIFF),
                   server.client.post("/jobs", json={"path": "deep.tif", **too_far})):
        assert answer.status_code == 413, answer.text
        problem = answer.json()
        assert problem["type"] == "/problems/stack-cells-too-far" and "at most expand=" in problem["detail"]
    made = sorted(p.name for p in jobs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert made == sorted(jobs_done)  # no job was made for them


def test_cells_of_a_stack_without_a_z_step_are_grown_as_cubes_with_a_warning() -> None:
    nuclei, _ = synth_stack(9, StackConfig(depth=5, size=64, nuclei=3))
    with Segmenter.load(DEFAULT_MODEL_PATH) as segmenter:
        result = segmenter.segment_stack(nuclei, axes="ZYX", diameter=16, expand=2)
    assert result.cells is not None and result.voxel_size is None
    np.testing.assert_array_equal(result.cells, expand_labels(result.labels, distance=2))
    assert any("no z-step" in w for w in result.warnings)
    assert "cell_volume_um3" not in result.objects[0] and result.objects[0]["cell_volume_voxels"] > 0
