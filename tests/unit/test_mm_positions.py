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

