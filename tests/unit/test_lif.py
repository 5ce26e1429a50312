"""Leica LIF projects read as uploads (``service.lif`` through ``service.microscopy``).

The files are written as LAS X lays them out (``tests/lif_files.py``); every plane the service
reads is compared with the array written: channels, z, time, a project's images as series,
colour stored blue first, 12-bit cameras, the version-1 layout of LAS AF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import frames, lif, microscopy, slide_files, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.structure import Limits, TooComplex
from tests.lif_files import Image, lif_bytes

MAX_PIXELS = 10**8
UM = 0.65
H, W = 40, 56


def read(data: bytes, limits: Limits | None = None, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, limits or Limits())  # type: ignore[arg-type]


def movie_pixels(seed: int = 0) -> np.ndarray:
    """2 time points × 3 slices × 2 channels, 12-bit values in uint16 (TZCYX)."""
    return np.random.default_rng(seed).integers(0, 4096, (2, 3, 2, H, W), dtype=np.uint16)


@pytest.fixture(scope="module")
def movie() -> bytes:
    return lif_bytes([Image("Series001", movie_pixels(), "TZCYX", luts=("Blue", "Green"), z_um=0.5, bits=12)])


def test_channels_planes_and_pixel_size_come_from_the_file(movie: bytes) -> None:
    layout = microscopy.probe(movie, MAX_PIXELS, Limits())
    assert (layout.format, layout.width, layout.height, layout.dtype) == ("LIF", W, H, "uint16")
    assert (layout.axes, layout.shape) == ("TZCYX", (2, 3, 2, H, W))
    assert [(c.index, c.name) for c in layout.channels] == [(0, "Blue"), (1, "Green")]
    assert layout.planes == {"Z": 3, "T": 2}
    assert layout.pixel_size == microscopy.PixelSize(UM, UM, "lif", 0.5)
    assert layout.needs_channel and not layout.warnings and layout.series_count == 1


def test_every_plane_is_the_plane_written(movie: bytes) -> None:
    pixels = movie_pixels()
    for t in range(2):
        for z in range(3):
            for c, name in enumerate(["blue", "GREEN"]):
                plane = read(movie, channel=name, z=z, t=t)
                assert (plane.channel.index, plane.z, plane.t) == (c, z, t)
                np.testing.assert_array_equal(plane.image, pixels[t, z, c])


def test_the_maximum_projection_is_over_the_channels_slices(movie: bytes) -> None:
    plane = read(movie, channel="1", t=1, project="max")
    np.testing.assert_array_equal(plane.image, movie_pixels()[1, :, 1].max(axis=0))


def test_the_pixel_size_is_length_over_the_gaps_between_pixel_centres() -> None:
    """LAS X's Length spans the first to the last pixel's centre: 0.65 µm pixels over 56 px are
    35.75 µm, not 36.4 µm. Read as Length / N the size would be 1.8 % small."""
    data = lif_bytes([Image("a", np.zeros((H, W), np.uint8), pixel_um=UM)])
    assert microscopy.probe(data, MAX_PIXELS, Limits()).pixel_size == microscopy.PixelSize(UM, UM, "lif")
    uncalibrated = lif_bytes([Image("a", np.zeros((H, W), np.uint8), pixel_um=None)])
    layout = microscopy.probe(uncalibrated, MAX_PIXELS, Limits())
    assert layout.pixel_size is None and "pixel size" in layout.warnings[0]


def test_a_projects_images_are_series_named_by_their_path() -> None:
    first = np.full((H, W), 7, np.uint16)
    second = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20)
    data = lif_bytes([Image("Series001", first), Image("Series002", second, folder="Position 2")])
    plane = read(data)
    np.testing.assert_array_equal(plane.image, first)
    assert "2 images" in plane.layout.warnings[0] and "series=1" in plane.layout.warnings[0]
    assert plane.layout.series_names == ("Series001", "Position 2/Series002")
    chosen = read(data, series=1)
    np.testing.assert_array_equal(chosen.image, second)
    assert (chosen.layout.series, chosen.layout.width, chosen.layout.height) == (1, 20, 30)
    assert not chosen.layout.warnings
    with pytest.raises(microscopy.SelectionError, match=r"series=0\.\.1") as info:
        read(data, series=2)
    assert info.value.choices["series"][1] == {"index": 1, "name": "Position 2/Series002", "about": "20×30"}


def test_colour_stored_blue_first_comes_out_red_first() -> None:
    rgb = np.random.default_rng(3).integers(0, 255, (H, W, 3), dtype=np.uint8)
    data = lif_bytes([Image("brightfield", rgb, "YXS")])
    layout = microscopy.probe(data, MAX_PIXELS, Limits())
    assert layout.rgb and not layout.grey_rgb
    assert [c.name for c in layout.channels] == ["red", "green", "blue"]
    np.testing.assert_array_equal(read(data, channel="red").image, rgb[..., 0])
    np.testing.assert_array_equal(read(data, channel="blue").image, rgb[..., 2])
    grey = np.repeat(rgb[..., :1], 3, axis=2)
    assert microscopy.probe(lif_bytes([Image("g", grey, "YXS")]), MAX_PIXELS, Limits()).grey_rgb


def test_las_af_version_1_files_are_read() -> None:
    pixels = np.random.default_rng(4).integers(0, 255, (2, H, W), dtype=np.uint8)
    data = lif_bytes([Image("old", pixels, "CYX"), Image("older", pixels[::-1], "CYX")], version=1)
    assert structure.check_lif(data, Limits()) == 3  # the project's block and the two images'
    np.testing.assert_array_equal(read(data, series=1, channel="0").image, pixels[1])


@pytest.mark.parametrize(("stored", "read_as"), [(np.float16, np.float32), (np.float64, np.float32),
                                                 (np.uint32, np.float32)])
def test_other_pixel_types_are_read_as_every_decoders_planes(stored: type, read_as: type) -> None:
    """LAS X's float16 (processed images) and 32-bit counts come out as uint8 / uint16 / float32,
    which the normalisation and the client's OME-TIFF cuts take."""
    pixels = (np.linspace(0, 1, H * W).reshape(H, W) * (1 if stored != np.uint32 else 100_000)).astype(stored)
    plane = read(lif_bytes([Image("ratio", pixels)]))
    assert plane.image.dtype == read_as
    np.testing.assert_array_equal(plane.image, pixels.astype(read_as))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (Image("tiles", np.zeros((4, H, W), np.uint8), "MYX"), "Mosaic Merge"),
        (Image("sweep", np.zeros((5, H, W), np.uint8), "λYX"), "5 emission wavelengths"),
        (Image("mixed", np.zeros((2, H, W), np.uint16), "CYX", channel_bits=(8, 16)),
         "different bit depths"),
        (Image("xz", np.zeros((H, W), np.uint8), "ZX"), "dimensions ZX"),
        # LAS X's "xzy": XZ sections repeated along Y, stored Y outermost (as a LAS X 3 file has it)
        (Image("xzy", np.zeros((5, 2, H, W), np.uint8), "YCZX"), "dimensions YCZX"),
    ],
    ids=["mosaic", "lambda", "bit-depths", "xz-scan", "xzy-scan"],
)
def test_what_is_not_read_is_a_415_naming_what_to_do(image: Image, match: str) -> None:
    with pytest.raises(UnsupportedImageType, match=match):
        read(lif_bytes([image]))


