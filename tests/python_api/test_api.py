"""The Python API (``service.api``) on the bundled model: the service's answers without HTTP."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from service import microscopy
from service.api import Segmenter
from service.batcher import BatcherClosed
from service.engine import ModelLoadError
from service.tile_options import TilingError
from tests.python_api.conftest import BUNDLED_MODEL, nuclei_image, write_nuclei_tiff
from tests.server import Server

pytestmark = pytest.mark.slow

KINDS = ("mask", "probability", "labels", "overlay", "objects", "geojson", "rois")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m service`` on the bundled model, default settings."""
    logs = tmp_path_factory.mktemp("server")
    server = Server({"UNET_MODEL_PATH": str(BUNDLED_MODEL), "UNET_INTRA_OP_THREADS": "2"}, logs / "log")
    try:
        yield server.wait_ready(120)
    finally:
        server.stop()


def test_every_output_is_byte_identical_to_the_servers_answer(
    segmenter: Segmenter, server: Server, tmp_path: Path
) -> None:
    # A two-channel ImageJ TIFF with a calibration: channel choice, µm columns, diameter estimate
    # and the resize to the model's nucleus scale are all on the path.
    nuclei, count = nuclei_image(seed=5)
    stack = np.stack([np.full_like(nuclei, 500), nuclei])
    path = tmp_path / "two-channel.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"axes": "CYX", "unit": "um"}
    )

    result = segmenter.segment(path, channel=1)
    assert result.object_count == count
    assert result.diameter_source == "estimated" and result.scale_factor != 1.0
    for kind in KINDS:
        response = server.client.post(
            "/segment", params={"output": kind, "channel": "1"}, content=path.read_bytes(),
            headers={"Content-Type": "image/tiff"},
        )
        assert response.status_code == 200, response.text
        body, media_type = result.encode(kind)
        assert media_type == response.headers["content-type"], kind
        assert body == response.content, f"output={kind} differs between the API and the server"
        assert int(response.headers["X-Object-Count"]) == result.object_count
        assert float(response.headers["X-Nucleus-Diameter"]) == pytest.approx(result.diameter, abs=0.05)
        assert float(response.headers["X-Scale-Factor"]) == pytest.approx(result.scale_factor, rel=1e-3)
    # The records are the server's JSON table, µm columns included.
    table = server.client.post(
        "/segment", params={"output": "objects", "channel": "1"}, content=path.read_bytes(),
        headers={"Content-Type": "image/tiff", "Accept": "application/json"},
    ).json()
    assert result.objects == table
    assert "area_um2" in result.objects[0]
    assert json.dumps(result.objects)  # plain Python numbers


def test_arrays_are_read_as_the_file_they_would_be(segmenter: Segmenter, tmp_path: Path) -> None:
    image, count = nuclei_image(seed=7)
    path = tmp_path / "nuclei.tif"
    assert cv2.imwrite(str(path), image)
    from_file = segmenter.segment(path, outputs=("mask", "labels"))
    from_array = segmenter.segment(image, outputs=("mask", "labels"))
    assert np.array_equal(from_file.mask, from_array.mask)
    assert np.array_equal(from_file.labels, from_array.labels)
    assert from_array.object_count == count

    # A (Z, C, Y, X) stack: the nuclei are channel 1 of slice 2; axes in any order.
    stack = np.zeros((3, 2, *image.shape), np.uint16)
    stack[2, 1] = image
    chosen = segmenter.segment(stack, axes="ZCYX", z=2, channel=1, outputs=("mask",))
    assert np.array_equal(chosen.mask, from_file.mask)
    assert chosen.plane.z == 2 and chosen.plane.channel is not None and chosen.plane.channel.index == 1
    z_last = np.moveaxis(stack[:, 1], 0, -1)
    projected = segmenter.segment(z_last, axes="YXZ", project="max", outputs=("mask",))
    assert np.array_equal(projected.mask, from_file.mask)

    with pytest.raises(microscopy.SelectionError) as missing:
        segmenter.segment(stack, axes="ZCYX")
    assert set(missing.value.params) == {"channel", "z"}
    assert missing.value.choices["planes"] == {"Z": 3}
    with pytest.raises(ValueError, match="needs axes="):
        segmenter.segment(stack[0])
    with pytest.raises(ValueError, match="does not describe"):
        segmenter.segment(stack, axes="ZCY")


