"""Seal an ONNX model file with its checksum (``unet.sha256``), which the service verifies at load.

    python -m model_export seal --model models/nuclei-unet.onnx

``export`` seals every file it writes; this command seals one exported before seals existed
(or re-seals one whose metadata was edited on purpose). Only the seal entry is added: the
weights, graph and other metadata stay byte for byte as they were (checked after writing).
See ``service.model_checksum`` for what the checksum covers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx

from service import model_checksum


class SealError(RuntimeError):
    """The sealed file did not verify, or sealing changed more than the seal."""


def seal_proto(proto: onnx.ModelProto) -> str:
    """Replace ``proto``'s seal with the checksum of its serialised bytes; returns the checksum."""
    keep = [p for p in proto.metadata_props if p.key != model_checksum.CHECKSUM_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    data = proto.SerializeToString()
    proto.metadata_props.add(key=model_checksum.CHECKSUM_KEY, value=model_checksum.seal_value(data))
    return model_checksum.digest(data)


def seal_file(path: str | Path) -> str:
    """Seal the ONNX file at ``path`` in place (atomically); returns the checksum."""
    path = Path(path)
    original = path.read_bytes()
    proto = onnx.load_from_string(original)
    checksum = seal_proto(proto)
    data = proto.SerializeToString()
    # Nothing but the seal may change: the unsealed content of the new file hashes like the old.
    if model_checksum.digest(data) != model_checksum.digest(original):
        raise SealError(f"{path}: re-serialising the model changed its content; not sealed")
    if model_checksum.verify(data) != checksum:
        raise SealError(f"{path}: the sealed bytes do not verify")
    replace_file(path, data)
    return checksum


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` at the existing ``path`` atomically (a reader sees the old file or the new), with
    the old file's permissions."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp makes it 0600; keep who may read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m model_export seal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file to seal in place")
    args = parser.parse_args(argv)
    checksum = seal_file(args.model)
    print(f"sealed {args.model}: {model_checksum.CHECKSUM_KEY} = {checksum}")
    return checksum
