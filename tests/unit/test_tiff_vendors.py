"""Microscope vendors' TIFFs read with their calibration and channel names
(``service.tiff_vendors``), written as each vendor's software writes them (``tests/vendor_tiffs.py``);
implausible pixel sizes dropped; multi-file OME-TIFF sets that say so."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service import microscopy, slide_files, structure
from service.microscopy import Selection
from tests.ome_sets import write_channel_set
from tests.vendor_tiffs import (
    fei_bytes,
    harmony_bytes,
    lsm_bytes,
    metaseries_bytes,
    micromanager_bytes,
    qptiff_bytes,
    svs_bytes,
    zeiss_sem_bytes,
)

MAX = 10**8
RNG = np.random.default_rng(5)
NAMES = ["Ch1-T1", "ChS1-T2", "Ch2-T3"]


def probe(data: bytes, series: int | None = None) -> microscopy.Layout:
    return microscopy.probe(data, MAX, 10_000, series)


def select(data: bytes, **choice) -> microscopy.Plane:
    return microscopy.select(data, Selection(**choice), MAX, 10_000)


@pytest.mark.parametrize("axes, shape", [("ZCYX", (4, 3, 40, 56)), ("TZCYX", (2, 3, 3, 40, 56)),
                                         ("TCYX", (3, 3, 40, 56))])
def test_an_lsm_offers_its_channels_by_zen_names_with_voxel_sizes_not_as_colour(
    axes: str, shape: tuple
) -> None:
    stack = RNG.integers(0, 255, shape, dtype=np.uint8)
    data = lsm_bytes(stack, axes, voxel_um=(0.21, 0.21, 0.8), names=NAMES)
    layout = probe(data)
    assert layout.format == "Zeiss LSM" and not layout.rgb
    assert [c.name for c in layout.channels] == NAMES
    assert layout.series_count == 1  # the thumbnails are no image of their own
    assert layout.pixel_size == microscopy.PixelSize(0.21, 0.21, "lsm", 0.8 if "Z" in axes else None)
    sizes = dict(zip(axes, shape, strict=True))
    assert layout.planes == {a: sizes[a] for a in "ZT" if a in sizes}
    grid = stack.reshape(sizes.get("T", 1), sizes.get("Z", 1), 3, 40, 56)
    t, z = sizes.get("T", 1) - 1, sizes.get("Z", 1) - 1
    choice = {k: v for k, v in (("z", z), ("t", t)) if k.upper() in axes}
    for c, name in enumerate(NAMES):
        plane = select(data, channel=name, **choice)
        assert np.array_equal(plane.image, grid[t, z, c])
        # where Fiji shows ROIs drawn on it: the track is a channel (its position was None, as for colour)
        assert plane.position() == (c, choice.get("z"), choice.get("t"))


def test_a_lambda_stacks_channels_named_by_wavelength_are_chosen_by_those_names() -> None:
    """ZEN names a λ-stack's channels by wavelength (real LSM 880 files: 415 … 691 nm); digits were
    always read as an index, so channel=415 was "no channel '415'; its channels are 0 (415) ..."."""
    names = [str(415 + 9 * k) for k in range(12)]
    stack = RNG.integers(0, 255, (1, 12, 40, 56), dtype=np.uint8)
    data = lsm_bytes(stack, "ZCYX", names=names)
    assert np.array_equal(select(data, channel="424").image, stack[0, 1])  # a name: no channel 424
    assert np.array_equal(select(data, channel="11").image, stack[0, 11])  # an index first
    measured = select(data, channel="0", measure=("469", "5")).measured
    assert [m.channel.name for m in measured] == ["469", "460"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_single_track_lsm_saved_as_a_palette_image_is_its_intensities(dtype: type) -> None:
    """ZEN saves one track as a palette image, its display colour a red ramp (a real 16-bit LSM 7xx
    file was refused: 400 for the upload, 415 by path)."""
    stack = RNG.integers(0, 4000 if dtype == np.uint16 else 255, (5, 1, 32, 48)).astype(dtype)
    data = lsm_bytes(stack, "ZCYX", names=["ChS1"])
    assert tifffile.TiffFile(io.BytesIO(data)).pages.first.photometric == 3  # PALETTE, as ZEN writes it
    layout = probe(data)
    assert (layout.format, layout.planes) == ("Zeiss LSM", {"Z": 5})
    assert [c.name for c in layout.channels] == ["ChS1"]
    assert any("ZEN's channel colour" in w for w in layout.warnings)
    assert np.array_equal(select(data, z=3).image, stack[3, 0])
    single = lsm_bytes(stack[:1], "ZCYX", names=["ChS1"])  # one plane: the single-page path
    assert probe(single).format == "Zeiss LSM" and np.array_equal(select(single).image, stack[0, 0])


def test_an_lsm_read_by_path_reads_the_chosen_channel(tmp_path: Path) -> None:
    stack = RNG.integers(0, 255, (2, 3, 64, 80), dtype=np.uint8)
    path = tmp_path / "cells.lsm"
    path.write_bytes(lsm_bytes(stack, "ZCYX", names=NAMES))
    for c, name in enumerate(NAMES):
        with slide_files.open_slide(path, Selection(channel=name, z=1), max_pixels=MAX,
                                    limits=structure.Limits()) as source:
            assert np.array_equal(np.asarray(source.read(5, 50, 7, 70)), stack[1, c, 5:50, 7:70])
            assert source.plane.pixel_size.source == "lsm"


def test_a_metaxpress_site_has_its_calibration_and_illumination_name() -> None:
    plane = RNG.integers(0, 4000, (40, 50), dtype=np.uint16)
    layout = probe(metaseries_bytes(plane, (1.3668, 1.3672), "DAPI"))
    assert layout.format == "MetaMorph TIFF"
    assert layout.pixel_size == microscopy.PixelSize(1.3668, 1.3672, "metaseries")
    assert [c.name for c in layout.channels] == ["DAPI"]
    assert probe(metaseries_bytes(plane, 0.5, units="nm")).pixel_size.x_um == pytest.approx(0.0005)
    assert probe(metaseries_bytes(plane, 0.5, units="pixel")).pixel_size is None


def test_an_svs_baseline_has_its_mpp_and_its_thumbnail_none() -> None:
    data = svs_bytes(RNG.integers(0, 255, (128, 192, 3), dtype=np.uint8), 0.499)
    assert probe(data).format == "Aperio SVS"
    assert probe(data).pixel_size == microscopy.PixelSize(0.499, 0.499, "svs")
    assert probe(data, series=1).pixel_size is None  # a reduced copy: not 0.499 µm per pixel


def test_a_qptiff_offers_its_channels_by_name_and_not_its_thumbnail() -> None:
    """An Akoya multiplexed scan (a real Vectra Polaris file and an inForm component image read the
    same way): channels by the names each page's XML gives (DAPI among them), the pixel size from
    the resolution tags, and its RGB thumbnail no second image to choose."""
    planes = RNG.integers(0, 255, (3, 48, 64), dtype=np.uint8)
    data = qptiff_bytes(planes, ["DAPI", "FITC", "Cy3"], 0.4965)
    layout = probe(data)
    assert (layout.format, [c.name for c in layout.channels]) == ("Akoya QPTIFF", ["DAPI", "FITC", "Cy3"])
    assert layout.series_count == 1 and not layout.warnings
    assert layout.pixel_size is not None and abs(layout.pixel_size.x_um - 0.4965) < 1e-6
    assert np.array_equal(select(data, channel="dapi").image, planes[0])
    assert np.array_equal(select(data, channel="Cy3").image, planes[2])
    twice = qptiff_bytes(planes, ["DAPI", "DAPI", "Cy3"], 0.4965)  # a name must choose one channel
    assert [c.name for c in probe(twice).channels] == [None, None, None]


def test_a_metaxpress_thumbnail_says_it_is_one() -> None:
    """MetaXpress writes an 80x64 preview (image-name HTSThumbHTS) beside each image of a screen."""
    thumbnail = RNG.integers(0, 4000, (64, 80), dtype=np.uint16)
    layout = probe(metaseries_bytes(thumbnail, (8.75, 10.93), "FITC_05", image_name="HTSThumbHTS"))
    assert any("preview thumbnail" in w for w in layout.warnings), layout.warnings
    assert not probe(metaseries_bytes(thumbnail, 0.65, "FITC_05")).warnings  # the image itself


def test_a_harmony_tiff_has_the_pixel_size_at_the_sample_not_the_cameras_pitch(tmp_path: Path) -> None:
    """An Operetta CLS / Opera Phenix plane (modelled on a real Harmony 4.9 export, whose
    Index.idx.xml gives ImageResolutionX 1.19595e-6 m): its resolution tags say 6.45 µm, the
    camera's pitch, which made lengths 5.4x and areas 29x too large; the pixel size is the camera's
    pitch × binning / (objective × instrument magnification), the channel Harmony's name."""
    plane = RNG.integers(0, 60000, (40, 56), dtype=np.uint16)
    data = harmony_bytes(plane, [[("Fluorescein (FITC)", 2)]])
    for layout in (probe(data), _by_path(tmp_path, data)):
        assert (layout.format, [c.name for c in layout.channels]) == ("Harmony TIFF", ["Fluorescein (FITC)"])
        at_sample = 6.5 * 2 / (10 * 1.087)  # µm: the real file's Index.idx.xml says 1.19595
        assert layout.pixel_size == microscopy.PixelSize(at_sample, at_sample, "harmony")
        assert not layout.warnings
    assert np.array_equal(select(data, channel="Fluorescein (FITC)").image, plane)
    # the plane's Image names its exposure and channel: the second channel of the second exposure
    exposures = [[("HOECHST 33342", 1)], [("Alexa 488", 2), ("Alexa 647", 4)]]
    second = harmony_bytes(plane, exposures, image=(2, 2))
    layout = probe(second)
    assert [c.name for c in layout.channels] == ["Alexa 647"]
    assert layout.pixel_size is not None and layout.pixel_size.x_um == pytest.approx(6.5 * 4 / 10.87)


