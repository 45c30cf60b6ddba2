"""A span exporter that appends one JSON line per finished span to a file (``--trace-file``).

Every process of a fleet appends to the same file: the file is opened with ``O_APPEND`` and each
line is written with a single ``os.write``, so lines from different processes never interleave.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["JsonLinesSpanExporter", "span_record"]


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON object of one finished span: ids in hex, times in seconds since the epoch."""
    ctx = span.get_span_context()
    assert ctx is not None  # a finished SDK span always has one
    parent = span.parent
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_id": _hex(parent.span_id, 16) if parent is not None and parent.is_valid else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": resource.get("service.name"),
        "attributes": _plain(span.attributes),
        "status": span.status.status_code.name,
        "links": [
            {"trace_id": _hex(link.context.trace_id, 32), "span_id": _hex(link.context.span_id, 16)}
            for link in span.links
        ],
        "start": (span.start_time or 0) / 1e9,
        "end": (span.end_time or 0) / 1e9,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one line of JSON; safe across threads and processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = -1
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> int:
        # A descriptor inherited through fork still appends correctly, but each process opens its own
        # so a child never writes through a descriptor its parent closes.
        if self._fd is None or self._pid != os.getpid():
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._fd

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        try:
            with self._lock:
                fd = self._open()
                for span in spans:
                    line = json.dumps(span_record(span), default=str, separators=(",", ":")) + "\n"
                    os.write(fd, line.encode("utf-8"))  # one write per line: O_APPEND keeps it whole
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written straight through
