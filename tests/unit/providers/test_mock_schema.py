"""The mock's schema documents: a small instance that validates, and an answer that does not."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from fleet.providers.mock_schema import mismatch_instance, schema_instance

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "required": ["score", "tier"], "properties": {"score": {"type": "integer"}}},
    {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 2},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "string", "format": "date-time"},
    {"type": "string", "minLength": 20, "maxLength": 25},
    {"type": ["null", "boolean"]},
    {"enum": ["b", "a"]},
    {"const": {"k": 1}},
    {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "uniqueItems": True},
    {"prefixItems": [{"type": "boolean"}, {"type": "null"}], "minItems": 2},
    {
        "allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"$ref": "#/$defs/b"}],
        "$defs": {"b": {"properties": {"b": {"type": "integer", "minimum": 5}}, "required": ["b"]}},
    },
    {"anyOf": [{"type": "integer", "maximum": -4}, {"type": "string"}]},
    {"type": "object", "required": ["x"], "additionalProperties": {"type": "number", "minimum": 2}},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_the_instance_validates_and_the_mismatch_does_not(schema: dict[str, Any]) -> None:
    jsonschema.validate(schema_instance(schema), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(mismatch_instance(schema)), schema)


def test_a_reference_cycle_ends() -> None:
    # Given a schema that refers to itself, the instance is still finite
    assert schema_instance({"$ref": "#"}) == "mock"


def test_the_instance_is_the_smallest_plain_document() -> None:
    # A schema without "type" is read from its keywords; array copies differ; allOf parts all count
    assert schema_instance({"prefixItems": [{"type": "boolean"}, {"type": "null"}]}) == [True, None]
    assert schema_instance({"items": {"type": "integer", "minimum": 2}, "minItems": 2}) == [2, 3]
    assert schema_instance({"items": {}, "minItems": 2}) == ["mock answer", "mock answer-1"]
    merged = {
        "allOf": [{"required": ["c"]}, {"$ref": "#/$defs/b"}],
        "$defs": {"b": {"properties": {"b": {"type": "integer", "minimum": 5}}}},
    }
    assert schema_instance(merged) == {"b": 5, "c": "mock"}
