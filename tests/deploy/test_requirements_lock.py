"""docker/requirements-{gpu,cpu}.txt: the images' locked runtime set agrees with pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement

from tests.deploy.helpers import LOCK_FILES, ROOT
from tests.deploy.test_dockerfile import lock


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: The images' platform (both: Python 3.12 on Linux x86-64), for pyproject's environment markers.
IMAGE_ENVIRONMENT = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix", "python_version": "3.12", "python_full_version": "3.12.0"}


def base_dependencies() -> list[Requirement]:
    """pyproject's base dependencies that apply in the images (markers evaluated for their platform)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = [Requirement(d) for d in deps]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(IMAGE_ENVIRONMENT)]


@pytest.mark.parametrize("variant", LOCK_FILES)
def test_lock_pins_every_base_dependency_within_its_range(variant: str) -> None:
    pins = lock(variant)
    for req in base_dependencies():
        name = canonical(req.name)
        if name == "onnxruntime-gpu" and variant == "cpu":
            # Same module, CPU kernels only; the specifier still applies.
            name = "onnxruntime"
        assert name in pins, (
            f"pyproject depends on {req} but {LOCK_FILES[variant].name} lacks it: run docker/lock.py"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK_FILES[variant].name} pins {name}=={pins[name]}, outside pyproject's {req}"
        )


@pytest.mark.parametrize("variant", LOCK_FILES)
def test_lock_is_exact_pins_only(variant: str) -> None:
    for line in LOCK_FILES[variant].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9.+!\-]+", line), f"not an exact pin: {line!r}"


def test_both_images_pin_the_same_versions_but_onnxruntime() -> None:
    gpu, cpu = lock("gpu"), lock("cpu")
    assert gpu.pop("onnxruntime-gpu") == cpu.pop("onnxruntime")
    differ = {n for n in gpu.keys() | cpu.keys() if gpu.get(n) != cpu.get(n)}
    assert not differ, f"CPU and GPU locks disagree on {sorted(differ)}: run docker/lock.py"


def service_imports() -> set[str]:
    """Top-level modules imported anywhere in ``service/`` (static: every import, lazy ones too)."""
    names: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"service", "__future__"}


@pytest.mark.parametrize("variant", LOCK_FILES)
def test_every_module_the_service_imports_is_in_the_image(variant: str) -> None:
    pins = lock(variant)
    providers = packages_distributions()
    for module in sorted(service_imports()):
        dists = {canonical(d) for d in providers.get(module, [])}
        if variant == "cpu" and "onnxruntime-gpu" in dists:
            dists.add("onnxruntime")  # same module, CPU build
        assert dists, f"service imports {module!r}, which no installed distribution provides"
        assert dists & pins.keys(), (
            f"service imports {module!r} (from {sorted(dists)}) but {LOCK_FILES[variant].name} lacks it: "
            "add it to pyproject's base dependencies and run docker/lock.py (never torch: see FACTS)"
        )
