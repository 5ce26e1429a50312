"""The nucleus-diameter estimate with the bundled model, on synthetic nuclei of known size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model_export.data import SynthConfig, synth_nuclei
from model_export.dsb import median_diameter
from service import diameter
from service.diameter import (
    FIRST_LOOK_FACTORS,
    PROBE_FACTORS,
    PROBE_SIZE,
    Probe,
    _first_look,
    _outvoted_by_one_object,
    _plateau,
    estimate_diameter,
)
from service.engine import Engine
from service.objects import params_for_model

REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "nuclei-unet.onnx"


@pytest.fixture(scope="module")
def model() -> Engine:
    return Engine.load(REAL_MODEL, providers=["CPUExecutionProvider"], intra_op_threads=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "radius",
    [
        pytest.param(
            4,
            marks=pytest.mark.xfail(
                strict=True,
                reason="known limit of the bundled network (2.0.0: ×1.34; 2.2.0: ×1.37): synthetic "
                "nuclei of radius 4 px, mostly touching, come out merged at every scale (~28 merged "
                "objects per image at the true diameter), "
                "so every probe reads them ×1.3 large and the plateau agrees on that; the estimate "
                "cost 2.0.0 no F1 there (0.449 vs 0.452 with the true diameter), and on the real DSB "
                "validation images the median error is ×1.03–1.04; see the model card (issue #13)",
            ),
        ),
        15,
        40,
    ],
)
def test_estimate_is_within_20_percent_of_the_true_diameter(model: Engine, radius: int) -> None:
    config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
    size = max(192, 14 * radius)  # room for a few dozen nuclei
    errors = []
    for k in range(3):
        image, truth = synth_nuclei(9_000_000 + 100 * radius + k, size, config)
        estimate = estimate_diameter(image, model.run, model.metadata, params_for_model(model.metadata))
        assert estimate.diameter is not None
        errors.append(abs(math.log(estimate.diameter / median_diameter(truth))))
    assert math.exp(float(np.median(errors))) < 1.2, f"median error ×{math.exp(float(np.median(errors))):.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7_004_002, 7_006_002])
def test_large_nuclei_with_few_whole_ones_in_the_image_are_measured_whole(model: Engine, seed: int) -> None:
    # Radius 40 and 60 px in a 560² / 840² image: 8–10 nuclei, at most two of them whole at
    # the scales that see them whole. Requiring three whole nuclei per probe read texture
    # spots instead (4.1 px for 84 px, and 30 px for 71 px; issue #13).
    radius = (seed - 7_000_000) // 100
    config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
    image, truth = synth_nuclei(seed, 14 * radius, config)
    estimate = estimate_diameter(image, model.run, model.metadata, params_for_model(model.metadata))
    assert estimate.diameter is not None
    true_diameter = median_diameter(truth, whole_only=True)  # the cut ones read small
    error = math.exp(abs(math.log(estimate.diameter / true_diameter)))
    assert error < 1.2, f"estimated {estimate.diameter:.1f} px for {true_diameter:.1f} px"


def test_the_probes_stay_bounded_on_a_large_image(model: Engine) -> None:
    shapes: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return model.run(batch)

    image, _ = synth_nuclei(5, (1500, 1300), SynthConfig(radius=(10.0, 10.0)))
    estimate_diameter(image, infer, model.metadata, params_for_model(model.metadata))
    assert shapes and all(max(s[2:]) <= PROBE_SIZE + 16 for s in shapes)  # never the whole image


def test_the_ladder_runs_in_batches_with_the_same_answer_as_one_probe_at_a_time(
    model: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diameter, "FIRST_LOOK_FACTORS", ())  # the whole ladder at once
    batches: list[int] = []

    def batched(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.shape[0])
        return model.run(batch)

    def one_by_one(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([model.run(batch[i : i + 1]) for i in range(batch.shape[0])])

    image, _ = synth_nuclei(5, (1500, 1300), SynthConfig(radius=(10.0, 10.0)))
    params = params_for_model(model.metadata)
    together = estimate_diameter(image, batched, model.metadata, params)
    apart = estimate_diameter(image, one_by_one, model.metadata, params)
    # probes of one shape share a model run: far fewer runs than probes
    assert max(batches) >= 6 and len(batches) <= len(together.probes) // 2
    assert together == apart
    # and never more than the caller's batch at once (the service's queue is sized for that)
    batches.clear()
    limited = estimate_diameter(image, batched, model.metadata, params, batch_size=2)
    assert max(batches) == 2 and limited == together


@pytest.mark.parametrize("seed", [6_100_001, 6_100_027])
def test_a_field_of_noise_without_nuclei_is_not_enlarged(model: Engine, seed: int) -> None:
    # Noise, background and haze without nuclei (1 and 0 true ones): its specks read 1.6 and
    # 3.1 px, and the image used to be enlarged ×12 and ×6 into thousands of "nuclei".
    from service import pipeline

    image, _ = synth_nuclei(seed, 512, SynthConfig(coverage=(0.0, 0.0)))
    params = params_for_model(model.metadata)
    estimate = estimate_diameter(image, model.run, model.metadata, params)
    smallest = model.metadata.nucleus_diameter / max(PROBE_FACTORS)
    assert estimate.diameter is None and estimate.out_of_range is not None
    assert estimate.out_of_range < smallest
    scale = pipeline.choose_scale(image, model.run, model.metadata, None, 10**8)
    assert (scale.source, scale.factor, scale.diameter) == ("model-scale", 1.0, None)
    assert "outside" in scale.warning and "diameter=" in scale.warning


def test_specks_that_do_not_grow_with_the_image_do_not_enlarge_it(model: Engine) -> None:
    # Noise and haze with one true nucleus (seed 6100147, model 2.2.0): no probe found two whole
    # objects; the one nearest the model's size read 8.5 px, and the refinement step enlarging the
    # image ×2.3 toward it outlined 149 specks of 5.6 px: smaller, where nuclei grow. (With 2.0.0,
    # seed 6100006 was such a field: two probes agreed on 6.1-px specks, and the image was enlarged
    # ×3.3 into 1,336 objects; 2.2.0, trained with near-empty fields, no longer outlines them.)
    from service import pipeline

    image, _ = synth_nuclei(6_100_147, 512, SynthConfig(coverage=(0.0, 0.0)))
    params = params_for_model(model.metadata)
    estimate = estimate_diameter(image, model.run, model.metadata, params)
    assert estimate.diameter is None and estimate.not_nuclei == pytest.approx(8.5, abs=0.3)
    refined = estimate.probes[-1]  # the refinement step, past the ladder
    assert refined.factor > 2 and refined.objects > 100 and refined.median_diameter < 8.5
    scale = pipeline.choose_scale(image, model.run, model.metadata, None, 10**8)
    assert (scale.source, scale.factor, scale.diameter) == ("model-scale", 1.0, None)
    assert "did not grow with the image" in scale.warning and "diameter=" in scale.warning


def test_the_one_nucleus_of_a_near_empty_field_sets_the_scale_not_its_specks(model: Engine) -> None:
    # Seed 6100021 (a tuning field: one nucleus of 19 px): several probes see it whole; without the
    # one-object run a lone probe of haze won and the estimate read 122 px (the image shrunk ×0.16).
    # Seed 6100049 (two nuclei, 33 px median): a lone probe of specks won at 5.4 px, enlarging the
    # image ×3.7 into specks.
    params = params_for_model(model.metadata)
    image, truth = synth_nuclei(6_100_021, 512, SynthConfig(coverage=(0.0, 0.0)))
    estimate = estimate_diameter(image, model.run, model.metadata, params)
    assert estimate.diameter == pytest.approx(median_diameter(truth), rel=0.2)
    image, _ = synth_nuclei(6_100_049, 512, SynthConfig(coverage=(0.0, 0.0)))
    estimate = estimate_diameter(image, model.run, model.metadata, params)
    assert estimate.diameter is not None and estimate.diameter > model.metadata.nucleus_diameter


@pytest.mark.slow
@pytest.mark.parametrize("radius", [3, 4, 6, 8])
def test_small_nuclei_enlarged_by_the_estimate_grow_with_it(model: Engine, radius: int) -> None:
    # The other side of the rule above: images of real (synthetic) small nuclei, which the estimate
    # enlarges, are never taken for specks (accuracy aside: radius 3-4 read ×1.3-1.5 large).
    config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
    for k in range(3):
        image, _ = synth_nuclei(9_000_000 + 100 * radius + k, 192, config)
        estimate = estimate_diameter(image, model.run, model.metadata, params_for_model(model.metadata))
        assert estimate.not_nuclei is None and estimate.diameter is not None
        assert estimate.diameter < model.metadata.nucleus_diameter  # it does enlarge them


def test_an_empty_image_has_no_diameter(model: Engine) -> None:
    flat = np.full((300, 300), 100, np.uint16)
    estimate = estimate_diameter(flat, model.run, model.metadata, params_for_model(model.metadata))
    assert estimate.diameter is None


def _ladder(sizes: list[tuple[float, int]]) -> list[Probe]:
    """Probes on the service's √2 ladder from ×4 down: (median diameter in model px, objects)."""
    return [Probe(f, d, n) for f, (d, n) in zip(PROBE_FACTORS, sizes, strict=False)]


