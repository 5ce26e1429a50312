"""One frame of a movie cut into a partial OME-TIFF (``service.frames``): read back by the
service's own reader (``service.microscopy``) as the same file, at the same plane, holding only
the pages that plane needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service import frames, microscopy
from service.imaging import UndecodableImage

MAX_PIXELS, MAX_PAGES = 10**8, 10_000


def read(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, MAX_PAGES)  # type: ignore[arg-type]


def page_count(data: bytes) -> int:
    return microscopy.count_tiff_pages(data, MAX_PAGES)


@pytest.fixture
def hyperstack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An ImageJ hyperstack as Fiji saves one: 5 time points × 3 slices × 2 named channels,
    calibrated at 0.65 µm, every page different."""
    rng = np.random.default_rng(0)
    movie = rng.integers(0, 4000, (5, 3, 2, 40, 50), dtype=np.uint16)  # TZCYX
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "TZCYX", "unit": "um", "Labels": ["Actin", "DAPI"] * 15})
    return path, movie


def test_the_cut_reads_as_the_file_at_the_same_plane_and_holds_one_page(hyperstack) -> None:
    path, movie = hyperstack
    whole = path.read_bytes()
    cut = frames.cut_frame(path, "t", 3, microscopy.Selection(channel="DAPI", z=1), MAX_PIXELS)
    assert cut is not None and page_count(cut) == 1 and len(cut) < len(whole) / 20
    before = microscopy.probe(whole, MAX_PIXELS, MAX_PAGES)
    after = microscopy.probe(cut, MAX_PIXELS, MAX_PAGES)
    # The same axes, channels (with their names), planes and pixel size: the service offers and
    # reads the same choices; only the calibration's source and the format say it is OME now.
    assert replace(after, format=before.format, pixel_size=before.pixel_size) == before
    assert after.pixel_size == microscopy.PixelSize(0.65, 0.65, "ome")
    plane = read(cut, channel="DAPI", z=1, t=3)
    assert np.array_equal(plane.image, movie[3, 1, 1])
    assert plane.position() == read(whole, channel="DAPI", z=1, t=3).position() == (1, 1, 3)
    # A plane the cut does not hold is the service's clear 400, never a plane of zeros.
    with pytest.raises(UndecodableImage, match="missing"):
        read(cut, channel="DAPI", z=1, t=2)


def test_a_projection_takes_every_slice_of_the_chosen_channel(hyperstack) -> None:
    path, movie = hyperstack
    cut = frames.cut_frame(path, "t", 4, microscopy.Selection(channel="1", project="max"), MAX_PIXELS)
    assert cut is not None and page_count(cut) == 3
    assert np.array_equal(read(cut, channel="1", project="max", t=4).image, movie[4, :, 1].max(axis=0))


def test_z_all_with_a_time_point_takes_that_slice_of_that_time_point(hyperstack) -> None:
    path, movie = hyperstack
    cut = frames.cut_frame(path, "z", 2, microscopy.Selection(channel="0", t=1), MAX_PIXELS)
    assert cut is not None and page_count(cut) == 1
    assert np.array_equal(read(cut, channel="0", z=2, t=1).image, movie[1, 2, 0])


def test_without_a_channel_the_whole_frame_goes_and_the_service_lists_the_files_choices(hyperstack) -> None:
    path, _ = hyperstack
    whole = path.read_bytes()
    cut = frames.cut_frame(path, "t", 0, microscopy.Selection(z=1), MAX_PIXELS)
    assert cut is not None and page_count(cut) == 3 * 2  # every slice and channel of time point 0
    with pytest.raises(microscopy.SelectionError) as from_cut:
        read(cut, z=1, t=0)
    with pytest.raises(microscopy.SelectionError) as from_file:
        read(whole, z=1, t=0)
    assert from_cut.value.params == from_file.value.params == ("channel",)
    assert from_cut.value.choices == from_file.value.choices


def test_a_colour_movie_keeps_its_first_page_for_the_colour_check(tmp_path: Path) -> None:
    # One stain exported in its colour (blue only): the service reads blue without a choice,
    # judged on the file's first page, so the cut of a later frame carries that page too.
    rng = np.random.default_rng(1)
    movie = np.zeros((4, 30, 20, 3), np.uint8)
    movie[..., 2] = rng.integers(0, 255, (4, 30, 20), dtype=np.uint8)
    path = tmp_path / "blue.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYXS"}, photometric="rgb")
    cut = frames.cut_frame(path, "t", 2, microscopy.Selection(), MAX_PIXELS)
    assert cut is not None and page_count(cut) == 2
    plane = read(cut, t=2)
    assert plane.channel == microscopy.Channel(2, "blue") and np.array_equal(plane.image, movie[2, :, :, 2])


