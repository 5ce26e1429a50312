"""Nikon ND2 files read as uploads (``service.nd2`` through ``service.microscopy``).

The files are written as NIS-Elements lays them out (``tests/nd2_files.py``, checked against the
``nd2`` reader); every plane the service reads is compared with the array written: channels, z,
time, XY positions as series, colour, padded rows, zlib-compressed frames, an acquisition stopped
early, and files that are broken or hostile.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from service import frames, imaging, microscopy, nd2, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import SelectionError
from service.structure import Limits, TooComplex
from tests.nd2_files import Nd2, clx_records, compressed_records, write_nd2

MAX_PIXELS = 10**8
UM = 0.325
H, W = 40, 56


def read(data: bytes, limits: Limits | None = None, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, limits or Limits())  # type: ignore[arg-type]


def plate_pixels(seed: int = 0) -> np.ndarray:
    """2 time points × 3 positions × 4 slices × 2 channels, 12-bit values in uint16 (TPZYXC)."""
    return np.random.default_rng(seed).integers(0, 4096, (2, 3, 4, H, W, 2), dtype=np.uint16)


@pytest.fixture(scope="module")
def plate() -> bytes:
    return write_nd2(Nd2(plate_pixels(), "TPZYXC", ("DAPI", "FITC"), UM, 0.5, ("A1", "", "B2"), bits=12))


def test_channels_planes_positions_and_pixel_size_come_from_the_file(plate: bytes) -> None:
    layout = microscopy.probe(plate, MAX_PIXELS, Limits())
    assert (layout.format, layout.width, layout.height, layout.dtype) == ("ND2", W, H, "uint16")
    assert (layout.axes, layout.shape) == ("TZCYX", (2, 4, 2, H, W))
    assert [(c.index, c.name) for c in layout.channels] == [(0, "DAPI"), (1, "FITC")]
    assert layout.planes == {"Z": 4, "T": 2}
    assert layout.pixel_size == microscopy.PixelSize(UM, UM, "nd2", 0.5)
    assert (layout.series_count, layout.series, layout.series_names) == (3, 0, ("A1", "#2", "B2"))
    assert layout.series_about == (f"{W}×{H} · 2 ch · 4 z · 2 t",) * 3
    assert layout.warnings == ("the file holds 3 XY positions; the first (A1) is segmented: "
                               "series=1..2 chooses another",)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_every_plane_of_every_position_is_the_plane_written(plate: bytes, position: int) -> None:
    pixels = plate_pixels()
    for t in range(2):
        for z in range(4):
            for c, name in enumerate(["dapi", "FITC"]):
                plane = read(plate, channel=name, z=z, t=t, series=position)
                assert (plane.channel.index, plane.z, plane.t) == (c, z, t)
                np.testing.assert_array_equal(plane.image, pixels[t, position, z, :, :, c])
    assert read(plate, channel="0", z=0, t=0, series=position).layout.warnings == ()


def test_the_maximum_projection_is_over_the_positions_slices(plate: bytes) -> None:
    plane = read(plate, channel="FITC", t=1, project="max", series=2)
    np.testing.assert_array_equal(plane.image, plate_pixels()[1, 2, :, :, :, 1].max(axis=0))


def test_a_position_the_file_lacks_is_a_choice_error_listing_them(plate: bytes) -> None:
    with pytest.raises(SelectionError) as caught:
        read(plate, channel="0", z=0, t=0, series=3)
    assert [s["name"] for s in caught.value.choices["series"]] == ["A1", "#2", "B2"]


def test_a_single_calibrated_field_needs_no_choice() -> None:
    field = np.random.default_rng(1).integers(0, 255, (H, W), dtype=np.uint8)
    plane = read(write_nd2(Nd2(field, "YX", pixel_um=0.65)))
    np.testing.assert_array_equal(plane.image, field)
    assert plane.layout.axes == "YX" and plane.layout.series_count == 1
    assert plane.layout.pixel_size == microscopy.PixelSize(0.65, 0.65, "nd2")
    uncalibrated = read(write_nd2(Nd2(field, "YX", pixel_um=None))).layout
    assert uncalibrated.pixel_size is None and "pixel size" in uncalibrated.warnings[0]


@pytest.mark.parametrize("lossless", [False, True])
def test_colour_with_padded_rows_is_read_as_stored(lossless: bool) -> None:
    """An 8-bit colour camera's frame: NIS pads each row to 4 bytes (here 3 × 7 + 3), compressed
    or not; the samples come out as the reader and NIS show them."""
    rgb = np.random.default_rng(2).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    data = write_nd2(Nd2(rgb, "YXS", lossless=lossless, row_padding=3))
    layout = microscopy.probe(data, MAX_PIXELS, Limits())
    assert layout.rgb and layout.axes == "YXS"
    assert [c.name for c in layout.channels] == ["red", "green", "blue"]
    plane = read(data, channel="green")
    np.testing.assert_array_equal(plane.image, rgb[:, :, 1])


def test_lossless_frames_are_inflated_plane_by_plane() -> None:
    pixels = np.random.default_rng(3).integers(0, 60000, (3, H, W, 2), dtype=np.uint16)
    data = write_nd2(Nd2(pixels, "ZYXC", ("Hoechst", "mCherry"), lossless=True))
    for z in range(3):
        np.testing.assert_array_equal(read(data, channel="mcherry", z=z).image, pixels[z, :, :, 1])


def test_float_frames_are_float32() -> None:
    pixels = np.random.default_rng(4).random((H, W, 2), dtype=np.float32)
    plane = read(write_nd2(Nd2(pixels, "YXC", ("ratio", "DAPI"))), channel="1")
    assert plane.image.dtype == np.float32
    np.testing.assert_array_equal(plane.image, pixels[:, :, 1])


def stopped_early() -> tuple[np.ndarray, bytes]:
    """A 5-slice z-stack whose acquisition was stopped after 3 slices: NIS keeps the loop's count,
    and writes the frames it took."""
    pixels = np.random.default_rng(5).integers(0, 4096, (5, H, W), dtype=np.uint16)
    data = write_nd2(Nd2(pixels, "ZYX"))
    for k in (3, 4):
        data = data.replace(f"ImageDataSeq|{k}!".encode(), f"ImageDataSeX|{k}!".encode())
    return pixels, data


def test_an_acquisition_stopped_early_reads_its_frames_and_names_the_missing_ones() -> None:
    pixels, data = stopped_early()
    plane = read(data, z=2)
    np.testing.assert_array_equal(plane.image, pixels[2])
    assert "the acquisition stopped after 3 of 5 frames" in plane.layout.warnings[-1]
    with pytest.raises(SelectionError, match="no frame at z=4"):
        read(data, z=4)
    with pytest.raises(SelectionError, match="no frame"):
        read(data, project="max")  # not a projection of zeros


def test_lossy_frames_and_custom_loops_are_refused_naming_what_to_do() -> None:
    data = bytearray(write_nd2(Nd2(np.zeros((H, W), np.uint16))))
    compression = "eCompression\x00".encode("utf-16-le")
    at = data.index(compression) + len(compression)
    data[at : at + 4] = struct.pack("<i", 1)  # lossy
    with pytest.raises(UnsupportedImageType, match="lossy-compressed.*export"):
        read(bytes(data))
    custom = write_nd2(Nd2(np.zeros((2, H, W), np.uint16), "TYX"))
    custom = custom.replace("eType\x00".encode("utf-16-le") + struct.pack("<i", 1),
                            "eType\x00".encode("utf-16-le") + struct.pack("<i", 7))
    with pytest.raises(UnsupportedImageType, match="CustomLoop"):
        read(custom)


def test_components_that_are_not_one_per_channel_are_refused() -> None:
    """Attributes saying one component per pixel in a file of two named channels: not guessed at."""
    data = bytearray(write_nd2(Nd2(np.zeros((H, W, 2), np.uint16), "YXC", ("DAPI", "GFP"))))
    components = "uiComp\x00".encode("utf-16-le")
    at = data.index(components) + len(components)
    data[at : at + 4] = struct.pack("<I", 1)
    with pytest.raises(UnsupportedImageType, match="1 components in 2 channels"):
        read(bytes(data))


def test_an_nd2_of_the_older_jpeg_2000_format_is_a_415_saying_to_save_it_again() -> None:
    legacy = imaging.JP2_SIGNATURE + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 " + bytes(200)
    with pytest.raises(UnsupportedImageType, match="save it again as ND2"):
        read(legacy)


def test_hostile_and_broken_nd2s_are_refused_before_their_pixels_are_read(plate: bytes) -> None:
    assert structure.check_nd2(plate, Limits()) == 2 * 3 * 4 + 4
    with pytest.raises(TooComplex, match="UNET_MAX_ND2_CHUNKS"):
        read(plate, Limits(max_nd2_chunks=27), channel="0", z=0, t=0)
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        read(plate, Limits(max_metadata_bytes=500), channel="0", z=0, t=0)
    with pytest.raises(UndecodableImage, match="truncated ND2"):
        read(plate[: len(plate) - 10])
    with pytest.raises(UndecodableImage, match="truncated ND2"):
        read(plate[:5000] + plate[-40:])  # the map's offset past the end
    map_at = struct.unpack_from("<Q", plate, len(plate) - 8)[0]
    moved = bytearray(plate)
    first_entry = map_at + 16 + 32 + plate[map_at + 48 :].index(b"!") + 1
    moved[first_entry : first_entry + 8] = struct.pack("<Q", len(plate) - 20)  # no chunk there
    with pytest.raises(UndecodableImage, match="malformed ND2: no chunk at byte"):
        read(bytes(moved))


def test_a_chunk_map_is_bounded_by_its_entries_and_its_size() -> None:
    """A map naming one frame 61 times counts 61 entries (a dict of names would count one), and a
    map longer than the limit's entries take is refused before it is read."""
    data = write_nd2(Nd2(np.zeros((H, W), np.uint16)))
    map_at = struct.unpack_from("<Q", data, len(data) - 8)[0]
    entries = data[map_at + 48 : len(data) - 40]
    frame = entries.index(b"ImageDataSeq|0!")
    entry = entries[frame : frame + len(b"ImageDataSeq|0!") + 16]
    repeated = entries + entry * 60
    tail = repeated + b"ND2 CHUNK MAP SIGNATURE 0000001!" + struct.pack("<Q", map_at)
    header = struct.pack("<IIQ", 0x0ABECEDA, 32, len(tail)) + data[map_at + 16 : map_at + 48]
    many = data[:map_at] + header + tail
    structure.check_nd2(many, Limits(max_nd2_chunks=64))  # 4 chunks in 64 entries, one 61 times
    with pytest.raises(TooComplex, match="UNET_MAX_ND2_CHUNKS"):
        structure.check_nd2(many, Limits(max_nd2_chunks=63))
    # Four entries, then 4,000 bytes after the map's end signature (the walk stops there): more
    # bytes than four entries take, refused before the map is copied to be read.
    padded_tail = entries + b"ND2 CHUNK MAP SIGNATURE 0000001!" + bytes(4000) + tail[-40:]
    header = struct.pack("<IIQ", 0x0ABECEDA, 32, len(padded_tail)) + data[map_at + 16 : map_at + 48]
    padded = data[:map_at] + header + padded_tail
    structure.check_nd2(padded, Limits(max_nd2_chunks=20))
    with pytest.raises(TooComplex, match="UNET_MAX_ND2_CHUNKS"):
        structure.check_nd2(padded, Limits(max_nd2_chunks=4))


