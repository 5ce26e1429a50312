"""Slide files read by window (service/slide_files.py) on files the tests write with tifffile and
ome-zarr: windows equal the same crop of the written array, the plane choice is an upload's,
and reading a window decodes only what it touches."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image

from service import microscopy, slide_files, structure
from service.imaging import UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from service.regions import ArraySource, RegionSource
from service.slide_files import SlideTooLarge, open_slide, overview
from service.structure import TooManyPages

BIG = 10**10  # the default slide limit's order: no refusal by size


def _pattern(shape: tuple[int, ...], dtype=np.uint16) -> np.ndarray:
    """Distinct values everywhere (a window taken from the wrong place differs)."""
    size = int(np.prod(shape))
    return (np.arange(size, dtype=np.uint64) * 7919 % 60013).astype(dtype).reshape(shape)


def _write_pyramid(path: Path, data: np.ndarray, axes: str, levels: int, **meta) -> None:
    """A tiled pyramidal OME-TIFF (sub-resolutions as SubIFDs, as bfconvert and QuPath write)."""
    opts = dict(tile=(128, 128), compression="zlib", photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(data, subifds=levels - 1, metadata={"axes": axes, **meta}, **opts)
        for k in range(1, levels):
            tw.write(data[..., :: 2**k, :: 2**k], subfiletype=1, **opts)


@pytest.fixture(scope="module")
def cyx(tmp_path_factory) -> tuple[Path, np.ndarray]:
    data = _pattern((3, 700, 900))
    path = tmp_path_factory.mktemp("slides") / "cyx.ome.tif"
    _write_pyramid(path, data, "CYX", 3, PhysicalSizeX=0.5, PhysicalSizeY=0.5,
                   Channel={"Name": ["DAPI", "GFP", "RFP"]})
    return path, data


def test_tiled_ome_tiff_windows_equal_crops_of_the_chosen_channel(cyx):
    path, data = cyx
    for channel, index in (("GFP", 1), ("2", 2), ("dapi", 0)):
        with open_slide(path, Selection(channel=channel), max_pixels=BIG, limits=100) as source:
            assert isinstance(source, RegionSource)
            assert source.shape == (700, 900) and source.dtype == np.uint16
            windows = ((0, 700, 0, 900), (5, 133, 250, 257), (690, 700, 899, 900), (127, 129, 0, 900))
            for y0, y1, x0, x1 in windows:
                assert np.array_equal(source.read(y0, y1, x0, x1), data[index, y0:y1, x0:x1])
            assert source.plane.channel is not None and source.plane.channel.index == index
            assert source.chunk_rows == 128  # the tile height
    assert source.pixel_size is not None and (source.pixel_size.x_um, source.pixel_size.y_um) == (0.5, 0.5)
    assert source.levels == [(700, 900), (350, 450), (175, 225)]
    with pytest.raises(ValueError):
        source.read(0, 701, 0, 10)


def test_several_channels_and_no_choice_is_the_uploads_selection_error(cyx):
    path, _ = cyx
    with pytest.raises(SelectionError) as caught:
        open_slide(path, max_pixels=BIG, limits=100)
    assert caught.value.missing and caught.value.params == ("channel",)
    assert [c["name"] for c in caught.value.choices["channels"]] == ["DAPI", "GFP", "RFP"]
    with pytest.raises(SelectionError, match="no channel 'CY5'"):
        open_slide(path, Selection(channel="CY5"), max_pixels=BIG, limits=100)


def test_projection_is_refused_for_slides(tmp_path):
    path = tmp_path / "zyx.ome.tif"
    tifffile.imwrite(path, _pattern((4, 64, 64)), ome=True, metadata={"axes": "ZYX"}, tile=(32, 32))
    with pytest.raises(SelectionError, match="not offered for slides") as caught:
        open_slide(path, Selection(project="max"), max_pixels=BIG, limits=100)
    assert caught.value.params == ("project",)


def test_z_t_and_channel_pick_the_plane_of_a_hyperstack(tmp_path):
    data = _pattern((2, 3, 2, 96, 80))
    path = tmp_path / "tzcyx.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZCYX"}, tile=(32, 32), compression="zlib")
    with open_slide(path, Selection(channel="1", z=2, t=1), max_pixels=BIG, limits=100) as source:
        assert np.array_equal(source.read(10, 90, 7, 80), data[1, 2, 1, 10:90, 7:80])
        assert (source.plane.z, source.plane.t) == (2, 1)
    with pytest.raises(SelectionError) as caught:
        open_slide(path, Selection(channel="1"), max_pixels=BIG, limits=100)
    assert set(caught.value.params) == {"z", "t"}
    with pytest.raises(SelectionError, match="z=3 is outside"):
        open_slide(path, Selection(channel="1", z=3, t=0), max_pixels=BIG, limits=100)


def test_rgb_slide_keeps_colour_or_takes_one_sample(tmp_path):
    rgb = _pattern((200, 300, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(64, 64), compression="zlib")
    with pytest.raises(SelectionError) as caught:
        open_slide(path, max_pixels=BIG, limits=100)
    assert caught.value.params == ("channel",) and caught.value.choices.get("mix") == "gray"
    with open_slide(path, Selection(channel="green"), max_pixels=BIG, limits=100) as source:
        assert source.shape == (200, 300)
        assert np.array_equal(source.read(3, 170, 40, 299), rgb[3:170, 40:299, 1])
    with open_slide(path, max_pixels=BIG, limits=100, model_channels=3) as source:
        assert source.shape == (200, 300, 3)
        assert np.array_equal(source.read(3, 170, 40, 299), rgb[3:170, 40:299])
    grey = np.repeat(_pattern((200, 300, 1), np.uint8), 3, axis=2)
    tifffile.imwrite(path, grey, photometric="rgb", tile=(64, 64))
    with open_slide(path, max_pixels=BIG, limits=100) as source:  # grey saved as RGB: no choice
        assert source.plane.layout.grey_rgb and source.shape == (200, 300, 3)


def test_strip_tiffs_read_by_window_and_huge_compressed_strips_are_refused(tmp_path):
    data = _pattern((1000, 1200))
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, data, compression="zlib", rowsperstrip=16)
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        assert np.array_equal(source.read(100, 420, 33, 1100), data[100:420, 33:1100])
        assert source.chunk_rows == 16  # a read decodes whole strips
    # one uncompressed strip of the whole plane (ImageJ's way): read through a per-read map
    tifffile.imwrite(path, data, rowsperstrip=1000)
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        assert source.chunk_rows is None  # read by byte range: any rows cost only those rows
        assert np.array_equal(source.read(999, 1000, 0, 1200), data[999:1000])
        assert np.array_equal(source.read(17, 509, 1000, 1199), data[17:509, 1000:1199])
    # one compressed strip of 6000² × 1 B = 34 MiB: every window would decode all of it
    tifffile.imwrite(path, np.zeros((6000, 6000), np.uint8), compression="zlib", rowsperstrip=6000)
    with pytest.raises(UnsupportedImageType, match="re-save it tiled"):
        open_slide(path, max_pixels=BIG, limits=100)


def test_size_and_structure_limits_are_checked_before_pixels(cyx, tmp_path):
    path, _ = cyx
    with pytest.raises(SlideTooLarge, match="UNET_MAX_SLIDE_PIXELS") as caught:
        open_slide(path, Selection(channel="0"), max_pixels=700 * 900 - 1, limits=100)
    assert caught.value.width == 900 and caught.value.height == 700
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tw:
        for _ in range(5):
            tw.write(np.zeros((8, 8), np.uint8))
    with pytest.raises(TooManyPages):
        open_slide(pages, max_pixels=BIG, limits=4)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with pytest.raises(UnsupportedImageType, match="CZI, LIF, ND2, OIB, ZVI, DeltaVision or Imaris"):
        open_slide(png, max_pixels=BIG, limits=100)


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff-0.4", "ngff-0.5"])
def test_ome_zarr_input_level_zero_axes_and_scale(tmp_path, fmt):
    data = _pattern((2, 3, 300, 260))  # c, z, y, x
    path = tmp_path / "image.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=fmt.zarr_format)
    write_image(
        data, root, fmt=fmt, scale_factors=(2, 4), axes="czyx", scale={"z": 2.0, "y": 0.25, "x": 0.25},
        axes_units={a: "micrometer" for a in "zyx"}, storage_options={"chunks": (1, 1, 64, 64)},
    )
    # channel names (OME's "omero" block, beside the multiscales; under "ome" in 0.5)
    omero = {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}
    if fmt.version == "0.4":
        root.attrs["omero"] = omero
    else:
        root.attrs["ome"] = {**root.attrs["ome"], "omero": omero}
    with pytest.raises(SelectionError) as caught:
        open_slide(path, max_pixels=BIG, limits=100)
    assert set(caught.value.params) == {"channel", "z"}
    with open_slide(path, Selection(channel="gfp", z=2), max_pixels=BIG, limits=100) as source:
        assert source.shape == (300, 260) and source.dtype == np.uint16
        assert np.array_equal(source.read(31, 290, 5, 199), data[1, 2, 31:290, 5:199])
        assert source.pixel_size is not None and source.pixel_size.x_um == 0.25
        assert source.pixel_size.z_um == 2.0  # the z axis's scale: volumes of stack jobs in µm³
        assert source.chunk_rows == 64  # the chunks' y edge (axis 2 of 4)
        assert source.plane.layout.format == f"OME-Zarr {fmt.version}"
        assert source.levels[0] == (300, 260) and len(source.levels) == 3
        small = overview(source, 80 * 70)
        assert small.level == 2 and small.image.shape == source.levels[2]
        assert np.array_equal(small.image, source.read_level(2, 0, 75, 0, 65))


def test_overview_without_a_pyramid_is_a_strided_sample_read_by_window():
    image = _pattern((5000, 3001))
    view = overview(ArraySource(image), 1000 * 700)
    step = 5  # the smallest stride that brings 5000 × 3001 under 700,000 pixels
    assert view.image.shape == (1000, 601) and view.level == 0
    assert np.array_equal(view.image, image[::step, ::step])
    assert view.scale == pytest.approx((5.0, 3001 / 601))


def test_overview_prefers_the_largest_pyramid_level_that_fits(cyx):
    path, data = cyx
    with open_slide(path, Selection(channel="0"), max_pixels=BIG, limits=100) as source:
        view = overview(source, 400 * 500)
        assert view.level == 1 and np.array_equal(view.image, data[0, ::2, ::2])
        flat = overview(source, 400 * 500, use_pyramid=False)
        assert flat.level == 0 and np.array_equal(flat.image, data[0, ::2, ::2])


def _tiles(height: int, width: int, tile: int):
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yy, xx = np.mgrid[y : y + tile, x : x + tile]
            yield ((yy * 3 + xx * 5) % 251).astype(np.uint8)


@pytest.mark.slow
def test_reading_a_window_of_a_large_tiled_tiff_decodes_only_its_tiles(tmp_path):
    n, tile = 16384, 512  # 256 MiB decoded
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, _tiles(n, n, tile), shape=(n, n), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib", bigtiff=True)
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        tracemalloc.start()
        try:
            window = source.read(9000, 10024, 12000, 13024)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            view = overview(source, 1024 * 1024)
            _, overview_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    yy, xx = np.mgrid[9000:10024, 12000:13024]
    assert np.array_equal(window, ((yy * 3 + xx * 5) % 251).astype(np.uint8))
    # the window (1 MiB) touches 3 × 3 tiles of 256 KiB; the whole plane is 256 MiB
    assert peak < 12 * 2**20
    assert view.image.shape == (1024, 1024) and view.scale == (16.0, 16.0)
    assert overview_peak < 24 * 2**20  # output 1 MiB + one 2048² window (4 MiB) + its tiles


def _read_traced(source: RegionSource, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, int]:
    """The window ``[y0:y1, x0:x1]`` and the peak of Python allocations while reading it."""
    tracemalloc.start()
    try:
        window = source.read(y0, y1, x0, x1)
        return window, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_uncompressed_single_strip_window_copies_only_the_window(tmp_path):
    n = 4096
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, _pattern((n, n)), rowsperstrip=n)  # 32 MiB, one strip
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        window, peak = _read_traced(source, 1000, 1256, 3000, 3256)
    assert np.array_equal(window, _pattern((n, n))[1000:1256, 3000:3256])
    assert peak < 2 * 2**20


def test_is_slide_path(cyx, tmp_path):
    path, _ = cyx
    assert slide_files.is_slide_path(path)
    root = zarr.open_group(tmp_path / "z.zarr", mode="w", zarr_format=2)
    assert slide_files.is_slide_path(tmp_path / "z.zarr") and root is not None
    (tmp_path / "x.txt").write_text("hello")
    assert not slide_files.is_slide_path(tmp_path / "x.txt")


@pytest.mark.parametrize("selection", [Selection(channel="GFP"), Selection(channel="2", pixel_size_um=0.3)])
def test_a_slide_plane_is_the_uploads_plane(cyx, selection):
    """The same file and options give the same pixels and the same description either way."""
    path, _ = cyx
    upload = microscopy.select(path.read_bytes(), selection, max_pixels=BIG, limits=100)
    with open_slide(path, selection, max_pixels=BIG, limits=100) as slide:
        assert np.array_equal(slide.read(0, 700, 0, 900), upload.image)
        assert slide.plane.describe() == upload.describe()
        assert slide.plane.warnings == upload.warnings


def test_ome_zarr_from_bioformats2raw_without_units_and_with_one_huge_chunk(tmp_path):
    data = _pattern((1, 1, 1, 120, 100))  # t, c, z, y, x
    path = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    write_image(data, root.create_group("0"), fmt=FormatV04(), scale_factors=(), axes="tczyx")
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        assert source.shape == (120, 100)
        assert np.array_equal(source.read(7, 99, 3, 100), data[0, 0, 0, 7:99, 3:100])
        assert source.pixel_size is None  # a scale without a unit is not a size in µm
        assert any("no unit" in note for note in source.plane.warnings)
    big = tmp_path / "one-chunk.ome.zarr"
    root = zarr.open_group(big, mode="w", zarr_format=2)
    write_image(np.zeros((6000, 6000), np.uint8), root, fmt=FormatV04(), scale_factors=(), axes="yx",
                storage_options={"chunks": (6000, 6000)})
    with pytest.raises(UnsupportedImageType, match="re-save it tiled"):
        open_slide(big, max_pixels=BIG, limits=100)


def test_ome_zarr_collections_offer_their_images_and_a_plate_says_how_to_name_a_field(tmp_path):
    """Real stores (ome-zarr-py's bioformats2raw test data, Fractal's plate): bioformats2raw's
    second image was unreachable (series=1 a 422), a well was "no multiscales", a bioformats2raw
    plate a KeyError, and a channel labelled with the number 0 was unnamed."""
    images = [_pattern((1, 2, 1, 40, 30)), _pattern((1, 2, 1, 40, 30))[..., ::-1]]
    b2r = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(b2r, mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for k, data in enumerate(images):
        group = root.create_group(str(k))
        write_image(data, group, fmt=FormatV04(), scale_factors=(), axes="tczyx")
        group.attrs["omero"] = {"channels": [{"label": 0}, {"label": 1}]}
    with open_slide(b2r, Selection(channel="0"), max_pixels=BIG, limits=100) as first:
        assert np.array_equal(first.read(0, 40, 0, 30), images[0][0, 0, 0])
        assert first.plane.layout.series_count == 2 and any("series=1" in w for w in first.plane.warnings)
        assert [c.name for c in first.plane.layout.channels] == ["0", "1"]
    with open_slide(b2r, Selection(channel="1", series=1), max_pixels=BIG, limits=100) as second:
        assert np.array_equal(second.read(0, 40, 0, 30), images[1][0, 1, 0])
    with pytest.raises(SelectionError):
        open_slide(b2r, Selection(channel="0", series=2), max_pixels=BIG, limits=100)

    plate = tmp_path / "plate.ome.zarr"
    root = zarr.open_group(plate, mode="w", zarr_format=2)
    root.attrs["plate"] = {"wells": [{"path": "B/03", "rowIndex": 0, "columnIndex": 0}],
                           "rows": [{"name": "B"}], "columns": [{"name": "03"}], "version": "0.4"}
    well = root.create_group("B/03")
    well.attrs["well"] = {"images": [{"path": "0"}, {"path": "1"}], "version": "0.4"}
    for k, data in enumerate(images):
        write_image(data, well.create_group(str(k)), fmt=FormatV04(), scale_factors=(), axes="tczyx")
    with pytest.raises(UnsupportedImageType, match="HCS plate of 1 well.*'B/03/0'"):
        open_slide(plate, Selection(channel="0"), max_pixels=BIG, limits=100)
    fields = plate / "B" / "03"
    with open_slide(fields, Selection(channel="0", series=1), max_pixels=BIG, limits=100) as field:
        assert np.array_equal(field.read(0, 40, 0, 30), images[1][0, 0, 0])
        assert field.plane.layout.series_names == ("0", "1")
    with open_slide(plate / "B" / "03" / "0", Selection(channel="0"), max_pixels=BIG, limits=100) as field:
        assert np.array_equal(field.read(0, 40, 0, 30), images[0][0, 0, 0])


def test_an_ngff_0_6_store_is_refused_for_its_coordinate_systems(tmp_path):
    path = tmp_path / "new.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    write_image(_pattern((40, 30)), root, fmt=FormatV04(), scale_factors=(), axes="yx")
    multiscale = dict(root.attrs["multiscales"][0], coordinateSystems=[{"name": "physical", "axes": []}])
    root.attrs["multiscales"] = [multiscale]
    with pytest.raises(UnsupportedImageType, match="NGFF 0.6"):
        open_slide(path, max_pixels=BIG, limits=100)


# --- LIF: a Leica project's image read from a memory map of the file ------------------------------


@pytest.fixture(scope="module")
def lif_project(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A LAS X project: a small field, then a 2-time-point × 3-slice × 2-channel stack of 700×900
    (storage order TZCYX), then a colour image stored blue first."""
    from tests.lif_files import Image, lif_bytes

    stack = _pattern((2, 3, 2, 700, 900))
    colour = _pattern((300, 400, 3), np.uint8)
    path = tmp_path_factory.mktemp("lif") / "session.lif"
    path.write_bytes(lif_bytes([Image("field", _pattern((40, 50))),
                                Image("stack", stack, "TZCYX", ("Green", "Blue"), 0.5, z_um=2.0),
                                Image("brightfield", colour, "YXS", folder="Position 2")]))
    return path, stack, colour


