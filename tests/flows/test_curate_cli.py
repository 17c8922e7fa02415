"""`sftmill curate` on an exported pipeline dataset and on an
Evol-Instruct export: a curated export and a card with the curation
section; on the pipeline export, a changed threshold re-decides with no LLM
call and no perplexity computed again.  The judge is an OpenAI-compatible server counting calls;
fluency runs on the real embedded model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import needs_fluency_extra
from fake_openai import FakeOpenAI
from prefect_homes import served_env

from sftmill.tasks.report.export import to_record

PIPELINE = [  # (prompt, answer, metadata) as `sftmill run` exports them
    ("Why are quarks never seen alone?",
     "Quarks are confined: pulling two apart stores energy in the gluon field until a new "
     "quark-antiquark pair forms, so only colourless hadrons are seen [1].",
     {"subdomain": "Quarks and hadrons", "grounded": True, "sources": ["file:///corpus/quarks.md"]}),
    ("What carries the strong force between quarks?",
     "Gluons carry it; they have colour charge themselves, so they also attract each other.",
     {"subdomain": "Gluons and QCD", "grounded": True, "sources": ["file:///corpus/gluons.md"]}),
    ("Why are quarks never observed on their own?",  # a near copy of the first
     "Because of confinement, quarks only appear inside hadrons; a football team has eleven.",
     {"subdomain": "Quarks and hadrons", "grounded": True, "sources": ["file:///corpus/qcd.md"]}),
    ("What did the SLAC deep inelastic scattering experiments show?",
     "Electrons scattered off protons as if from point-like constituents: the first evidence "
     "that quarks are real.", {"subdomain": "Experiments", "grounded": True}),
]
EVOL = [  # Alpaca lines as `sftmill evol --format alpaca` exports them
    ("Explain colour charge using an analogy with electric charge, in two sentences.",
     "Electric charge comes in one kind with two signs; colour charge comes in three kinds "
     "(red, green, blue) and their anti-colours, and only colourless combinations are free.",
     {"generator": "evol-instruct", "round": 1, "operation": "add_constraints"}),
    ("Explain football offside rules for a physics exam on quarks.",
     "A plain answer about football with no physics in it at all, offside is a rule.",
     {"generator": "evol-instruct", "round": 2, "operation": "breadth"}),
]


def run(args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **served_env(home), "PREFECT_LOGGING_LEVEL": "WARNING",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sftmill.cli", "curate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def scores(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute('SELECT record_id, "check", score FROM curation_scores').fetchall()
        meta = json.loads(con.execute("SELECT value FROM meta WHERE key = 'curation'").fetchone()[0])
        drops = dict(con.execute("SELECT item_id, reason FROM rejects WHERE stage = 'curate'").fetchall())
    finally:
        con.close()
    return {"scores": {(r, c): s for r, c, s in rows}, "meta": meta, "drops": drops}


@needs_fluency_extra
@pytest.mark.real_model
@pytest.mark.parametrize("kind", ["pipeline", "evol"])
def test_curate_an_export_then_change_a_threshold(tmp_path, kind):
    server = FakeOpenAI(delay_s=0.0)
    try:
        fmt, rows = ("openai", PIPELINE) if kind == "pipeline" else ("alpaca", EVOL)
        data = tmp_path / "dataset.jsonl"
        data.write_text("".join(json.dumps({**to_record(fmt, p, a, m), **(
            {"metadata": m} if fmt == "alpaca" else {})}) + "\n" for p, a, m in rows))
        config = {"adherence": {"enabled": True, "min_score": 0.5}, "fluency": {"enabled": True},
                  "near_duplicates": {"cosine": 0.8},
                  "judge": {"backend": "openai", "base_url": server.url, "model": "judge",
                            "temperature": 0.0}}
        cfg = tmp_path / "curate.yaml"
        cfg.write_text(yaml.safe_dump(config))
        out = tmp_path / "curated"
        home = tmp_path / "prefect-home"

        first = run([data, "--config", cfg, "--out", out], home)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        before = scores(out / "sftmill.duckdb")
        judged = server.requests
        assert judged == len(rows)  # one adherence call per record
        assert before["meta"]["scored_now"]["fluency"] == len(rows)
        kept = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
        # The scripted judge scores answers about football 1: they go.
        assert sorted(before["drops"].values()) == ["low_adherence"]
        assert len(kept) == len(rows) - 1
        lineage = kept[0]["metadata"]
        assert "curated_from" in lineage and lineage["curated_from"]["file"] == "dataset.jsonl"
        card = (out / "card.md").read_text()
        assert "## Curation" in card and "fluency.max_response_perplexity" in card
        assert (out / "plots" / "curation_response_perplexity.png").exists()

        if kind == "evol":
            return  # the rerun with a changed threshold: once is enough
        config["adherence"]["min_score"] = 0.0  # keep what the judge disliked
        cfg.write_text(yaml.safe_dump(config))
        second = run([data, "--config", cfg, "--out", out], home)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        after = scores(out / "sftmill.duckdb")
        assert server.requests == judged  # no LLM call
        assert after["meta"]["scored_now"] == {"offensive": 0, "fluency": 0, "adherence": 0}
        def computed(found):  # near-duplicate cosines are part of the decision, not scores
            return {k: v for k, v in found["scores"].items() if k[1] != "near_duplicate"}

        assert computed(after) == computed(before)
        # The twin the judge disliked now reaches near-duplicate removal and loses there.
        assert sorted(after["drops"].values()) == ["near_duplicate"]
        assert len((out / "dataset.jsonl").read_text().splitlines()) == len(rows) - 1
    finally:
        server.close()


def test_a_bad_curation_config_stops_with_one_line(tmp_path):
    data = tmp_path / "dataset.jsonl"
    data.write_text(json.dumps({"prompt": "Why?", "response": "Because."}) + "\n")
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("fluency: {max_response_perplexity: -3}\n")
    bad = run([data, "--config", cfg, "--out", tmp_path / "out"], tmp_path / "home")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        f"error: {cfg}: fluency.max_response_perplexity:")
    cfg.write_text("decontamination: {benchmarks: [missing.jsonl]}\n")
    bad = run([data, "--config", cfg, "--out", tmp_path / "out"], tmp_path / "home")
    assert bad.returncode == 2 and "decontamination.benchmarks[0]: file not found" in bad.stderr
    unreadable = tmp_path / "arc.json"  # a JSON array whose questions sit under names we do not read
    unreadable.write_text(json.dumps([{"id": 1, "stem_text": "Which gas do plants take in?"}]))
    cfg.write_text(f"decontamination: {{benchmarks: [{unreadable}]}}\n")
    bad = run([data, "--config", cfg, "--out", tmp_path / "out"], tmp_path / "home")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (f"error: config.decontamination.benchmarks[0]: no question could be read from {unreadable} "
            "(fields tried: question, prompt,") in " ".join(bad.stderr.split())
    assert not (tmp_path / "out" / "dataset.jsonl").exists()  # stopped before any work
