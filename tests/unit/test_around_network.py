"""benchmarks/around_network.py: the network's answers are recorded once and replayed exactly, so
a request's work around the network can be timed on its real outputs."""

from __future__ import annotations

import numpy as np
import pytest

from service.api import Segmenter
from service.engine import Engine
from service.settings import Settings
from tests.benchmark_scripts import load_benchmark
from tests.models import write_conv_model
from tests.unit.test_segment import synthetic_nuclei

around_network = load_benchmark("around_network")


def test_a_recorded_answer_is_replayed_and_an_unseen_batch_stops_the_replay() -> None:
    calls: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch * 2.0

    network = around_network.ReplayedNetwork(run)
    batch = np.arange(24, dtype=np.float32).reshape(1, 1, 4, 6)
    recorded = network(batch)
    recorded += 100.0  # the pipeline turns answers into probabilities in place
    network.recording = False
    np.testing.assert_array_equal(network(batch.copy()), batch * 2.0)
    assert calls == [(1, 1, 4, 6)] and network.replayed == 1
    with pytest.raises(RuntimeError, match="never saw"):
        network(batch + 1.0)


def test_a_replayed_request_answers_what_the_recorded_one_did(tmp_path) -> None:
    path = write_conv_model(tmp_path / "conv.onnx", seed=3, nucleus_diameter=20.0)
    engine = Engine.load(path, providers=["CPUExecutionProvider"], intra_op_threads=1)
    network = around_network.ReplayedNetwork(engine.run)
    engine.run = network
    image = synthetic_nuclei(300, 260, seed=2)
    with Segmenter(engine, Settings(providers=["CPUExecutionProvider"])) as segmenter:
        recorded = segmenter.segment(image, outputs=("mask", "labels"))
        network.recording = False
        replayed = segmenter.segment(image, outputs=("mask", "labels"))
    assert network.replayed > 0
    np.testing.assert_array_equal(replayed.mask, recorded.mask)
    np.testing.assert_array_equal(replayed.labels, recorded.labels)