def test_a_refused_first_image_names_the_others_and_series(tmp_path) -> None:
    """A λ-scan first in a project of fields (as LAS X's wavelength-sweep example has it): the 415
    lists the project's images and says how to choose one, which then reads (POST /probe opens the
    same first image, so it could not list them)."""
    field = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    data = lif_bytes([Image("sweep", np.zeros((5, H, W), np.uint8), "λYX"), Image("field", field)])
    with pytest.raises(UnsupportedImageType, match="holds 2 images; choose another with series=") as caught:
        read(data)
    assert f"series=1: field ({W}×{H})" in str(caught.value)
    np.testing.assert_array_equal(read(data, series=1).image, field)
    path = tmp_path / "project.lif"
    path.write_bytes(data)
    with pytest.raises(UnsupportedImageType, match="series="):
        lif.open_stored(path, 10**8)
    with pytest.raises(UnsupportedImageType) as alone:
        read(lif_bytes([Image("sweep", np.zeros((5, H, W), np.uint8), "λYX")]))
    assert "series=" not in str(alone.value)  # nothing else to choose


def test_a_mark_and_find_project_reads_its_first_xy_image_not_the_environments_log(tmp_path) -> None:
    """LAS X's Mark-and-Find projects begin with the incubator's log (temperature and CO₂ over time:
    a real LAS X 2.0 file's is TS, 83,201 × 2), no XY image. Without series= the first XY image is
    read, and the notice names it; series=0 still says what the log is."""
    movie = np.arange(3 * H * W, dtype=np.uint16).reshape(3, H, W)
    data = lif_bytes([Image("Mark_and_Find_001/EnvironmentalGraph", np.zeros((50, 2), np.uint16), "TX"),
                      Image("Mark_and_Find_001/Position001", movie, "TYX")])
    plane = read(data, t=2)
    np.testing.assert_array_equal(plane.image, movie[2])
    assert plane.layout.series == 1
    assert any("the first XY image, Mark_and_Find_001/Position001 (series=1), is segmented" in w
               for w in plane.layout.warnings)
    path = tmp_path / "project.lif"
    path.write_bytes(data)
    with slide_files.open_slide(path, microscopy.Selection(t=1), max_pixels=10**8, limits=Limits()) as source:
        np.testing.assert_array_equal(np.asarray(source.read(0, H, 0, W)), movie[1])
    with pytest.raises(UnsupportedImageType, match="not XY"):
        read(data, series=0)


