"""Olympus OIB files (``service/oib.py``) read as FluoView writes them (``tests/oib_files.py``):
channels by their dye names, z-slices and time points, the calibration, an acquisition stopped
early, what is refused, and the compound file's structure bounded before olefile parses it.

The writer's files are also read by oiffile's own reader (tested by its author on real FV1000
files): the axes, shape and pixels it finds are the service's, so the writer lays files out as
FluoView does, not only as this service expects.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service import microscopy, oib, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from service.structure import Limits, TooComplex
from tests.compound_files import write_compound
from tests.oib_files import Oib, settings_text, tiff_bytes, write_oib

RNG = np.random.default_rng(7)
#: Two time points × three z-slices × two channels of 12-bit counts.
PIXELS = RNG.integers(0, 4096, (2, 3, 2, 40, 56), dtype=np.uint16)
STACK = write_oib(Oib(PIXELS, "TZCYX", channel_names=("Hoechst 33342", "Alexa Fluor 488"), pixel_um=0.207,
                      z_step_nm=450.0))


def read(data: bytes, limits: Limits | None = None, max_pixels: int = 10**8, **choice):
    return microscopy.select(data, Selection(**choice), max_pixels, limits or Limits())


@pytest.mark.parametrize("version", [3, 4])
def test_every_plane_reads_back_with_its_channel_names_calibration_and_z_step(version: int) -> None:
    data = STACK if version == 3 else write_oib(Oib(PIXELS, "TZCYX", ("Hoechst 33342", "Alexa Fluor 488"),
                                                    pixel_um=0.207, z_step_nm=450.0, version=version))
    layout, read_plane, close = oib.open_planes(data, 10**8)
    try:
        assert (layout.format, layout.axes, layout.dtype) == ("OIB", "TZCYX", "uint16")
        assert layout.shape == (2, 3, 2, 40, 56)
        assert [c.name for c in layout.channels] == ["Hoechst 33342", "Alexa Fluor 488"]
        assert layout.planes == {"Z": 3, "T": 2}
        assert layout.pixel_size == microscopy.PixelSize(0.207, 0.207, "oib", 0.45)
        assert layout.warnings == ()
        for t in range(2):
            for z in range(3):
                for c in range(2):
                    assert np.array_equal(read_plane({"C": c, "Z": z, "T": t}), PIXELS[t, z, c])
    finally:
        close()


def test_oiffiles_reader_finds_the_same_axes_and_pixels(tmp_path) -> None:
    oiffile = pytest.importorskip("oiffile")
    path = tmp_path / "stack.oib"
    path.write_bytes(STACK)
    with oiffile.OifFile(path) as theirs:
        assert theirs.axes == "TZCYX" and theirs.shape == PIXELS.shape
        # oiffile orders a series by the planes' names: C, then Z, then T.
        assert np.array_equal(theirs.asarray(), PIXELS.transpose(2, 1, 0, 3, 4))


def test_a_plane_is_chosen_by_dye_name_and_projected_like_a_hyperstacks() -> None:
    plane = read(STACK, channel="hoechst 33342", z=2, t=1)
    assert np.array_equal(plane.image, PIXELS[1, 2, 0])
    assert (plane.channel.name, plane.z, plane.t) == ("Hoechst 33342", 2, 1)
    assert plane.pixel_size == microscopy.PixelSize(0.207, 0.207, "oib", 0.45)
    projected = read(STACK, channel="1", project="max", t=0)
    assert np.array_equal(projected.image, PIXELS[0, :, 1].max(axis=0))


def test_without_a_choice_the_channels_slices_and_time_points_are_offered() -> None:
    with pytest.raises(SelectionError) as caught:
        read(STACK)
    assert caught.value.missing and set(caught.value.params) == {"channel", "z", "t"}
    assert caught.value.choices["channels"] == [{"index": 0, "name": "Hoechst 33342"},
                                                {"index": 1, "name": "Alexa Fluor 488"}]


def test_one_plane_needs_no_choice_and_a_decimal_comma_is_a_point() -> None:
    plane = RNG.integers(0, 256, (30, 44), dtype=np.uint8)
    data = write_oib(Oib(plane, "YX", channel_names=("DAPI",), pixel_um="0,31"))
    got = read(data)
    assert np.array_equal(got.image, plane) and got.image.dtype == np.uint8
    assert got.pixel_size == microscopy.PixelSize(0.31, 0.31, "oib")


def test_without_a_calibration_sizes_are_in_pixels_and_a_notice_says_so() -> None:
    data = write_oib(Oib(PIXELS[0, 0], "CYX", pixel_um=None))
    layout = microscopy.probe(data, 10**8, Limits())
    assert layout.pixel_size is None
    assert any("pixel size" in w for w in layout.warnings)
    assert [c.name for c in layout.channels] == [None, None]  # no names written: indices only


def test_an_acquisition_stopped_early_reads_what_it_took_and_names_what_it_did_not() -> None:
    data = write_oib(Oib(PIXELS, "TZCYX", missing=((0, 2, 1), (1, 2, 1)), planned={"T": 5}))
    layout = microscopy.probe(data, 10**8, Limits())
    assert layout.planes == {"Z": 3, "T": 2}
    assert any("2 of 5 time points" in w and "stopped early" in w for w in layout.warnings)
    assert np.array_equal(read(data, channel="0", z=1, t=1).image, PIXELS[1, 1, 0])
    with pytest.raises(SelectionError, match="no plane at channel 0, z 2, t 1"):
        read(data, channel="0", z=2, t=1)


def test_previews_and_thumbnails_are_not_planes() -> None:
    preview = tiff_bytes(np.zeros((16, 16), np.uint16))
    data = write_oib(Oib(PIXELS[0, 0], "CYX", extra={"s_C001-R001.tif": preview, "s_C002-R001.tif": preview}))
    layout = microscopy.probe(data, 10**8, Limits())
    assert (layout.axes, layout.shape) == ("CYX", (2, 40, 56))


@pytest.mark.parametrize(("extra", "message"), [
    ({"s_C001L001.tif": b"", "s_C001L002.tif": b""}, "λ-scan"),
    ({"s_C001P001.tif": b"", "s_C001P002.tif": b""}, "stage positions"),
])
def test_other_axes_are_refused_naming_them(extra: dict, message: str) -> None:
    with pytest.raises(UnsupportedImageType, match=message):
        read(write_oib(Oib(PIXELS[0, 0, 0], "YX", extra=extra)))


def test_a_line_scan_is_refused() -> None:
    with pytest.raises(UnsupportedImageType, match="line scan"):
        read(write_oib(Oib(PIXELS[0, 0, 0], "YX", line_scan=True)))


def test_a_compound_file_that_is_no_oib_is_refused_naming_what_it_may_be() -> None:
    office = write_compound({"WordDocument": b"\0" * 5000, "\x05SummaryInformation": b"\0" * 200})
    with pytest.raises(UnsupportedImageType, match="neither an Olympus OIB nor a Zeiss ZVI"):
        read(office)


def test_a_plane_that_contradicts_the_settings_is_refused() -> None:
    small = tiff_bytes(np.zeros((20, 20), np.uint16))
    data = write_oib(Oib(PIXELS[0, 0], "CYX", replace={"s_C002.tif": small}))
    assert np.array_equal(read(data, channel="0").image, PIXELS[0, 0, 0])
    with pytest.raises(UndecodableImage, match="plane s_C002.tif is"):
        read(data, channel="1")
    rgb = tiff_bytes(np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(UndecodableImage, match="grey"):
        read(write_oib(Oib(PIXELS[0, 0, 0], "YX", replace={"s_C001.tif": rgb})))


def test_broken_settings_are_a_400_and_settings_past_the_metadata_limit_a_413() -> None:
    broken = write_oib(Oib(PIXELS[0, 0, 0], "YX", replace={"cells.oif": b"\x00garbage"}))
    with pytest.raises(UndecodableImage, match="not a FluoView settings file"):
        read(broken)
    padded = settings_text({"Axis 0 Parameters Common": {"AxisCode": "X", "MaxSize": 56},
                            "Axis 1 Parameters Common": {"AxisCode": "Y", "MaxSize": 40},
                            "Filler": {f"Key{k}": "x" * 100 for k in range(200)}})
    large = write_oib(Oib(PIXELS[0, 0, 0], "YX", replace={"cells.oif": padded}))
    assert read(large).image.shape == (40, 56)
    with pytest.raises(TooComplex, match="UNET_MAX_METADATA_BYTES"):
        read(large, Limits(max_metadata_bytes=len(padded) - 1))


def test_admission_counts_one_plane_from_the_settings_before_any_plane_is_read() -> None:
    assert workload.plane_pixels(STACK, 10**8, Limits()) == 40 * 56
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(STACK, 40 * 56 - 1, Limits())
    with pytest.raises(ImageTooLarge):
        read(STACK, max_pixels=40 * 56 - 1, channel="0", z=0, t=0)


# --- the compound file's structure, bounded before olefile parses it -------------------------


def test_directory_entries_are_counted_against_the_limit() -> None:
    entries = structure.check_compound(STACK, Limits())
    assert entries >= 2 * 3 * 2 * 2  # a .tif and a .pty per plane, in entries of four per sector
    structure.check_compound(STACK, Limits(max_oib_entries=entries))
    with pytest.raises(TooComplex, match="UNET_MAX_OIB_ENTRIES"):
        read(STACK, Limits(max_oib_entries=entries - 1), channel="0", z=0, t=0)


def test_a_directory_deeper_than_any_red_black_tree_is_malformed() -> None:
    # 150 siblings as one chain: valid links, but olefile would recurse once per entry.
    chained = write_oib(Oib(RNG.integers(0, 255, (150, 8, 8), dtype=np.uint8), "ZYX", sibling_chain=True))
    with pytest.raises(UndecodableImage, match="nests deeper than"):
        structure.check_compound(chained, Limits())
    balanced = write_oib(Oib(RNG.integers(0, 255, (150, 8, 8), dtype=np.uint8), "ZYX"))
    structure.check_compound(balanced, Limits())


def _header(data: bytes) -> list:
    return list(struct.unpack_from("<8s16sHHHHH6sIIIIIIIII", data, 0))


def _with_header(data: bytes, **fields: int) -> bytes:
    names = ["sig", "clsid", "minor", "major", "order", "shift", "mini", "reserved", "dir_sectors",
             "fat_sectors", "dir_start", "transaction", "cutoff", "minifat_start", "minifat_sectors",
             "difat_start", "difat_sectors"]
    values = _header(data)
    for name, value in fields.items():
        values[names.index(name)] = value
    return struct.pack("<8s16sHHHHH6sIIIIIIIII", *values) + data[76:]


def test_a_loop_in_the_directory_chain_is_malformed() -> None:
    values = _header(STACK)
    directory_start, fat_sector = values[10], struct.unpack_from("<I", STACK, 76)[0]
    looped = bytearray(STACK)
    # The directory's first sector made to point at itself in the FAT.
    struct.pack_into("<I", looped, (fat_sector + 1) * 512 + directory_start * 4, directory_start)
    with pytest.raises(UndecodableImage, match="loop"):
        structure.check_compound(bytes(looped), Limits())


@pytest.mark.parametrize(("fields", "message"), [
    ({"fat_sectors": 10**6}, "counts"),
    ({"dir_start": 10**6}, "directory chain"),
    ({"shift": 10}, "malformed compound file"),
])
def test_a_header_that_contradicts_the_file_is_malformed(fields: dict, message: str) -> None:
    with pytest.raises(UndecodableImage, match=message):
        structure.check_compound(_with_header(STACK, **fields), Limits())


def test_a_stream_claiming_more_bytes_than_the_file_is_malformed() -> None:
    bad = bytearray(STACK)
    directory_start = _header(STACK)[10]
    entry = (directory_start + 1) * 512 + 128  # the root's first child, a stream or a storage
    struct.pack_into("<B", bad, entry + 66, 2)
    struct.pack_into("<Q", bad, entry + 120, len(STACK) + 1)
    with pytest.raises(UndecodableImage, match="claims"):
        structure.check_compound(bytes(bad), Limits())


def test_a_truncated_file_is_a_400_not_a_crash() -> None:
    for size in (100, 600, len(STACK) // 2, len(STACK) - 700):
        with pytest.raises(UndecodableImage):
            read(STACK[:size], channel="0", z=0, t=0)


def test_a_plane_stream_larger_than_its_pixels_need_is_refused_before_it_is_read() -> None:
    # Within the file (the walk allows it) but far more than an 8×8 plane's TIFF: a by-path file of
    # gigabytes could otherwise have olefile read gigabytes for one plane.
    data = bytearray(write_oib(Oib(np.ones((8, 8), np.uint8), "YX", extra={"s_Thumb.bmp": bytes(3 << 20)})))
    name = "Stream00001".encode("utf-16-le")  # s_C001.tif: the first member after the main settings
    entry = data.index(name, 512 * (_header(bytes(data))[10] + 1))  # in the directory, not OibInfo.txt
    struct.pack_into("<Q", data, entry + 120, 2 << 20)
    with pytest.raises(UndecodableImage, match="claims 2,097,152 bytes, more than its pixels need"):
        read(bytes(data))


def test_unet_segment_cuts_a_frame_out_of_an_oib_file(tmp_path) -> None:
    """``--t all`` / ``--z all`` on an OIB: the frame's pages cut out as an OME-TIFF, read by the
    service as the OIB's own plane, pixel size included."""
    from service import frames

    path = tmp_path / "stack.oib"
    path.write_bytes(STACK)
    layout = frames.file_layout(path, 10**8)
    assert layout is not None and layout.planes == {"Z": 3, "T": 2}
    selection = Selection(channel="Alexa Fluor 488", z=2)
    cut = frames.cut_frame(path, "t", 1, selection, 10**8)
    assert cut is not None and microscopy.count_tiff_pages(cut, 100) == 1
    plane = read(cut, channel="Alexa Fluor 488", z=2, t=1)
    np.testing.assert_array_equal(plane.image, PIXELS[1, 2, 1])
    assert plane.layout.pixel_size == microscopy.PixelSize(0.207, 0.207, "ome", 0.45)


