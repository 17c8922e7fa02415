"""A fast yes/no check of a structured answer against its JSON schema.

The LLM layer validates every structured answer; with `jsonschema` that was
~6 % of the LLM loop's samples at 256 requests in flight.  The templates'
schemas use a small part of JSON Schema (objects with properties, required
and additionalProperties, strings with lengths, arrays with item counts,
enums, the scalar types), which `compile_check` turns into nested Python
closures, built once per schema.  The check only ever says "valid" when
`jsonschema` would: anything it is unsure about (a keyword outside that
part, `1.0` for an integer, a boolean among an enum's numbers) is "not
sure", and `parse_structured` then asks `jsonschema`, which also words the
error.
"""

from __future__ import annotations

from typing import Any, Callable

Check = Callable[[Any], bool]

# Keywords that change nothing about validity.
_ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "default", "examples", "$comment"})
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_SUPPORTED = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "minLength",
                             "maxLength", "items", "minItems", "maxItems", "enum"}


def compile_check(schema: Any) -> Check | None:
    """A function that returns True only for instances valid under `schema`
    (False: invalid, or not sure); None when the schema uses a keyword
    outside the supported part."""
    if not isinstance(schema, dict) or not set(schema) <= _SUPPORTED:
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else kind
        if not isinstance(kinds, list) or any(k not in _TYPES for k in kinds):
            return None
        tests = [_TYPES[k] for k in kinds]
        checks.append(tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests)))
    if "enum" in schema:
        allowed = schema["enum"]
        if not isinstance(allowed, list) or any(type(a) not in (str, int) for a in allowed):
            return None
        allowed_set = frozenset(allowed)
        checks.append(lambda v: type(v) in (str, int) and v in allowed_set)
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None or high is not None:
        low, high = low or 0, high if high is not None else float("inf")
        checks.append(lambda v: type(v) is not str or low <= len(v) <= high)
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        props = {name: compile_check(sub) for name, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties", True)
        required = schema.get("required") or []
        if any(c is None for c in props.values()) or not isinstance(extra, bool):
            return None
        closed = frozenset(props) if extra is False else None

        def object_ok(v: Any) -> bool:
            if type(v) is not dict:
                return True  # not an object: for "type" to decide
            if closed is not None and not v.keys() <= closed:
                return False
            for name in required:
                if name not in v:
                    return False
            for name, value in v.items():
                check = props.get(name)
                if check is not None and not check(value):
                    return False
            return True

        checks.append(object_ok)
    if "items" in schema or "minItems" in schema or "maxItems" in schema:
        item = compile_check(schema["items"]) if "items" in schema else (lambda v: True)
        if item is None:
            return None
        fewest, most = schema.get("minItems", 0), schema.get("maxItems", float("inf"))
        checks.append(lambda v: type(v) is not list or (fewest <= len(v) <= most and all(map(item, v))))
    return lambda v: all(c(v) for c in checks)