def test_measure_adds_each_channels_mean_and_sum_per_nucleus(segmenter: Segmenter) -> None:
    image, count = nuclei_image(seed=11)
    marker = np.random.default_rng(2).integers(0, 5000, image.shape, dtype=np.uint16)
    stack = np.stack([image, marker])  # C Y X: nuclei, then a marker that varies per pixel
    result = segmenter.segment(stack, axes="CYX", channel=0, measure=[1, "0"],
                                outputs=("labels", "objects", "probability"))
    assert result.objects is not None and len(result.objects) == result.object_count == count
    for row in result.objects:
        inside = result.labels == row["id"]
        assert row["mean_intensity_c1"] == pytest.approx(marker[inside].mean(), abs=1e-3)
        assert row["integrated_intensity_c1"] == pytest.approx(float(marker[inside].sum()), abs=1e-2)
        assert row["mean_intensity_c0"] == row["mean_intensity"]
    # encoded later, the table is the one the service would send (the measured pixels were kept)
    header = result.encode("objects")[0].decode().splitlines()[0]
    assert header.endswith(
        "mean_intensity_c1,integrated_intensity_c1,mean_intensity_c0,integrated_intensity_c0"
    )
    with pytest.raises(microscopy.SelectionError, match="measure: the image has no channel '2'"):
        segmenter.segment(stack, axes="CYX", channel=0, measure="2")

    # cells: each nucleus grown by 3 px, the marker over its cytoplasm; encoded later, the same cells
    cells = segmenter.segment(stack, axes="CYX", channel=0, measure=[1], expand=3,
                              outputs=("labels", "objects", "probability"))
    assert cells.objects is not None and [r["id"] for r in cells.objects] == [r["id"] for r in result.objects]
    assert all(r["cell_area"] == r["area"] + r["cytoplasm_area"] and r["cytoplasm_area"] > 0
               for r in cells.objects)
    features = json.loads(cells.encode("geojson")[0])["features"]
    assert {f["properties"]["objectType"] for f in features} == {"cell"}
    assert "cytoplasm_area" in cells.encode("objects")[0].decode().splitlines()[0]
    with pytest.raises(ValueError, match="expand must be"):
        segmenter.segment(stack, axes="CYX", channel=0, expand=0)

    # each nucleus's local background in the marker, and its intensities less it; encoded later, the same
    ringed = segmenter.segment(stack, axes="CYX", channel=0, measure=[1], background_ring=5,
                               outputs=("labels", "objects", "probability"))
    assert ringed.objects is not None
    assert [r["id"] for r in ringed.objects] == [r["id"] for r in result.objects]
    for row in ringed.objects:
        assert row["background_c1"] is not None  # the nuclei stand apart: room for a ring round each
        corrected = row["mean_intensity_c1"] - row["background_c1"]
        assert row["mean_intensity_corrected_c1"] == pytest.approx(corrected)
    encoded = list(csv.DictReader(io.StringIO(ringed.encode("objects")[0].decode())))
    assert [float(r["background_c1"]) for r in encoded] == [r["background_c1"] for r in ringed.objects]
    with pytest.raises(ValueError, match="give them with measure"):
        segmenter.segment(stack, axes="CYX", channel=0, background_ring=5)
    with pytest.raises(ValueError, match="background_ring must be"):
        segmenter.segment(stack, axes="CYX", channel=0, measure=[1], background_ring=501)

    # a z-stack segmented on its maximum, the marker measured on its sum over Z
    zstack = np.stack([stack, stack[:, ::-1]])  # Z C Y X
    summed = segmenter.segment(zstack, axes="ZCYX", channel=0, project="max", measure=[1],
                               measure_project="sum", outputs=("labels", "objects", "probability"))
    over_z = zstack[:, 1].astype(np.float64).sum(axis=0)
    assert summed.objects and summed.plane.measured_projection == "sum"
    for row in summed.objects:
        inside = summed.labels == row["id"]
        assert row["integrated_intensity_c1"] == pytest.approx(over_z[inside].sum(), rel=1e-6)