def test_a_frame_claiming_more_than_its_chunk_holds_is_truncated_not_read_past() -> None:
    """Attributes claiming taller frames than were written: the frame's chunk is too short, named
    as such, not read on into the next chunk's bytes."""
    data = bytearray(write_nd2(Nd2(np.zeros((2, H, W), np.uint16), "ZYX")))
    height = "uiHeight\x00".encode("utf-16-le")
    at = data.index(height) + len(height)
    data[at : at + 4] = struct.pack("<I", H * 3)
    with pytest.raises(UndecodableImage, match="truncated ND2: a frame holds"):
        read(bytes(data), z=0)


def test_a_compressed_frame_is_inflated_no_further_than_its_size() -> None:
    """A zlib bomb as a frame: inflated to the frame's bytes and no more."""
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in ~64 KB
    data = write_nd2(Nd2(np.zeros((H, W), np.uint16), lossless=True, frame_bodies={0: bomb}))
    tracemalloc.start()
    try:
        plane = read(data)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plane.image.shape == (H, W) and not plane.image.any()
    assert peak < 8 * 1024 * 1024, f"{peak:,} bytes at the peak: the frame was inflated past its size"
    with pytest.raises(UndecodableImage, match="corrupt ND2 frame"):
        read(write_nd2(Nd2(np.zeros((H, W), np.uint16), lossless=True, frame_bodies={0: b"not zlib"})))


