"""Imaris files (``service.ims``) as Imaris writes them (``tests/ims_files.py``, written with h5py):
every plane of every storage Imaris uses (deflate with or without shuffle, Fletcher-32,
contiguous), channels by Imaris's names, µm from the extents, by upload, memory map, path and cut
frame; and what a broken or hostile HDF5 file gets: a 4xx that says why, its reads bounded."""

from __future__ import annotations

import io
import mmap
import zlib
from pathlib import Path

import numpy as np
import pytest

from service import frames, ims, microscopy, slide_files, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from tests.ims_files import ims_bytes

MAX = 10**8
RNG = np.random.default_rng(11)
STACK = RNG.integers(0, 4000, (2, 3, 5, 40, 50)).astype(np.uint16)  # T, C, Z, Y, X (not whole chunks)
NAMES = ["DAPI", "GFP", "Cy5"]


def select(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, Selection(**choice), MAX, 10_000)  # type: ignore[arg-type]


@pytest.mark.parametrize("storage", [
    {},  # Imaris's default: deflate after shuffle
    {"shuffle": False},
    {"fletcher32": True},
    {"chunks": None, "compression": None, "shuffle": False},  # contiguous, no chunks
    {"chunks": (1, 16, 64)},  # one slice per chunk, chunks wider than the image
])
def test_every_plane_of_the_full_resolution_is_read(storage: dict[str, object]) -> None:
    data = ims_bytes(STACK, names=NAMES, **storage)  # type: ignore[arg-type]
    layout = microscopy.probe(data, MAX, 10_000)
    assert (layout.format, layout.axes, layout.planes) == ("Imaris", "TZCYX", {"Z": 5, "T": 2})
    assert (layout.width, layout.height, layout.dtype) == (50, 40, "uint16")
    assert [c.name for c in layout.channels] == NAMES
    assert layout.pixel_size == microscopy.PixelSize(0.5, 0.5, "ims", 2.0)
    for t in range(2):
        for c in range(3):
            for z in range(5):
                assert np.array_equal(select(data, channel=NAMES[c], z=z, t=t).image, STACK[t, c, z])


@pytest.mark.parametrize("dtype, read_as", [(np.uint8, np.uint8), (np.uint32, np.float32),
                                            (np.float32, np.float32)])
def test_pixel_types_read_as_the_service_reads_them(dtype: type, read_as: type) -> None:
    stack = RNG.integers(0, 250, (1, 1, 3, 20, 20)).astype(dtype)
    plane = select(ims_bytes(stack), z=2).image
    assert plane.dtype == read_as and np.array_equal(plane, stack[0, 0, 2].astype(read_as))


def test_calibration_in_other_units_missing_or_unknown() -> None:
    in_nm = microscopy.probe(ims_bytes(STACK[:1, :1], voxel_um=(130.0, 130.0, 300.0), unit="nm"), MAX, 10_000)
    assert in_nm.pixel_size == microscopy.PixelSize(0.13, 0.13, "ims", 0.3)
    bare = microscopy.probe(ims_bytes(STACK[:1, :1], voxel_um=None), MAX, 10_000)
    assert bare.pixel_size is None and any("extents" in w for w in bare.warnings)
    odd = microscopy.probe(ims_bytes(STACK[:1, :1], unit="furlong"), MAX, 10_000)
    assert odd.pixel_size is None and any("'furlong'" in w for w in odd.warnings)


def test_values_as_real_files_hold_them_nul_ended_text_latin1_names_big_endian_pixels() -> None:
    """Imaris's own example file ends some extents with a NUL (``b'0.100000000\\x00'``), Imaris on
    Windows writes names in its code page, and BigDataProcessor writes big-endian pixels."""
    import h5py

    out = io.BytesIO(ims_bytes(STACK[:1, :1].astype(">u2"), names=["DAPI"]))
    with h5py.File(out, "r+") as f:
        f["DataSetInfo/Image"].attrs["ExtMax0"] = np.frombuffer(b"25.000\x00", dtype="S1")
        f["DataSetInfo/Channel 0"].attrs["Name"] = np.frombuffer("Höchst".encode("latin-1"), dtype="S1")
    layout = microscopy.probe(out.getvalue(), MAX, 10_000)
    assert layout.pixel_size == microscopy.PixelSize(0.5, 0.5, "ims", 2.0)
    assert [c.name for c in layout.channels] == ["Höchst"]
    plane = select(out.getvalue(), z=3).image
    assert plane.dtype == np.uint16 and np.array_equal(plane, STACK[0, 0, 3])