def test_the_plateau_of_whole_nuclei_beats_fragments_closer_to_the_model_size() -> None:
    # Large nuclei (~170 px): zoomed in, the model outlines chromatin spots of about its own
    # size (20 px) whose implied size moves with each step; from ×1/4 down it sees whole
    # nuclei whose implied size stays put although they come out farther from 20 px.
    probes = _ladder(
        [
            (10, 3),
            (13, 4),
            (10, 7),
            (9, 6),
            (11, 21),
            (8, 48),
            (20, 22),
            (50, 6),
            (44, 4),
            (29, 9),
            (21, 18),
            (16, 18),
            (12, 16),
        ]  # fmt: skip
    )
    implied = [p.median_diameter / p.factor for p in _plateau(probes, 20.0)]
    assert len(implied) >= 3
    assert all(150 < d < 200 for d in implied), implied


def test_one_nucleus_seen_alike_at_many_scales_outvotes_a_lone_probe_of_specks() -> None:
    # A near-empty field holding one nucleus of ~46 px (as 2.2.0 saw seed 6100049): zoomed in,
    # one probe finds 14 noise specks near the model's size; from ×1 down every probe finds the
    # one nucleus, 46 px in image px at each scale. Before, the lone speck probe won and the
    # image was enlarged ×3.7.
    specks = [(9.0, 9), (15.2, 14)]
    one_nucleus = [(91.6, 1), (65.5, 1), (46.2, 1), (32.7, 1), (23.0, 1), (16.5, 1), (11.6, 1), (7.9, 1)]
    probes = _ladder(specks + one_nucleus)
    plateau = _plateau(probes, 20.0)
    assert [p.objects for p in plateau] == [14]  # several objects, one probe
    chosen = _outvoted_by_one_object(probes, plateau, 20.0)
    assert len(chosen) == 5 and all(44 < p.median_diameter / p.factor < 47 for p in chosen)
    # the estimate starts from the probe nearest the model's size on it
    assert min(chosen, key=lambda p: abs(math.log(p.median_diameter / 20))).median_diameter == 23.0


