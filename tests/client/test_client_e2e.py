"""End to end: the real service (``python -m service``) on loopback, the real client, real PNGs."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.conftest import write_png
from tests.models import write_conv_model
from tests.server import REPO, Server

SIZES = {"a.png": (64, 48), "b.png": (100, 37), "sub/c.png": (31, 90)}  # name → (width, height)


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[str]:
    model = write_conv_model(tmp_path / "conv.onnx")
    server = Server({"UNET_MODEL_PATH": str(model)}, tmp_path / "service.log")
    try:
        yield server.wait_ready(60).url
    finally:
        server.stop()


def test_folder_of_pngs_comes_back_as_masks_of_the_same_sizes(service_url: str, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    images, out = tmp_path / "in", tmp_path / "out"
    for name, (width, height) in SIZES.items():
        write_png(images / name, width, height)
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(out), "--url", service_url,
         "--no-progress", "--concurrency", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 written" in proc.stderr
    for name, (width, height) in SIZES.items():
        mask = cv2.imdecode(np.frombuffer((out / name).read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask is not None, f"{name}: not a decodable PNG"
        assert mask.shape[:2] == (height, width), name
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.png", "b.png", "c.png"]


def test_a_two_channel_tiff_fails_with_its_channels_until_channel_is_given(
    service_url: str, tmp_path: Path
) -> None:
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 60000, (2, 48, 64), dtype=np.uint16)
    tifffile.imwrite(images / "cells.tif", stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "CYX", "unit": "micron", "Labels": ["Cytoplasm", "DAPI"]})
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "service.client", str(images), "--url", service_url, "--no-progress",
             "--output", "objects", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )

    refused = run("--out", str(tmp_path / "no-channel"))
    assert refused.returncode == 1
    report = (tmp_path / "no-channel" / "failures.jsonl").read_text()
    assert "422" in report and "DAPI" in report and "Cytoplasm" in report

    chosen = run("--out", str(tmp_path / "dapi"), "--channel", "dapi")
    assert chosen.returncode == 0, chosen.stderr
    header = (tmp_path / "dapi" / "cells.csv").read_text().splitlines()[0].split(",")
    assert "area_um2" in header and "equivalent_diameter_um" in header

    # --measure reaches the service: the other channel's columns, the rest of the table as before
    measured = run("--out", str(tmp_path / "measured"), "--channel", "dapi", "--measure", "Cytoplasm")
    assert measured.returncode == 0, measured.stderr
    lines = (tmp_path / "measured" / "cells.csv").read_text().splitlines()
    assert lines[0].split(",") == [*header, "mean_intensity_Cytoplasm", "integrated_intensity_Cytoplasm"]
    plain = (tmp_path / "dapi" / "cells.csv").read_text().splitlines()
    assert [line.rsplit(",", 2)[0] for line in lines[1:]] == plain[1:]
    # summary.csv: per image, the mean over its nuclei of their mean Cytoplasm intensity
    [summary] = list(csv.DictReader(io.StringIO((tmp_path / "measured" / "summary.csv").read_text())))
    means = [float(line.split(",")[-2]) for line in lines[1:]]
    assert float(summary["mean_intensity_Cytoplasm"]) == pytest.approx(sum(means) / len(means), abs=1e-3)
    assert "mean_intensity_Cytoplasm" not in (tmp_path / "dapi" / "summary.csv").read_text()
    wrong_kind = run("--out", str(tmp_path / "labels"), "--channel", "dapi", "--measure", "all",
                     "--output", "labels")
    assert wrong_kind.returncode == 2 and "--output objects, geojson or ome-zarr" in wrong_kind.stderr
    cells = run("--out", str(tmp_path / "cells"), "--channel", "dapi", "--measure", "Cytoplasm",
                "--expand", "3")
    assert cells.returncode == 0, cells.stderr
    header = (tmp_path / "cells" / "cells.csv").read_text().splitlines()[0].split(",")
    assert header[-7:-4] == ["cell_area", "cytoplasm_area", "cell_area_um2"]  # the file is calibrated
    assert header[-1] == "integrated_intensity_cytoplasm_Cytoplasm"
    summary_header = (tmp_path / "cells" / "summary.csv").read_text().splitlines()[0].split(",")
    assert summary_header[-2:] == ["mean_intensity_Cytoplasm", "mean_intensity_cytoplasm_Cytoplasm"]


def test_measure_project_reaches_the_service(service_url: str, tmp_path: Path) -> None:
    """--project max --measure-project sum: the table is the one POST /segment gives for the same
    options (the marker measured on its sum over Z), not the one measured on the maximum."""
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    import httpx

    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 60000, (3, 2, 48, 64), dtype=np.uint16)
    tifffile.imwrite(images / "zc.tif", stack, imagej=True,
                     metadata={"axes": "ZCYX", "Labels": ["Marker", "DAPI"] * 3})
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    options = {"channel": "DAPI", "project": "max", "measure": "Marker", "measure_project": "sum"}
    run = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--url", service_url, "--no-progress",
         "--output", "objects", "--out", str(tmp_path / "out"),
         *(part for name, value in options.items() for part in (f"--{name.replace('_', '-')}", value))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    written = (tmp_path / "out" / "zc.csv").read_text()
    def segment(**params: str) -> httpx.Response:
        return httpx.post(f"{service_url}/segment", params={"output": "objects", **params}, timeout=120,
                          content=(images / "zc.tif").read_bytes(), headers={"Content-Type": "image/tiff"})

    direct, on_max = segment(**options), segment(**{**options, "measure_project": "max"})
    assert direct.status_code == on_max.status_code == 200
    assert written == direct.text != on_max.text


def _client_under_upload_limit(
    tmp_path: Path, images: Path, limit: int, *options: str
) -> subprocess.CompletedProcess[str]:
    """``unet-segment images --out tmp_path/out`` with ``options`` against a server of the conv
    model whose uploads are capped at ``limit`` bytes."""
    model = write_conv_model(tmp_path / "conv.onnx")
    server = Server({"UNET_MODEL_PATH": str(model), "UNET_MAX_UPLOAD_BYTES": str(limit)}, tmp_path / "log")
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    try:
        url = server.wait_ready(60).url
        return subprocess.run(
            [sys.executable, "-m", "service.client", str(images), "--out", str(tmp_path / "out"),
             "--url", url, "--no-progress", *options],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        server.stop()


def _client_here_or_served(
    tmp_path: Path, images: Path, local: bool, *options: str
) -> subprocess.CompletedProcess[str]:
    """``unet-segment images --out tmp_path/out`` with ``options``: in local mode (the bundled model
    in the client's process), or against a server of the conv model."""
    if not local:
        return _client_under_upload_limit(tmp_path, images, 10**8, *options)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_")}
    return subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(tmp_path / "out"), "--no-progress",
         *options], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("suffix", [".tif", ".czi", ".lif", ".nd2", ".oib", ".oif", ".lsm", ".dv", ".zvi",
                                    ".ims"])
