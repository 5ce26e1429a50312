"""service.regions: the in-memory source reads windows as views; the row-block reader serves the same
pixels as its source and reads each block of rows once while reads move down the image (a
compressed slide decodes whole chunk rows)."""

from __future__ import annotations

import numpy as np
import pytest

from service.regions import MAX_BLOCK_ROWS, ArraySource, RegionSource, RowBlockReader, by_chunk_rows
from tests.unit.test_windows import LazySource


def test_array_source_reads_windows_as_views_and_refuses_windows_outside():
    image = np.arange(60, dtype=np.uint16).reshape(6, 10)
    source = ArraySource(image)
    assert isinstance(source, RegionSource)
    assert source.shape == (6, 10) and source.dtype == np.uint16
    assert np.array_equal(source.read(1, 3, 2, 5), image[1:3, 2:5])
    assert np.shares_memory(source.read(1, 3, 2, 5), image)
    with pytest.raises(ValueError):
        source.read(0, 7, 0, 1)
    with pytest.raises(ValueError):
        source.read(2, 2, 0, 1)


def counting(image: np.ndarray, chunk_rows: int | None = None) -> LazySource:
    """A lazy source that records every read it serves, decoding ``chunk_rows`` rows per chunk."""
    source = LazySource(image)
    source.chunk_rows = chunk_rows  # type: ignore[attr-defined]
    return source


def _image(height: int, width: int, colour: bool = False) -> np.ndarray:
    size = height * width * (3 if colour else 1)
    data = (np.arange(size, dtype=np.uint64) * 7919 % 60013).astype(np.uint16)
    return data.reshape((height, width, 3) if colour else (height, width))


@pytest.mark.parametrize("colour", [False, True])
def test_reads_equal_the_sources_in_any_order(colour):
    image = _image(1000, 37, colour)
    reader = RowBlockReader(counting(image), 128)
    assert reader.shape == image.shape and reader.dtype == image.dtype
    rng = np.random.default_rng(5)
    windows = [(0, 1000), (999, 1000), (127, 129), (128, 256), (500, 900), (3, 4), (0, 128)]
    windows += [tuple(sorted(rng.choice(1001, 2, replace=False))) for _ in range(40)]
    for y0, y1 in windows:
        np.testing.assert_array_equal(reader.read(y0, y1, 0, 37), image[y0:y1])
        np.testing.assert_array_equal(reader.read(y0, y1, 5, 9), image[y0:y1, 5:9])
    with pytest.raises(ValueError):
        reader.read(0, 1001, 0, 37)


def test_sequential_short_reads_read_each_block_once():
    image = _image(1000, 64)
    source = counting(image)
    reader = RowBlockReader(source, 128)
    for y0 in range(0, 1000, 48):  # bands that straddle block borders
        np.testing.assert_array_equal(reader.read(y0, min(1000, y0 + 48), 0, 64), image[y0 : y0 + 48])
    assert source.reads == [(k, min(1000, k + 128), 0, 64) for k in range(0, 1000, 128)]
    # Overlapping tall reads (tile rows with their halo): the shared block is not read again, and
    # blocks wholly inside a read are read as they are needed, not kept.
    source.reads.clear()
    reader = RowBlockReader(source, 128)
    reader.read(0, 300, 0, 64)
    reader.read(280, 600, 0, 64)
    assert source.reads == [(0, 128, 0, 64), (128, 256, 0, 64), (256, 384, 0, 64),
                            (384, 512, 0, 64), (512, 640, 0, 64)]


def test_only_sources_that_decode_by_chunk_rows_get_a_reader():
    image = _image(300, 20)
    assert by_chunk_rows(ArraySource(image)).__class__ is ArraySource  # in memory: any rows cost the same
    assert isinstance(by_chunk_rows(counting(image, 64)), RowBlockReader)
    assert by_chunk_rows(counting(image, 64)).block_rows == 64  # type: ignore[attr-defined]
    for rows in (None, 1, MAX_BLOCK_ROWS + 1):  # uncompressed, single rows, a block too tall to keep
        source = counting(image, rows)
        assert by_chunk_rows(source) is source