def test_an_ome_tiff_keeps_its_channel_names_and_non_ascii_units(tmp_path: Path) -> None:
    movie = np.arange(3 * 2 * 8 * 9, dtype=np.uint8).reshape(3, 2, 8, 9)  # TCYX
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, movie, metadata={"axes": "TCYX", "Channel": {"Name": ["Hoechst", "GFP µ"]},
                                            "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
                                            "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "µm"})
    cut = frames.cut_frame(path, "t", 1, microscopy.Selection(channel="hoechst"), MAX_PIXELS)
    assert cut is not None
    layout = microscopy.probe(cut, MAX_PIXELS, MAX_PAGES)
    assert [c.name for c in layout.channels] == ["Hoechst", "GFP µ"]
    assert layout.pixel_size == microscopy.PixelSize(0.5, 0.25, "ome")
    assert np.array_equal(read(cut, channel="Hoechst", t=1).image, movie[1, 0])


def test_a_cut_of_a_calibrated_z_stack_keeps_the_z_step(tmp_path: Path) -> None:
    stack = np.arange(2 * 4 * 8 * 9, dtype=np.uint16).reshape(2, 4, 8, 9)  # TZYX
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "TZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25,
                                            "PhysicalSizeZ": 2000, "PhysicalSizeZUnit": "nm"})
    for axis, index, selection in [("t", 1, microscopy.Selection(project="max")),
                                   ("z", 2, microscopy.Selection(t=0))]:
        cut = frames.cut_frame(path, axis, index, selection, MAX_PIXELS)
        assert cut is not None
        size = microscopy.probe(cut, MAX_PIXELS, MAX_PAGES).pixel_size
        assert size == microscopy.PixelSize(0.5, 0.25, "ome", 2.0)


def test_what_is_not_a_stack_with_that_plane_is_sent_whole(hyperstack, tmp_path: Path) -> None:
    path, _ = hyperstack
    selection = microscopy.Selection(channel="0", z=0)
    assert frames.cut_frame(path, "t", 5, selection, MAX_PIXELS) is None  # past the last time point
    assert frames.cut_frame(path, "t", 0, selection, 40 * 50 - 1) is None  # a frame over the limit
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, np.zeros((8, 8), np.uint16))
    assert frames.cut_frame(single, "t", 0, microscopy.Selection(), MAX_PIXELS) is None
    png = tmp_path / "x.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not a TIFF")
    assert frames.cut_frame(png, "t", 0, microscopy.Selection(), MAX_PIXELS) is None


def test_a_cut_holds_the_measured_channels_pages_too(hyperstack) -> None:
    path, movie = hyperstack
    selection = microscopy.Selection(channel="DAPI", z=2, measure=("Actin",))
    cut = frames.cut_frame(path, "t", 1, selection, MAX_PIXELS)
    assert cut is not None and page_count(cut) == 2
    plane = read(cut, channel="DAPI", z=2, t=1, measure=("Actin",))
    assert np.array_equal(plane.image, movie[1, 2, 1])
    measured = [(m.channel.name, np.array_equal(m.image, movie[1, 2, 0])) for m in plane.measured]
    assert measured == [("Actin", True)]


def test_a_cut_for_channels_measured_as_a_projection_holds_every_slice(hyperstack) -> None:
    path, movie = hyperstack
    selection = microscopy.Selection(channel="DAPI", z=2, measure=("Actin",), measure_project="sum")
    cut = frames.cut_frame(path, "t", 4, selection, MAX_PIXELS)
    assert cut is not None and page_count(cut) == 3 * 2  # every z of both channels
    plane = read(cut, channel="DAPI", z=2, t=4, measure=("Actin",), measure_project="sum")
    assert np.array_equal(plane.image, movie[4, 2, 1])
    (actin,) = plane.measured
    assert plane.measured_projection == "sum"
    assert np.array_equal(actin.image, movie[4, :, 0].astype(np.float32).sum(axis=0))


# --- one image of a file holding several (--series) ---------------------------------------------