def test_one_object_per_probe_does_not_outvote_an_as_long_run_of_many_or_a_short_run() -> None:
    # Many nuclei of ~11 px seen whole at three scales; zoomed in, the window holds one whole
    # nucleus at three scales too: the run of many stays (not longer), and two agreeing
    # single-object probes never count.
    many = _ladder([(45, 1), (32, 1), (22.5, 1), (16, 30), (11.3, 60), (8.1, 80), (5, 90)])
    plateau = _plateau(many, 20.0)
    assert [p.objects for p in plateau] == [30, 60, 80]
    assert len(_plateau(many, 20.0, min_objects=1, max_objects=1)) == 3  # as long: not taken
    assert _outvoted_by_one_object(many, plateau, 20.0) == plateau
    two = _ladder([(9.0, 9), (15.2, 14), (0, 0), (46.2, 1), (32.7, 1), (0, 0)])
    plateau = _plateau(two, 20.0)
    assert _outvoted_by_one_object(two, plateau, 20.0) == plateau


def test_a_long_plateau_of_two_whole_nuclei_beats_a_pair_of_agreeing_fragments() -> None:
    # Nuclei ~120 px in a small image: from ×1/2√2 down only two lie whole inside it, but
    # their size in image px stays put over five steps; zoomed in, the model outlines many
    # chromatin spots, two neighbouring scales of which happen to agree.
    probes = _ladder(
        [
            (8.2, 10),
            (8.7, 14),
            (12.0, 25),
            (9.0, 37),
            (24.0, 10),
            (85.0, 2),
            (60.0, 2),
            (42.0, 2),
            (30.0, 2),
            (21.0, 2),
            (15.0, 2),
            (10.6, 2),
            (7.5, 2),
        ]  # fmt: skip
    )
    implied = [p.median_diameter / p.factor for p in _plateau(probes, 20.0)]
    assert len(implied) == 5
    assert all(110 < d < 130 for d in implied), implied


def test_no_plausible_probe_means_no_plateau() -> None:
    probes = _ladder([(0, 0), (3, 1), (90, 2)])
    assert _plateau(probes, 20.0) == []


def test_a_gap_in_the_ladder_breaks_a_plateau() -> None:
    # Same implied size, but the probe between them is missing (window too small).
    a, c = Probe(PROBE_FACTORS[4], 20.0, 5), Probe(PROBE_FACTORS[6], 10.0, 5)
    assert [len(run) for run in [_plateau([a, c], 20.0)]] == [1]


