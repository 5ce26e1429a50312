"""A multi-position Micro-Manager acquisition read by path (``service.mm_positions``): each stage
position an image of its own (``series=``), a file read at its own position by default, the same
plane as its upload; files written as Micro-Manager writes them (``tests.vendor_tiffs.mmstack_bytes``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import client, frames, microscopy, slide_files, structure
from service.imaging import UndecodableImage
from service.microscopy import Selection, SelectionError
from tests.vendor_tiffs import mmstack_bytes

SIZE = (16, 24)
LABELS = ["A1-Site_0", "A1-Site_1", "B2-Site_0"]
SUMMARY = {"Prefix": "cells", "MicroManagerVersion": "2.0.0", "Channels": 2, "Slices": 2, "Frames": 1,
           "Positions": 3, "ChNames": ["DAPI", "GFP"], "PixelSize_um": 0.5, "z-step_um": 2.0,
           "StagePositions": [{"Label": label} for label in LABELS]}


def _value(position: int, channel: int, z: int) -> int:
    return 100 * position + 10 * channel + z + 1


def _write(folder: Path, positions: range = range(3)) -> list[Path]:
    """One file per stage position, as Micro-Manager saves a multi-position acquisition."""
    paths = []
    for p in positions:
        planes = {(c, z, 0): np.full(SIZE, _value(p, c, z), np.uint16) for c in range(2) for z in range(2)}
        path = folder / f"cells_MMStack_Pos{p}.ome.tif"
        path.write_bytes(mmstack_bytes(planes, p, SUMMARY))
        paths.append(path)
    return paths


def _by_path(path: Path, selection: Selection) -> tuple[np.ndarray, microscopy.Layout]:
    with slide_files.open_slide(path, selection, max_pixels=10**8, limits=structure.Limits()) as source:
        return np.asarray(source.read(0, SIZE[0], 0, SIZE[1])), source.plane.layout


def test_a_position_file_read_by_path_is_read_at_its_own_position_named_and_calibrated(
    tmp_path: Path,
) -> None:
    """Before, tifffile gathered the files beside it into an axis of positions (R), and every file
    of the acquisition was refused by path ("an axis 'R' of size 3")."""
    paths = _write(tmp_path)
    for p, path in enumerate(paths):
        plane, layout = _by_path(path, Selection(channel="GFP", z=1))
        assert (plane == _value(p, 1, 1)).all()
        assert (layout.series, layout.series_count, layout.series_names) == (p, 3, tuple(LABELS))
        assert layout.positions_in_files
        assert any(f"series={p} ({LABELS[p]})" in w and "3 stage positions" in w for w in layout.warnings)
        assert (layout.pixel_size.x_um, layout.pixel_size.z_um) == (0.5, 2.0)
        assert [c.name for c in layout.channels] == ["DAPI", "GFP"]


def test_series_chooses_another_position_and_reads_its_file_as_its_upload_does(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    for chosen, path in enumerate(paths):
        upload = microscopy.select(path.read_bytes(), Selection(channel="DAPI", z=0), 10**8, 10_000)
        assert (upload.image == _value(chosen, 0, 0)).all()  # an upload is its own position
        assert any(f"stage position {chosen} ({LABELS[chosen]}) of a Micro-Manager acquisition of 3" in w
                   for w in upload.layout.warnings)  # and says the others are elsewhere
        plane, layout = _by_path(paths[0], Selection(channel="DAPI", z=0, series=chosen))
        assert np.array_equal(plane, upload.image)
        assert layout.series == chosen and not any("stage positions" in w for w in layout.warnings)
    with pytest.raises(SelectionError) as refused:
        _by_path(paths[0], Selection(channel="DAPI", z=0, series=3))
    assert [c["name"] for c in refused.value.choices["series"]] == LABELS


def test_a_position_whose_file_is_absent_is_a_missing_plane_and_the_others_read(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    paths[2].unlink()
    plane, _ = _by_path(paths[1], Selection(channel="GFP", z=0))
    assert (plane == _value(1, 1, 0)).all()
    with pytest.raises(UndecodableImage, match="missing, not read as zeros"):
        _by_path(paths[1], Selection(channel="GFP", z=0, series=2))


def test_the_client_sends_each_position_file_as_one_image_and_cuts_its_own_frames(tmp_path: Path) -> None:
    """``--series all`` on the acquisition's folder: one job per file (each file its position), not
    the positions of every file again; ``--z all`` cuts the file's own position."""
    paths = _write(tmp_path)
    assert [client.count_planes(path, "series") for path in paths] == [1, 1, 1]
    assert client.count_planes(paths[2], "z") == 2
    cut = frames.cut_frame(paths[2], "z", 1, Selection(channel="GFP"), 10**8)
    assert cut is not None
    plane = microscopy.select(cut, Selection(channel="GFP", z=1), 10**8, 10_000)
    assert (plane.image == _value(2, 1, 1)).all()



