"""A step's prompt from its template: the request's input and earlier steps' outputs filled in, and
the pieces a map step fans out over."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fleet.pipelines.config import PLACEHOLDER

__all__ = ["RenderError", "chunks", "field_of", "map_items", "parsed", "render"]

#: A step's outputs by name: a text, or a map step's list of its items' texts (in item order).
Outputs = Mapping[str, str | list[str]]


class RenderError(Exception):
    """A step's input cannot be built (a map over something that is not a list, say)."""


def parsed(text: str) -> Any:
    """A model's output as JSON when it is JSON, else the text itself."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def field_of(outputs: Outputs, step: str, field: str | None) -> Any:
    """``steps.STEP`` or ``steps.STEP.FIELD`` as data. A map step's field is the items' values,
    flattened one level (each chunk's list of claims: every claim)."""
    out = outputs.get(step)
    if out is None:
        return None
    if isinstance(out, list):
        values = [parsed(o) for o in out]
        if field is None:
            return values
        flat: list[Any] = []
        for v in values:
            got = v.get(field) if isinstance(v, dict) else None
            if isinstance(got, list):
                flat.extend(got)
            elif got is not None:
                flat.append(got)
        return flat
    if field is None:
        return out
    value = parsed(out)
    return value.get(field) if isinstance(value, dict) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1)


def render(
    template: str, *, input: str, outputs: Outputs, item: Any = None, index: int | None = None,
    count: int | None = None,
) -> str:  # fmt: skip
    """``template`` with its placeholders filled in (a missing field renders empty)."""

    def fill(match: Any) -> str:
        path = match.group(1)
        if path == "input":
            return input
        if path == "item":
            return _text(item)
        if path == "index":
            return str((index or 0) + 1)
        if path == "count":
            return str(count or 0)
        parts = path.split(".")
        return _text(field_of(outputs, parts[1], parts[2] if len(parts) > 2 else None))

    return PLACEHOLDER.sub(fill, template)


def chunks(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut at a paragraph end, else a line end,
    else a space, else anywhere; no piece is empty."""
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest) <= size:
            pieces.append(rest)
            break
        window = rest[:size]
        cut = -1
        for mark in ("\n\n", "\n", " "):
            cut = window.rfind(mark)
            if cut > size // 4:
                break
        if cut <= size // 4:
            cut = size
        piece, rest = rest[:cut].strip(), rest[cut:].strip()
        if piece:
            pieces.append(piece)
    return pieces


def map_items(source: str, outputs: Outputs, input: str, chunk_chars: int, max_items: int) -> list[Any]:
    """The items a map step fans out over.

    Raises:
        RenderError: the source is not a list, is empty, or is longer than ``max_items``.
    """
    if source == "chunks":
        items: Any = chunks(input, chunk_chars)
    else:
        _, step, field = source.split(".")
        items = field_of(outputs, step, field)
        if not isinstance(items, list):
            raise RenderError(f"map over {source}: step {step}'s output has no list {field!r}")
    if not items:
        raise RenderError(f"map over {source}: no items")
    if len(items) > max_items:
        raise RenderError(f"map over {source}: {len(items)} items, over max_items {max_items}")
    return list(items)
