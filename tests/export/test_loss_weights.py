"""Loss weights: --dim-weight (nuclei dim against their own image's others) and --contact-weight
(where two nuclei meet, the classic U-Net's map).

The contrast measure is the one benchmarks/unlabelled_blobs.py counts dim nuclei with
(model_export.contrast); these tests pin what it reads, how it becomes a weight, that the weight
follows its nucleus through crops and flips, and what the loss does with it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model_export import contact, contrast
from tests.dsb_layout import write_dsb_folder


def _three_nuclei_on_a_slope() -> tuple[np.ndarray, np.ndarray]:
    """Two bright nuclei (signal 100) on the dark side of a broad bright slope, one dim (20) on
    its bright side: raw, the dim nucleus's pixels are as bright as the bright ones'."""
    size = 200
    labels = np.zeros((size, size), np.int32)
    for label, (cy, cx) in enumerate(((50, 40), (150, 40), (100, 160)), start=1):
        cv2.circle(labels, (cx, cy), 10, label, -1)
    slope = np.tile(np.linspace(20, 160, size, dtype=np.float32), (size, 1))
    signal = np.select([labels == 3, labels > 0], [20.0, 100.0], 0.0).astype(np.float32)
    image = cv2.GaussianBlur(slope + signal, (0, 0), 1.0)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def test_contrast_reads_a_nucleus_against_its_surroundings_not_its_raw_brightness() -> None:
    image, labels = _three_nuclei_on_a_slope()
    raw_means = [float(image[labels == k].mean()) for k in (1, 2, 3)]
    assert raw_means[2] > 0.9 * min(raw_means[:2])  # raw, the dim one does not look dim
    relative = contrast.relative_contrasts(contrast.nucleus_means(contrast.top_hat(image, 21.0), labels))
    assert np.isnan(relative[0])  # background has no contrast
    assert relative[1] == pytest.approx(1.0, abs=0.05) and relative[2] == pytest.approx(1.0, abs=0.05)
    assert 0.1 < relative[3] < 0.3  # its signal is a fifth of theirs


def test_dim_weights_rise_linearly_below_half_the_median_contrast() -> None:
    relative = np.array([np.nan, 0.0, 0.25, 0.5, 1.0, 3.0, np.nan])
    np.testing.assert_allclose(contrast.dim_weights(relative, 4.0), [1, 5, 3, 1, 1, 1, 1])
    np.testing.assert_allclose(contrast.dim_weights(relative, 0.0), 1)  # gain 0: the plain loss
    # an image whose nuclei have no contrast at all has no median to compare with: nobody is dim
    flat = contrast.relative_contrasts(np.array([np.nan, 0.0, 0.0]))
    np.testing.assert_allclose(contrast.dim_weights(flat, 4.0), 1)


def test_dataset_weights_follow_the_dim_nucleus_through_crops_and_flips_and_change_nothing_else() -> None:
    from model_export.data import ScaledDataset

    image, labels = _three_nuclei_on_a_slope()
    items = [(image, labels, 21.0)]
    same = {"scale_jitter": (0.8, 1.25), "seed": 2, "samples_per_epoch": 8, "synthetic": 0.25}
    plain = ScaledDataset(items, 96, 21.0, **same)
    weighted = ScaledDataset(items, 96, 21.0, **same, dim_weight=4.0)
    expected = contrast.nucleus_dim_weights(image, labels, 21.0, 4.0)
    assert expected[3] > 2.5 and expected[1] == expected[2] == 1
    saw_dim = False
    for i in range(8):
        a, b = plain[i], weighted[i]
        assert len(a) == 2 and len(b) == 3
        # the same sample stream: only the weight is new
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        lab, weight = b[1].numpy(), b[2].numpy()
        assert weight.shape == lab.shape and weight.dtype == np.float32
        heavy = weight > 1
        if heavy.any():  # a real sample showing the dim nucleus: weighed exactly on its pixels
            saw_dim = True
            assert np.array_equal(heavy, lab == 3)
            np.testing.assert_allclose(weight[heavy], expected[3])
    assert saw_dim
    # synthetic samples weigh 1 everywhere: the weight reads the real source image only
    synthetic = ScaledDataset(items, 96, 21.0, **{**same, "synthetic": 1.0}, dim_weight=4.0)
    for i in range(3):
        _, lab, weight = synthetic[i]
        assert lab.max() > 0 and bool((weight == 1).all())


def test_unit_weights_give_the_plain_loss_and_weight_pulls_harder_on_dim_pixels() -> None:
    from model_export.train import loss_fn

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 16, 16, generator=generator, requires_grad=True)
    target = torch.zeros(2, 2, 16, 16)
    target[:, 0, 4:10, 4:10] = 1
    target[:, 1, 4:10, 4:10] = 0.5
    plain = loss_fn(logits, target, 1.0, 1)
    ones = loss_fn(logits, target, 1.0, 1, pixel_weight=torch.ones(2, 1, 16, 16))
    assert torch.equal(plain, ones)
    # a dim nucleus the model calls background: weighing its pixels raises the loss and its pull
    missed = logits.detach().clone()
    missed[:, 0, 4:10, 4:10] = -4.0
    weight = torch.ones(2, 1, 16, 16)
    weight[:, :, 4:10, 4:10] = 5.0
    grads = []
    for pixel_weight in (None, weight):
        leaf = missed.clone().requires_grad_(True)
        loss = loss_fn(leaf, target, 1.0, 1, pixel_weight=pixel_weight)
        loss.backward()
        grads.append((loss.item(), float(-leaf.grad[:, 0, 4:10, 4:10].mean())))
    (plain_loss, plain_pull), (weighted_loss, weighted_pull) = grads
    assert weighted_loss > plain_loss and weighted_pull > 2 * plain_pull > 0


@pytest.mark.parametrize("flag", ["--dim-weight", "--contact-weight"])
@pytest.mark.parametrize("value, shown", [("-1", "-1.0"), ("nan", "nan")])
def test_a_negative_or_nan_weight_gain_is_refused_by_name(
    tmp_path: Path, flag: str, value: str, shown: str
) -> None:
    from model_export import train

    with pytest.raises(SystemExit, match=f"{flag} {shown}: expected a gain of 0"):
        train.parse_args(["--dsb", str(tmp_path), flag, value])


def test_contact_weight_falls_on_the_gap_between_two_nuclei_and_their_line_of_contact() -> None:
    labels = np.zeros((40, 70), np.int32)
    labels[10:30, 5:25] = 1
    labels[10:30, 28:48] = 2  # a 3 px gap
    weight = contact.contact_weights(labels, 10.0)
    # across the 3 px gap (columns 25-27) every pixel lies 4 px from the two nuclei together
    # (1 + 3, 2 + 2, 3 + 1), so each weighs 1 + 10 exp(-16 / 50)
    np.testing.assert_allclose(weight[10:30, 25:28], 1 + 10 * np.exp(-16 / 50), rtol=1e-5)
    assert (weight[labels > 0] == 1).all()  # no contact line: nucleus pixels weigh 1
    assert weight[20, 60] == pytest.approx(1, abs=1e-3) and weight[2, 10] == pytest.approx(1, abs=0.02)
    # the same nuclei touching: their line of contact takes the full weight, the rest of them 1
    touching = np.zeros((40, 70), np.int32)
    touching[10:30, 5:25] = 1
    touching[10:30, 25:45] = 2
    weight = contact.contact_weights(touching, 10.0)
    np.testing.assert_allclose(weight[10:30, 24:26], 11.0)
    assert (weight[10:30, 5:23] == 1).all() and (weight[10:30, 27:45] == 1).all()
    assert weight[8, 24] > 5  # the notch just outside, where a gap would show
    # one nucleus, none, or no gain: nothing to weigh
    for lonely, gain in ((labels * (labels == 1), 10.0), (np.zeros_like(labels), 10.0), (labels, 0.0)):
        assert (contact.contact_weights(lonely, gain) == 1).all()


def test_contact_weight_multiplies_into_every_sample_of_the_dataset() -> None:
    from model_export.data import ScaledDataset

    image, labels = _three_nuclei_on_a_slope()
    labels[95:105, 60:70] = 4  # a fourth, touching nothing
    labels[100, 50:60] = 0
    items = [(image, labels, 21.0)]
    same = {"scale_jitter": (1.0, 1.0), "seed": 2, "samples_per_epoch": 6, "synthetic": 0.5}
    both = ScaledDataset(items, 96, 21.0, **same, dim_weight=4.0, contact_weight=10.0)
    dim_only = ScaledDataset(items, 96, 21.0, **same, dim_weight=4.0)
    for i in range(6):
        a, b = both[i], dim_only[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        expected = b[2].numpy() * contact.contact_weights(b[1].numpy(), 10.0)
        np.testing.assert_allclose(a[2].numpy(), expected)
    synthetic = ScaledDataset(items, 96, 21.0, **{**same, "synthetic": 1.0}, contact_weight=10.0)
    assert any(float(synthetic[i][2].max()) > 5 for i in range(3))  # synthetic nuclei touch too


@pytest.mark.parametrize(
    "flag, key", [("--dim-weight", "dim_weight"), ("--contact-weight", "contact_weight")]
)
def test_training_a_few_steps_with_a_weight_gain_records_it(tmp_path: Path, flag: str, key: str) -> None:
    from model_export import train
    from tests.export.conftest import TINY

    root = write_dsb_folder(tmp_path / "data", n=6, seed=10)
    out = tmp_path / "run"
    train.main([
        *TINY, "--dsb", str(root), "--val-fraction", "0.5", "--diameter", "12", flag, "4", "--out", str(out),
    ])
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    other = ({"dim_weight", "contact_weight"} - {key}).pop()
    assert checkpoint["data"][key] == 4.0 and checkpoint["data"][other] == 0.0 and checkpoint["step"] == 3
    assert np.isfinite(checkpoint["history"][-1]["train_loss"])
