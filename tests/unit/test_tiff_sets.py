"""A TIFF read by path opens no file of its set outside its own folder, and a set's pages are
bounded together (``service.tiff_sets``): multi-file OME-TIFFs written as Bio-Formats writes them,
read through ``slide_files.open_slide`` as slide and stack jobs read them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service import microscopy, slide_files, structure, tiff_sets
from service.imaging import UndecodableImage, UnsupportedImageType
from service.microscopy import Selection
from tests.ome_sets import write_channel_set

SIZE = (48, 64)


def _planes() -> list[np.ndarray]:
    return [np.full(SIZE, 10, np.uint8), np.full(SIZE, 200, np.uint8)]


def _read(path: Path, channel: str, limits: structure.Limits | None = None) -> np.ndarray:
    with slide_files.open_slide(path, Selection(channel=channel), max_pixels=10**8,
                                limits=limits or structure.Limits()) as source:
        return np.asarray(source.read(0, SIZE[0], 0, SIZE[1]))


def test_a_set_in_one_folder_reads_each_channel_from_its_own_file(tmp_path: Path) -> None:
    first, _ = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    assert (_read(first, "DAPI") == 10).all()
    assert (_read(first, "GFP") == 200).all()  # from the other file of the set


@pytest.mark.parametrize("elsewhere", ["../outside/secret.ome.tif", "ABSOLUTE"])
def test_a_set_naming_a_file_outside_its_folder_is_refused_before_it_is_read(
    tmp_path: Path, elsewhere: str
) -> None:
    folder = tmp_path / "root"
    folder.mkdir()
    name = str(tmp_path / "abs" / "secret.ome.tif") if elsewhere == "ABSOLUTE" else elsewhere
    first, secret = write_channel_set(folder, _planes(), ["DAPI", "GFP"], ["a.ome.tif", name])
    assert secret.parent != folder and secret.is_file()  # tifffile alone reads it: 200 for GFP
    with pytest.raises(UnsupportedImageType, match="outside its own folder"):
        _read(first, "DAPI")


def test_a_symlink_in_the_folder_to_a_file_outside_it_is_refused(tmp_path: Path) -> None:
    folder, outside = tmp_path / "root", tmp_path / "outside"
    folder.mkdir()
    first, second = write_channel_set(folder, _planes(), ["DAPI", "GFP"])
    outside.mkdir()
    moved = outside / second.name
    os.replace(second, moved)
    second.symlink_to(moved)
    with pytest.raises(UnsupportedImageType, match="outside its own folder"):
        _read(first, "DAPI")


def test_a_symlink_in_the_folder_to_a_file_in_it_is_followed(tmp_path: Path) -> None:
    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    kept = tmp_path / "kept.tif"
    os.replace(second, kept)
    second.symlink_to(kept)
    assert (_read(first, "GFP") == 200).all()


def test_a_named_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    second.unlink()
    os.mkfifo(second)  # would block tifffile's open
    with pytest.raises(UnsupportedImageType, match="not a regular file"):
        _read(first, "DAPI")


def test_the_pages_of_the_set_are_bounded_together(tmp_path: Path) -> None:
    first, _ = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    assert (_read(first, "DAPI", structure.Limits(max_tiff_pages=2)) == 10).all()
    with pytest.raises(structure.TooManyPages):  # each file alone has one page: the set has two
        _read(first, "DAPI", structure.Limits(max_tiff_pages=1))


def test_a_missing_file_of_the_set_leaves_its_planes_missing_and_the_others_readable(tmp_path: Path) -> None:
    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    second.unlink()
    assert (_read(first, "DAPI") == 10).all()
    with pytest.raises(UndecodableImage, match="missing, not read as zeros"):
        _read(first, "GFP")  # tifffile's store would read the absent page as zeros


def test_a_set_whose_metadata_lies_in_a_companion_file_is_read_as_the_set(tmp_path: Path) -> None:
    """Bio-Formats writes a set's OME-XML once, in ``NAME.companion.ome``, each TIFF holding only a
    pointer to it (real sets: Bio-Formats' samples, viv's 5-slice set); tifffile does not follow it,
    and each file read as a lone plane without names or pixel size."""
    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"], companion="set.companion.ome")
    for path in (first, second):
        with slide_files.open_slide(path, Selection(channel="GFP"), max_pixels=10**8,
                                    limits=structure.Limits()) as source:
            assert (np.asarray(source.read(0, SIZE[0], 0, SIZE[1])) == 200).all()
            layout = source.plane.layout
            assert [c.name for c in layout.channels] == ["DAPI", "GFP"] and layout.pixel_size.x_um == 0.5
    companion = tmp_path / "set.companion.ome"
    with pytest.raises(UnsupportedImageType, match="companion file.*holds no pixels"):
        slide_files.open_slide(companion, Selection(), max_pixels=10**8, limits=structure.Limits())
    with pytest.raises(UnsupportedImageType, match="holds no pixels"):
        microscopy.probe(companion.read_bytes(), 10**8, 10_000)  # uploaded alone
    below = companion.stat().st_size - 1  # still above each TIFF's own tags (its BinaryOnly pointer)
    with pytest.raises(structure.TooComplex, match="companion file"):
        slide_files.open_slide(first, Selection(channel="GFP"), max_pixels=10**8,
                               limits=structure.Limits(max_metadata_bytes=below))


def test_a_companion_file_outside_the_sets_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "root"
    folder.mkdir()
    first, _ = write_channel_set(folder, _planes(), ["DAPI", "GFP"], companion="set.companion.ome")
    (tmp_path / "elsewhere1.ome").write_bytes((folder / "set.companion.ome").read_bytes())
    first.write_bytes(first.read_bytes().replace(b'MetadataFile="set.companion.ome"',
                                                 b'MetadataFile="../elsewhere1.ome"'))  # same length
    with pytest.raises(UnsupportedImageType, match="outside its own folder"):
        slide_files.open_slide(first, Selection(channel="GFP"), max_pixels=10**8, limits=structure.Limits())


def test_a_micro_manager_stacks_sibling_linked_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    """tifffile globs a Micro-Manager stack's other ``<prefix>_MMStack*.tif`` files in its folder."""
    from tests.vendor_tiffs import micromanager_bytes

    folder, outside = tmp_path / "root", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    plane = np.full(SIZE, 7, np.uint16)
    first = folder / "cells_MMStack_Pos0.ome.tif"
    first.write_bytes(micromanager_bytes(plane, {"Prefix": "cells", "PixelSize_um": 0.5}))
    (folder / "cells_MMStack_Pos1.ome.tif").write_bytes(first.read_bytes())  # a sibling in the folder: fine
    with slide_files.open_slide(first, Selection(), max_pixels=10**8, limits=structure.Limits()) as source:
        assert (np.asarray(source.read(0, 4, 0, 4)) == 7).all()
    (outside / "secret.tif").write_bytes(first.read_bytes())
    (folder / "cells_MMStack_Pos2.ome.tif").symlink_to(outside / "secret.tif")
    with pytest.raises(UnsupportedImageType, match="outside its own folder"):
        slide_files.open_slide(first, Selection(), max_pixels=10**8, limits=structure.Limits())


