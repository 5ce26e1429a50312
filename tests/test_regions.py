"""The region-source protocol's in-memory implementation (service/regions.py)."""

import numpy as np
import pytest

from service.regions import ArraySource, RegionSource


def test_array_source_reads_windows_as_views_and_refuses_windows_outside():
    image = np.arange(60, dtype=np.uint16).reshape(6, 10)
    source = ArraySource(image)
    assert isinstance(source, RegionSource)
    assert source.shape == (6, 10) and source.dtype == np.uint16
    assert np.array_equal(source.read(1, 3, 2, 5), image[1:3, 2:5])
    with pytest.raises(ValueError):
        source.read(0, 7, 0, 1)
    with pytest.raises(ValueError):
        source.read(2, 2, 0, 1)
