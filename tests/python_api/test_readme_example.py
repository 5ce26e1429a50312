"""The README's Python API example, run as written: the documentation cannot drift from the code."""

from __future__ import annotations

import contextlib
import io
import os
import re

import numpy as np
import pytest

from tests.python_api.conftest import nuclei_image
from tests.server import REPO

pytestmark = pytest.mark.slow

SECTION = "## Python API and local batch mode"


def readme_example() -> str:
    """The first ```python block of the README's Python API section."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no ```python block under {SECTION!r}"
    return blocks[0]


def test_readme_python_example_runs_and_finds_the_nuclei(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2")
    image, count = nuclei_image(size=192, grid=4, seed=3)
    assert cv2.imwrite(str(tmp_path / "cells.tif"), image)  # the file name the example uses
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("UNET_")]:
        monkeypatch.delenv(name)  # the example's defaults: the bundled model, default settings

    code = readme_example()
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md (Python API example)", "exec"), namespace)  # noqa: S102
    try:
        result = namespace["result"]
        line = printed.getvalue()
        assert re.fullmatch(rf"{count} nuclei, typical diameter \d+ px\n", line), line
        assert result.labels.shape == image.shape and result.labels.max() == count
        assert np.array_equal(namespace["labels"], result.labels)
        assert len(result.objects) == count and {"centroid_x", "area"} <= set(result.objects[0])
    finally:
        namespace["segmenter"].close()
