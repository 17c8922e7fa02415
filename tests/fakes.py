"""A scripted LLM for unit tests of logic (the real model has its own tests)."""

from __future__ import annotations

import json
from typing import Callable

from sftmill.llm.base import LLM
from sftmill.llm.errors import LLMUnavailableError
from sftmill.llm.request import ChatRequest, RawCompletion


class ScriptedLLM(LLM):
    """Answers with `respond(request)`; records every request it receives.

    `respond` returns a string (sent as the answer text) or a dict/list
    (sent as JSON), or raises.
    """

    backend = "scripted"
    max_concurrency = 4

    def __init__(self, respond: Callable[[ChatRequest], object], store=None, model="scripted"):
        super().__init__(model, store)
        self.respond = respond
        self.requests: list[ChatRequest] = []

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        self.requests.append(request)
        answer = self.respond(request)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return RawCompletion(text, tokens_in=10, tokens_out=5)


def down(_request):
    raise LLMUnavailableError("endpoint down")


def user_text(request: ChatRequest) -> str:
    return next(c for r, c in reversed(request.messages) if r == "user")


OFF_TOPIC = ("sourdough", "football", "goalless")


def whole_sentences(text: str, limit: int) -> str:
    """The sentences of `text` that fit in `limit` characters (at least the first, cut)."""
    out = ""
    for sentence in text.replace(". ", ".\n").splitlines():
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    return out or text[:limit]


