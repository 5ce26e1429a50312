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
    label_prediction,
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


def _centre_map(shape, discs):
    """A centre map like the model's: 1 at each disc's centre, falling to 0 at its rim."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.zeros(shape, np.float32)
    for x, y, r in discs:
        centres = np.maximum(centres, np.clip(1 - np.hypot(xx - x, yy - y) / r, 0, 1))
    return centres


CENTRE = ObjectParams(method="center_watershed", center_channel=1, center_prominence=0.1, center_floor=0.0)


def test_centre_cores_split_overlapping_nuclei():
    discs = [(50, 50, 20), (72, 50, 20)]  # overlapping by almost half a diameter
    mask = _disc_mask((100, 130), discs)
    labels = label_objects(mask, CENTRE, _centre_map(mask.shape, discs))
    assert labels.max() == 2 and labels[50, 45] != labels[50, 77]
    # Every mask pixel is in one of the two objects: the flood loses nothing.
    assert ((labels > 0) == fill_holes(mask)).all()
    # The same through the model's (K, H, W) probabilities.
    probabilities = np.stack([mask.astype(np.float32), _centre_map(mask.shape, discs)])
    assert np.array_equal(label_prediction(mask, probabilities, CENTRE), labels)


def test_centre_peaks_below_the_floor_do_not_seed():
    mask = _disc_mask((80, 80), [(40, 40, 25)])
    centres = _centre_map(mask.shape, [(40, 40, 25)])
    centres = np.maximum(centres, _centre_map(mask.shape, [(40, 20, 5)]) * 0.45)  # a bump at the rim
    assert label_objects(mask, CENTRE, centres).max() == 2  # the bump rises ~0.15 above its saddle
    with_floor = ObjectParams(method="center_watershed", center_prominence=0.1, center_floor=0.5)
    assert label_objects(mask, with_floor, centres).max() == 1


def test_centre_method_keeps_one_core_or_none_as_one_object_and_needs_the_map():
    mask = _disc_mask((80, 160), [(40, 40, 15), (120, 40, 15)])
    centres = _centre_map(mask.shape, [(40, 40, 15)])  # the second disc has no core at all
    labels = label_objects(mask, CENTRE, centres)
    assert labels.max() == 2 and labels[40, 40] == 1 and labels[40, 120] == 2
    with pytest.raises(ValueError, match="centre map"):
        label_objects(mask, CENTRE)
    with pytest.raises(ValueError, match="outside"):
        label_prediction(mask, mask[None].astype(np.float32), CENTRE)


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


def _ring_of(labels, object_id):
    rows = measure(labels, np.zeros(labels.shape), np.zeros(labels.shape))
    feature = to_geojson(labels, rows)["features"][object_id - 1]
    return feature["geometry"]["coordinates"][0]


def test_outlines_follow_pixel_edges_exactly_and_run_counter_clockwise():
    rng = np.random.default_rng(11)
    for _ in range(60):
        mask = np.zeros((48, 48), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(v) for v in rng.integers(12, 36, 2))
            axes = (int(rng.integers(2, 12)), int(rng.integers(2, 9)))
            cv2.ellipse(mask, tuple(centre), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        labels = cv2.connectedComponents(mask, connectivity=4)[1]
        ring = _ring_of(labels, 1)
        xy = np.asarray(ring)
        # Integer pixel corners; the staircase encloses exactly the object's pixels.
        assert np.issubdtype(xy.dtype, np.integer)
        assert _polygon_area(ring) == (labels == 1).sum()
        # Counter-clockwise in a y-up frame (positive shoelace), as RFC 7946 asks of exteriors.
        x, y = xy[:-1, 0], xy[:-1, 1]
        assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0
        # Corners only: no vertex repeats and none sits mid-way along a straight edge.
        assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1
        before, after = xy[1:-1] - xy[:-2], xy[2:] - xy[1:-1]
        assert (before[:, 0] * after[:, 1] != before[:, 1] * after[:, 0]).all()


def test_outline_of_parts_touching_at_a_corner_does_not_touch_itself():
    labels = np.zeros((12, 12), np.int32)
    labels[2:6, 2:6] = 1
    labels[6:10, 6:10] = 1  # joined to the first square only at the corner (6, 6)
    ring = _ring_of(labels, 1)
    assert ring[0] == ring[-1]
    assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # a simple ring (valid in JTS)
    assert _polygon_area(ring) == pytest.approx(32, rel=0.02)


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