@pytest.mark.parametrize("folder_name, beside", [("star*", "star_evil"), ("q?x", "qZx"), ("[ab]", "a")])
def test_a_micro_manager_stack_in_a_folder_named_like_a_glob_reads_nothing_beside_it(
    tmp_path: Path, folder_name: str, beside: str
) -> None:
    """tifffile's glob for the other positions does not escape the folder's name: in ``star*`` it
    matched a link ``star_evil`` beside it to a folder outside the data root, and a slide job with
    series=1 segmented a file there (found by a hostile-input audit)."""
    from tests.vendor_tiffs import mmstack_bytes

    summary = {"Prefix": "cells", "MicroManagerVersion": "2.0.0", "Channels": 1, "Slices": 1, "Frames": 1,
               "Positions": 2, "ChNames": ["DAPI"], "PixelSize_um": 0.5}
    folder, outside = tmp_path / folder_name, tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    first = folder / "cells_MMStack_Pos0.ome.tif"
    first.write_bytes(mmstack_bytes({(0, 0, 0): np.zeros(SIZE, np.uint16)}, 0, summary))
    (outside / "cells_MMStack_Pos1.ome.tif").write_bytes(
        mmstack_bytes({(0, 0, 0): np.full(SIZE, 9, np.uint16)}, 1, summary))
    (tmp_path / beside).symlink_to(outside)
    with pytest.raises(UnsupportedImageType, match="outside its own folder"):
        slide_files.open_slide(first, Selection(series=1), max_pixels=10**8, limits=structure.Limits())


