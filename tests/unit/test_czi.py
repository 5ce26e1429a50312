"""Zeiss CZI files read as uploads (``service.czi`` through ``service.microscopy``).

Every file is written by Zeiss's own libCZI (``tests/czi_files.py``), and every plane the service
reads is compared with libCZI's reading of the same plane: channels, z, time, the compressions
ZEN writes, a tile scan composed from its tiles, colour stored blue first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import czi, frames, microscopy, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.structure import Limits, TooComplex
from tests.czi_files import ZSTD0, ZSTD1, Tile, czi_bytes, libczi_plane, libczi_scene

MAX_PIXELS = 10**8
UM = 0.65
H, W = 40, 56


def read(data: bytes, limits: Limits | None = None, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, limits or Limits())  # type: ignore[arg-type]


def movie_tiles(seed: int = 0, channels: int = 2, slices: int = 3, times: int = 2) -> list[Tile]:
    rng = np.random.default_rng(seed)
    return [Tile(rng.integers(0, 4000, (H, W), dtype=np.uint16), c=c, z=z, t=t)
            for t in range(times) for z in range(slices) for c in range(channels)]


@pytest.fixture(scope="module")
def movie() -> bytes:
    """2 named channels × 3 slices × 2 time points, 16-bit, 0.65 µm, zstd1 as ZEN saves by default."""
    return czi_bytes(movie_tiles(), {0: "DAPI", 1: "GFP"}, UM * 1e-6, ZSTD1)


def test_channels_planes_and_pixel_size_come_from_the_file(movie: bytes) -> None:
    layout = microscopy.probe(movie, MAX_PIXELS, Limits())
    assert (layout.format, layout.width, layout.height, layout.dtype) == ("CZI", W, H, "uint16")
    assert (layout.axes, layout.shape) == ("TZCYX", (2, 3, 2, H, W))
    assert [(c.index, c.name) for c in layout.channels] == [(0, "DAPI"), (1, "GFP")]
    assert layout.planes == {"Z": 3, "T": 2}
    assert layout.pixel_size == microscopy.PixelSize(UM, UM, "czi")
    assert layout.needs_channel and not layout.warnings


@pytest.mark.parametrize("compression", [None, ZSTD0, ZSTD1], ids=["raw", "zstd0", "zstd1"])
def test_every_plane_is_libczis_plane(compression: str | None) -> None:
    data = czi_bytes(movie_tiles(seed=1), {0: "DAPI", 1: "GFP"}, UM * 1e-6, compression)
    for t in range(2):
        for z in range(3):
            for c, name in enumerate(["DAPI", "GFP"]):
                plane = read(data, channel=name, z=z, t=t)
                assert (plane.channel.index, plane.z, plane.t) == (c, z, t)
                np.testing.assert_array_equal(plane.image, libczi_plane(data, c=c, z=z, t=t))


def test_8_bit_and_float_planes_keep_their_type() -> None:
    rng = np.random.default_rng(2)
    for pixels in (rng.integers(0, 255, (H, W), dtype=np.uint8), rng.random((H, W), dtype=np.float32)):
        data = czi_bytes([Tile(pixels)], compression=None)
        plane = read(data)
        assert plane.image.dtype == pixels.dtype
        np.testing.assert_array_equal(plane.image, pixels)


def test_an_open_choice_lists_what_the_file_offers(movie: bytes) -> None:
    with pytest.raises(microscopy.SelectionError) as caught:
        read(movie)
    assert set(caught.value.params) == {"channel", "z", "t"}
    assert caught.value.choices["channels"] == [{"index": 0, "name": "DAPI"}, {"index": 1, "name": "GFP"}]
    assert caught.value.choices["planes"] == {"Z": 3, "T": 2}
    with pytest.raises(microscopy.SelectionError, match="DAPI"):
        read(movie, channel="Cy5", z=0, t=0)


def test_a_max_projection_over_z(movie: bytes) -> None:
    plane = read(movie, channel="GFP", t=1, project="max")
    expected = np.max([libczi_plane(movie, c=1, z=z, t=1) for z in range(3)], axis=0)
    np.testing.assert_array_equal(plane.image, expected)


def test_a_tile_scan_is_composed_from_its_tiles_as_libczi_composes_it() -> None:
    """Three overlapping tiles with a gap between them: where they overlap, the same tile wins as in
    libCZI; the plane spans the tiles' extent; the gap, black in libCZI, is at the plane's dark level
    (czi.GAP_PERCENTILE: the lowest 1st percentile of its tiles)."""
    rng = np.random.default_rng(3)
    pixels = [rng.integers(low, 4000, (30, 40), dtype=np.uint16) for low in (300, 100, 200)]
    tiles = [Tile(p, x=x, y=y) for p, (x, y) in zip(pixels, ((0, 0), (30, 5), (90, 20)), strict=True)]
    data = czi_bytes(tiles, {0: "DAPI"}, UM * 1e-6, ZSTD1)
    plane = read(data)
    assert plane.image.shape == (50, 130)
    expected = libczi_plane(data)
    gap = expected == 0
    assert gap[30:, :30].all() and gap.sum() > 1000  # below the first tile: no tile there
    np.testing.assert_array_equal(plane.image[~gap], expected[~gap])
    dark = min(np.percentile(p, 1, method="lower") for p in pixels)
    assert 100 <= dark < 200  # the second tile's: the darkest
    assert (plane.image[gap] == dark).all()


def test_a_tile_scans_gaps_are_alike_in_every_window_and_colour_keeps_them_black(tmp_path: Path) -> None:
    from service import slide_files

    rng = np.random.default_rng(8)
    tiles = [Tile(rng.integers(500, 900, (40, 60), dtype=np.uint16), x=x, y=y)
             for x, y in ((0, 0), (100, 50))]
    path = tmp_path / "gappy.czi"
    path.write_bytes(czi_bytes(tiles, {0: "DAPI"}, UM * 1e-6, ZSTD1))
    whole = read(path.read_bytes()).image
    assert whole.shape == (90, 160) and whole[60, 10] == whole[5, 150] > 500
    selection = microscopy.Selection()
    with slide_files.open_slide(path, selection, max_pixels=MAX_PIXELS, limits=Limits()) as slide:
        # the whole plane, then two windows that lie all in the gaps
        for y0, y1, x0, x1 in ((0, 90, 0, 160), (45, 90, 0, 100), (0, 30, 120, 160)):
            np.testing.assert_array_equal(slide.read(y0, y1, x0, x1), whole[y0:y1, x0:x1])

    colour = [Tile(rng.integers(1, 255, (20, 30, 3), dtype=np.uint8), x=x, y=y)
              for x, y in ((0, 0), (50, 30))]
    image = read(czi_bytes(colour), channel="red").image
    assert (image[30:, :30] == 0).all()  # bright-field gaps: as libCZI draws them


def test_a_tile_scan_without_gaps_decodes_each_tile_once(monkeypatch) -> None:
    rng = np.random.default_rng(9)
    tiles = [Tile(rng.integers(1, 4000, (20, 30), dtype=np.uint16), x=x, y=y)
             for x in (0, 30) for y in (0, 20)]
    data = czi_bytes(tiles, {0: "DAPI"}, UM * 1e-6, ZSTD1)
    decoded: list[int] = []
    real_decode = czi._decode
    monkeypatch.setattr(czi, "_decode", lambda tile: decoded.append(1) or real_decode(tile))
    assert read(data).image.shape == (40, 60)
    assert len(decoded) == 4  # no dark level looked for: there is no gap


def test_colour_is_read_red_first_and_one_stain_in_its_colour_needs_no_choice() -> None:
    rng = np.random.default_rng(4)
    composite = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)  # blue, green, red as stored
    data = czi_bytes([Tile(composite)], compression=ZSTD0)
    layout = microscopy.probe(data, MAX_PIXELS, Limits())
    names = [c.name for c in layout.channels]
    assert (layout.rgb, layout.axes, names) == (True, "YXS", ["red", "green", "blue"])
    np.testing.assert_array_equal(read(data, channel="red").image, composite[:, :, 2])
    np.testing.assert_array_equal(read(data, channel="blue").image, libczi_plane(data)[:, :, 2])

    dapi = np.zeros((H, W, 3), np.uint8)
    dapi[:, :, 0] = composite[:, :, 0]  # signal only in blue, as a DAPI channel exported in its colour
    plane = read(czi_bytes([Tile(dapi)]))
    np.testing.assert_array_equal(plane.image, dapi[:, :, 0])
    assert plane.channel.name == "blue"


def test_scenes_are_the_files_images_chosen_by_series() -> None:
    """A multi-position experiment: each scene its own image, of its own size, where libCZI reads
    it; the first by default with a notice, another by series=, one not there a SelectionError."""
    rng = np.random.default_rng(6)
    first = rng.integers(1, 4000, (H, W), dtype=np.uint16)
    second = rng.integers(1, 4000, (30, 20), dtype=np.uint16)
    tiles = [Tile(first, scene=0), Tile(second, x=500, y=40, scene=1)]
    data = czi_bytes(tiles, {0: "DAPI"}, UM * 1e-6, ZSTD1)
    layout = microscopy.probe(data, MAX_PIXELS, Limits())
    assert (layout.series_count, layout.series, layout.width, layout.height) == (2, 0, W, H)
    assert any("2 scenes" in note and "series=1" in note for note in layout.warnings)
    assert layout.choices()["series"] == [{"index": 0, "name": None, "about": f"{W}×{H}"},
                                          {"index": 1, "name": None, "about": "20×30"}]
    plane = read(data, series=1)
    assert plane.describe()["series"] == 1 and not plane.warnings
    np.testing.assert_array_equal(plane.image, second)
    np.testing.assert_array_equal(read(data).image, first)
    np.testing.assert_array_equal(plane.image, libczi_scene(data, 1))
    assert microscopy.probe(data, MAX_PIXELS, Limits(), series=1).width == 20
    with pytest.raises(microscopy.SelectionError, match="series=0..1") as caught:
        read(data, series=2)
    assert caught.value.params == ("series",) and len(caught.value.choices["series"]) == 2


def test_other_dimensions_with_several_indices_are_refused_naming_them() -> None:
    """Rotations (or illuminations, phases, views) are not planes the service offers: a file with
    two of them is a 415 naming the dimension. libCZI writes only C/Z/T, so two time points are
    renamed R in the directory."""
    data = bytearray(czi_bytes([Tile(np.ones((H, W), np.uint16), t=t) for t in range(2)]))
    entry = int.from_bytes(data[84:92], "little") + 32 + 128
    for _ in range(2):
        dimensions = int.from_bytes(data[entry + 28 : entry + 32], "little")
        for k in range(dimensions):
            at = entry + 32 + 20 * k
            if data[at : at + 1] == b"T":
                data[at : at + 1] = b"R"
        entry += 32 + 20 * dimensions
    with pytest.raises(UnsupportedImageType, match="2 rotations"):
        microscopy.probe(bytes(data), MAX_PIXELS, Limits())


def test_without_a_scaling_the_pixel_size_is_unknown_and_said() -> None:
    layout = microscopy.probe(czi_bytes([Tile(np.ones((H, W), np.uint16))]), MAX_PIXELS, Limits())
    assert layout.pixel_size is None
    assert any("pixel size" in note for note in layout.warnings)


def test_a_z_scaling_is_the_z_step(tmp_path: Path) -> None:
    from pylibCZIrw import czi as pyczi

    path = tmp_path / "stack.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        for z in range(3):
            writer.write(np.full((H, W, 1), z, np.uint16), plane={"C": 0, "Z": z, "T": 0})
        writer.write_metadata(document_name="test", scale_x=UM * 1e-6, scale_y=UM * 1e-6, scale_z=2.5e-6)
    data = path.read_bytes()
    layout = microscopy.probe(data, MAX_PIXELS, Limits())
    assert layout.pixel_size == microscopy.PixelSize(UM, UM, "czi", 2.5)
    assert layout.describe()["pixel_size_um"]["z"] == 2.5
    assert read(data, z=1).pixel_size.z_um == 2.5


def scaling(*distances: tuple[str, str]) -> str:
    items = "".join(f'<Distance Id="{axis}"><Value>{value}</Value></Distance>' for axis, value in distances)
    return f"<ImageDocument><Metadata><Scaling><Items>{items}</Items></Scaling></Metadata></ImageDocument>"


def test_a_czi_without_a_usable_z_scaling_has_no_z_step(movie: bytes) -> None:
    assert microscopy.probe(movie, MAX_PIXELS, Limits()).pixel_size.z_um is None  # libCZI wrote Z 0
    for z in ("-1e-6", "nan", "deep"):
        assert czi._metadata(scaling(("X", "5e-7"), ("Z", z)))[1] == microscopy.PixelSize(0.5, 0.5, "czi")
    _, size, notes, _ = czi._metadata(scaling(("Z", "2e-6")))  # a z-step alone gives no pixel size
    assert size is None and any("pixel size" in note for note in notes)


def test_the_plane_size_is_known_before_any_subblock_is_decoded(movie: bytes) -> None:
    assert workload.plane_pixels(movie, MAX_PIXELS, Limits()) == H * W
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(movie, H * W - 1, Limits())
    with pytest.raises(ImageTooLarge):
        microscopy.probe(movie, H * W - 1, Limits())


def test_too_many_subblocks_are_refused_before_the_directory_is_parsed(movie: bytes) -> None:
    assert structure.check_czi(movie, Limits()) == 12
    with pytest.raises(TooComplex, match="UNET_MAX_CZI_SUBBLOCKS") as caught:
        microscopy.probe(movie, MAX_PIXELS, Limits(max_czi_subblocks=11))
    assert caught.value.limit == 11
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        microscopy.probe(movie, MAX_PIXELS, Limits(max_metadata_bytes=100))


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_a_truncated_upload_is_named_as_such(movie: bytes, keep: float) -> None:
    with pytest.raises(UndecodableImage, match="truncated|not in the file"):
        read(movie[: int(len(movie) * keep)], channel="DAPI", z=0, t=0)


def test_a_frame_of_a_czi_movie_is_cut_into_an_ome_tiff_read_as_the_file(
    movie: bytes, tmp_path: Path
) -> None:
    """``unet-segment --t all`` on a CZI: each frame goes as an OME-TIFF of the pages it needs,
    read by the service as that plane of the CZI, with its channel names and pixel size."""
    path = tmp_path / "movie.czi"
    path.write_bytes(movie)
    layout = frames.file_layout(path, MAX_PIXELS)
    assert layout is not None and layout.planes == {"Z": 3, "T": 2}
    cut = frames.cut_frame(path, "t", 1, microscopy.Selection(channel="GFP", z=2), MAX_PIXELS)
    assert cut is not None and microscopy.is_tiff(cut) and len(cut) < len(movie)
    assert microscopy.count_tiff_pages(cut, 100) == 1
    plane = read(cut, channel="GFP", z=2, t=1)
    np.testing.assert_array_equal(plane.image, libczi_plane(movie, c=1, z=2, t=1))
    assert plane.pixel_size is not None and plane.pixel_size.x_um == pytest.approx(UM)
    with pytest.raises(UndecodableImage, match="missing"):
        read(cut, channel="GFP", z=2, t=0)  # the cut holds frame 1 only


def test_pyramid_levels_are_skipped() -> None:
    """A slide scan stores downsampled copies of its tiles (a subblock whose stored size is smaller
    than the extent it covers): the plane is the full-resolution tile alone. libCZI writes no
    pyramid, so the file's directory is edited to make the second subblock one."""
    full = np.random.default_rng(5).integers(1, 4000, (H, W), dtype=np.uint16)
    data = bytearray(czi_bytes([Tile(full), Tile(full[::2, ::2].copy(), c=0, x=0, y=0)]))
    directory = int.from_bytes(data[84:92], "little")
    entry = directory + 32 + 128
    entry += 32 + 20 * int.from_bytes(data[entry + 28 : entry + 32], "little")  # the second entry
    data[entry + 22] = 1  # PyramidType: single subblock
    for k in range(int.from_bytes(data[entry + 28 : entry + 32], "little")):
        dimension = entry + 32 + 20 * k
        if data[dimension : dimension + 1] in (b"X", b"Y"):  # logical size twice the stored size
            stored = int.from_bytes(data[dimension + 16 : dimension + 20], "little")
            data[dimension + 8 : dimension + 12] = (2 * stored).to_bytes(4, "little")
    plane = read(bytes(data))
    np.testing.assert_array_equal(plane.image, full)