# --- NDTiff (Micro-Manager 2, pycro-manager): its pages' own coordinates, and its index by path ---

NDTIFF_SUMMARY = {"PixelSize_um": 0.65, "PixelType": "GRAY16"}


def _ndtiff_planes(positions: tuple[str, ...] = ()) -> list[tuple[dict, np.ndarray]]:
    """Channels DAPI and FITC × 3 z × 2 time points (× ``positions``), in acquisition order (time,
    then z, then channel, as pycro-manager records them); each plane's value encodes where it lies."""
    planes = []
    for p, position in enumerate(positions or ("",)):
        for t in range(2):
            for z in range(3):
                for c, channel in enumerate(("DAPI", "FITC")):
                    axes = {"channel": channel, "z": z, "time": t}
                    if position:
                        axes["position"] = position
                    planes.append((axes, np.full(SIZE, 1000 * p + 100 * t + 10 * c + z + 1, np.uint16)))
    return planes


def test_an_ndtiff_upload_is_laid_out_by_its_pages_coordinates_not_as_z_planes() -> None:
    """Before, the 12 pages were offered as 12 z-planes ("the file does not say..."): project=max
    mixed channels and time points."""
    from tests.vendor_tiffs import ndtiff_bytes

    data = ndtiff_bytes(_ndtiff_planes(), NDTIFF_SUMMARY)
    layout = microscopy.probe(data, 10**8, 10_000)
    assert (layout.planes, [c.name for c in layout.channels]) == ({"T": 2, "Z": 3}, ["DAPI", "FITC"])
    assert not any("does not say" in w for w in layout.warnings)
    plane = microscopy.select(data, Selection(channel="FITC", z=2, t=1), 10**8, 10_000)
    assert (plane.image == 100 + 10 + 2 + 1).all()
    projected = microscopy.select(data, Selection(channel="DAPI", t=0, project="max"), 10**8, 10_000)
    assert (projected.image == 3).all()  # DAPI's brightest slice at t=0, nothing of FITC or t=1


def test_an_ndtiff_uploads_positions_are_its_images_named_as_recorded() -> None:
    from tests.vendor_tiffs import ndtiff_bytes

    data = ndtiff_bytes(_ndtiff_planes(("Pos2", "Pos0")), NDTIFF_SUMMARY)
    layout = microscopy.probe(data, 10**8, 10_000)
    assert (layout.series_count, layout.series_names) == (2, ("Pos2", "Pos0"))
    plane = microscopy.select(data, Selection(channel="DAPI", z=0, t=0, series=1), 10**8, 10_000)
    assert (plane.image == 1000 + 1).all()


def test_an_ndtiff_upload_of_tiles_or_too_much_metadata_is_refused_with_the_reason() -> None:
    from service.imaging import UnsupportedImageType
    from tests.vendor_tiffs import ndtiff_bytes

    tiles = [({"channel": 0, "row": r, "column": c}, np.zeros(SIZE, np.uint16))
             for r in range(2) for c in range(2)]
    with pytest.raises(UnsupportedImageType, match="row and column"):
        microscopy.probe(ndtiff_bytes(tiles, NDTIFF_SUMMARY), 10**8, 10_000)
    unplaced = [({}, np.full(SIZE, k, np.uint16)) for k in range(3)]  # one page would stand for three
    with pytest.raises(UnsupportedImageType, match="3 pages lie where another does"):
        microscopy.probe(ndtiff_bytes(unplaced, NDTIFF_SUMMARY), 10**8, 10_000)
    data = ndtiff_bytes(_ndtiff_planes(), NDTIFF_SUMMARY)
    with pytest.raises(structure.TooComplex, match="UNET_MAX_METADATA_BYTES"):
        microscopy.probe(data, 10**8, structure.Limits(max_metadata_bytes=400))