def schema_answers(request: ChatRequest):
    """Plausible answers for every sftmill template, chosen by the schema's
    fields: deterministic, and different for different inputs."""
    import hashlib

    schema = request.schema or {}
    props = schema.get("properties", {})
    text = user_text(request)
    tag = hashlib.sha1(text.encode()).hexdigest()[:6]

    def n_items(field):
        return props[field].get("minItems", 1)

    if "instructions" in props:  # Self-Instruct generation
        greek = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho".split()
        words = " ".join(greek[int(c, 16)] + str(i) for i, c in enumerate(tag))
        return {"instructions": [
            f"Describe {words}.",
            "Classify " + " ".join(greek[15 - int(c, 16)] + "x" for c in tag) + " as quark or lepton.",
            "Draw a diagram of a proton.",  # blocklisted keyword
            f"Describe {words} please.",  # a ROUGE-L duplicate of the first
        ]}
    if "is_classification" in props:
        last = text.rsplit("Task:", 1)[-1]
        return {"is_classification": "Classify" in last}
    if "instances" in props:
        item_props = props["instances"]["items"]["properties"]
        if "label" in item_props:
            return {"instances": [{"label": "quark", "input": f"sample {tag}"},
                                  {"label": "lepton", "input": f"other sample {tag}"}]}
        return {"instances": [{"input": "", "output": f"An explanation ({tag})."},
                              {"input": "same", "output": "same"}]}  # output equals input
    if request.schema is None and "Write the next question" in text:  # a follow-up
        said = text.rsplit("Expert: ", 1)[-1].split("\n", 1)[0]
        about = " ".join(w for w in said.split() if len(w) > 3 and w.isalpha())[:60] or "gluons"
        opening = text.split('beginning with "', 1)[1].split('"', 1)[0]
        return f"{opening} {about.lower()} in a real experiment ({tag})?"
    if set(props) == {"consistent", "reason"}:
        return {"consistent": "CONTRADICT" not in text, "reason": "scripted consistency"}
    if request.schema is None and ("Request:" in text or "Question:" in text):  # an answer (plain text)
        if "Background:" not in text:
            return f"Without sources: quarks are confined by gluons ({tag})."
        # a follow-up in a conversation draws on its second passage, as the first
        # turn drew on the first (else it would say the same again)
        n = 2 if "Earlier in this conversation:" in text and "\n[2] " in text else 1
        first = text.split(f"[{n}] ", 1)[1].split("\n", 1)[0]
        words = whole_sentences(first, 300).split()  # in its own words: no 5-word run copied
        return " ".join(f"{w} so" if i % 4 == 3 and i < len(words) - 1 else w
                        for i, w in enumerate(words)) + f" [{n}]"
    if request.schema is None and text.startswith("Make this instruction a bit harder"):  # evolve
        instruction = text.rsplit("Instruction:\n", 1)[1].strip().rstrip("?.")
        return f"{instruction}, and how does this compare with the case of free quarks ({tag})?"
    if request.schema is None and 'beginning with "' in text:  # a prompt told its opening
        opening = text.split('beginning with "', 1)[1].split('"', 1)[0]
        passage = text.split('"""', 2)[1] if text.count('"""') >= 2 else ""
        about = whole_sentences(" ".join(passage.split()), 160).rstrip(".") or "quarks bind"
        return f"{opening} ({tag}) {about[0].lower()}{about[1:]}? It is because of colour."
    if "personas" in props:
        return {"personas": [f"a reader of kind {i} ({tag})" for i in range(n_items("personas"))]}
    if set(props) == {"level", "reason"}:  # difficulty: by the question's first words
        asked = text.split('"""')[1].strip().lower() if text.count('"""') >= 2 else text.lower()
        level = ("multi_step" if "compare" in asked or "happens when" in asked
                 else "explain" if asked.startswith(("why", "how", "explain", "describe"))
                 else "recall")
        return {"level": level, "reason": "scripted level"}
    if set(props) == {"score", "reason"}:
        off = any(w in text.lower() for w in OFF_TOPIC)
        return {"score": 1 if off else 5, "reason": "scripted judgement"}
    if "summary" in props:
        enum = props["subdomain"].get("enum")
        sub = enum[int(tag, 16) % len(enum)] if enum else "Physics"
        return {"subdomain": sub, "topic": f"topic {tag}",
                "use_case": "exam revision", "summary": f"A passage about quarks and gluons ({tag})."}
    if "queries" in props:
        words = ["top quark discovery", "lattice QCD grid", "mesons and baryons", "gluon jets"]
        return {"queries": [words[(int(tag, 16) + i) % len(words)] for i in range(n_items("queries"))]}
    if "variants" in props:
        return {"variants": [f"Rephrased ({i}) request {tag}: tell me about it in detail."
                             for i in range(n_items("variants"))]}
    if "prompts" in props:
        item_props = props["prompts"]["items"]["properties"]
        if "task_type" in item_props:
            # About the passage's first sentence, so retrieval finds it again.
            passage = text.split('"""', 2)[1] if text.count('"""') >= 2 else ""
            about = whole_sentences(" ".join(passage.split()), 160).rstrip(".") or "quarks bind"
            return {"prompts": [{"task_type": "question",
                                 "prompt": f"Question {i} ({tag}): why is it that {about}?"}
                                for i in range(n_items("prompts"))]}
        return {"prompts": [{"topic": f"neighbour {i}",
                             "prompt": f"Broader request {i} from {tag} about hadron physics?"}
                            for i in range(n_items("prompts"))]}
    raise AssertionError(f"no scripted answer for schema {sorted(props)}")


LLM_USERS = ("sftmill.llm.backends", "sftmill.llm.map",
             "sftmill.tasks.stages.profile", "sftmill.tasks.stages.web", "sftmill.tasks.stages.generate",
             "sftmill.tasks.stages.rephrase", "sftmill.tasks.stages.evolve", "sftmill.tasks.stages.rag",
             "sftmill.tasks.stages.answer",
             "sftmill.tasks.stages.conditions", "sftmill.tasks.stages.conversation",
             "sftmill.tasks.generators.evol", "sftmill.tasks.generators.augment",
             "sftmill.tasks.generators.templates",
             "sftmill.tasks.curation.checks.judges", "sftmill.tasks.curation.preferences")


def route_llm(monkeypatch, llm: ScriptedLLM) -> ScriptedLLM:
    """Make every LLM stage use `llm` (recording into the stage's store)."""
    def make(endpoint, store=None):
        llm.store = store
        return llm

    import importlib

    for module in LLM_USERS:  # imported before any is patched, so none binds the patched one
        importlib.import_module(module)
    for module in LLM_USERS:
        monkeypatch.setattr(f"{module}.make_llm", make)
    return llm