def _project(tmp_path: Path) -> tuple[dict[str, Path], list[np.ndarray]]:
    """The same two images (a 2-channel z-stack, then a single plane) as an OME-TIFF of two
    Images, a CZI of two scenes and a LIF project of two images."""
    from tests.czi_files import Tile, czi_bytes
    from tests.lif_files import Image, lif_bytes

    rng = np.random.default_rng(5)
    stack = rng.integers(0, 4000, (3, 2, 40, 50), dtype=np.uint16)  # ZCYX
    field = rng.integers(0, 4000, (30, 20), dtype=np.uint16)
    paths = {"ome": tmp_path / "positions.ome.tif", "czi": tmp_path / "plate.czi",
             "lif": tmp_path / "session.lif"}
    with tifffile.TiffWriter(paths["ome"], ome=True) as writer:
        writer.write(stack, metadata={"axes": "ZCYX", "Channel": {"Name": ["Actin", "DAPI"]}})
        writer.write(field, metadata={"axes": "YX"})
    tiles = [Tile(stack[z, c], c=c, z=z, scene=0) for z in range(3) for c in range(2)]
    tiles.append(Tile(field, x=900, scene=1))
    paths["czi"].write_bytes(czi_bytes(tiles, {0: "Actin", 1: "DAPI"}, 0.65e-6))
    paths["lif"].write_bytes(lif_bytes([Image("Series001", stack, "ZCYX", ("Actin", "DAPI")),
                                        Image("Series002", field)]))
    return paths, [stack, field]


@pytest.mark.parametrize("kind", ["ome", "czi", "lif"])
def test_one_image_of_several_is_cut_and_read_alone_as_the_file_reads_it(tmp_path: Path, kind: str) -> None:
    """``--series``: the chosen image's pages the choices need, read without series= as the whole
    file reads with it; the other image's pages are not sent."""
    paths, (stack, field) = _project(tmp_path)
    path = paths[kind]
    whole = path.read_bytes()
    selection = microscopy.Selection(channel="1", z=2)
    first = frames.cut_image(path, 0, selection, MAX_PIXELS)
    assert first is not None and page_count(first) == 1
    assert np.array_equal(read(first, channel="1", z=2).image, stack[2, 1])
    assert np.array_equal(read(first, channel="1", z=2).image, read(whole, channel="1", z=2, series=0).image)
    incomplete = frames.cut_image(path, 0, microscopy.Selection(), MAX_PIXELS)
    assert incomplete is not None and page_count(incomplete) == 3 * 2  # every page: the service lists them
    second = frames.cut_image(path, 1, microscopy.Selection(), MAX_PIXELS)
    assert second is not None and page_count(second) == 1
    plane = read(second)
    assert np.array_equal(plane.image, field) and plane.layout.series_count == 1
    assert np.array_equal(plane.image, read(whole, series=1).image)
    assert frames.cut_image(path, 2, selection, MAX_PIXELS) is None  # no such image: the service says so


def test_a_file_of_one_image_is_not_cut(hyperstack) -> None:
    path, _ = hyperstack
    assert frames.cut_image(path, 0, microscopy.Selection(channel="0", z=0, t=0), MAX_PIXELS) is None


def test_a_frame_of_a_chosen_image_is_cut_from_that_image(tmp_path: Path) -> None:
    """``--series 0 --z all``: each slice cut from image 0, read alone at that z."""
    paths, (stack, _) = _project(tmp_path)
    for kind, path in paths.items():
        cut = frames.cut_frame(path, "z", 1, microscopy.Selection(channel="DAPI"), MAX_PIXELS, series=0)
        assert cut is not None and page_count(cut) == 1, kind
        assert np.array_equal(read(cut, channel="DAPI", z=1).image, stack[1, 1]), kind


def test_an_lsm_whose_channels_are_a_pages_samples_is_cut_channel_by_channel(tmp_path: Path) -> None:
    from tests.vendor_tiffs import lsm_bytes

    rng = np.random.default_rng(3)
    movie = rng.integers(0, 4000, (6, 3, 40, 50), dtype=np.uint16)  # TCYX, the tracks one page
    path = tmp_path / "movie.lsm"
    path.write_bytes(lsm_bytes(movie, "TCYX", (0.5, 0.5, 1.0), ["Ch1-T1", "ChS1-T2", "Ch2-T3"]))
    choice = {"channel": "ChS1-T2", "measure": ("Ch2-T3",)}
    cut = frames.cut_frame(path, "t", 4, microscopy.Selection(**choice), MAX_PIXELS)  # type: ignore[arg-type]
    assert cut is not None and page_count(cut) == 2  # the chosen track and the one measured
    layout = microscopy.probe(cut, MAX_PIXELS, MAX_PAGES)
    assert [c.name for c in layout.channels] == ["Ch1-T1", "ChS1-T2", "Ch2-T3"]
    assert layout.pixel_size is not None and layout.pixel_size.x_um == 0.5
    plane = read(cut, t=4, **choice)
    assert np.array_equal(plane.image, movie[4, 1])
    assert np.array_equal(plane.measured[0].image, movie[4, 2])