def test_a_named_file_in_a_link_loop_is_refused(tmp_path: Path) -> None:
    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    second.unlink()
    loop = tmp_path / "loop"
    second.symlink_to(loop)
    loop.symlink_to(second)
    with pytest.raises(UnsupportedImageType, match="cannot be found"):
        _read(first, "DAPI")


def test_a_flim_ome_tiffs_lifetime_bins_are_channels_as_ome_counts_them(tmp_path: Path) -> None:
    """OME keeps FLIM lifetime bins as a Modulo annotation on C (2 channels × 8 bins: SizeC 16), and
    tifffile splits C in two (C 2 × H 8), which was refused ("an axis 'H'"), uploaded and by path;
    Bio-Formats' specification sample reads so too."""
    from tests.ome_sets import flim_bytes

    planes = np.stack([np.full(SIZE, 10 * c + 1, np.uint16) for c in range(16)])
    data = flim_bytes(planes, bins=8)
    layout = microscopy.probe(data, 10**8, 10_000)
    assert (layout.axes, len(layout.channels)) == ("CYX", 16)
    assert (microscopy.select(data, Selection(channel="9"), 10**8, 10_000).image == 91).all()
    path = tmp_path / "flim.ome.tif"
    path.write_bytes(data)
    for channel in (0, 9, 15):
        assert (_read(path, str(channel)) == 10 * channel + 1).all()


@pytest.mark.parametrize("companion", [None, "set.companion.ome"])
def test_the_files_of_an_image_split_over_files_are_found_from_any_of_them(
    tmp_path: Path, companion: str | None
) -> None:
    """What ``unet-segment`` and the Python API read as one image (``tiff_sets.image_files``)."""
    paths = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"], companion=companion)
    for path in paths:
        assert tiff_sets.image_files(path) == tuple(sorted(paths))
    (tmp_path / "empty.ome.tif").write_bytes(b"")  # unreadable: sent as it is, and answered so
    assert tiff_sets.image_files(tmp_path / "empty.ome.tif") == ()
    lone = tmp_path / "lone.ome.tif"
    tifffile.imwrite(lone, _planes()[0], ome=True)
    assert tiff_sets.image_files(lone) == ()


def test_images_each_in_their_own_file_are_no_split(tmp_path: Path) -> None:
    """A Micro-Manager acquisition's positions: one OME-XML lists every position's Image, each in
    its own file (the real MM 1.4 set reads so): each file is an image of its own, not a part."""
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    names = ["a_Pos0.ome.tif", "a_Pos1.ome.tif"]
    images = "".join(
        f'<Image ID="Image:{k}"><Pixels ID="Pixels:{k}" DimensionOrder="XYCZT" Type="uint8" '
        f'SizeX="{SIZE[1]}" SizeY="{SIZE[0]}" SizeC="1" SizeZ="1" SizeT="1">'
        f'<Channel ID="Channel:{k}:0" SamplesPerPixel="1"/>'
        f'<TiffData IFD="0" PlaneCount="1"><UUID FileName="{name}">{u}</UUID></TiffData></Pixels></Image>'
        for k, (name, u) in enumerate(zip(names, uuids, strict=True))
    )
    for k, name in enumerate(names):
        xml = (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{uuids[k]}">'
               f"{images}</OME>")
        tifffile.imwrite(tmp_path / name, _planes()[k], description=xml, metadata=None)
    for name in names:
        assert tiff_sets.image_files(tmp_path / name) == ()