def test_a_jpeg_xr_subblock_is_decoded() -> None:
    """ZEN compresses with JPEG XR (lossless or not) where libCZI writes no JPEG XR: a raw file's
    subblock is replaced by imagecodecs' lossless JPEG XR of the same pixels, and the directory and
    the subblock's own entry say so (compression 4)."""
    import imagecodecs

    yy, xx = np.mgrid[0:H, 0:W]
    pixels = (yy * 50 + xx * 20).astype(np.uint16)  # smooth: its JPEG XR is smaller than raw
    data = bytearray(czi_bytes([Tile(pixels)], {0: "DAPI"}))
    payload = imagecodecs.jpegxr_encode(pixels, level=1.0)
    assert len(payload) < pixels.nbytes
    entry = int.from_bytes(data[84:92], "little") + 32 + 128
    entry_size = 32 + 20 * int.from_bytes(data[entry + 28 : entry + 32], "little")
    block = int.from_bytes(data[entry + 6 : entry + 14], "little")
    metadata_size = int.from_bytes(data[block + 32 : block + 36], "little")
    pixels_at = block + 48 + entry_size + max(240 - entry_size, 0) + metadata_size
    assert data[pixels_at : pixels_at + pixels.nbytes] == pixels.tobytes()  # found the raw pixels
    data[pixels_at : pixels_at + len(payload)] = payload
    data[block + 40 : block + 48] = len(payload).to_bytes(8, "little")
    for at in (entry + 18, block + 48 + 18):  # DirectoryEntryDV.Compression: JpgXr
        data[at : at + 4] = (4).to_bytes(4, "little")
    np.testing.assert_array_equal(read(bytes(data)).image, pixels)


