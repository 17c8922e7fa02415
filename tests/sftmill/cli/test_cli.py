import subprocess
import sys
from pathlib import Path

import pytest

from sftmill.cli.serve import pipeline_schedule
from sftmill.core.recipe import parse_recipe


def recipe(tmp_path, schedule):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"}, "domain": {"name": "P"},
                         "schedule": schedule}, tmp_path)


def test_schedule_from_recipe_or_command_line(tmp_path):
    daily = recipe(tmp_path, {"cron": "0 3 * * *"})
    assert pipeline_schedule(daily, None, None) == {"cron": "0 3 * * *"}
    assert pipeline_schedule(daily, None, 30) == {"interval": 1800}
    assert pipeline_schedule(recipe(tmp_path, {"interval_minutes": 5}), None, None) == {"interval": 300}
    assert pipeline_schedule(None, "*/5 * * * *", None) == {"cron": "*/5 * * * *"}
    assert pipeline_schedule(None, None, None) == {}


def test_help_documents_every_command():
    out = subprocess.run([sys.executable, "-m", "sftmill.cli", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    for command in ("run", "validate", "serve", "export", "stats"):
        assert command in out


def test_serve_needs_a_server(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "serve"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "PREFECT_API_URL is not set" in proc.stderr


def cli(*args):
    from typer.testing import CliRunner

    from sftmill.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_help_lists_the_generators():
    out = cli("--help").output
    for command in ("self-instruct", "evol", "paraphrase", "back-translate", "templates"):
        assert command in out


def test_generator_commands_stop_on_bad_input_with_one_line(tmp_path):
    good = tmp_path / "in.txt"
    good.write_text("Explain gluons.\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("templates: ['Explain [X].']\n")
    bad_curation = tmp_path / "curate.yaml"
    bad_curation.write_text("keywords: {block: ['(unclosed']}\n")
    cases = [
        (("evol", tmp_path / "missing.jsonl"), "input file not found"),
        (("evol", good, "--operations", "deepen,fly"), "--operations: Input should be"),
        (("evol", good, "--rounds", "0"), "--rounds: Input should be greater than or equal to 1"),
        (("paraphrase", good, "--field", "answer"), "--field: 'answer' is not one of"),
        (("back-translate", good, "--format", "csv"), "--format: 'csv' is not one of"),
        (("templates", spec), "templates.0: [X] names no slot"),
        (("self-instruct", Path(__file__).resolve().parents[3] / "data" / "self_instruct" /
          "seed_tasks.jsonl", "--target", "0"),
         "--target: Input should be greater than or equal to 1"),
        (("evol", good, "--curation", bad_curation), "keywords: Value error, bad regular "
                                                      "expression '(unclosed'"),
        (("paraphrase", good, "--curation", tmp_path / "none.yaml"), "config file not found"),
    ]
    for args, message in cases:
        result = cli(*args, "--out", tmp_path / "out")
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_review_sample_then_apply_rewrites_the_export(tmp_path):
    import csv
    import json

    from sftmill.core.hub import split_header
    from sftmill.core.schema import SCHEMA
    from sftmill.core.store import Store

    run = tmp_path / "run"
    store = Store.open(run / "sftmill.duckdb")
    store.ensure_tables(SCHEMA)
    store.insert("dataset", [{"record_id": f"r{i}", "prompt_id": "p", "answer_id": "a",
                              "prompt": f"Q{i}?", "answer": f"A{i}.", "grounded": False,
                              "metadata": "{}"} for i in range(3)])
    (run / "dataset.jsonl").write_text(json.dumps({"conversations": []}) + "\n")  # a sharegpt export
    (run / "card.md").write_text("---\nlicense: mit\npretty_name: physics\n---\n\n# Dataset card\n\n"
                                 "## Lengths (characters)\n")
    assert cli("review", "sample", run, "--n", "3").exit_code == 0
    sheet = run / "review.csv"
    rows = list(csv.DictReader(sheet.open()))
    rows[0]["decision"] = "reject"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = cli("review", "apply", run, sheet)
    assert result.exit_code == 0, result.output
    assert "applied 1 decisions (reject 1)" in " ".join(result.output.split())
    records = [json.loads(x) for x in (run / "dataset.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("conversations" in r for r in records)
    # the card's Hub header follows the new export and keeps its license
    header, body = split_header((run / "README.md").read_text())
    assert (run / "README.md").read_text() == (run / "card.md").read_text()
    assert header["license"] == "mit" and header["pretty_name"] == "physics"
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": 2}]
    assert body.startswith("# Dataset card") and "## Human review" in body
    assert cli("review", "apply", run, tmp_path / "none.csv").exit_code == 2


def test_a_run_folder_held_by_another_process_is_one_line_error(tmp_path):
    from sftmill.core.schema import SCHEMA
    from sftmill.core.store import Store

    run = tmp_path / "run"
    Store.open(run / "sftmill.duckdb").ensure_tables(SCHEMA)
    Store.close_all()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; "
                               f"con = duckdb.connect({str(run / 'sftmill.duckdb')!r}); "
                               "print('ready', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = cli("stats", run)
        assert result.exit_code == 2
        message = " ".join(result.output.split())
        assert "is in use by another process" in message and str(holder.pid) in message
    finally:
        holder.kill()
        holder.wait()


def test_an_output_dir_that_is_a_file_stops_with_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("Quarks and gluons. " * 20)
    (tmp_path / "taken").write_text("a file, not a folder")
    (tmp_path / "r.yaml").write_text(
        "name: t\noutput_dir: taken\ninputs: [{path: a.txt}]\ndomain: {name: P}\n"
        "search: {backend: none}\n")
    (tmp_path / "r2.yaml").write_text(
        "name: t\noutput_dir: taken/sub/run\ninputs: [{path: a.txt}]\ndomain: {name: P}\n"
        "search: {backend: none}\n")
    for name, expected in (("r.yaml", "exists and is not a folder"),
                           ("r2.yaml", "is not a folder")):
        for command in ("run", "validate"):
            result = cli(command, tmp_path / name)
            assert result.exit_code == 2, result.output
            assert "output_dir: " in result.output and expected in result.output
            assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = cli("evol", tmp_path / "a.txt", "--out", tmp_path / "taken")
    assert result.exit_code == 2 and "exists and is not a folder" in result.output


@pytest.mark.real_model
def test_init_writes_a_recipe_that_validates_and_runs(prefect_harness, tmp_path, monkeypatch):
    """`sftmill init` on a folder of texts: the embedded generator proposes
    subdomains, the commented recipe validates, and `sftmill run` completes
    on it (scripted LLM for the run itself, to stay quick)."""
    import shutil

    import yaml
    from fakes import ScriptedLLM, route_llm, schema_answers

    texts = tmp_path / "notes"
    shutil.copytree(Path(__file__).resolve().parents[3] / "data" / "example" / "corpus", texts)
    result = cli("init", texts, "--domain", "Particle physics", "--subdomains", "3")
    assert result.exit_code == 0, result.output
    recipe = tmp_path / "recipe.yaml"
    text = recipe.read_text()
    assert "run it with:  sftmill run" in result.output and str(recipe) in result.output
    assert "# What counts as relevant" in text and "sftmill init --help" in text
    data = yaml.safe_load(text)
    assert data["inputs"] == [{"path": "notes"}] and data["domain"]["name"] == "Particle physics"
    assert 1 <= len(data["domain"]["subdomains"]) <= 3
    assert cli("validate", recipe, "--offline").exit_code == 0
    assert cli("init", texts, "--domain", "Physics").exit_code == 2  # exists: needs --force
    route_llm(monkeypatch, ScriptedLLM(schema_answers))
    data["sizes"]["target_prompts"] = 6
    recipe.write_text(yaml.safe_dump(data))
    run = cli("run", recipe, "--verbose")
    assert run.exit_code == 0, run.output
    assert (tmp_path / "runs" / "particle-physics" / "dataset.jsonl").is_file()
    assert "Sample records" in run.output and "cites " in run.output
    assert f"Card: {tmp_path / 'runs' / 'particle-physics' / 'card.md'}" in run.output
    from sftmill.core.store import Store

    Store.close_all()  # as a later `sftmill stats` in another process finds it
    by_folder = cli("stats", tmp_path / "runs" / "particle-physics")
    by_recipe = cli("stats", recipe)
    assert by_folder.exit_code == 0 and by_recipe.exit_code == 0, by_recipe.output
    def llm_table(output: str) -> str:
        return output.split("LLM calls")[1].split("Prompts per subdomain")[0]

    assert "plan" in llm_table(by_recipe.output) and "cost" in llm_table(by_recipe.output)
    assert "cost" not in llm_table(by_folder.output)


def test_init_help_explains_every_field():
    from sftmill.cli.scaffold import field_docs

    out = subprocess.run([sys.executable, "-m", "sftmill.cli", "init", "--help"],
                         capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "COLUMNS": "300"}).stdout
    for name, doc in field_docs():
        assert doc, f"{name} has no meaning to show"
        assert f"{name}:" in out, name


@pytest.mark.real_model
def test_a_recipe_whose_answer_prompt_can_never_fit_stops_in_one_line(tmp_path):
    """Four passages of 2,000 tokens cannot fit SmolLM2's 4,096-token context:
    `run` and `validate` refuse before any work, naming the fields to change."""
    (tmp_path / "a.txt").write_text("Quarks and gluons. " * 20)
    (tmp_path / "r.yaml").write_text(
        "name: t\noutput_dir: out\ninputs: [{path: a.txt}]\ndomain: {name: P}\n"
        "search: {backend: none}\nchunking: {max_tokens: 2000}\nanswers: {top_k: 4}\n")
    for command in ("validate", "run"):
        result = cli(command, tmp_path / "r.yaml")
        assert result.exit_code == 2, result.output
        line, = result.output.strip().splitlines()
        assert "llm.generator: prompt 'answer' can never fit the model's context" in line
        assert "chunking.max_tokens / answers.top_k" in line
    assert not (tmp_path / "out").exists()  # nothing started


def test_embedding_places_that_cannot_work_stop_in_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("Quarks and gluons. " * 20)
    head = "name: t\noutput_dir: out\ninputs: [{path: a.txt}]\ndomain: {name: P}\nsearch: {backend: none}\n"
    cases = {"embedding: {runner: dask, dask_address: 'tcp://127.0.0.1:9'}\n":
             "embedding: Dask scheduler tcp://127.0.0.1:9 not reachable",
             "dedup_embedding: {model: 'static:/nowhere/model'}\n":
             "dedup_embedding: embedding model folder not found: /nowhere/model",
             "embedding: {dask_address: 'tcp://127.0.0.1:9'}\n":
             "embedding dask_address needs runner: dask"}
    for extra, expected in cases.items():
        (tmp_path / "r.yaml").write_text(head + extra)
        result = cli("validate", tmp_path / "r.yaml")
        assert result.exit_code == 2, result.output
        line, = result.output.strip().splitlines()
        assert expected in line


def test_init_on_a_relative_folder_as_the_readme_shows_it(tmp_path, monkeypatch):
    """`sftmill init my-notes/ --domain …` from the folder that holds the texts."""
    import shutil

    import yaml
    from fakes import ScriptedLLM

    shutil.copytree(Path(__file__).resolve().parents[3] / "data" / "example" / "corpus", tmp_path / "my-notes")
    monkeypatch.chdir(tmp_path)
    proposed = ["Quarks and hadrons", "Gluons and colour", "Colliders and detectors"]
    generator = ScriptedLLM(lambda request: {"subdomains": proposed})
    monkeypatch.setattr("sftmill.cli.scaffold.make_llm", lambda endpoint, store=None: generator)
    result = cli("init", "my-notes/", "--domain", "Particle physics")
    assert result.exit_code == 0, result.output
    asked = str(generator.requests[0].messages).lower()
    assert "gluon" in asked and "words:" in asked  # each cluster's telling words, from the texts
    text = (tmp_path / "recipe.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["inputs"] == [{"path": "my-notes"}]
    names = [s["name"] for s in data["domain"]["subdomains"]]
    assert len(names) == 3 and len(set(names)) == 3
    assert all(s["description"].startswith("Texts about ") for s in data["domain"]["subdomains"])
    assert "null" not in text and len(text.splitlines()) < 50  # short: only what differs from defaults
    assert cli("validate", tmp_path / "recipe.yaml", "--offline").exit_code == 0


def test_a_proposed_name_must_be_a_topic():
    from sftmill.cli.scaffold import keyword_name, topic_problem

    titles = {"caktusgroup com django 0 html", "notes on django part 1"}
    words = ["django", "views", "templates", "admin"]

    def problem(name):
        return topic_problem(name, titles, {"testing"}, "Programming in Python", words)

    assert problem("caktusgroup.com.django.html") == "a file name"
    assert problem("gregoryszorc.com/python3") == "a file name"
    assert problem("Notes on Django, part 1") == "a title copied whole"
    assert problem("Programming in Python") == "only the domain's own words"
    assert problem("Python") == "only the domain's own words"
    assert problem("Cooking pasta") == "about none of the cluster's words"
    assert problem("Django views and templates") is None
    assert problem("Web apps with Django") is None
    assert keyword_name(words) == "Django and views"


@pytest.mark.real_model
def test_init_proposes_topics_for_saved_web_pages(tmp_path, monkeypatch):
    """The README's command on a relative folder of 16 saved web pages about
    programming, with the embedded model: topic subdomains, no file names."""
    import yaml
    from programming_pages import write_pages

    pages = write_pages(tmp_path / "pages")
    monkeypatch.chdir(tmp_path)
    result = cli("init", "pages/", "--domain", "Programming in Python", "--subdomains", "4")
    assert result.exit_code == 0, result.output
    names = [s["name"] for s in yaml.safe_load((tmp_path / "recipe.yaml").read_text())["domain"]["subdomains"]]
    assert len(names) == 4, names
    for name in names:
        assert ".html" not in name and "/" not in name and name.lower() != "programming in python"
        assert all(name.lower() not in p.name.lower() for p in pages)


def test_mix_by_a_field_with_a_weight_for_a_missing_group_stops_with_one_line(tmp_path):
    import json

    data = tmp_path / "run.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "What are gluons?"},
                                             {"role": "assistant", "content": "Carriers of the strong force."}],
                                "metadata": {"profile": {"subdomain": "Gluons"}}}) + "\n")
    result = cli("mix", f"run={data}", "--by", "subdomain", "--weights", "Gluons=1,Leptons=1",
                 "--out", tmp_path / "mix")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --weights: no record with subdomain 'Leptons' (found: Gluons)"
    assert not (tmp_path / "mix").exists()  # stopped before any work


def test_preview_makes_a_few_records_the_shortest_way(prefect_harness, tmp_path, monkeypatch):
    """`sftmill run RECIPE --preview 3`: a few chunks judged and profiled, no
    web round, the records printed with their scores and quality figures, in
    RUN_DIR/preview (the full run's folder untouched)."""
    import duckdb
    from examples import example_recipe, params
    from fakes import ScriptedLLM, route_llm, schema_answers

    recipe = example_recipe(tmp_path, review={"gates": ["prompts"]})
    planned = params(recipe, preview=3).load()
    assert planned.sizes.target_prompts == 15 and planned.sizes.max_rounds == 0
    assert planned.sizes.prompts_per_profile == 8 and planned.sizes.max_chunks == 3  # 2 profiles + 1
    assert planned.review.gates == []
    assert planned.run_dir == tmp_path / "run" / "preview"
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    result = cli("run", recipe, "--preview", "3")
    assert result.exit_code == 0, result.output
    assert "Preview: " in result.output and "scores: " in result.output
    assert "| figure | value (p10–p90) | good |" in result.output
    db = duckdb.connect(str(tmp_path / "run" / "preview" / "sftmill.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM relevance").fetchone()[0] <= 3
    assert not db.execute("SELECT count(*) FROM rejects WHERE stage = 'web_queries'").fetchone()[0]
    assert not (tmp_path / "run" / "sftmill.duckdb").exists()
    assert len([r for r in llm.requests if "summary" in str(r.schema)]) <= 3  # profiles