def test_a_set_whose_pages_contradict_its_xml_is_read_file_by_file(tmp_path: Path) -> None:
    """Bio-Formats' set-1-meta-companion sample stores its grey planes as RGB pages: tifffile makes
    no set of it, and read as the set each file would stand for its first alone (4 of 5 z lost)."""
    paths = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"], companion="set.companion.ome")
    for path, plane in zip(paths, _planes(), strict=True):
        description = tifffile.TiffFile(path).pages[0].description
        tifffile.imwrite(path, np.stack([plane] * 3, axis=-1), description=description, metadata=None,
                         photometric="rgb")
    assert [tiff_sets.image_files(path) for path in paths] == [(), ()]


def test_a_missing_member_is_named_without_the_servers_path(tmp_path: Path) -> None:
    """A problem's detail names files as the client knows them: a dangling link among a Micro-Manager
    stack's positions said "No such file or directory: '/srv/data/x/nowhere.tif'" (a hostile-input
    audit), which told a client where the data root lies."""
    from tests.vendor_tiffs import mmstack_bytes

    summary = {"Prefix": "cells", "MicroManagerVersion": "2.0.0", "Channels": 1, "Slices": 1, "Frames": 1,
               "Positions": 2, "ChNames": ["DAPI"], "PixelSize_um": 0.5}
    first = tmp_path / "cells_MMStack_Pos0.ome.tif"
    first.write_bytes(mmstack_bytes({(0, 0, 0): np.zeros(SIZE, np.uint16)}, 0, summary))
    (tmp_path / "cells_MMStack_Pos1.ome.tif").symlink_to(tmp_path / "nowhere.tif")
    with pytest.raises(UndecodableImage) as caught:
        slide_files.open_slide(first, Selection(), max_pixels=10**8, limits=structure.Limits())
    assert "nowhere.tif" in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_a_sets_first_tiff_holding_its_metadata_is_bounded_as_the_file_is(tmp_path: Path) -> None:
    """A set's metadata kept in its first TIFF (the others' BinaryOnly pointing at it) was read with
    no bound: a 300 MB description there took 1.3 GB (a hostile-input audit)."""
    import re

    first, second = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"])
    own_uuid = re.search(r'UUID="([^"]+)"', tifffile.TiffFile(second).pages[0].description).group(1)
    pointer = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/'
               f'OME/2016-06" UUID="{own_uuid}"><BinaryOnly MetadataFile="{first.name}" UUID="urn:uuid:0"/>'
               "</OME>")
    tifffile.imwrite(second, _planes()[1], description=pointer, metadata=None, photometric="minisblack")
    assert (_read(second, "GFP") == 200).all()  # read as the set, by the first file's XML
    small = structure.Limits(max_metadata_bytes=len(pointer) + 10)
    with pytest.raises(structure.TooComplex, match="tag 270"):
        _read(second, "GFP", small)
    with tifffile.TiffFile(second) as tif, pytest.raises(structure.TooComplex, match="tag 270"):
        tiff_sets.companion_xml(tif, small)  # before tifffile reads the first file's description


def test_a_split_set_past_the_services_bounds_is_not_read_as_a_set_here(tmp_path: Path) -> None:
    """``image_files`` opened the set's series with none of the bounds the service puts on a file
    (a re-audit: 14 s and 4.7 GB on a set whose XML describes billions of planes, where the service
    answers 413 at once); the file is now sent as it is, for the service to answer."""
    paths = write_channel_set(tmp_path, _planes(), ["DAPI", "GFP"], companion="set.companion.ome")
    assert tiff_sets.image_files(paths[0]) == tuple(sorted(paths))
    companion = tmp_path / "set.companion.ome"
    companion.write_text(companion.read_text().replace('SizeT="1"', 'SizeT="5000000"'))
    assert tiff_sets.image_files(paths[0]) == ()

