"""Documents for a JSON schema: a small valid instance, and an answer that misses the schema.

The mock provider uses them to answer calls that ask for a ``response_schema``.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["mismatch_instance", "schema_instance"]

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _resolve(root: Any, ref: str) -> Any:
    node = root
    for part in ref.lstrip("#").strip("/").split("/") if ref.startswith("#") else []:
        if not part:
            continue
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    step = 1 if integer else 0.5
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        lo = max(lo if lo is not None else -math.inf, schema["exclusiveMinimum"] + step)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        hi = min(hi if hi is not None else math.inf, schema["exclusiveMaximum"] - step)
    value: float = lo if lo is not None else (hi if hi is not None and hi < 1 else 1)
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
    return math.ceil(value) if integer else float(value)


def schema_instance(schema: Any, root: Any = None, _depth: int = 0) -> Any:
    """A small document valid against ``schema`` (type, enum/const, required, bounds, $ref)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or _depth > 20:
        return "mock"
    if "$ref" in schema:
        return schema_instance(_resolve(root, schema["$ref"]), root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if isinstance(schema.get("allOf"), list):
        return schema_instance(_merge_all_of(schema, root), root, _depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0], root, _depth + 1)
    kind = _type(schema)
    if kind == "object":
        return _object(schema, root, _depth)
    if kind == "array":
        return _array(schema, root, _depth)
    return _scalar(schema, kind)


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """One schema with the properties, required names and other keys of every ``allOf`` part."""
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in schema["allOf"]:
        sub = _resolve(root, sub["$ref"]) if isinstance(sub, dict) and "$ref" in sub else sub
        if isinstance(sub, dict):
            merged["properties"] = {**merged.get("properties", {}), **sub.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *sub.get("required", [])]
            merged.update({k: v for k, v in sub.items() if k not in ("properties", "required")})
    return merged


def _type(schema: dict[str, Any]) -> Any:
    """The schema's type: the first that is not "null" of a list, else guessed from its keywords."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema or "required" in schema else "string"
        kind = "array" if "items" in schema or "prefixItems" in schema else kind
    return kind


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    props = schema.get("properties") or {}
    out = {name: schema_instance(sub, root, depth + 1) for name, sub in props.items()}
    extra = schema.get("additionalProperties")
    for name in schema.get("required") or []:
        if name not in out:
            out[name] = schema_instance(extra, root, depth + 1) if isinstance(extra, dict) else "mock"
    return out


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = [schema_instance(s, root, depth + 1) for s in schema.get("prefixItems") or []]
    count = max(int(schema.get("minItems", 1)), len(prefix))
    count = min(count, int(schema.get("maxItems", count)))
    item = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    items = prefix[:count]
    for i in range(len(items), count):
        value = schema_instance(item, root, depth + 1)
        # uniqueItems: vary scalars so that copies differ.
        items.append(f"{value}-{i}" if isinstance(value, str) and i else value + i if _num(value) else value)
    return items


def _scalar(schema: dict[str, Any], kind: Any) -> Any:
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = _FORMATS.get(str(schema.get("format")), "mock answer")
    text = text.ljust(int(schema.get("minLength", 0)), "x")
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mismatch_instance(schema: Any) -> str:
    """Answer text (JSON where possible) that does not validate against ``schema``."""
    import jsonschema  # lazily: only schema_mismatch faults need it

    good = schema_instance(schema)
    candidates: list[Any] = []
    if isinstance(good, dict) and good:
        candidates.append(dict(list(good.items())[1:]))
        candidates.append([good])
    candidates += ["not the requested document", 12345, [], {"unexpected": True}, None]
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        for candidate in candidates:
            if not validator.is_valid(candidate):
                return json.dumps(candidate)
    except jsonschema.exceptions.SchemaError:
        pass  # an invalid schema: any prose fails it
    return "Sorry, I cannot answer that as JSON."