def test_a_movie_over_the_upload_limit_is_segmented_frame_by_frame(tmp_path: Path, suffix: str) -> None:
    # --t all sends each frame cut out of the movie (service.frames), so a movie larger than the
    # server takes in one request (UNET_MAX_UPLOAD_BYTES) is still segmented, every frame of it;
    # sent whole, each frame would be a 413. The frames' objects come back in µm: the calibration
    # travels with the cut. An ImageJ hyperstack, a Zeiss CZI as ZEN saves a time-lapse, a Leica
    # LIF as LAS X does (its channels named by their colour tables), a Nikon ND2 as NIS does, and an
    # Olympus OIB as FluoView does, a Zeiss LSM as ZEN does, a ZVI as AxioVision does, a DeltaVision
    # file as softWoRx does, an Imaris file as Imaris does, and an OIF (FluoView's folder format: the
    # .oif and its .oif.files folder of plane TIFFs, sent as the frames cut from them).
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    movie = rng.integers(0, 4000, (6, 2, 64, 80), dtype=np.uint16)  # TCYX
    images = tmp_path / "in"
    images.mkdir()
    if suffix == ".tif":
        tifffile.imwrite(images / "movie.tif", movie, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                         metadata={"axes": "TCYX", "unit": "micron", "Labels": ["Actin", "DAPI"] * 6})
    elif suffix == ".czi":
        from tests.czi_files import Tile, czi_bytes

        tiles = [Tile(movie[t, c], c=c, t=t) for t in range(6) for c in range(2)]
        (images / "movie.czi").write_bytes(czi_bytes(tiles, {0: "Actin", 1: "DAPI"}, 0.5e-6))
    elif suffix == ".lif":
        from tests.lif_files import Image, lif_bytes

        (images / "movie.lif").write_bytes(lif_bytes([Image("movie", movie, "TCYX", ("Green", "Blue"), 0.5)]))
    elif suffix == ".nd2":
        from tests.nd2_files import Nd2, write_nd2

        frames = np.moveaxis(movie, 1, -1)  # TYXC: each frame's channels interleaved
        (images / "movie.nd2").write_bytes(write_nd2(Nd2(frames, "TYXC", ("Actin", "DAPI"), 0.5)))
    elif suffix == ".oib":
        from tests.oib_files import Oib, write_oib

        (images / "movie.oib").write_bytes(write_oib(Oib(movie, "TCYX", ("Actin", "DAPI"), 0.5)))
    elif suffix == ".oif":
        from tests.oib_files import Oib, write_oif

        write_oif(Oib(movie, "TCYX", ("Actin", "DAPI"), 0.5, name="movie"), images)
    elif suffix == ".zvi":  # an AxioVision time-lapse, one item per plane
        from tests.zvi_files import Plane, zvi_bytes

        items = [Plane(movie[t, c], c=c, t=t, name=("Actin", "DAPI")[c]) for t in range(6) for c in range(2)]
        (images / "movie.zvi").write_bytes(zvi_bytes(items, 0.5))
    elif suffix == ".ims":  # an Imaris time-lapse, as Imaris and Andor's Fusion save one
        from tests.ims_files import ims_bytes

        (images / "movie.ims").write_bytes(ims_bytes(movie[:, :, None], (0.5, 0.5, 1.0), ["Actin", "DAPI"],
                                                     compression=None, shuffle=False))
    elif suffix == ".dv":  # a DeltaVision time-lapse, its waves named by wavelength
        from tests.dv_files import dv_bytes

        (images / "movie.dv").write_bytes(dv_bytes(movie[:, :, None], 0.5, 1.0, wavelengths=(525, 455)))
    else:  # a Zeiss LSM time series of three tracks (ZEN's 2-track files need tifffile's quirk)
        from tests.vendor_tiffs import lsm_bytes

        tracks = np.concatenate([movie, movie[:, :1]], axis=1)
        (images / "movie.lsm").write_bytes(lsm_bytes(tracks, "TCYX", (0.5, 0.5, 1.0), ["Actin", "DAPI", "C"]))
    limit = sum(f.stat().st_size for f in images.rglob("*") if f.is_file()) // 3  # an OIF: its folder too
    assert limit > 64 * 80 * 2 * 2  # one frame's pages fit, the movie does not
    channel = {".lif": "Blue", ".dv": "455 nm"}.get(suffix, "DAPI")
    proc = _client_under_upload_limit(tmp_path, images, limit, "--t", "all", "--channel", channel,
                                      "--output", "objects")
    assert proc.returncode == 0, proc.stderr
    assert "6 written" in proc.stderr
    tables = sorted((tmp_path / "out").glob("movie_t*.csv"))
    assert [p.name for p in tables] == [f"movie_t{k}.csv" for k in range(6)]
    assert all("area_um2" in p.read_text().splitlines()[0] for p in tables)