def test_an_ndtiff_dataset_read_by_path_names_its_channels_and_positions_from_its_index(
    tmp_path: Path,
) -> None:
    from tests.vendor_tiffs import write_ndtiff

    path = write_ndtiff(tmp_path, _ndtiff_planes(("Pos2", "Pos0")), NDTIFF_SUMMARY)
    plane, layout = _by_path(path, Selection(channel="FITC", z=1, t=1, series=1))
    assert (plane == 1000 + 100 + 10 + 1 + 1).all()
    assert [c.name for c in layout.channels] == ["DAPI", "FITC"]
    assert layout.series_names == ("Pos2", "Pos0")
    chosen = Selection(channel="FITC", z=1, t=1, series=1)
    upload = microscopy.select(path.read_bytes(), chosen, 10**8, 10_000)
    assert np.array_equal(plane, upload.image)  # the upload, laid out by its pages, reads it alike


def test_a_stack_describing_billions_of_planes_is_refused_before_tifffile_allocates_them() -> None:
    """tifffile sized the series from the summary and index map and allocated a list of that many
    pages: one flipped byte (found by fuzzing) asked for billions, a MemoryError or seconds of work.
    An acquisition stopped early, whose summary keeps the frames it planned, still reads."""
    planes = {(c, 0, 0): np.full(SIZE, c + 1, np.uint16) for c in range(2)}
    stopped = dict(SUMMARY, Slices=1, Positions=1, Frames=500)
    data = mmstack_bytes(planes, 0, stopped)
    assert (microscopy.select(data, Selection(channel="GFP", z=0), 10**8, 10_000).image == 2).all()
    hostile = mmstack_bytes(planes, 0, dict(stopped, Frames=2**31))
    with pytest.raises(structure.TooComplex, match="describes 4,294,967,296 planes"):
        microscopy.probe(hostile, 10**8, 10_000)


@pytest.mark.parametrize("by_path", [False, True])
def test_an_ndtiff_whose_coordinates_span_billions_of_planes_is_refused_before_they_are_laid_out(
    tmp_path: Path, by_path: bool
) -> None:
    """The pages are laid out on a grid from each axis's lowest coordinate to its highest (tifffile
    by the index, ``ndtiff_pages`` by the pages'): one entry at z = 10^8 asked for a list of 10^8
    pages (23 s and 5 GB, found by a hostile-input audit). Read by path and uploaded alike."""
    from tests.vendor_tiffs import ndtiff_bytes, write_ndtiff

    planes = [({"channel": "DAPI", "z": z}, np.full(SIZE, 5, np.uint16)) for z in (0, 10**8)]
    with pytest.raises(structure.TooComplex, match="describes 100,000,001 planes"):
        if by_path:
            _by_path(write_ndtiff(tmp_path, planes, NDTIFF_SUMMARY), Selection(z=0))
        else:
            microscopy.probe(ndtiff_bytes(planes, NDTIFF_SUMMARY), 10**8, 10_000)


def test_an_ome_tiff_describing_billions_of_planes_is_refused_before_tifffile_allocates_them() -> None:
    """One OME-XML number (a TiffData's PlaneCount, a Size) sized tifffile's list of pages: a 13 kB
    upload with PlaneCount 3e8 took 4.9 GB on POST /probe (a hostile-input audit)."""
    import io

    import tifffile

    def ome_tiff(size_z: int, plane_count: int) -> bytes:
        xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/'
               '2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
               f'SizeX="{SIZE[1]}" SizeY="{SIZE[0]}" SizeZ="{size_z}" SizeC="1" SizeT="1">'
               '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
               f'<TiffData IFD="0" PlaneCount="{plane_count}"/></Pixels></Image></OME>')
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.full((3, *SIZE), 4, np.uint16), description=xml, metadata=None,
                         photometric="minisblack")
        return buffer.getvalue()

    assert microscopy.probe(ome_tiff(3, 3), 10**8, 10_000).planes == {"Z": 3}
    for hostile in (ome_tiff(3, 300_000_000), ome_tiff(300_000_000, 3)):
        with pytest.raises(structure.TooComplex, match="describes 300,000,000 planes"):
            microscopy.probe(hostile, 10**8, 10_000)