def _middle(sizes: list[tuple[float, int]]) -> list[Probe]:
    """Probes at the first look's factors (×√2, ×1, ×1/√2): (median diameter in model px, objects)."""
    return [Probe(f, d, n) for f, (d, n) in zip(FIRST_LOOK_FACTORS, sizes, strict=True)]


def test_the_first_look_settles_on_nuclei_of_about_the_model_size_seen_whole_at_all_three_scales() -> None:
    # ~21 px nuclei: 29.7 / 21 / 14.8 model px at ×√2 / ×1 / ×1/√2, one size in image px.
    settled = _first_look(_middle([(29.7, 20), (21.0, 40), (14.8, 80)]), 20.0)
    assert [round(p.factor, 3) for p in settled] == [1.414, 1.0, 0.707]


@pytest.mark.parametrize(
    "sizes",
    [
        # One size, but ×1/√2 (×√2) reads it closest to the model's size: the scale beyond it may be
        # closer still, so the rest of the ladder decides.
        [(48.8, 20), (34.5, 40), (24.4, 80)],
        [(21.0, 20), (14.8, 40), (10.5, 80)],
        [(29.7, 20), (21.0, 40), (8.0, 1)],  # one scale sees too few whole nuclei
        [(12.0, 30), (21.0, 40), (14.8, 80)],  # ×√2 sees fragments: the sizes disagree
    ],
)
def test_the_first_look_leaves_anything_less_clear_to_the_whole_ladder(
    sizes: list[tuple[float, int]],
) -> None:
    assert _first_look(_middle(sizes), 20.0) == []


def test_when_an_end_of_the_first_look_reads_closest_the_probe_past_it_decides() -> None:
    # ~15 px nuclei: ×√2 reads closest (21 px), so ×2 is probed next.
    middle = _middle([(21.0, 20), (14.8, 40), (10.5, 80)])
    assert diameter._beyond_closest_end(middle, PROBE_FACTORS, 20.0) == PROBE_FACTORS[2]  # ×2
    farther = [Probe(PROBE_FACTORS[2], 29.5, 10), *middle]  # ×2 reads farther: ×√2 is the closest
    assert [round(p.factor, 3) for p in _first_look(farther, 20.0)] == [2.0, 1.414, 1.0, 0.707]
    closer = [Probe(PROBE_FACTORS[2], 21.5, 10), *_middle([(17.0, 20), (12.0, 40), (8.5, 80)])]
    assert _first_look(closer, 20.0) == []  # still nearing the model's size: the ladder decides
    # Nothing to probe past a bracketed closest, nor past a broken plateau.
    for sizes in ([(29.7, 20), (21.0, 40), (14.8, 80)], [(12.0, 30), (21.0, 40), (14.8, 80)]):
        assert diameter._beyond_closest_end(_middle(sizes), PROBE_FACTORS, 20.0) is None


def test_the_first_look_needs_all_three_scales() -> None:
    # A small image whose ×1/√2 window is too small to hold a few nuclei: no probe there.
    assert _first_look(_middle([(29.7, 20), (21.0, 40), (14.8, 80)])[:2], 20.0) == []


def _counting(model: Engine) -> tuple[list[int], object]:
    windows: list[int] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        windows.append(batch.shape[0])
        return model.run(batch)

    return windows, infer


@pytest.mark.parametrize(("radius", "settles"), [(7, True), (40, False)])
def test_the_first_look_gives_the_whole_ladders_estimate(
    model: Engine, radius: int, settles: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nuclei of the model's size are settled by the three middle probes (and up to three refinement
    # steps); large ones need the rest of the ladder. Either way the answer is the whole ladder's.
    config = SynthConfig(radius=(radius, radius), flat_padding=0.0, field_step=0.0)
    image, _ = synth_nuclei(7_100_000 + radius, 14 * radius + 280, config)
    params = params_for_model(model.metadata)
    looked_windows, infer = _counting(model)
    first = estimate_diameter(image, infer, model.metadata, params)
    monkeypatch.setattr(diameter, "FIRST_LOOK_FACTORS", ())
    ladder_windows, infer = _counting(model)
    whole = estimate_diameter(image, infer, model.metadata, params)
    assert first.diameter is not None and first.diameter == whole.diameter
    if settles:
        assert sum(looked_windows) <= len(FIRST_LOOK_FACTORS) + 1 + diameter.REFINE_STEPS
        assert sum(ladder_windows) >= len(PROBE_FACTORS) - 2  # the full ladder (less what did not fit)
    else:
        assert sum(looked_windows) == sum(ladder_windows)  # nothing run twice