@pytest.mark.parametrize(("tag_offset", "value"), [(42, 48), (66, 2)])
def test_a_plane_tifffile_decodes_to_another_shape_is_a_400(tag_offset: int, value: int) -> None:
    """Found by fuzzing: a plane TIFF whose BitsPerSample is 48 decodes to an empty array, one that
    says RGB with one sample to (H, W, 1); both have the settings' size in their header."""
    plane = bytearray(tiff_bytes(np.ones((40, 56), np.uint16)))
    struct.pack_into("<H", plane, tag_offset, value)  # tifffile's first IFD: BitsPerSample / Photometric
    data = write_oib(Oib(PIXELS[0, 0, 0], "YX", replace={"s_C001.tif": bytes(plane)}))
    with pytest.raises(UndecodableImage, match="decodes to"):
        read(data)


def test_a_file_cut_inside_the_fat_entry_the_walk_needs_is_named_truncated(tmp_path) -> None:
    """The walk alone (slide and stack jobs by path run it outside the decoders' error mapping):
    found by fuzzing, a file ending inside the FAT entry of a directory sector raised struct.error."""
    directory_start, fat_sector = _header(STACK)[10], struct.unpack_from("<I", STACK, 76)[0]
    entry = (fat_sector + 1) * 512 + directory_start * 4  # the FAT's word for the directory's first sector
    cut = STACK[: entry + 2]
    with pytest.raises(UndecodableImage, match="does not cover"):
        structure.check_compound(cut, Limits())
    path = tmp_path / "cut.oib"
    path.write_bytes(cut)
    from service import slide_files

    with pytest.raises(UndecodableImage):
        slide_files.open_slide(path, Selection(channel="0", z=0, t=0), max_pixels=10**8, limits=Limits())