def test_an_oif_folder_is_one_image_its_planes_read_from_the_folder_beside_it(tmp_path: Path) -> None:
    # FluoView's folder format: cells.oif holds the settings, cells.oif.files/ a TIFF per plane. The
    # client sends the planes the choices need as one OME-TIFF (the .oif alone is a 415), and does not
    # take the plane TIFFs in the folder for images of their own.
    np = pytest.importorskip("numpy")
    from tests.oib_files import Oib, write_oif

    rng = np.random.default_rng(2)
    planes = rng.integers(0, 4000, (2, 64, 80), dtype=np.uint16)  # CYX
    images = tmp_path / "in"
    images.mkdir()
    write_oif(Oib(planes, "CYX", ("Alexa Fluor 488", "DAPI"), 0.5), images)
    (images / "lonely.oif").write_bytes((images / "cells.oif").read_bytes())  # its folder left behind
    proc = _client_under_upload_limit(tmp_path, images, 10**8, "--channel", "DAPI", "--output", "objects")
    assert proc.returncode != 0 and "1 written" in proc.stderr and "1 failed" in proc.stderr, proc.stderr
    outputs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.csv"))
    assert outputs == ["cells.csv", "summary.csv"]  # summary.csv: one row per image
    assert "area_um2" in (tmp_path / "out" / "cells.csv").read_text().splitlines()[0]
    # the OIF without its folder fails on the client, saying why; it is never sent
    said = proc.stderr + "".join(p.read_text() for p in (tmp_path / "out").rglob("*.jsonl"))
    assert "cannot read input: an Olympus OIF read from its folder" in said, said
    assert "lonely.oif.files), which is not there" in said, said


