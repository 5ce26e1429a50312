"""Set how an exported model's foreground becomes objects, without touching its weights.

    python -m model_export objects --model models/nuclei-unet.onnx --set min_confidence=0.75 \\
        --version 2.2.0

The ``unet.objects`` metadata entry (``service.objects.ObjectParams``: split method, minimum
area, seed prominence, confidence cut, ...) is chosen on validation data after training; this
command writes new values into it, gives the file a new version (the objects it yields change, so
results made with it must be told apart from the old ones), and re-seals it
(``model_export.seal``). The graph, weights and every other entry stay as they were.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import onnx

from model_export.seal import replace_file, seal_proto
from service import model_checksum
from service.objects import ObjectParams

OBJECTS_KEY, VERSION_KEY = "unet.objects", "unet.version"


def parse_setting(text: str) -> tuple[str, object]:
    """``"name=value"`` → (name, value) for a field of :class:`ObjectParams`, typed as that field."""
    name, sep, value = text.partition("=")
    known = {f.name: f.type for f in fields(ObjectParams)}
    if not sep or name not in known:
        raise ValueError(f"--set {text!r}: expected NAME=VALUE with NAME one of {', '.join(known)}")
    kind = known[name] if isinstance(known[name], str) else known[name].__name__
    try:
        return name, {"int": int, "float": float, "str": str}[kind](value)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"--set {text!r}: {value!r} is not a valid {kind}") from exc


def set_objects(path: Path, settings: dict[str, object], version: str) -> dict[str, object]:
    """Write ``settings`` into the model's objects entry and ``version`` as its version, then seal it.

    Returns the new objects entry. The new entry must still make valid object parameters.
    """
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if OBJECTS_KEY not in props:
        raise ValueError(f"{path}: no {OBJECTS_KEY} entry (not a model exported by model_export)")
    entry = {**json.loads(props[OBJECTS_KEY]), **settings}
    ObjectParams.from_metadata(entry)  # a bad method or value fails here, before the file is touched
    props[OBJECTS_KEY], props[VERSION_KEY] = json.dumps(entry), json.dumps(version)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    checksum = seal_proto(proto)  # sealed before it is written: never a file with a stale seal
    data = proto.SerializeToString()
    if model_checksum.verify(data) != checksum:
        raise ValueError(f"{path}: the sealed bytes do not verify; not written")
    replace_file(path, data)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export objects",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file to change in place")
    parser.add_argument("--set", action="append", required=True, metavar="NAME=VALUE", help="repeatable")
    parser.add_argument("--version", required=True, help="the model's new version")
    args = parser.parse_args(argv)
    try:
        settings = dict(parse_setting(text) for text in args.set)
        entry = set_objects(args.model, settings, args.version)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{args.model}: version {args.version}, objects {json.dumps(entry)}")
    return 0
