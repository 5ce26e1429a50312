"""Files of several images (``series=``): an OME-TIFF of several Images, as a multi-position
acquisition writes one (Micro-Manager, Bio-Formats' bfconvert of a plate); CZI scenes are in
tests/unit/test_czi.py. Each image is read with its own size, channels and calibration; the
first by default with a notice, another when asked, one that is not there a SelectionError."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from service import client, microscopy, slide_files
from service.structure import Limits
from tests.api import _images as im

MAX_PIXELS = 10**8
WELL_A1 = im.blobs(40, 50, seed=1, dtype=np.uint16)
WELL_A2 = np.stack([im.blobs(30, 20, seed=2, dtype=np.uint16), im.blobs(30, 20, seed=3, dtype=np.uint16)])


def plate() -> bytes:
    out = io.BytesIO()
    with tifffile.TiffWriter(out, ome=True) as writer:
        writer.write(WELL_A1, metadata={"axes": "YX", "Name": "A1", "PhysicalSizeX": 0.5,
                                        "PhysicalSizeY": 0.5})
        writer.write(WELL_A2, metadata={"axes": "CYX", "Name": "A2", "Channel": {"Name": ["GFP", "DAPI"]},
                                        "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    return out.getvalue()


def read(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, Limits())  # type: ignore[arg-type]


def test_the_first_image_by_default_with_a_notice_naming_the_choice() -> None:
    layout = microscopy.probe(plate(), MAX_PIXELS, Limits())
    assert (layout.series_count, layout.series, layout.series_names) == (2, 0, ("A1", "A2"))
    assert (layout.width, layout.height, layout.pixel_size.x_um) == (50, 40, 0.5)
    assert any("2 images" in note and "series=1" in note for note in layout.warnings)
    plane = read(plate())
    np.testing.assert_array_equal(plane.image, WELL_A1)
    assert plane.describe()["series"] == 0


def test_another_image_with_its_own_size_channels_and_calibration() -> None:
    layout = microscopy.probe(plate(), MAX_PIXELS, Limits(), series=1)
    assert (layout.width, layout.height, layout.series) == (20, 30, 1)
    assert [c.name for c in layout.channels] == ["GFP", "DAPI"] and layout.pixel_size.x_um == 0.25
    assert not layout.warnings
    plane = read(plate(), series=1, channel="DAPI")
    np.testing.assert_array_equal(plane.image, WELL_A2[1])
    with pytest.raises(microscopy.SelectionError) as caught:
        read(plate(), series=1)  # its two channels need a choice, as in a file of its own
    assert caught.value.choices["series"] == [{"index": 0, "name": "A1", "about": "50×40"},
                                              {"index": 1, "name": "A2", "about": "20×30 · 2 ch"}]


@pytest.mark.parametrize("data", [plate(), im.png(WELL_A1)], ids=["ome-tiff", "png"])
def test_an_image_the_file_lacks_is_a_selection_error(data: bytes) -> None:
    with pytest.raises(microscopy.SelectionError, match="series=") as caught:
        read(data, series=2)
    assert caught.value.params == ("series",)
    assert read(data, series=0).image.shape == WELL_A1.shape  # the first (only) one may be named


def test_a_slide_reads_the_image_asked_for(tmp_path) -> None:
    path = tmp_path / "plate.ome.tif"
    path.write_bytes(plate())
    selection = microscopy.Selection(series=1, channel="GFP")
    with slide_files.open_slide(path, selection, max_pixels=MAX_PIXELS, limits=Limits()) as slide:
        assert slide.shape == (30, 20)
        np.testing.assert_array_equal(slide.read(0, 30, 0, 20), WELL_A2[0])


def test_series_all_makes_one_job_per_image_named_s(tmp_path) -> None:
    (tmp_path / "plate.ome.tif").write_bytes(plate())
    (tmp_path / "single.png").write_bytes(im.png(WELL_A1))
    kind = client.OUTPUT_KINDS["mask"]
    found = [(tmp_path / "plate.ome.tif", tmp_path.joinpath("plate.ome.tif").relative_to(tmp_path)),
             (tmp_path / "single.png", tmp_path.joinpath("single.png").relative_to(tmp_path))]
    jobs = client.plan_jobs(found, tmp_path / "out", kind, every_plane="series")
    assert [(j.target.name, j.plane) for j in jobs] == [
        ("plate.ome_s0.png", (("series", 0),)), ("plate.ome_s1.png", (("series", 1),)), ("single.png", ())]


def test_each_image_is_described_so_a_person_can_tell_them_apart() -> None:
    """A LAS X project's images are all "Series001", "Series002"...: the 422's choices, POST
    /probe and the web page's picker say what each holds (size, colour, channels, z, t, tiles),
    read from the headers alone, for OME-TIFF Images, CZI scenes and LIF images."""
    from tests.czi_files import Tile, czi_bytes
    from tests.lif_files import Image, lif_bytes

    layout = microscopy.probe(plate(), MAX_PIXELS, Limits())
    assert layout.series_about == ("50×40", "20×30 · 2 ch")
    assert layout.choices()["series"][1] == {"index": 1, "name": "A2", "about": "20×30 · 2 ch"}
    assert layout.describe()["series"]["about"] == ["50×40", "20×30 · 2 ch"]
    scenes = czi_bytes([Tile(WELL_A1, scene=0), Tile(WELL_A2[0], c=0, x=900, scene=1),
                        Tile(WELL_A2[1], c=1, x=900, scene=1)])
    assert microscopy.probe(scenes, MAX_PIXELS, Limits()).series_about == ("50×40", "20×30 · 2 ch")
    project = lif_bytes([Image("Series001", np.zeros((3, 2, 40, 50), np.uint16), "ZCYX"),
                         Image("Series002", np.zeros((5, 30, 20), np.uint16), "TYX"),
                         Image("Series003", np.zeros((30, 20, 3), np.uint8), "YXS"),
                         Image("TileScan 1", np.zeros((4, 16, 16), np.uint8), "MYX")])
    about = microscopy.probe(project, MAX_PIXELS, Limits()).series_about
    assert about == ("50×40 · 2 ch · 3 z", "20×30 · 5 t", "20×30 · RGB", "16×16 · 4 tiles")
    assert microscopy.probe(im.png(WELL_A1), MAX_PIXELS, Limits()).series_about == ()
    with pytest.raises(microscopy.SelectionError) as caught:
        read(project, series=4)  # the 422 for an image the file lacks describes those it has
    assert [c["about"] for c in caught.value.choices["series"]] == list(about)