@pytest.mark.parametrize("suffix", [".lif", ".nd2"])
def test_a_project_over_the_upload_limit_is_segmented_image_by_image(tmp_path: Path, suffix: str) -> None:
    # A LAS X project holds every acquisition of a session, an ND2 every position of a plate, and
    # either is often gigabytes, past what a server takes in one request (UNET_MAX_UPLOAD_BYTES).
    # --series all sends each image cut out of it (service.frames.cut_image: the pages the choices
    # need, without series=), so every image is segmented; sent whole, each would be a 413. Sizes
    # come back in µm: the calibration travels.
    np = pytest.importorskip("numpy")
    from tests.lif_files import Image, lif_bytes
    from tests.nd2_files import Nd2, write_nd2

    rng = np.random.default_rng(1)
    fields = [rng.integers(0, 4000, (2, 64, 80), dtype=np.uint16) for _ in range(4)]  # CYX
    images = tmp_path / "in"
    images.mkdir()
    if suffix == ".lif":
        project = lif_bytes([Image(f"Series{k + 1:03d}", field, "CYX", ("Green", "Blue"), 0.5)
                             for k, field in enumerate(fields)])
    else:
        positions = np.moveaxis(np.stack(fields), 1, -1)  # PYXC
        project = write_nd2(Nd2(positions, "PYXC", ("GFP", "Blue"), 0.5,
                                position_names=("A1", "A2", "B1", "B2")))
    (images / f"session{suffix}").write_bytes(project)
    limit = len(project) // 3
    assert limit > 64 * 80 * 2 * 2  # one image's pages fit, the project does not
    proc = _client_under_upload_limit(tmp_path, images, limit, "--series", "all", "--channel", "Blue",
                                      "--output", "objects")
    assert proc.returncode == 0, proc.stderr
    assert "4 written" in proc.stderr
    tables = sorted((tmp_path / "out").glob("session_s*.csv"))
    assert [p.name for p in tables] == [f"session_s{k}.csv" for k in range(4)]
    assert all("area_um2" in p.read_text().splitlines()[0] for p in tables)