def test_outputs_choose_what_is_returned(segmenter: Segmenter) -> None:
    image, count = nuclei_image(seed=9)
    mask_only = segmenter.segment(image, outputs=("mask",))
    assert mask_only.mask is not None and mask_only.mask.dtype == np.uint8
    assert set(np.unique(mask_only.mask)) <= {0, 255}
    assert mask_only.probability is None and mask_only.labels is None and mask_only.objects is None
    assert mask_only.object_count is None
    with pytest.raises(ValueError, match="needs labels"):
        mask_only.encode("overlay")

    labels_only = segmenter.segment(image, outputs="labels")
    assert labels_only.labels is not None and labels_only.labels.max() == count
    assert labels_only.mask is None and labels_only.objects is None
    with pytest.raises(ValueError, match="outputs may be"):
        segmenter.segment(image, outputs=("mask", "contours"))


def test_a_given_diameter_sets_the_scale(segmenter: Segmenter) -> None:
    image, _ = nuclei_image(seed=3)
    result = segmenter.segment(image, diameter=16.0, outputs=("mask",))
    assert result.diameter_source == "request" and result.diameter == 16.0
    assert result.scale_factor == pytest.approx(segmenter.metadata.nucleus_diameter / 16.0, rel=0.02)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"threshold": 1.5}, ValueError, "threshold must be between 0 and 1"),
        ({"diameter": 0.5}, ValueError, "diameter must be between 1 and 1000"),
        ({"pixel_size": -1.0}, ValueError, "pixel_size"),
        ({"tile_size": 8}, TilingError, "tile_size 8 is outside"),
        ({"overlap": 500, "tile_size": 256}, TilingError, "less than half"),
        ({"split": "watershed"}, ValueError, "split must be one of"),
        ({"z": 3}, microscopy.SelectionError, "z=3 is outside the image"),
    ],
)
def test_bad_options_are_value_errors_that_say_what_to_change(
    segmenter: Segmenter, options: dict, error: type[Exception], words: str
) -> None:
    image, _ = nuclei_image(size=64, grid=2)
    with pytest.raises(error, match=words):
        segmenter.segment(image, **options)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        Segmenter.load("no-such-model.onnx")
    with Segmenter.load(BUNDLED_MODEL, providers=["cpu"], threads=1) as closing:
        with pytest.raises(ValueError, match="not a recognised image"):
            closing.segment(b"this is text, not an image")
        with pytest.raises(TypeError, match="path, bytes or a NumPy array"):
            closing.segment(42)  # type: ignore[arg-type]
    with pytest.raises(BatcherClosed):
        closing.segment(np.zeros((32, 32), np.uint8))


def test_threads_share_one_segmenter_and_get_what_they_would_alone(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    paths = [tmp_path / f"n{seed}.tif" for seed in range(4)]
    for seed, path in enumerate(paths):
        write_nuclei_tiff(path, size=128, grid=3, seed=seed)
    alone = [segmenter.segment(p, outputs=("labels",)).labels for p in paths]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: segmenter.segment(p, outputs=("labels",)).labels, paths))
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a, b)


def test_bytes_and_paths_give_the_same_result(segmenter: Segmenter, tmp_path: Path) -> None:
    image, _ = nuclei_image(size=96, grid=3, seed=11)
    ok, png = cv2.imencode(".png", image)
    assert ok
    path = tmp_path / "n.png"
    path.write_bytes(png.tobytes())
    a = segmenter.segment(path, outputs=("probability",))
    b = segmenter.segment(io.BytesIO(png.tobytes()).getvalue(), outputs=("probability",))
    assert a.probability is not None and a.probability.dtype == np.float32
    assert a.probability.shape == image.shape
    assert np.array_equal(a.probability, b.probability)