def test_a_stack_recorded_top_down_keeps_its_z_step() -> None:
    """LAS X writes a negative Z Length for a stack taken from the top down (a real file: -12.46 µm
    over 3 slices); the step is its size."""
    layout = microscopy.probe(lif_bytes([Image("down", np.zeros((3, H, W), np.uint8), "ZYX", z_um=-6.23)]),
                              10**8, Limits())
    assert layout.pixel_size == microscopy.PixelSize(0.65, 0.65, "lif", 6.23)


def test_a_lifext_is_refused_naming_the_lif() -> None:
    data = bytearray(lif_bytes([Image("a", np.zeros((H, W), np.uint8))]))
    xml_units = int.from_bytes(data[9:13], "little")
    xml = data[13 : 13 + 2 * xml_units].decode("utf-16-le")
    extended = xml.replace("LMSDataContainerHeader", "LMSDataContainerEnhancedHeader")
    header = (0x70).to_bytes(4, "little") + (2 * len(extended) + 5).to_bytes(4, "little") + b"\x2a"
    header += len(extended).to_bytes(4, "little") + extended.encode("utf-16-le")
    data = header + data[13 + 2 * xml_units :]
    with pytest.raises(UnsupportedImageType, match="send the .lif"):
        read(bytes(data))


def test_hostile_and_broken_lifs_are_refused_before_their_pixels_are_read() -> None:
    data = lif_bytes([Image(f"S{k}", np.zeros((8, 8), np.uint8)) for k in range(5)])
    assert structure.check_lif(data, Limits()) == 6
    with pytest.raises(TooComplex, match="UNET_MAX_LIF_BLOCKS"):
        read(data, Limits(max_lif_blocks=5))
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        read(data, Limits(max_metadata_bytes=1000))
    with pytest.raises(UndecodableImage, match="truncated LIF"):
        read(data[: len(data) - 10])
    with pytest.raises(UndecodableImage, match="truncated LIF"):
        read(data[:200])


def test_an_image_whose_pixels_the_file_lacks_is_undecodable() -> None:
    """An XML that claims more pixels than the image's memory block holds (a file LAS X did not
    finish writing) is named as such, not read past into the next image's bytes."""
    small = lif_bytes([Image("a", np.zeros((H, W), np.uint8)), Image("b", np.ones((H, W), np.uint8))])
    claims = small.replace(f'NumberOfElements="{H}"'.encode("utf-16-le"),
                           f'NumberOfElements="{H + 9}"'.encode("utf-16-le"), 1)
    with pytest.raises(UndecodableImage, match="needs"):
        read(claims)
    unwritten = small[: small.rindex("MemBlock_2".encode("utf-16-le")) - 22]  # the last block never written
    with pytest.raises(UndecodableImage, match="image b has no pixel data"):
        read(unwritten, series=1)


def test_a_plane_over_the_limit_is_refused_from_the_header() -> None:
    data = lif_bytes([Image("a", np.zeros((100, 120), np.uint8))])
    with pytest.raises(ImageTooLarge):
        microscopy.select(data, microscopy.Selection(), 100 * 119, Limits())