def test_a_stack_over_the_upload_limit_is_stored_on_the_server_and_projected_there(tmp_path: Path) -> None:
    # Nothing to cut out of one z-stack that is projected whole (--project max needs every slice):
    # sent whole it is a 413; the client stores it on the server (POST /uploads), names it, and
    # deletes it after. The labels are those the same model gives the stack in local mode.
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    from tests.api import _images as im

    images = tmp_path / "in"
    images.mkdir()
    stack = np.stack([im.blobs(96, 128, seed=k, dtype=np.uint16) for k in range(12)])
    tifffile.imwrite(images / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    limit = (images / "stack.tif").stat().st_size // 3
    proc = _client_under_upload_limit(tmp_path, images, limit, "--project", "max", "--output", "labels")
    assert proc.returncode == 0 and "1 written" in proc.stderr, proc.stderr
    local = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(tmp_path / "local"),
         "--no-progress", "--model", str(tmp_path / "conv.onnx"), "--project", "max", "--output", "labels"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert local.returncode == 0, local.stderr
    served, alone = (im.decode((tmp_path / d / "stack.png").read_bytes()) for d in ("out", "local"))
    np.testing.assert_array_equal(served, alone)
    assert served.max() > 0
    jobs = tmp_path / "log-jobs" / "uploads"
    assert not jobs.exists() or not any(jobs.iterdir())  # deleted once segmented


def test_an_image_the_service_refuses_in_a_project_over_the_limit_gets_its_own_refusal(
    tmp_path: Path,
) -> None:
    # A tile scan LAS X has not merged cannot be cut out (the client's reader refuses it too), so
    # it was sent whole and got a 413 for the project's size. Stored and named, it gets the service's
    # word on it: a 415 saying to merge it. The other image is segmented as before.
    np = pytest.importorskip("numpy")
    from tests.lif_files import Image, lif_bytes

    rng = np.random.default_rng(2)
    images = tmp_path / "in"
    images.mkdir()
    field = rng.integers(0, 4000, (64, 80), dtype=np.uint16)
    tiles = rng.integers(0, 4000, (6, 64, 80), dtype=np.uint16)
    project = lif_bytes([Image("Field", field), Image("TileScan 1", tiles, "MYX")])
    (images / "session.lif").write_bytes(project)
    proc = _client_under_upload_limit(tmp_path, images, len(project) // 3, "--series", "all",
                                      "--output", "objects")
    assert proc.returncode == 1, proc.stderr
    assert (tmp_path / "out" / "session_s0.csv").is_file()
    (failure,) = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert failure["status"] == 415, failure
    assert "Mosaic Merge" in json.dumps(failure)


def test_series_all_segments_every_image_of_a_plate_file(service_url: str, tmp_path: Path) -> None:
    # A two-position CZI, a two-image OME-TIFF and a two-image LIF project: one output per image
    # (NAME_s0, NAME_s1), each
    # what the service answers for that series=; a single PNG beside them as it is.
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    import httpx

    from tests.api import _images as im
    from tests.czi_files import Tile, czi_bytes
    from tests.lif_files import Image, lif_bytes

    images = tmp_path / "in"
    images.mkdir()
    wells = [im.blobs(48, 64, seed=k, dtype=np.uint16) for k in (1, 2)]
    (images / "plate.czi").write_bytes(czi_bytes([Tile(wells[0], scene=0), Tile(wells[1], x=900, scene=1)]))
    (images / "session.lif").write_bytes(lif_bytes([Image("A1", wells[1]), Image("A2", wells[0][:, ::-1])]))
    with tifffile.TiffWriter(images / "positions.ome.tif", ome=True) as writer:
        for k, well in enumerate(wells):
            writer.write(well[::-1], metadata={"axes": "YX", "Name": f"Pos{k}"})
    (images / "single.png").write_bytes(im.png(wells[0]))
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(tmp_path / "out"),
         "--url", service_url, "--no-progress", "--series", "all", "--output", "probability"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png")
    assert written == ["plate_s0.png", "plate_s1.png", "positions.ome_s0.png", "positions.ome_s1.png",
                       "session_s0.png", "session_s1.png", "single.png"]
    sources = (("plate", "plate.czi"), ("positions.ome", "positions.ome.tif"), ("session", "session.lif"))
    for name, source in sources:
        for k in (0, 1):
            expected = httpx.post(f"{service_url}/segment", params={"output": "probability", "series": k},
                                  content=(images / source).read_bytes(),
                                  headers={"Content-Type": "application/octet-stream"}, timeout=60)
            assert expected.status_code == 200, expected.text
            got = (tmp_path / "out" / f"{name}_s{k}.png").read_bytes()
            assert im.decode(got).tolist() == im.decode(expected.content).tolist(), (name, k)
        first, second = (im.decode((tmp_path / "out" / f"{name}_s{k}.png").read_bytes()) for k in (0, 1))
        assert first.tolist() != second.tolist()


def test_an_ome_tiff_image_split_over_files_is_one_image_read_as_its_set(tmp_path: Path) -> None:
    # Bio-Formats writes an image one file per channel (or z, or t) on request, and may keep the
    # set's metadata in a companion file (NAME.companion.ome) with each TIFF pointing to it. Sent
    # file by file, a companion set's files each failed ("no channel 'DAPI'; its channels are 0")
    # and a split by channel failed on every file but the one holding DAPI ("page 0 is missing").
    # The client sends one job per set, the pages the choices need read from the set.
    np = pytest.importorskip("numpy")
    cv2 = pytest.importorskip("cv2")
    tifffile = pytest.importorskip("tifffile")
    from tests.ome_sets import write_channel_set

    rng = np.random.default_rng(5)
    planes = [rng.integers(0, 4000, (64, 80), dtype=np.uint16) for _ in range(3)]
    images = tmp_path / "in"
    for folder in ("companion", "split"):
        (images / folder).mkdir(parents=True)
    write_channel_set(images / "companion", planes, ["GFP", "DAPI", "RFP"], companion="set.companion.ome")
    write_channel_set(images / "split", planes, ["GFP", "DAPI", "RFP"])
    # what the sets' DAPI must give: the plane in a file of its own, its one channel named DAPI
    tifffile.imwrite(images / "dapi_alone.ome.tif", planes[1][None], ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI"]}})
    proc = _client_under_upload_limit(tmp_path, images, 10**8, "--channel", "DAPI", "--output", "labels")
    assert proc.returncode == 0 and "3 written" in proc.stderr, proc.stderr
    out = tmp_path / "out"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["companion/set_C0.ome.png", "dapi_alone.ome.png", "split/set_C0.ome.png"], written

    def labels(path: Path) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)

    expected = labels(out / "dapi_alone.ome.png")
    assert expected.max() > 0
    for folder in ("companion", "split"):
        np.testing.assert_array_equal(labels(out / folder / "set_C0.ome.png"), expected)


@pytest.mark.parametrize("local", [False, True])
def test_a_screens_files_of_other_channels_are_left_alone_with_channel(tmp_path: Path, local: bool) -> None:
    # MetaXpress, Harmony and CellVoyager write each channel of a site as a file of its own: with
    # --channel DAPI the FITC files were each a failure (exit 1, retried at every rerun). Files whose
    # channels all have other names are left alone and counted; a name no file has is a mistake and
    # fails them all. Local mode answers as the server does.
    np = pytest.importorskip("numpy")
    from tests.vendor_tiffs import metaseries_bytes

    rng = np.random.default_rng(3)
    images = tmp_path / "in"
    images.mkdir()
    for site in (1, 2):
        for wave, name in ((1, "DAPI"), (2, "FITC")):
            plane = rng.integers(0, 4000, (64, 80), dtype=np.uint16)
            (images / f"9987_B02_s{site}_w{wave}.TIF").write_bytes(metaseries_bytes(plane, 0.65, name))

    def segment(channel: str, out: str) -> subprocess.CompletedProcess[str]:
        return _client_here_or_served(tmp_path / out, images, local, "--channel", channel)

    proc = segment("DAPI", "a")
    assert proc.returncode == 0, proc.stderr
    assert "2 written" in proc.stderr and "0 failed" in proc.stderr and "2 left alone" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "a" / "out").glob("*.png")) == ["9987_B02_s1_w1.png",
                                                                              "9987_B02_s2_w1.png"]
    typo = segment("DAPU", "b")
    assert typo.returncode != 0 and "4 failed" in typo.stderr and "left alone" not in typo.stderr, typo.stderr


