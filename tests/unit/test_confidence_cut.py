"""benchmarks/confidence_cut.py picks a cut by the rule written for 2.1.0: the largest F1 gain over
no cut that loses at most 0.001 of recall."""

from __future__ import annotations

from tests.benchmark_scripts import load_benchmark


def test_the_rule_takes_the_best_f1_among_cuts_that_keep_recall() -> None:
    choose = load_benchmark("confidence_cut").choose
    # (F1, precision, recall) per cut: the --dim-nuclei candidate on DSB training images, 2026-12-01
    table = {
        0.0: (0.8725, 0.8938, 0.8623),
        0.7: (0.8747, 0.8980, 0.8622),
        0.75: (0.8765, 0.9018, 0.8618),
        0.8: (0.8780, 0.9063, 0.8604),  # better F1, but recall -0.0019
        0.85: (0.8804, 0.9145, 0.8572),
    }
    assert choose(table) == 0.75
    # no cut improves F1: none is taken, even one that keeps recall
    assert choose({0.0: (0.9, 0.9, 0.9), 0.8: (0.9, 0.95, 0.9)}) == 0.0
    # a little recall lost (under the limit) is allowed; more is not
    assert choose({0.0: (0.80, 0.8, 0.900), 0.9: (0.81, 0.9, 0.8995)}) == 0.9
    assert choose({0.0: (0.80, 0.8, 0.900), 0.9: (0.81, 0.9, 0.8985)}) == 0.0