@pytest.mark.parametrize("companion", [None, "set.companion.ome"])
def test_one_file_of_an_image_split_over_files_reads_the_set(
    segmenter: Segmenter, tmp_path: Path, companion: str | None
) -> None:
    # Bio-Formats' one file per channel, its metadata in each file or in a companion file: by path
    # any file of the set gives the image, every channel by name, as unet-segment sends it.
    from tests.ome_sets import write_channel_set

    planes = [nuclei_image(size=96, grid=3, seed=s)[0] for s in (21, 22)]
    paths = write_channel_set(tmp_path, planes, ["DAPI", "GFP"], companion=companion)
    alone = segmenter.segment(planes[1], outputs=("labels",), pixel_size=0.5)
    for path in paths:
        result = segmenter.segment(path, channel="GFP", outputs=("labels",))
        assert result.plane.channel.name == "GFP" and result.plane.pixel_size.x_um == 0.5
        np.testing.assert_array_equal(result.labels, alone.labels)


def test_a_czi_path_and_its_scenes_read_as_the_service_reads_them(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    """A Zeiss CZI by path, two positions (scenes) of one named channel: series=1 is the second
    position, segmented as that image alone; the default is the first, with a notice."""
    from tests.czi_files import ZSTD1, Tile, czi_bytes

    first, _ = nuclei_image(size=96, grid=3, seed=12)
    second, _ = nuclei_image(size=96, grid=4, seed=13)
    path = tmp_path / "positions.czi"
    tiles = [Tile(first.astype(np.uint16), scene=0), Tile(second.astype(np.uint16), x=300, scene=1)]
    path.write_bytes(czi_bytes(tiles, {0: "DAPI"}, 0.65e-6, ZSTD1))
    chosen = segmenter.segment(path, series=1, outputs=("labels",))
    alone = segmenter.segment(second.astype(np.uint16), outputs=("labels",))
    assert chosen.plane.describe()["series"] == 1 and chosen.plane.pixel_size.source == "czi"
    assert np.array_equal(chosen.labels, alone.labels) and chosen.object_count == alone.object_count > 0
    default = segmenter.segment(path, outputs=("labels",))
    assert default.plane.describe()["series"] == 0 and any("series=1" in w for w in default.warnings)


def test_a_long_nd2_by_path_is_mapped_not_read_and_its_last_frame_equals_the_plane_alone(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    """An ND2 time-lapse of 1,400 two-channel frames (57 MiB) by path, its last frame at its second
    position chosen: the nuclei segmented are those of that plane sent alone, in µm from NIS's
    calibration, and the call allocates far less than the file (mapped; one frame's channel read)."""

    from tests.nd2_files import Nd2, write_nd2

    nuclei, _ = nuclei_image(size=96, grid=3, seed=15)
    frames = np.random.default_rng(1).integers(0, 4000, (1400, 2, 96, 96, 2), dtype=np.uint16)  # TPYXC
    frames[-1, 1, :, :, 1] = nuclei.astype(np.uint16)
    path = tmp_path / "timelapse.nd2"
    path.write_bytes(write_nd2(Nd2(frames, "TPYXC", ("mCherry", "H2B-GFP"), 0.65)))
    del frames
    assert path.stat().st_size > 48 * 2**20
    choice = {"series": 1, "t": 1399, "channel": "h2b-gfp"}
    _mapped_plane_equals_it_alone(segmenter, path, choice, nuclei, ("nd2", 0.65))


def test_an_oib_z_stack_by_path_is_mapped_not_read_and_its_slice_equals_the_plane_alone(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    """An OIB z-stack of 200 two-channel slices of 256² (50 MiB) by path, its last slice chosen: the nuclei
    segmented are those of that plane sent alone, in µm from FluoView's calibration, and the call
    allocates far less than the file (mapped; one plane's stream read)."""

    from tests.oib_files import Oib, write_oib

    nuclei, _ = nuclei_image(size=256, grid=5, seed=16)
    planes = np.random.default_rng(2).integers(0, 4000, (200, 2, 256, 256), dtype=np.uint16)  # ZCYX
    planes[-1, 0] = nuclei.astype(np.uint16)
    path = tmp_path / "stack.oib"
    path.write_bytes(write_oib(Oib(planes, "ZCYX", ("Hoechst 33342", "Alexa Fluor 568"), 0.31)))
    del planes
    assert path.stat().st_size > 48 * 2**20  # mapped (over api.MAP_ABOVE_BYTES), not read
    choice = {"z": 199, "channel": "hoechst 33342"}
    _mapped_plane_equals_it_alone(segmenter, path, choice, nuclei, ("oib", 0.31))


def _mapped_plane_equals_it_alone(
    segmenter: Segmenter, path: Path, choice: dict, nuclei: np.ndarray, calibration: tuple[str, float]
) -> None:
    """The plane ``choice`` names in the file at ``path`` segments as ``nuclei`` sent alone, with
    the file's ``calibration`` (source, µm), and reading it allocates under 8 MiB (the file is
    mapped, not read: over ``api.MAP_ABOVE_BYTES``)."""
    import tracemalloc

    segmenter.segment(path, **choice, outputs=("labels",))  # warm: the model's arenas, caches
    tracemalloc.start()
    try:
        by_path = segmenter.segment(path, **choice, outputs=("labels",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    alone = segmenter.segment(nuclei.astype(np.uint16), outputs=("labels",))
    assert np.array_equal(by_path.labels, alone.labels) and by_path.object_count == alone.object_count > 0
    assert (by_path.plane.pixel_size.source, by_path.plane.pixel_size.x_um) == calibration


def test_a_large_project_by_path_is_mapped_not_read_and_equals_its_bytes(
    segmenter: Segmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LIF project of 48 MiB by path (over api.MAP_ABOVE_BYTES), its last image chosen: the
    result is the bytes' result, and the call allocates far less than the file (the file is a
    read-only memory map, and only the plane asked for is read; reading it whole would allocate
    the 48 MiB). Mapped whatever their size: an empty file is the reader's clear error, and a
    stack's slices, each mapping the file anew, segment as its bytes."""
    import tracemalloc

    from tests.lif_files import Image, lif_bytes

    nuclei, _ = nuclei_image(size=96, grid=3, seed=14)
    filler = np.random.default_rng(0).integers(0, 4000, (12, 2, 1024, 1024), dtype=np.uint16)
    path = tmp_path / "session.lif"
    path.write_bytes(lif_bytes([Image("big", filler, "ZCYX"),
                                Image("field", nuclei.astype(np.uint16), pixel_um=0.65)]))
    del filler
    assert path.stat().st_size > 48 * 2**20
    segmenter.segment(path, series=1, outputs=("labels",))  # warm: the model's arenas, caches
    tracemalloc.start()
    try:
        by_path = segmenter.segment(path, series=1, outputs=("labels",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    by_bytes = segmenter.segment(path.read_bytes(), series=1, outputs=("labels",))
    assert np.array_equal(by_path.labels, by_bytes.labels) and by_path.object_count > 0
    assert by_path.plane.pixel_size.source == "lif"
    from service import api

    monkeypatch.setattr(api, "MAP_ABOVE_BYTES", 0)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        segmenter.segment(empty)
    stack = tmp_path / "stack.lif"
    slices = np.stack([nuclei, np.roll(nuclei, 3, axis=1)]).astype(np.uint16)
    stack.write_bytes(lif_bytes([Image("z", slices, "ZYX")]))
    mapped = segmenter.segment_stack(stack, diameter=16)
    assert np.array_equal(mapped.labels, segmenter.segment_stack(stack.read_bytes(), diameter=16).labels)
    assert mapped.object_count > 0
