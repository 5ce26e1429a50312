"""Float images with NaN or inf pixels (ratio images, NaN padding after registration): every table
leaves those pixels out of an object's intensities, so no table holds NaN and every JSON answer is
JSON (``NaN`` is not), in 2-D, band by band (slides) and in 3-D (``service.intensity_sums``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile

from service import objects, zstack
from service.api import Segmenter
from service.object_stream import ObjectStream
from tests.python_api.conftest import BUNDLED_MODEL
from tests.unit.test_segment import synthetic_nuclei


def strict_json(text: str | bytes) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _labels_and_ratio() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:15] = 1
    labels[20:30, 20:35] = 2
    labels[32:38, 40:48] = 3
    ratio = np.linspace(0.5, 2.0, labels.size, dtype=np.float32).reshape(labels.shape)
    ratio[5:15, 5] = np.nan  # a column of object 1
    ratio[21, 21] = np.inf
    ratio[32:38, 40:48] = np.nan  # all of object 3
    return labels, ratio


def test_non_finite_pixels_are_left_out_of_the_mean_and_the_sum() -> None:
    labels, ratio = _labels_and_ratio()
    rows = objects.measure(labels, ratio, np.ones(labels.shape), channels=[("ratio", ratio)])
    for row in rows[:2]:
        values = ratio[(labels == row.id) & np.isfinite(ratio)]
        assert row.mean_intensity == pytest.approx(values.mean(), abs=1e-4)
        assert row.integrated_intensity == pytest.approx(values.sum(), abs=1e-3)
        assert dict(row.extra_values)["mean_intensity_ratio"] == row.mean_intensity
    assert rows[2].mean_intensity is None and rows[2].integrated_intensity == 0  # no finite pixel
    assert "nan" not in objects.rows_to_csv(rows, channel_keys=["ratio"]).lower()
    strict_json(json.dumps(objects.row_dicts(rows, False, ["ratio"])))
    strict_json(json.dumps(objects.to_geojson(labels, rows)))


def test_band_by_band_the_same_numbers() -> None:
    labels, ratio = _labels_and_ratio()
    expected = objects.measure(labels, ratio, np.ones(labels.shape), channels=[("ratio", ratio)])
    stream = ObjectStream(channel_keys=["ratio"])
    got = []
    for y0 in range(0, 40, 7):
        y1 = min(40, y0 + 7)
        got += stream.add(y0, labels[y0:y1], ratio[y0:y1], np.ones((y1 - y0, 50)), [ratio[y0:y1]])
    got += stream.finish()
    assert sorted(got, key=lambda r: r.id) == expected


def test_in_3d_too() -> None:
    labels, ratio = _labels_and_ratio()
    linker = zstack.Linker(channel_keys=["ratio"])
    for _ in range(2):
        linker.add(labels, ratio, [ratio])
    rows = linker.table.rows()
    finite = ratio[(labels == 1) & np.isfinite(ratio)]
    assert rows[0]["mean_intensity"] == pytest.approx(finite.mean(), abs=1e-3)
    assert rows[2]["mean_intensity"] is None and rows[2]["mean_intensity_ratio"] is None
    assert "nan" not in zstack.rows_to_csv(rows).lower()


@pytest.mark.slow
def test_a_float_tiff_with_nan_pixels_gives_json_that_parses() -> None:
    image = synthetic_nuclei(128, 128, seed=3).astype(np.float32)
    image.ravel()[::97] = np.nan  # inside nuclei too
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    with Segmenter.load(BUNDLED_MODEL) as segmenter:
        result = segmenter.segment(buffer.getvalue(), outputs=("labels", "objects", "probability"))
    assert result.object_count and result.object_count > 3
    table = strict_json(result.encode("objects", json_table=True)[0])
    assert all(row["mean_intensity"] is not None for row in table)  # each nucleus has finite pixels
    strict_json(result.encode("geojson")[0])