def test_a_plane_over_the_limit_is_refused_from_the_attributes() -> None:
    data = write_nd2(Nd2(np.zeros((100, 120), np.uint8)))
    with pytest.raises(ImageTooLarge):
        microscopy.select(data, microscopy.Selection(), 100 * 119, Limits())
    assert workload.plane_pixels(data, 10**6, Limits()) == 100 * 120
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(data, 100 * 119, Limits())
    assert nd2.admitted_pixels(data, 10**6) == 100 * 120
    channels = np.zeros((100, 120, 3), np.uint16)
    assert nd2.admitted_pixels(write_nd2(Nd2(channels, "YXC", ("a", "b", "c"))), 10**6) == 100 * 120
    # A compressed frame is inflated whole to read one of its channels: all three are charged.
    packed = write_nd2(Nd2(channels, "YXC", ("a", "b", "c"), lossless=True))
    assert nd2.admitted_pixels(packed, 10**6) == 3 * 100 * 120


def test_compressed_metadata_is_inflated_no_further_than_the_metadata_limit() -> None:
    """A run of compressed records inside another (the walk inflates the outer, 130 KB: within the
    limit) inflating to 128 MiB: the decoder stops at the limit, a 413, not 128 MiB allocated."""
    bomb = compressed_records(compressed_records(bytes(128 * 1024 * 1024)))
    data = write_nd2(Nd2(np.zeros((H, W), np.uint16), text_info=bomb))
    structure.check_nd2(data, Limits())  # the outer run is small
    tracemalloc.start()
    try:
        with pytest.raises(TooComplex, match="inflates to more than 16,777,216 bytes.*METADATA_BYTES"):
            read(data)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024 * 1024, f"{peak:,} bytes at the peak"
    records = {"SLxImageTextInfo": {"TextInfoItem_5": "compressed by NIS"}}
    honest = write_nd2(Nd2(np.ones((H, W), np.uint16), text_info=compressed_records(clx_records(records))))
    assert read(honest).image.max() == 1  # compressed metadata within the limit is read as ever


