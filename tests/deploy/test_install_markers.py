"""pyproject's environment markers pick the ONNX Runtime build each platform has wheels for.

``onnxruntime-gpu`` is published for Linux x86-64 and Windows x86-64 only; everywhere else
(macOS, Linux ARM, Windows ARM) ``pip install -e .`` must get ``onnxruntime`` (the same module,
CPU kernels). The markers are evaluated with ``packaging`` (what pip itself uses) against each
platform's marker environment: ``pip install --dry-run --platform ...`` would not do, since pip
evaluates markers for the interpreter it runs on, whatever ``--platform`` says.
"""

from __future__ import annotations

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy.helpers import ROOT

ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu")

#: Marker environments as these platforms' CPython reports them (``platform.machine()`` is
#: ``AMD64`` / ``ARM64`` on Windows, ``arm64`` on Apple silicon, ``aarch64`` on Linux ARM).
PLATFORMS = {
    "macOS arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
    "macOS x86-64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "Linux x86-64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "Linux aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
    "Windows x86-64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                       "os_name": "nt"},
    "Windows ARM64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "ARM64",
                      "os_name": "nt"},
}
EXPECTED = {
    "macOS arm64": "onnxruntime",
    "macOS x86-64": "onnxruntime",
    "Linux x86-64": "onnxruntime-gpu",
    "Linux aarch64": "onnxruntime",
    "Windows x86-64": "onnxruntime-gpu",
    "Windows ARM64": "onnxruntime",
}


def ort_requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.name in ORT_BUILDS]


def installed_on(environment: dict[str, str]) -> list[str]:
    """The ONNX Runtime distributions ``pip install .`` would pull on that platform."""
    env = {**default_environment(), **environment}
    return [r.name for r in ort_requirements() if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_gets_the_onnxruntime_build_it_has_wheels_for(platform: str) -> None:
    assert installed_on(PLATFORMS[platform]) == [EXPECTED[platform]]


@pytest.mark.parametrize("sys_platform", ["linux", "darwin", "win32", "freebsd13", "cygwin"])
@pytest.mark.parametrize("machine", ["x86_64", "AMD64", "aarch64", "arm64", "ARM64", "ppc64le", "i686"])
def test_the_two_markers_never_overlap_nor_leave_a_gap(sys_platform: str, machine: str) -> None:
    # PEP 508 has no `not`: the CPU marker is written as the GPU marker's complement by hand.
    assert len(installed_on({"sys_platform": sys_platform, "platform_machine": machine})) == 1


def test_both_builds_ask_for_the_same_versions() -> None:
    specifiers = {str(r.specifier) for r in ort_requirements()}
    assert len(specifiers) == 1, f"onnxruntime and onnxruntime-gpu: one version range, not {specifiers}"