def test_a_tile_scan_is_read_window_by_window_as_a_slide(tmp_path: Path, monkeypatch) -> None:
    """A slide job reads a CZI tile scan by window (service.slide_files): every window equals that
    part of the whole plane, each read decoding only the subblocks it touches."""
    from service import slide_files
    from service.slide_files import SlideTooLarge

    rng = np.random.default_rng(7)
    plane = {c: rng.integers(1, 4000, (100, 150), dtype=np.uint16) for c in range(2)}
    tiles = [Tile(plane[c][y : y + 40, x : x + 60].copy(), c=c, x=x, y=y)
             for c in range(2) for y in (0, 35, 60) for x in (0, 50, 90)]
    path = tmp_path / "scan.czi"
    path.write_bytes(czi_bytes(tiles, {0: "AF488", 1: "DAPI"}, UM * 1e-6, ZSTD1))
    decoded: list[int] = []
    real_decode = czi._decode
    monkeypatch.setattr(czi, "_decode", lambda tile: decoded.append(1) or real_decode(tile))
    selection = microscopy.Selection(channel="DAPI")
    with slide_files.open_slide(path, selection, max_pixels=MAX_PIXELS, limits=Limits()) as slide:
        assert slide.shape == (100, 150) and slide.pixel_size.x_um == pytest.approx(UM)
        assert slide.plane.channel.name == "DAPI"
        for y0, y1, x0, x1 in ((0, 100, 0, 150), (10, 30, 20, 45), (36, 100, 100, 150), (0, 1, 149, 150)):
            decoded.clear()
            np.testing.assert_array_equal(slide.read(y0, y1, x0, x1), plane[1][y0:y1, x0:x1])
        assert len(decoded) == 1  # the last window lies in one subblock
    with pytest.raises(SlideTooLarge):
        slide_files.open_slide(path, selection, max_pixels=100 * 150 - 1, limits=Limits())


