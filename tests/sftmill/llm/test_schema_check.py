import copy
import json
from pathlib import Path

import jsonschema
import pytest

from sftmill.llm.request import parse_structured
from sftmill.llm.schema_check import compile_check

SCHEMAS = sorted((Path(__file__).parents[3] / "prompts").glob("*.schema.json"))


def valid_instance(schema):
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: valid_instance(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [valid_instance(schema.get("items", {})) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    return {"integer": 3, "number": 0.5, "boolean": True, "null": None}.get(kind, "x")


def mutations(schema, value, path=()):
    """(what changed, the instance) — each one step away from a valid one."""
    kind = schema.get("type")
    yield "int", 7
    yield "float", 1.0
    yield "bool", True
    yield "none", None
    yield "str", "a string that is long enough"
    if kind == "string":
        yield "too short", "x" * max(0, schema.get("minLength", 0) - 1)
        if "maxLength" in schema:
            yield "too long", "x" * (schema["maxLength"] + 1)
    if "enum" in schema:
        yield "out of enum", 99
    if kind == "array":
        yield "too few", value[:max(0, schema.get("minItems", 0) - 1)]
        if "maxItems" in schema:
            yield "too many", value + [value[0]] * schema["maxItems"]
        for what, m in mutations(schema.get("items", {}), value[0]):
            yield f"item {what}", [m] + value[1:]
    if kind == "object":
        for name in schema.get("required", []):
            yield f"no {name}", {k: v for k, v in value.items() if k != name}
        yield "extra key", {**value, "unexpected": 1}
        for name, sub in schema.get("properties", {}).items():
            for what, m in mutations(sub, value[name]):
                yield f"{name}: {what}", {**value, name: m}


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_the_fast_check_says_valid_only_when_jsonschema_does(path):
    schema = json.loads(path.read_text())
    fast = compile_check(schema)
    assert fast is not None  # every template's schema is in the part it covers
    validator = jsonschema.validators.validator_for(schema)(schema)
    good = valid_instance(schema)
    assert validator.is_valid(good) and fast(good)
    invalid = 0
    for what, instance in mutations(schema, good):
        if not validator.is_valid(instance):
            invalid += 1
            assert not fast(instance), what
    assert invalid >= 5  # the mutations reach the checks


def test_keywords_outside_the_part_fall_back_to_jsonschema():
    assert compile_check({"type": "string", "pattern": "^a"}) is None
    assert compile_check({"type": "object", "additionalProperties": {"type": "string"}}) is None
    assert compile_check({"type": "array", "items": [{"type": "string"}]}) is None
    # Not sure is not "invalid": jsonschema decides, and accepts 2.0 as an integer.
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert not compile_check(schema)({"n": 2.0})
    assert parse_structured('{"n": 2.0}', copy.deepcopy(schema)) == {"n": 2.0}
    with pytest.raises(ValueError, match="n: 'two' is not of type 'integer'"):
        parse_structured('{"n": "two"}', schema)