def test_channels_without_a_name_or_sharing_one_are_offered_by_index() -> None:
    assert [c.name for c in microscopy.probe(ims_bytes(STACK[:1, :2]), MAX, 10_000).channels] == [None, None]
    shared = ims_bytes(STACK[:1], names=["DAPI", "DAPI", "GFP"])
    assert [c.name for c in microscopy.probe(shared, MAX, 10_000).channels] == [None, None, "GFP"]


def test_a_memory_map_a_path_and_a_cut_frame_read_as_the_upload(tmp_path: Path) -> None:
    path = tmp_path / "cells.ims"
    path.write_bytes(ims_bytes(STACK, names=NAMES))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert np.array_equal(select(view, channel="GFP", z=2, t=1).image, STACK[1, 1, 2])  # type: ignore[arg-type]
    with slide_files.open_slide(path, Selection(channel="Cy5", z=3, t=0), max_pixels=MAX,
                                limits=structure.Limits()) as source:
        assert np.array_equal(np.asarray(source.read(2, 38, 3, 45)), STACK[0, 2, 3, 2:38, 3:45])
    cut = frames.cut_frame(path, "t", 1, Selection(channel="DAPI", z=0), MAX)
    assert cut is not None
    assert np.array_equal(select(cut, channel="DAPI", z=0, t=1).image, STACK[1, 0, 0])


def test_admission_charges_one_plane_from_the_description() -> None:
    data = ims_bytes(STACK)
    assert workload.plane_pixels(data, MAX, 10_000) == 40 * 50
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(data, 40 * 50 - 1, 10_000)
    with pytest.raises(ImageTooLarge):
        microscopy.probe(data, 100, 10_000)
    with pytest.raises(SelectionError):
        microscopy.probe(data, MAX, 10_000, series=1)


def _h5(build: object) -> bytes:
    import h5py

    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        build(f)  # type: ignore[operator]
    return out.getvalue()


def test_other_hdf5_files_and_storage_pyfive_does_not_read_are_415s_that_say_what_to_do() -> None:
    bdv = _h5(lambda f: f.create_dataset("t00000/s00/0/cells", data=np.zeros((2, 8, 8), np.uint16)))
    with pytest.raises(UnsupportedImageType, match="not an Imaris dataset"):
        microscopy.probe(bdv, MAX, 10_000)
    with pytest.raises(UnsupportedImageType, match="save it as TIFF"):
        microscopy.probe(ims_bytes(STACK[:1, :1], libver="v110"), MAX, 10_000)  # HDF5 1.10's chunk index
    with pytest.raises(UnsupportedImageType, match="HDF5 filter 32000"):
        select(ims_bytes(STACK[:1, :1], compression="lzf", shuffle=False), z=0)


def test_a_chunk_that_inflates_past_its_size_is_refused_before_it_is_held() -> None:
    """A deflate bomb: a chunk of 2 × 16 × 16 samples whose stored bytes inflate to 64 MiB."""
    import h5py

    out = io.BytesIO(ims_bytes(STACK[:1, :1, :2, :16, :16], chunks=(2, 16, 16), shuffle=False))
    with h5py.File(out, "r+") as f:
        data = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        data.id.write_direct_chunk((0, 0, 0), zlib.compress(bytes(64 << 20), 9))
    with pytest.raises(UndecodableImage, match="inflates past"):
        select(out.getvalue(), z=1)


def test_structure_past_the_metadata_budget_is_a_400_even_by_path(tmp_path: Path) -> None:
    """Every byte the HDF5 reader reads is charged, by path too; the stream it is given has no file
    descriptor (pyfive would otherwise reopen the file by name and read in threads, uncharged)."""
    with pytest.raises(OSError):
        ims._ChargedStream(b"", 10).fileno()
    path = tmp_path / "cells.ims"
    path.write_bytes(ims_bytes(STACK))
    with pytest.raises(UndecodableImage, match="UNET_MAX_METADATA_BYTES"):
        ims.open_planes(path, MAX, None, metadata_bytes=1000)
    layout, read, close = ims.open_planes(path, MAX, None, metadata_bytes=100_000)
    try:
        assert np.array_equal(read({"C": 2, "Z": 4, "T": 1}), STACK[1, 2, 4])
    finally:
        close()


