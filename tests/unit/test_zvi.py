"""Zeiss AxioVision ZVI files (``service.zvi``) as AxioVision writes them (``tests/zvi_files.py``):
channels by their names, ranked from the instrument's numbers; z-slices and time points; µm from
the image's tags; by upload, path and cut frame; the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import frames, microscopy, slide_files, structure, workload
from service.imaging import UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from tests.zvi_files import Plane, zvi_bytes

MAX = 10**8
RNG = np.random.default_rng(9)


def grey(dtype: type = np.uint16) -> np.ndarray:
    top = 4000 if dtype == np.uint16 else 1.0 if dtype == np.float32 else 255
    return (RNG.random((40, 56)) * top).astype(dtype)


def select(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, Selection(**choice), MAX, 10_000)  # type: ignore[arg-type]


def test_channels_numbered_by_the_instrument_are_ranked_and_named() -> None:
    planes = [grey() for _ in range(3)]
    data = zvi_bytes([Plane(planes[0], c=0, name="DAPI"), Plane(planes[1], c=3, name="eGFP"),
                      Plane(planes[2], c=5, name="Alexa 594")])
    layout = microscopy.probe(data, MAX, 10_000)
    assert (layout.format, layout.axes, layout.dtype) == ("ZVI", "CYX", "uint16")
    assert [c.name for c in layout.channels] == ["DAPI", "eGFP", "Alexa 594"]
    assert layout.pixel_size == microscopy.PixelSize(0.2475, 0.2475, "zvi")
    for c, name in enumerate(["DAPI", "eGFP", "Alexa 594"]):
        assert np.array_equal(select(data, channel=name).image, planes[c])


def test_a_time_lapse_z_stack_reads_every_plane_with_its_z_step() -> None:
    stack = {(c, z, t): grey() for c in range(2) for z in range(3) for t in range(2)}
    items = [Plane(p, c=c, z=z, t=t, name=("Hoechst", "GFP")[c]) for (c, z, t), p in stack.items()]
    data = zvi_bytes(items[::-1], z_um=0.5)  # the items' order is not the planes'
    layout = microscopy.probe(data, MAX, 10_000)
    assert (layout.axes, layout.planes) == ("TZCYX", {"Z": 3, "T": 2})
    assert layout.pixel_size == microscopy.PixelSize(0.2475, 0.2475, "zvi", 0.5)
    for (c, z, t), plane in stack.items():
        assert np.array_equal(select(data, channel=str(c), z=z, t=t).image, plane)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_other_grey_pixel_types_read_as_stored(dtype: type) -> None:
    plane = grey(dtype)
    image = select(zvi_bytes([Plane(plane)])).image
    assert image.dtype == dtype and np.array_equal(image, plane)


def test_a_colour_image_stored_bgr_reads_as_rgb() -> None:
    rgb = RNG.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    data = zvi_bytes([Plane(rgb)])
    layout = microscopy.probe(data, MAX, 10_000)
    assert layout.rgb and [c.name for c in layout.channels] == ["red", "green", "blue"]
    for k, name in enumerate(["red", "green", "blue"]):  # stored blue first: read back as red
        assert np.array_equal(select(data, channel=name).image, rgb[:, :, k])


def test_a_scale_in_another_unit_is_not_taken_for_micrometres() -> None:
    layout = microscopy.probe(zvi_bytes([Plane(grey())], unit=72), MAX, 10_000)
    assert layout.pixel_size is None and any("pixel size" in w for w in layout.warnings)


def test_a_plane_the_file_lacks_is_a_choice_error_not_zeros() -> None:
    data = zvi_bytes([Plane(grey(), c=0, z=0), Plane(grey(), c=1, z=0), Plane(grey(), c=0, z=1)])
    with pytest.raises(SelectionError, match="no plane at channel 1, z 1"):
        select(data, channel="1", z=1)


def test_mosaics_duplicates_unknown_pixels_and_short_planes_are_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedImageType, match="mosaics"):
        microscopy.probe(zvi_bytes([Plane(grey(), extra_tags={2822: 1}), Plane(grey(), c=1)]), MAX, 10_000)
    with pytest.raises(UndecodableImage, match="both"):
        microscopy.probe(zvi_bytes([Plane(grey()), Plane(grey())]), MAX, 10_000)
    with pytest.raises(UnsupportedImageType, match="pixel format 9"):
        microscopy.probe(zvi_bytes([Plane(grey())], pixel_format=9), MAX, 10_000)
    with pytest.raises(UndecodableImage, match="need"):  # the header's 324 bytes and more missing
        select(zvi_bytes([Plane(grey())], cut_bytes=2 * 56 * 20))
    wider = np.hstack([grey(), grey()])  # a second plane of another size: its stream holds enough bytes
    mixed = zvi_bytes([Plane(grey(), c=0), Plane(wider, c=1)])
    assert microscopy.probe(mixed, MAX, 10_000).width == 56
    with pytest.raises(UndecodableImage, match="differs in size"):
        select(mixed, channel="1")


def test_a_stream_of_tags_past_the_metadata_limit_is_refused() -> None:
    data = zvi_bytes([Plane(grey(), extra_tags={3000 + k: "x" * 200 for k in range(50)})])
    with pytest.raises(structure.TooComplex):
        microscopy.probe(data, MAX, structure.Limits(max_metadata_bytes=4096))


def test_by_path_a_cut_frame_and_admission_read_as_the_upload(tmp_path: Path) -> None:
    stack = {(c, z): grey() for c in range(2) for z in range(3)}
    data = zvi_bytes([Plane(p, c=c, z=z, name=("DAPI", "GFP")[c]) for (c, z), p in stack.items()], z_um=1.0)
    path = tmp_path / "cells.zvi"
    path.write_bytes(data)
    with slide_files.open_slide(path, Selection(channel="GFP", z=2), max_pixels=MAX,
                                limits=structure.Limits()) as source:
        assert np.array_equal(np.asarray(source.read(3, 30, 4, 50)), stack[1, 2][3:30, 4:50])
    cut = frames.cut_frame(path, "z", 1, Selection(channel="DAPI"), MAX)
    assert cut is not None and np.array_equal(select(cut, channel="DAPI", z=1).image, stack[0, 1])
    assert workload.plane_pixels(data, MAX, 10_000) == 40 * 56
