"""Fuzzing the decoders with a fixed-seed corpus of mutated real files (tests/fuzz_corpus.py).

Whatever the bytes, the readers raise only what the routes map to a 4xx: an ImageError subclass
(400, 413, 415) or a SelectionError (422). Anything else would be a 500. Issue 15 found 9 of 400
byte-flipped TIFFs answered 500 (TypeError, ValueError escaping Pillow and tifffile), and a
PNG chunk length pointing past the file costing libpng ~10 s.
"""

from __future__ import annotations

import collections
import contextlib

import pytest

from service import imaging, microscopy, web
from service.structure import Limits
from tests.fuzz_corpus import MUTATIONS, mutants, seeds

LIMIT = 10_000_000
MAPPED = (imaging.ImageError, microscopy.SelectionError)
PER_SEED = 24  # × 25 seed files = 600 mutants, each through four readers (a few seconds)


def test_the_corpus_is_real_and_reproducible() -> None:
    """The seeds decode (else the mutants test nothing) and the same seed gives the same mutants."""
    for name, data in seeds().items():
        assert microscopy.probe(data, LIMIT, Limits()).width > 0, name
    first = [(m.name, m.data) for m in mutants(4)]
    assert first == [(m.name, m.data) for m in mutants(4)]
    assert first != [(m.name, m.data) for m in mutants(4, seed=16)]
    kinds = collections.Counter(m.name.split("-")[-2] for m in mutants(4))
    assert set(kinds) == set(MUTATIONS)


def _readers(data: bytes) -> dict:
    return {
        "probe": lambda: microscopy.probe(data, LIMIT, Limits()),
        "select": lambda: microscopy.select(data, microscopy.Selection(), LIMIT, Limits()),
        "select-z1-channel1": lambda: microscopy.select(data, microscopy.Selection(channel="1", z=1), LIMIT,
                                                        Limits()),
        "preview": lambda: web.render_preview(data, LIMIT, limits=Limits()),
    }


def test_mutants_raise_only_errors_that_map_to_4xx() -> None:
    escaped: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    for mutant in mutants(PER_SEED):
        for reader, call in _readers(mutant.data).items():
            try:
                call()
                outcomes["decoded"] += 1
            except MAPPED as exc:
                outcomes[type(exc).__name__] += 1
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append(f"{mutant.name} {reader}: {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped[:20])
    # The corpus exercises both sides: many mutants still decode, many are refused.
    assert outcomes["decoded"] > 100 and outcomes["UndecodableImage"] > 100, outcomes


@pytest.mark.parametrize("name", sorted(seeds()))
def test_truncation_at_forty_points_is_an_image_error(name: str) -> None:
    data = seeds()[name]
    for end in range(1, len(data) - 1, max(1, len(data) // 40)):
        with contextlib.suppress(MAPPED):  # anything else fails the test
            microscopy.select(data[:end], microscopy.Selection(channel="0", z=0), LIMIT, Limits())


#: The seeds a slide or stack job reads by path (``slide_files.open_slide``) and the client cuts
#: frames from (``frames.cut_frame``): TIFFs of every kind, DeltaVision, ZVI and Imaris.
BY_PATH = ("tiff-page", "tiff-rgb", "tiff-pages", "tiff-tiled", "tiff-lzw", "ome-tiff-channels",
           "imagej-hyperstack", "tiff-lsm", "tiff-metaseries", "dv-stack", "oib-zvi", "ims-stack")


def test_mutants_read_by_path_raise_only_errors_that_map_to_4xx(tmp_path) -> None:
    """A slide's header is as hostile as an upload's: tifffile's ZeroDivisionError on a tiled page
    with a zero tile length, and TypeError on per-sample BitsPerSample, escaped ``open_slide``."""
    from service import frames, slide_files

    path = tmp_path / "slide"
    escaped: list[str] = []
    for mutant in mutants(40):
        if not mutant.name.startswith(BY_PATH):
            continue
        path.write_bytes(mutant.data)

        def window() -> None:
            with slide_files.open_slide(path, microscopy.Selection(channel="1", z=0), max_pixels=LIMIT,
                                        limits=Limits()) as source:
                source.read(0, 1, 0, 1)

        def cut() -> None:
            frames.cut_frame(path, "t", 1, microscopy.Selection(), LIMIT)

        for reader, call in (("open_slide", window), ("cut_frame", cut)):
            try:
                call()
            except (*MAPPED, OSError):
                pass
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append(f"{mutant.name} {reader}: {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped[:20])