def test_a_frame_the_acquisition_never_took_is_not_cut_and_the_file_goes_whole(tmp_path) -> None:
    """unet-segment then sends the file and the service's 422 names the missing plane (found by
    fuzzing: the cut raised the SelectionError into the client)."""
    from service import frames

    path = tmp_path / "stopped.oib"
    path.write_bytes(write_oib(Oib(PIXELS, "TZCYX", missing=((0, 2, 1),))))
    assert frames.cut_frame(path, "t", 1, Selection(channel="0", z=2), 10**8) is None
    assert frames.cut_frame(path, "t", 1, Selection(channel="0", z=1), 10**8) is not None


def test_a_file_past_109_fat_sectors_lists_them_in_difat_sectors_and_reads() -> None:
    """Past ~7 MB (109 FAT sectors of 128 sectors of 512 bytes) a compound file lists its FAT
    sectors in a chain of DIFAT sectors: walked, read by olefile, and a loop in it refused."""
    planes = RNG.integers(0, 4096, (8, 1, 1024, 1024), dtype=np.uint16)
    data = write_oib(Oib(planes, "ZCYX"))
    difat_start, difat_sectors = _header(data)[15:17]
    assert difat_sectors >= 2
    assert np.array_equal(read(data, z=7).image, planes[7, 0])
    looped = bytearray(data)
    struct.pack_into("<I", looped, (difat_start + 2) * 512 - 4, difat_start)  # the first's "next": itself
    with pytest.raises(UndecodableImage, match="loop or a gap in its DIFAT chain"):
        structure.check_compound(bytes(looped), Limits(max_oib_entries=10**6))


