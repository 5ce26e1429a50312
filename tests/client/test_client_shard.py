"""``unet-segment --shard INDEX/COUNT``: COUNT runs split a folder with no overlap and nothing
missed, the same way every time, and a re-run shard skips what it already wrote. The real client
against the real service on loopback, real PNGs; what each run sent is read from the server's
own counters."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import client
from tests.client.conftest import write_png
from tests.client.test_client_jobs import counts
from tests.models import write_conv_model
from tests.server import REPO, Server

#: Seven images in nested folders, names chosen so that path order differs from creation order.
NAMES = ["b.png", "a.png", "sub/c.png", "sub/a.png", "z/y/x.png", "m.png", "sub/zz.png"]
ARGS = ["--no-progress", "--retries", "3", "--output", "objects"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("shard-server")
    service = Server({"UNET_MODEL_PATH": str(write_conv_model(folder / "conv.onnx"))}, folder / "service.log")
    try:
        yield service.wait_ready(180)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for k, name in enumerate(NAMES):
        write_png(folder / name, 40 + k, 32)
    return folder


def outputs(folder: Path) -> set[str]:
    """The per-image outputs in ``folder`` (summaries and reports left out)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")
            if not p.name.startswith("summary")}


def segment(server: Server, images: Path, out: Path, *extra: str) -> int:
    return client.main([str(images), "--out", str(out), "--url", server.url, *ARGS, *extra])


ALL = {Path(name).with_suffix(".csv").as_posix() for name in NAMES}


def test_shards_are_disjoint_cover_every_image_and_are_stable(
    server: Server, images: Path, tmp_path: Path
) -> None:
    count = 3
    shards = []
    for index in range(count):
        sent_before = counts(server)[0]
        assert segment(server, images, tmp_path / f"shard{index}", "--shard", f"{index}/{count}") == 0
        shards.append(outputs(tmp_path / f"shard{index}"))
        assert counts(server)[0] - sent_before == len(shards[-1]), "a shard sent images it did not write"
    assert set().union(*shards) == ALL
    for a, b in itertools.combinations(shards, 2):
        assert not a & b, (a, b)
    assert sorted(len(s) for s in shards) == [2, 2, 3]  # balanced: sizes differ by at most one

    # The same inputs always give the same shard (a pod re-run, or another machine).
    assert segment(server, images, tmp_path / "again", "--shard", f"1/{count}") == 0
    assert outputs(tmp_path / "again") == shards[1]


def test_shards_sharing_one_output_folder_fill_it_and_a_rerun_shard_sends_nothing(
    server: Server, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "volume-out"  # one folder, as on the Job's shared volume
    for index in range(2):
        assert segment(server, images, out, "--shard", f"{index}/2") == 0
    assert outputs(out) == ALL
    # Each shard summarised its own images under its own name; neither overwrote the other's.
    for index in range(2):
        rows = (out / f"summary.shard-{index}-of-2.csv").read_text().splitlines()[1:]
        assert len(rows) == len(NAMES) // 2 + (index == 0)
    assert not (out / "summary.csv").exists()

    sent_before = counts(server)[0]
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.csv") if not p.name.startswith("summary")}
    assert segment(server, images, out, "--shard", "1/2") == 0
    assert counts(server)[0] == sent_before, "a re-run shard sent images whose outputs exist"
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_the_index_comes_from_job_completion_index(server: Server, images: Path, tmp_path: Path) -> None:
    """The pod's command line: ``--shard COUNT``, INDEX from the variable Kubernetes sets."""
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    assert segment(server, images, explicit, "--shard", "2/3") == 0
    env = {k: v for k, v in os.environ.items() if k != "UNET_API_KEY"} | {"JOB_COMPLETION_INDEX": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.client", str(images), "--out", str(from_env), "--url", server.url,
         *ARGS, "--shard", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "shard 2/3: 2 of 7 images" in proc.stderr
    assert outputs(from_env) == outputs(explicit)


def test_shard_membership_ignores_the_order_files_are_listed_in(tmp_path: Path) -> None:
    jobs = [client.Job(tmp_path / "in" / name, tmp_path / "out" / name) for name in NAMES]
    for count in range(1, 9):
        reference = [client.shard_jobs(jobs, tmp_path / "out", client.Shard(i, count)) for i in range(count)]
        shuffled = random.Random(count).sample(jobs, len(jobs))
        assert [client.shard_jobs(shuffled, tmp_path / "out", client.Shard(i, count))
                for i in range(count)] == reference
        assert sorted(j.target for part in reference for j in part) == sorted(j.target for j in jobs)


@pytest.mark.parametrize("spec, env, expected", [
    ("1/3", None, (1, 3)),
    ("0/1", None, (0, 1)),
    ("4", "3", (3, 4)),
    (" 2/5 ", "0", (2, 5)),  # an explicit INDEX wins over the variable
])
def test_shard_arguments_parse(monkeypatch: pytest.MonkeyPatch, spec: str, env: str | None,
                               expected: tuple[int, int]) -> None:
    if env is None:
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    else:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", env)
    config = client.parse_config(["in", "--out", "out", "--shard", spec])
    assert config.shard == client.Shard(*expected)


@pytest.mark.parametrize("spec, env", [("3/3", None), ("0/0", None), ("-1/2", None), ("a/b", None),
                                       ("4", None), ("4", "4"), ("4", "x")])
def test_bad_shard_arguments_are_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              spec: str, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    else:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", env)
    with pytest.raises(SystemExit) as exit_info:
        client.parse_config(["in", "--out", "out", "--shard", spec])
    assert exit_info.value.code == client.EXIT_USAGE
    assert "--shard" in capsys.readouterr().err
