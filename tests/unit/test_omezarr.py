"""OME-Zarr results written band by band (service/omezarr.py) and the streamed objects table
(service/object_table.py): what is stored equals the arrays, ome-zarr's reader opens it, the
pyramid is the arrays downsampled, and the writer holds one row of chunks, not the image."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Labels, Multiscales, Reader

from service.object_table import ObjectTableWriter
from service.objects import calibrate, measure, rows_to_csv
from service.omezarr import OmeZarrWriter, level_shapes

logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # its reader logs format probing at INFO/WARNING


def _result(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5_000_000, (height, width)).astype(np.int32)  # ids past 16 bits
    labels[rng.random((height, width)) < 0.5] = 0
    return {
        "mask": np.where(labels > 0, 255, 0).astype(np.uint8),
        "labels": labels,
        "probability": rng.random((height, width), dtype=np.float32),
    }


def _write(path, result, heights, **options) -> dict:
    writer = OmeZarrWriter(path, result["mask"].shape, **options)
    y = 0
    for h in heights:
        writer.write_rows(y, **{k: v[y : y + h] for k, v in result.items()})
        y += h
    return writer.finish()


def _mean_of_available(level: np.ndarray) -> np.ndarray:
    """2 × 2 means, an odd edge averaging the pixels it has (independent of the writer's code)."""
    h, w = level.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan)
    padded[:h, :w] = level
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    return np.rint(np.nanmean(blocks, axis=(1, 3))).astype(level.dtype)


def test_store_written_from_uneven_bands_equals_the_full_arrays(tmp_path):
    result = _result(1000, 777)
    heights = [1, 37, 128, 129, 300, 5, 400]  # across chunk rows of 128, one row, several chunk rows
    assert sum(heights) == 1000
    summary = _write(tmp_path / "r.ome.zarr", result, heights, chunk=128, levels=2)
    root = zarr.open_group(tmp_path / "r.ome.zarr", mode="r")
    assert root.metadata.zarr_format == 2
    assert np.array_equal(root["labels/nuclei/0"][:], result["labels"].astype(np.uint32))
    assert root["labels/nuclei/0"].dtype == np.uint32
    assert np.array_equal(root["labels/mask/0"][:], result["mask"])
    assert np.array_equal(root["0"][:], np.rint(result["probability"] * 255).astype(np.uint8))
    assert root["0"].chunks == (128, 128)
    assert summary["levels"] == [[1000, 777], [500, 389]] and summary["bytes"] > 0


@pytest.mark.parametrize(
    ("chunk", "levels"),
    [
        (64, 4),  # every level written with level 0's chunk rows
        (256, 3),  # chunk rows taller than the writer's strips: the mean taken strip by strip
        (16, 7),  # 2^5 does not divide the chunk: levels 5 and 6 are built at finish() instead
    ],
)
def test_pyramid_levels_equal_the_arrays_downsampled(tmp_path, chunk, levels):
    result = _result(1001, 643, seed=1)  # odd sizes: the last row and column of each level
    _write(tmp_path / "r.ome.zarr", result, [333, 333, 335], chunk=chunk, levels=levels)
    root = zarr.open_group(tmp_path / "r.ome.zarr", mode="r")
    probability = root["0"][:]
    for k in range(1, levels):
        assert np.array_equal(root[f"labels/nuclei/{k}"][:], result["labels"][:: 2**k, :: 2**k])
        assert np.array_equal(root[f"labels/mask/{k}"][:], result["mask"][:: 2**k, :: 2**k])
        probability = _mean_of_available(probability)
        assert np.array_equal(root[str(k)][:], probability)


