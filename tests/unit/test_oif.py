"""Olympus FluoView OIF, the folder format (``service.oib.open_oif``): the ``.oif`` settings file and
the ``.oif.files`` folder beside it, read by path (slide and stack jobs, the client's cuts) as an OIB
is read, laid out as FluoView writes it (``tests/oib_files.py``); and what keeps the reads inside
that folder and bounded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service import frames, microscopy, oib, slide_files, structure
from service.imaging import UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from tests.oib_files import Oib, write_oif

MAX = 10**8
RNG = np.random.default_rng(5)
STACK = RNG.integers(0, 4000, (2, 3, 2, 24, 32)).astype(np.uint16)  # T, Z, C, Y, X
NAMES = ("Alexa Fluor 488", "Hoechst 33342")


def acquisition(tmp_path: Path, **changes: object) -> Path:
    return write_oif(Oib(STACK, "TZCYX", NAMES, 0.31, **changes), tmp_path)  # type: ignore[arg-type]


def test_every_plane_is_read_from_the_folder_with_fluoviews_names_and_calibration(tmp_path: Path) -> None:
    path = acquisition(tmp_path)
    layout, read, close = oib.open_oif(path, MAX)
    close()
    assert (layout.format, layout.axes, layout.planes) == ("OIF", "TZCYX", {"Z": 3, "T": 2})
    assert [c.name for c in layout.channels] == list(NAMES)
    assert layout.pixel_size == microscopy.PixelSize(0.31, 0.31, "oib", 0.5)
    for t in range(2):
        for z in range(3):
            for c in range(2):
                assert np.array_equal(read({"T": t, "Z": z, "C": c}), STACK[t, z, c])
    with slide_files.open_slide(path, Selection(channel="Hoechst 33342", z=2, t=1), max_pixels=MAX,
                                limits=structure.Limits()) as source:
        assert np.array_equal(np.asarray(source.read(3, 20, 4, 30)), STACK[1, 2, 1, 3:20, 4:30])
    assert slide_files.is_slide_path(path)


def test_the_client_sends_the_planes_chosen_as_one_ome_tiff_the_service_reads(tmp_path: Path) -> None:
    path = acquisition(tmp_path)
    converted = frames.convert_oif(path, Selection(channel="Hoechst 33342", z=1, t=0), MAX)
    plane = microscopy.select(converted, Selection(channel="Hoechst 33342", z=1, t=0), MAX, 10_000)
    assert np.array_equal(plane.image, STACK[0, 1, 1]) and plane.pixel_size.x_um == 0.31  # type: ignore[union-attr]
    everything = frames.convert_oif(path, Selection(), MAX)  # no choice: every page, the 422 lists them
    assert [c.name for c in microscopy.probe(everything, MAX, 10_000).channels] == list(NAMES)
    cut = frames.cut_frame(path, "t", 1, Selection(channel="Alexa Fluor 488", z=0), MAX)
    assert cut is not None
    assert np.array_equal(microscopy.select(cut, Selection(channel="0", z=0, t=1), MAX, 10_000).image,
                          STACK[1, 0, 0])


def test_without_its_folder_an_oif_is_a_415_that_says_what_an_oif_is(tmp_path: Path) -> None:
    path = acquisition(tmp_path)
    (tmp_path / "cells.oif.files").rename(tmp_path / "elsewhere")
    with pytest.raises(UnsupportedImageType, match=r"cells\.oif\.files"):
        oib.open_oif(path, MAX)
    with pytest.raises(UnsupportedImageType, match=r"cells\.oif\.files"):  # the client's job fails so
        frames.convert_oif(path, Selection(), MAX)


def test_a_folder_named_in_another_case_is_found(tmp_path: Path) -> None:
    path = acquisition(tmp_path)
    (tmp_path / "cells.oif.files").rename(tmp_path / "CELLS.OIF.FILES")
    layout, read, _ = oib.open_oif(path, MAX)
    assert np.array_equal(read({"T": 1, "Z": 1, "C": 0}), STACK[1, 1, 0])


def test_nothing_outside_the_folder_is_read(tmp_path: Path) -> None:
    """A plane that is a link (to a file outside, or anywhere) is not read: it is missing. A folder
    that is a link is refused. A FIFO is never opened (it would block the worker)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = acquisition(tmp_path / "data")
    folder = tmp_path / "data" / "cells.oif.files"
    secret = outside / "s_C001Z001T001.tif"
    (folder / "s_C001Z001T001.tif").rename(secret)
    (folder / "s_C001Z001T001.tif").symlink_to(secret)
    (folder / "s_C002Z001T001.tif").unlink()
    os.mkfifo(folder / "s_C002Z001T001.tif")
    (folder / "s_C002Z001T001.tif.bak").write_bytes(b"")  # not a plane's name: ignored
    layout, read, _ = oib.open_oif(path, MAX)
    with pytest.raises(SelectionError, match="holds no plane at channel 0, z 0, t 0"):
        read({"T": 0, "Z": 0, "C": 0})
    with pytest.raises(SelectionError, match="holds no plane at channel 1, z 0, t 0"):
        read({"T": 0, "Z": 0, "C": 1})
    assert np.array_equal(read({"T": 1, "Z": 2, "C": 1}), STACK[1, 2, 1])
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "cells.oif").write_bytes(path.read_bytes())
    (linked / "cells.oif.files").symlink_to(folder)
    with pytest.raises(UnsupportedImageType, match="which is not there"):
        oib.open_oif(linked / "cells.oif", MAX)


def test_sizes_and_counts_are_bounded_before_reading(tmp_path: Path) -> None:
    path = acquisition(tmp_path)
    with pytest.raises(structure.TooComplex, match="UNET_MAX_METADATA_BYTES"):
        oib.open_oif(path, MAX, limits=structure.Limits(max_metadata_bytes=100))
    with pytest.raises(structure.TooComplex, match="UNET_MAX_OIB_ENTRIES"):
        oib.open_oif(path, MAX, limits=structure.Limits(max_oib_entries=5))
    plane = tmp_path / "cells.oif.files" / "s_C001Z002T001.tif"
    plane.write_bytes(plane.read_bytes() + bytes(24 * 32 * 4 + 1024 * 1024))
    _, read, _ = oib.open_oif(path, MAX)
    with pytest.raises(UndecodableImage, match="more than its pixels need"):
        read({"T": 0, "Z": 1, "C": 0})
    with pytest.raises(SelectionError):
        oib.open_oif(path, MAX, series=1)


def test_fluoview_17s_plane_names_after_the_acquisition_are_read(tmp_path: Path) -> None:
    """FluoView 1.7 (FV1000, settings format 1.0.0.0) names each plane's file after the acquisition,
    spaces and all (a real file's: ``Pea root section tubulin PEM c zstack_C001Z008.pty``)."""
    name = "Pea root section zstack"
    path = write_oif(Oib(STACK[0], "ZCYX", NAMES, 0.414, name=name, plane_prefix=name), tmp_path)
    assert (tmp_path / f"{name}.oif.files" / f"{name}_C002Z003.tif").is_file()
    layout, read, _ = oib.open_oif(path, MAX)
    assert layout.planes == {"Z": 3} and [c.name for c in layout.channels] == list(NAMES)
    assert np.array_equal(read({"Z": 2, "C": 1}), STACK[0, 2, 1])
