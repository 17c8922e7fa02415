"""A chat request, its cache key, and its answer: parsed, repaired and validated against the
request's JSON schema."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import json_repair
import jsonschema
import orjson

from sftmill.core.ids import content_id
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.schema_check import compile_check


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    schema: dict[str, Any] | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop sequences (OpenAI `stop`); the text ends before them
    frequency_penalty: float = 0.0  # OpenAI's: lowers the odds of tokens by how often they were written
    stage: str = ""  # for statistics only; not part of the cache key

    @classmethod
    def build(cls, messages: Sequence[dict[str, str]], **kwargs: Any) -> "ChatRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **kwargs)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, model: str) -> str:
        """`content_id(model, messages, schema, sampling, seed)`, the same
        digest built faster (`_key_blob`): a stage computes one per call."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p,
                    "max_tokens": self.max_tokens}
        if self.stop:  # only when set, so keys of earlier calls stay valid
            sampling["stop"] = list(self.stop)
        if self.frequency_penalty:
            sampling["frequency_penalty"] = self.frequency_penalty
        blob = _key_blob(model, self.messages, self.schema, sampling, self.seed)
        if blob is None:
            return content_id(model, self.messages, self.schema, sampling, self.seed)
        return hashlib.sha256(blob).hexdigest()[:16]


def _per_schema(table: dict[int, tuple[Any, Any]], schema: dict[str, Any], make: Callable[[Any], Any]):
    """`make(schema)`, kept in `table` per schema object (no dump of the
    schema per call); the schema is kept beside it, so its id stays its own."""
    known = table.get(id(schema))
    if known is None or known[0] is not schema:
        if len(table) >= 1024:  # a stage that builds a schema per item
            table.clear()
        known = table[id(schema)] = (schema, make(schema))
    return known[1]


def _schema_text(schema: dict[str, Any]) -> bytes:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False, default=str).encode()


_SCHEMA_JSON: dict[int, tuple[Any, bytes]] = {}  # id(schema) → (schema, its JSON)
_SAMPLING_JSON: dict[tuple, bytes] = {}  # the sampling parameters' JSON


def _key_blob(model, messages, schema, sampling, seed) -> bytes | None:
    """The bytes `content_id` hashes for a request key, byte for byte: the
    json module's text (", " and ": " between items, keys sorted, no ASCII
    escaping), with each string encoded by orjson — identical to the json
    module for every code point (a test checks them all) and several times
    faster on prompts of a few KB, which `content_id` spent ~30 µs on.  The
    schema's text is kept per schema object.  None when a part is not of
    the usual types (the caller uses `content_id`)."""
    if type(model) is not str or type(seed) is not int:
        return None
    parts = [b"[", orjson.dumps(model), b", ["]
    first = True
    for message in messages:
        if len(message) != 2 or type(message[0]) is not str or type(message[1]) is not str:
            return None
        parts += [b"[" if first else b", [", orjson.dumps(message[0]), b", ",
                  orjson.dumps(message[1]), b"]"]
        first = False
    schema_json = b"null" if schema is None else _per_schema(_SCHEMA_JSON, schema, _schema_text)
    # (types in the key: 1 and 1.0 are one dictionary key but not one JSON text)
    at = tuple((k, v.__class__, tuple(v) if type(v) is list else v) for k, v in sampling.items())
    sampling_json = _SAMPLING_JSON.get(at)
    if sampling_json is None:
        if len(_SAMPLING_JSON) >= 1024:
            _SAMPLING_JSON.clear()
        sampling_json = _SAMPLING_JSON[at] = json.dumps(
            sampling, sort_keys=True, ensure_ascii=False, default=str).encode()
    parts += [b"], ", schema_json, b", ", sampling_json, b", ", str(seed).encode(), b"]"]
    return b"".join(parts)


@dataclass
class RawCompletion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: int = 1
    # The server's time for the answer (the last attempt's round trip), when
    # the backend knows it; else the call's whole time, waits included.
    latency_s: float | None = None
    batch: bool = False  # answered through a Batch API (recorded as such, priced as such)
    reasoning: str = ""  # the model's reasoning before the answer (`split_reasoning`)