def test_two_streams_starting_at_one_sector_are_refused() -> None:
    """olefile's check that no two streams share their first sector, kept when the service made it
    linear (a set for olefile's list: 10,000 streams opened in 0.39 s, not 4.8 s)."""
    data = bytearray(STACK)
    directory = 512 * (_header(STACK)[10] + 1)
    first = data.index("Stream00001".encode("utf-16-le"), directory)  # two planes' TIFFs (4,480 bytes:
    other = data.index("Stream00003".encode("utf-16-le"), directory)  # in the FAT, not the mini FAT)
    data[other + 116 : other + 120] = data[first + 116 : first + 120]
    with pytest.raises(UndecodableImage, match="referenced twice"):
        read(bytes(data), channel="0", z=0, t=0)


def test_plane_indices_past_the_planes_stored_are_malformed() -> None:
    """One plane named s_C900.tif would otherwise make 900 channels to offer."""
    plane = tiff_bytes(np.ones((40, 56), np.uint16))
    data = write_oib(Oib(PIXELS[0, 0, 0], "YX", extra={"s_C900.tif": plane}))
    with pytest.raises(UndecodableImage, match="run to 900"):
        read(data, channel="0")


def test_a_channel_without_a_dye_is_named_by_its_detector() -> None:
    """As in FluoView's own test file (CH1 without a dye, CH2 with Alexa Fluor 546, TD1 the
    transmitted-light detector with dye "None"): the dye where FluoView has one, else CH1, CH2..."""
    data = write_oib(Oib(PIXELS[0, 0], "CYX", channel_names=("-", "Alexa Fluor 546")))
    layout = microscopy.probe(data, 10**8, Limits())
    assert [c.name for c in layout.channels] == ["CH1", "Alexa Fluor 546"]
    assert np.array_equal(read(data, channel="ch1").image, PIXELS[0, 0, 0])
    assert np.array_equal(read(data, channel="alexa fluor 546").image, PIXELS[0, 0, 1])


def test_an_oif_settings_file_sent_alone_is_a_415_saying_to_save_as_oib() -> None:
    """The .oif of FluoView's folder format names planes in a folder no upload carries."""
    oif = settings_text({"Acquisition Parameters Common": {"Acquisition Device": "FV1000"},
                         "Axis 0 Parameters Common": {"AxisCode": "X", "MaxSize": 256}})
    for reader in (lambda: read(oif), lambda: workload.plane_pixels(oif, 10**8, Limits())):
        with pytest.raises(UnsupportedImageType, match="save the acquisition as OIB in FluoView"):
            reader()


def test_junk_in_a_version_3_sizes_high_word_is_ignored_as_olefile_ignores_it() -> None:
    """[MS-CFB]: a version 3 file's stream sizes are 32-bit; some writers leave the high 32 bits
    unset, and olefile reads such files. The walk does too."""
    data = bytearray(STACK)
    directory = 512 * (_header(STACK)[10] + 1)
    entry = data.index("Stream00001".encode("utf-16-le"), directory)
    struct.pack_into("<I", data, entry + 124, 0xDEADBEEF)  # the high word of its size
    assert np.array_equal(read(bytes(data), channel="0", z=0, t=0).image, PIXELS[0, 0, 0])