MRF = "".join([
    '<?xml version="1.0" encoding="utf-8"?>\n',
    '<bts:MeasurementDetail bts:Version="1.0" bts:TargetSystem="CV8000" ',
    'xmlns:bts="http://www.yokogawa.co.jp/BTS/BTSSchema/1.0">\n',
    '  <bts:MeasurementChannel bts:Ch="1" bts:HorizontalPixelDimension="0.325" ',
    'bts:VerticalPixelDimension="0.325" bts:CameraNumber="3" />\n',
    '  <bts:MeasurementChannel bts:Ch="2" bts:HorizontalPixelDimension="0.65" ',
    'bts:VerticalPixelDimension="0.65" bts:CameraNumber="4" />\n</bts:MeasurementDetail>\n',
])


@pytest.mark.parametrize("local", [False, True])
def test_a_cellvoyager_plates_planes_are_measured_in_um_from_its_measurement_settings(
    tmp_path: Path, local: bool
) -> None:
    # A CellVoyager's TIFFs carry no calibration: its pixel size per channel is in the
    # MeasurementDetail.mrf beside them (lines as a real CV8000's, R2.06), which the client sends as
    # pixel_size= for each plane; its shading-correction frames there are left out.
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")

    from tests.unit.test_segment import synthetic_nuclei

    images = tmp_path / "in"
    images.mkdir()
    (images / "MeasurementDetail.mrf").write_text(MRF)
    for channel in (1, 2):
        plane = synthetic_nuclei(160, 192, seed=channel)
        tifffile.imwrite(images / f"Plate_B02_T0001F001L01A01Z01C0{channel}.tif", plane)
    tifffile.imwrite(images / "SC_BP445-45_20x v2_M01_CH01.tif", np.ones((64, 80), np.uint16))
    proc = _client_here_or_served(tmp_path, images, local, "--output", "objects")
    assert proc.returncode == 0 and "2 written" in proc.stderr, proc.stderr
    assert "left out 1 CellVoyager" in proc.stderr
    for channel, um in ((1, 0.325), (2, 0.65)):
        rows = list(csv.DictReader(io.StringIO(
            (tmp_path / "out" / f"Plate_B02_T0001F001L01A01Z01C0{channel}.csv").read_text())))
        assert rows and "area_um2" in rows[0], rows[:1]
        assert all(abs(float(r["area_um2"]) - float(r["area"]) * um * um) < 1e-6 * float(r["area"]) + 1e-9
                   for r in rows)