def test_lif_windows_equal_crops_of_the_chosen_image_plane_and_channel(lif_project):
    path, stack, _ = lif_project
    for t, z, channel, index in ((0, 0, "green", 0), (1, 2, "Blue", 1), (1, 1, "0", 0)):
        selection = Selection(series=1, channel=channel, z=z, t=t)
        with open_slide(path, selection, max_pixels=BIG, limits=100) as source:
            assert source.shape == (700, 900) and source.dtype == np.uint16
            for y0, y1, x0, x1 in ((0, 700, 0, 900), (5, 133, 250, 257), (690, 700, 899, 900)):
                assert np.array_equal(source.read(y0, y1, x0, x1), stack[t, z, index, y0:y1, x0:x1])
            assert source.pixel_size == microscopy.PixelSize(0.5, 0.5, "lif", 2.0)


def test_a_lif_slide_plane_is_the_uploads_plane_and_colour_comes_out_red_first(lif_project):
    path, _, colour = lif_project
    selection = Selection(series=1, channel="Blue", z=2, t=1)
    upload = microscopy.select(path.read_bytes(), selection, max_pixels=BIG, limits=100)
    with open_slide(path, selection, max_pixels=BIG, limits=100) as slide:
        assert np.array_equal(slide.read(0, 700, 0, 900), upload.image)
        assert slide.plane.describe() == upload.describe()
    with open_slide(path, Selection(series=2, channel="red"), max_pixels=BIG, limits=100) as red:
        assert np.array_equal(red.read(10, 20, 30, 40), colour[10:20, 30:40, 0])
    with open_slide(path, Selection(series=2), max_pixels=BIG, limits=100, model_channels=3) as whole:
        assert np.array_equal(whole.read(0, 300, 0, 400), colour)
    assert slide_files.is_slide_path(path)


