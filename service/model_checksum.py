"""The model file's integrity seal: a SHA-256 of the ONNX file, stored in the file itself.

``model_export`` writes ``unet.sha256`` into the ONNX ``metadata_props``; the service recomputes
it before it creates a session, so a file with flipped bits (a bad copy, a bad disk, tampering)
keeps the service not-ready with the reason instead of serving wrong masks.

What is hashed: the file's bytes, top-level protobuf field by field in file order, leaving out
only the metadata entry that holds the seal. So the weights, the graph, the opset and every
other ``unet.*`` entry (threshold, normalisation, tile size …) are all covered, and the seal can
be added to a file without touching anything else. Only the top level of the ``ModelProto`` is
walked (tag, length, skip): no ONNX parser is needed in the serving process, and a file that
is not even valid at that level is reported as such. Weights kept in external data files are
not covered (``model_export`` never writes them).
"""

from __future__ import annotations

import hashlib
import json

#: The metadata key of the seal; its value is JSON like the other ``unet.*`` keys.
CHECKSUM_KEY = "unet.sha256"
#: ``ModelProto.metadata_props`` (repeated ``StringStringEntryProto``: key = 1, value = 2).
_METADATA_FIELD = 14
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


class ChecksumError(ValueError):
    """The seal does not match the file, or is malformed."""


class NotProtobuf(ChecksumError):
    """The bytes are not a protobuf message (so not an ONNX file) at the top level."""


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise NotProtobuf("truncated or malformed protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | memoryview):  # noqa: ANN202 - a generator of (field, wire type, start, body, end)
    """Top-level fields of a protobuf message: ``(number, wire_type, start, body_start, end)``."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, end = _varint(data, pos)
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            end = pos + length
        elif wire == _FIXED64:
            end = pos + 8
        elif wire == _FIXED32:
            end = pos + 4
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise NotProtobuf(f"unexpected protobuf wire type {wire} at byte {start}")
        if number == 0 or end > len(data):
            raise NotProtobuf(f"truncated or malformed protobuf field at byte {start}")
        yield number, wire, start, pos, end
        pos = end


def _entry(body: memoryview) -> tuple[str | None, str | None]:
    """``(key, value)`` of one ``StringStringEntryProto``."""
    key = value = None
    for number, wire, _, body_start, end in _fields(body):
        if wire == _LENGTH_DELIMITED and number in (1, 2):
            text = bytes(body[body_start:end]).decode("utf-8", errors="replace")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def digest_and_seal(data: bytes) -> tuple[str, list[str]]:
    """``("sha256:<hex>", [seals recorded in the file])`` for the bytes of an ONNX file.

    Raises:
        NotProtobuf: the bytes are not a protobuf message at the top level.
    """
    view = memoryview(data)
    sha = hashlib.sha256()
    recorded: list[str] = []
    for number, wire, start, body_start, end in _fields(view):
        if number == _METADATA_FIELD and wire == _LENGTH_DELIMITED:
            key, value = _entry(view[body_start:end])
            if key == CHECKSUM_KEY:
                recorded.append(value or "")
                continue
        sha.update(view[start:end])
    return f"sha256:{sha.hexdigest()}", recorded


def digest(data: bytes) -> str:
    """The seal a file with these bytes should carry: ``sha256:<64 hex digits>``."""
    return digest_and_seal(data)[0]


def seal_value(data: bytes) -> str:
    """The metadata value to store under :data:`CHECKSUM_KEY` (JSON, like every ``unet.*`` key)."""
    return json.dumps(digest(data))


def verify(data: bytes) -> str | None:
    """Check the seal of an ONNX file's bytes.

    Returns the digest when the seal matches, ``None`` when the file carries no seal (exports
    before the seal existed).

    Raises:
        ChecksumError: the seal does not match the bytes (the message says both values), it is
            not valid JSON, or there are several; :class:`NotProtobuf` when the bytes are not a
            protobuf message.
    """
    actual, recorded = digest_and_seal(data)
    if not recorded:
        return None
    if len(recorded) > 1:
        raise ChecksumError(f"the file carries {len(recorded)} '{CHECKSUM_KEY}' entries; expected one")
    try:
        expected = json.loads(recorded[0])
    except json.JSONDecodeError as exc:
        raise ChecksumError(f"'{CHECKSUM_KEY}' is not valid JSON: {exc}") from exc
    if expected != actual:
        raise ChecksumError(
            f"checksum mismatch: the file hashes to {actual} but its '{CHECKSUM_KEY}' says {expected}; "
            "the file is damaged or was altered: copy it again or re-export it"
        )
    return actual