def test_ome_zarr_reader_sees_the_multiscale_image_and_both_labels(tmp_path):
    result = _result(300, 200, seed=2)
    _write(tmp_path / "r.ome.zarr", result, [300], chunk=64, levels=3, pixel_size_um=(0.5, 0.25))
    nodes = list(Reader(parse_url(tmp_path / "r.ome.zarr"))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [tuple(a.shape) for a in image.data] == [(300, 200), (150, 100), (75, 50)]
    assert image.metadata["axes"] == [{"name": "y", "type": "space", "unit": "micrometer"},
                                      {"name": "x", "type": "space", "unit": "micrometer"}]
    assert np.array_equal(np.asarray(image.data[0]), np.rint(result["probability"] * 255).astype(np.uint8))
    assert any(isinstance(spec, Labels) for spec in nodes[1].specs)
    labels = {n.metadata["name"]: n for n in nodes[2:] if any(isinstance(s, Label) for s in n.specs)}
    assert set(labels) == {"nuclei", "mask"}
    assert np.array_equal(np.asarray(labels["nuclei"].data[2]), result["labels"][::4, ::4].astype(np.uint32))
    attrs = zarr.open_group(tmp_path / "r.ome.zarr/labels/nuclei", mode="r").attrs.asdict()
    assert attrs["image-label"]["source"] == {"image": "../../"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    assert scales == [[0.25, 0.5], [0.5, 1.0], [1.0, 2.0]]  # (y, x) µm per pixel of each level


def test_without_probability_the_mask_is_the_image(tmp_path):
    result = _result(90, 70, seed=3)
    del result["probability"]
    _write(tmp_path / "r.ome.zarr", result, [50, 40], chunk=32, outputs=("mask", "labels"), levels=2)
    nodes = list(Reader(parse_url(tmp_path / "r.ome.zarr"))())
    assert np.array_equal(np.asarray(nodes[0].data[0]), result["mask"])
    assert [n.metadata.get("name") for n in nodes[2:]] == ["nuclei"]
    with pytest.raises(ValueError, match="probability or the mask"):
        OmeZarrWriter(tmp_path / "x.ome.zarr", (10, 10), outputs=("labels",))


def test_bands_out_of_order_missing_or_short_are_refused(tmp_path):
    result = _result(64, 40, seed=4)
    writer = OmeZarrWriter(tmp_path / "r.ome.zarr", (64, 40), chunk=16)
    writer.write_rows(0, **{k: v[:10] for k, v in result.items()})
    with pytest.raises(ValueError, match="expected a band at row 10"):
        writer.write_rows(20, **{k: v[20:30] for k, v in result.items()})
    with pytest.raises(ValueError, match="pass it with every band"):
        writer.write_rows(10, mask=result["mask"][10:20], labels=result["labels"][10:20])
    with pytest.raises(ValueError, match=r"must be \(h, 40\)"):
        writer.write_rows(10, **{k: v[10:20, :30] for k, v in result.items()})
    with pytest.raises(ValueError, match="only 10 of 64 rows"):
        writer.finish()
    with pytest.raises(FileExistsError):
        OmeZarrWriter(tmp_path / "r.ome.zarr", (64, 40))
    # no metadata yet: no reader takes an unfinished store for a result
    assert "multiscales" not in zarr.open_group(tmp_path / "r.ome.zarr", mode="r").attrs


def test_default_pyramid_goes_down_to_at_most_1024_px():
    assert level_shapes((5000, 3000)) == [(5000, 3000), (2500, 1500), (1250, 750), (625, 375)]
    assert level_shapes((800, 600)) == [(800, 600)]
    assert level_shapes((32768, 32768))[-1] == (1024, 1024)
    assert len(level_shapes((100, 100), levels=3)) == 3


def _band(y0: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Rows [y0, y0 + height) of a result defined by position (nothing held between bands)."""
    yy, xx = np.mgrid[y0 : y0 + height, 0:width]
    labels = ((yy // 7) * 1000 + xx // 9).astype(np.int32)
    return {
        "mask": np.where(labels % 3 > 0, 255, 0).astype(np.uint8),
        "labels": labels,
        "probability": ((yy + xx) % 256 / 255.0).astype(np.float32),
    }


def test_the_writer_holds_one_row_of_chunks_not_the_image(tmp_path):
    height, width, chunk = 3000, 4000, 256  # 72 MB as the three outputs' full arrays
    writer = OmeZarrWriter(tmp_path / "r.ome.zarr", (height, width), chunk=chunk, levels=3)
    buffers = writer.buffered_bytes
    assert buffers == chunk * width * (1 + 4 + 1)  # 6 MB, allocated once
    # Each call's peak allocation beyond what existed before it (the band, made by the test, is
    # not the writer's): conversion temporaries and one chunk row being encoded, whatever the
    # band's height, and the pyramid built one output chunk at a time.
    extra = []
    tracemalloc.start()
    try:
        y = 0
        for h in (300, 77, 512, 1, 1000, 1110):
            band = _band(y, h, width)
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            writer.write_rows(y, **band)
            extra.append(tracemalloc.get_traced_memory()[1] - before)
            del band
            y += h
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        writer.finish()
        extra.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert max(extra) < buffers, [f"{e / 1e6:.1f} MB" for e in extra]
    root = zarr.open_group(tmp_path / "r.ome.zarr", mode="r")
    expected = _band(0, height, width)
    assert np.array_equal(root["labels/nuclei/0"][:], expected["labels"].astype(np.uint32))
    assert np.array_equal(root["labels/mask/2"][:], expected["mask"][::4, ::4])


def test_objects_table_streamed_in_batches_is_the_in_memory_table(tmp_path):
    labels = np.zeros((60, 80), np.int32)
    for i, (y, x) in enumerate([(5, 5), (20, 40), (40, 10), (50, 70)], start=1):
        labels[y : y + 6, x : x + 8] = i
    rng = np.random.default_rng(5)
    rows = measure(labels, rng.random((60, 80)) * 1000, rng.random((60, 80)).astype(np.float32))
    rows = [calibrate(row, (0.5, 0.5)) for row in rows]
    with ObjectTableWriter(tmp_path / "objects.csv", calibrated=True) as table:
        assert table.write(rows[:1]) == 1
        table.write([])
        table.write(rows[1:])
        assert table.rows_written == 4
        assert (tmp_path / "objects.csv").read_text().count("\n") == 5  # flushed as written
    assert (tmp_path / "objects.csv").read_text() == rows_to_csv(rows, calibrated=True)
    with ObjectTableWriter(tmp_path / "plain.csv") as table:
        table.write(measure(labels, labels.astype(float), labels.astype(np.float32)))
    assert "area_um2" not in (tmp_path / "plain.csv").read_text().splitlines()[0]
    with ObjectTableWriter(tmp_path / "bad.csv", calibrated=True) as table, pytest.raises(ValueError):
        table.write(measure(labels, labels.astype(float), labels.astype(np.float32)))