def test_metadata_the_decoder_cannot_parse_is_undecodable() -> None:
    data = bytearray(write_nd2(Nd2(np.zeros((H, W), np.uint16))))
    attributes = data.index(b"ImageAttributesLV!")
    start = attributes + len(b"ImageAttributesLV!")
    data[start : start + 40] = bytes(40)  # the records' types zeroed: "unknown data type"
    with pytest.raises(UndecodableImage, match="unreadable ND2"):
        read(bytes(data))


def test_unet_segment_cuts_an_nd2_by_frame_and_position(tmp_path: Path, plate: bytes) -> None:
    """``--t all`` and ``--series``: each frame of a position sent as an OME-TIFF of its pages,
    read by the service as the ND2's own plane, pixel size included; the file is mapped, not read."""
    path = tmp_path / "plate.nd2"
    path.write_bytes(plate)
    layout = frames.file_layout(path, MAX_PIXELS, series=1)
    assert layout is not None and layout.planes == {"Z": 4, "T": 2} and layout.series == 1
    selection = microscopy.Selection(channel="FITC", z=3)
    cut = frames.cut_frame(path, "t", 1, selection, MAX_PIXELS, series=2)
    assert cut is not None and microscopy.count_tiff_pages(cut, 100) == 1
    plane = read(cut, channel="FITC", z=3, t=1)
    np.testing.assert_array_equal(plane.image, plate_pixels()[1, 2, 3, :, :, 1])
    assert plane.layout.pixel_size == microscopy.PixelSize(UM, UM, "ome", 0.5)
    image = frames.cut_image(path, 1, microscopy.Selection(channel="DAPI", z=0, t=0), MAX_PIXELS)
    assert image is not None
    np.testing.assert_array_equal(read(image, channel="DAPI", z=0, t=0).image,
                                  plate_pixels()[0, 1, 0, :, :, 0])