def test_broken_files_are_400s() -> None:
    data = ims_bytes(STACK)
    with pytest.raises(UndecodableImage, match="cut short: its HDF5 superblock says it ends at byte"):
        ims.open_planes(data[:-1], MAX)
    for broken in (data[: len(data) // 2], data[:600], structure.HDF5_SIGNATURE + bytes(100)):
        with pytest.raises((UndecodableImage, UnsupportedImageType)):
            layout, read, close = ims.open_planes(broken, MAX)
            try:
                read({"C": 2, "Z": 4, "T": 1})
            finally:
                close()


def test_an_external_link_is_not_followed(tmp_path: Path) -> None:
    import h5py

    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["Data"] = np.full((1, 8, 8), 7, np.uint16)
    out = io.BytesIO(ims_bytes(STACK[:1, :1, :1, :8, :8]))
    with h5py.File(out, "r+") as f:
        del f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"] = h5py.ExternalLink(str(outside), "/Data")
    with pytest.raises((UndecodableImage, UnsupportedImageType)):
        select(out.getvalue())


def test_only_hdf5_files_are_taken_for_imaris() -> None:
    from tests.api import _images as im

    assert structure.is_hdf5(ims_bytes(STACK[:1, :1, :1]))
    assert not structure.is_hdf5(im.png(im.blobs(64, 64, seed=1)))


def test_by_path_a_plane_of_any_size_is_read_window_by_window_inflating_only_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stitched image past the 4096² a by-path read decodes whole (Imaris Stitcher writes such
    files): a slide job reads it a window at a time, each window inflating the chunks it touches."""
    side = 4160
    rows, columns = np.mgrid[:side, :side]
    image = ((rows * 31 + columns * 17) % 251).astype(np.uint8)
    path = tmp_path / "stitched.ims"
    path.write_bytes(ims_bytes(image[None, None, None], chunks=(1, 512, 512), shuffle=False, levels=1))
    inflated: list[int] = []
    real = ims._undo_filter

    def counted(filter_id: int, *args: object) -> bytes:
        inflated.append(filter_id)
        return real(filter_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ims, "_undo_filter", counted)
    limits = structure.Limits()
    with slide_files.open_slide(path, Selection(), max_pixels=side * side, limits=limits) as source:
        assert source.shape[:2] == (side, side)
        window = np.asarray(source.read(4000, 4150, 3990, 4160))
        assert np.array_equal(window, image[4000:4150, 3990:4160])
        assert len(inflated) == 2 * 2  # rows 3584-4096 and 4096-4160, columns likewise
        assert np.array_equal(np.asarray(source.read(10, 20, 30, 40)), image[10:20, 30:40])
        assert len(inflated) == 5
    with pytest.raises(slide_files.SlideTooLarge):
        slide_files.open_slide(path, Selection(), max_pixels=side * side - 1, limits=limits)


def test_soft_links_that_loop_or_lead_elsewhere_are_400s() -> None:
    """A group that links to itself (pyfive follows soft links until Python's recursion limit) and a
    channel that links to a group instead of its data: each a 400, at once."""
    import h5py

    looped = io.BytesIO(ims_bytes(STACK[:1, :1, :1]))
    with h5py.File(looped, "r+") as f:
        del f["DataSet/ResolutionLevel 0/TimePoint 0"]
        f["DataSet/ResolutionLevel 0/TimePoint 0"] = h5py.SoftLink("/DataSet/ResolutionLevel 0/TimePoint 0")
    elsewhere = io.BytesIO(ims_bytes(STACK[:1, :1, :1]))
    with h5py.File(elsewhere, "r+") as f:
        del f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"] = h5py.SoftLink("/DataSet")
    for data in (looped.getvalue(), elsewhere.getvalue()):
        with pytest.raises(UndecodableImage):
            microscopy.probe(data, MAX, 10_000)