def test_a_lif_window_reads_only_its_own_bytes(lif_project):
    path, stack, _ = lif_project
    with open_slide(path, Selection(series=1, channel="1", z=0, t=0), max_pixels=BIG, limits=100) as source:
        window, peak = _read_traced(source, 100, 164, 200, 264)
    assert np.array_equal(window, stack[0, 0, 1, 100:164, 200:264])
    assert peak < 2**20  # the image is 15 MiB


def test_a_lif_image_over_the_slide_limit_is_refused(lif_project):
    path, _, _ = lif_project
    with pytest.raises(SlideTooLarge):
        open_slide(path, Selection(series=1, channel="0", z=0, t=0), max_pixels=700 * 900 - 1, limits=100)


# --- ND2: a Nikon file's frames, each read from a memory map of the frame alone ---------------------


@pytest.fixture(scope="module")
def nd2_plate(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Two XY positions × 2 time points × 3 slices of 700×900 × 2 channels, stored as NIS does:
    one frame per time point, position and slice, its channels interleaved, rows padded."""
    from tests.nd2_files import Nd2, write_nd2

    frames = _pattern((2, 2, 3, 700, 900, 2))  # TPZYXC
    path = tmp_path_factory.mktemp("nd2") / "plate.nd2"
    nd2 = Nd2(frames, "TPZYXC", ("FITC", "DAPI"), 0.5, 2.0, ("A1", "A2"), row_padding=4)
    path.write_bytes(write_nd2(nd2))
    return path, frames


def test_nd2_windows_equal_crops_of_the_chosen_position_plane_and_channel(nd2_plate):
    path, frames = nd2_plate
    for position, t, z, channel, index in ((1, 0, 0, "dapi", 1), (0, 1, 2, "FITC", 0), (1, 1, 1, "0", 0)):
        selection = Selection(series=position, channel=channel, z=z, t=t)
        with open_slide(path, selection, max_pixels=BIG, limits=100) as source:
            assert source.shape == (700, 900) and source.dtype == np.uint16
            for y0, y1, x0, x1 in ((0, 700, 0, 900), (5, 133, 250, 257), (690, 700, 899, 900)):
                expected = frames[t, position, z, y0:y1, x0:x1, index]
                assert np.array_equal(source.read(y0, y1, x0, x1), expected)
            assert source.pixel_size == microscopy.PixelSize(0.5, 0.5, "nd2", 2.0)
            assert source.chunk_rows is None  # read by byte range
    assert slide_files.is_slide_path(path)


def test_an_nd2_slide_plane_is_the_uploads_plane(nd2_plate):
    path, frames = nd2_plate
    selection = Selection(series=1, channel="DAPI", z=2, t=1)
    upload = microscopy.select(path.read_bytes(), selection, max_pixels=BIG, limits=100)
    with open_slide(path, selection, max_pixels=BIG, limits=100) as slide:
        assert np.array_equal(slide.read(0, 700, 0, 900), upload.image)
        assert slide.plane.describe() == upload.describe()
        measured = slide.of_channel(microscopy.Channel(0, "FITC"))
        assert np.array_equal(measured.read(10, 20, 30, 40), frames[1, 1, 2, 10:20, 30:40, 0])


def test_an_nd2_window_reads_only_its_own_bytes(nd2_plate):
    path, frames = nd2_plate
    with open_slide(path, Selection(series=0, channel="1", z=0, t=0), max_pixels=BIG, limits=100) as source:
        window, peak = _read_traced(source, 100, 164, 200, 264)
    assert np.array_equal(window, frames[0, 0, 0, 100:164, 200:264, 1])
    assert peak < 2**20  # a frame is 2.4 MiB, the file 58 MiB


def test_nd2_refusals_for_slides(nd2_plate, tmp_path):
    from tests.nd2_files import Nd2, write_nd2

    path, _ = nd2_plate
    with pytest.raises(SlideTooLarge):
        open_slide(path, Selection(series=0, channel="0", z=0, t=0), max_pixels=700 * 900 - 1, limits=100)
    packed = tmp_path / "packed.nd2"
    packed.write_bytes(write_nd2(Nd2(_pattern((64, 80)), lossless=True)))
    with pytest.raises(UnsupportedImageType, match="compressed"):
        open_slide(packed, max_pixels=BIG, limits=100)
    stopped = tmp_path / "stopped.nd2"
    unwritten = write_nd2(Nd2(_pattern((3, 64, 80)), "ZYX")).replace(b"ImageDataSeq|2!", b"ImageDataSeX|2!")
    stopped.write_bytes(unwritten)  # the acquisition stopped after two slices of three
    with (open_slide(stopped, Selection(z=2), max_pixels=BIG, limits=100) as source,
          pytest.raises(UndecodableImage, match="no whole frame 3")):
        source.read(0, 8, 0, 8)


# --- OIB: an Olympus file's planes, each a TIFF of its own decoded whole and kept ----------------


@pytest.fixture(scope="module")
def oib_stack(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Two time points × 3 slices × 2 channels of 300×400, one TIFF per plane as FluoView stores them."""
    from tests.oib_files import Oib, write_oib

    planes = _pattern((2, 3, 2, 300, 400))  # TZCYX
    path = tmp_path_factory.mktemp("oib") / "stack.oib"
    path.write_bytes(write_oib(Oib(planes, "TZCYX", ("Alexa Fluor 488", "DAPI"), 0.207, 450.0)))
    return path, planes


def test_oib_windows_equal_crops_of_the_chosen_plane_and_channel_and_equal_the_uploads(oib_stack):
    path, planes = oib_stack
    for t, z, channel, index in ((0, 0, "dapi", 1), (1, 2, "Alexa Fluor 488", 0), (1, 1, "1", 1)):
        selection = Selection(channel=channel, z=z, t=t)
        with open_slide(path, selection, max_pixels=BIG, limits=100) as source:
            assert source.shape == (300, 400) and source.dtype == np.uint16
            for y0, y1, x0, x1 in ((0, 300, 0, 400), (5, 133, 250, 257), (290, 300, 399, 400)):
                assert np.array_equal(source.read(y0, y1, x0, x1), planes[t, z, index, y0:y1, x0:x1])
            assert source.chunk_rows == 300  # a window decodes its whole plane
            upload = microscopy.select(path.read_bytes(), selection, max_pixels=BIG, limits=100)
            assert source.plane.describe() == upload.describe()
            measured = source.of_channel(microscopy.Channel(1 - index))
            assert np.array_equal(measured.read(10, 20, 30, 40), planes[t, z, 1 - index, 10:20, 30:40])
    assert slide_files.is_slide_path(path)


def test_oib_refusals_for_slides(oib_stack, monkeypatch):
    path, _ = oib_stack
    choice = Selection(channel="0", z=0, t=0)
    with pytest.raises(SlideTooLarge):
        open_slide(path, choice, max_pixels=300 * 400 - 1, limits=100)
    monkeypatch.setattr(slide_files, "OIB_MAX_PLANE_PIXELS", 300 * 400 - 1)  # planes past the bound
    with pytest.raises(UnsupportedImageType, match="decoded whole"):
        open_slide(path, choice, max_pixels=BIG, limits=100)


@pytest.mark.parametrize("change", ["no datasets", "omero channels a number", "omero a list",
                                    "scale of text"])
def test_ome_zarr_metadata_values_of_the_wrong_kind_are_a_400_not_a_500(tmp_path, change):
    """Found by a hostile-input audit: each was a 500 with a traceback at submission."""
    path = tmp_path / "image.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    write_image(_pattern((60, 50)), root, fmt=FormatV04(), scale_factors=(), axes="yx",
                coordinate_transformations=[[{"type": "scale", "scale": [0.5, 0.5]}]])
    attrs = root.attrs.asdict()
    multiscale = attrs["multiscales"][0]
    if change == "no datasets":
        multiscale["datasets"] = []
    elif change == "omero channels a number":
        attrs["omero"] = {"channels": 5}
    elif change == "omero a list":
        attrs["omero"] = [1]
    else:
        multiscale["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": ["x", None]}]
    root.attrs.put(attrs)
    with pytest.raises(UndecodableImage, match="unreadable OME-Zarr metadata"):
        open_slide(path, max_pixels=BIG, limits=100)