@dataclass
class ChatResult:
    text: str
    data: Any = None  # the parsed, schema-valid JSON when a schema was given
    key: str = ""
    cached: bool = False
    tokens_in: int = 0
    tokens_out: int = 0  # reasoning tokens included, as the OpenAI API counts them
    latency_s: float = 0.0
    reasoning: str = ""  # the model's reasoning before `text`, kept apart from it


_CALL_IDS = itertools.count()
_CALL_PREFIX = uuid.uuid4().hex[:20]  # this process's


def next_call_id() -> str:
    """A unique ID for a call row: 20 random hex digits per process and a
    counter (32 characters, like the uuid4 hex it replaced at a fraction of
    the cost: `uuid4` was 4.5 % of the LLM loop's samples at 256 in flight)."""
    return f"{_CALL_PREFIX}{next(_CALL_IDS):012x}"


@functools.lru_cache(maxsize=256)
def _validator(schema_json: bytes):
    """A checked validator per schema, built once (`jsonschema.validate`
    checks the schema itself on every call: most of a structured call's
    CPU), and the fast check of `schema_check` for it."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema), compile_check(schema)


_BY_SCHEMA: dict[int, tuple[Any, Any]] = {}  # id(schema) → (schema, validators)


def _validators(schema: dict[str, Any]):
    return _per_schema(_BY_SCHEMA, schema, _validators_of)


def _validators_of(schema: dict[str, Any]):
    return _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """Parse `text` as JSON (repairing it if needed) and validate it.

    Raises ValueError with a short explanation when that is impossible.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = json_repair.loads(text)
        if data in ("", None) or (data == [] and not text.strip().startswith("[")):
            raise ValueError("answer is not JSON") from None
    validator, fast = _validators(schema)
    if fast is not None and fast(data):
        return data
    try:
        validator.validate(data)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "answer"
        raise ValueError(f"{where}: {err.message}") from None
    return data


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """Prompt tokens without a tokenizer: a cautious estimate (3 characters a
    token, 8 tokens of chat framing a message)."""
    return sum(len(m["content"]) // 3 + 8 for m in messages)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(content: str, reasoning: str = "") -> tuple[str, str]:
    """(answer, reasoning) of a model's output: the trace a server returns
    apart (`reasoning_content` from vLLM's and SGLang's reasoning parsers and
    DeepSeek's API, `reasoning` from newer vLLM and Ollama) and a
    `<think>…</think>` block that opens the content (Qwen3, the R1 distills
    on a server without a reasoning parser; also a bare `…</think>` when the
    chat template opened the block).  A block that never closes (the token
    budget ran out while the model reasoned) is all trace: the answer is
    empty and the trace is the output as it stands, its opening tag kept."""
    text = content
    stripped = text.lstrip()
    inline = ""
    if stripped.startswith(THINK_OPEN):
        body, closed, rest = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
        inline, text = (body, rest) if closed else (stripped, "")
    elif THINK_CLOSE in text and THINK_OPEN not in text:
        inline, _, text = text.partition(THINK_CLOSE)
    trace = "\n\n".join(t.strip() for t in (reasoning, inline) if t and t.strip())
    return text.strip() if inline or reasoning else text, trace


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first of the stop sequences, as a server cuts it."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(ends)] if ends else text


def completion_of(payload: dict[str, Any], attempts: int = 1, latency_s: float | None = None,
                  batch: bool = False) -> RawCompletion:
    """The text, reasoning and usage of a chat-completion object (online or a
    batch line's body)."""
    try:
        message = payload["choices"][0]["message"]
        content = message["content"] or ""
    except (KeyError, IndexError, TypeError) as err:
        raise LLMOutputError(f"malformed completion payload: {err!r}") from None
    text, reasoning = split_reasoning(
        content, message.get("reasoning_content") or message.get("reasoning") or "")
    usage = payload.get("usage") or {}
    return RawCompletion(text, int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), attempts, latency_s, batch,
                         reasoning)