def test_admission_counts_the_largest_image_that_fits() -> None:
    """A project holding a merged tile scan beside its fields: the scan is over the limit, the
    fields are not, and the request may choose a field (series=1): not a 413 before it is read."""
    data = lif_bytes([Image("scan", np.zeros((300, 400), np.uint8)),
                      Image("field", np.zeros((H, W), np.uint8)), Image("small", np.zeros((8, 8), np.uint8))])
    assert workload.plane_pixels(data, 100_000, Limits()) == H * W
    assert workload.plane_pixels(data, 10**6, Limits()) == 300 * 400
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(data, 50, Limits())
    assert lif.admitted_pixels(data, 100_000) == H * W


def test_unet_segment_cuts_a_lif_movie_frame_by_frame(tmp_path: Path, movie: bytes) -> None:
    """``--t all``: each frame sent as an OME-TIFF of its pages, read by the service as the LIF's
    own plane, pixel size included."""
    path = tmp_path / "movie.lif"
    path.write_bytes(movie)
    layout = frames.file_layout(path, MAX_PIXELS)
    assert layout is not None and layout.planes == {"Z": 3, "T": 2}
    selection = microscopy.Selection(channel="Green", z=2)
    cut = frames.cut_frame(path, "t", 1, selection, MAX_PIXELS)
    assert cut is not None and microscopy.count_tiff_pages(cut, 100) == 1
    plane = read(cut, channel="Green", z=2, t=1)
    np.testing.assert_array_equal(plane.image, movie_pixels()[1, 2, 1])
    assert plane.layout.pixel_size == microscopy.PixelSize(UM, UM, "ome", 0.5)
    with pytest.raises(UndecodableImage, match="missing"):
        read(cut, channel="Green", z=2, t=0)  # the cut holds frame 1 only


def test_a_widefield_cameras_channels_are_named_by_their_dyes() -> None:
    """LAS X writes a widefield camera's set-up per channel (dye, filter cube) beside the colour
    tables: the dye names the channel (else the cube), as Bio-Formats reads it; a set-up that does
    not pair one-to-one with the channels in order names none of them."""
    pixels = np.zeros((3, H, W), np.uint16)
    set_up = (("Blue", "DAPI", "DAPI"), ("Green", "None", "GFP"), ("Red", "Phalloidin 594", "TXR"))
    data = lif_bytes([Image("THUNDER", pixels, "CYX", ("Blue", "Green", "Red"), widefield=set_up)])
    def names(data: bytes) -> list[str | None]:
        return [c.name for c in microscopy.probe(data, MAX_PIXELS, Limits()).channels]

    assert names(data) == ["DAPI", "GFP", "Phalloidin 594"]
    assert read(data, channel="dapi").channel.index == 0
    shuffled = lif_bytes([Image("THUNDER", pixels, "CYX", ("Green", "Blue", "Red"), widefield=set_up)])
    assert names(shuffled) == ["Green", "Blue", "Red"]
    fewer = lif_bytes([Image("THUNDER", pixels, "CYX", ("Blue", "Green", "Red"), widefield=set_up[:2])])
    assert names(fewer) == ["Blue", "Green", "Red"]


def test_a_set_up_not_recorded_beside_the_channel_leaves_it_named_by_its_own() -> None:
    """A real LAS X 2.0 time series (a DMi8's Mark-and-Find) keeps two set-ups for its one channel:
    the GFP one it recorded (its user name LAS X's placeholder "new 1") and an autofocus one in
    bright field. The channel's colour table (Green) is that of one set-up: that set-up names it."""
    movie = np.zeros((2, H, W), np.uint16)

    def names(set_up: tuple[tuple[str, str, str], ...]) -> list[str | None]:
        data = lif_bytes([Image("Position001", movie, "TYX", ("Green",), widefield=set_up)])
        return [c.name for c in microscopy.probe(data, MAX_PIXELS, Limits()).channels]

    assert names((("Green", "new 1", "GFP"), ("Gray", "AutoFocusHS", "EMP_BF"))) == ["GFP"]
    # two set-ups of the channel's colour: which one it is cannot be told
    assert names((("Green", "new 1", "GFP"), ("Green", "YFP", "YFP"), ("Gray", "AF", "EMP_BF"))) == ["Green"]
