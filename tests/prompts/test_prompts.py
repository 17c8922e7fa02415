import jinja2
import pytest

from sftmill.prompts import load_template, template_names

# Variables each template needs; a test fails when a template gains one
# that is missing here, so this list stays the templates' contract.  Each
# sample carries the marker "MARK" that must appear in the rendered prompt.
PROFILE = {"domain": "Physics", "subdomain": "QCD", "topic": "MARK", "use_case": "exam",
           "summary": "Gluons carry colour."}
SAMPLE = {
    "relevance": dict(domain="Physics", description="d", relevant="r", subdomains=["QCD"],
                      heading="Quarks", text="MARK"),
    "profile": dict(domain="Physics", subdomains=["QCD"], use_cases=["exam"], heading="",
                    text="MARK"),
    "web_queries": dict(domain="Physics", profile=PROFILE, n=3),
    "generate_opening": dict(text="passage", topic="MARK", opening="Why do"),
    "generate": dict(domain="Physics", profile=PROFILE, text="passage", n=3, topic="MARK",
                     task_types=["question"], use_cases=["exam"]),
    "broaden": dict(domain="Physics", subdomains=["QCD"], profile=PROFILE,
                    examples=["Why are quarks confined?"], n=2),
    "rephrase": dict(prompt="MARK", n=2, avoid_openings=["could you please"], starter="Explain"),
    "prompt_filter": dict(domain="Physics", subdomains=["QCD"], prompt="MARK"),
    "answer_queries": dict(domain="Physics", prompt="MARK", n=2),
    "answer": dict(domain="Physics", prompt="Why?", passages=["MARK passage"]),
    "propose_subdomains": dict(domain="Physics", topics=[{"words": ["quark", "hadron"], "excerpt": "MARK"}]),
    "groundedness": dict(passages=["p"], prompt="Why?", answer="MARK [1]"),
    "safety": dict(instruction="MARK", response="Because."),
    "adherence": dict(instruction="MARK", response="Because."),
    "self_instruct_generate": dict(examples=["MARK one", "two"], n=4),
    "self_instruct_classify": dict(examples=[{"instruction": "Sort it.", "is_classification": True}],
                                   instruction="MARK"),
    "self_instruct_input_first": dict(examples=[{"instruction": "Add.", "instances": [
        {"input": "1+1", "output": "2"}]}], instruction="MARK"),
    "self_instruct_output_first": dict(examples=[{"instruction": "Label.", "instances": [
        {"input": "x", "output": "yes"}]}], instruction="MARK"),
    "respond": dict(instruction="MARK"),
    **{f"evol_{op}": dict(instruction="MARK") for op in (
        "add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input",
        "breadth")},
    "evol_equal": dict(parent="Explain spin.", child="MARK"),
    "paraphrase_instruction": dict(text="MARK", n=2),
    "paraphrase_response": dict(instruction="Why?", text="MARK", n=2),
    "translate": dict(text="MARK", language="French"),
    "template_slot_values": dict(domain="Physics", description="MARK", n=3, examples=["quark"]),
    "personas": dict(domain="Physics", use_cases=["MARK revision"], n=3),
    "difficulty": dict(domain="Physics", prompt="MARK"),
    "follow_up": dict(domain="Physics", persona=None, history=[("Why?", "MARK")], kind="deeper",
                      opening="Why"),
    "consistency": dict(answer="MARK", earlier=["Before."]),
}
# Templates whose answer is free text (an instruction, a response, a grounded answer, a translation).
PLAIN_TEXT = {"respond", "translate", "answer", "generate_opening", "follow_up", *(n for n in SAMPLE if n.startswith("evol_") and n != "evol_equal")}


def test_answer_template_without_passages_says_so():
    messages = load_template("answer").messages(domain="Physics", prompt="Why?", passages=[])
    assert "No sources are available" in messages[-1]["content"]


def test_every_template_has_sample_variables():
    assert set(template_names()) <= set(SAMPLE), "add sample variables for new templates"


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_every_template_renders_with_a_schema(name):
    template = load_template(name)
    messages = template.messages(**SAMPLE[name])
    assert messages[-1]["role"] == "user"
    assert "MARK" in messages[-1]["content"]
    assert "{{" not in messages[-1]["content"] and "{%" not in messages[-1]["content"]
    if name in PLAIN_TEXT:
        assert template.schema is None
    else:
        assert template.schema["type"] == "object" and template.schema["required"]
    assert template.version.startswith(f"{name}@")


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_missing_variable_fails_loudly(name):
    variables = dict(SAMPLE[name])
    variables.pop(sorted(variables)[0])
    with pytest.raises(jinja2.UndefinedError):
        load_template(name).messages(**variables)


def test_version_changes_with_the_file(tmp_path):
    (tmp_path / "x.jinja2").write_text("{% block user %}hi {{ who }}{% endblock %}")
    first = load_template("x", str(tmp_path)).version
    load_template.cache_clear()
    (tmp_path / "x.jinja2").write_text("{% block user %}hello {{ who }}{% endblock %}")
    assert load_template("x", str(tmp_path)).version != first
    assert load_template("x", str(tmp_path)).messages(who="you") == [{"role": "user", "content": "hello you"}]
