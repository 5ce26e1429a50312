"""Objects measured in other channels (``measure=``): which pixels are read
(``service.microscopy``) and how their columns are named and filled (``service.objects``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from service import measured_channels, microscopy, objects
from service.outputs import measured_keys, object_rows

MAX_PIXELS, MAX_PAGES = 10**8, 10_000


def select(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, microscopy.Selection(**choice), MAX_PIXELS, MAX_PAGES)  # type: ignore[arg-type]


def tiff(array: np.ndarray, **options: object) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def hyperstack() -> tuple[bytes, np.ndarray]:
    """3 time points × 4 slices × 3 named channels (T Z C Y X), every page different."""
    movie = np.random.default_rng(1).integers(0, 4000, (3, 4, 3, 20, 30), dtype=np.uint16)
    data = tiff(movie, imagej=True, metadata={"axes": "TZCYX", "Labels": ["DAPI", "GFP", "RFP"] * 12})
    return data, movie


def test_measured_channels_are_read_at_the_chosen_time_and_slice(hyperstack) -> None:
    data, movie = hyperstack
    plane = select(data, channel="DAPI", t=2, z=1, measure=("RFP", "gfp"))
    assert np.array_equal(plane.image, movie[2, 1, 0])
    assert [m.channel.name for m in plane.measured] == ["RFP", "GFP"]
    assert np.array_equal(plane.measured[0].image, movie[2, 1, 2])
    assert np.array_equal(plane.measured[1].image, movie[2, 1, 1])


def test_a_projection_projects_each_measured_channel(hyperstack) -> None:
    data, movie = hyperstack
    plane = select(data, channel="0", t=0, project="max", measure=("all",))
    assert [m.channel.index for m in plane.measured] == [0, 1, 2]
    for m in plane.measured:
        assert np.array_equal(m.image, movie[0, :, m.channel.index].max(axis=0))


def test_without_measure_nothing_more_is_read_and_the_description_is_unchanged(hyperstack) -> None:
    data, _ = hyperstack
    plane = select(data, channel="0", t=0, z=0)
    assert plane.measured == () and "measured" not in plane.describe()
    measured = select(data, channel="0", t=0, z=0, measure=("2",))
    assert measured.describe()["measured"] == [{"index": 2, "name": "RFP"}]
    assert measured.without_pixels().measured[0].image.size == 0


def test_a_grey_image_measures_its_one_channel() -> None:
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    plane = select(tiff(image), measure=("all",))
    assert len(plane.measured) == 1 and np.array_equal(plane.measured[0].image, image)


@pytest.mark.parametrize("wanted", [("gray",), ("3",), ("Cy5",)])
def test_a_channel_the_file_lacks_names_measure_and_the_choices(hyperstack, wanted) -> None:
    data, _ = hyperstack
    with pytest.raises(microscopy.SelectionError, match=r"measure: the image has no channel") as caught:
        select(data, channel="0", t=0, z=0, measure=wanted)
    assert caught.value.params == ("measure",) and "2 (RFP)" in str(caught.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("DAPI", ("DAPI",)),
        ("1, GFP ,", ("1", "GFP")),
        (["2", 0], ("2", "0")),
        (None, ()),
    ],
)
def test_measure_choice_reads_text_or_a_list(given, expected) -> None:
    assert microscopy.measure_choice(given) == expected


@pytest.mark.parametrize("given", [",", " ", []])
def test_measure_naming_nothing_is_an_error(given) -> None:
    with pytest.raises(ValueError, match="names no channel"):
        microscopy.measure_choice(given)


@pytest.mark.parametrize(
    ("index", "name", "key"),
    [
        (0, "DAPI", "DAPI"),
        (1, "Alexa Fluor 488", "Alexa_Fluor_488"),
        (2, "GFP-pH2A.X", "GFP_pH2A_X"),
        (3, None, "c3"),
        (4, "  ", "c4"),
        (5, "µ-tubulin", "tubulin"),
        (6, "__x__", "__x__"),
    ],
)
def test_channel_keys_are_column_safe(index, name, key) -> None:
    assert measured_channels.channel_key(index, name) == key


def test_names_that_clean_to_one_key_are_told_apart_by_index() -> None:
    assert measured_channels.channel_keys([(0, "GFP"), (1, "GFP"), (2, "A-1"), (3, "A 1"), (4, None)]) == [
        "c0_GFP",
        "c1_GFP",
        "c2_A_1",
        "c3_A_1",
        "c4",
    ]


def test_the_columns_are_the_mean_and_the_sum_over_each_object() -> None:
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:4] = 1
    labels[4:6, 5:8] = 2
    marker = np.arange(48, dtype=np.float32).reshape(6, 8)
    rows = objects.measure(labels, np.ones((6, 8)), np.ones((6, 8)), channels=[("GFP", marker)])
    for row in rows:
        values = marker[labels == row.id]
        assert dict(row.extra_values) == {
            "mean_intensity_GFP": pytest.approx(values.mean()),
            "integrated_intensity_GFP": pytest.approx(values.sum()),
        }
    fields = objects.table_fields(False, ["GFP"])
    assert (
        fields[-2:] == ["mean_intensity_GFP", "integrated_intensity_GFP"] and "extra_values" not in fields
    )
    assert (
        objects.rows_to_csv([], channel_keys=["GFP"])
        .splitlines()[0]
        .endswith("mean_intensity_GFP,integrated_intensity_GFP")
    )
    with pytest.raises(ValueError, match="measures"):
        objects.row_dicts(
            rows, False
        )  # a table that leaves a measured channel out is a bug, not a quiet drop
    with pytest.raises(ValueError, match="labels"):
        objects.measure(labels, np.ones((6, 8)), np.ones((6, 8)), channels=[("GFP", marker[:5])])


def test_object_rows_name_the_columns_by_the_planes_channels(hyperstack) -> None:
    data, movie = hyperstack
    plane = select(data, channel="DAPI", t=1, z=3, measure=("2", "1"))
    labels = np.zeros((20, 30), np.int32)
    labels[5:9, 4:12] = 1
    rows = object_rows(labels, plane.image, np.ones((20, 30), np.float32), plane)
    assert measured_keys(plane) == ["RFP", "GFP"]
    assert dict(rows[0].extra_values)["mean_intensity_RFP"] == pytest.approx(
        movie[1, 3, 2][5:9, 4:12].mean(), abs=1e-4
    )


def test_the_clients_expand_bound_is_the_services() -> None:
    import argparse

    from service import client, outputs

    assert client._expand_px(str(outputs.MAX_EXPAND_PX)) == outputs.MAX_EXPAND_PX
    for wrong in (str(outputs.MAX_EXPAND_PX + 1), "0", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            client._expand_px(wrong)


def test_a_sum_projection_sums_every_slice_in_float32_for_each_measured_channel(hyperstack) -> None:
    data, movie = hyperstack
    plane = select(data, channel="DAPI", t=1, project="sum", measure=("GFP",))
    assert plane.image.dtype == np.float32 and plane.projection == "sum"
    assert np.array_equal(plane.image, movie[1, :, 0].astype(np.float32).sum(axis=0))
    assert np.array_equal(plane.measured[0].image, movie[1, :, 1].astype(np.float32).sum(axis=0))
    assert plane.describe()["projection"] == "sum" and plane.position() == (0, None, 1)