def test_a_harmony_tiff_without_a_camera_it_names_says_so_and_does_not_take_the_pitch() -> None:
    plane = RNG.integers(0, 60000, (40, 56), dtype=np.uint16)
    layout = probe(harmony_bytes(plane, [[("DAPI", 2)]], camera="Camera9"))
    assert layout.pixel_size is None and [c.name for c in layout.channels] == ["DAPI"]
    assert any("camera's pixel pitch" in w and "pixel_size=" in w for w in layout.warnings), layout.warnings


@pytest.mark.parametrize("encoding", ["shift_jis", "no-such-encoding"])
def test_a_tiff_whose_tag_65500_is_xml_expat_cannot_read_is_read_as_a_tiff(encoding: str) -> None:
    """Any TIFF may carry private tag 65500: one whose XML declares an encoding expat cannot read
    raised ValueError / LookupError past the Harmony reader and was a 400 (it read before)."""
    xml = f'<?xml version="1.0" encoding="{encoding}"?><a/>'.encode()
    plane = RNG.integers(0, 255, (16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, metadata=None, extratags=[(65500, "B", len(xml), xml, True)])
    assert np.array_equal(select(buffer.getvalue()).image, plane)


def _by_path(folder: Path, data: bytes) -> microscopy.Layout:
    path = folder / "r03c03f01p01-ch1sk1fk1fl1.tiff"
    path.write_bytes(data)
    with slide_files.open_slide(path, Selection(), max_pixels=MAX, limits=structure.Limits()) as source:
        return source.plane.layout


def test_a_zeiss_sem_image_has_its_image_pixel_size() -> None:
    """A real SmartSEM file (55.82 nm, its width of 57.16 µm over 1024 px) had no pixel size."""
    layout = probe(zeiss_sem_bytes(RNG.integers(0, 255, (40, 50), dtype=np.uint8), 55.82))
    assert (layout.format, layout.pixel_size) == ("Zeiss SEM TIFF", microscopy.PixelSize(0.05582, 0.05582,
                                                                                        "zeiss-sem"))


def test_an_fei_image_has_its_pixel_width_not_a_print_resolution() -> None:
    layout = probe(fei_bytes(RNG.integers(0, 255, (40, 50), dtype=np.uint8), 7.70833e-09))
    assert layout.format == "FEI TIFF"
    assert layout.pixel_size == microscopy.PixelSize(0.00770833, 0.00770833, "fei")
    assert not any("print resolution" in w for w in layout.warnings)


def _ome(pixel_um: float, z_um: float | None = None) -> bytes:
    metadata = {"axes": "ZYX" if z_um else "YX", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um}
    if z_um:
        metadata["PhysicalSizeZ"] = z_um
    shape = (2, 16, 16) if z_um else (16, 16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros(shape, np.uint8), metadata=metadata, ome=True)
    return buffer.getvalue()


def test_a_pixel_size_no_microscope_has_is_dropped_with_a_notice() -> None:
    layout = probe(_ome(1.2691301e-12))  # Bio-Formats' Iron-Plate sample: metres in a µm field
    assert layout.pixel_size is None
    assert any("outside what microscopes give" in w and "pixel_size=" in w for w in layout.warnings)
    assert probe(_ome(500.0)).pixel_size.x_um == 500.0  # an MRI's 0.5 mm: kept
    assert probe(_ome(0.0077)).pixel_size.x_um == 0.0077  # an SEM's 7.7 nm: kept
    odd_z = probe(_ome(0.65, z_um=1e9))
    assert odd_z.pixel_size == microscopy.PixelSize(0.65, 0.65, "ome")
    assert any("z-step" in w for w in odd_z.warnings)


def test_one_file_of_a_multi_file_set_names_the_channels_it_lacks(tmp_path: Path) -> None:
    first, second = write_channel_set(tmp_path, [np.full((16, 16), 10, np.uint8)] * 2, ["DAPI", "GFP"])
    layout = probe(first.read_bytes())
    assert any("1 (GFP)" in w and "other files of its set" in w for w in layout.warnings)
    assert not any("0 (DAPI)" in w for w in layout.warnings)
    assert (select(first.read_bytes(), channel="DAPI").image == 10).all()


def test_a_binary_only_file_of_a_set_says_where_its_metadata_is() -> None:
    xml = ('<?xml version="1.0" encoding="UTF-8"?>'
           '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:0">'
           '<BinaryOnly MetadataFile="set_MMStack_Pos0.ome.tif" UUID="urn:uuid:1"/></OME>')
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 16), np.uint8), description=xml, metadata=None)
    layout = probe(buffer.getvalue())
    assert layout.pixel_size is None
    assert any("'set_MMStack_Pos0.ome.tif'" in w for w in layout.warnings)


