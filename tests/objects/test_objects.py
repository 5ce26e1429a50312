"""Objects from a foreground mask: splitting, numbering, measurements, GeoJSON, label encoding."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from service.objects import (
    MAX_PNG_LABEL,
    ObjectParams,
    encode_labels,
    fill_holes,
    h_maxima,
    label_objects,
    measure,
    rows_to_csv,
    to_geojson,
)


def _disc_mask(shape, discs):
    mask = np.zeros(shape, np.uint8)
    for x, y, r in discs:
        cv2.circle(mask, (x, y), r, 1, -1)
    return mask > 0


def _polygon_area(ring):
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("radius", [6, 10, 16, 25])
@pytest.mark.parametrize("overlap_fraction", [0.0, 0.15, 0.3])
def test_touching_pair_comes_back_as_two_objects(radius, overlap_fraction):
    gap = int(round(2 * radius * (1 - overlap_fraction)))
    centres = [(60, 60), (60 + gap, 60)]
    mask = _disc_mask((120, 160), [(x, y, radius) for x, y in centres])
    labels = label_objects(mask)
    assert labels.max() == 2
    # Each centre sits in its own object.
    assert labels[60, 60] != labels[60, 60 + gap]
    assert {labels[60, 60], labels[60, 60 + gap]} == {1, 2}


def test_single_ellipse_is_not_split():
    mask = np.zeros((100, 100), np.uint8)
    cv2.ellipse(mask, (50, 50), (30, 14), 30, 0, 360, 1, -1)
    assert label_objects(mask > 0).max() == 1


def test_connected_components_method_does_not_split():
    mask = _disc_mask((80, 120), [(40, 40, 15), (66, 40, 15)])
    assert label_objects(mask, ObjectParams(method="connected_components")).max() == 1


def test_labels_are_numbered_in_raster_order_of_first_pixel():
    mask = _disc_mask((200, 200), [(150, 30, 8), (30, 100, 8), (100, 170, 8), (170, 100, 8)])
    labels = label_objects(mask)
    firsts = [int(np.flatnonzero(labels.ravel() == i)[0]) for i in range(1, labels.max() + 1)]
    assert firsts == sorted(firsts)
    assert labels.max() == 4


def test_specks_are_dropped_and_holes_filled():
    mask = _disc_mask((60, 60), [(30, 30, 12)])
    mask[30, 30] = False  # a one-pixel hole (dim nucleolus)
    mask[2, 2] = True  # a speck
    assert fill_holes(mask)[30, 30]
    labels = label_objects(mask, ObjectParams(min_area=5))
    assert labels.max() == 1 and labels[30, 30] == 1 and labels[2, 2] == 0


def test_table_counts_areas_and_centroids():
    mask = _disc_mask((100, 100), [(25, 30, 10), (70, 60, 7)])
    labels = label_objects(mask)
    intensity = np.where(mask, 200.0, 10.0)
    probability = np.where(mask, 0.9, 0.1)
    rows = measure(labels, intensity, probability)
    assert len(rows) == labels.max() == 2
    first = rows[0]
    assert (first.centroid_x, first.centroid_y) == pytest.approx((25, 30), abs=0.05)
    assert first.area == int((labels == 1).sum())
    assert first.mean_intensity == pytest.approx(200.0)
    assert first.integrated_intensity == pytest.approx(200.0 * first.area)
    assert first.mean_confidence == pytest.approx(0.9)
    assert (first.bbox_x, first.bbox_y, first.bbox_width, first.bbox_height) == (15, 20, 21, 21)
    csv_text = rows_to_csv(rows)
    assert csv_text.count("\n") == 3 and csv_text.startswith("id,centroid_x")
    assert measure(np.zeros((5, 5), np.int32), np.zeros((5, 5)), np.zeros((5, 5))) == []


def test_geojson_is_valid_closed_inside_and_round_trips_areas():
    rng = np.random.default_rng(3)
    mask = np.zeros((300, 300), np.uint8)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, 300, 2))
        r = int(rng.integers(6, 18))
        cv2.ellipse(mask, (x, y), (r, int(r * 0.7)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    labels = label_objects(mask > 0)
    rows = measure(labels, mask.astype(np.float32), mask.astype(np.float32))
    collection = to_geojson(labels, rows)
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(rows) == labels.max()
    for row, feature in zip(rows, collection["features"], strict=True):
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon"
        assert ring[0] == ring[-1] and len(ring) >= 4
        xy = np.asarray(ring)
        assert xy.min() >= 0 and xy[:, 0].max() <= 300 and xy[:, 1].max() <= 300
        assert _polygon_area(ring) == pytest.approx(row.area, rel=0.02)


def test_labels_encode_as_16_bit_png_and_32_bit_tiff_past_65535():
    small = np.array([[0, 1], [2, MAX_PNG_LABEL]], np.int32)
    data, media = encode_labels(small)
    assert media == "image/png"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16 and (decoded == small).all()

    big = np.array([[0, 1], [70000, MAX_PNG_LABEL + 1]], np.int32)
    data, media = encode_labels(big)
    assert media == "image/tiff"
    assert (np.array(Image.open(io.BytesIO(data))) == big).all()  # no wrap-around


def test_h_maxima_matches_scikit_image_on_distance_maps():
    from scipy import ndimage
    from skimage.morphology import h_maxima as reference

    rng = np.random.default_rng(5)
    for _ in range(30):
        mask = np.zeros((90, 90), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            x, y = (int(v) for v in rng.integers(25, 65, 2))
            axes = (int(rng.integers(6, 20)), int(rng.integers(5, 15)))
            cv2.ellipse(mask, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        distance = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        distance = cv2.GaussianBlur(distance, (0, 0), 1)
        for h in (0.25, 1.0, 2.0):
            ours, theirs = h_maxima(distance, h), reference(distance, h).astype(bool)
            # The same seeds: as many, each of ours on one of theirs (float rounding may
            # move a plateau's edge by a pixel, which does not change the flooding).
            eight = np.ones((3, 3), bool)
            our_seeds, count = ndimage.label(ours, structure=eight)
            their_seeds, their_count = ndimage.label(theirs, structure=eight)
            assert count == their_count
            for seed in range(1, count + 1):
                assert their_seeds[our_seeds == seed].max() > 0
