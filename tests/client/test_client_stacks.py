"""``unet-segment --z all --output labels --stitch-z``: a stack's slices linked into 3-D nuclei, by a
real server and in local mode, the same as ``Segmenter.segment_stack`` (service.client_stacks)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from model_export.synth_stack import StackConfig, synth_stack
from service import client, client_stacks, zstack
from service.api import Segmenter
from tests.client.test_local_mode import unet_segment
from tests.python_api.conftest import BUNDLED_MODEL

pytestmark = pytest.mark.slow

XY_UM, Z_UM = 0.4, 1.2


@pytest.fixture(scope="module")
def stack_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated ImageJ z-stack as Fiji saves one, beside a 2-D image (no stack: no 3-D files)."""
    folder = tmp_path_factory.mktemp("stacks")
    image, _ = synth_stack(5, StackConfig(depth=12, size=112, nuclei=8))
    tifffile.imwrite(folder / "cells.tif", image, imagej=True, resolution=(1 / XY_UM, 1 / XY_UM),
                     metadata={"axes": "ZYX", "spacing": Z_UM, "unit": "um"})
    tifffile.imwrite(folder / "flat.tif", image[6])
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_a_stack_becomes_3d_nuclei_as_the_python_api_finds_them(
    stack_folder: Path, service_url: str, tmp_path: Path
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    args = ("--z", "all", "--output", "labels", "--stitch-z")
    by_server = unet_segment(str(stack_folder), "--out", str(remote), "--url", service_url, *args)
    in_process = unet_segment(str(stack_folder), "--out", str(local), *args)
    assert by_server.returncode == in_process.returncode == 0, by_server.stderr + in_process.stderr
    assert "1 stack(s) linked into 3-D nuclei" in by_server.stderr
    assert "(estimated on cells.tif z=6)" in by_server.stderr  # the middle slice, as segment_stack

    with Segmenter.load(BUNDLED_MODEL) as segmenter:
        expected = segmenter.segment_stack(stack_folder / "cells.tif")
    for out in (remote, local):
        with tifffile.TiffFile(out / "cells.labels3d.tif") as tif:
            labels = tif.asarray()
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
            assert tif.imagej_metadata["spacing"] == pytest.approx(Z_UM)
        assert np.array_equal(labels, expected.labels), out
        rows = read_rows(out / "cells.objects3d.csv")
        header = (out / "cells.objects3d.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header == expected.objects_csv().splitlines()[0]  # the API's columns, intensities too
        assert [int(r["id"]) for r in rows] == [row["id"] for row in expected.objects]
        for row, want in zip(rows, expected.objects, strict=True):
            assert float(row["volume_um3"]) == pytest.approx(want["volume_um3"])
            assert float(row["centroid_z_um"]) == pytest.approx(want["centroid_z_um"])
            # Intensities from the slices as the service read them (the client reads them back).
            assert float(row["mean_intensity"]) == pytest.approx(want["mean_intensity"])
            assert float(row["integrated_intensity"]) == pytest.approx(want["integrated_intensity"])
        # A 2-D file in the same run is segmented as before and gets no 3-D files.
        assert (out / "flat.png").is_file() and not (out / "flat.labels3d.tif").exists()
    assert expected.object_count >= 6
    for out in (remote, local):  # one line per stack, for a batch of many
        [line] = read_rows(out / "stacks.csv")
        assert (line["file"], line["labels"]) == (str(stack_folder / "cells.tif"), "cells.labels3d.tif")
        assert int(line["nuclei"]) == expected.object_count
        volumes = [row["volume_um3"] for row in expected.objects]
        assert float(line["mean_volume_um3"]) == pytest.approx(sum(volumes) / len(volumes), abs=1e-3)
        ends = sum(row["touches_stack_end"] for row in expected.objects)
        assert int(line["touching_stack_end"]) == ends
    per_slice = sum(int(client_stacks.read_labels(p).max()) for p in local.glob("cells_z*.png"))
    assert per_slice > 3 * expected.object_count  # what counting slice by slice said before


def test_a_resumed_run_stitches_and_a_missing_slice_is_said(stack_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = (str(stack_folder / "cells.tif"), "--out", str(out), "--z", "all", "--output", "labels")
    assert unet_segment(*args).returncode == 0  # slices only
    assert not (out / "cells.labels3d.tif").exists()
    again = unet_segment(*args, "--stitch-z", "0.5")
    assert again.returncode == 0, again.stderr
    assert "0 written, 12 skipped" in again.stderr and (out / "cells.labels3d.tif").is_file()

    (out / "cells.labels3d.tif").unlink()
    (out / "cells_z03.png").unlink()
    kind = client.OUTPUT_KINDS["labels"]
    jobs = client.plan_jobs([(stack_folder / "cells.tif", Path("cells.tif"))], out, kind, "z")
    done, problems = client_stacks.stitch_outputs(jobs, kind.existing, 0.25)
    assert done == [] and len(problems) == 1 and "1 of 12 slices have no labels (z=3)" in problems[0]
    assert not (out / "cells.labels3d.tif").exists()
    # A slice that is not a label image (overwritten by hand, a disk fault) is said, not a crash.
    (out / "cells_z03.png").write_bytes(b"not a PNG")
    done, problems = client_stacks.stitch_outputs(jobs, kind.existing, 0.25)
    assert done == [] and "cannot stitch its slices" in problems[0] and "cells_z03.png" in problems[0]
    assert not (out / "cells.labels3d.tif").exists() and not list(out.glob(".*.part"))


def test_a_resumed_run_segments_the_slices_left_at_the_first_runs_diameter(
    stack_folder: Path, tmp_path: Path
) -> None:
    """Interrupted after some slices (the middle one among them), a rerun must not estimate again on
    another slice: the stack would be segmented at two scales. It reuses the first run's."""
    out = tmp_path / "out"
    args = (str(stack_folder / "cells.tif"), "--out", str(out), "--z", "all", "--output", "labels",
            "--stitch-z")
    first = unet_segment(*args)
    assert first.returncode == 0, first.stderr
    whole = tifffile.imread(out / "cells.labels3d.tif")
    # The middle slice is segmented at its own estimate, the others at it to 0.1 px: the folder
    # says which slice that was, so that a rerun that lost it estimates it there again.
    kept = json.loads((out / client.STITCH_DIAMETER_FILE).read_text(encoding="utf-8"))
    assert json.loads(kept["estimated_on"]) == [str(stack_folder / "cells.tif"), [["z", 6]]]
    for z in (2, 6, 7, 11):  # the middle slice and others lost, as if the run had stopped early
        (out / f"cells_z{z:02d}.png").unlink()
    (out / "cells.labels3d.tif").unlink()
    again = unet_segment(*args)
    assert again.returncode == 0, again.stderr
    assert "4 written, 8 skipped" in again.stderr and "as the run that segmented their first" in again.stderr
    assert np.array_equal(tifffile.imread(out / "cells.labels3d.tif"), whole)


def test_a_kept_diameter_from_before_the_slice_was_named_is_still_used(tmp_path: Path) -> None:
    config = client.parse_config([str(tmp_path), "--out", str(tmp_path), "--z", "all", "--output", "labels",
                                  "--stitch-z"])
    path = tmp_path / client.STITCH_DIAMETER_FILE
    path.write_text('{"diameter": 15.7}', encoding="utf-8")
    assert client.stitch_diameter_kept(config) == client.KeptDiameter(15.7, None)
    for broken in ('{"diameter": 0}', "[15.7]", "not JSON", '{"diameter": "x"}'):
        path.write_text(broken, encoding="utf-8")
        assert client.stitch_diameter_kept(config) is None, broken


def test_the_command_line_says_what_stitching_needs(stack_folder: Path, tmp_path: Path) -> None:
    for wrong in (("--z", "all"), ("--output", "labels"), ("--z", "3", "--output", "labels")):
        done = unet_segment(str(stack_folder), "--out", str(tmp_path), *wrong, "--stitch-z")
        assert done.returncode == 2 and "needs --z all and --output labels" in done.stderr, wrong
    done = unet_segment(str(stack_folder), "--out", str(tmp_path), "--z", "all", "--output", "labels",
                        "--stitch-z", "0")
    assert done.returncode == 2 and "must be in (0, 1]" in done.stderr
    config = client.parse_config([str(stack_folder), "--out", str(tmp_path), "--z", "all", "--output",
                                  "labels", "--stitch-z"])
    assert config.stitch_z == zstack.DEFAULT_MIN_IOU and config.diameter_once
    assert f"default: {zstack.DEFAULT_MIN_IOU:g}," in client.build_parser().format_help().replace("\n", " ")
    sharded = unet_segment(str(stack_folder), "--out", str(tmp_path), "--z", "all", "--output", "labels",
                           "--stitch-z", "--shard", "0/2")
    assert sharded.returncode == 2 and "--stitch-z with --shard needs --diameter PX" in sharded.stderr
    assert client.parse_config([str(stack_folder), "--out", str(tmp_path), "--z", "all", "--output", "labels",
                                "--stitch-z", "--shard", "0/2", "--diameter", "20"]).shard is not None
    given = client.parse_config([str(stack_folder), "--out", str(tmp_path), "--z", "all", "--output",
                                 "labels", "--stitch-z", "0.4", "--diameter", "18"])
    assert given.stitch_z == 0.4 and not given.diameter_once and given.diameter == 18


def test_the_middle_slice_goes_first(stack_folder: Path, tmp_path: Path) -> None:
    kind = client.OUTPUT_KINDS["labels"]
    jobs = client.plan_jobs([(stack_folder / "cells.tif", Path("cells.tif"))], tmp_path, kind, "z")
    ordered = client.middle_slice_first(jobs)
    assert ordered[0].plane == (("z", 6),) and sorted(ordered, key=jobs.index) == jobs
    resumed = [j for j in jobs if j.plane != (("z", 6),)]
    assert client.middle_slice_first(resumed)[0].plane in ((("z", 5),), (("z", 7),))


def test_measure_and_expand_with_stitch_z_give_the_3d_table_and_cells_of_the_python_api(
    service_url: str, tmp_path: Path
) -> None:
    """--measure and --expand with --stitch-z: the measured channel's columns in the 3-D table,
    the cells grown in 3-D (``NAME.cells3d.tif``) and their columns, by a server (which gets the
    slices without measure= or expand=, as labels carry no table) and locally, as
    ``segment_stack(measure=, expand=)`` gives them."""
    nuclei, _ = synth_stack(9, StackConfig(depth=6, size=96, nuclei=6))
    marker = np.random.default_rng(2).integers(0, 3000, nuclei.shape).astype(nuclei.dtype)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "two.tif", np.stack([nuclei, marker], axis=1), imagej=True,
                     metadata={"axes": "ZCYX", "Labels": ["DAPI", "EdU"] * 6})
    args = ("--z", "all", "--output", "labels", "--stitch-z", "--channel", "DAPI", "--measure", "EdU",
            "--diameter", "16", "--expand", "3")
    remote, local = tmp_path / "remote", tmp_path / "local"
    by_server = unet_segment(str(folder), "--out", str(remote), "--url", service_url, *args)
    in_process = unet_segment(str(folder), "--out", str(local), *args)
    assert by_server.returncode == in_process.returncode == 0, by_server.stderr + in_process.stderr
    with Segmenter.load(BUNDLED_MODEL) as segmenter:
        expected = segmenter.segment_stack(folder / "two.tif", channel="DAPI", measure="EdU", diameter=16,
                                           expand=3)
    assert expected.object_count > 2 and "mean_intensity_EdU" in expected.objects[0]
    assert expected.cells is not None and sum(r["cytoplasm_volume_voxels"] > 0 for r in expected.objects) > 2
    for out, run in ((remote, by_server), (local, in_process)):
        rows = read_rows(out / "two.objects3d.csv")
        assert [int(r["id"]) for r in rows] == [row["id"] for row in expected.objects], out
        for row, want in zip(rows, expected.objects, strict=True):
            assert float(row["mean_intensity_EdU"]) == pytest.approx(want["mean_intensity_EdU"])
            assert float(row["integrated_intensity_EdU"]) == pytest.approx(want["integrated_intensity_EdU"])
            for key in ("cell_volume_voxels", "cytoplasm_volume_voxels"):
                assert int(row[key]) == want[key], (out, key)
            assert float(row["mean_intensity_cytoplasm_EdU"] or "nan") == pytest.approx(
                want["mean_intensity_cytoplasm_EdU"] or float("nan"), nan_ok=True)
        with tifffile.TiffFile(out / "two.cells3d.tif") as tif:
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
            np.testing.assert_array_equal(tif.asarray(), expected.cells)
        assert "no z-step" in run.stderr  # grown as cubes, and said so
        assert not list(out.glob(".cells3d-*"))  # no scratch left


def test_a_stack_chosen_in_a_lif_project_is_linked_as_the_python_api_links_it(tmp_path: Path) -> None:
    """``--series 1 --z all --stitch-z`` on a LAS X project: each slice is cut out of the chosen
    image and read back for the 3-D table the same way (without series=: the cut holds that image
    alone); the nuclei, the z-step and the intensities are ``segment_stack(series=1)``'s."""
    from tests.lif_files import Image, lif_bytes

    image, _ = synth_stack(5, StackConfig(depth=12, size=112, nuclei=8))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "session.lif").write_bytes(lif_bytes([
        Image("Overview", image[6, :64, :64]),
        Image("Stack", image, "ZYX", pixel_um=XY_UM, z_um=Z_UM),
    ]))
    done = unet_segment(str(folder), "--out", str(tmp_path / "out"), "--series", "1", "--z", "all",
                        "--output", "labels", "--stitch-z")
    assert done.returncode == 0, done.stderr
    assert "1 stack(s) linked into 3-D nuclei" in done.stderr
    with Segmenter.load(BUNDLED_MODEL) as segmenter:
        expected = segmenter.segment_stack(folder / "session.lif", series=1)
    labels = tifffile.imread(tmp_path / "out" / "session.labels3d.tif")
    assert np.array_equal(labels, expected.labels) and labels.max() > 0
    rows = read_rows(tmp_path / "out" / "session.objects3d.csv")
    assert [int(r["id"]) for r in rows] == [row["id"] for row in expected.objects]
    for row, want in zip(rows, expected.objects, strict=True):
        assert float(row["volume_um3"]) == pytest.approx(want["volume_um3"])
        assert float(row["mean_intensity"]) == pytest.approx(want["mean_intensity"])