def test_covers_tells_a_window_tiled_without_gaps_from_one_with_a_pixel_missing() -> None:
    window = (0, 10, 0, 20)
    assert czi._covers([(0, 10, 0, 12), (0, 10, 12, 20)], window)  # side by side
    assert czi._covers([(0, 6, 0, 20), (4, 10, 0, 15), (5, 10, 14, 20)], window)  # overlapping
    assert not czi._covers([(0, 10, 0, 12), (0, 10, 13, 20)], window)  # one column missing
    assert not czi._covers([], window)  # no tile at all
    assert not czi._covers([(0, 9, 0, 20), (9, 10, 0, 19)], window)  # one pixel missing


def _channels_xml(information: str, display: str = "") -> str:
    return (f"<ImageDocument><Metadata><Information><Image><Dimensions><Channels>{information}</Channels>"
            f"</Dimensions></Image></Information>{display}</Metadata></ImageDocument>")


@pytest.mark.parametrize(("information", "display", "expected"), [
    # as ZEN names them
    ('<Channel Id="Channel:0" Name="DAPI"/><Channel Id="Channel:1" Name="EGFP"/>', "", ["DAPI", "EGFP"]),
    # a real ZEN file (czitools' DAPI_GFP.czi): no Name in the image's channels, the display settings
    # name them, the second by a GUID id: paired by order
    ('<Channel Id="Channel:0"/><Channel Id="Channel:1"/>',
     '<DisplaySetting><Channels><Channel Id="Channel:0" Name="DAPI"/>'
     '<Channel Id="c15b6ce0-0000-4000-8000-000000000000" Name="GFP"/></Channels></DisplaySetting>',
     ["DAPI", "GFP"]),
    # libCZI without names, and real files with Name="": never the Id
    ('<Channel Id="Channel:0"/><Channel Id="Channel:1" Name=""/>', "", [None, None]),
    # display settings for another number of channels: not paired by guess; the dye where given
    ('<Channel Id="Channel:0"><Fluor>Alexa Fluor 555</Fluor></Channel><Channel Id="Channel:1"/>',
     '<DisplaySetting><Channels><Channel Name="C1"/></Channels></DisplaySetting>', ["Alexa Fluor 555", None]),
])
def test_channel_names_are_zens_never_the_channel_id(information: str, display: str, expected: list) -> None:
    names, _pixel_size, _notes, _scenes = czi._metadata(_channels_xml(information, display))
    assert names == expected


def test_a_czi_libczi_wrote_without_names_offers_its_channels_by_index() -> None:
    data = czi_bytes([Tile(np.zeros((8, 8), np.uint16), c=0), Tile(np.ones((8, 8), np.uint16), c=1)])
    layout = microscopy.probe(data, 10**6, Limits())
    assert [c.name for c in layout.channels] == [None, None]  # was "Channel:0", "Channel:1"


def test_a_z_step_is_given_for_a_stack_only() -> None:
    """ZEN writes a Z scaling for 2-D images too (a real file, czitools' 100x100.czi: 0.1 µm); a
    z-step is the distance between slices, so a single plane has none."""
    plane = np.zeros((8, 8), np.uint16)
    flat = czi_bytes([Tile(plane)], pixel_size_m=0.2e-6, z_step_m=0.1e-6)
    assert microscopy.probe(flat, 10**6, Limits()).pixel_size == microscopy.PixelSize(0.2, 0.2, "czi")
    stack = czi_bytes([Tile(plane, z=0), Tile(plane, z=1)], pixel_size_m=0.2e-6, z_step_m=0.5e-6)
    assert microscopy.probe(stack, 10**6, Limits()).pixel_size == microscopy.PixelSize(0.2, 0.2, "czi", 0.5)