@pytest.mark.parametrize("by_path", [False, True])
def test_a_plane_its_index_places_past_the_end_of_the_file_is_missing_not_zeros(
    tmp_path: Path, by_path: bool
) -> None:
    """A stack cut short keeps its index map: tifffile gives the planes past the end as frames at
    offset 0 and reads them as zeros (a hostile-input audit: jobs succeeded with 0 objects)."""
    import struct

    planes = {(c, 0, 0): np.full(SIZE, c + 1, np.uint16) for c in range(2)}
    data = bytearray(mmstack_bytes(planes, 0, dict(SUMMARY, Slices=1, Positions=1)))
    # the index map at the end: its header and count, then (channel, slice, frame, position, IFD offset)
    start = data.rindex(struct.pack("<I", 3453623)) + 8
    entry = start + 20  # the second plane's
    assert struct.unpack_from("<5I", data, entry)[0] == 1
    struct.pack_into("<I", data, entry + 16, 0x7FFFFFF0)
    if by_path:
        path = tmp_path / "cells_MMStack_Pos0.ome.tif"
        path.write_bytes(bytes(data))
        _by_path(path, Selection(channel="DAPI"))  # the plane in the file still reads
        with pytest.raises(UndecodableImage, match="missing, not read as zeros"):
            _by_path(path, Selection(channel="GFP"))
    else:
        assert (microscopy.select(bytes(data), Selection(channel="DAPI"), 10**8, 10_000).image == 1).all()
        with pytest.raises(UndecodableImage, match="holds no data"):
            microscopy.select(bytes(data), Selection(channel="GFP"), 10**8, 10_000)


def test_an_ome_tiffs_images_of_different_sizes_are_each_measured_against_their_own_page() -> None:
    """A slide's OME-TIFF may hold a small label image first and the scan after it: the scan's
    SizeX × SizeY is over a million times the first page, and only its own page says how many
    planes it describes (tifffile sizes each series by its own first page)."""
    import io

    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, ome=True) as writer:
        writer.write(np.zeros((4, 4), np.uint8), metadata={"axes": "YX"})
        writer.write(np.zeros((4100, 4100), np.uint8), metadata={"axes": "YX"})
    data = buffer.getvalue()
    layout = microscopy.probe(data, 10**8, 10_000, series=1)
    assert (layout.width, layout.height, layout.series_count) == (4100, 4100, 2)


@pytest.mark.parametrize("trick", ["own uuid, another name", "name in another case", "first IFD absent"])
def test_an_ome_images_keyframe_is_found_as_tifffile_finds_it(trick: str) -> None:
    """tifffile divides an Image's size by its keyframe, the first page its TiffData give in this
    file: a 20000² Image whose keyframe is a 1x1 page asked for 6.4 GB. The bound had taken a page
    it could not place for a whole plane (a re-audit of this change found three ways)."""
    import io
    import uuid

    import tifffile

    own = f"urn:uuid:{uuid.uuid4()}"
    data_xml = {
        "own uuid, another name": f'<TiffData IFD="0"><UUID FileName="other.ome.tif">{own}</UUID></TiffData>',
        "name in another case": '<TiffData IFD="0"><UUID FileName="A.OME.TIF">urn:uuid:x</UUID></TiffData>',
        "first IFD absent": '<TiffData IFD="7" PlaneCount="1"/><TiffData IFD="0" PlaneCount="1"/>',
    }[trick]
    xml = (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{own}"><Image ID="Image:0">'
           '<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="20000" SizeY="20000" '
           f'SizeZ="1" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>{data_xml}'
           "</Pixels></Image></OME>")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((1, 1), np.uint8), description=xml, metadata=None)
    with pytest.raises(structure.TooComplex, match="describes 400,000,000 planes"):
        microscopy.probe(buffer.getvalue(), 10**8, 10_000)