def test_ome_zarr_metadata_past_the_limit_is_refused_before_zarr_reads_it(tmp_path):
    """A 400 MB .zattrs took 1.3 GB to open (a hostile-input audit): zarr reads a metadata file whole."""
    path = tmp_path / "image.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    write_image(_pattern((60, 50)), root, fmt=FormatV04(), scale_factors=(), axes="yx")
    root.attrs["padding"] = "x" * 20_000
    with open_slide(path, max_pixels=BIG, limits=structure.Limits(max_metadata_bytes=100_000)) as source:
        assert source.shape == (60, 50)
    with pytest.raises(structure.TooComplex, match=r"\.zattrs has"):
        open_slide(path, max_pixels=BIG, limits=structure.Limits(max_metadata_bytes=10_000))


@pytest.mark.parametrize("filters", [
    [{"id": "astype", "encode_dtype": "|u1", "decode_dtype": "<U2000"}],
    [{"id": "categorize", "labels": ["a", "b"], "dtype": "<U2000", "astype": "|u1"}],
])
def test_ome_zarr_filters_that_decode_wider_than_the_pixels_are_refused(tmp_path, filters):
    """zarr applies filters after the decompressor bounded_codecs bounds: an astype filter to
    <U20000 made one 16 kB chunk 1.4 GB (a re-audit of the bounded decoders)."""
    import json

    path = tmp_path / "image.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    write_image(_pattern((60, 50)).astype(np.uint8), root, fmt=FormatV04(), scale_factors=(), axes="yx")
    with open_slide(path, max_pixels=BIG, limits=100) as source:
        assert source.shape == (60, 50)
    zarray = next(path.rglob(".zarray"))  # level 0: the only one
    meta = json.loads(zarray.read_text())
    zarray.write_text(json.dumps({**meta, "filters": filters}))
    with pytest.raises(UnsupportedImageType, match="decodes them to"):
        open_slide(path, max_pixels=BIG, limits=100)


def test_an_ome_zarr_error_names_the_store_not_the_servers_folders(tmp_path):
    """zarr's errors give a file:// URL of the whole path (an array folder named as a store: a
    re-audit found the data root's path in 76 real stores' details)."""
    array = tmp_path / "deep" / "array.zarr"
    zarr.create_array(array, shape=(8, 8), dtype="uint8", zarr_format=3)
    with pytest.raises(UndecodableImage) as caught:
        open_slide(array, max_pixels=BIG, limits=100)
    assert str(tmp_path) not in str(caught.value) and "array.zarr" in str(caught.value), caught.value