def test_an_lsm_stored_or_mapped_reads_as_its_bytes(tmp_path: Path) -> None:
    """A stored upload and a file the Python API maps reach tifffile as a memory map, through which
    numpy's record reader could not read the LSM header (a 400)."""
    import mmap

    stack = RNG.integers(0, 255, (2, 3, 32, 40), dtype=np.uint8)
    path = tmp_path / "stored.lsm"
    path.write_bytes(lsm_bytes(stack, "ZCYX", names=NAMES))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert probe(view).format == "Zeiss LSM"  # type: ignore[arg-type]
        plane = microscopy.select(view, Selection(channel="ChS1-T2", z=1), MAX, 10_000)  # type: ignore[arg-type]
        assert np.array_equal(plane.image, stack[1, 1]) and plane.pixel_size.source == "lsm"


def test_a_micro_manager_file_takes_what_its_summary_gives_where_its_tiff_metadata_does_not() -> None:
    """The files after a Micro-Manager dataset's first carry only a pointer to its OME-XML; each
    still holds the acquisition summary (real MM 1.4 files: 1 µm, z 5 µm, Cy5 / DAPI)."""
    plane = RNG.integers(0, 4000, (48, 64)).astype(np.uint16)
    summary = {"PixelSize_um": 0.65, "z-step_um": 2.0, "ChNames": ["DAPI"]}
    pointer = ('<?xml version="1.0" encoding="UTF-8"?>'
               '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:1">'
               '<BinaryOnly MetadataFile="set_MMStack_Pos0.ome.tif" UUID="urn:uuid:0"/></OME>')
    second = probe(micromanager_bytes(plane, summary, pointer))
    assert (second.format, [c.name for c in second.channels]) == ("OME-TIFF", ["DAPI"])
    assert second.pixel_size == microscopy.PixelSize(0.65, 0.65, "micro-manager")  # no z-slices: no z-step
    assert any("'set_MMStack_Pos0.ome.tif'" in w for w in second.warnings)
    plain = probe(micromanager_bytes(plane, summary))
    assert (plain.format, plain.pixel_size.source) == ("Micro-Manager TIFF", "micro-manager")
    uncalibrated = probe(micromanager_bytes(plane, {"PixelSize_um": 0, "ChNames": []}))
    assert uncalibrated.pixel_size is None
    assert np.array_equal(select(micromanager_bytes(plane, summary)).image, plane)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_palette_tiff_of_greys_is_read_as_its_grey_values_with_its_calibration(
    tmp_path: Path, bits: int
) -> None:
    """Cellomics ArrayScan (and Zeiss SmartSEM) save grey images as palette TIFFs with an identity
    grey table (real exports among CellProfiler's examples): read through the table they were RGB
    pictures with red/green/blue channels and no calibration read, and refused by path."""
    dtype = np.uint8 if bits == 8 else np.uint16
    plane = RNG.integers(0, 2**bits, (40, 56), dtype=dtype)
    ramp = np.arange(2**bits, dtype=np.uint16) * (257 if bits == 8 else 1)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, photometric="palette", colormap=np.stack([ramp] * 3), metadata=None,
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="centimeter")
    data = buffer.getvalue()
    layout = probe(data)
    assert (layout.axes, len(layout.channels), layout.rgb) == ("YX", 1, False)
    assert layout.pixel_size is not None and abs(layout.pixel_size.x_um - 0.5) < 1e-9 and not layout.warnings
    assert np.array_equal(select(data).image, plane)
    path = tmp_path / "AS_09047_O01f00d2.TIF"
    path.write_bytes(data)
    with slide_files.open_slide(path, Selection(), max_pixels=MAX, limits=structure.Limits()) as source:
        assert np.array_equal(np.asarray(source.read(0, 40, 0, 56)), plane)
    if bits == 8:  # a picture's palette keeps its colours, and a mask's few greys are labels' colours
        greys = np.array([0, 32896] + [65535] * 254, dtype=np.uint16)
        for table in (np.stack([ramp, ramp[::-1], ramp]), np.stack([greys] * 3)):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, plane, photometric="palette", colormap=table, metadata=None)
            assert probe(buffer.getvalue()).rgb
