r"""Logging: plain or JSON lines, each stamped with the current request id.

The request id lives in a context variable set by the request middleware, so log lines from
anywhere in the request (the route, the segmentation thread via ``anyio.to_thread``, which
copies the context) carry it without passing it around.

Nothing a client sends can forge a log line or drive a terminal: request paths arrive
percent-decoded (``GET /livez%0A2026-… INFO …`` holds a real line feed), headers may hold
obs-text that decodes to C1 controls, and exception messages quote inputs. So the plain format
escapes every control character (``\n``, ``\r``, ``\t``, ``\x1b``, ``\x85``, ``\u2028`` …)
and the backslash itself, which keeps the escaping reversible; a traceback's lines are escaped
too and indented, so a line that starts at column 0 is always the start of a record. JSON mode
escapes the same characters as JSON ``\uXXXX`` escapes: one valid JSON object per line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: ``extra=`` keys the JSON formatter copies into the object (the access line's fields).
_EXTRA_FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "client",
    "bytes_in",
    "bytes_out",
    "tiles",
    "output",
    "user_agent",
)


#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: everything a terminal
#: or a line-splitting log reader (Python's ``str.splitlines`` among them) may act on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` on one line without control characters: backslash-escaped, reversibly."""
    return _CONTROL.sub(_escape_char, text.replace("\\", "\\\\"))


def _json_escape(text: str) -> str:
    # json.dumps already escapes C0 controls; DEL, C1 and U+2028/9 are legal raw in JSON but
    # split lines (or drive terminals) in readers downstream.
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, plus access fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in _EXTRA_FIELDS:
            if hasattr(record, key):
                obj[key] = getattr(record, key)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return _json_escape(json.dumps(obj, ensure_ascii=False, default=str))


class PlainFormatter(logging.Formatter):
    """``time level logger [request id] message``, every field escaped onto one line.

    A traceback keeps its lines (readable) but each is escaped and indented by two spaces:
    an exception message that quotes a client's line feed cannot start a line of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        return escape(super().formatMessage(record))

    def formatException(self, ei) -> str:  # noqa: ANN001, N802 - logging's API
        return "\n".join("  " + escape(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's API
        return "\n".join("  " + escape(line) for line in stack_info.splitlines())


def configure(json_lines: bool, level: str = "INFO") -> None:
    """Route the service's and uvicorn's logs to stderr in one format.

    uvicorn's own access log is silenced: the service writes exactly one line per request
    itself (with the request id, route and timing), and two lines per request would double
    log volume for nothing.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
